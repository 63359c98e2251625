"""Post-processing lanes: requantise, LUT activation, SwiGLU gated multiply.

One lane per array column turns an int32 accumulator into an int8 output,
bit-exact with `pymodel.numerics`:

- `requantize(acc, m, s)`: `sat(round_half_away(acc·m / 2^s))` with a
  per-output-channel unsigned `mult_bits` multiplier `m` and shift `s`,
  hardware form `(p + 2^(s−1) − (p<0)) >>> s` (`s = 0` passes `p`),
  saturating to the symmetric range [−127, 127];
- `apply_lut(lut, q)`: a 2^act_bits-entry table indexed by the two's-complement
  code of `q` (the driver fills it from the scales, `numerics.make_lut`);
- `gated_multiply(a, u, m_g, s_g)`: the exact int8×int8 product requantised
  with a per-tensor (m_g, s_g) — SwiGLU's `act(x·W1) ⊙ (x·W3)`.

`Mode` selects `requant(acc_a)`, `lut(requant(acc_a))`,
`gated_multiply(lut(requant(acc_a)), requant(acc_b))` or (WIDE, the router
GEMM) `requantize(acc_a, m, s, logit_bits)` on the `wide` output lanes. Per-channel (m, s)
pairs live in a parameter memory of `param_rows` rows × C lanes; an input beat
names the rows for its `acc_a` and `acc_b` (e.g. W1's and W3's parameters
for the same N-tile), so several GEMMs' parameters can stay resident.

Pipeline (`PostProc.pipeline_depth` = 23 stages with 32-bit accumulators):
input register, parameter read data register, the requantisers
(`Requantizer`: DSP operands, product, product again in the fabric,
partial-product sum, bias, shift by bytes, by bits, saturation — one adder
or shifter per cycle), LUT read, LUT data register, activated value
register, the gated product's operands and product, the gate requantiser,
output register, then an output FIFO in block RAM whose read data is registered
in the fabric before `out` (a block RAM's read data arrives ~6 ns into the cycle
on ECP5); `out.valid` never waits on `out.ready`. No stage does more than one
DSP multiply, one adder, a shifter or a block-RAM access, and every multiply
is a `PipelinedMultiplier` (on ECP5 a MULT18X18D with its operand and product
registers inside the block).
"""

from __future__ import annotations

import types

from amaranth import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from contract.timing import (
    GATED_STAGES,
    LUT_STAGES,
    REQUANT_SPLIT_BITS,
    SHIFT_BITS,
    postproc_depth,
    postproc_latency,
    requantizer_latency,
    wide_bits,
)
from pymodel.config import AccelConfig, ConfigError
from pymodel.numerics import PostMode

from .checks import invariant, sent_stream_invariants
from .multiplier import PipelinedMultiplier

__all__ = [
    "SHIFT_BITS",
    "Mode",
    "PostProc",
    "Requantizer",
    "lut_write_layout",
    "output_layout",
    "param_layout",
    "param_write_layout",
    "postproc_input_layout",
    "wide_bits",
]


Mode = types.new_class(
    "Mode", (enum.Enum,), {"shape": 3}, lambda ns: ns.update({m.name: m.value for m in PostMode})
)
"""What a post-processing lane outputs: `pymodel.numerics.PostMode` as a 3-bit Amaranth enum."""


class Requantizer(wiring.Component):
    """Pipelined `numerics.requantize(value, mult, shift, out_bits)`: a new input every
    cycle, its result `latency` cycles later (free-running, no enable).

    Registered stages, so no cycle holds more than one multiplier, adder or
    shifter (the combinational version ran ECP5 at ~20 MHz):

    1. the DSP operands, in the operand registers of a `PipelinedMultiplier`
       (on ECP5 the MULT18X18D's own); inputs wider than 18 bits are split
       into a 17-bit unsigned low part and a signed high part, one 18 × 18
       multiply each; beside them the clamped shift `s`, `max − s` and the
       sign of the product;
    2. the product (or its two halves), in the multipliers' product registers;
       beside them the rounding bias `2^(s−1) − (p < 0)` (`s = 0`: 0), from
       the registered `max − s` and sign, so the shift decode and the bias
       subtract do not follow the clamp and `max − s` in one cycle;
    3. the product (or its halves) again, in fabric registers: placement puts
       a requantiser's multipliers wherever the chip has DSP blocks left, up
       to 9 ns of routing away from its adder, so the route gets a cycle;
    4. (split inputs only) the partial products summed;
    5. the bias added;
    6. the arithmetic shift right by whole bytes;
    7. the arithmetic shift right by the rest (`s mod 8`);
    8. the saturation to [−(2^(out_bits−1) − 1), 2^(out_bits−1) − 1] (and, with
       `narrow_bits`, to that narrower range as well, on `narrow`).

    Shifts ≥ `in_bits + mult_bits` give 0 (as the golden model does), so the
    barrel shifter only spans that range.
    """

    SPLIT_BITS = REQUANT_SPLIT_BITS
    """Low-part width of a split product: unsigned 17 bits fit an 18 × 18 signed multiplier."""

    def __init__(
        self, in_bits: int, mult_bits: int, out_bits: int, narrow_bits: int | None = None
    ) -> None:
        if narrow_bits is not None and not 2 <= narrow_bits <= out_bits:
            raise ConfigError(
                f"Requantizer narrow_bits = {narrow_bits!r} must be in [2, out_bits = {out_bits}]"
            )
        self.in_bits, self.mult_bits, self.out_bits = in_bits, mult_bits, out_bits
        self.narrow_bits = narrow_bits
        ports = {
            "value": In(signed(in_bits)),
            "mult": In(unsigned(mult_bits)),
            "shift": In(unsigned(SHIFT_BITS)),
            "result": Out(signed(out_bits)),
        }
        if narrow_bits is not None:
            ports["narrow"] = Out(signed(narrow_bits))
        super().__init__(ports)

    @classmethod
    def latency_for(cls, in_bits: int) -> int:
        """Latency of a requantiser of `in_bits`-wide values (without building one)."""
        return requantizer_latency(in_bits)

    @property
    def split(self) -> bool:
        """Whether the product is split over two multipliers (inputs wider than 18 bits)."""
        return self.in_bits > self.SPLIT_BITS + 1

    @property
    def latency(self) -> int:
        """Cycles from `value`/`mult`/`shift` to their `result`."""
        return self.latency_for(self.in_bits)

    def elaborate(self, platform):
        m = Module()
        prod_bits = self.in_bits + self.mult_bits + 1
        max_shift = min(self.in_bits + self.mult_bits, 2**SHIFT_BITS - 1)

        # Stage 1: the DSP operands, the clamped shift, and what the bias needs.
        shift_in = Signal(range(max_shift + 1))
        m.d.comb += shift_in.eq(Mux(self.shift > max_shift, max_shift, self.shift))
        shift = [Signal(range(max_shift + 1), name=f"shift_{i}") for i in range(self.latency - 2)]
        shift_down = Signal(range(max_shift + 1))
        negative = Signal()
        m.d.sync += [
            shift[0].eq(shift_in),
            shift_down.eq(max_shift - shift_in),
            negative.eq((shift_in != 0) & (self.value < 0) & (self.mult != 0)),
        ]
        m.d.sync += [shift[i + 1].eq(shift[i]) for i in range(len(shift) - 1)]
        # Stage 2: the bias 2^(s-1) - (p < 0), 0 for s = 0, with 2^(s-1) as a right
        # shift: a variable left shift would widen the value by 2^6 - 1 bits, past
        # 64, and slow the Verilated model down.
        bias = Signal(signed(max_shift + 1))
        m.d.sync += bias.eq((Const(1 << (max_shift - 1), max_shift) >> shift_down) - negative)
        # The bias waits beside the product until the adder (stage latency − 3).
        bias = _delay(m, bias, self.latency - 6, "bias")
        product = Signal(signed(prod_bits))
        mult_shape = unsigned(self.mult_bits)
        if self.split:
            low_bits = self.SPLIT_BITS
            m.submodules.mul_low = low = PipelinedMultiplier(unsigned(low_bits), mult_shape)
            high_shape = signed(self.in_bits - low_bits)
            m.submodules.mul_high = high = PipelinedMultiplier(high_shape, mult_shape)
            m.d.comb += [
                low.a.eq(self.value[:low_bits]),
                low.b.eq(self.mult),
                high.a.eq(self.value[low_bits:].as_signed()),
                high.b.eq(self.mult),
            ]
            low_p, high_p = Signal.like(low.p), Signal.like(high.p)
            m.d.sync += [low_p.eq(low.p), high_p.eq(high.p)]
            m.d.sync += product.eq((high_p << low_bits) + low_p)
        else:
            m.submodules.mul = mul = PipelinedMultiplier(signed(self.in_bits), mult_shape)
            m.d.comb += [mul.a.eq(self.value), mul.b.eq(self.mult)]
            m.d.sync += product.eq(mul.p)

        biased = Signal(signed(max(prod_bits, max_shift + 1) + 1))
        by_bytes = Signal.like(biased)
        rounded = Signal.like(biased)
        # The shift takes two stages, whole bytes then the rest, each an 8-way select:
        # with the bytes shifted behind the add, the sum's fan-out into the select
        # took 4 ns of routing on ECP5.
        m.d.sync += [
            biased.eq(product + bias),
            by_bytes.eq(biased >> Cat(Const(0, 3), shift[-2][3:])),
            rounded.eq(by_bytes >> shift[-1][:3]),
            self.result.eq(_saturated(rounded, self.out_bits)),
        ]
        if self.narrow_bits is not None:
            m.d.sync += self.narrow.eq(_saturated(rounded, self.narrow_bits))
        return m


def _saturated(value, bits: int):
    """`value` clamped to the symmetric `bits`-wide range [−(2^(bits−1) − 1), 2^(bits−1) − 1]."""
    qmax = 2 ** (bits - 1) - 1
    return Mux(value > qmax, qmax, Mux(value < -qmax, -qmax, value))


def param_layout(cfg: AccelConfig) -> data.StructLayout:
    """One output channel's requantisation parameters."""
    return data.StructLayout({"mult": unsigned(cfg.mult_bits), "shift": unsigned(SHIFT_BITS)})


def param_write_layout(cfg: AccelConfig, param_rows: int) -> data.StructLayout:
    """Write of W = `cfg.param_words_per_beat` channels' (m, s) a cycle.

    Word j goes to channel `row·C + group·W + j`; W divides C, so a write
    never leaves its row and lane `c` always takes word `c mod W`.
    """
    groups = cfg.cols // cfg.param_words_per_beat
    return data.StructLayout(
        {
            "row": unsigned(ceil_log2(param_rows) or 1),
            "group": unsigned(ceil_log2(groups) or 1),
            "words": data.ArrayLayout(param_layout(cfg), cfg.param_words_per_beat),
        }
    )


def lut_write_layout(cfg: AccelConfig) -> data.StructLayout:
    """Write of V = `cfg.lut_entries_per_beat` consecutive LUT entries a cycle.

    Entry j is the value for the input whose two's-complement code is
    `row·V + j`.
    """
    v = cfg.lut_entries_per_beat
    return data.StructLayout(
        {
            "row": unsigned(ceil_log2(2**cfg.act_bits // v) or 1),
            "values": data.ArrayLayout(signed(cfg.act_bits), v),
        }
    )


def postproc_input_layout(cfg: AccelConfig, param_rows: int) -> data.StructLayout:
    """One row of C accumulators (two for SwiGLU) with what the lanes need to finish it."""
    acc_row = data.ArrayLayout(signed(cfg.acc_bits), cfg.cols)
    row_bits = ceil_log2(param_rows) or 1
    return data.StructLayout(
        {
            "acc_a": acc_row,
            "acc_b": acc_row,
            "param_a": unsigned(row_bits),
            "param_b": unsigned(row_bits),
            "n_valid": unsigned(ceil_log2(cfg.cols + 1)),
            "mode": Mode,
            "gate_mult": unsigned(cfg.mult_bits),
            "gate_shift": unsigned(SHIFT_BITS),
            "last": 1,
        }
    )


def output_layout(cfg: AccelConfig) -> data.StructLayout:
    """One output row: C int8 lanes (lanes ≥ the valid channel count are 0), C `wide`
    lanes (WIDE mode's result; don't-care otherwise) and `last`."""
    return data.StructLayout(
        {
            "data": data.ArrayLayout(signed(cfg.act_bits), cfg.cols),
            "wide": data.ArrayLayout(signed(wide_bits(cfg)), cfg.cols),
            "last": 1,
        }
    )


def _delay(m: Module, value, cycles: int, name: str):
    """`value` delayed by `cycles` registers (the value itself for 0)."""
    for i in range(cycles):
        delayed = Signal.like(value, name=f"{name}_d{i}")
        m.d.sync += delayed.eq(value)
        value = delayed
    return value


class PostProc(wiring.Component):
    """C post-processing lanes with their parameter memory and per-lane LUT copies.

    `param_w` and `lut_w` are always ready; write them between commands (a
    write while rows using that entry are in flight is not ordered with them).

    The lanes are a free-running pipeline (`pipeline_depth` registered stages,
    no stall enable: one enable fanned out to thousands of flip-flops would be
    a timing path of its own) ending in an output FIFO in block RAM. An input
    beat is accepted only while fewer than `buffer_depth` beats are inside
    (pipeline + FIFO), so output backpressure fills the FIFO and then stops
    `inp`, never overflowing it; `busy` says anything is inside. A producer
    that keeps at most `buffer_depth` beats between its injection and the
    `out` handshake (`GemmEngine`'s credits) always finds `inp.ready` high.
    """

    def __init__(
        self, cfg: AccelConfig, param_rows: int, *, buffer_depth: int | None = None
    ) -> None:
        if not isinstance(param_rows, int) or param_rows < 1:
            raise ConfigError(f"PostProc.param_rows must be an int >= 1, got {param_rows!r}")
        self.cfg = cfg
        self.param_rows = param_rows
        minimum = self.pipeline_depth + 4
        self.buffer_depth = minimum if buffer_depth is None else buffer_depth
        if not isinstance(self.buffer_depth, int) or self.buffer_depth < minimum:
            raise ConfigError(
                f"PostProc.buffer_depth = {self.buffer_depth!r} must be an int >= {minimum} "
                f"(pipeline_depth + 4, so a beat can enter every cycle)"
            )
        super().__init__(
            {
                "inp": In(stream.Signature(postproc_input_layout(cfg, param_rows))),
                "out": Out(stream.Signature(output_layout(cfg))),
                "param_w": In(stream.Signature(param_write_layout(cfg, param_rows))),
                "lut_w": In(stream.Signature(lut_write_layout(cfg))),
                "busy": Out(1),
            }
        )

    def _requantizers(self) -> tuple[Requantizer, Requantizer, Requantizer]:
        """One lane's requantisers: W/W1 (to the wide width), W3, the gated product."""
        cfg = self.cfg
        return (
            Requantizer(cfg.acc_bits, cfg.mult_bits, wide_bits(cfg), narrow_bits=cfg.act_bits),
            Requantizer(cfg.acc_bits, cfg.mult_bits, cfg.act_bits),
            Requantizer(2 * cfg.act_bits, cfg.mult_bits, cfg.act_bits),
        )

    @staticmethod
    def pipeline_depth_for(cfg: AccelConfig) -> int:
        """Registered stages from an accepted input beat to its output-FIFO write.

        Input register, parameter read data register and its copy beside the
        requantisers, the two requantisers, LUT read, LUT data register,
        activated value register (LUT data or the requantised value), the gated
        product's multiplier (operands, product), the gate requantiser, output
        register.
        """
        return postproc_depth(cfg)

    @classmethod
    def latency_for(cls, cfg: AccelConfig) -> int:
        """Cycles from an accepted input beat to its output beat (no backpressure)."""
        return postproc_latency(cfg)

    @property
    def pipeline_depth(self) -> int:
        """`pipeline_depth_for` of this instance's configuration."""
        return self.pipeline_depth_for(self.cfg)

    @property
    def latency(self) -> int:
        """`latency_for` of this instance's configuration."""
        return self.latency_for(self.cfg)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        lanes, bits = cfg.cols, cfg.act_bits

        params = Memory(
            shape=data.ArrayLayout(param_layout(cfg), lanes), depth=self.param_rows, init=[]
        )
        m.submodules.params = params
        p_wr = params.write_port(granularity=1)
        p_rd_a = params.read_port()
        p_rd_b = params.read_port()
        words = cfg.param_words_per_beat
        group_mask = Const(2**words - 1, lanes)
        m.d.comb += [
            self.param_w.ready.eq(1),
            p_wr.addr.eq(self.param_w.payload.row),
            p_wr.en.eq(
                Mux(self.param_w.valid, group_mask << (self.param_w.payload.group * words), 0)
            ),
        ]
        for c in range(lanes):
            m.d.comb += p_wr.data[c].eq(self.param_w.payload.words[c % words])

        # Each lane's LUT copy holds V entries a row, so a whole beat is written at once.
        per_row = cfg.lut_entries_per_beat
        luts = []
        for c in range(lanes):
            lut = Memory(
                shape=data.ArrayLayout(signed(bits), per_row),
                depth=2**bits // per_row,
                init=[],
                attrs={"ram_style": "block"},
            )
            m.submodules[f"lut_{c}"] = lut
            wr = lut.write_port()
            m.d.comb += [
                wr.addr.eq(self.lut_w.payload.row),
                wr.data.eq(self.lut_w.payload.values),
                wr.en.eq(self.lut_w.valid),
            ]
            luts.append(lut.read_port())
        m.d.comb += self.lut_w.ready.eq(1)

        # Admission: beats inside the pipeline and the output FIFO never exceed its depth.
        inside = Signal(range(self.buffer_depth + 1))
        room = Signal(init=1)
        accept = self.inp.valid & self.inp.ready
        pop = self.out.valid & self.out.ready
        # `room` and `busy` are registers beside the count (the sequencer's completion
        # check reads `busy` from across the chip: no compare may sit in front of it).
        m.d.comb += self.inp.ready.eq(room)
        with m.If(accept & ~pop):
            m.d.sync += [
                inside.eq(inside + 1),
                room.eq(inside + 1 != self.buffer_depth),
                self.busy.eq(1),
            ]
        with m.Elif(~accept & pop):
            m.d.sync += [inside.eq(inside - 1), room.eq(1), self.busy.eq(inside != 1)]
        invariant(m, inside <= self.buffer_depth, "PostProc: more beats inside than its buffer")
        sent_stream_invariants(m, self)

        # Stage 1: the input beat, its parameter rows being read.
        s1 = Signal(postproc_input_layout(cfg, self.param_rows))
        s1_valid = Signal()
        m.d.sync += [s1.eq(self.inp.payload), s1_valid.eq(accept)]
        m.d.comb += [
            p_rd_a.addr.eq(self.inp.payload.param_a),
            p_rd_b.addr.eq(self.inp.payload.param_b),
        ]

        # Stage 2: the parameter rows' read data in registers free to sit by the block RAM
        # (its data comes late in the cycle, and the requantisers are across the chip: one
        # register between them was a 97.3 MHz path on ECP5). Data registers used only
        # beside `valid` need no reset.
        p_a = Signal.like(p_rd_a.data, reset_less=True, name="param_read_a")
        p_b = Signal.like(p_rd_b.data, reset_less=True, name="param_read_b")
        s1b = Signal.like(s1)
        s1b_valid = Signal()
        m.d.sync += [s1b.eq(s1), s1b_valid.eq(s1_valid), p_a.eq(p_rd_a.data), p_b.eq(p_rd_b.data)]

        # Stage 3: accumulators beside their registered parameters.
        s2 = Signal.like(s1)
        s2_valid = Signal()
        s2_pa = Signal.like(p_rd_a.data, reset_less=True)
        s2_pb = Signal.like(p_rd_b.data, reset_less=True)
        m.d.sync += [s2.eq(s1b), s2_valid.eq(s1b_valid), s2_pa.eq(p_a), s2_pb.eq(p_b)]

        req_lat = Requantizer.latency_for(cfg.acc_bits)
        gate_lat = Requantizer.latency_for(2 * bits)
        # Stage q = 2 + req_lat: requantised W/W1 and W3 values; LUT read.
        mode_q = _delay(m, s2.mode, req_lat, "mode_q")
        # Stage q + `LUT_STAGES`: the activated value (LUT data or the requantised value)
        # registered.
        mode_lut = _delay(m, mode_q, LUT_STAGES - 1, "mode_lut")
        mode_l = _delay(m, mode_lut, 1, "mode_l")
        # Stage q + `GATED_STAGES`: the gated product registered (its operands the stage
        # before); the gate requantiser starts.
        gate_mult = _delay(m, s2.gate_mult, req_lat + GATED_STAGES, "gate_mult")
        gate_shift = _delay(m, s2.gate_shift, req_lat + GATED_STAGES, "gate_shift")
        # Stage q + `GATED_STAGES` + gate_lat: results, then the output register.
        to_end = req_lat + GATED_STAGES + gate_lat
        mode_e = _delay(m, mode_l, GATED_STAGES - LUT_STAGES + gate_lat, "mode_e")
        n_valid_e = _delay(m, s2.n_valid, to_end, "n_valid_e")
        last_e = _delay(m, s2.last, to_end, "last_e")
        valid_e = _delay(m, s2_valid, to_end, "valid_e")

        result = Signal(output_layout(cfg))
        for c in range(lanes):
            req_a, req_b, gate = self._requantizers()
            m.submodules[f"req_a_{c}"] = req_a
            m.submodules[f"req_b_{c}"] = req_b
            m.submodules[f"gate_{c}"] = gate
            m.d.comb += [
                req_a.value.eq(s2.acc_a[c]),
                req_a.mult.eq(s2_pa[c].mult),
                req_a.shift.eq(s2_pa[c].shift),
                req_b.value.eq(s2.acc_b[c]),
                req_b.mult.eq(s2_pb[c].mult),
                req_b.shift.eq(s2_pb[c].shift),
            ]
            # W/W1's result saturated to act_bits, beside the wide one (saturating
            # the registered wide result again put a compare chain before the LUT read).
            narrow = req_a.narrow
            entry_bits = exact_log2(per_row)
            m.d.comb += luts[c].addr.eq(narrow.as_unsigned() >> entry_bits)
            # The LUT row's entry is chosen by the input's low bits, registered beside the
            # read and then beside the registered read data.
            entry = Signal(range(per_row), name=f"lut_entry_{c}")
            m.d.sync += entry.eq(narrow.as_unsigned()[:entry_bits])
            entry = _delay(m, entry, LUT_STAGES - 2, f"lut_entry_{c}")
            lut_row = _delay(m, luts[c].data, LUT_STAGES - 2, f"lut_row_{c}")
            # The activated value is a register of its own next to the DSP block.
            q_a = _delay(m, narrow, LUT_STAGES - 1, f"q_a_{c}")
            q_b = _delay(m, req_b.result, LUT_STAGES, f"q_b_{c}")
            activated = Signal(signed(bits), name=f"activated_{c}")
            m.d.sync += activated.eq(Mux(mode_lut == Mode.REQUANT, q_a, lut_row[entry]))
            gated = PipelinedMultiplier(signed(bits), signed(bits))
            m.submodules[f"gated_{c}"] = gated
            m.d.comb += [
                gated.a.eq(activated),
                gated.b.eq(q_b),
                gate.value.eq(gated.p),
                gate.mult.eq(gate_mult),
                gate.shift.eq(gate_shift),
            ]
            activated_e = _delay(
                m, activated, GATED_STAGES - LUT_STAGES + gate_lat, f"activated_e_{c}"
            )
            wide_e = _delay(m, req_a.result, GATED_STAGES + gate_lat, f"wide_e_{c}")
            lane_valid = c < n_valid_e
            m.d.sync += [
                result.data[c].eq(
                    Mux(lane_valid, Mux(mode_e == Mode.SWIGLU, gate.result, activated_e), 0)
                ),
                result.wide[c].eq(Mux(lane_valid, wide_e, 0)),
            ]
        result_valid = Signal()
        m.d.sync += [result.last.eq(last_e), result_valid.eq(valid_e)]
        self._output_fifo(m, result, result_valid)
        return m

    def _output_fifo(self, m: Module, result, result_valid) -> None:
        """The output FIFO: block RAM written by a register, its read data registered into `out`.

        Admission bounds the entries by `buffer_depth`, so the write needs no
        full check and its enable is the registered `result_valid` (in LUT RAM
        one write-enable net reached hundreds of cells: the 62 MHz critical path).
        The depth is a power of two above that bound, so the pointers wrap by
        themselves and the address being read is never the one being written.
        A read lands in the RAM's data register (`fetched` says it holds an
        entry, kept while its `en` is low) and moves into `out`'s register
        when that is free: the RAM's late read data (5.8 ns after the clock on
        ECP5) reaches only flip-flops, and entries still move one a cycle.
        """
        width = Shape.cast(output_layout(self.cfg)).width
        depth = 1 << ceil_log2(self.buffer_depth + 1)
        mem = Memory(shape=unsigned(width), depth=depth, init=[], attrs={"ram_style": "block"})
        m.submodules.out_fifo = mem
        wr = mem.write_port()
        rd = mem.read_port()
        produce = Signal(range(depth))
        consume = Signal(range(depth))
        stored = Signal(range(depth + 1))
        nonempty = Signal()
        fetched = Signal()
        move = Signal()
        read = Signal()
        m.d.comb += [
            wr.addr.eq(produce),
            wr.data.eq(result),
            wr.en.eq(result_valid),
            move.eq(fetched & (~self.out.valid | self.out.ready)),
            read.eq(nonempty & (~fetched | move)),
            rd.addr.eq(consume),
            rd.en.eq(read),
        ]
        invariant(m, ~result_valid | (stored < depth), "PostProc: output FIFO written while full")
        m.d.sync += [
            produce.eq(produce + result_valid),
            consume.eq(consume + read),
            stored.eq(stored + result_valid - read),
            fetched.eq(read | (fetched & ~move)),
        ]
        # `nonempty` is a register beside the count: `read` feeds the count's carry
        # chain, and a compare of the count in front of it was the 78 MHz path.
        with m.If(result_valid & ~read):
            m.d.sync += nonempty.eq(1)
        with m.Elif(~result_valid & read):
            m.d.sync += nonempty.eq(stored != 1)
        with m.If(move):
            m.d.sync += [self.out.payload.eq(rd.data), self.out.valid.eq(1)]
        with m.Elif(self.out.ready):
            m.d.sync += self.out.valid.eq(0)
