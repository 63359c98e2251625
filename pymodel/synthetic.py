"""Full-size MoE layers whose int8 expert weights are generated on demand, never held whole.

Why: one DeepSeek-V3 layer has 256 routed experts of 3 × 7168 × 2048 int8
weights (11.3 GB); a decode step (T = 1) reads only the top-k and the shared
expert. `LazyExpertWeights` stands in for the stacked `[n, K, N]` int8 array of
an `FFNParams`: indexing expert `e` generates its weights from `(seed, matrix,
e)`, the same bytes on every call, so the compiler (which writes only the
experts a layer reads) and the golden model (which evaluates only experts that
receive tokens) compute with identical weights and neither materialises the
rest.

`synthetic_layer` builds a whole `QuantizedLayer` this way. Its requantisation
constants come from the weight and token statistics (uniform int8 weights,
tokens of standard deviation `TOKEN_STD`), not from a float calibration run —
that would evaluate every expert — so every activation lands near
`TOKEN_STD` inside the int8 range instead of saturating or vanishing.
"""

from __future__ import annotations

import math

import numpy as np

from .config import AccelConfig, ConfigError, MoESpec
from .gate import check_routing
from .numerics import make_lut, qmax, quantize_multiplier
from .quantize import FFNParams, QuantizedLayer, assemble_layer
from .reference import ACTIVATIONS

__all__ = ["TOKEN_STD", "LazyExpertWeights", "synthetic_layer", "synthetic_tokens"]

TOKEN_STD = 32.0
"""Target standard deviation of every int8 activation (tokens, a, u, h, expert outputs)."""

_LEVELS = 16
"""Distinct per-channel scale factors: each channel's multiplier is one of these."""

_H_STD = 20.0
"""About the standard deviation of h_q: act(a) of a unit-variance a at scale act(4)/qmax is
≈ 20 codes (SiLU, GELU, ReLU alike); SwiGLU's g·u is requantised back to that size."""

_MATRIX_TAGS = {"w1": 1, "w3": 3, "w2": 2, "shared.w1": 11, "shared.w3": 13, "shared.w2": 12}


class LazyExpertWeights:
    """int8 weights of `n` experts, `[n, k, n_out]`, generated per expert when indexed.

    `weights[e]` is a fresh `[k, n_out]` int8 array, uniform in ±qmax(bits),
    from a generator seeded with `(seed, tag, e)`: deterministic, independent of
    which other experts were generated, and costing memory only while the caller
    holds it.
    """

    def __init__(self, n: int, k: int, n_out: int, *, seed: int, tag: int, bits: int = 8) -> None:
        for name, value in (("n", n), ("k", k), ("n_out", n_out), ("seed", seed), ("tag", tag)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"LazyExpertWeights.{name} = {value!r} must be an int >= 0")
        if not 2 <= bits <= 8:
            raise ConfigError(f"LazyExpertWeights.bits = {bits} must be in [2, 8]")
        self.shape = (n, k, n_out)
        self.dtype = np.dtype(np.int8)
        self.seed, self.tag, self.bits = seed, tag, bits

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes the whole stack would take if it were materialised."""
        return math.prod(self.shape)

    def __getitem__(self, e: int | np.integer) -> np.ndarray:
        if isinstance(e, bool) or not isinstance(e, int | np.integer):
            raise TypeError(f"LazyExpertWeights index must be an expert number, got {e!r}")
        if not 0 <= e < self.shape[0]:
            raise IndexError(f"expert {e} out of range [0, {self.shape[0]})")
        rng = np.random.default_rng([self.seed, self.tag, int(e)])
        top = qmax(self.bits)
        return rng.integers(-top, top + 1, size=self.shape[1:], dtype=np.int8)


def _uniform_std(bits: int) -> float:
    """Standard deviation of an int uniform in ±qmax(bits)."""
    top = qmax(bits)
    return math.sqrt(((2 * top + 1) ** 2 - 1) / 12)


def _channel_multipliers(
    rng: np.random.Generator, real: float, shape: tuple[int, ...], cfg: AccelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mult, shift) near `real`: one of `_LEVELS` factors in [0.75, 1.33] each."""
    factors = real * np.geomspace(0.75, 4 / 3, _LEVELS)
    pairs = np.array([quantize_multiplier(float(f), cfg.mult_bits) for f in factors])
    pick = rng.integers(0, _LEVELS, size=shape)
    return pairs[pick, 0].astype(np.int64), pairs[pick, 1].astype(np.int64)


def _ffn(
    rng: np.random.Generator,
    ffn: str,
    n: int,
    d: int,
    f: int,
    seed: int,
    prefix: str,
    cfg: AccelConfig,
) -> FFNParams:
    """Integer constants of `n` experts of kind `ffn` with lazily generated weights."""
    bits = cfg.act_bits
    wstd = _uniform_std(cfg.weight_bits)
    gated = ffn == "swiglu"

    def lazy(name: str, k: int, n_out: int) -> LazyExpertWeights:
        tag = _MATRIX_TAGS[prefix + name]
        return LazyExpertWeights(n, k, n_out, seed=seed, tag=tag, bits=cfg.weight_bits)

    # a = x·W1 has standard deviation TOKEN_STD·wstd·√d before requantisation.
    real1 = 1.0 / (wstd * math.sqrt(d))
    m1, sh1 = _channel_multipliers(rng, real1, (n, f), cfg)
    s_a = np.full(n, 4.0 / qmax(bits))  # ±qmax codes cover ±4 (four standard deviations)
    act = ACTIVATIONS[ffn]
    s_g = np.full(n, float(act(np.array(4.0))) / qmax(bits))
    lut = np.stack([make_lut(act, float(a), float(g), bits) for a, g in zip(s_a, s_g, strict=True)])
    one = np.ones((n, f))
    params: dict[str, object] = dict(w1_q=lazy("w1", d, f), w1_scale=one, m1=m1, sh1=sh1, lut=lut)
    params.update(s_a=s_a, s_g=s_g)
    if gated:
        m3, sh3 = _channel_multipliers(rng, real1, (n, f), cfg)
        s_u = s_a.copy()
        # std(g_q · u_q) ≈ 810 (measured); × 3 / qmax puts h_q near _H_STD.
        s_h = s_g * s_u * qmax(bits) / 3
        pairs = [quantize_multiplier(float(r), cfg.mult_bits) for r in s_g * s_u / s_h]
        params.update(w3_q=lazy("w3", d, f), w3_scale=one, m3=m3, sh3=sh3, s_u=s_u, s_h=s_h)
        params.update(m_h=np.array([p[0] for p in pairs]), sh_h=np.array([p[1] for p in pairs]))
    else:
        params.update(s_h=s_g.copy())
    m2, sh2 = _channel_multipliers(rng, TOKEN_STD / (_H_STD * wstd * math.sqrt(f)), (n, d), cfg)
    params.update(w2_q=lazy("w2", f, d), w2_scale=np.ones((n, d)), m2=m2, sh2=sh2)
    return FFNParams(**params)  # type: ignore[arg-type]


def synthetic_layer(spec: MoESpec, cfg: AccelConfig, seed: int) -> QuantizedLayer:
    """A `QuantizedLayer` of `spec` for `cfg` whose expert weights are `LazyExpertWeights`.

    The router, bias, multipliers and LUTs are ordinary (small) arrays; the
    float scales are nominal (this layer has no float twin), chosen so the
    integer activations keep a standard deviation near `TOKEN_STD`.
    """
    check_routing(spec)
    cfg.check_fits(spec, 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"synthetic_layer seed = {seed!r} must be an int >= 0")
    rng = np.random.default_rng([seed, 0])
    d, e, g = spec.d_model, spec.n_experts, cfg.gate_frac_bits
    wstd = _uniform_std(cfg.weight_bits)
    ncol = e + (1 if spec.shared_gate else 0)
    top = qmax(cfg.weight_bits)
    router_q = rng.integers(-top, top + 1, size=(d, ncol), dtype=np.int8)
    # Logits of standard deviation ~1.5 in Q.logit_frac_bits.
    real_r = 1.5 * 2**cfg.logit_frac_bits / (TOKEN_STD * wstd * math.sqrt(d))
    router_mult, router_shift = _channel_multipliers(rng, real_r, (ncol,), cfg)
    experts = _ffn(rng, spec.ffn, e, d, spec.d_ff, seed, "", cfg)
    shared = None
    if spec.has_shared:
        shared = _ffn(rng, "swiglu", 1, d, spec.shared_d_ff, seed, "shared.", cfg)
    bias_q = None
    if spec.correction_bias:
        bias_q = np.round(rng.standard_normal(e) * 0.05 * 2**g).astype(np.int64)
    s_ye = 1.0 / TOKEN_STD
    s_y = 2 * s_ye
    router = {"q": router_q, "scale": np.ones(ncol), "mult": router_mult, "shift": router_shift}
    return assemble_layer(spec, cfg, 1.0 / TOKEN_STD, router, experts, s_ye, s_y, bias_q, shared)


def synthetic_tokens(spec: MoESpec, cfg: AccelConfig, tokens: int, seed: int) -> np.ndarray:
    """int tokens `[tokens, d_model]`: normal with std `TOKEN_STD`, rounded, clipped to act_bits."""
    top = qmax(cfg.act_bits)
    x = np.random.default_rng([seed, 1]).standard_normal((tokens, spec.d_model)) * TOKEN_STD
    return np.clip(np.round(x), -top, top).astype(np.int64)
