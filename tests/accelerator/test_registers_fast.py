# amaranth: UnusedElaboratable=no
"""Every register of the map read, and every read/write bit set and cleared, on the whole
accelerator; then a bit-exact layer.

Why: the layer tests read a handful of registers, and the CSR's read decoder
has a case arm per register, so `make coverage` found most arms never taken
on the whole top (the CSR's own cocotb bench reads them all, but on its own
build). Reading each register once, on both tops the random-layer tests
build and on the wide-address, compressed-format and copy-engine tops of their own
tests (each a coverage population of its own, with its own decoder arms), takes those
arms; the layer after it shows that reads change nothing. The bit bash (each register's
read/write fields written all ones, read back, written all zeros, read back, then its reset
value restored) does for the write path what the reads do for the decoder: addresses and
sizes in a layer are small, so the upper bits of the storage, of the CSR's byte-strobe
merge and of the descriptor wires fed from them never toggled (`make coverage`).
"""

from __future__ import annotations

import pytest

from contract.regs import Access
from rtl.top import MoEAccel
from sim.fast import FastSim
from sim.tb.layer_cases import SMALL_TOP, make_case, mode_specs, run_case

LOOP_TOP = SMALL_TOP.replace(rows=4, cols=4, max_tokens=48)
"""The 48-token top of `test_random_layers_fast.py` (the same build)."""

TOPS = {
    "small": (SMALL_TOP, "moe_accel"),
    "loop": (LOOP_TOP, "moe_accel"),
    "wide": (SMALL_TOP.replace(addr_bits=40), "moe_accel"),
    "formats": (SMALL_TOP.replace(sparse_2_4=True, int4_weights=True), "moe_formats"),
    "copy": (SMALL_TOP.replace(copy_engine=True), "moe_accel"),
}
"""Each top as the test that runs its layers builds it (config and build name), so no
build is added: test_wide_addresses_fast, test_weight_formats_fast, test_copy_engine_fast."""


@pytest.mark.parametrize("top", TOPS)
def test_every_register_reads_ok_then_a_layer_is_bit_exact(top):
    cfg, name = TOPS[top]
    with FastSim(lambda: MoEAccel(cfg), cfg, 1 << 18, read_latency=12, name=name) as sim:
        names = [placed.name for placed in sim.regmap.registers_in(cfg)]
        values = {name: sim.read_reg(name) for name in names}
        assert len(values) == len(names) > 10
        spec = mode_specs(32, 64, 8)["qwen2_moe"]
        run_case(sim, make_case("after reads", spec, cfg, tokens=cfg.max_tokens, seed=7))


def _rw_mask(placed, cfg) -> int:
    """The bits of `placed`'s read/write fields in a `cfg` build."""
    fields = placed.register.fields_in(cfg)
    return placed.register.pack(
        **{f.name: (1 << f.width) - 1 for f in fields if f.access is Access.RW}
    )


def _reset_word(placed, cfg) -> int:
    return placed.register.pack(**{f.name: f.reset for f in placed.register.fields_in(cfg)})


@pytest.mark.parametrize("top", TOPS)
def test_every_read_write_bit_sets_and_clears_then_a_layer_is_bit_exact(top):
    """Ones then zeros through every read/write field (other fields written 0: no start, no
    clear), each read back exactly; the reset values restored; then a bit-exact layer."""
    cfg, name = TOPS[top]
    with FastSim(lambda: MoEAccel(cfg), cfg, 1 << 18, read_latency=12, name=name) as sim:
        bashed = [
            (placed, mask)
            for placed in sim.regmap.registers_in(cfg)
            if (mask := _rw_mask(placed, cfg))
        ]
        assert len(bashed) > 10
        wrong = []
        for placed, mask in bashed:
            for value in (mask, 0):
                sim.write_reg(placed.name, value)
                got = sim.read_reg(placed.name) & mask
                if got != value:
                    wrong.append(f"{placed.name}: wrote {value:#x}, read {got:#x}")
            sim.write_reg(placed.name, _reset_word(placed, cfg))
        assert not wrong, wrong
        spec = mode_specs(32, 64, 8)["qwen2_moe"]
        run_case(sim, make_case("after the bit bash", spec, cfg, tokens=cfg.max_tokens, seed=8))
