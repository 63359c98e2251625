"""The PyTorch reference path: one MoE layer from our spec and weights, and HF blocks as-is.

`torch_moe_forward` computes the same layer as the HF block of the spec's
family (and as `pymodel.reference.moe_forward_float`), from any `MoESpec` and
`MoEWeights`, so layers that never came from HF get a PyTorch reference too.
It runs on CUDA when present, else on the CPU.

Precision: fp32 by default. bf16 is allowed on CUDA only: the expert and
shared-expert GEMMs and activations run in bf16, while routing (router GEMM,
softmax/sigmoid, top-k, gate weights) and the combine stay in fp32 so that
routing decisions are those of the fp32 router, as in HF's DeepSeek-V3 and
Switch routers. bf16 on the CPU raises `ConfigError`: it is slow there and no
HF checkpoint is run that way in this project, so a silent fallback would only
hide a misconfigured run.

Selection semantics are the hardware's (docs/numerics.md §4.2), taken from
`pymodel` on the float scores: `pymodel.gate.group_limited_topk` (ties to the
lower expert index; groups ranked by the sum of their two best biased
scores) and `pymodel.dispatch.capacity_kept` (each expert's first pairs in
slot order `t·k + j`, Switch's per-sequence order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pymodel.config import ConfigError, MoESpec
from pymodel.dispatch import capacity_kept
from pymodel.gate import check_routing, group_limited_topk
from pymodel.numerics import NumericsError, check_finite
from pymodel.reference import RoutedOutput
from pymodel.weights import MoEWeights

SMALL_CPU_WORK = 1 << 26
"""Below this many MACs a CPU run uses one thread: thread hand-offs dominate tiny ops here."""

_DTYPES: dict[torch.dtype, str] = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class TorchResult(RoutedOutput):
    """Outputs of `torch_moe_forward`, as numpy arrays on the host.

    `scores` are the values top-k selects on (softmax probabilities, or
    sigmoid + correction bias), as in `pymodel.reference.FloatResult`;
    `gate_weights` the final per-slot weights (renormalised, scaled);
    `expert_ids` ordered by descending score, ties to the lower index; `kept`
    False where capacity dropped the pair.
    """

    device: str
    dtype: str


def default_device() -> torch.device:
    """CUDA when PyTorch sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid torch device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but PyTorch sees no CUDA GPU")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: only 'cpu' and 'cuda' are supported")
    return dev


@contextlib.contextmanager
def cpu_threads_for(device: torch.device, macs: int) -> Iterator[None]:
    """Run tiny CPU work on one thread, restoring the caller's setting afterwards.

    Two threads made tiny `index_add_` calls ~400× slower on the 2-core
    machines this project runs on; large work keeps the caller's thread count.
    """
    if device.type != "cpu" or macs >= SMALL_CPU_WORK or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_x(x: np.ndarray | torch.Tensor, d_model: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    if not isinstance(x, np.ndarray):
        raise NumericsError(f"x must be a numpy array or torch tensor, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise NumericsError(f"x must be a float array, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != d_model:
        raise ConfigError(f"x has shape {list(x.shape)}, expected [T >= 1, d_model = {d_model}]")
    check_finite("x", x)
    return x.astype(np.float32)


def _ffn(
    ffn: str, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor | None
) -> torch.Tensor:
    a = x @ w1
    if ffn == "swiglu":
        h = F.silu(a) * (x @ w3)
    elif ffn == "gelu":
        h = F.gelu(a)
    else:
        h = F.relu(a)
    return h @ w2


def torch_moe_forward(
    spec: MoESpec,
    weights: MoEWeights,
    x: np.ndarray | torch.Tensor,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> TorchResult:
    """The layer `spec` with `weights` on tokens `x` [T, d_model] (one sequence), in PyTorch.

    `device` defaults to `default_device()`; `dtype` is `torch.float32` or
    (CUDA only) `torch.bfloat16` for the expert GEMMs.
    """
    if not isinstance(spec, MoESpec):
        raise ConfigError(f"spec must be a MoESpec, got {type(spec).__name__}")
    if not isinstance(weights, MoEWeights):
        raise ConfigError(f"weights must be MoEWeights, got {type(weights).__name__}")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype} not supported; use torch.float32 or torch.bfloat16")
    dev = _resolve_device(device)
    if dtype == torch.bfloat16 and dev.type != "cuda":
        raise ConfigError("bf16 reference runs need CUDA; on the CPU use torch.float32")
    check_routing(spec)
    weights.validate(spec)
    x32 = _check_x(x, spec.d_model)
    t, k = x32.shape[0], spec.top_k
    macs = t * spec.d_model * (spec.n_experts + 3 * (k * spec.d_ff + spec.shared_d_ff))

    def put(a: np.ndarray, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev, dt)

    with torch.no_grad(), cpu_threads_for(dev, macs):
        xt = put(x32, torch.float32)
        logits = xt @ put(weights.router, torch.float32)
        if spec.scoring == "softmax":
            probs = torch.softmax(logits, dim=-1)
            choice = probs
        else:
            probs = torch.sigmoid(logits)
            choice = (
                probs + put(weights.correction_bias, torch.float32)
                if spec.correction_bias
                else probs
            )
        # The selection and capacity rules are pymodel's, on the float scores.
        ids_np = group_limited_topk(choice.cpu().numpy(), k, spec.n_group, spec.topk_group)
        ids = torch.from_numpy(ids_np).to(dev)
        gate = probs.gather(1, ids)
        if spec.renormalize:
            eps = 1e-20 if spec.scoring == "sigmoid" else 0.0
            gate = gate / (gate.sum(dim=-1, keepdim=True) + eps)
        gate = gate * spec.routed_scaling_factor
        kept = torch.from_numpy(capacity_kept(ids_np, spec.n_experts, spec.capacity)).to(dev)

        xc = xt.to(dtype)
        w1, w2 = put(weights.w1), put(weights.w2)
        w3 = put(weights.w3) if weights.w3 is not None else None
        y = torch.zeros_like(xt)
        for e in torch.unique(ids[kept]).tolist():
            rows, slots = torch.nonzero((ids == e) & kept, as_tuple=True)
            ye = _ffn(spec.ffn, xc[rows], w1[e], w2[e], None if w3 is None else w3[e])
            y.index_add_(0, rows, ye.float() * gate[rows, slots, None])
        if spec.has_shared:
            ys = _ffn(
                "swiglu", xc, put(weights.shared_w1), put(weights.shared_w2), put(weights.shared_w3)
            ).float()
            if spec.shared_gate:
                ys = torch.sigmoid(xt @ put(weights.shared_gate, torch.float32))[:, None] * ys
            y = y + ys
        return TorchResult(
            y=y.cpu().numpy(),
            logits=logits.cpu().numpy(),
            scores=choice.cpu().numpy(),
            expert_ids=ids.cpu().numpy().astype(np.int64),
            gate_weights=gate.cpu().numpy(),
            kept=kept.cpu().numpy(),
            device=str(dev),
            dtype=_DTYPES[dtype],
        )


def run_hf_block(block: nn.Module, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Run an HF sparse MoE block itself on tokens `x` [T, d] (one sequence) → y [T, d] fp32.

    Every family's block takes [batch, seq, d]; Switch counts capacity per
    sequence, so `x` goes in as one batch row. transformers 4.x blocks return
    `(hidden, router_logits)` tuples, 5.x blocks a tensor: both are accepted.
    The block runs on its own device and dtype.
    """
    from .hf import check_hf_block  # transformers loads only when HF blocks are run (~2.5 s)

    _, d_model = check_hf_block(block)
    x32 = _check_x(x, d_model)
    param = next(block.parameters())
    dev = param.device
    macs = sum(p.numel() for p in block.parameters()) * x32.shape[0]
    with torch.no_grad(), cpu_threads_for(dev, macs):
        out = block(torch.from_numpy(x32).to(dev, param.dtype)[None])
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, *x32.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{type(block).__name__} returned {got}, expected (1, {x32.shape})")
    return out[0].detach().to("cpu", torch.float32).numpy()
