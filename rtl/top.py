"""`MoEAccel`: the whole accelerator — registers, DMA and the layer sequencer.

Ports: `s_axil` (AXI4-Lite slave: the register map `contract.regs.REGISTER_MAP`),
`m_axi` (AXI4 master to the memory holding the layer image of
`sw_driver.compile`), `irq` (high while `STATUS.done` or `STATUS.error` is
set), and the `sync` domain.

Control (one FSM here; the layer itself runs in `rtl.layer_sequencer`):

- `CTRL.start` while idle validates the descriptor registers in hardware
  against every rule of `contract.descriptor.RULES` (the check is generated
  from those predicates, the ones the driver runs before it starts a
  layer). A bad descriptor ends the job at once with
  `ERROR_CAUSE.BAD_DESCRIPTOR` and `ERROR_DETAIL` naming the first failing
  rule (`rule_code`); the gate never sees settings it could hang on.
- `CTRL.start` while busy sets `START_WHILE_BUSY`; the running layer goes on.
- A bus error (DMA), an engine rejecting a command, or the watchdog
  (`WATCHDOG_CYCLES`, 0 = off) aborts: the DMA drains its bursts (no AXI
  transaction is left half done), the sequencer is reset, `STATUS.error`
  is set with the cause (and `ERROR_ADDR`/`ERROR_ADDR_HI` for bus errors), and the
  accelerator is idle and ready for the next start.
- `CTRL.soft_reset` aborts the same way without an error: idle, ready.
  A reset (this one or the `rst` port) leaves no state of the interrupted
  layer behind: units whose memories carry state between runs clear them
  after reset (the dispatcher's histogram).

Counters (`COUNTER_BLOCK`) are cleared by each accepted start.

Copies (`COPY_BLOCK`, builds with `AccelConfig.copy_engine` only): the copy
engine (`rtl.copy_engine`) runs descriptors pushed through `COPY_CTRL.push`
beside (and independently of) the layers, on its own AXI4 id;
`rtl.axi_arbiter` shares `m_axi` between the layer's DMA (id 0) and the
copies (id 1) round robin per burst. With no copy queued the arbiter passes
the layer's bus through without a cycle's delay. A build without the switch
has neither unit: the DMA is `m_axi` itself, and the copy block's addresses
are unmapped.

Addresses: the descriptor's address registers hold address words
(`contract.layout.addr_word`); the top shifts each left by
`layout.addr_shift(cfg)` into a `cfg.addr_bits`-bit byte address for the
sequencer, which (like the DMA and the AXI4 master) computes in bytes.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal
from amaranth.hdl import ResetInserter
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from contract import layout
from contract.descriptor import DESCRIPTOR_FIELDS, INPUTS, RULES, DescriptorValues, rule_code
from contract.regs import COUNTER_SOURCES, REGISTER_MAP, ErrorCause
from pymodel.config import AccelConfig, ConfigError

from .axi import AXI4Signature, AXILiteSignature
from .axi_arbiter import AXI4Arbiter
from .copy_engine import CopyEngine
from .csr import CSR
from .dma import DMA
from .layer_sequencer import LayerSequencer

__all__ = ["COPY_AXI_ID", "LAYER_AXI_ID", "MoEAccel"]

LAYER_AXI_ID = 0
"""AXI4 id of the layer's DMA."""

COPY_AXI_ID = 1
"""AXI4 id of the copy engine: its R and B responses are routed back by it."""


def _register_field(regs, source: str):
    """The CSR output for "REG" (its `value`) or "REG.field"; 0 for a field the build lacks
    (`contract.regs.Field.built`)."""
    reg, _, name = source.partition(".")
    ports = getattr(regs, reg.lower())
    if not hasattr(ports, name or "value"):
        return Const(0, REGISTER_MAP[reg].register.field(name).width)
    return getattr(ports, name or "value")


class MoEAccel(wiring.Component):
    """The MoE layer accelerator generated for `cfg` (see the module docstring)."""

    def __init__(self, cfg: AccelConfig) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"MoEAccel needs an AccelConfig, got {type(cfg).__name__}")
        layout.check_top_config(cfg)
        self.cfg = cfg
        super().__init__(
            {
                "s_axil": In(AXILiteSignature()),
                "m_axi": Out(AXI4Signature(cfg)),
                "irq": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        m.submodules.csr = csr = CSR(cfg, REGISTER_MAP)
        m.submodules.dma = dma = DMA(cfg, axi_id=LAYER_AXI_ID)
        if cfg.copy_engine:
            m.submodules.copier = copier = CopyEngine(cfg, axi_id=COPY_AXI_ID)
            m.submodules.arbiter = arbiter = AXI4Arbiter(cfg, ids=(LAYER_AXI_ID, COPY_AXI_ID))
        core_rst = Signal()
        core = LayerSequencer(cfg)
        m.submodules.core = ResetInserter({"sync": core_rst})(core)
        wiring.connect(m, wiring.flipped(self.s_axil), csr.s_axil)
        if cfg.copy_engine:
            wiring.connect(m, dma.m_axi, arbiter.m0)
            wiring.connect(m, copier.m_axi, arbiter.m1)
            wiring.connect(m, arbiter.bus, wiring.flipped(self.m_axi))
        else:
            wiring.connect(m, dma.m_axi, wiring.flipped(self.m_axi))
        wiring.connect(m, core.rd_cmd, dma.rd_cmd)
        wiring.connect(m, dma.rd_data, core.rd_data)
        wiring.connect(m, core.wr_cmd, dma.wr_cmd)
        wiring.connect(m, core.wr_data, dma.wr_data)
        regs = csr.regs
        m.d.comb += [core.rd_done.eq(dma.rd_done), core.wr_done.eq(dma.wr_done)]

        # ---------------- descriptor ----------------
        d = core.desc
        for f in DESCRIPTOR_FIELDS:
            if f.source is not None and f.width(cfg):
                value = _register_field(regs, f.source)
                if f.address:
                    value = value << layout.addr_shift(cfg)
                m.d.comb += getattr(d, f.name).eq(value)
        m.d.comb += [
            core.expert_index.eq(regs.expert_index.value),
            regs.expert_tokens.value.eq(core.expert_tokens),
        ]

        # Group size = E / n_group by repeated subtraction (E <= max_experts steps).
        e, ng = regs.n_experts.value, regs.routing_mode.n_group
        group_size = Signal.like(d.group_size)
        group_rem = Signal(16)
        m.d.comb += d.group_size.eq(group_size)

        # The descriptor rules, generated from contract.descriptor; `detail` is the first failure.
        values = DescriptorValues(
            {key: _register_field(regs, f"{r}.{f}") for key, (r, f) in INPUTS.items()},
            group_size=group_size,
            group_rem=group_rem,
        )
        rules = [rule for rule in RULES if rule.applies(cfg)]
        failing = [Signal(name=f"rule_{rule.name}") for rule in rules]
        m.d.comb += [
            sig.eq(rule.fails(values, cfg)) for sig, rule in zip(failing, rules, strict=True)
        ]
        bad = Signal()
        m.d.comb += bad.eq(Cat(*failing).any())
        first_rule = Signal(8)
        for sig, rule in reversed(list(zip(failing, rules, strict=True))):
            with m.If(sig):
                m.d.comb += first_rule.eq(rule_code(rule))

        # ---------------- control ----------------
        busy = Signal()
        cause = Signal(8)
        detail = Signal(8)
        err_addr = Signal(cfg.addr_bits)
        watchdog = Signal(32)
        fault = Signal(8)  # why the running layer is being aborted (NONE: soft reset)
        fault_addr = Signal(cfg.addr_bits)
        m.d.comb += [
            regs.status.busy.eq(busy),
            regs.error_cause.value.eq(cause),
            regs.error_addr.value.eq(err_addr[:32]),
            regs.error_addr_hi.value.eq(err_addr[32:]),
            regs.error_detail.value.eq(detail),
            self.irq.eq(regs.status.done | regs.status.error),
        ]
        units = {
            "phase": core.phase_counters,
            "engine": core.engine_counters,
            "dma": dma,
            "core": core,
        }
        for reg, (unit, counter) in COUNTER_SOURCES.items():
            m.d.comb += getattr(regs, reg.lower()).value.eq(getattr(units[unit], counter))

        if cfg.copy_engine:
            self._copy_registers(m, regs, copier, arbiter)

        def raise_error(code, addr=0, why=0):
            m.d.comb += regs.status.error_set.eq(1)
            with m.If(~regs.status.error):
                m.d.sync += [cause.eq(code), err_addr.eq(addr), detail.eq(why)]

        with m.If(~regs.status.error & ~regs.status.error_set):
            m.d.sync += [cause.eq(ErrorCause.NONE), err_addr.eq(0), detail.eq(0)]

        with m.If(regs.ctrl.start & busy):
            raise_error(ErrorCause.START_WHILE_BUSY)

        with m.FSM(name="control"):
            with m.State("IDLE"):
                m.d.comb += core_rst.eq(regs.ctrl.soft_reset)
                with m.If(regs.ctrl.start):
                    m.d.sync += [busy.eq(1), group_size.eq(0), group_rem.eq(e), watchdog.eq(0)]
                    m.d.comb += [core.counters_clear.eq(1), dma.clear_counters.eq(1)]
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                with m.If(regs.ctrl.soft_reset):
                    # The layer has not started: back to idle, nothing to drain.
                    m.d.comb += core_rst.eq(1)
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
                with m.Elif((ng != 0) & (group_rem >= ng)):
                    m.d.sync += [group_rem.eq(group_rem - ng), group_size.eq(group_size + 1)]
                with m.Elif(bad):
                    raise_error(ErrorCause.BAD_DESCRIPTOR, why=first_rule)
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += core.start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.sync += watchdog.eq(watchdog + 1)
                expired = (regs.watchdog_cycles.value != 0) & (
                    watchdog >= regs.watchdog_cycles.value
                )
                with m.If(regs.ctrl.soft_reset):
                    m.d.sync += fault.eq(ErrorCause.NONE)
                    m.next = "ABORT"
                with m.Elif(dma.error):
                    m.d.sync += [fault.eq(dma.error_cause), fault_addr.eq(dma.error_addr)]
                    m.next = "ABORT"
                with m.Elif(core.error):
                    m.d.sync += [fault.eq(ErrorCause.COMMAND_REJECTED), fault_addr.eq(0)]
                    m.next = "ABORT"
                with m.Elif(expired):
                    m.d.sync += [fault.eq(ErrorCause.WATCHDOG_TIMEOUT), fault_addr.eq(0)]
                    m.next = "ABORT"
                with m.Elif(core.done):
                    m.d.comb += regs.status.done_set.eq(1)
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
            with m.State("ABORT"):
                # The sequencer is held in reset; the DMA drains every burst it started.
                m.d.comb += [core_rst.eq(1), dma.cancel.eq(1)]
                with m.If(dma.error & ~dma.busy):
                    m.d.comb += dma.clear.eq(1)
                    m.next = "CLEAR"
            with m.State("CLEAR"):
                # The error is reported once the accelerator is idle again (soft reset: none).
                m.d.comb += core_rst.eq(1)
                with m.If(~dma.error):
                    with m.If(fault != ErrorCause.NONE):
                        raise_error(fault, fault_addr)
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
        return m

    @staticmethod
    def _copy_registers(m: Module, regs, copier: CopyEngine, arbiter: AXI4Arbiter) -> None:
        """The copy block's registers onto the copy engine and the arbiter (`COPY_BLOCK`)."""
        shift = layout.addr_shift(copier.cfg)
        clear_copy = regs.copy_ctrl.clear_counters
        m.d.comb += [
            copier.cmd.valid.eq(regs.copy_ctrl.push),
            copier.cmd.payload.src.eq(regs.copy_src.value << shift),
            copier.cmd.payload.dst.eq(regs.copy_dst.value << shift),
            copier.cmd.payload.length.eq(regs.copy_length.value),
            copier.clear_counters.eq(clear_copy),
            arbiter.clear_counters.eq(clear_copy),
            regs.copy_status.busy.eq(copier.busy),
            regs.copy_status.pending.eq(copier.pending),
            regs.copy_status.done_set.eq(copier.done),
            regs.copy_status.error_set.eq(copier.error),
            regs.copy_error_cause.value.eq(copier.error_cause),
            regs.copy_error_addr.value.eq(copier.error_addr[:32]),
            regs.copy_error_addr_hi.value.eq(copier.error_addr[32:]),
            regs.copy_completed.value.eq(copier.completed),
            regs.copy_bytes.value.eq(copier.bytes_copied),
            regs.copy_busy_cycles.value.eq(copier.busy_cycles),
            regs.copy_wait_cycles.value.eq(arbiter.wait_cycles[1]),
            regs.arb_layer_bursts.value.eq(arbiter.bursts[0]),
            regs.arb_copy_bursts.value.eq(arbiter.bursts[1]),
            regs.arb_layer_wait.value.eq(arbiter.wait_cycles[0]),
        ]
