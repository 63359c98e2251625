# amaranth: UnusedElaboratable=no
"""rtl.dma on Verilator via cocotb + cocotbext-axi, and its generator checks.

Three builds: the default 16-byte bus with 16-beat bursts and 4 outstanding
bursts; an 8-byte bus with short (4-beat) bursts and one outstanding
burst, where the limits bind all the time; and the default bus with 40-bit
addresses, its commands above 4 GiB (`base`).
"""

from pathlib import Path

import pytest
from amaranth import Shape

from pymodel.config import AccelConfig, ConfigError
from rtl.axi import AXI4Signature, burst_beats
from rtl.dma import DMA
from sim.build import build_component, emit_verilog, lint_verilog, run_cocotb

TB = Path(__file__).with_name("cocotb_dma.py")

VARIANTS = {
    "b16": (AccelConfig(), None, 4, 0),
    "b8_short": (AccelConfig(mem_bytes_per_cycle=8), 4, 1, 0),
    "b16_wide": (AccelConfig(addr_bits=40), None, 4, 0x93_0000_0000),
}
"""name: (config, burst beats or None for the default, outstanding bursts, bus base)."""


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dma_against_axi_ram(variant):
    cfg, burst, outstanding, base = VARIANTS[variant]
    dma = DMA(cfg, burst=burst, max_outstanding=outstanding)
    build = build_component(dma, f"dma_{variant}")
    run_cocotb(
        build,
        TB,
        params={
            "cfg": cfg,
            "burst": dma.burst,
            "max_outstanding": outstanding,
            "base": base,
            "seed": len(variant),
        },
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 106))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dma_soak(variant, seed):
    cfg, burst, outstanding, base = VARIANTS[variant]
    dma = DMA(cfg, burst=burst, max_outstanding=outstanding)
    run_cocotb(
        build_component(dma, f"dma_{variant}"),
        TB,
        testcase="random_reads_and_writes_with_backpressure",
        params={
            "cfg": cfg,
            "burst": dma.burst,
            "max_outstanding": outstanding,
            "base": base,
            "commands": 60,
            "seed": seed,
        },
    )


def test_dma_verilog_lint_clean():
    dma = DMA(AccelConfig(mem_bytes_per_cycle=64))
    assert lint_verilog(emit_verilog(dma, "dma"), "dma") == []


def test_bus_shape_follows_the_config():
    cfg = AccelConfig(mem_bytes_per_cycle=32)
    sig = AXI4Signature(cfg)
    assert Shape.cast(sig.members["wdata"].shape).width == 256
    assert Shape.cast(sig.members["wstrb"].shape).width == 32
    assert sig.size_code == 5
    assert burst_beats(cfg) == 16
    assert DMA(cfg).m_axi.signature == sig


def test_dma_rejects_bad_parameters():
    with pytest.raises(ConfigError, match="AccelConfig"):
        DMA("cfg")
    with pytest.raises(ConfigError, match="burst"):
        DMA(AccelConfig(), burst=0)
    with pytest.raises(ConfigError, match="exceeds 4 KiB"):
        DMA(AccelConfig(mem_bytes_per_cycle=64), burst=128)
    with pytest.raises(ConfigError, match="max_outstanding"):
        DMA(AccelConfig(), max_outstanding=0)
    with pytest.raises(ConfigError, match="axi_id"):
        DMA(AccelConfig(), axi_id=16)


def test_addresses_are_addr_bits_wide():
    cfg = AccelConfig(addr_bits=40)
    sig = AXI4Signature(cfg)
    assert Shape.cast(sig.members["araddr"].shape).width == 40
    assert Shape.cast(sig.members["awaddr"].shape).width == 40
    dma = DMA(cfg)
    assert Shape.cast(dma.error_addr.shape()).width == 40
    assert Shape.cast(dma.rd_cmd.payload.addr.shape()).width == 40
