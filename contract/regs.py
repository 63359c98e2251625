"""THE register map: one declarative table for the RTL (`rtl/csr.py`) and the driver.

Why one table: the register file is generated from it and the driver takes
offsets, field positions and the error-cause enum from it, so a register can
never be at one address in hardware and another in software. Nothing here
imports Amaranth; the driver can use it without the RTL.

Layout. The map is a list of `Block`s, each at a fixed base with a fixed
span; a block's registers get consecutive offsets in table order (4 bytes
for a 32-bit register, 8 bytes, 8-aligned, for a 64-bit one). Adding a
register is one line appended to a block's tuple; existing offsets never move.
An optional unit's block (`Block.built`, the copy block) and an optional
feature's field (`Field.built`) exist only in builds with the unit or feature:
elsewhere the block's addresses are unmapped and the field's bits reserved,
and `RegisterMap.built_register` turns a driver's access into a `ConfigError`.

Access kinds (per field; a register without explicit fields has one field,
`value`, spanning its width):

- `RO`: read-only, driven by an input port of the register file;
- `RW`: read/write storage, exposed as an output port (byte strobes honoured);
- `W1C`: sticky status bit, set by hardware (`<field>_set` input pulse),
  cleared by writing 1; set wins over a clear in the same cycle;
- `W1P`: write-1-to-pulse: a one-cycle output pulse, reads as 0 (`CTRL.start`);
- `CONST`: a generation-time constant computed from the `AccelConfig`
  (identification registers), no port.

64-bit registers must be `RO` (the performance counters). Reading the low
word latches the high word, so a low-then-high read pair is consistent.
Writes to a register with no writable field, and any access to an unmapped
address, get SLVERR.
"""

from __future__ import annotations

import enum
import itertools
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pymodel.config import AccelConfig, ConfigError, MoESpec

__all__ = [
    "CONTROL_BLOCK",
    "COPY_BLOCK",
    "COPY_QUEUE_DEPTH",
    "COUNTER_BITS",
    "COUNTER_BLOCK",
    "COUNTER_SOURCES",
    "DESCRIPTOR_BLOCK",
    "ID_BLOCK",
    "ID_MAGIC",
    "PARTITION_PHASES",
    "PHASE_COUNTERS",
    "REGISTER_MAP",
    "REGMAP_VERSION",
    "WINDOW_BLOCK",
    "Access",
    "Block",
    "ErrorCause",
    "FFNKind",
    "Field",
    "LayerPhase",
    "PlacedRegister",
    "Reg",
    "Register",
    "RegisterMap",
    "RoutingMode",
    "SharedExpert",
    "config_hash",
]

REGMAP_VERSION = (0, 6, 0)
"""(major, minor, patch) of this table; bump minor when adding registers, major when moving."""

COUNTER_BITS = 48
"""Width of every hardware counter (cycles, bytes): 2^48 never wraps in practice
(2^48 cycles ≈ 32 days at 100 MHz); the 64-bit counter registers read it zero-extended."""

ID_MAGIC = 0x4D6F4541
"""`ID_MAGIC` reads "MoEA" in ASCII: proof that the driver talks to this accelerator."""


class Access(enum.Enum):
    """How software and hardware reach a field (see the module docstring)."""

    RO = "ro"
    RW = "rw"
    W1C = "w1c"
    W1P = "w1p"
    CONST = "const"


class ErrorCause(enum.IntEnum):
    """`ERROR_CAUSE` codes: the first error since the last `STATUS.error` clear."""

    NONE = 0
    BUS_READ_ERROR = 1
    """A read burst got SLVERR or DECERR (`ERROR_ADDR` holds the burst's address)."""
    BUS_WRITE_ERROR = 2
    """A write burst got SLVERR or DECERR (`ERROR_ADDR` holds the burst's address)."""
    START_WHILE_BUSY = 3
    """`CTRL.start` was written while `STATUS.busy`; the running job continues."""
    BAD_DESCRIPTOR = 4
    """The layer descriptor breaks a `contract.descriptor.RULES` rule (`ERROR_DETAIL` names it)."""
    WATCHDOG_TIMEOUT = 5
    """The job ran longer than `WATCHDOG_CYCLES` (when non-zero)."""
    COMMAND_REJECTED = 6
    """An internal engine rejected a command the sequencer built (a hardware limit)."""
    COPY_QUEUE_FULL = 7
    """`COPY_CTRL.push` with the copy engine's descriptor queue full; the descriptor is dropped
    (builds with `AccelConfig.copy_engine`)."""


class RoutingMode(enum.IntEnum):
    """`ROUTING_MODE.scoring` codes (docs/numerics.md §4.2)."""

    SOFTMAX = 0
    SIGMOID = 1


class FFNKind(enum.IntEnum):
    """`LAYER_MODE.ffn` codes: the routed experts' FFN."""

    SWIGLU = 0
    GELU = 1
    RELU = 2

    @classmethod
    def of(cls, ffn: str) -> FFNKind:
        """The code of `MoESpec.ffn` (its name in lower case)."""
        try:
            return cls[ffn.upper()]
        except KeyError:
            names = [k.name.lower() for k in cls]
            raise ConfigError(f"ffn {ffn!r} has no LAYER_MODE code; one of {names}") from None


class LayerPhase(enum.IntEnum):
    """The phase the layer sequencer is in (`NONE` while idle); each has a cycle counter."""

    NONE = 0
    ROUTE = 1
    DISPATCH = 2
    EXPERTS = 3
    SHARED = 4
    COMBINE = 5


PHASE_COUNTERS: tuple[str, ...] = ("total", *(p.name.lower() for p in LayerPhase if p.value))
"""The phase counters in layout order (`CYCLES_<NAME>` registers): `total`, then each phase."""

PARTITION_PHASES: tuple[str, ...] = ("route", "dispatch", "experts", "combine")
"""The phases whose cycles add up to `total` (`shared` runs inside `experts`)."""


class SharedExpert(enum.IntEnum):
    """`LAYER_MODE.shared` codes, also what the gate unit emits on its `shared` stream."""

    NONE = 0
    UNGATED = 1
    GATED = 2

    @classmethod
    def of(cls, spec: MoESpec) -> SharedExpert:
        """The mode of `spec`: sigmoid-gated (Qwen2-MoE), ungated (DeepSeek-V3) or none."""
        if spec.shared_gate:
            return cls.GATED
        return cls.UNGATED if spec.has_shared else cls.NONE


@dataclass(frozen=True)
class Field:
    """A bit field; fields of a register are packed from bit 0 in table order."""

    name: str
    width: int
    access: Access
    reset: int = 0
    doc: str = ""
    const: Callable[[AccelConfig], int] | None = None
    built: Callable[[AccelConfig], bool] | None = None
    """None: in every build. Else the field exists only in builds where `built(cfg)` holds;
    elsewhere its bits are reserved (read 0, writes ignored), so a feature's field adds no
    hardware to builds without the feature."""

    def present(self, cfg: AccelConfig) -> bool:
        """Whether hardware built as `cfg` has this field."""
        return self.built is None or bool(self.built(cfg))

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name.startswith("_"):
            raise ConfigError(f"field name {self.name!r} must be an identifier")
        if not isinstance(self.access, Access):
            raise ConfigError(f"field {self.name}: access must be an Access, got {self.access!r}")
        if not 1 <= self.width <= 64:
            raise ConfigError(f"field {self.name}: width {self.width} out of range [1, 64]")
        if not 0 <= self.reset < 2**self.width:
            raise ConfigError(f"field {self.name}: reset {self.reset} does not fit {self.width} b")
        if (self.access is Access.CONST) != (self.const is not None):
            raise ConfigError(f"field {self.name}: CONST fields (and only they) need `const`")


@dataclass(frozen=True)
class Register:
    """One 32- or 64-bit register: a name, its fields and a docstring for the map."""

    name: str
    fields: tuple[Field, ...]
    width: int = 32
    doc: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.upper():
            raise ConfigError(f"register name {self.name!r} must be an UPPER_CASE identifier")
        if self.width not in (32, 64):
            raise ConfigError(f"register {self.name}: width must be 32 or 64")
        if not self.fields:
            raise ConfigError(f"register {self.name} has no fields")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ConfigError(f"register {self.name}: duplicate field names {names}")
        used = sum(f.width for f in self.fields)
        if used > self.width:
            raise ConfigError(f"register {self.name}: fields use {used} bits of {self.width}")
        if self.width == 64 and any(f.access is not Access.RO for f in self.fields):
            raise ConfigError(f"register {self.name}: 64-bit registers must be RO")

    @property
    def lsbs(self) -> dict[str, int]:
        """Bit position of each field."""
        out, lsb = {}, 0
        for f in self.fields:
            out[f.name] = lsb
            lsb += f.width
        return out

    def fields_in(self, cfg: AccelConfig) -> tuple[Field, ...]:
        """The fields hardware built as `cfg` has (`Field.present`), at their table positions."""
        return tuple(f for f in self.fields if f.present(cfg))

    @property
    def writable(self) -> bool:
        return any(f.access in (Access.RW, Access.W1C, Access.W1P) for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"register {self.name} has no field {name!r}; it has {self.field_names}")

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def pack(self, **values: int) -> int:
        """The register word with the named fields set (others 0); checks ranges."""
        word = 0
        lsbs = self.lsbs
        for name, value in values.items():
            f = self.field(name)
            value = int(value)
            if not 0 <= value < 2**f.width:
                raise ValueError(f"{self.name}.{name} = {value} does not fit {f.width} bits")
            word |= value << lsbs[name]
        return word

    def unpack(self, word: int) -> dict[str, int]:
        """Field values of a register word."""
        lsbs = self.lsbs
        return {f.name: (int(word) >> lsbs[f.name]) & (2**f.width - 1) for f in self.fields}


def Reg(
    name: str,
    access: Access | None = None,
    doc: str = "",
    *,
    fields: tuple[Field, ...] = (),
    width: int = 32,
    reset: int = 0,
    const: Callable[[AccelConfig], int] | None = None,
) -> Register:
    """One table row: either `access` (one field `value` of `width` bits) or `fields`."""
    if (access is None) == (not fields):
        raise ConfigError(f"register {name}: give either an access kind or fields, not both")
    if access is not None:
        fields = (Field("value", width, access, reset, doc, const),)
    return Register(name, tuple(fields), width, doc)


@dataclass(frozen=True)
class Block:
    """Registers at consecutive offsets from `base`, within `span` bytes."""

    name: str
    base: int
    span: int
    registers: tuple[Register, ...]
    built: Callable[[AccelConfig], bool] | None = None
    """None: in every build. Else the block's registers exist only in builds where
    `built(cfg)` holds (an optional unit's registers, DESIGN §8); elsewhere its addresses
    are unmapped (SLVERR), so the unit's registers add no hardware to builds without it."""
    needs: str = ""
    """With `built`: what a build needs for the block, for errors and docs
    ("AccelConfig.copy_engine = True")."""

    def __post_init__(self) -> None:
        if self.base % 8 or self.span % 8 or self.span <= 0:
            raise ConfigError(f"block {self.name}: base and span must be positive multiples of 8")
        if (self.built is None) != (not self.needs):
            raise ConfigError(f"block {self.name}: `built` and `needs` come together")
        end = self._offsets()[-1][1] if self.registers else self.base
        if end > self.base + self.span:
            raise ConfigError(
                f"block {self.name} needs {end - self.base} bytes but spans {self.span}"
            )

    def _offsets(self) -> list[tuple[int, int]]:
        """(offset, end) of each register."""
        out, at = [], self.base
        for reg in self.registers:
            size = reg.width // 8
            at = (at + size - 1) // size * size
            out.append((at, at + size))
            at += size
        return out


@dataclass(frozen=True)
class PlacedRegister:
    """A register with its byte offset and the block it sits in."""

    register: Register
    offset: int
    block: str
    built: Callable[[AccelConfig], bool] | None = None
    """Its block's `Block.built`."""
    needs: str = ""
    """Its block's `Block.needs`."""

    @property
    def name(self) -> str:
        return self.register.name

    def present(self, cfg: AccelConfig) -> bool:
        """Whether hardware built as `cfg` has this register (`Block.built`)."""
        return self.built is None or bool(self.built(cfg))

    @property
    def words(self) -> int:
        return self.register.width // 32


@dataclass(frozen=True)
class RegisterMap:
    """A validated list of blocks; look registers up by name or word address."""

    blocks: tuple[Block, ...]
    _by_name: dict[str, PlacedRegister] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spans = sorted((b.base, b.base + b.span, b.name) for b in self.blocks)
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise ConfigError(f"register blocks {a} and {b} overlap")
        by_name: dict[str, PlacedRegister] = {}
        for block in self.blocks:
            for reg, (offset, _) in zip(block.registers, block._offsets(), strict=True):
                if reg.name in by_name:
                    raise ConfigError(f"register {reg.name} is defined twice")
                by_name[reg.name] = PlacedRegister(
                    reg, offset, block.name, block.built, block.needs
                )
        object.__setattr__(self, "_by_name", by_name)

    def __iter__(self) -> Iterator[PlacedRegister]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> PlacedRegister:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no register named {name!r} in the register map") from None

    def offset(self, name: str) -> int:
        """Byte offset of register `name` (of its low word, for 64-bit registers)."""
        return self[name].offset

    def registers_in(self, cfg: AccelConfig) -> tuple[PlacedRegister, ...]:
        """The registers hardware built as `cfg` has (`Block.built`), in map order."""
        return tuple(placed for placed in self if placed.present(cfg))

    def built_register(self, name: str, cfg: AccelConfig) -> PlacedRegister:
        """Register `name`; a `ConfigError` naming what it needs if a `cfg` build lacks it.

        Drivers and harnesses look registers up through this, so an access to an
        optional unit's register on a build without the unit is an error, not a
        SLVERR or a read of 0 that looks like an idle unit.
        """
        placed = self[name]
        if not placed.present(cfg):
            raise ConfigError(
                f"register {name} ({placed.block} block) exists only in builds with "
                f"{placed.needs}; this AccelConfig has no {placed.block} block"
            )
        return placed

    def at(self, offset: int) -> tuple[PlacedRegister, int] | None:
        """(register, word index) at byte `offset`, or None when unmapped."""
        for placed in self:
            word, rem = divmod(offset - placed.offset, 4)
            if rem == 0 and 0 <= word < placed.words:
                return placed, word
        return None

    def constants(self, cfg: AccelConfig) -> dict[str, int]:
        """Value of every register made only of CONST fields, for `cfg` (driver ID check)."""
        out = {}
        for placed in self.registers_in(cfg):
            reg = placed.register
            if all(f.access is Access.CONST for f in reg.fields):
                out[reg.name] = reg.pack(**{f.name: f.const(cfg) for f in reg.fields})
        return out

    def check_identity(self, cfg: AccelConfig, read: Callable[[str], int]) -> None:
        """Raise `ConfigError` unless the hardware behind `read` was generated for `cfg`.

        `read(name)` returns a register's value (a backend's `read_reg`); every
        identification register is compared and each differing field named.
        """
        problems = []
        for name, expect in self.constants(cfg).items():
            got = read(name)
            if got != expect:
                reg = self[name].register
                fields = reg.unpack(got)
                diffs = [
                    f"{field}={fields[field]} (expected {value})"
                    for field, value in reg.unpack(expect).items()
                    if fields[field] != value
                ]
                problems.append(f"{name}: " + ", ".join(diffs))
        if problems:
            raise ConfigError(
                "the accelerator was not generated for this AccelConfig: " + "; ".join(problems)
            )

    def extended(self, *blocks: Block) -> RegisterMap:
        """This map plus more blocks (a test's or a derived top's own registers)."""
        return RegisterMap((*self.blocks, *blocks))


def config_hash(cfg: AccelConfig) -> int:
    """CRC-32 of the config's JSON: `CONFIG_HASH` catches any differing field."""
    return zlib.crc32(cfg.to_json().encode())


def _const(name: str, width: int, fn: Callable[[AccelConfig], int], doc: str = "") -> Field:
    return Field(name, width, Access.CONST, doc=doc, const=fn)


RO, RW, W1C, W1P = Access.RO, Access.RW, Access.W1C, Access.W1P

ID_BLOCK = Block(
    "id",
    0x000,
    0x40,
    (
        Reg("ID_MAGIC", Access.CONST, "0x4D6F4541, 'MoEA'.", const=lambda cfg: ID_MAGIC),
        Reg(
            "VERSION",
            fields=(
                _const("patch", 8, lambda cfg: REGMAP_VERSION[2]),
                _const("minor", 8, lambda cfg: REGMAP_VERSION[1]),
                _const("major", 8, lambda cfg: REGMAP_VERSION[0]),
            ),
            doc="Register-map version (REGMAP_VERSION).",
        ),
        Reg(
            "CONFIG_ARRAY",
            fields=(
                _const("rows", 8, lambda cfg: cfg.rows),
                _const("cols", 8, lambda cfg: cfg.cols),
                _const("m_tile", 9, lambda cfg: cfg.m_tile),
                _const("mem_bytes_per_cycle", 7, lambda cfg: cfg.mem_bytes_per_cycle),
            ),
            doc="Array shape, row tile and memory beat width.",
        ),
        Reg(
            "CONFIG_LIMITS",
            fields=(
                _const("max_experts", 9, lambda cfg: cfg.max_experts),
                _const("max_top_k", 4, lambda cfg: cfg.max_top_k),
                _const("max_groups", 9, lambda cfg: cfg.max_groups),
                _const("act_bits", 4, lambda cfg: cfg.act_bits),
                _const("weight_bits", 4, lambda cfg: cfg.weight_bits),
            ),
            doc="Routing limits and operand widths.",
        ),
        Reg(
            "CONFIG_MAX_TOKENS",
            Access.CONST,
            "AccelConfig.max_tokens.",
            const=lambda c: c.max_tokens,
        ),
        Reg(
            "CONFIG_MAX_D_MODEL",
            Access.CONST,
            "AccelConfig.max_d_model.",
            const=lambda c: c.max_d_model,
        ),
        Reg("CONFIG_MAX_D_FF", Access.CONST, "AccelConfig.max_d_ff.", const=lambda c: c.max_d_ff),
        Reg("CONFIG_HASH", Access.CONST, "CRC-32 of AccelConfig.to_json().", const=config_hash),
        Reg(
            "CONFIG_ADDR_BITS",
            Access.CONST,
            "AccelConfig.addr_bits: address words are byte addresses >> (addr_bits - 32).",
            const=lambda c: c.addr_bits,
        ),
    ),
)

CONTROL_BLOCK = Block(
    "control",
    0x040,
    0x40,
    (
        Reg(
            "CTRL",
            fields=(
                Field("start", 1, W1P, doc="Start the job described by the descriptor block."),
                Field("soft_reset", 1, W1P, doc="Abort and reset the datapath (not the CSRs)."),
            ),
            doc="Control pulses.",
        ),
        Reg(
            "STATUS",
            fields=(
                Field("busy", 1, RO, doc="A job is running."),
                Field("done", 1, W1C, doc="The last job finished; write 1 to clear."),
                Field("error", 1, W1C, doc="An error occurred (ERROR_CAUSE); write 1 to clear."),
            ),
            doc="Job status.",
        ),
        Reg("ERROR_CAUSE", RO, "ErrorCause of the first error since STATUS.error was cleared."),
        Reg("ERROR_ADDR", RO, "Bus address of the failing burst, bits 0-31 (bus errors only)."),
        Reg("WATCHDOG_CYCLES", RW, "Abort a job after this many cycles (0: no watchdog)."),
        Reg(
            "ERROR_DETAIL",
            RO,
            "With BAD_DESCRIPTOR: contract.descriptor.rule_code of the first failing rule.",
        ),
        Reg("ERROR_ADDR_HI", RO, "Bits 32 and up of ERROR_ADDR's bus address (addr_bits > 32)."),
    ),
)

# Address words: the byte address >> (addr_bits - 32) (contract.layout.addr_word);
# in the default 32-bit build, the byte address itself.
DESCRIPTOR_BLOCK = Block(
    "descriptor",
    0x100,
    0x100,
    (
        Reg("TOKENS_ADDR", RW, "Address word of the int8 token matrix X[T, d_model]."),
        Reg("ROUTER_W_ADDR", RW, "Address word of the router GEMM's weight stream (layout)."),
        Reg("EXPERT_TABLE_ADDR", RW, "Address word of the expert descriptor table."),
        Reg("OUTPUT_ADDR", RW, "Address word of the output Y[T, d_model]."),
        Reg("SCRATCH_ADDR", RW, "Address word of the routed expert outputs Ye (scratch)."),
        Reg("REQUANT_TABLE_ADDR", RW, "Address word of the router columns' (mult, shift) words."),
        Reg("LUT_TABLE_ADDR", RW, "Address word of the expert LUTs (e at e·lut_bytes bytes)."),
        Reg("NUM_TOKENS", RW, "T: tokens in this job."),
        Reg("D_MODEL", RW, "d_model."),
        Reg("D_FF", RW, "d_ff (per routed expert)."),
        Reg("N_EXPERTS", RW, "E: routed experts."),
        Reg("TOP_K", RW, "k: experts per token."),
        Reg(
            "ROUTING_MODE",
            fields=(
                Field("scoring", 1, RW, doc="RoutingMode: 0 softmax, 1 sigmoid."),
                Field("renormalize", 1, RW, doc="Renormalise the top-k weights."),
                Field("correction_bias", 1, RW, doc="Add the selection bias (DeepSeek-V3)."),
                Field("use_capacity", 1, RW, doc="Drop tokens beyond CAPACITY per expert."),
                Field("n_group", 9, RW, reset=1, doc="Expert groups (1: no grouping)."),
                Field("topk_group", 9, RW, reset=1, doc="Groups kept per token."),
            ),
            doc="Routing variant (docs/numerics.md §4.2).",
        ),
        Reg("CAPACITY", RW, "Tokens per expert when ROUTING_MODE.use_capacity."),
        Reg("D_FF_SHARED", RW, "Shared expert width (0 when LAYER_MODE.shared is NONE)."),
        Reg(
            "LAYER_MODE",
            fields=(
                Field("ffn", 2, RW, doc="FFNKind of the routed experts."),
                Field("shared", 2, RW, doc="SharedExpert: none, ungated, sigmoid-gated."),
                Field(
                    "weights",
                    2,
                    RW,
                    doc="Routed and shared expert weight format: bit 0 2:4 sparse, bit 1 int4 "
                    "(0: int8 dense; the router is always int8 dense). Only in builds with a "
                    "compressed weight path (AccelConfig.sparse_2_4 or int4_weights).",
                    built=lambda cfg: cfg.sparse_2_4 or cfg.int4_weights,
                ),
            ),
            doc="Expert FFN kind, shared-expert mode and expert weight format.",
        ),
        Reg("ROUTED_SCALING", RW, "Routed scaling factor, unsigned Q4.16 (sigmoid scoring)."),
        Reg(
            "OUTPUT_REQUANT",
            fields=(
                Field("mult", 24, RW, doc="Output requantisation multiplier."),
                Field("shift", 6, RW, doc="Output requantisation shift."),
            ),
            doc="The combiner's output requantisation.",
        ),
        Reg("BIAS_ADDR", RW, "Address word of the correction bias (one i32 per expert)."),
        Reg("ROUTING_ADDR", RW, "Address word of the routing records written back."),
        Reg("SHARED_SCRATCH_ADDR", RW, "Address word of the shared expert's outputs."),
    ),
)

COUNTER_BLOCK = Block(
    "counters",
    0x200,
    0x100,
    (
        Reg("CYCLES_TOTAL", RO, "Cycles from start to done.", width=64),
        Reg("CYCLES_ROUTE", RO, "Cycles in the route phase.", width=64),
        Reg("CYCLES_DISPATCH", RO, "Cycles in the dispatch phase.", width=64),
        Reg("CYCLES_EXPERTS", RO, "Cycles in the experts phase.", width=64),
        Reg("CYCLES_COMBINE", RO, "Cycles in the combine phase.", width=64),
        Reg("MAC_CYCLES", RO, "Cycles the array issued useful MACs.", width=64),
        Reg("STALL_WEIGHT", RO, "Cycles the array waited for weights.", width=64),
        Reg("STALL_ACTIVATION", RO, "Cycles the array waited for activations.", width=64),
        Reg("STALL_OUTPUT", RO, "Cycles the array waited on output backpressure.", width=64),
        Reg("BYTES_READ", RO, "Bytes read over the AXI4 master.", width=64),
        Reg("BYTES_WRITTEN", RO, "Bytes written over the AXI4 master.", width=64),
        Reg("DROPPED_TOKENS", RO, "(token, slot) pairs dropped by the capacity limit.", width=64),
        Reg("USEFUL_MACS", RO, "Multiply-accumulates of real (unpadded) operands.", width=64),
        Reg("ENGINE_BUSY", RO, "Cycles the GEMM engine held a command.", width=64),
        Reg("CYCLES_SHARED", RO, "Cycles spent on the shared expert (within experts).", width=64),
    ),
)

WINDOW_BLOCK = Block(
    "window",
    0x300,
    0x40,
    (
        Reg("EXPERT_INDEX", RW, "Selects the expert EXPERT_TOKENS reports."),
        Reg("EXPERT_TOKENS", RO, "Tokens routed to expert EXPERT_INDEX in the last job."),
    ),
)

COPY_QUEUE_DEPTH = 8
"""Descriptors the copy engine queues (`COPY_STATUS.pending` counts them): a layer's predicted
experts (W1, W2, parameters each). Here, not in `rtl.copy_engine`, so the driver has it
without Amaranth."""

# The copy engine (rtl.copy_engine) and the bus arbiter (rtl.axi_arbiter), only in builds with
# AccelConfig.copy_engine: copies run beside layers, so nothing here is cleared by CTRL.start;
# COPY_CTRL.clear_counters clears the counters.
COPY_BLOCK = Block(
    "copy",
    0x340,
    0x80,
    (
        Reg("COPY_SRC", RW, "Address word of the next copy's source (host memory)."),
        Reg("COPY_DST", RW, "Address word of the next copy's destination (a device cache slot)."),
        Reg("COPY_LENGTH", RW, "Bytes of the next copy (a multiple of the bus beat)."),
        Reg(
            "COPY_CTRL",
            fields=(
                Field("push", 1, W1P, doc="Queue the copy [COPY_SRC, COPY_DST, COPY_LENGTH]."),
                Field("clear_counters", 1, W1P, doc="Zero the copy and arbiter counters."),
            ),
            doc="Copy engine pulses.",
        ),
        Reg(
            "COPY_STATUS",
            fields=(
                Field("busy", 1, RO, doc="A copy is running or queued."),
                Field("done", 1, W1C, doc="The queue ran empty after work; write 1 to clear."),
                Field("error", 1, W1C, doc="A copy failed (COPY_ERROR_CAUSE); write 1 to clear."),
                Field("pending", 7, RO, doc="Copies queued, the running one included."),
            ),
            doc="Copy engine status.",
        ),
        Reg("COPY_ERROR_CAUSE", RO, "ErrorCause of the last failed copy (the queue was dropped)."),
        Reg("COPY_ERROR_ADDR", RO, "Bus address of the last copy error, bits 0-31."),
        Reg("COPY_ERROR_ADDR_HI", RO, "Bits 32 and up of COPY_ERROR_ADDR."),
        Reg("COPY_COMPLETED", RO, "Copies completed since COPY_CTRL.clear_counters."),
        Reg("COPY_BYTES", RO, "Bytes the copy engine wrote.", width=64),
        Reg("COPY_BUSY_CYCLES", RO, "Cycles a copy was running or queued.", width=64),
        Reg("COPY_WAIT_CYCLES", RO, "Cycles a copy's AR/AW request waited for the bus.", width=64),
        Reg("ARB_LAYER_BURSTS", RO, "Bursts (AR + AW) the arbiter granted the layer.", width=64),
        Reg("ARB_COPY_BURSTS", RO, "Bursts (AR + AW) the arbiter granted the copier.", width=64),
        Reg("ARB_LAYER_WAIT", RO, "Cycles a layer AR/AW request waited for the bus.", width=64),
    ),
    built=lambda cfg: cfg.copy_engine,
    needs="AccelConfig.copy_engine = True",
)

COUNTER_SOURCES: dict[str, tuple[str, str]] = {
    "CYCLES_TOTAL": ("phase", "total"),
    "CYCLES_ROUTE": ("phase", "route"),
    "CYCLES_DISPATCH": ("phase", "dispatch"),
    "CYCLES_EXPERTS": ("phase", "experts"),
    "CYCLES_SHARED": ("phase", "shared"),
    "CYCLES_COMBINE": ("phase", "combine"),
    "MAC_CYCLES": ("engine", "mac_cycles"),
    "USEFUL_MACS": ("engine", "macs"),
    "ENGINE_BUSY": ("engine", "busy"),
    "STALL_WEIGHT": ("engine", "stall_weight"),
    "STALL_ACTIVATION": ("engine", "stall_act"),
    "STALL_OUTPUT": ("engine", "stall_out"),
    "BYTES_READ": ("dma", "bytes_read"),
    "BYTES_WRITTEN": ("dma", "bytes_written"),
    "DROPPED_TOKENS": ("core", "dropped"),
}
"""Where each `COUNTER_BLOCK` register comes from in the top: (unit, counter name).

Units: `phase` (the sequencer's phase counters, `shared` lies within
`experts`), `engine` (the GEMM engine's counters), `dma`, `core` (the
layer sequencer). `rtl.top` connects the registers from this table in a loop.
"""

REGISTER_MAP = RegisterMap(
    (ID_BLOCK, CONTROL_BLOCK, DESCRIPTOR_BLOCK, COUNTER_BLOCK, WINDOW_BLOCK, COPY_BLOCK)
)
"""The accelerator's register map (the driver imports this; never redefine offsets)."""
