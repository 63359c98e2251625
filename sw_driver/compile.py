"""The layer compiler: a quantised MoE layer + tokens → memory image + register program.

Why: the accelerator (`rtl.top.MoEAccel`) runs a whole layer after one
`CTRL.start`; everything it needs sits in external memory in the exact order
its units consume it (`rtl.layout` is the one layout definition) and in the
descriptor registers (`rtl.regs`). This module builds both, and decodes the
results the hardware writes back.

API (stable; backends and the CLI build on it)::

    image = compile_layer(ql, x_q, cfg, base=0, watchdog_cycles=0)
    image.mem            # np.uint8 [image.mem_bytes]: the initial memory contents
    image.regions        # {name: Region(addr, size)}, 64-byte aligned
    image.program        # [(register name, value), ...]; the final entry is CTRL.start
    # ... a backend copies image.mem to address image.base of its memory, runs the writes
    # in order, waits for STATUS.done (or .error), then:
    out = read_outputs(mem, image)        # HwOutputs(y_q, expert_ids, gate_weights)
    counts = read_expert_counts(write_reg, read_reg, image)   # [E] kept pairs per expert

`compile_layer` validates before anything runs: `ql` must be built for
`cfg`'s numerics and fit its limits, `x_q` must be an integer [T, d_model]
array within the act_bits range, the config must be one the top supports
(`rtl.layout.check_top_config`) and the routing one the gate implements;
any failure raises `pymodel.config.ConfigError` (or `NumericsError` for
values) naming the problem.

Regions (`LayerImage.regions`): tokens, router_params, bias, router_weights,
expert_table, luts, expert<e> (W1/W3 stream, W2 stream, parameter words),
shared (the same for the shared expert), scratch, shared_scratch, routing,
output. Only `routing` and `output` are read back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.gate import check_routing, quantize_scaling
from pymodel.layer import check_tokens
from pymodel.quantize import FFNParams, QuantizedLayer
from rtl import layout
from rtl.regs import REGISTER_MAP, FFNKind, RoutingMode, SharedExpert

__all__ = [
    "HwOutputs",
    "LayerImage",
    "Region",
    "compile_layer",
    "read_expert_counts",
    "read_outputs",
]

PAGE = 4096
"""The image size is rounded up to whole 4 KiB pages."""

_FFN_CODES = {"swiglu": FFNKind.SWIGLU, "gelu": FFNKind.GELU, "relu": FFNKind.RELU}


@dataclass(frozen=True)
class Region:
    """One memory region of the image: byte address and size."""

    addr: int
    size: int


@dataclass(frozen=True)
class LayerImage:
    """What the hardware needs for one layer: memory contents and register writes."""

    cfg: AccelConfig
    spec: MoESpec
    tokens: int
    mem: np.ndarray
    regions: dict[str, Region]
    program: list[tuple[str, int]]
    base: int = 0
    meta: dict[str, int] = field(default_factory=dict)

    @property
    def mem_bytes(self) -> int:
        """Bytes of memory the image occupies from `base` (whole pages)."""
        return int(self.mem.size)


@dataclass(frozen=True)
class HwOutputs:
    """What the hardware wrote back for one layer (int64 arrays)."""

    y_q: np.ndarray  # [T, d_model] act_bits output at scale ql.s_y
    expert_ids: np.ndarray  # [T, k]
    gate_weights: np.ndarray  # [T, k] unsigned Q.gate_frac_bits


class _Image:
    """Region allocator + byte writer."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.at = base
        self.regions: dict[str, Region] = {}
        self.chunks: list[tuple[int, bytes]] = []

    def alloc(self, name: str, size: int) -> int:
        addr = layout.align(self.at, layout.REGION_ALIGN)
        self.regions[name] = Region(addr, size)
        self.at = addr + size
        return addr

    def put(self, addr: int, data: np.ndarray) -> None:
        self.chunks.append((addr, np.ascontiguousarray(data).view(np.uint8).tobytes()))

    def build(self) -> np.ndarray:
        size = layout.align(max(self.at - self.base, 1), PAGE)
        mem = np.zeros(size, dtype=np.uint8)
        for addr, data in self.chunks:
            mem[addr - self.base : addr - self.base + len(data)] = np.frombuffer(data, np.uint8)
        return mem


def _rows_image(cfg: AccelConfig, rows: np.ndarray, stride: int) -> np.ndarray:
    out = np.zeros((rows.shape[0], stride), dtype=np.int8)
    out[:, : rows.shape[1]] = rows
    return out


def _ffn_block(
    img: _Image, cfg: AccelConfig, name: str, p: FFNParams, e: int, lut_addr: int
) -> list[int]:
    """Write expert `e` of `p` (streams, parameters, LUT); return its descriptor words."""
    gated = p.gated
    mats1 = [p.w1_q[e]] + ([p.w3_q[e]] if gated else [])
    s1 = layout.weight_stream(cfg, mats1)
    s2 = layout.weight_stream(cfg, [p.w2_q[e]])
    sections = [(p.m1[e], p.sh1[e])]
    if gated:
        sections.append((p.m3[e], p.sh3[e]))
    sections.append((p.m2[e], p.sh2[e]))
    words = layout.param_words(cfg, sections)
    b = cfg.mem_bytes_per_cycle
    w1 = img.alloc(f"{name}.w1", layout.align(s1.size, b))
    img.put(w1, s1.astype(np.int8))
    w2 = img.alloc(f"{name}.w2", layout.align(s2.size, b))
    img.put(w2, s2.astype(np.int8))
    pa = img.alloc(f"{name}.params", layout.align(4 * words.size, b))
    img.put(pa, words.astype("<u4"))
    img.put(lut_addr, p.lut[e].astype(np.int8))
    gate_mult = int(p.m_h[e]) if gated else 0
    gate_shift = int(p.sh_h[e]) if gated else 0
    return [w1, s1.shape[0], w2, s2.shape[0], pa, words.size, gate_mult, gate_shift]


def _check_multipliers(ql: QuantizedLayer, cfg: AccelConfig) -> None:
    top = 2**cfg.mult_bits
    checks = [("router_mult", ql.router_mult), ("out_mult", np.asarray([ql.out_mult]))]
    for part in (ql.experts, ql.shared):
        if part is not None:
            checks += [("m1", part.m1), ("m2", part.m2)]
            if part.gated:
                checks += [("m3", part.m3), ("m_h", part.m_h)]
    for name, values in checks:
        if np.any(np.asarray(values) < 0) or np.any(np.asarray(values) >= top):
            raise ConfigError(f"QuantizedLayer.{name} does not fit mult_bits = {cfg.mult_bits}")


def compile_layer(
    ql: QuantizedLayer,
    x_q: np.ndarray,
    cfg: AccelConfig,
    *,
    base: int = 0,
    watchdog_cycles: int = 0,
) -> LayerImage:
    """Memory image and register program running layer `ql` on tokens `x_q` [T, d_model]."""
    check_tokens(ql, x_q, cfg)
    layout.check_top_config(cfg)
    spec = ql.spec
    check_routing(spec)
    _check_multipliers(ql, cfg)
    if not isinstance(base, int) or base < 0 or base % PAGE:
        raise ConfigError(f"image base = {base!r} must be a non-negative multiple of {PAGE}")
    if not isinstance(watchdog_cycles, int) or not 0 <= watchdog_cycles < 2**32:
        raise ConfigError(f"watchdog_cycles = {watchdog_cycles!r} must fit 32 bits")
    t, d, e, k = x_q.shape[0], spec.d_model, spec.n_experts, spec.top_k
    b = cfg.mem_bytes_per_cycle
    ys = layout.row_bytes(cfg, d)
    img = _Image(base)

    tokens = img.alloc("tokens", t * ys)
    img.put(tokens, _rows_image(cfg, x_q.astype(np.int8), ys))
    rp_words = layout.param_words(cfg, [(ql.router_mult, ql.router_shift)]).astype("<u4")
    rp = img.alloc("router_params", layout.align(4 * rp_words.size, b))
    img.put(rp, rp_words)
    bias = img.alloc("bias", layout.align(4 * e, b))
    if ql.bias_q is not None:
        img.put(bias, ql.bias_q.astype("<i4"))
    rstream = layout.weight_stream(cfg, [ql.router_q])
    rw = img.alloc("router_weights", layout.align(rstream.size, b))
    img.put(rw, rstream.astype(np.int8))
    table = img.alloc("expert_table", (e + 1) * layout.desc_bytes(cfg))
    luts = img.alloc("luts", (e + 1) * layout.lut_bytes(cfg))
    descs = []
    for i in range(e):
        descs.append(
            _ffn_block(img, cfg, f"expert{i}", ql.experts, i, luts + i * layout.lut_bytes(cfg))
        )
    if ql.shared is not None:
        descs.append(_ffn_block(img, cfg, "shared", ql.shared, 0, luts + e * layout.lut_bytes(cfg)))
    for i, words in enumerate(descs):
        img.put(table + i * layout.desc_bytes(cfg), np.asarray(words, dtype="<u4"))
    scratch = img.alloc("scratch", layout.max_sorted_rows(cfg, t, k, e) * ys)
    shared_scratch = img.alloc("shared_scratch", t * ys if spec.has_shared else b)
    routing = img.alloc("routing", layout.align(t * k * layout.ROUTING_RECORD_BYTES, b))
    output = img.alloc("output", t * ys)

    if spec.shared_gate:
        shared = SharedExpert.GATED
    elif spec.has_shared:
        shared = SharedExpert.UNGATED
    else:
        shared = SharedExpert.NONE
    regs = REGISTER_MAP
    routing_mode = regs["ROUTING_MODE"].register.pack(
        scoring=RoutingMode.SIGMOID if spec.scoring == "sigmoid" else RoutingMode.SOFTMAX,
        renormalize=int(spec.renormalize),
        correction_bias=int(spec.correction_bias),
        use_capacity=int(spec.capacity is not None),
        n_group=spec.n_group,
        topk_group=spec.topk_group,
    )
    program = [
        ("TOKENS_ADDR", tokens),
        ("ROUTER_W_ADDR", rw),
        ("EXPERT_TABLE_ADDR", table),
        ("OUTPUT_ADDR", output),
        ("SCRATCH_ADDR", scratch),
        ("REQUANT_TABLE_ADDR", rp),
        ("LUT_TABLE_ADDR", luts),
        ("BIAS_ADDR", bias),
        ("ROUTING_ADDR", routing),
        ("SHARED_SCRATCH_ADDR", shared_scratch),
        ("NUM_TOKENS", t),
        ("D_MODEL", d),
        ("D_FF", spec.d_ff),
        ("D_FF_SHARED", spec.shared_d_ff),
        ("N_EXPERTS", e),
        ("TOP_K", k),
        ("ROUTING_MODE", routing_mode),
        ("CAPACITY", spec.capacity if spec.capacity is not None else 0),
        ("LAYER_MODE", regs["LAYER_MODE"].register.pack(ffn=_FFN_CODES[spec.ffn], shared=shared)),
        ("ROUTED_SCALING", quantize_scaling(spec.routed_scaling_factor)),
        (
            "OUTPUT_REQUANT",
            regs["OUTPUT_REQUANT"].register.pack(mult=ql.out_mult, shift=ql.out_shift),
        ),
        ("WATCHDOG_CYCLES", watchdog_cycles),
        ("STATUS", regs["STATUS"].register.pack(done=1, error=1)),
        ("CTRL", regs["CTRL"].register.pack(start=1)),
    ]
    return LayerImage(
        cfg=cfg,
        spec=spec,
        tokens=t,
        mem=img.build(),
        regions=dict(img.regions),
        program=program,
        base=base,
        meta={"row_bytes": ys},
    )


def read_outputs(mem: np.ndarray, image: LayerImage) -> HwOutputs:
    """Decode the output and routing regions from memory `mem` (addressed from 0)."""
    if not isinstance(mem, np.ndarray) or mem.dtype != np.uint8:
        raise ConfigError("read_outputs needs the memory as a numpy uint8 array")
    end = max(r.addr + r.size for r in image.regions.values())
    if mem.size < end:
        raise ConfigError(f"memory of {mem.size} bytes does not hold the image (ends at {end})")
    t, d, k = image.tokens, image.spec.d_model, image.spec.top_k
    ys = image.meta["row_bytes"]
    out = image.regions["output"]
    y = mem[out.addr : out.addr + t * ys].view(np.int8).reshape(t, ys)[:, :d]
    rt = image.regions["routing"]
    rec = mem[rt.addr : rt.addr + t * k * layout.ROUTING_RECORD_BYTES].view("<u4").reshape(t, k, 2)
    return HwOutputs(
        y_q=y.astype(np.int64),
        expert_ids=rec[:, :, 0].astype(np.int64),
        gate_weights=rec[:, :, 1].astype(np.int64),
    )


def read_expert_counts(
    write_reg: Callable[[str, int], None], read_reg: Callable[[str], int], image: LayerImage
) -> np.ndarray:
    """[E] pairs each expert kept in the last layer, through the EXPERT_INDEX window."""
    counts = []
    for e in range(image.spec.n_experts):
        write_reg("EXPERT_INDEX", e)
        counts.append(read_reg("EXPERT_TOKENS"))
    return np.asarray(counts, dtype=np.int64)
