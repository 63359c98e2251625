"""AMBA AXI4-Lite and AXI4 `lib.wiring` signatures, seen from the master.

Why here: the register file (`rtl/csr.py`) is an AXI4-Lite *slave* and the
DMA (`rtl/dma.py`) an AXI4 *master*; both, the top level and the test
benches must agree on one set of signal names. A component declares

    s_axil: In(AXILiteSignature())          # slave: the signature flipped
    m_axi:  Out(AXI4Signature(cfg))         # master

and Amaranth names the ports `s_axil__awaddr`, `m_axi__arlen`, … which is
what `cocotbext-axi`'s `AxiLiteBus/AxiBus.from_prefix(dut, prefix,
bus_separator="__")` and the C++ harness (`sim/harness/harness.cpp`, where
Verilator turns `__` into `___05F`) expect. The AXI4 signature carries the id
signals because `cocotbext-axi`'s `AxiBus` requires them; our masters drive a
constant id and issue in order.

Widths: AXI4 addresses are `cfg.addr_bits` bits (32 by default; wider
builds reach whole full-size layers) and AXI4 data `cfg.mem_bytes_per_cycle`
bytes; the AXI4-Lite register bus has `LITE_ADDR_WIDTH` = 32-bit addresses
and 32-bit data.
"""

from __future__ import annotations

import enum

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from contract.timing import BOUNDARY_BYTES, MAX_BURST_BEATS, burst_beats
from pymodel.config import AccelConfig, ConfigError

__all__ = [
    "BOUNDARY_BYTES",
    "LITE_ADDR_WIDTH",
    "LITE_DATA_WIDTH",
    "MAX_BURST_BEATS",
    "AXI4Signature",
    "AXILiteSignature",
    "Burst",
    "Resp",
    "burst_beats",
]

LITE_ADDR_WIDTH = 32
"""AXI4-Lite byte address width (the register map spans far less)."""

LITE_DATA_WIDTH = 32
"""AXI4-Lite data width: one register word."""


class Resp(enum.IntEnum):
    """`xRESP` codes."""

    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


class Burst(enum.IntEnum):
    """`AxBURST` codes."""

    FIXED = 0
    INCR = 1
    WRAP = 2


class AXILiteSignature(wiring.Signature):
    """AXI4-Lite, master's view: 32-bit address, 32-bit data, with strobes and prot."""

    def __init__(
        self, addr_width: int = LITE_ADDR_WIDTH, data_width: int = LITE_DATA_WIDTH
    ) -> None:
        if data_width not in (32, 64):
            raise ConfigError(f"AXI4-Lite data_width = {data_width} must be 32 or 64")
        if not 12 <= addr_width <= 64:
            raise ConfigError(f"AXI4-Lite addr_width = {addr_width} is out of range [12, 64]")
        self.addr_width = addr_width
        self.data_width = data_width
        super().__init__(
            {
                "awaddr": Out(addr_width),
                "awprot": Out(3),
                "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(data_width),
                "wstrb": Out(data_width // 8),
                "wvalid": Out(1),
                "wready": In(1),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
                "araddr": Out(addr_width),
                "arprot": Out(3),
                "arvalid": Out(1),
                "arready": In(1),
                "rdata": In(data_width),
                "rresp": In(2),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AXILiteSignature)
            and other.addr_width == self.addr_width
            and other.data_width == self.data_width
        )

    def __hash__(self) -> int:
        return hash((AXILiteSignature, self.addr_width, self.data_width))

    def __repr__(self) -> str:
        return f"AXILiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"


class AXI4Signature(wiring.Signature):
    """AXI4 (full), master's view, with id, burst, cache/prot/qos and last signals.

    The data is `cfg.mem_bytes_per_cycle` bytes, the accelerator's memory
    bandwidth per cycle; `addr_width` defaults to `cfg.addr_bits`.
    """

    def __init__(
        self, cfg: AccelConfig, *, addr_width: int | None = None, id_width: int = 4
    ) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"AXI4Signature needs an AccelConfig, got {type(cfg).__name__}")
        if not 1 <= id_width <= 16:
            raise ConfigError(f"AXI4 id_width = {id_width} is out of range [1, 16]")
        if addr_width is None:
            addr_width = cfg.addr_bits
        if not 12 <= addr_width <= 64:
            raise ConfigError(f"AXI4 addr_width = {addr_width} is out of range [12, 64]")
        self.data_bytes = cfg.mem_bytes_per_cycle
        self.addr_width = addr_width
        self.id_width = id_width
        data_width = 8 * self.data_bytes
        members: dict[str, wiring.Member] = {}
        for ch in ("aw", "ar"):
            members.update(
                {
                    f"{ch}id": Out(id_width),
                    f"{ch}addr": Out(addr_width),
                    f"{ch}len": Out(8),
                    f"{ch}size": Out(3),
                    f"{ch}burst": Out(2),
                    f"{ch}lock": Out(1),
                    f"{ch}cache": Out(4),
                    f"{ch}prot": Out(3),
                    f"{ch}qos": Out(4),
                    f"{ch}valid": Out(1),
                    f"{ch}ready": In(1),
                }
            )
        members.update(
            {
                "wdata": Out(data_width),
                "wstrb": Out(self.data_bytes),
                "wlast": Out(1),
                "wvalid": Out(1),
                "wready": In(1),
                "bid": In(id_width),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
                "rid": In(id_width),
                "rdata": In(data_width),
                "rresp": In(2),
                "rlast": In(1),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )
        super().__init__(members)

    @property
    def size_code(self) -> int:
        """`AxSIZE` of a full-width beat: log2(bytes per beat)."""
        return exact_log2(self.data_bytes)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AXI4Signature)
            and other.data_bytes == self.data_bytes
            and other.addr_width == self.addr_width
            and other.id_width == self.id_width
        )

    def __hash__(self) -> int:
        return hash((AXI4Signature, self.data_bytes, self.addr_width, self.id_width))

    def __repr__(self) -> str:
        return (
            f"AXI4Signature(data_bytes={self.data_bytes}, addr_width={self.addr_width}, "
            f"id_width={self.id_width})"
        )
