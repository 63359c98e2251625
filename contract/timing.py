"""The units' documented timing and storage sizes, for the RTL and the analytical models.

Why here: `pymodel.cycles`, `pymodel.energy` and `pymodel.resources` predict
what the hardware does from these numbers, and the driver imports those
models, so they must be reachable without Amaranth. The RTL units take the
same numbers from here (their simulations check them), so a latency is
written once. Nothing here imports Amaranth.
"""

from __future__ import annotations

import math

from contract.regs import SharedExpert
from pymodel.config import AccelConfig, ConfigError

__all__ = [
    "ACC_STAGES",
    "BOUNDARY_BYTES",
    "COMBINE_LATENCY",
    "CREDIT_RETURN_STAGES",
    "DMA_MAX_OUTSTANDING",
    "GATED_STAGES",
    "LUT_STAGES",
    "MAX_BURST_BEATS",
    "MULTIPLIER_LATENCY",
    "OPERAND_STAGES",
    "PAIR_STAGES",
    "REQUANT_SPLIT_BITS",
    "SHIFT_BITS",
    "burst_beats",
    "default_m_block",
    "default_param_rows",
    "dispatch_cycles",
    "gate_cycles",
    "gemm_drain",
    "postproc_depth",
    "postproc_latency",
    "postproc_output_bits",
    "requantizer_latency",
    "shared_weight_cycles",
    "systolic_latency",
    "wide_bits",
]

SHIFT_BITS = 6
"""Width of every requantisation shift (parameter words, `OUTPUT_REQUANT.shift`): 0 … 63."""

BOUNDARY_BYTES = 4096
"""AXI forbids an INCR burst from crossing a 4 KiB boundary."""

MAX_BURST_BEATS = 16
"""Longest burst our masters issue: the AXI3-compatible limit most interconnects handle well."""

DMA_MAX_OUTSTANDING = 4
"""Read (and write) bursts `rtl.dma.DMA` keeps in flight by default."""

ACC_STAGES = 5
"""`rtl.gemm_engine.GemmEngine`: array input register, three accumulate stages and the
PostProc input register, between the array's sums and the post-processor."""

MULTIPLIER_LATENCY = 2
"""`rtl.multiplier.PipelinedMultiplier`: cycles from an operand pair to its product."""

OPERAND_STAGES = 1
"""`rtl.systolic.ProcessingElement` of a build with a compressed path (2:4 or int4): the
selected activation and weight are registered in the fabric before the DSP's operand
registers (one more cycle, for ECP5 timing: the selects and the route into the DSP
block no longer share a cycle)."""

PAIR_STAGES = 2
"""`rtl.systolic.ProcessingElement` of an int4 build: its two products are copied off the
DSP, then added, before the partial sum (one more cycle each, for ECP5 timing)."""

CREDIT_RETURN_STAGES = 2
"""`rtl.gemm_engine.GemmEngine`: registers a returning credit passes, from a row leaving
post-processing to the tile sequencer's count (the return crosses the chip; one register
at each end, for ECP5 timing). The credits grow by as many, so the issue rate is kept."""

COMBINE_LATENCY = 4
"""`rtl.combine.Combiner`: cycles from a chunk's last term being accepted to its output."""

REQUANT_SPLIT_BITS = 17
"""Low-part width of a split requantiser product: unsigned 17 bits fit an 18 × 18 multiplier."""

LUT_STAGES = 3
"""`rtl.postproc`: from a requantised value to its activated value (LUT read, LUT data
register, activated register)."""

GATED_STAGES = LUT_STAGES + MULTIPLIER_LATENCY
"""`rtl.postproc`: from a requantised value to its gated product (LUT stages, multiplier)."""


def burst_beats(cfg: AccelConfig) -> int:
    """Beats per DMA burst for `cfg`: 16, or fewer if 16 beats would exceed 4 KiB."""
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"burst_beats needs an AccelConfig, got {type(cfg).__name__}")
    return min(MAX_BURST_BEATS, BOUNDARY_BYTES // cfg.mem_bytes_per_cycle)


def default_m_block(cfg: AccelConfig) -> int:
    """Accumulator rows: one block per group up to 8·R rows, and never below R + C + 2.

    A tile hides the next tile's load once it has ⌈R/L⌉ + 1 rows or so (L
    weight rows a beat, see `rtl.tile_sequencer.TileSequencer`); 8·R rows keep
    that true with margin and amortise the per-block drain, and the R + C + 2
    floor only matters for arrays of one or two rows.
    """
    return min(max(8 * cfg.rows, cfg.rows + cfg.cols + 2), cfg.max_tokens)


def default_param_rows(cfg: AccelConfig) -> int:
    """Parameter rows for one SwiGLU expert resident at once: W1 + W3 + W2 channels."""
    per = math.ceil(cfg.max_d_ff / cfg.cols)
    return 2 * per + math.ceil(max(cfg.max_d_model, cfg.max_experts + 1) / cfg.cols)


def systolic_latency(cfg: AccelConfig) -> int:
    """`rtl.systolic.SystolicArray`: cycles from a row on `a_in` to its sums on `psum_out`."""
    pair = PAIR_STAGES if cfg.int4_weights else 0
    operand = OPERAND_STAGES if cfg.sparse_2_4 or cfg.int4_weights else 0
    return cfg.rows + cfg.cols + MULTIPLIER_LATENCY - 1 + operand + pair


def requantizer_latency(in_bits: int) -> int:
    """`rtl.postproc.Requantizer` of `in_bits`-wide values: 8 cycles when split, else 7."""
    return 8 if in_bits > REQUANT_SPLIT_BITS + 1 else 7


def postproc_depth(cfg: AccelConfig) -> int:
    """`rtl.postproc.PostProc`: registered stages from an accepted input beat to its FIFO write.

    Input register, parameter read data register and its copy beside the
    requantisers, the two requantisers, LUT read, LUT data register, activated
    value register (LUT data or the requantised value), the gated product's
    multiplier (operands, product), the gate requantiser, output register.
    """
    req = requantizer_latency(cfg.acc_bits)
    return 3 + req + GATED_STAGES + requantizer_latency(2 * cfg.act_bits) + 1


def postproc_latency(cfg: AccelConfig) -> int:
    """`rtl.postproc.PostProc`: cycles from an accepted input beat to its output beat.

    The pipeline, then the output FIFO: its write, the block RAM's read and the
    `out` register the read data lands in.
    """
    return postproc_depth(cfg) + 3


def gemm_drain(cfg: AccelConfig) -> int:
    """`rtl.gemm_engine.GemmEngine`: cycles from a command's last injected row to `done`.

    The array's skew, the accumulate stages, post-processing and the credit's
    way back to the sequencer, whose count completes the command.
    """
    return systolic_latency(cfg) + ACC_STAGES + postproc_latency(cfg) + CREDIT_RETURN_STAGES


def wide_bits(cfg: AccelConfig) -> int:
    """Width of the post-processor's `wide` lanes: WIDE mode's `logit_bits` (≥ act_bits)."""
    return max(cfg.act_bits, cfg.logit_bits)


def postproc_output_bits(cfg: AccelConfig) -> int:
    """Bits of one post-processor output row: C act lanes, C wide lanes and `last`."""
    return cfg.cols * (cfg.act_bits + wide_bits(cfg)) + 1


def dispatch_cycles(n_pairs: int, n_experts: int, last_expert: int, n_rows: int) -> int:
    """`rtl.dispatch.Dispatcher`: cycles `busy` is high for one run without gaps.

    Ingest and scatter take one cycle per pair each, the scan one per expert,
    the walk 2 cycles per expert up to the last non-empty one (`last_expert`)
    plus one per emitted row (`n_rows`, pads included), and pipeline fill and
    drain 4 more. `docs/units.md` tabulates it; the RTL tests check it against
    the simulation.
    """
    return 2 * n_pairs + n_experts + 2 * (last_expert + 1) + n_rows + 4


def shared_weight_cycles(cfg: AccelConfig, shared: SharedExpert) -> int:
    """`rtl.gate.Gate`: cycles a token's shared-expert weight takes (1 ungated, g + 6 gated)."""
    costs = {
        SharedExpert.NONE: 0,
        SharedExpert.UNGATED: 1,
        SharedExpert.GATED: cfg.gate_frac_bits + 6,
    }
    return costs[SharedExpert(shared)]


def gate_cycles(
    cfg: AccelConfig,
    *,
    n_tokens: int,
    n_experts: int,
    top_k: int,
    sigmoid: bool,
    renormalize: bool,
    grouped: bool,
    shared: SharedExpert,
) -> int:
    """`rtl.gate.Gate`: cycles `busy` is high for a run of `n_tokens`, logits arriving and
    outputs leaving without gaps.

    Per token: the logit beats (`n_experts`, +1 for a gated shared expert);
    softmax: one pass over the logits (`n_experts + 3`); sigmoid: the sigmoid
    pass (`n_experts + gate_frac_bits + 5`: one expert per cycle through ExpFx
    and the divider pipeline), the group pass (`n_experts + 3`, when grouped)
    and the selection pass (`n_experts + 2`); the renormalisation sum
    (`top_k + 2`); the weights (`top_k + gate_frac_bits + 3`: one per cycle
    through the divider); the shared weight (1 ungated, `gate_frac_bits + 6`
    gated) and 1 to close the token. `busy` rises a cycle after the first
    logit is accepted and falls with the last token's closing cycle, hence
    the 2 less.
    """
    g = cfg.gate_frac_bits
    shared = SharedExpert(shared)
    per = n_experts + (shared == SharedExpert.GATED)
    if sigmoid:
        per += (n_experts + g + 5) + (n_experts + 3) * grouped + (n_experts + 2)
    else:
        per += n_experts + 3
    if renormalize:
        per += top_k + 2
    per += top_k + g + 3
    per += shared_weight_cycles(cfg, shared)
    per += 1
    return n_tokens * per - 2
