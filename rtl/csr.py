"""AXI4-Lite slave register file generated from a `contract.regs.RegisterMap`.

Why generated: the same table gives the driver its offsets, so hardware and
software can never disagree (see `contract/regs.py` for the access kinds).

Ports: `s_axil` (the bus) and `regs`, one sub-interface per register that
has ports, named after the register in lower case, one member per field:

- RO field `f`: input `regs.<reg>.f`;
- RW field `f`: output `regs.<reg>.f` (reset value from the table);
- W1C field `f`: output `regs.<reg>.f` and input pulse `regs.<reg>.f_set`;
- W1P field `f`: output `regs.<reg>.f`, high for one cycle after the write.

Bus behaviour: AW and W are accepted independently (each has a one-entry
holding register); the write happens once both are held and the B channel
is free, with OKAY, or SLVERR for an unmapped address or a register without
writable fields (nothing changes then). A read is accepted when no read
response is pending and answered in the next cycle with OKAY, or SLVERR
(data 0) for an unmapped address, which includes the registers of a block
the build lacks (`contract.regs.Block.built`). Addresses decode all 32 bits (bits 1:0
ignored); there are no aliases. Write strobes select bytes of RW fields and
of the bits a W1C/W1P write acts on. One write per two cycles and one read
per two cycles: plenty for control traffic.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from contract.regs import REGISTER_MAP, Access, PlacedRegister, RegisterMap
from pymodel.config import AccelConfig, ConfigError

from .axi import LITE_DATA_WIDTH, AXILiteSignature, Resp

__all__ = ["CSR"]


def _port_members(regmap: RegisterMap, cfg: AccelConfig) -> dict[str, wiring.Member]:
    members: dict[str, wiring.Member] = {}
    for placed in regmap.registers_in(cfg):
        reg = placed.register
        fields: dict[str, wiring.Member] = {}
        for f in reg.fields_in(cfg):
            if f.access is Access.RO:
                fields[f.name] = In(f.width)
            elif f.access is Access.RW:
                fields[f.name] = Out(f.width, init=f.reset)
            elif f.access is Access.W1C:
                if f"{f.name}_set" in reg.field_names:
                    raise ConfigError(f"{reg.name}: field {f.name}_set clashes with W1C {f.name}")
                fields[f.name] = Out(f.width, init=f.reset)
                fields[f"{f.name}_set"] = In(f.width)
            elif f.access is Access.W1P:
                fields[f.name] = Out(f.width)
        if fields:
            members[reg.name.lower()] = Out(wiring.Signature(fields))
    return members


class CSR(wiring.Component):
    """The register file of `regmap` for hardware `cfg` (CONST fields come from `cfg`)."""

    def __init__(self, cfg: AccelConfig, regmap: RegisterMap = REGISTER_MAP) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"CSR needs an AccelConfig, got {type(cfg).__name__}")
        if not isinstance(regmap, RegisterMap):
            raise ConfigError(f"CSR needs a RegisterMap, got {type(regmap).__name__}")
        try:
            regmap.constants(cfg)
        except ValueError as exc:
            raise ConfigError(
                f"an identification register cannot hold this config: {exc}"
            ) from None
        self.cfg = cfg
        self.regmap = regmap
        super().__init__(
            {
                "s_axil": In(AXILiteSignature()),
                "regs": Out(wiring.Signature(_port_members(regmap, cfg))),
            }
        )

    def _port(self, reg_name: str, member: str) -> Signal:
        return getattr(getattr(self.regs, reg_name.lower()), member)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus = self.s_axil
        okay, slverr = Const(Resp.OKAY, 2), Const(Resp.SLVERR, 2)

        # Hardware side: W1C set/clear and W1P pulses, driven by the write decoder below.
        clears: dict[tuple[str, str], Signal] = {}
        pulses: dict[tuple[str, str], Signal] = {}
        for placed in self.regmap.registers_in(self.cfg):
            for f in placed.register.fields_in(self.cfg):
                key = (placed.name, f.name)
                if f.access is Access.W1C:
                    clears[key] = Signal(f.width, name=f"{placed.name.lower()}_{f.name}_clr")
                    value = self._port(placed.name, f.name)
                    set_ = self._port(placed.name, f"{f.name}_set")
                    m.d.sync += value.eq((value & ~clears[key]) | set_)
                elif f.access is Access.W1P:
                    pulses[key] = Signal(f.width, name=f"{placed.name.lower()}_{f.name}_pulse")
                    m.d.sync += self._port(placed.name, f.name).eq(pulses[key])

        # Write path: independent AW / W holding registers, then one decode.
        aw_full = Signal()
        aw_addr = Signal.like(bus.awaddr)
        w_full = Signal()
        # The W beat is held as its byte strobes expanded to a bit mask and its data
        # already masked: computed once per beat, not every cycle in a software model.
        bitmask = Signal.like(bus.wdata)
        masked = Signal.like(bus.wdata)
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full)]
        with m.If(bus.awvalid & ~aw_full):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr)]
        with m.If(bus.wvalid & ~w_full):
            strobes = Cat(s.replicate(8) for s in bus.wstrb)
            m.d.sync += [w_full.eq(1), bitmask.eq(strobes), masked.eq(bus.wdata & strobes)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        do_write = aw_full & w_full & (~bus.bvalid | bus.bready)
        with m.If(do_write):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1), bus.bresp.eq(slverr)]
            with m.Switch(aw_addr[2:]):
                for placed in self.regmap.registers_in(self.cfg):
                    reg = placed.register
                    if not reg.writable:
                        continue
                    lsbs = reg.lsbs
                    with m.Case(placed.offset // 4):
                        m.d.sync += bus.bresp.eq(okay)
                        for f in reg.fields_in(self.cfg):
                            bits = slice(lsbs[f.name], lsbs[f.name] + f.width)
                            key = (placed.name, f.name)
                            if f.access is Access.RW:
                                port = self._port(placed.name, f.name)
                                m.d.sync += port.eq((port & ~bitmask[bits]) | masked[bits])
                            elif f.access is Access.W1C:
                                m.d.comb += clears[key].eq(masked[bits])
                            elif f.access is Access.W1P:
                                m.d.comb += pulses[key].eq(masked[bits])

        # Read path: one pending response; 64-bit registers latch their high word.
        m.d.comb += bus.arready.eq(~bus.rvalid)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & ~bus.rvalid):
            m.d.sync += [bus.rvalid.eq(1), bus.rresp.eq(slverr), bus.rdata.eq(0)]
            with m.Switch(bus.araddr[2:]):
                for placed in self.regmap.registers_in(self.cfg):
                    word = self._read_value(placed)
                    if placed.words == 1:
                        with m.Case(placed.offset // 4):
                            m.d.sync += [bus.rresp.eq(okay), bus.rdata.eq(word)]
                        continue
                    high = Signal(LITE_DATA_WIDTH, name=f"{placed.name.lower()}_hi")
                    with m.Case(placed.offset // 4):
                        m.d.sync += [
                            bus.rresp.eq(okay),
                            bus.rdata.eq(word[:32]),
                            high.eq(word[32:]),
                        ]
                    with m.Case(placed.offset // 4 + 1):
                        m.d.sync += [bus.rresp.eq(okay), bus.rdata.eq(high)]
        return m

    def _read_value(self, placed: PlacedRegister) -> Cat:
        """The register's full-width read value (W1P fields read 0; unused bits and fields
        this build lacks read 0, as one run of zeros with the bits after them)."""
        reg = placed.register
        parts = []
        gap = 0  # bits of absent fields not yet placed
        for f in reg.fields:
            if not f.present(self.cfg):
                gap += f.width
                continue
            if gap:
                parts.append(Const(0, gap))
                gap = 0
            if f.access is Access.CONST:
                parts.append(Const(f.const(self.cfg), f.width))
            elif f.access is Access.W1P:
                parts.append(Const(0, f.width))
            else:
                parts.append(self._port(placed.name, f.name))
        used = sum(f.width for f in reg.fields)
        if gap + reg.width - used:
            parts.append(Const(0, gap + reg.width - used))
        return Cat(*parts)
