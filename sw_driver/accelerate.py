"""`accelerate`: a whole HuggingFace MoE model with every MoE block run on a backend.

`accelerate(model, backend=...)` swaps each supported MoE block of a
transformers model for an `AcceleratedMoE` module that runs the block's
layer through `sw_driver.block.run_block` (calibrated on the tokens it gets,
quantised, on the golden model or the Verilator RTL) and returns its output
in the block's own form; every call's numbers are kept per layer.
`generate_compare` runs greedy generation with the float model and with the
accelerated one and reports where the tokens agree. `tiny_model` builds the
small random-weight models of the six families the tests and `moe-accel
generate` use (from a config: nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pymodel.config import AccelConfig, ConfigError
from pymodel.families import FAMILIES, family_spec

from .block import BACKENDS, run_block
from .device import Device, make_device
from .hf import BLOCK_CLASSES, block_family, hf_config, import_hf_block, reinit_block

__all__ = [
    "AcceleratedMoE",
    "GenerationComparison",
    "LayerStats",
    "accelerate",
    "generate_compare",
    "tiny_model",
]


@dataclass
class LayerStats:
    """What one MoE layer did over the calls of a generation."""

    name: str
    calls: int = 0
    tokens: int = 0
    rel_l2_vs_block: list[float] = field(default_factory=list)
    routing_agreement: list[float] = field(default_factory=list)
    bit_exact: bool | None = None
    cycles: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "layer": self.name,
            "calls": self.calls,
            "tokens": self.tokens,
            "rel_l2_vs_block_mean": float(np.mean(self.rel_l2_vs_block)) if self.calls else 0.0,
            "rel_l2_vs_block_max": float(np.max(self.rel_l2_vs_block)) if self.calls else 0.0,
            "routing_agreement": float(np.mean(self.routing_agreement)) if self.calls else 1.0,
            "bit_exact": self.bit_exact,
            "cycles": self.cycles,
        }


class AcceleratedMoE(nn.Module):
    """An HF MoE block whose layer runs on a backend (`run_block`), in the block's place."""

    def __init__(self, block: nn.Module, name: str, device: Device, backend: str) -> None:
        super().__init__()
        self.block = block
        self.device = device
        self.backend = backend
        self.stats = LayerStats(name)
        self._returns_tuple: bool | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        # run_block already runs the block itself (its reference); the block's own call is only
        # needed for the extra outputs of a block that returns a tuple (e.g. router logits).
        own = None
        if self._returns_tuple is not False:
            own = self.block(hidden_states, *args, **kwargs)
            self._returns_tuple = isinstance(own, tuple)
        run = run_block(self.block, hidden_states, backend=self.backend, config=self.device.cfg,
                        device=self.device)  # fmt: skip
        s = self.stats
        s.calls += 1
        for report in run.reports:
            s.tokens += report.tokens
            s.rel_l2_vs_block.append(report.rel_l2_vs_torch)
            s.routing_agreement.append(report.routing_agreement)
            s.cycles += report.cycles.get("total", 0)
        if run.bit_exact is not None:
            s.bit_exact = run.bit_exact if s.bit_exact is None else (s.bit_exact and run.bit_exact)
        if isinstance(own, tuple):
            return (run.y, *own[1:])
        return run.y


def _moe_blocks(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, block) of every supported MoE block, outermost first."""
    found = []
    for parent in model.modules():
        for attr, child in parent.named_children():
            if any(cls.__name__ in BLOCK_CLASSES for cls in type(child).__mro__):
                found.append((parent, attr, child))
    return found


@contextmanager
def accelerate(
    model: nn.Module,
    *,
    backend: str = "golden",
    config: AccelConfig | None = None,
    device: Device | None = None,
) -> Iterator[list[AcceleratedMoE]]:
    """Run `model` with every MoE block on `backend` inside the `with`; restored after.

    Yields the `AcceleratedMoE` modules in model order (their `.stats`). Every
    block must fit `config` (checked first, naming the layer); one device
    (one Verilator model) serves all of them.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {list(BACKENDS)}")
    cfg = config or AccelConfig()
    found = _moe_blocks(model)
    if not found:
        raise ConfigError(
            f"{type(model).__name__} has no supported MoE block; supported: {sorted(BLOCK_CLASSES)}"
        )
    names = {id(m): n for n, m in model.named_modules()}
    for _, _, block in found:
        spec, _ = import_hf_block(block)
        try:
            cfg.check_fits(spec, 1)
        except ConfigError as exc:
            raise ConfigError(f"MoE block {names[id(block)]}: {exc}") from None
    device = device or make_device(backend, cfg)
    wrappers = []
    for parent, attr, block in found:
        wrapper = AcceleratedMoE(block, names[id(block)], device, backend)
        setattr(parent, attr, wrapper)
        wrappers.append(wrapper)
    try:
        yield wrappers
    finally:
        for (parent, attr, block), _ in zip(found, wrappers, strict=True):
            setattr(parent, attr, block)


@dataclass
class GenerationComparison:
    """Greedy generation with the float model and with the accelerated one."""

    family: str
    backend: str
    prompt: list[int]
    float_tokens: list[int]
    accel_tokens: list[int]
    layers: list[dict[str, Any]]

    @property
    def agreement(self) -> float:
        """Fraction of generated positions with the same token."""
        same = sum(a == b for a, b in zip(self.float_tokens, self.accel_tokens, strict=True))
        return same / len(self.float_tokens)

    @property
    def first_difference(self) -> int | None:
        """Index of the first generated token that differs (None: all equal)."""
        for i, (a, b) in enumerate(zip(self.float_tokens, self.accel_tokens, strict=True)):
            if a != b:
                return i
        return None


def _greedy(model: nn.Module, prompt: torch.Tensor, n: int, step: Callable[[], None]) -> list[int]:
    """Greedy generation of `n` tokens (one `step()` callback a token)."""
    out: list[int] = []
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            decoder = torch.tensor([[model.config.decoder_start_token_id]])
            for _ in range(n):
                logits = model(input_ids=prompt, decoder_input_ids=decoder).logits
                token = int(logits[0, -1].argmax())
                out.append(token)
                decoder = torch.cat([decoder, torch.tensor([[token]])], dim=1)
                step()
            return out
        ids = prompt
        for _ in range(n):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            step()
    return out


def generate_compare(
    model: nn.Module,
    prompt: list[int],
    tokens: int,
    *,
    backend: str = "golden",
    config: AccelConfig | None = None,
    step: Callable[[], None] | None = None,
) -> GenerationComparison:
    """Greedy-generate `tokens` tokens after `prompt` with the float model, then accelerated.

    Every step reruns the whole sequence (no KV cache), so each MoE call sees the
    prompt and the tokens so far: sequence length prompt + generated must fit the
    config's `max_tokens`. `step` is called after each token (progress).
    """
    step = step or (lambda: None)
    ids = torch.tensor([prompt])
    blocks = _moe_blocks(model)
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no supported MoE block")
    family = block_family(blocks[0][2])
    float_tokens = _greedy(model, ids, tokens, step)
    with accelerate(model, backend=backend, config=config) as layers:
        accel_tokens = _greedy(model, ids, tokens, step)
    return GenerationComparison(
        family=family,
        backend=backend,
        prompt=list(prompt),
        float_tokens=float_tokens,
        accel_tokens=accel_tokens,
        layers=[layer.stats.summary() for layer in layers],
    )


def tiny_model(family: str, *, seed: int = 0, layers: int = 2, d_model: int = 32) -> nn.Module:
    """A small causal LM (seq2seq for Switch) of `family` with seeded random weights.

    Its MoE blocks are `family_spec(family, d_model, d_ff=32, n_experts=8)` (a
    shared expert of 64 where the family has one); attention and embeddings are
    as small as the architecture allows. Vocabulary 100. Built from a config:
    transformers' own initialisation under `torch.manual_seed(seed)`, then the
    MoE blocks re-drawn by `reinit_block` (routers whose logits spread).
    """
    import transformers as tf

    if family not in FAMILIES:
        raise ConfigError(f"unknown MoE family {family!r}; allowed: {list(FAMILIES)}")
    shared = {"shared_d_ff": 64} if family in ("qwen2_moe", "deepseek_v3") else {}
    spec = family_spec(family, d_model=d_model, d_ff=32, n_experts=8, **shared)
    cfg = hf_config(spec, family)
    if family == "switch":
        cfg.update(
            {
                "vocab_size": 100,
                "num_layers": layers,
                "num_decoder_layers": layers,
                "num_sparse_encoder_layers": layers,
                "num_sparse_decoder_layers": layers,
                "num_heads": 2,
                "d_kv": d_model // 2,
                "decoder_start_token_id": 0,
                "pad_token_id": 0,
                "eos_token_id": 1,
            }
        )
        torch.manual_seed(seed)
        model = tf.SwitchTransformersForConditionalGeneration(cfg)
    else:
        cfg.update(
            {
                "vocab_size": 100,
                "num_hidden_layers": layers,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "head_dim": d_model // 2,
                "max_position_embeddings": 64,
            }
        )
        if family == "deepseek_v3":
            cfg.update(
                {
                    "first_k_dense_replace": 0,
                    "q_lora_rank": None,
                    "kv_lora_rank": 16,
                    "qk_rope_head_dim": 8,
                    "qk_nope_head_dim": 8,
                    "qk_head_dim": 16,
                    "head_dim": 8,
                    "v_head_dim": 16,
                }
            )
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(cfg)
    for i, (_, _, block) in enumerate(_moe_blocks(model)):
        reinit_block(block, seed + 1 + i)
    return model.float().eval()
