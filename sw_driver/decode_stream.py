"""Multi-layer decode streams: a stack of MoE layers run token by token on a backend.

Why: expert caching, offloading and prefetch are decided across layers and
tokens, so they can only be measured on a stream — L layers, one token a
step, each layer's routing feeding the next token. A `DecodeStack` is L MoE
layers of one family (random weights from a seed) with the transformer's
float parts on the host: an RMSNorm before each layer, the residual add after
it, an embedding and an LM head that picks the next token greedily. There is
no attention: a token's hidden state starts from its embedding. Each layer's
down projections are scaled so that its output adds `update_ratio` of the
residual's RMS (random experts otherwise add a vanishing or an exploding
update, and the routing of consecutive layers would be trivially equal or
unrelated). The layers are calibrated once (static scales, as the numeric
contract demands) on a calibration prompt run through the float stack, then
every layer call is one `T = 1` run of the quantised layer on the device.

`DecodeStack.run` records what an offloading policy needs: the routing trace
(`pymodel.expert_traces.RoutingTrace`, saved as JSON), the pre-gated
prediction of each layer's experts made while the layer before it computes
(layer l+1's router applied to layer l's input: the residual stream changes
little from one layer to the next), the cycles of each layer call, and — on a
hardware backend — whether each call was bit-exact against the golden model.
On a `Prefetcher` (`sw_driver.offload.CachedDevice(prefetch=True)`) the
prediction drives prefetch: the stream hands it to the device before running
the layer before, which has the copy engine copy those experts in beside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from pymodel.config import AccelConfig, ConfigError, MoESpec, _check_int
from pymodel.expert_traces import RoutingTrace, prediction_accuracy
from pymodel.families import family_spec
from pymodel.layer import quantize_input, route
from pymodel.quantize import QuantizedLayer, calibrate, quantize_layer
from pymodel.reference import moe_forward_float
from pymodel.weights import MoEWeights

from .device import Device, GoldenDevice

__all__ = ["DecodeStack", "DecodeStreamResult", "Prefetcher", "StackLayer", "rms_norm"]

NORM_EPS = 1e-6
"""The RMSNorm epsilon (Mixtral, Qwen-MoE, OLMoE and DeepSeek-V3 use 1e-6 or 1e-5)."""


def rms_norm(h: np.ndarray, weight: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """`h / sqrt(mean(h²) + eps) · weight` over the last axis, in fp32."""
    h32 = h.astype(np.float32)
    scale = 1.0 / np.sqrt(np.mean(h32 * h32, axis=-1, keepdims=True) + np.float32(eps))
    return (h32 * scale * weight).astype(np.float32)


@dataclass(frozen=True)
class StackLayer:
    """One MoE layer of the stack: its float weights, its norm and its quantised form."""

    spec: MoESpec
    weights: MoEWeights
    norm: np.ndarray  # [d_model] float32 RMSNorm weight
    ql: QuantizedLayer


@dataclass
class DecodeStreamResult:
    """What one decode stream did, per step and layer."""

    tokens: list[int]
    """The prompt token, then the token each step produced."""
    trace: RoutingTrace
    """The experts each layer used at each step (the backend's own routing)."""
    predicted: np.ndarray
    """[steps, layers, k] pre-gated experts; layer 0 has no predecessor (-1)."""
    y_q: np.ndarray
    """[steps, layers, d_model] each layer call's int output."""
    cycles: np.ndarray
    """[steps, layers] each call's total cycles (0 on a backend without a clock), with the
    cycles it waited for its prefetch copies beyond the layer before it."""
    bit_exact: np.ndarray | None
    """[steps, layers] whether each call equalled the golden model (None on golden)."""

    def prediction_accuracy(self) -> np.ndarray:
        """Per layer: |predicted ∩ actual| / |actual|, averaged over steps (NaN for layer 0)."""
        return prediction_accuracy(self.trace, self.predicted)

    @property
    def all_bit_exact(self) -> bool | None:
        return None if self.bit_exact is None else bool(self.bit_exact.all())


@runtime_checkable
class Prefetcher(Protocol):
    """A device that can copy a layer's predicted experts in while the layer before it runs
    (`sw_driver.offload.CachedDevice(prefetch=True)`)."""

    prefetching: bool

    def prefetch(self, ql: QuantizedLayer, experts: np.ndarray) -> None: ...


class DecodeStack:
    """L MoE layers with host-side norms, residuals and a tied embedding; see the module doc."""

    def __init__(
        self,
        layers: list[StackLayer],
        embedding: np.ndarray,
        lm_head: np.ndarray,
        cfg: AccelConfig,
        family: str,
    ) -> None:
        if not layers:
            raise ConfigError("a DecodeStack needs at least one layer")
        d = layers[0].spec.d_model
        if any(layer.spec.d_model != d for layer in layers):
            raise ConfigError("every layer of a DecodeStack must have the same d_model")
        for name, table in (("embedding", embedding), ("LM head", lm_head)):
            if table.ndim != 2 or table.shape != (len(embedding), d):
                raise ConfigError(f"the {name} must be [vocab, {d}], got {table.shape}")
        for layer in layers:
            cfg.check_fits(layer.spec, 1)
        self.layers = layers
        self.embedding = embedding.astype(np.float32)
        self.lm_head = lm_head.astype(np.float32)
        self.cfg = cfg
        self.family = family

    @classmethod
    def build(
        cls,
        family: str,
        *,
        layers: int = 4,
        cfg: AccelConfig | None = None,
        seed: int = 0,
        vocab: int = 512,
        calib_tokens: int = 32,
        update_ratio: float = 0.5,
        **spec_options: int,
    ) -> DecodeStack:
        """A stack of `layers` layers of `family` (`family_spec` sizes and options), seeded.

        Layer l's experts and router come from `MoEWeights.random(spec, seed + l)`,
        its down projections scaled to `update_ratio` (see the module doc); the
        norms, the embedding and the LM head from `seed`. Each layer is
        calibrated on the float stack's activations at its input for
        `calib_tokens` random tokens.
        """
        _check_int("DecodeStack", "layers", layers, 1)
        _check_int("DecodeStack", "vocab", vocab, 2)
        _check_int("DecodeStack", "calib_tokens", calib_tokens, 1)
        if not 0.0 < update_ratio <= 4.0:
            raise ConfigError(f"DecodeStack update_ratio = {update_ratio} is outside (0, 4]")
        cfg = cfg or AccelConfig()
        spec = family_spec(family, **spec_options)
        rng = np.random.default_rng(seed)
        embedding = rng.normal(0.0, 1.0, (vocab, spec.d_model)).astype(np.float32)
        lm_head = rng.normal(0.0, 1.0, (vocab, spec.d_model)).astype(np.float32)
        h = embedding[rng.integers(0, vocab, calib_tokens)]
        stack = []
        for layer in range(layers):
            norm = (1.0 + 0.1 * rng.standard_normal(spec.d_model)).astype(np.float32)
            x = rms_norm(h, norm)
            w = _scaled(spec, MoEWeights.random(spec, seed=seed + layer), x, h, update_ratio)
            ql = quantize_layer(spec, w, calibrate(spec, w, x), cfg)
            stack.append(StackLayer(spec, w, norm, ql))
            h = h + moe_forward_float(spec, w, x).y
        return cls(stack, embedding, lm_head, cfg, family)

    def next_token(self, h: np.ndarray) -> int:
        """The greedy token of hidden state `h` [d] through the final norm and the LM head."""
        return int(np.argmax(self.lm_head @ rms_norm(h, np.ones_like(h))))

    def predict(self, layer: int, h: np.ndarray) -> np.ndarray:
        """Layer `layer`'s experts for hidden state `h` [d] by its own router (golden, host)."""
        target = self.layers[layer]
        x_q = quantize_input(target.ql, rms_norm(h[None], target.norm))
        return route(target.ql, x_q, self.cfg).expert_ids[0]

    def run(
        self,
        device: Device,
        steps: int,
        *,
        prompt_token: int = 0,
        on_step: Callable[[int], None] | None = None,
    ) -> DecodeStreamResult:
        """Decode `steps` tokens from `prompt_token`, each layer call on `device`.

        A hardware backend's every call is compared with the golden model's on
        the same int input; the stream continues with the backend's output.
        `on_step(step)` is called after each step (progress bars).
        """
        _check_int("DecodeStack.run", "steps", steps, 1)
        _check_int("DecodeStack.run", "prompt_token", prompt_token, 0, len(self.embedding) - 1)
        n_layers, k = len(self.layers), self.layers[0].spec.top_k
        d = self.layers[0].spec.d_model
        golden = None if isinstance(device, GoldenDevice) else GoldenDevice(self.cfg)
        prefetching = isinstance(device, Prefetcher) and device.prefetching
        experts = np.zeros((steps, n_layers, k), dtype=np.int64)
        predicted = np.full((steps, n_layers, k), -1, dtype=np.int64)
        y_q = np.zeros((steps, n_layers, d), dtype=np.int64)
        cycles = np.zeros((steps, n_layers), dtype=np.int64)
        exact = None if golden is None else np.zeros((steps, n_layers), dtype=bool)
        tokens = [prompt_token]
        for step in range(steps):
            h = self.embedding[tokens[-1]].copy()
            for index, layer in enumerate(self.layers):
                if index + 1 < n_layers:
                    predicted[step, index + 1] = self.predict(index + 1, h)
                    if prefetching:
                        device.prefetch(self.layers[index + 1].ql, predicted[step, index + 1])
                x_q = quantize_input(layer.ql, rms_norm(h[None], layer.norm))
                result = device.run(layer.ql, x_q)
                if golden is not None and exact is not None:
                    exact[step, index] = result.same_outputs(golden.run(layer.ql, x_q))
                experts[step, index] = result.expert_ids[0]
                y_q[step, index] = result.y_q[0]
                counters = result.counters
                cycles[step, index] = counters.get("cycles_total", 0) + counters.get(
                    "prefetch_wait_cycles", 0
                )
                h = h + (result.y_q[0] * layer.ql.s_y).astype(np.float32)
            tokens.append(self.next_token(h))
            if on_step is not None:
                on_step(step)
        n_experts = self.layers[0].spec.n_experts
        trace = RoutingTrace(experts, n_experts, f"{self.family} stack on {device.name}")
        return DecodeStreamResult(tokens, trace, predicted, y_q, cycles, exact)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))


def _scaled(spec: MoESpec, w: MoEWeights, x: np.ndarray, h: np.ndarray, ratio: float) -> MoEWeights:
    """`w` with its down projections scaled so the layer adds `ratio` · RMS(h) on `x`."""
    factor = np.float32(ratio * _rms(h) / max(_rms(moe_forward_float(spec, w, x).y), 1e-12))
    shared = None if w.shared_w2 is None else w.shared_w2 * factor
    return dataclasses.replace(w, w2=w.w2 * factor, shared_w2=shared)
