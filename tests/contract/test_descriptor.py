# amaranth: UnusedElaboratable=no
"""contract.descriptor: the rules on ints, the driver's check, and the top's check generated
from the same rules (`MoEAccel(SMALL_TOP)` on the fast backend, one cached build).

The property: for any descriptor register values, the hardware reports BAD_DESCRIPTOR
exactly when some rule fails, and ERROR_DETAIL names the first failing rule; and every
rule the driver checks is one the hardware reports (the two refusal lists are equal).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contract.descriptor import (
    INPUTS,
    RULES,
    DescriptorError,
    DescriptorValues,
    check_program,
    failing_rules,
    program_values,
    rule_code,
    weights_code,
)
from contract.layout import addr_shift
from contract.regs import DESCRIPTOR_BLOCK, REGISTER_MAP, ErrorCause, RoutingMode
from pymodel.config import ConfigError
from pymodel.weight_formats import WeightFormat, check_supported
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP

BASE: dict[str, int] = {
    **{key: 0x1000 * (i + 1) for i, key in enumerate(k for k in INPUTS if k.endswith("_addr"))},
    "num_tokens": 4,
    "d_model": 16,
    "d_ff": 32,
    "d_ff_shared": 0,
    "n_experts": 8,
    "top_k": 2,
    "scoring": RoutingMode.SIGMOID,
    "renormalize": 1,
    "correction_bias": 1,
    "use_capacity": 0,
    "n_group": 2,
    "topk_group": 1,
    "capacity": 0,
    "ffn": 0,
    "shared": 0,
    "weights": 0,
    "routed_scaling": 1 << 16,
    "mult": 1 << 10,
    "shift": 8,
}
"""A descriptor the hardware accepts (DeepSeek-V3-like routing on the small top)."""

_WIDTH = {key: REGISTER_MAP[reg].register.field(name).width for key, (reg, name) in INPUTS.items()}
_LIMIT = {
    "num_tokens": CFG.max_tokens,
    "d_model": CFG.max_d_model,
    "d_ff": CFG.max_d_ff,
    "d_ff_shared": CFG.max_d_ff,
    "n_experts": CFG.max_experts,
    "top_k": CFG.max_top_k,
    "n_group": CFG.max_groups,
    "topk_group": CFG.max_groups,
    "routed_scaling": 1 << 20,
    "ffn": 3,
    "shared": 3,
    "weights": 3,
}
MAX_EXPERTS_DRAWN = 1 << 10
"""N_EXPERTS draws stay below this: the top divides E by n_group one step a cycle."""


def edge_values(key: str) -> list[int]:
    """Values worth trying for one input: 0, 1, 2, around its limit, unaligned, the top
    (and the top's last aligned address, where a region runs out of the address space)."""
    top = 2 ** _WIDTH[key] - 1
    limit = _LIMIT.get(key, 64)
    values = {0, 1, 2, 3, limit - 1, limit, limit + 1, BASE[key] + 16, top, top - top % 64}
    if key == "n_experts":
        values = {v for v in values if v < MAX_EXPERTS_DRAWN}
    return sorted(v for v in values if 0 <= v <= top)


def registers(values: dict[str, int]) -> list[tuple[str, int]]:
    """The descriptor register writes holding `values`."""
    fields: dict[str, dict[str, int]] = {}
    for key, (reg, name) in INPUTS.items():
        fields.setdefault(reg, {})[name] = values[key]
    return [(r.name, r.pack(**fields[r.name])) for r in DESCRIPTOR_BLOCK.registers]


def test_the_base_descriptor_is_valid():
    assert failing_rules(program_values(registers(BASE)), CFG) == []


def test_program_values_start_from_the_reset_values():
    values = program_values([("N_EXPERTS", 8)])
    assert values.n_group == 1 and values.topk_group == 1 and values.n_experts == 8
    assert values.group_size == 8 and values.group_rem == 0


def test_the_driver_refuses_with_the_rules_named():
    program = registers({**BASE, "top_k": 0, "tokens_addr": 0x1010})
    with pytest.raises(DescriptorError, match=r"top_k_range.*tokens_addr_misaligned") as info:
        check_program(program, CFG)
    assert [r.name for r in info.value.rules] == ["top_k_range", "tokens_addr_misaligned"]


def test_rule_names_are_unique_and_every_input_is_known():
    assert len({r.name for r in RULES}) == len(RULES)
    with pytest.raises(AttributeError, match="no descriptor value"):
        _ = DescriptorValues(BASE).n_expert


@pytest.mark.parametrize(
    "sparse, int4", [(False, False), (True, False), (False, True), (True, True)]
)
def test_a_weight_format_is_refused_exactly_where_the_build_lacks_it(sparse, int4):
    cfg = CFG.replace(sparse_2_4=sparse, int4_weights=int4)
    for fmt in (
        WeightFormat.DENSE_INT8,
        WeightFormat.parse("int8", "2:4"),
        WeightFormat.parse("int4", "dense"),
        WeightFormat.parse("int4", "2:4"),
    ):
        failed = [r.name for r in failing_rules(DescriptorValues(_with(fmt)), cfg)]
        built = (sparse or not fmt.sparse) and (int4 or fmt.bits == 8)
        if sparse or int4:
            assert failed == ([] if built else ["weights_not_built"]), fmt.name
        else:  # no LAYER_MODE.weights in this build: the driver alone refuses the format
            assert failed == [], fmt.name
            if not built:
                with pytest.raises(ConfigError, match="need a build with"):
                    check_supported(fmt, cfg)


def test_a_2_4_layer_needs_every_reduction_length_a_multiple_of_4():
    cfg = CFG.replace(sparse_2_4=True)
    sparse = _with(WeightFormat.parse("int8", "2:4"))
    for change in ({"d_model": 18}, {"d_ff": 30}, {"shared": 1, "d_ff_shared": 6}):
        failed = failing_rules(DescriptorValues({**sparse, **change}), cfg)
        assert [r.name for r in failed] == ["weights_sparse_k"], change
    dense_ragged = {**BASE, "d_model": 18, "shared": 1, "d_ff_shared": 6}
    assert failing_rules(DescriptorValues(dense_ragged), cfg) == []


def _with(fmt: WeightFormat) -> dict[str, int]:
    return {**BASE, "weights": weights_code(fmt)}


def single_rule_violations() -> dict[str, dict[str, int]]:
    """For every rule, descriptor values whose first failing rule is it (1–2 inputs changed)."""
    found: dict[str, dict[str, int]] = {}
    keys = list(INPUTS)
    changes = [(k, v) for k in keys for v in edge_values(k)]
    for n in (1, 2):
        for combo in itertools.combinations(changes, n):
            if len({k for k, _ in combo}) < n:
                continue
            values = {**BASE, **dict(combo)}
            failed = failing_rules(DescriptorValues(values), CFG)
            if failed and failed[0].name not in found:
                found[failed[0].name] = values
        if len(found) == sum(r.applies(CFG) for r in RULES):
            break
    return found


def test_every_rule_can_be_the_one_that_fails():
    assert set(single_rule_violations()) == {r.name for r in RULES if r.applies(CFG)}


def test_the_weight_format_rules_apply_only_to_builds_with_a_compressed_path():
    """The default build has no LAYER_MODE.weights (its Verilog is the dense one's)."""
    weight_rules = {"weights_sparse_k", "weights_not_built"}
    assert {r.name for r in RULES if not r.applies(CFG)} == weight_rules
    assert all(r.applies(CFG.replace(int4_weights=True)) for r in RULES)
    layer_mode = REGISTER_MAP["LAYER_MODE"].register
    assert "weights" not in [f.name for f in layer_mode.fields_in(CFG)]
    assert "weights" in [f.name for f in layer_mode.fields_in(CFG.replace(sparse_2_4=True))]


# --- the hardware ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator:
    from rtl.top import MoEAccel
    from sim.fast import FastSim

    with FastSim(
        lambda: MoEAccel(SMALL_TOP), SMALL_TOP, 1 << 18, read_latency=12, name="moe_accel"
    ) as s:
        yield s


def hardware_verdict(sim, values: dict[str, int]) -> tuple[int, int]:
    """(ERROR_CAUSE, ERROR_DETAIL) after writing `values` and starting, from reset."""
    sim.reset()
    for reg, word in registers(values):
        sim.write_reg(reg, word)
    sim.write_reg("CTRL", REGISTER_MAP["CTRL"].register.pack(start=1))
    sim.step(MAX_EXPERTS_DRAWN + 64)
    return sim.read_reg("ERROR_CAUSE"), sim.read_reg("ERROR_DETAIL")


def test_the_drivers_refusal_list_is_the_hardwares(sim):
    """Each rule, broken first, is refused by the driver and reported by the top as itself."""
    for name, values in single_rule_violations().items():
        rule = next(r for r in RULES if r.name == name)
        with pytest.raises(DescriptorError) as info:
            check_program(registers(values), CFG)
        assert info.value.rules[0] is rule
        assert hardware_verdict(sim, values) == (ErrorCause.BAD_DESCRIPTOR, rule_code(rule)), name
    assert hardware_verdict(sim, BASE)[0] != ErrorCause.BAD_DESCRIPTOR


@st.composite
def descriptors(draw) -> dict[str, int]:
    """The base descriptor with a few inputs set to edge or random values."""
    values = dict(BASE)
    for key in draw(st.lists(st.sampled_from(list(INPUTS)), max_size=4, unique=True)):
        top = 2 ** _WIDTH[key] - 1
        if key == "n_experts":
            top = MAX_EXPERTS_DRAWN - 1
        values[key] = draw(st.sampled_from(edge_values(key)) | st.integers(0, top))
    return values


REGION_REACH = 1 << 20
"""More bytes than any region of a SMALL_TOP layer spans (its largest, the expert weights)."""


def dma_range_refusal(sim, values: dict[str, int]) -> bool:
    """Whether the refusal is the DMA's own range check (`rtl.dma`: a command whose bytes
    would run past 2^addr_bits, cause BAD_DESCRIPTOR, detail 0, ERROR_ADDR its address).

    The rules bound the token and output regions (`*_past_address_space`); the other
    regions' lengths depend on the routing, so a region placed at the top of the address
    space is refused when its first command would cross the end, not before the start.
    """
    if sim.read_reg("ERROR_DETAIL") != 0:
        return False
    addr = sim.read_reg("ERROR_ADDR")
    starts = {
        (word << addr_shift(CFG)) % (1 << 32)
        for key, word in values.items()
        if key.endswith("_addr") and 2**CFG.addr_bits - (word << addr_shift(CFG)) < REGION_REACH
    }
    return addr in starts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=descriptors())
@example(values={**BASE, "router_w_addr": 2**32 - 64})
def test_hardware_refuses_exactly_when_a_rule_fails(sim, values):
    """A rule fails exactly when the top refuses before starting, naming that rule; the one
    other refusal is the DMA's at run time, of a region that ends past the address space
    (found by this test: the router weights at 2^32 − 64)."""
    failed = failing_rules(DescriptorValues(values), CFG)
    cause, detail = hardware_verdict(sim, values)
    if not failed and cause == ErrorCause.BAD_DESCRIPTOR:
        assert dma_range_refusal(sim, values), (detail, hex(sim.read_reg("ERROR_ADDR")))
        return
    assert (cause == ErrorCause.BAD_DESCRIPTOR) == bool(failed), [r.name for r in failed]
    assert detail == (rule_code(failed[0]) if failed else 0)
