"""PyTorch and NumPy float references against the HF blocks themselves (fp32, CPU).

Blocks are built offline from config objects and re-initialised from a seed;
top-k order is unspecified in HF (`sorted=False`, ties), so routing is
compared as expert *sets* per token, with the gate weight of each expert.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from pymodel.config import ConfigError, MoESpec
from pymodel.families import FAMILIES, family_spec
from pymodel.numerics import NumericsError
from pymodel.reference import moe_forward_float
from pymodel.weights import MoEWeights
from sw_driver.hf import build_hf_block, build_hf_block_from_spec, import_hf_block
from sw_driver.reference import (
    TorchResult,
    cpu_threads_for,
    default_device,
    run_hf_block,
    torch_moe_forward,
)

T, D, F, E = 32, 64, 128, 8
TOL = 1e-5
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="PyTorch sees no CUDA GPU")


class Case:
    """One family's block, its imported spec and weights, tokens and the block's own output."""

    def __init__(self, block: nn.Module, x: np.ndarray) -> None:
        self.block = block
        self.spec, self.weights = import_hf_block(block)
        self.x = x
        self.y_hf = run_hf_block(block, x)


@pytest.fixture(scope="module")
def cases(make_tokens: Callable[..., np.ndarray]) -> dict[str, Case]:
    return {
        family: Case(
            build_hf_block(family, seed=100 + i, d_model=D, d_ff=F, n_experts=E),
            make_tokens(i, T, D),
        )
        for i, family in enumerate(FAMILIES)
    }


def hf_routing(block: nn.Module, x: np.ndarray) -> list[dict[int, float]]:
    """Per token, {expert: gate weight} as the HF 5.x router computes it (kept pairs only)."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        if hasattr(block, "router"):
            one_hot, probs, _ = block.router(xt[None])
            ids = one_hot[0].argmax(dim=-1)
            kept = one_hot[0].sum(dim=-1) > 0
            return [
                {int(i): float(p)} if k else {}
                for i, p, k in zip(ids, probs[0, :, 0], kept, strict=True)
            ]
        _, weights, ids = block.gate(xt)
    return [
        dict(zip(i.tolist(), w.tolist(), strict=True)) for i, w in zip(ids, weights, strict=True)
    ]


def our_routing(r: TorchResult) -> list[dict[int, float]]:
    return [
        {int(i): float(w) for i, w, k in zip(ids, ws, ks, strict=True) if k}
        for ids, ws, ks in zip(r.expert_ids, r.gate_weights, r.kept, strict=True)
    ]


def assert_same_routing(got: list[dict[int, float]], want: list[dict[int, float]]) -> None:
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.keys() == w.keys(), f"token {t}: experts {sorted(g)} != HF {sorted(w)}"
        for e in g:
            assert abs(g[e] - w[e]) <= 1e-6, f"token {t} expert {e}: {g[e]} != {w[e]}"


# --- (a)/(b): both float references match the HF block ----------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_reference_matches_hf(cases: dict[str, Case], family: str) -> None:
    c = cases[family]
    r = torch_moe_forward(c.spec, c.weights, c.x, device="cpu")
    assert r.y.dtype == np.float32 and r.y.shape == (T, D)
    assert r.device == "cpu" and r.dtype == "float32"
    assert float(np.max(np.abs(c.y_hf))) > 0.1  # a real signal, not a vanishing layer
    assert float(np.max(np.abs(r.y - c.y_hf))) <= TOL
    assert_same_routing(our_routing(r), hf_routing(c.block, c.x))


@pytest.mark.parametrize("family", FAMILIES)
def test_numpy_reference_matches_hf(cases: dict[str, Case], family: str) -> None:
    c = cases[family]
    f = moe_forward_float(c.spec, c.weights, c.x)
    assert float(np.max(np.abs(f.y - c.y_hf))) <= TOL
    r = torch_moe_forward(c.spec, c.weights, c.x, device="cpu")
    np.testing.assert_array_equal(f.kept, r.kept)
    assert [set(a) for a in f.expert_ids] == [set(a) for a in r.expert_ids]
    np.testing.assert_allclose(f.scores, r.scores, atol=1e-6)
    np.testing.assert_allclose(f.logits, r.logits, atol=1e-5)


def _assert_references_match_hf(block: nn.Module, x: np.ndarray) -> None:
    spec, w = import_hf_block(block)
    y_hf = run_hf_block(block, x)
    assert float(np.max(np.abs(torch_moe_forward(spec, w, x, device="cpu").y - y_hf))) <= TOL
    assert float(np.max(np.abs(moe_forward_float(spec, w, x).y - y_hf))) <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_sweep_matches_hf(family: str, make_tokens: Callable[..., np.ndarray]) -> None:
    """Eight more seeds per family at d=32: the bound holds beyond one lucky draw."""
    options = {"capacity": 4} if family == "switch" else {}
    for seed in range(8):
        block = build_hf_block(family, seed=seed, d_model=32, d_ff=64, n_experts=E, **options)
        _assert_references_match_hf(block, make_tokens(1000 + seed, T, 32))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_soak_random_shapes(family: str, make_tokens: Callable[..., np.ndarray]) -> None:
    """Random sizes, expert counts, top-k and capacities (run with `make soak`)."""
    rng = np.random.default_rng(FAMILIES.index(family))
    for trial in range(60):
        n_experts = int(rng.choice([4, 6, 8, 12, 16]))
        options: dict = {
            "d_model": int(rng.integers(8, 97)),
            "d_ff": int(rng.integers(8, 161)),
            "n_experts": n_experts,
        }
        if family == "switch":
            options["capacity"] = int(rng.integers(1, 12))
        else:
            options["top_k"] = int(rng.integers(1, min(4, n_experts // 2) + 1))
        block = build_hf_block(family, seed=trial, **options)
        t = int(rng.integers(1, 65))
        _assert_references_match_hf(block, make_tokens(trial, t, options["d_model"]))


def test_switch_capacity_drops_tokens(make_tokens: Callable[..., np.ndarray]) -> None:
    """Capacity 2 over 32 tokens and 8 experts: overflow tokens get zero output, in order."""
    block = build_hf_block("switch", seed=7, d_model=D, d_ff=F, n_experts=E, capacity=2)
    x = make_tokens(40, T, D)
    spec, w = import_hf_block(block)
    y_hf = run_hf_block(block, x)
    r = torch_moe_forward(spec, w, x, device="cpu")
    assert r.dropped >= 4
    dropped_rows = ~r.kept[:, 0]
    assert np.all(y_hf[dropped_rows] == 0) and np.all(r.y[dropped_rows] == 0)
    assert np.all(np.abs(y_hf[~dropped_rows]).max(axis=1) > 0)
    assert float(np.max(np.abs(r.y - y_hf))) <= TOL
    for e in range(E):  # each expert keeps its first two tokens in sequence order
        rows = np.flatnonzero(r.expert_ids[:, 0] == e)
        np.testing.assert_array_equal(r.kept[rows, 0], np.arange(rows.size) < 2)
    assert_same_routing(our_routing(r), hf_routing(block, x))
    f = moe_forward_float(spec, w, x)
    assert float(np.max(np.abs(f.y - y_hf))) <= TOL


def test_deepseek_group_limit_changes_the_choice(make_tokens: Callable[..., np.ndarray]) -> None:
    """With 1 of 4 groups allowed, plain top-2 picks experts the HF block may not use."""
    spec = family_spec("deepseek_v3", d_model=D, d_ff=F, n_experts=E, n_group=4, topk_group=1)
    block = build_hf_block_from_spec(spec, seed=9)
    x = make_tokens(41, T, D)
    _, w = import_hf_block(block)
    grouped = torch_moe_forward(spec, w, x, device="cpu")
    plain = torch_moe_forward(spec.replace(n_group=1, topk_group=1), w, x, device="cpu")
    changed = [set(a) != set(b) for a, b in zip(grouped.expert_ids, plain.expert_ids, strict=True)]
    assert sum(changed) >= 3
    assert all(len({int(e) // 2 for e in ids}) == 1 for ids in grouped.expert_ids)
    y_hf = run_hf_block(block, x)
    assert float(np.max(np.abs(grouped.y - y_hf))) <= TOL
    assert float(np.max(np.abs(plain.y - y_hf))) > 1e-2
    assert_same_routing(our_routing(grouped), hf_routing(block, x))


def test_spec_not_from_hf_matches_numpy(make_tokens: Callable[..., np.ndarray]) -> None:
    """GELU experts, top-3 with renormalisation and a capacity: no HF family has this mix."""
    spec = MoESpec(
        d_model=32, d_ff=48, n_experts=6, top_k=3, renormalize=True, capacity=7, ffn="gelu"
    )
    w = MoEWeights.random(spec, seed=3, std=0.2)
    x = make_tokens(42, 24, 32)
    r = torch_moe_forward(spec, w, x)
    f = moe_forward_float(spec, w, x)
    assert r.dropped > 0
    np.testing.assert_array_equal(r.kept, f.kept)
    np.testing.assert_array_equal(r.expert_ids, f.expert_ids)
    assert float(np.max(np.abs(r.y - f.y))) <= TOL


def test_ties_go_to_the_lower_expert() -> None:
    """Identical router columns give equal scores: the lower index wins, as the hardware does."""
    spec = MoESpec(d_model=8, d_ff=8, n_experts=4, top_k=2, ffn="relu")
    w = MoEWeights.random(spec, seed=1)
    router = w.router.copy()
    router[:, 1] = router[:, 2] = router[:, 3] = router[:, 0]
    tied = MoEWeights(router=router, w1=w.w1, w2=w.w2)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    r = torch_moe_forward(spec, tied, x, device="cpu")
    np.testing.assert_array_equal(r.expert_ids, np.tile([0, 1], (5, 1)))


# --- devices, precision, bad input --------------------------------------------------------------


def test_default_device() -> None:
    assert default_device().type == ("cuda" if CUDA else "cpu")


def test_small_cpu_work_runs_on_one_thread_and_restores() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_threads_for(torch.device("cpu"), 1000):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with cpu_threads_for(torch.device("cpu"), 1 << 30):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bad_input_is_rejected(cases: dict[str, Case]) -> None:
    c = cases["mixtral"]
    with pytest.raises(ConfigError, match=r"x has shape \[64\], expected"):
        torch_moe_forward(c.spec, c.weights, c.x[0])
    with pytest.raises(ConfigError, match=r"x has shape \[32, 63\]"):
        torch_moe_forward(c.spec, c.weights, c.x[:, :-1])
    with pytest.raises(ConfigError, match=r"x has shape \[0, 64\]"):
        torch_moe_forward(c.spec, c.weights, c.x[:0])
    for bad in (np.nan, np.inf, -np.inf):
        x = c.x.copy()
        x[3, 5] = bad
        with pytest.raises(NumericsError, match="NaN/Inf"):
            torch_moe_forward(c.spec, c.weights, x)
        with pytest.raises(NumericsError, match="NaN/Inf"):
            run_hf_block(c.block, x)
    with pytest.raises(NumericsError, match="float array"):
        torch_moe_forward(c.spec, c.weights, c.x.astype(np.int32))
    with pytest.raises(NumericsError, match="numpy array or torch tensor"):
        torch_moe_forward(c.spec, c.weights, c.x.tolist())
    with pytest.raises(ConfigError, match=r"x has shape \[32, 63\]"):
        run_hf_block(c.block, c.x[:, :-1])
    with pytest.raises(ConfigError, match=r"dtype torch\.float16 not supported"):
        torch_moe_forward(c.spec, c.weights, c.x, dtype=torch.float16)
    with pytest.raises(ConfigError, match="only 'cpu' and 'cuda'"):
        torch_moe_forward(c.spec, c.weights, c.x, device="meta")
    with pytest.raises(ConfigError, match=r"MoEWeights\.w3 missing"):
        torch_moe_forward(c.spec, MoEWeights(c.weights.router, c.weights.w1, c.weights.w2), c.x)
    with pytest.raises(ConfigError, match="must be a MoESpec"):
        torch_moe_forward("mixtral", c.weights, c.x)
    with pytest.raises(ConfigError, match="unsupported MoE block type"):
        run_hf_block(nn.Linear(D, D), c.x)


@pytest.mark.skipif(CUDA, reason="checks the CPU-only behaviour")
def test_cpu_only_machine_refuses_cuda_and_bf16(cases: dict[str, Case]) -> None:
    c = cases["olmoe"]
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        torch_moe_forward(c.spec, c.weights, c.x, device="cuda")
    with pytest.raises(ConfigError, match="bf16 reference runs need CUDA"):
        torch_moe_forward(c.spec, c.weights, c.x, dtype=torch.bfloat16)


def test_torch_tensor_input_is_accepted(cases: dict[str, Case]) -> None:
    c = cases["qwen3_moe"]
    r = torch_moe_forward(c.spec, c.weights, torch.from_numpy(c.x))
    assert float(np.max(np.abs(r.y - c.y_hf))) <= TOL


def test_run_hf_block_accepts_4x_tuple_outputs(cases: dict[str, Case]) -> None:
    """transformers 4.x blocks returned (hidden, router_logits); 5.x returns the tensor."""
    c = cases["mixtral"]

    class TupleMixtral(type(c.block)):
        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = hidden_states.reshape(-1, hidden_states.shape[-1]) @ self.gate.weight.T
            return super().forward(hidden_states), logits

    block = copy.deepcopy(c.block)
    block.__class__ = TupleMixtral
    np.testing.assert_array_equal(run_hf_block(block, c.x), c.y_hf)


@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_matches_cpu(cases: dict[str, Case], family: str) -> None:
    """fp32 on CUDA within the fp32 bound; bf16 experts within bf16's ~3 significant digits."""
    c = cases[family]
    cpu = torch_moe_forward(c.spec, c.weights, c.x, device="cpu")
    gpu = torch_moe_forward(c.spec, c.weights, c.x, device="cuda")
    assert gpu.device.startswith("cuda")
    assert [set(a) for a in gpu.expert_ids] == [set(a) for a in cpu.expert_ids]
    assert float(np.max(np.abs(gpu.y - c.y_hf))) <= TOL
    bf16 = torch_moe_forward(c.spec, c.weights, c.x, device="cuda", dtype=torch.bfloat16)
    assert bf16.dtype == "bfloat16" and bf16.y.dtype == np.float32
    assert [set(a) for a in bf16.expert_ids] == [set(a) for a in cpu.expert_ids]
    scale = float(np.max(np.abs(cpu.y)))
    assert float(np.max(np.abs(bf16.y - cpu.y))) <= 3e-2 * scale
