"""The layer descriptor: its fields (one table) and its validity rules (written once).

Why here: the top copies the descriptor registers into the sequencer's
descriptor and refuses a malformed one with `ErrorCause.BAD_DESCRIPTOR`; the
driver must refuse exactly the same programs before anything runs. Both read
this module: `rtl.descriptor.descriptor_layout` generates the `StructLayout` from
`DESCRIPTOR_FIELDS`, `rtl.top` fills it in a loop and builds its error check
from `RULES`, and `sw_driver.compile` runs `check_program` on every program it
emits. Nothing here imports Amaranth.

A rule is a predicate over `DescriptorValues` (the descriptor registers'
fields plus the group division the top computes) and the `AccelConfig`. It
uses only `==`, `!=`, `<`, `<=`, `>`, `>=`, `&`, `|`, `+`, `*`, shifts by
constants and constants, so
the same function gives a Python bool for ints and a 1-bit Amaranth value for
signals. `ERROR_DETAIL` reads `rule_code(rule)` of the first rule that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contract.regs import DESCRIPTOR_BLOCK, FFNKind, RoutingMode, SharedExpert
from pymodel.config import AccelConfig, ConfigError
from pymodel.gate import RSF_FRAC_BITS
from pymodel.weight_formats import WeightFormat

from .layout import REGION_ALIGN, addr_shift, row_unit
from .timing import SHIFT_BITS

__all__ = [
    "ADDRESS_REGISTERS",
    "DESCRIPTOR_FIELDS",
    "INPUTS",
    "ROUTED_SCALING_BITS",
    "RULES",
    "WEIGHTS_INT4",
    "WEIGHTS_SPARSE",
    "DescriptorError",
    "DescriptorField",
    "DescriptorValues",
    "Rule",
    "check_program",
    "failing_rules",
    "program_values",
    "rule_code",
    "weights_code",
]

ROUTED_SCALING_BITS = RSF_FRAC_BITS + 4
"""Width of the routed scaling factor: unsigned Q4.16 (factors below 16)."""


def _bits(n: int) -> int:
    """Bits of an unsigned field holding 0…n (Amaranth's `range(n + 1)`)."""
    return max(n, 1).bit_length()


@dataclass(frozen=True)
class DescriptorField:
    """One field of the sequencer's descriptor.

    `source` is the register field it is copied from ("REG" for a register's
    `value`, "REG.field" otherwise) or None for a field the top computes
    (`group_size`). `width(cfg)` is its width in the sequencer (0: the build has no such
    field, and `rtl.descriptor.descriptor_layout` leaves it out). An `address`
    field's register holds an address word (`contract.layout.addr_word`): the
    top copies it shifted left by `layout.addr_shift(cfg)`, a byte address.
    """

    name: str
    source: str | None
    width: Callable[[AccelConfig], int]
    doc: str = ""
    address: bool = False


def _compressed(cfg: AccelConfig) -> bool:
    """Whether `cfg` builds a compressed weight path (the `weights` field and its rules)."""
    return cfg.sparse_2_4 or cfg.int4_weights


def _addr(name: str, source: str) -> DescriptorField:
    return DescriptorField(
        name, source, lambda cfg: cfg.addr_bits, f"byte address (from {source}'s word)", True
    )


DESCRIPTOR_FIELDS: tuple[DescriptorField, ...] = (
    _addr("tokens_addr", "TOKENS_ADDR"),
    _addr("router_w_addr", "ROUTER_W_ADDR"),
    _addr("table_addr", "EXPERT_TABLE_ADDR"),
    _addr("output_addr", "OUTPUT_ADDR"),
    _addr("scratch_addr", "SCRATCH_ADDR"),
    _addr("rparam_addr", "REQUANT_TABLE_ADDR"),
    _addr("lut_addr", "LUT_TABLE_ADDR"),
    _addr("bias_addr", "BIAS_ADDR"),
    _addr("routing_addr", "ROUTING_ADDR"),
    _addr("shared_scratch_addr", "SHARED_SCRATCH_ADDR"),
    DescriptorField("t", "NUM_TOKENS", lambda cfg: _bits(cfg.max_tokens), "tokens"),
    DescriptorField("d", "D_MODEL", lambda cfg: _bits(cfg.max_d_model), "d_model"),
    DescriptorField("f", "D_FF", lambda cfg: _bits(cfg.max_d_ff), "routed d_ff"),
    DescriptorField("fs", "D_FF_SHARED", lambda cfg: _bits(cfg.max_d_ff), "shared d_ff"),
    DescriptorField("e", "N_EXPERTS", lambda cfg: _bits(cfg.max_experts), "routed experts"),
    DescriptorField("k", "TOP_K", lambda cfg: _bits(cfg.max_top_k), "experts per token"),
    DescriptorField(
        "sigmoid", "ROUTING_MODE.scoring", lambda cfg: 1, "1: RoutingMode.SIGMOID scoring"
    ),
    DescriptorField("renorm", "ROUTING_MODE.renormalize", lambda cfg: 1),
    DescriptorField("bias_en", "ROUTING_MODE.correction_bias", lambda cfg: 1),
    DescriptorField("cap_en", "ROUTING_MODE.use_capacity", lambda cfg: 1),
    DescriptorField("capacity", "CAPACITY", lambda cfg: 32),
    DescriptorField(
        "group_size", None, lambda cfg: _bits(cfg.max_experts), "N_EXPERTS / n_group (the top's)"
    ),
    DescriptorField("topk_group", "ROUTING_MODE.topk_group", lambda cfg: _bits(cfg.max_groups)),
    DescriptorField("ffn", "LAYER_MODE.ffn", lambda cfg: 2, "FFNKind"),
    DescriptorField("shared", "LAYER_MODE.shared", lambda cfg: 2, "SharedExpert"),
    DescriptorField(
        "weights",
        "LAYER_MODE.weights",
        lambda cfg: 2 if _compressed(cfg) else 0,
        "expert weight format (WEIGHTS_* bits); only in builds with a compressed path",
    ),
    DescriptorField("scale", "ROUTED_SCALING", lambda cfg: ROUTED_SCALING_BITS),
    DescriptorField("out_mult", "OUTPUT_REQUANT.mult", lambda cfg: cfg.mult_bits),
    DescriptorField("out_shift", "OUTPUT_REQUANT.shift", lambda cfg: SHIFT_BITS),
)
"""The sequencer's descriptor, in layout order (`rtl.descriptor.descriptor_layout`)."""

if RoutingMode.SIGMOID != 1:
    raise ConfigError("descriptor field `sigmoid` copies ROUTING_MODE.scoring: SIGMOID must be 1")


def _inputs() -> dict[str, tuple[str, str]]:
    """Rule input name → (register, field) for every descriptor register field."""
    out: dict[str, tuple[str, str]] = {}
    for reg in DESCRIPTOR_BLOCK.registers:
        for f in reg.fields:
            key = reg.name.lower() if f.name == "value" else f.name
            if key in out:
                raise ConfigError(f"descriptor rule input {key!r} is ambiguous")
            out[key] = (reg.name, f.name)
    return out


INPUTS: dict[str, tuple[str, str]] = _inputs()
"""Names the rules read (`num_tokens`, `n_group`, `ffn`, ...) → (register, field)."""

ADDRESS_REGISTERS: tuple[str, ...] = tuple(
    f.source for f in DESCRIPTOR_FIELDS if f.address and f.source is not None
)
"""The descriptor's address-word registers (each must name a `REGION_ALIGN`-aligned byte)."""


class DescriptorValues:
    """The rules' inputs: one attribute per `INPUTS` name plus `group_size`, `group_rem`.

    Values are Python ints (driver) or Amaranth values (the top); the group
    division (`N_EXPERTS` by `n_group`) is the top's repeated subtraction,
    so for ints it is computed here the same way (`n_group = 0`: 0 rem E).
    """

    def __init__(self, fields: Mapping[str, Any], group_size: Any = None, group_rem: Any = None):
        missing = set(INPUTS) - set(fields)
        if missing:
            raise ConfigError(f"descriptor values lack {sorted(missing)}")
        self.__dict__.update(fields)
        if group_size is None:
            e, ng = int(fields["n_experts"]), int(fields["n_group"])
            group_size, group_rem = divmod(e, ng) if ng else (0, e)
        self.group_size = group_size
        self.group_rem = group_rem

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"no descriptor value {name!r}; known: {sorted(INPUTS)}")


@dataclass(frozen=True)
class Rule:
    """A named validity rule: `fails(values, cfg)` is true when the descriptor breaks it.

    `built` (None: every build) limits it to builds where `built(cfg)` holds, those
    having the register fields it reads (`contract.regs.Field.built`).
    """

    name: str
    doc: str
    fails: Callable[[DescriptorValues, AccelConfig], Any]
    built: Callable[[AccelConfig], bool] | None = None

    def applies(self, cfg: AccelConfig) -> bool:
        """Whether hardware built as `cfg` checks this rule."""
        return self.built is None or bool(self.built(cfg))


def _range(name: str, attr: str, limit: str) -> Rule:
    return Rule(
        f"{attr}_range",
        f"{name} must lie in [1, AccelConfig.{limit}]",
        lambda v, cfg: (getattr(v, attr) == 0) | (getattr(v, attr) > getattr(cfg, limit)),
    )


def _aligned(reg: str) -> Rule:
    mask = REGION_ALIGN - 1
    return Rule(
        f"{reg.lower()}_misaligned",
        f"{reg} must name a {REGION_ALIGN}-byte aligned address",
        lambda v, cfg: ((getattr(v, reg.lower()) << addr_shift(cfg)) & mask) != 0,
    )


def _row_bytes(d: Any, cfg: AccelConfig) -> Any:
    """`layout.row_bytes` of a D_MODEL value, in shifts (for signals as for ints)."""
    s = row_unit(cfg).bit_length() - 1
    return ((d + (row_unit(cfg) - 1)) >> s) << s


def _inside(reg: str) -> Rule:
    """A region of T rows of `row_bytes(d_model)` (tokens, output) ends inside the bus."""
    return Rule(
        f"{reg.lower()}_past_address_space",
        f"{reg}'s region (NUM_TOKENS rows of D_MODEL bytes, padded) must end below "
        "2^AccelConfig.addr_bits",
        lambda v, cfg: (
            (getattr(v, reg.lower()) << addr_shift(cfg)) + v.num_tokens * _row_bytes(v.d_model, cfg)
            >= 2**cfg.addr_bits
        ),
    )


def _grouped(v: DescriptorValues) -> Any:
    return v.n_group > 1


WEIGHTS_SPARSE = 1
"""`LAYER_MODE.weights` bit 0: the expert weights are 2:4 sparse (the engine command's
`fmt.sparse`)."""
WEIGHTS_INT4 = 2
"""`LAYER_MODE.weights` bit 1: the expert weights are int4 (the command's `fmt.int4`)."""


def weights_code(fmt: WeightFormat) -> int:
    """The `LAYER_MODE.weights` value of expert weights in `fmt` (its scale grouping aside)."""
    return (WEIGHTS_SPARSE if fmt.sparse else 0) | (WEIGHTS_INT4 if fmt.bits == 4 else 0)


def _built_weights(cfg: AccelConfig) -> int:
    """The `LAYER_MODE.weights` bits hardware built as `cfg` runs."""
    return (WEIGHTS_SPARSE if cfg.sparse_2_4 else 0) | (WEIGHTS_INT4 if cfg.int4_weights else 0)


def _sparse_k_ragged(v: DescriptorValues) -> Any:
    """A 2:4 layer with a reduction length (D_MODEL, D_FF, D_FF_SHARED) not a multiple of 4."""
    shared_k = (v.shared != SharedExpert.NONE) & ((v.d_ff_shared & 3) != 0)
    ragged = ((v.d_model & 3) != 0) | ((v.d_ff & 3) != 0) | shared_k
    return ((v.weights & WEIGHTS_SPARSE) != 0) & ragged


RULES: tuple[Rule, ...] = (
    _range("NUM_TOKENS", "num_tokens", "max_tokens"),
    _range("D_MODEL", "d_model", "max_d_model"),
    _range("D_FF", "d_ff", "max_d_ff"),
    _range("N_EXPERTS", "n_experts", "max_experts"),
    _range("TOP_K", "top_k", "max_top_k"),
    Rule(
        "top_k_above_experts",
        "TOP_K must not exceed N_EXPERTS",
        lambda v, c: v.top_k > v.n_experts,
    ),
    Rule(
        "ffn_unknown",
        "LAYER_MODE.ffn must be an FFNKind",
        lambda v, c: v.ffn > max(FFNKind),
    ),
    Rule(
        "shared_unknown",
        "LAYER_MODE.shared must be a SharedExpert",
        lambda v, c: v.shared > max(SharedExpert),
    ),
    Rule(
        "d_ff_shared_range",
        "with a shared expert, D_FF_SHARED must lie in [1, AccelConfig.max_d_ff]",
        lambda v, c: (
            (v.shared != SharedExpert.NONE) & ((v.d_ff_shared == 0) | (v.d_ff_shared > c.max_d_ff))
        ),
    ),
    Rule(
        "n_group_range",
        "ROUTING_MODE.n_group must lie in [1, min(AccelConfig.max_groups, N_EXPERTS)]",
        lambda v, c: (v.n_group == 0) | (v.n_group > c.max_groups) | (v.n_group > v.n_experts),
    ),
    Rule(
        "topk_group_range",
        "ROUTING_MODE.topk_group must lie in [1, n_group]",
        lambda v, c: (v.topk_group == 0) | (v.topk_group > v.n_group),
    ),
    Rule(
        "groups_uneven",
        "ROUTING_MODE.n_group must divide N_EXPERTS",
        lambda v, c: v.group_rem != 0,
    ),
    Rule(
        "groups_need_sigmoid",
        "group-limited selection (n_group > 1) needs sigmoid scoring",
        lambda v, c: _grouped(v) & (v.scoring != RoutingMode.SIGMOID),
    ),
    Rule(
        "group_too_small",
        "group-limited selection needs at least two experts a group (the top-2 group score)",
        lambda v, c: _grouped(v) & (v.group_size < 2),
    ),
    Rule(
        "top_k_above_group_experts",
        "TOP_K must not exceed topk_group · (N_EXPERTS / n_group)",
        lambda v, c: _grouped(v) & (v.top_k > v.topk_group * v.group_size),
    ),
    Rule(
        "bias_needs_sigmoid",
        "ROUTING_MODE.correction_bias needs sigmoid scoring",
        lambda v, c: (v.correction_bias == 1) & (v.scoring != RoutingMode.SIGMOID),
    ),
    Rule(
        "zero_capacity",
        "ROUTING_MODE.use_capacity needs CAPACITY ≥ 1",
        lambda v, c: (v.use_capacity == 1) & (v.capacity == 0),
    ),
    Rule(
        "routed_scaling_range",
        f"ROUTED_SCALING must fit {ROUTED_SCALING_BITS} bits (unsigned Q4.16)",
        lambda v, c: v.routed_scaling >= 2**ROUTED_SCALING_BITS,
    ),
    *(_aligned(reg) for reg in ADDRESS_REGISTERS),
    _inside("TOKENS_ADDR"),
    _inside("OUTPUT_ADDR"),
    Rule(
        "weights_sparse_k",
        "2:4 expert weights need D_MODEL, D_FF (and D_FF_SHARED with a shared expert) "
        "multiples of 4 (whole groups of 4 along K)",
        lambda v, c: _sparse_k_ragged(v),
        _compressed,
    ),
    Rule(
        "weights_not_built",
        "LAYER_MODE.weights asks for a weight format this build lacks "
        "(2:4 needs AccelConfig.sparse_2_4, int4 needs AccelConfig.int4_weights)",
        lambda v, c: (v.weights & (3 ^ _built_weights(c))) != 0,
        _compressed,
    ),
)
"""Every descriptor-validity rule, in `ERROR_DETAIL` order (the first failing one is reported)."""


def rule_code(rule: Rule) -> int:
    """`ERROR_DETAIL` value naming `rule` (0 means no rule failed)."""
    return RULES.index(rule) + 1


class DescriptorError(ConfigError):
    """A descriptor the hardware would refuse with `BAD_DESCRIPTOR`; `rules` lists why."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        super().__init__(
            "the accelerator would refuse this descriptor (BAD_DESCRIPTOR): "
            + "; ".join(f"{r.name}: {r.doc}" for r in rules)
        )


def program_values(program: Iterable[tuple[str, int]]) -> DescriptorValues:
    """The rule inputs after a register program (descriptor registers start at reset)."""
    words = {
        reg.name: reg.pack(**{f.name: f.reset for f in reg.fields})
        for reg in DESCRIPTOR_BLOCK.registers
    }
    for name, value in program:
        if name in words:
            words[name] = int(value)
    regs = {reg.name: reg for reg in DESCRIPTOR_BLOCK.registers}
    return DescriptorValues({key: regs[r].unpack(words[r])[f] for key, (r, f) in INPUTS.items()})


def failing_rules(values: DescriptorValues, cfg: AccelConfig) -> list[Rule]:
    """The rules `values` break, in `RULES` order (empty: the hardware accepts it); only the
    rules hardware built as `cfg` checks (`Rule.applies`)."""
    return [rule for rule in RULES if rule.applies(cfg) and rule.fails(values, cfg)]


def check_program(program: Iterable[tuple[str, int]], cfg: AccelConfig) -> None:
    """Raise `DescriptorError` when the hardware would refuse `program`'s descriptor."""
    failed = failing_rules(program_values(program), cfg)
    if failed:
        raise DescriptorError(failed)
