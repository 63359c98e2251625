"""Formal harness of the register file: its bus behaviour checked against a register-level model.

The solver drives every AXI4-Lite master signal (any address, data, strobes
and handshake timing), every hardware-side input (RO values, W1C set
pulses) and the reset. The harness keeps what the access rules of
`contract/regs.py` say the registers must hold and asserts, every cycle:

- handshakes: AW and W each held at most once (`awready`/`wready` low while
  held), one read outstanding (`arready` low while a response waits), and a
  B or R response keeps `valid` and its payload until `ready`;
- writes: a response only for a held AW + W pair, given the cycle after both
  are held and the B channel is free, OKAY exactly for an address of a
  register with a writable field;
- RW fields: the model's value, changed only by such a write and only in
  the bytes its strobes select; W1P fields: the write's bits for one cycle,
  else 0; W1C fields: set by their pulse, cleared by a written 1, set wins;
- reads: the register's value at the cycle the address was accepted (CONST
  fields their constant, W1P 0, unused bits 0), OKAY exactly for a mapped
  word, and a 64-bit register's high word as latched by its low-word read.

The map is a parameter: `make test` proves a small map with one register of
every access kind, a mixed register, a 64-bit counter and unmapped holes;
`make formal` proves the accelerator's own `REGISTER_MAP` too.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.hdl import Assert, Elaboratable

from contract.regs import Access, Block, Field, Reg, RegisterMap
from pymodel.config import AccelConfig
from rtl.axi import Resp
from rtl.csr import CSR

SMALL_CSR_CONFIG = AccelConfig(rows=2, cols=2, m_tile=2)

SMALL_MAP = RegisterMap(
    (
        Block(
            "mixed",
            0x00,
            0x20,
            (
                Reg(
                    "CTL",
                    fields=(
                        Field("go", 1, Access.W1P),
                        Field("mode", 3, Access.RW, reset=5),
                        Field("kick", 2, Access.W1P),
                    ),
                ),
                Reg(
                    "STAT",
                    fields=(
                        Field("busy", 1, Access.RO),
                        Field("done", 1, Access.W1C),
                        Field("err", 2, Access.W1C, reset=1),
                    ),
                ),
                Reg("VALUE", Access.RW, reset=0x1234_5678),
                Reg("IDENT", Access.CONST, const=lambda c: c.rows * 16 + c.cols, width=32),
                Reg("CYCLES", Access.RO, width=64),
            ),
        ),
        Block("far", 0x40, 0x08, (Reg("SCRATCH", Access.RW),)),
    )
)
"""Every access kind, a register mixing three, a 64-bit RO pair and holes at 0x1C–0x3C."""


class CSRHarness(Elaboratable):
    """`dut` (a `CSR`) with free bus and hardware inputs and the checks of the module docstring."""

    def __init__(self, dut: CSR) -> None:
        self.dut = dut
        bus = dut.s_axil
        self.master = {
            name: Signal.like(getattr(bus, name), name=f"m_{name}")
            for name in (
                "awaddr",
                "awvalid",
                "wdata",
                "wstrb",
                "wvalid",
                "bready",
                "araddr",
                "arvalid",
                "rready",
            )
        }
        self.hw_inputs: dict[tuple[str, str], Signal] = {}
        for placed in dut.regmap.registers_in(dut.cfg):
            for f in placed.register.fields_in(dut.cfg):
                names = {Access.RO: [f.name], Access.W1C: [f"{f.name}_set"]}.get(f.access, [])
                for name in names:
                    self.hw_inputs[(placed.name, name)] = Signal(
                        f.width, name=f"hw_{placed.name.lower()}_{name}"
                    )

    @property
    def ports(self) -> list[Signal]:
        return [*self.master.values(), *self.hw_inputs.values()]

    def _port(self, reg: str, member: str) -> Signal:
        return getattr(getattr(self.dut.regs, reg.lower()), member)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.dut = dut = self.dut
        bus, mst = dut.s_axil, self.master
        m.d.comb += [getattr(bus, name).eq(sig) for name, sig in mst.items()]
        for (reg, name), sig in self.hw_inputs.items():
            m.d.comb += self._port(reg, name).eq(sig)
        okay, slverr = Const(Resp.OKAY, 2), Const(Resp.SLVERR, 2)

        # ---- write channel model: one held AW, one held W, the write when B is free ----
        aw_held, w_held = Signal(), Signal()
        aw_addr = Signal.like(bus.awaddr)
        w_data, w_strb = Signal.like(bus.wdata), Signal.like(bus.wstrb)
        aw_take = mst["awvalid"] & bus.awready
        w_take = mst["wvalid"] & bus.wready
        writes = Signal()
        m.d.comb += [
            writes.eq(aw_held & w_held & (~bus.bvalid | mst["bready"])),
            Assert(bus.awready == ~aw_held, "awready while an AW is held"),
            Assert(bus.wready == ~w_held, "wready while a W is held"),
        ]
        with m.If(aw_take):
            m.d.sync += [aw_held.eq(1), aw_addr.eq(mst["awaddr"])]
        with m.If(w_take):
            m.d.sync += [w_held.eq(1), w_data.eq(mst["wdata"]), w_strb.eq(mst["wstrb"])]
        with m.If(writes):
            m.d.sync += [aw_held.eq(0), w_held.eq(0)]

        b_pending = Signal()  # a B response was given and not yet taken
        expect_bresp = Signal(2)
        m.d.sync += b_pending.eq((b_pending & ~mst["bready"]) | writes)
        m.d.comb += [
            Assert(bus.bvalid == b_pending, "B valid without a write, or dropped before ready"),
        ]
        with m.If(bus.bvalid):
            m.d.comb += Assert(bus.bresp == expect_bresp, "wrong or changing bresp")

        mask = Cat(s.replicate(8) for s in w_strb)
        word = aw_addr[2:]
        writable = Signal()
        cases = {p.offset // 4: p for p in dut.regmap.registers_in(dut.cfg) if p.register.writable}
        m.d.comb += writable.eq(0)
        with m.Switch(word):
            for index in cases:
                with m.Case(index):
                    m.d.comb += writable.eq(1)
        with m.If(writes):
            m.d.sync += expect_bresp.eq(Mux(writable, okay, slverr))

        # ---- field models ----
        for placed in dut.regmap.registers_in(dut.cfg):
            reg = placed.register
            hit = writes & (word == placed.offset // 4) & reg.writable
            for f in reg.fields_in(dut.cfg):
                bits = slice(reg.lsbs[f.name], reg.lsbs[f.name] + f.width)
                key = f"{placed.name.lower()}_{f.name}"
                if f.access is Access.RW:
                    model = Signal(f.width, init=f.reset, name=f"model_{key}")
                    with m.If(hit):
                        m.d.sync += model.eq((model & ~mask[bits]) | (w_data & mask)[bits])
                elif f.access is Access.W1P:
                    model = Signal(f.width, name=f"model_{key}")
                    m.d.sync += model.eq(Mux(hit, (w_data & mask)[bits], 0))
                elif f.access is Access.W1C:
                    model = Signal(f.width, init=f.reset, name=f"model_{key}")
                    set_ = self.hw_inputs[(placed.name, f"{f.name}_set")]
                    clear = Mux(hit, (w_data & mask)[bits], 0)
                    m.d.sync += model.eq((model & ~clear) | set_)
                else:
                    continue
                m.d.comb += Assert(self._port(placed.name, f.name) == model, f"{key} != model")

        # ---- read channel model ----
        ar_take = mst["arvalid"] & bus.arready
        r_pending = Signal()
        expect_rdata = Signal.like(bus.rdata)
        expect_rresp = Signal(2)
        latched = {  # a 64-bit register's high word, as its last low-word read left it
            p.name: Signal(32, name=f"latched_{p.name.lower()}")
            for p in dut.regmap.registers_in(dut.cfg)
            if p.words == 2
        }
        m.d.comb += Assert(bus.arready == ~bus.rvalid, "a read accepted while one waits")
        m.d.sync += r_pending.eq((r_pending & ~mst["rready"]) | ar_take)
        m.d.comb += Assert(bus.rvalid == r_pending, "R valid without a read, or dropped")
        with m.If(bus.rvalid):
            m.d.comb += [
                Assert(bus.rdata == expect_rdata, "wrong or changing rdata"),
                Assert(bus.rresp == expect_rresp, "wrong or changing rresp"),
            ]
        with m.If(ar_take):
            m.d.sync += [expect_rdata.eq(0), expect_rresp.eq(slverr)]
            with m.Switch(mst["araddr"][2:]):
                for placed in dut.regmap.registers_in(dut.cfg):
                    value = self._read_value(placed)
                    with m.Case(placed.offset // 4):
                        m.d.sync += [expect_rdata.eq(value[:32]), expect_rresp.eq(okay)]
                        if placed.words == 2:
                            m.d.sync += latched[placed.name].eq(value[32:])
                    if placed.words == 2:
                        with m.Case(placed.offset // 4 + 1):
                            m.d.sync += [
                                expect_rdata.eq(latched[placed.name]),
                                expect_rresp.eq(okay),
                            ]
        return m

    def _read_value(self, placed: object) -> Cat:
        """What a read of `placed` returns now, from the table's access rules."""
        reg = placed.register
        parts = []
        for f in reg.fields:
            if not f.present(self.dut.cfg):  # a field this build lacks reads 0
                parts.append(Const(0, f.width))
            elif f.access is Access.CONST:
                parts.append(Const(f.const(self.dut.cfg), f.width))
            elif f.access is Access.W1P:
                parts.append(Const(0, f.width))
            elif f.access is Access.RO:
                parts.append(self.hw_inputs[(placed.name, f.name)])
            else:
                parts.append(self._port(placed.name, f.name))
        return Cat(*parts, Const(0, reg.width - sum(f.width for f in reg.fields)))


def csr_harness(regmap: RegisterMap = SMALL_MAP, cfg: AccelConfig = SMALL_CSR_CONFIG) -> CSRHarness:
    return CSRHarness(CSR(cfg, regmap))
