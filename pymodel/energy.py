"""Energy per layer and on-chip storage per configuration: first-order estimates.

Energy comes from operation counts of the cycle model (`pymodel.cycles`) priced
with the 45 nm, 0.9 V figures of M. Horowitz, "Computing's energy problem (and
what we can do about it)", ISSCC 2014, pp. 10–14 (the table of rough energy
costs): 8-bit integer multiply 0.2 pJ, 32-bit integer add 0.1 pJ; a 64-bit
SRAM (cache) access 10 pJ at 8 KB, 20 pJ at 32 KB, 100 pJ at 1 MB; a 64-bit
DRAM access 1.3–2.6 nJ. They are estimates of a different process and
circuit style than any build of this RTL (an FPGA spends far more per MAC);
use them to compare designs and layers with one another, not as absolute
figures.

What is counted:

- MACs: every lane the array issues (`mac_cycles · rows · cols`: padding
  lanes of partial tiles toggle too), an 8-bit multiply plus a 32-bit add;
- on-chip SRAM: activation reads into the array (`rows` bytes a MAC cycle),
  accumulator read-modify-write (`2 · cols · 4` bytes a MAC cycle), and each
  byte moved over the bus written into (or read out of) a buffer once, each
  priced by the size class of the buffer it touches (`storage_bytes`);
- DRAM: `bytes_read + bytes_written`, at the midpoint 1.95 nJ per 64 bits.

Storage is the sum of the layer sequencer's and engine's memories for a
config (`rtl.layer_sequencer`, `rtl.gemm_engine`, `rtl.postproc`), sized
from its limits; registers (the weight banks, pipeline registers) are
listed apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract import layout
from contract.timing import default_m_block, default_param_rows, wide_bits

from .config import AccelConfig
from .cycles import CycleEstimate

__all__ = [
    "DRAM_PJ_PER_BYTE",
    "MAC_PJ",
    "SRAM_PJ_PER_BYTE",
    "EnergyEstimate",
    "layer_energy",
    "sram_pj_per_byte",
    "storage_bytes",
]

MAC_PJ = 0.2 + 0.1
"""One int8 MAC: 8-bit multiply (0.2 pJ) + 32-bit accumulate add (0.1 pJ), Horowitz 2014."""

SRAM_PJ_PER_BYTE: tuple[tuple[int, float], ...] = (
    (8 * 1024, 10.0 / 8),
    (32 * 1024, 20.0 / 8),
    (1024 * 1024, 100.0 / 8),
)
"""(size up to, pJ per byte) from 64-bit accesses at 8 KB / 32 KB / 1 MB, Horowitz 2014."""

DRAM_PJ_PER_BYTE = (1300.0 + 2600.0) / 2 / 8
"""Midpoint of 1.3–2.6 nJ per 64-bit DRAM access, Horowitz 2014 (≈ 244 pJ/byte)."""


def sram_pj_per_byte(size_bytes: int) -> float:
    """Energy per byte accessed in an SRAM of `size_bytes` (the next size class up).

    Past 1 MB the 1 MB figure is used (an underestimate: no larger size is tabulated).
    """
    for limit, pj in SRAM_PJ_PER_BYTE:
        if size_bytes <= limit:
            return pj
    return SRAM_PJ_PER_BYTE[-1][1]


def storage_bytes(cfg: AccelConfig) -> dict[str, int]:
    """On-chip memory bytes of the top generated for `cfg`, by buffer (see module docstring)."""
    r, c = cfg.rows, cfg.cols
    mb = default_m_block(cfg)
    row = layout.row_bytes(cfg, cfg.max_d_model)
    pairs = cfg.max_tokens * cfg.max_top_k
    sorted_rows = pairs + cfg.max_experts * (cfg.m_tile - 1)
    param_rows = default_param_rows(cfg)
    small = 4 * (2 * pairs + sorted_rows + cfg.max_tokens + 4 * cfg.max_experts)
    return {
        "tokens_x": cfg.max_tokens * row,
        "hidden_h": mb * layout.align(cfg.max_d_ff, max(r, c)),
        "expert_out_y": mb * row,
        "logits": cfg.max_tokens
        * layout.n_tiles(cfg.max_experts + 1, c)
        * c
        * -(-wide_bits(cfg) // 8),
        "combine_terms": (cfg.max_top_k + 1) * row,
        "accumulators": 2 * mb * c * cfg.acc_bits // 8,
        "requant_params": param_rows * c * (cfg.mult_bits + 6) // 8,
        "activation_luts": c * 2**cfg.act_bits,
        "routing_tables": small,
        "weight_banks_registers": 2 * r * c * cfg.weight_bits // 8,
    }


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy of each layer point in pJ, by where it is spent (arrays of the points' shape)."""

    mac_pj: np.ndarray
    sram_pj: np.ndarray
    dram_pj: np.ndarray

    @property
    def total_pj(self) -> np.ndarray:
        return self.mac_pj + self.sram_pj + self.dram_pj


def layer_energy(cfg: AccelConfig, est: CycleEstimate) -> EnergyEstimate:
    """Energy of the layer points of `est` (from `pymodel.cycles.layer_cycles` on `cfg`)."""
    store = storage_bytes(cfg)
    mac_cycles = est.mac_cycles.astype(np.float64)
    macs = mac_cycles * cfg.rows * cfg.cols
    act_reads = mac_cycles * cfg.rows * sram_pj_per_byte(store["tokens_x"])
    acc_rmw = mac_cycles * 2 * cfg.cols * 4 * sram_pj_per_byte(store["accumulators"])
    moved = (est.bytes_read + est.bytes_written).astype(np.float64)
    buffers = moved * sram_pj_per_byte(store["tokens_x"])
    return EnergyEstimate(
        mac_pj=macs * MAC_PJ,
        sram_pj=act_reads + acc_rmw + buffers,
        dram_pj=moved * DRAM_PJ_PER_BYTE,
    )
