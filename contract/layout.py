"""The memory layout of one MoE layer: the single definition the compiler and the RTL share.

Why one module: `sw_driver.compile` writes the memory image and `rtl.top`
reads it back; every stride, record size and field position is computed
here from the `AccelConfig` (and the layer's shapes), never re-derived, so
the two cannot drift. Nothing here imports Amaranth.

Units: `B = mem_bytes_per_cycle` (one bus beat), `R = rows`, `C = cols`.
The top requires R, C to be powers of two (B always is), so every unit
below divides the next.

Addresses. The bus carries `cfg.addr_bits`-bit byte addresses, but every
address the descriptor registers and the expert table hold is one 32-bit
*address word*: the byte address shifted right by `addr_shift(cfg)` =
`addr_bits − 32`, i.e. counted in granules of `addr_granule(cfg)` bytes
(1 byte in the default 32-bit build, where a word is the byte address;
256 bytes at 40 bits). So a word always names a byte below 2^addr_bits,
the register map and the table keep 32-bit words whatever the width, and
regions start on `region_align(cfg)` = max(`REGION_ALIGN`, granule) bytes.
`addr_word` encodes (refusing what a word cannot name), the top decodes
with `<< addr_shift(cfg)`.

Regions (each `region_align(cfg)`-aligned, their address words in the descriptor registers):

- tokens `X`: T rows of `row_bytes(d)` bytes (int8, zero-padded);
- router parameters: one `param_word` per router column (E, +1 with a
  Qwen2-MoE shared gate), zero-padded to a whole beat;
- correction bias: one signed 32-bit word per expert (sigmoid routing);
- router weights: the weight stream of the router GEMM (`weight_stream`,
  the engine's order defined by `pymodel.gemm_engine`: rows of C bytes,
  `weight_rows_per_beat` rows a beat, each K-tile padded to whole beats by
  `padded_k`);
- expert table: `n_experts + 1` descriptors of `desc_bytes(cfg)` bytes;
  entry E is the shared expert's (`EXPERT_DESCRIPTOR` gives the words; its
  `ADDRESS_FIELDS` are address words);
- per expert: its GEMM1 weight stream (W1, or W1/W3 interleaved per N-tile
  for SwiGLU), its GEMM2 stream (W2), its parameter words (W1 channels,
  then W3, then W2, each padded to a multiple of C) and its LUT
  (`2^act_bits` int8 at `LUT_TABLE_ADDR + e·lut_bytes`);
- scratch: routed expert outputs `Ye`, one `row_bytes(d)` row per sorted
  dispatch row (at most `max_sorted_rows`), then the shared outputs;
- routing out: one `ROUTING_RECORD` per (token, slot): expert id (u32)
  then gate weight (u32), zero-padded to a beat;
- output `Y`: T rows of `row_bytes(d)` bytes.
"""

from __future__ import annotations

import numpy as np

from pymodel.config import AccelConfig, ConfigError
from pymodel.gemm_engine import activation_lanes, padded_k, weight_stream, weight_stream_rows

from .timing import SHIFT_BITS

__all__ = [
    "ADDRESS_FIELDS",
    "ADDR_WORD_BITS",
    "DESC_FIELDS",
    "EXPERT_DESCRIPTOR",
    "PARAM_SHIFT_LSB",
    "REGION_ALIGN",
    "ROUTING_RECORD",
    "ROUTING_RECORD_BYTES",
    "addr_granule",
    "addr_shift",
    "addr_word",
    "align",
    "check_top_config",
    "desc_bytes",
    "lut_bytes",
    "max_sorted_rows",
    "n_tiles",
    "padded_k",
    "param_word",
    "param_words",
    "region_align",
    "row_bytes",
    "row_unit",
    "weight_stream",
    "weight_stream_rows",
]

REGION_ALIGN = 64
"""Every region starts on at least a 64-byte boundary (the widest bus beat); `region_align`."""

ADDR_WORD_BITS = 32
"""Width of an address word (descriptor address registers, expert-table address fields)."""

ROUTING_RECORD = np.dtype([("expert", "<u4"), ("weight", "<u4")])
"""One routing record as the top writes it: expert id then gate weight (little endian)."""

ROUTING_RECORD_BYTES = ROUTING_RECORD.itemsize
"""Bytes of one routing record (8)."""

PARAM_SHIFT_LSB = 24
"""A parameter word holds the multiplier in bits 0…23 and the shift in bits 24…29."""

EXPERT_DESCRIPTOR = np.dtype(
    [
        ("w1_addr", "<u4"),
        ("w1_rows", "<u4"),
        ("w2_addr", "<u4"),
        ("w2_rows", "<u4"),
        ("param_addr", "<u4"),
        ("param_count", "<u4"),
        ("gate_mult", "<u4"),
        ("gate_shift", "<u4"),
    ]
)
"""An expert descriptor: eight 32-bit words (then zero padding to `desc_bytes`)."""

DESC_FIELDS: tuple[str, ...] = EXPERT_DESCRIPTOR.names
"""The expert descriptor's words in order (the sequencer loads them into `dw[name]`)."""

ADDRESS_FIELDS: tuple[str, ...] = ("w1_addr", "w2_addr", "param_addr")
"""The expert descriptor's address words (decoded to byte addresses with `addr_shift`)."""


def addr_shift(cfg: AccelConfig) -> int:
    """Bits an address word is shifted left by to give the byte address: addr_bits − 32."""
    return cfg.addr_bits - ADDR_WORD_BITS


def addr_granule(cfg: AccelConfig) -> int:
    """Bytes one step of an address word spans (1 in the default 32-bit build)."""
    return 1 << addr_shift(cfg)


def region_align(cfg: AccelConfig) -> int:
    """Alignment of every region: a bus beat's `REGION_ALIGN`, or the granule when larger."""
    return max(REGION_ALIGN, addr_granule(cfg))


def addr_word(cfg: AccelConfig, addr: int, what: str) -> int:
    """The address word naming byte address `addr` of region `what`.

    Raises `ConfigError` naming `what` when `addr` lies beyond the
    `addr_bits` address space or is not a whole number of granules.
    """
    if addr >= 2**cfg.addr_bits:
        raise ConfigError(
            f"region {what!r} at {addr:#x} lies beyond the {cfg.addr_bits}-bit address space "
            f"(AccelConfig.addr_bits; it ends at {2**cfg.addr_bits:#x})"
        )
    if addr < 0 or addr % addr_granule(cfg):
        raise ConfigError(
            f"region {what!r} at {addr:#x} is not a multiple of the {addr_granule(cfg)}-byte "
            "address granule"
        )
    return addr >> addr_shift(cfg)


def check_top_config(cfg: AccelConfig) -> None:
    """Raise `ConfigError` for configs the top-level layout cannot serve."""
    for name in ("rows", "cols"):
        value = getattr(cfg, name)
        if value & (value - 1):
            raise ConfigError(f"MoEAccel needs AccelConfig.{name} a power of two, got {value}")
    if cfg.mult_bits > PARAM_SHIFT_LSB:
        raise ConfigError(
            f"MoEAccel packs multipliers into {PARAM_SHIFT_LSB} bits; "
            f"AccelConfig.mult_bits = {cfg.mult_bits}"
        )
    if cfg.gate_weight_bits > 32:
        raise ConfigError("routing records hold 32-bit gate weights")


def align(value: int, unit: int) -> int:
    """`value` rounded up to a multiple of `unit`."""
    return -(-value // unit) * unit


def n_tiles(n: int, width: int) -> int:
    """Tiles of `width` covering `n`."""
    return -(-n // width)


def row_unit(cfg: AccelConfig) -> int:
    """Bytes every token / expert-output row is padded to: max(B, R, C), and the 2R lanes
    of a 2:4 build's `act` beat (`activation_lanes`: one token-buffer word holds a slice)."""
    return max(cfg.mem_bytes_per_cycle, activation_lanes(cfg), cfg.cols)


def row_bytes(cfg: AccelConfig, d_model: int) -> int:
    """Stride of a token, expert-output or output row in memory."""
    return align(d_model, row_unit(cfg))


def desc_bytes(cfg: AccelConfig) -> int:
    """Stride of the expert descriptor table: 8 words, at least one beat."""
    return max(EXPERT_DESCRIPTOR.itemsize, cfg.mem_bytes_per_cycle)


def lut_bytes(cfg: AccelConfig) -> int:
    """One activation LUT: 2^act_bits int8 entries (always a whole number of beats)."""
    return max(2**cfg.act_bits, cfg.mem_bytes_per_cycle)


def max_sorted_rows(cfg: AccelConfig, tokens: int, top_k: int, n_experts: int) -> int:
    """Most dispatch rows a layer can produce: every pair, plus m_tile−1 pads per expert."""
    return tokens * top_k + n_experts * (cfg.m_tile - 1)


def param_word(mult: int, shift: int) -> int:
    """One channel's requantisation parameters as the top reads them."""
    if not 0 <= mult < 2**PARAM_SHIFT_LSB or not 0 <= shift < 2**SHIFT_BITS:
        raise ConfigError(f"requantisation parameters ({mult}, {shift}) do not fit a param word")
    return int(mult) | (int(shift) << PARAM_SHIFT_LSB)


def param_words(cfg: AccelConfig, sections: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Parameter words of consecutive sections (mult, shift per channel), each padded to C."""
    words: list[int] = []
    for mult, shift in sections:
        n = len(mult)
        words += [param_word(int(m), int(s)) for m, s in zip(mult, shift, strict=True)]
        words += [0] * (align(n, cfg.cols) - n)
    return np.asarray(words, dtype=np.uint32)
