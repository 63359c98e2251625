"""The layer compiler: a quantised MoE layer + tokens → memory image + register program.

Why: the accelerator (`rtl.top.MoEAccel`) runs a whole layer after one
`CTRL.start`; everything it needs sits in external memory in the exact order
its units consume it (`contract.layout` is the one layout definition) and in
the descriptor registers (`contract.regs`). This module builds both, and
decodes the results the hardware writes back.

API (stable; backends and the CLI build on it)::

    image = compile_layer(ql, x_q, cfg, base=0, watchdog_cycles=0, resident_experts=None)
    image.write_into(mem)  # write the image into a zeroed memory (addressed from 0)
    image.mem            # or: np.uint8 [image.mem_bytes], the dense contents from image.base
    image.regions        # {name: Region(addr, size)}, layout.region_align(cfg)-aligned
    image.chunks         # what write_into writes; chunk.lazy ones may be filled on demand
    image.program        # [(register name, value), ...]; the final entry is CTRL.start
    # ... a backend writes the image into its memory, runs the register writes
    # in order, waits for STATUS.done (or .error), then:
    out = read_outputs(mem, image)        # HwOutputs(y_q, expert_ids, gate_weights)
    counts = read_expert_counts(write_reg, read_reg, image)   # [E] kept pairs per expert

`compile_layer` validates before anything runs: `ql` must be built for
`cfg`'s numerics and fit its limits, `x_q` must be an integer [T, d_model]
array within the act_bits range, the config must be one the top supports
(`contract.layout.check_top_config`) and the routing one the gate implements;
any failure raises `pymodel.config.ConfigError` (or `NumericsError` for
values) naming the problem. The register program passes
`contract.descriptor.check_program`, the rules the hardware's own
BAD_DESCRIPTOR check is generated from.

Regions (`LayerImage.regions`): tokens, router_params, bias, router_weights,
expert_table, luts, expert<e> (W1/W3 stream, W2 stream, parameter words),
shared (the same for the shared expert), scratch, shared_scratch, routing,
output. Only `routing` and `output` are read back.

Addresses: every region lies below 2^`cfg.addr_bits`; the registers and
the expert table hold address words (`contract.layout.addr_word`, the byte
address >> (addr_bits − 32)). An image that does not fit the address space is
refused here, naming the region.

Full-size layers: expert weight streams and parameter words are `Chunk`s
produced when written, not when compiled (`lazy` chunks), so `write_into`
generates one expert at a time into a (lazily zero, page-sparse) memory and
never holds the layer's weights twice; a backend may instead fill a lazy chunk
only when the hardware first reads it (`VerilatorDevice(experts="demand")`).
`resident_experts` writes only those experts (the shared one always): every
other expert gets no memory and a descriptor pointing at `unmapped_addr(cfg)`,
so a read of it is a bus error, never a silent read of zeros. With 32-bit
addresses (4 GiB) a DeepSeek-V3 layer's 11.3 GB of routed experts only fits
that way; `configs/fullsize.json` has 40-bit addresses and places them all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from contract import layout
from contract.descriptor import check_program, weights_code
from contract.regs import REGISTER_MAP, FFNKind, RoutingMode, SharedExpert
from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.gate import check_routing, quantize_scaling
from pymodel.layer import check_tokens
from pymodel.quantize import FFNParams, QuantizedLayer
from pymodel.weight_formats import WeightFormat, check_supported

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


def unmapped_addr(cfg: AccelConfig) -> int:
    """Where descriptors of non-resident experts point: the top page (or granule) of the
    address space, above every image (images must end below it), so no memory model maps
    it and any read there is a bus error."""
    return 2**cfg.addr_bits - max(PAGE, layout.addr_granule(cfg))


@dataclass(frozen=True)
class Region:
    """One memory region of the image: byte address and size."""

    addr: int
    size: int


@dataclass(frozen=True)
class Chunk:
    """`size` bytes the image writes at bus address `addr`; `produce()` returns them (uint8).

    Expert weight streams and parameter words are `lazy`: produced when
    written, not when compiled, so a full-size layer's weights exist in Python
    one expert at a time, and a backend may write them only when the hardware
    first reads them. `region` names the region the chunk fills.
    """

    addr: int
    size: int
    produce: Callable[[], np.ndarray]
    region: str = ""
    lazy: bool = False


HW_WRITTEN = ("scratch", "shared_scratch", "routing", "output")
"""The regions the hardware writes (everything else is written by `LayerImage.write_into`)."""


@dataclass(frozen=True)
class LayerImage:
    """What the hardware needs for one layer: memory contents and register writes.

    `resident` lists the routed experts whose weights the image writes (all of
    them unless `compile_layer` was given `resident_experts`).
    """

    cfg: AccelConfig
    spec: MoESpec
    tokens: int
    size: int
    chunks: tuple[Chunk, ...]
    regions: dict[str, Region]
    program: list[tuple[str, int]]
    resident: tuple[int, ...]
    base: int = 0
    meta: dict[str, int] = field(default_factory=dict)

    @property
    def mem_bytes(self) -> int:
        """Bytes of memory the image occupies from `base` (whole pages)."""
        return self.size

    @property
    def written_bytes(self) -> int:
        """Bytes `write_into` writes: the only memory pages the image itself touches."""
        return sum(c.size for c in self.chunks)

    @property
    def touched_bytes(self) -> int:
        """Host memory a run needs: written bytes, the hardware-written regions and the
        largest chunk once more (produced, then copied into the memory)."""
        hw = sum(self.regions[name].size for name in HW_WRITTEN)
        return self.written_bytes + hw + max((c.size for c in self.chunks), default=0)

    def write_into(self, mem: np.ndarray, *, origin: int = 0, lazy: bool = True) -> None:
        """Write the chunks into `mem` (uint8, byte i at bus address origin + i), producing
        one at a time; `lazy=False` leaves out the lazy chunks (`write_chunk` them later).

        Bytes the image does not write are left alone: `mem` must hold zeros
        there (a fresh `np.zeros` memory, whose untouched pages cost nothing).
        """
        if not isinstance(mem, np.ndarray) or mem.dtype != np.uint8 or mem.ndim != 1:
            raise ConfigError("write_into needs the memory as a 1-D numpy uint8 array")
        if not 0 <= origin <= self.base or origin + mem.size < self.base + self.size:
            raise ConfigError(
                f"memory of {mem.size} bytes from {origin:#x} does not hold the image "
                f"({self.base:#x} to {self.base + self.size:#x})"
            )
        for chunk in self.chunks:
            if lazy or not chunk.lazy:
                self.write_chunk(chunk, mem, origin=origin)

    @staticmethod
    def write_chunk(chunk: Chunk, mem: np.ndarray, *, origin: int = 0) -> None:
        """Produce `chunk` and write it into `mem` (byte i at bus address origin + i)."""
        data = chunk.produce()
        if data.dtype != np.uint8 or data.size != chunk.size:
            raise ConfigError(
                f"chunk {chunk.region!r} at {chunk.addr:#x} produced {data.size} bytes of "
                f"{data.dtype}, expected {chunk.size} uint8"
            )
        mem[chunk.addr - origin : chunk.addr - origin + chunk.size] = data

    @functools.cached_property
    def mem(self) -> np.ndarray:
        """The dense image, `mem_bytes` from `base` (small layers: tests, saved images)."""
        mem = np.zeros(self.size, dtype=np.uint8)
        self.write_into(mem, origin=self.base)
        return mem


@dataclass(frozen=True)
class HwOutputs:
    """What the hardware wrote back for one layer (int64 arrays)."""

    y_q: np.ndarray  # [T, d_model] act_bits output at scale ql.s_y
    expert_ids: np.ndarray  # [T, k]
    gate_weights: np.ndarray  # [T, k] unsigned Q.gate_frac_bits


class _Image:
    """Region allocator + byte writer."""

    def __init__(self, cfg: AccelConfig, base: int) -> None:
        self.cfg = cfg
        self.base = base
        self.at = base
        self.regions: dict[str, Region] = {}
        self.chunks: list[Chunk] = []

    def alloc(self, name: str, size: int) -> int:
        addr = layout.align(self.at, layout.region_align(self.cfg))
        top = unmapped_addr(self.cfg)
        if addr + size > top:
            raise ConfigError(
                f"the layer's memory image does not fit the {self.cfg.addr_bits}-bit bus: "
                f"region {name!r} would end at {(addr + size) / 2**30:.2f} GiB, beyond "
                f"{top / 2**30:.2f} GiB; raise AccelConfig.addr_bits or write only the "
                "experts the tokens use (compile_layer's resident_experts, "
                "VerilatorDevice(experts='routed'))"
            )
        self.regions[name] = Region(addr, size)
        self.at = addr + size
        return addr

    def word(self, name: str) -> int:
        """The address word of region `name` (`layout.addr_word`)."""
        return layout.addr_word(self.cfg, self.regions[name].addr, name)

    def put(self, addr: int, data: np.ndarray, region: str) -> None:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1).copy()
        self.chunks.append(Chunk(addr, raw.size, lambda: raw, region))

    def put_lazy(
        self, addr: int, size: int, produce: Callable[[], np.ndarray], region: str
    ) -> None:
        self.chunks.append(Chunk(addr, size, produce, region, lazy=True))

    def size(self) -> int:
        return layout.align(max(self.at - self.base, 1), PAGE)


def _rows_image(cfg: AccelConfig, rows: np.ndarray, stride: int) -> np.ndarray:
    out = np.zeros((rows.shape[0], stride), dtype=np.int8)
    out[:, : rows.shape[1]] = rows
    return out


def _stream(
    cfg: AccelConfig,
    weights: list[np.ndarray],
    e: int,
    fmt: WeightFormat,
    idx: list[np.ndarray | None],
) -> Callable[[], np.ndarray]:
    """Producer of expert `e`'s weight stream of the stacked `weights` in `fmt` (with their
    stacked 2:4 positions `idx` for a sparse format), read when called."""

    def produce() -> np.ndarray:
        positions = [i[e] for i in idx] if fmt.sparse else None
        stream = layout.weight_stream(cfg, [w[e] for w in weights], fmt, positions)
        return stream.astype(np.int8).view(np.uint8).reshape(-1)

    return produce


def _param_words(
    cfg: AccelConfig, sections: list[tuple[np.ndarray, np.ndarray]]
) -> Callable[[], np.ndarray]:
    """Producer of the parameter words of `sections` (a Python loop per channel: deferred,
    so compiling a layer costs nothing per expert it does not write)."""

    def produce() -> np.ndarray:
        return layout.param_words(cfg, sections).astype("<u4").view(np.uint8)

    return produce


def _ffn_block(
    img: _Image,
    cfg: AccelConfig,
    name: str,
    p: FFNParams,
    e: int,
    lut_addr: int,
    fmt: WeightFormat,
    resident: bool = True,
) -> list[int]:
    """Write expert `e` of `p` (streams in `fmt`, parameters, LUT); return its descriptor
    words (the row counts those of the `fmt` streams).

    A non-resident expert gets no memory: its descriptor has the right row
    counts but points at `unmapped_addr(cfg)`.
    """
    gated = p.gated
    _, d, f = p.w1_q.shape
    rows1 = layout.weight_stream_rows(cfg, d, f, 2 if gated else 1, fmt)
    rows2 = layout.weight_stream_rows(cfg, f, d, 1, fmt)
    n_words = layout.align(f, cfg.cols) * (2 if gated else 1) + layout.align(d, cfg.cols)
    gate_mult = int(p.m_h[e]) if gated else 0
    gate_shift = int(p.sh_h[e]) if gated else 0
    if not resident:
        nowhere = layout.addr_word(cfg, unmapped_addr(cfg), "unmapped")
        return [nowhere, rows1, nowhere, rows2, nowhere, n_words, gate_mult, gate_shift]
    sections = [(p.m1[e], p.sh1[e])]
    if gated:
        sections.append((p.m3[e], p.sh3[e]))
    sections.append((p.m2[e], p.sh2[e]))
    b = cfg.mem_bytes_per_cycle
    c = cfg.cols
    w1 = img.alloc(f"{name}.w1", layout.align(rows1 * c, b))
    w1_producer = _stream(
        cfg,
        [p.w1_q] + ([p.w3_q] if gated else []),
        e,
        fmt,
        [p.w1_idx] + ([p.w3_idx] if gated else []),
    )
    img.put_lazy(w1, rows1 * c, w1_producer, f"{name}.w1")
    w2 = img.alloc(f"{name}.w2", layout.align(rows2 * c, b))
    img.put_lazy(w2, rows2 * c, _stream(cfg, [p.w2_q], e, fmt, [p.w2_idx]), f"{name}.w2")
    pa = img.alloc(f"{name}.params", layout.align(4 * n_words, b))
    img.put_lazy(pa, 4 * n_words, _param_words(cfg, sections), f"{name}.params")
    img.put(lut_addr, p.lut[e].astype(np.int8), "luts")
    w1w, w2w, paw = (img.word(f"{name}.{part}") for part in ("w1", "w2", "params"))
    return [w1w, rows1, w2w, rows2, paw, n_words, gate_mult, gate_shift]


def _check_resident(resident_experts: object, n_experts: int) -> tuple[int, ...]:
    """The sorted expert numbers of `resident_experts` (None: all), each in [0, n_experts)."""
    if resident_experts is None:
        return tuple(range(n_experts))
    if isinstance(resident_experts, str | bytes) or not hasattr(resident_experts, "__iter__"):
        raise ConfigError(f"resident_experts = {resident_experts!r} must be a collection of ints")
    out = set()
    for e in resident_experts:
        if isinstance(e, bool) or not isinstance(e, int | np.integer) or not 0 <= e < n_experts:
            raise ConfigError(
                f"resident_experts holds {e!r}; expert numbers are ints in [0, {n_experts})"
            )
        out.add(int(e))
    return tuple(sorted(out))


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


def check_image_format(fmt: WeightFormat, cfg: AccelConfig) -> None:
    """Raise unless a layer image for hardware built as `cfg` can carry expert weights in `fmt`.

    The build needs the format's switches, and group-wise int4 scales never run
    on the hardware (`check_supported`); the image then holds every routed and
    shared expert's streams in `fmt` and `LAYER_MODE.weights` names it (a 2:4
    layer's K rule is the descriptor's `weights_sparse_k`, checked with the program).
    """
    check_supported(fmt, cfg)


def compile_layer(
    ql: QuantizedLayer,
    x_q: np.ndarray,
    cfg: AccelConfig,
    *,
    base: int = 0,
    watchdog_cycles: int = 0,
    resident_experts: Iterable[int] | None = None,
) -> LayerImage:
    """Memory image and register program running layer `ql` on tokens `x_q` [T, d_model].

    `resident_experts` (default: all) are the routed experts whose weights
    the image holds; the others point at unmapped memory (see the module notes).
    """
    check_tokens(ql, x_q, cfg)
    layout.check_top_config(cfg)
    fmt = ql.weight_format
    check_image_format(fmt, cfg)
    spec = ql.spec
    check_routing(spec)
    _check_multipliers(ql, cfg)
    if not isinstance(base, int) or base < 0 or base % PAGE:
        raise ConfigError(f"image base = {base!r} must be a non-negative multiple of {PAGE}")
    if not isinstance(watchdog_cycles, int) or not 0 <= watchdog_cycles < 2**32:
        raise ConfigError(f"watchdog_cycles = {watchdog_cycles!r} must fit 32 bits")
    t, d, e, k = x_q.shape[0], spec.d_model, spec.n_experts, spec.top_k
    resident = _check_resident(resident_experts, e)
    b = cfg.mem_bytes_per_cycle
    ys = layout.row_bytes(cfg, d)
    img = _Image(cfg, base)

    tokens = img.alloc("tokens", t * ys)
    img.put(tokens, _rows_image(cfg, x_q.astype(np.int8), ys), "tokens")
    rp_words = layout.param_words(cfg, [(ql.router_mult, ql.router_shift)]).astype("<u4")
    rp = img.alloc("router_params", layout.align(4 * rp_words.size, b))
    img.put(rp, rp_words, "router_params")
    bias = img.alloc("bias", layout.align(4 * e, b))
    if ql.bias_q is not None:
        img.put(bias, ql.bias_q.astype("<i4"), "bias")
    rstream = layout.weight_stream(cfg, [ql.router_q])
    rw = img.alloc("router_weights", layout.align(rstream.size, b))
    img.put(rw, rstream.astype(np.int8), "router_weights")
    table = img.alloc("expert_table", (e + 1) * layout.desc_bytes(cfg))
    luts = img.alloc("luts", (e + 1) * layout.lut_bytes(cfg))
    descs = []
    kept = set(resident)
    for i in range(e):
        lut = luts + i * layout.lut_bytes(cfg)
        descs.append(_ffn_block(img, cfg, f"expert{i}", ql.experts, i, lut, fmt, i in kept))
    if ql.shared is not None:
        shared_lut = luts + e * layout.lut_bytes(cfg)
        descs.append(_ffn_block(img, cfg, "shared", ql.shared, 0, shared_lut, fmt))
    for i, words in enumerate(descs):
        img.put(
            table + i * layout.desc_bytes(cfg),
            np.array(tuple(words), layout.EXPERT_DESCRIPTOR),
            "expert_table",
        )
    img.alloc("scratch", layout.max_sorted_rows(cfg, t, k, e) * ys)
    img.alloc("shared_scratch", t * ys if spec.has_shared else b)
    img.alloc("routing", layout.align(t * k * layout.ROUTING_RECORD_BYTES, b))
    img.alloc("output", t * ys)

    shared = SharedExpert.of(spec)
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
        ("TOKENS_ADDR", img.word("tokens")),
        ("ROUTER_W_ADDR", img.word("router_weights")),
        ("EXPERT_TABLE_ADDR", img.word("expert_table")),
        ("OUTPUT_ADDR", img.word("output")),
        ("SCRATCH_ADDR", img.word("scratch")),
        ("REQUANT_TABLE_ADDR", img.word("router_params")),
        ("LUT_TABLE_ADDR", img.word("luts")),
        ("BIAS_ADDR", img.word("bias")),
        ("ROUTING_ADDR", img.word("routing")),
        ("SHARED_SCRATCH_ADDR", img.word("shared_scratch")),
        ("NUM_TOKENS", t),
        ("D_MODEL", d),
        ("D_FF", spec.d_ff),
        ("D_FF_SHARED", spec.shared_d_ff),
        ("N_EXPERTS", e),
        ("TOP_K", k),
        ("ROUTING_MODE", routing_mode),
        ("CAPACITY", spec.capacity if spec.capacity is not None else 0),
        (
            "LAYER_MODE",
            regs["LAYER_MODE"].register.pack(
                ffn=FFNKind.of(spec.ffn), shared=shared, weights=weights_code(fmt)
            ),
        ),
        ("ROUTED_SCALING", quantize_scaling(spec.routed_scaling_factor)),
        (
            "OUTPUT_REQUANT",
            regs["OUTPUT_REQUANT"].register.pack(mult=ql.out_mult, shift=ql.out_shift),
        ),
        ("WATCHDOG_CYCLES", watchdog_cycles),
        ("STATUS", regs["STATUS"].register.pack(done=1, error=1)),
        ("CTRL", regs["CTRL"].register.pack(start=1)),
    ]
    check_program(program, cfg)
    return LayerImage(
        cfg=cfg,
        spec=spec,
        tokens=t,
        size=img.size(),
        chunks=tuple(img.chunks),
        regions=dict(img.regions),
        program=program,
        resident=resident,
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
    rec = mem[rt.addr : rt.addr + t * k * layout.ROUTING_RECORD_BYTES].view(layout.ROUTING_RECORD)
    return HwOutputs(
        y_q=y.astype(np.int64),
        expert_ids=rec["expert"].reshape(t, k).astype(np.int64),
        gate_weights=rec["weight"].reshape(t, k).astype(np.int64),
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
