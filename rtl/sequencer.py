"""Tile sequencer: walks one expert group's GEMM over the systolic array.

For a command `(M, K, N, mode, …)` it walks the loop nest

    for m0 in 0, MB, 2·MB, … < M:          # M-block of gathered token rows
      for n0 in 0, C, 2·C, … < N:          # N-tile (C output channels)
        for pass in (W1, W3) if SWIGLU else (W,):
          for k0 in 0, R, 2·R, … < K:      # K-tile (R input channels)
            for m in rows of the block:    # one activation row per cycle

with two independent walkers over the same nest:

- the *weight loader* takes the `min(R, K−k0)` weight rows of a tile from
  the `weight` stream, L = `AccelConfig.weight_rows_per_beat` rows a beat
  (⌈min(R, K−k0)/L⌉ beats; rows of the last beat past the tile are
  don't-care and not written), into the array's idle bank (bank = tile index
  mod 2), as soon as that bank's previous tile has been injected
  (`SystolicArray.bank_cooldown` more cycles, 0 for the skewed-write array):
  a tile is loaded in ⌈R/L⌉ cycles, so loads hide behind compute when a tile
  has at least ⌈R/L⌉ + 1 rows, and short tiles (decode) run at the bus rate;
- the *issuer* injects one activation row per cycle into the loaded bank,
  zeroing lanes ≥ K−k0, and emits a tag (row in the block, first/final
  K-step, pass, N-tile, last) that travels with the row to the accumulators.
  A row whose sums are final (last K-tile of the last pass) needs a credit:
  one free slot in the post-processing buffer (returned when its result row
  leaves the engine), so output backpressure can never overflow anything
  while the array itself never stalls.

No division anywhere: tile bounds come from running offsets and compares.
Every cycle of a command is attributed to exactly one counter (MAC issue,
weight-starved, activation-starved, output-backpressure, or drain).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from pymodel.config import AccelConfig, ConfigError

from .postproc import SHIFT_BITS, Mode

__all__ = [
    "COUNTER_BITS",
    "CommandError",
    "TileSequencer",
    "command_layout",
    "counter_layout",
    "max_gemm_k",
    "tag_layout",
    "weight_beat_layout",
]

COUNTER_BITS = 48
"""Wide enough never to wrap in practice (2^48 cycles ≈ 32 days at 100 MHz)."""


class CommandError(enum.Enum, shape=3):
    """Why a command was rejected (no output is produced for it)."""

    NONE = 0
    ZERO_DIM = 1
    M_TOO_LARGE = 2
    K_TOO_LARGE = 3
    BAD_MODE = 4
    PARAM_RANGE = 5


def max_gemm_k(cfg: AccelConfig) -> int:
    """Largest reduction length a command may ask for (also ≤ `cfg.max_k` by config rules)."""
    return max(cfg.max_d_model, cfg.max_d_ff)


def command_layout(cfg: AccelConfig, param_rows: int) -> data.StructLayout:
    """One grouped-GEMM command: `Y[M, N] = post(X[M, K] · W[K, N])`.

    `param_a`/`param_b` are the parameter-memory rows of N-tile 0 for W (or W1)
    and W3; N-tile j uses row `param_a + j`. `gate_mult`/`gate_shift` are the
    per-tensor requantisation of SwiGLU's gated product.
    """
    rows = ceil_log2(param_rows) or 1
    return data.StructLayout(
        {
            "m": unsigned(ceil_log2(cfg.max_tokens + 1)),
            "k": unsigned(ceil_log2(max_gemm_k(cfg) + 1)),
            "n": unsigned(ceil_log2(param_rows * cfg.cols + 1)),
            "mode": Mode,
            "param_a": unsigned(rows),
            "param_b": unsigned(rows),
            "gate_mult": unsigned(cfg.mult_bits),
            "gate_shift": unsigned(SHIFT_BITS),
        }
    )


def tag_layout(cfg: AccelConfig, m_block: int, param_rows: int) -> data.StructLayout:
    """What travels beside an activation row to the accumulators."""
    return data.StructLayout(
        {
            "valid": 1,
            "row": unsigned(ceil_log2(m_block) or 1),
            "first": 1,
            "final": 1,
            "second_pass": 1,
            "n_tile": unsigned(ceil_log2(param_rows) or 1),
            "n_valid": unsigned(ceil_log2(cfg.cols + 1)),
            "last": 1,
        }
    )


def weight_beat_layout(cfg: AccelConfig) -> data.ArrayLayout:
    """One `weight` beat: `weight_rows_per_beat` rows of C int8, row i = tile row `w_addr + i`."""
    row = data.ArrayLayout(signed(cfg.weight_bits), cfg.cols)
    return data.ArrayLayout(row, cfg.weight_rows_per_beat)


def counter_layout() -> data.StructLayout:
    """Performance counters (cumulative until `counters_clear`), all `COUNTER_BITS` wide.

    `busy` = `mac_cycles + stall_weight + stall_act + stall_out + drain`:
    a cycle either injects a row (`mac_cycles`), waits for a weight tile,
    for an activation row, for a credit (output backpressure), or
    belongs to the drain after the last row. `macs` counts the useful MACs
    (K and N padding excluded), so `macs / (R·C·busy)` is the array efficiency.
    """
    return data.StructLayout(
        {
            name: unsigned(COUNTER_BITS)
            for name in (
                "busy",
                "mac_cycles",
                "macs",
                "stall_weight",
                "stall_act",
                "stall_out",
                "drain",
            )
        }
    )


class _Walker:
    """One position in the tile loop nest, and how to step it.

    Everything the issue logic tests is a register: besides the K offset
    (`k0`, for the first-K-step flag) the walker keeps what is left of K, N
    and M with the per-tile flags and counts derived from them, and their next
    values come from registers alone (`left <= 2·tile` rather than a compare
    of `left − tile`, K's and N's restart values kept from the command), so a
    step only selects between ready values: a subtract and compare behind the
    issue decision did not fit a 100 MHz cycle on ECP5, and neither did a
    compare that yosys' `opt_share` moved behind the select when two branches
    compared against the same constant. The flags the issue decision reads
    (`last_pass`, `final`, `last_tile`) are registers too, each step computing
    their next values beside the others.
    """

    def __init__(self, m: Module, cfg: AccelConfig, cmd, m_block: int, name: str) -> None:
        self.cfg, self.cmd, self.m_block = cfg, cmd, m_block
        self.k0 = Signal.like(cmd.k, name=f"{name}_k0")
        self.k_left = Signal.like(cmd.k, name=f"{name}_k_left")
        self.n_left = Signal.like(cmd.n, name=f"{name}_n_left")
        self.m_left = Signal.like(cmd.m, name=f"{name}_m_left")
        self.n_tile = Signal(len(cmd.param_a), name=f"{name}_n_tile")
        self.second = Signal(name=f"{name}_second_pass")
        self.last_k = Signal(name=f"{name}_last_k")
        self.last_pass = Signal(name=f"{name}_last_pass")
        self.last_n = Signal(name=f"{name}_last_n")
        self.last_m = Signal(name=f"{name}_last_m")
        self.k_valid = Signal(range(cfg.rows + 1), name=f"{name}_k_valid")
        self.n_valid = Signal(range(cfg.cols + 1), name=f"{name}_n_valid")
        self.block_last = Signal(range(m_block), name=f"{name}_block_last")
        """Index of the block's last row (rows in this M-block − 1)."""
        self.final = Signal(name=f"{name}_final")
        """The sums of this tile are complete (last K-tile of the last pass)."""
        self.last_tile = Signal(name=f"{name}_last_tile")
        """`final` of the command's last tile."""
        self.k_restart = (Signal(name=f"{name}_k_restart_last"), Signal.like(self.k_valid))
        self.n_restart = (Signal(name=f"{name}_n_restart_last"), Signal.like(self.n_valid))

    @property
    def next_block_single(self):
        """The M-block after this one has a single row (read before an M-step)."""
        mb = self.m_block
        return Mux(self.m_left <= 2 * mb, self.m_left == mb + 1, mb == 1)

    def reset(self, cmd) -> list:
        """Start the nest of the command `cmd` (the payload being accepted this cycle)."""
        cfg, mb = self.cfg, self.m_block
        k_last, n_last = cmd.k <= cfg.rows, cmd.n <= cfg.cols
        k_count, n_count = Mux(k_last, cmd.k, cfg.rows), Mux(n_last, cmd.n, cfg.cols)
        final = k_last & (cmd.mode != Mode.SWIGLU)
        return [
            self.k0.eq(0),
            self.n_tile.eq(0),
            self.second.eq(0),
            self.last_pass.eq(cmd.mode != Mode.SWIGLU),
            self.final.eq(final),
            self.last_tile.eq(final & n_last & (cmd.m <= mb)),
            self.k_left.eq(cmd.k),
            self.n_left.eq(cmd.n),
            self.m_left.eq(cmd.m),
            self.last_k.eq(k_last),
            self.k_valid.eq(k_count),
            self.last_n.eq(n_last),
            self.n_valid.eq(n_count),
            self.last_m.eq(cmd.m <= mb),
            self.block_last.eq(Mux(cmd.m <= mb, cmd.m - 1, mb - 1)),
            self.k_restart[0].eq(k_last),
            self.k_restart[1].eq(k_count),
            self.n_restart[0].eq(n_last),
            self.n_restart[1].eq(n_count),
        ]

    def step(self, m: Module) -> None:
        """Advance to the next tile (the caller checks `last_tile` first)."""
        cfg, cmd, mb = self.cfg, self.cmd, self.m_block
        rows, cols = cfg.rows, cfg.cols
        k_more, n_more, m_more = self.k_left - rows, self.n_left - cols, self.m_left - mb
        single_pass = cmd.mode != Mode.SWIGLU
        k_next_last = self.k_left <= 2 * rows
        n_next_last = self.n_left <= 2 * cols
        m_next_last = self.m_left <= 2 * mb
        k_step = [
            self.k0.eq(self.k0 + rows),
            self.k_left.eq(k_more),
            self.last_k.eq(k_next_last),
            self.k_valid.eq(Mux(k_next_last, k_more, rows)),
            self.final.eq(k_next_last & self.last_pass),
            self.last_tile.eq(k_next_last & self.last_pass & self.last_n & self.last_m),
        ]
        k_restart = [
            self.k0.eq(0),
            self.k_left.eq(cmd.k),
            self.last_k.eq(self.k_restart[0]),
            self.k_valid.eq(self.k_restart[1]),
        ]
        n_restart = [
            self.n_tile.eq(0),
            self.n_left.eq(cmd.n),
            self.last_n.eq(self.n_restart[0]),
            self.n_valid.eq(self.n_restart[1]),
        ]
        k_first_last = self.k_restart[0]
        with m.If(~self.last_k):
            m.d.sync += k_step
        with m.Elif(~self.last_pass):
            m.d.sync += [*k_restart, self.second.eq(1), self.last_pass.eq(1)]
            m.d.sync += [
                self.final.eq(k_first_last),
                self.last_tile.eq(k_first_last & self.last_n & self.last_m),
            ]
        with m.Elif(~self.last_n):
            m.d.sync += [*k_restart, self.second.eq(0), self.n_tile.eq(self.n_tile + 1)]
            m.d.sync += [
                self.last_pass.eq(single_pass),
                self.final.eq(k_first_last & single_pass),
                self.last_tile.eq(k_first_last & single_pass & n_next_last & self.last_m),
                self.n_left.eq(n_more),
                self.last_n.eq(n_next_last),
                self.n_valid.eq(Mux(n_next_last, n_more, cols)),
            ]
        with m.Else():
            m.d.sync += [*k_restart, *n_restart, self.second.eq(0)]
            m.d.sync += [
                self.last_pass.eq(single_pass),
                self.final.eq(k_first_last & single_pass),
                self.last_tile.eq(k_first_last & single_pass & self.n_restart[0] & m_next_last),
                self.m_left.eq(m_more),
                self.last_m.eq(m_next_last),
                self.block_last.eq(Mux(m_next_last, self.m_left - (mb + 1), mb - 1)),
            ]


class TileSequencer(wiring.Component):
    """Drives `SystolicArray` for one command at a time (see the module docstring).

    `credits` is how many final rows may be in flight between injection and
    the engine's output (what post-processing buffers); `credit_return` pulses
    when a result row leaves the engine; `pp_busy` says rows are still inside
    post-processing.
    A new command is accepted only when the previous one is fully drained.
    """

    def __init__(
        self, cfg: AccelConfig, *, m_block: int, param_rows: int, credits: int, cooldown: int
    ) -> None:
        for name, value in (("m_block", m_block), ("param_rows", param_rows), ("credits", credits)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"TileSequencer.{name} must be an int >= 1, got {value!r}")
        self.cfg, self.m_block, self.param_rows = cfg, m_block, param_rows
        if not isinstance(cooldown, int) or cooldown < 0:
            raise ConfigError(f"TileSequencer.cooldown must be an int >= 0, got {cooldown!r}")
        self.credits, self.cooldown = credits, cooldown
        cmd_layout = command_layout(cfg, param_rows)
        super().__init__(
            {
                "cmd": In(stream.Signature(cmd_layout)),
                "act": In(stream.Signature(data.ArrayLayout(signed(cfg.act_bits), cfg.rows))),
                "weight": In(stream.Signature(weight_beat_layout(cfg))),
                "a_row": Out(data.ArrayLayout(signed(cfg.act_bits), cfg.rows)),
                "sel": Out(1),
                "w_row": Out(weight_beat_layout(cfg)),
                "w_addr": Out(range(cfg.rows)),
                "w_bank": Out(1),
                "w_we": Out(cfg.weight_rows_per_beat),
                "tag": Out(tag_layout(cfg, m_block, param_rows)),
                "current": Out(cmd_layout),
                "credit_return": In(1),
                "pp_busy": In(1),
                "busy": Out(1),
                "done": Out(1),
                "error": Out(CommandError),
                "counters": Out(counter_layout()),
                "counters_clear": In(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg, cmd = self.cfg, self.current
        rows, cols = cfg.rows, cfg.cols

        issuing, loading = Signal(), Signal()
        credits = Signal(range(self.credits + 1), init=self.credits)
        full = Signal(2)
        # At least one bit wide (Verilog has no empty vectors); constant 0 when cooldown = 0.
        cool = [Signal(range(max(self.cooldown, 1) + 1), name=f"cool_{b}") for b in range(2)]

        # Command intake: the command is registered, its range checks are registered the
        # next cycle, and the cycle after that decides (the checks' subtract-and-compare
        # chains, then the priority of their causes, in front of the start decision did
        # not fit 100 MHz on ECP5).
        checking, deciding = Signal(), Signal()
        m.d.comb += self.cmd.ready.eq(~self.busy & ~checking & ~deciding)
        m.d.sync += self.done.eq(0)
        p = cmd
        tiles_free_a = (self.param_rows - p.param_a) * cols
        tiles_free_b = (self.param_rows - p.param_b) * cols
        zero_dim, m_big, k_big, bad_mode, bad_param = (
            Signal(name=n)
            for n in ("zero_dim", "m_too_large", "k_too_large", "bad_mode", "bad_param")
        )
        with m.If(checking):
            m.d.sync += [
                zero_dim.eq((p.m == 0) | (p.k == 0) | (p.n == 0)),
                m_big.eq(p.m > cfg.max_tokens),
                k_big.eq(p.k > max_gemm_k(cfg)),
                bad_mode.eq(p.mode.as_value() > Mode.WIDE.value),
                bad_param.eq(
                    (p.param_a >= self.param_rows)
                    | (p.n > tiles_free_a)
                    | (
                        (p.mode == Mode.SWIGLU)
                        & ((p.param_b >= self.param_rows) | (p.n > tiles_free_b))
                    )
                ),
            ]
        cause = Signal(CommandError)
        with m.If(zero_dim):
            m.d.comb += cause.eq(CommandError.ZERO_DIM)
        with m.Elif(m_big):
            m.d.comb += cause.eq(CommandError.M_TOO_LARGE)
        with m.Elif(k_big):
            m.d.comb += cause.eq(CommandError.K_TOO_LARGE)
        with m.Elif(bad_mode):
            m.d.comb += cause.eq(CommandError.BAD_MODE)
        with m.Elif(bad_param):
            m.d.comb += cause.eq(CommandError.PARAM_RANGE)

        loader = _Walker(m, cfg, cmd, self.m_block, "ld")
        issuer = _Walker(m, cfg, cmd, self.m_block, "is")
        ld_row = Signal(range(rows))
        ld_bank = Signal()
        is_row = Signal(range(self.m_block))
        is_bank = Signal()
        # `is_row == issuer.block_last`, kept as a register beside `is_row`.
        row_last = Signal()

        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += cmd.eq(self.cmd.payload)
            m.d.sync += loader.reset(self.cmd.payload) + issuer.reset(self.cmd.payload)
            m.d.sync += [ld_row.eq(0), ld_bank.eq(0), is_row.eq(0), is_bank.eq(0)]
            p_m = self.cmd.payload.m
            m.d.sync += row_last.eq(Mux(p_m <= self.m_block, p_m == 1, self.m_block == 1))
        m.d.sync += [checking.eq(self.cmd.valid & self.cmd.ready), deciding.eq(checking)]
        with m.If(deciding):
            m.d.sync += self.error.eq(cause)
            with m.If(cause == CommandError.NONE):
                m.d.sync += [self.busy.eq(1), issuing.eq(1), loading.eq(1)]
            with m.Else():
                m.d.sync += self.done.eq(1)

        # Weight loader.
        bank_free = Signal()
        m.d.comb += bank_free.eq(
            ~full.bit_select(ld_bank, 1) & Mux(ld_bank, cool[1] == 0, cool[0] == 0)
        )
        lanes = cfg.weight_rows_per_beat
        ld_fire = Signal()
        m.d.comb += [
            self.weight.ready.eq(loading & bank_free),
            ld_fire.eq(self.weight.valid & self.weight.ready),
            self.w_row.eq(self.weight.payload),
            self.w_addr.eq(ld_row),
            self.w_bank.eq(ld_bank),
        ]
        for i in range(lanes):
            m.d.comb += self.w_we[i].eq(ld_fire & (ld_row + i < loader.k_valid))
        set_full = Signal(2)
        with m.If(ld_fire):
            with m.If(ld_row + lanes >= loader.k_valid):
                m.d.sync += [ld_row.eq(0), ld_bank.eq(~ld_bank)]
                m.d.comb += set_full.eq(Mux(ld_bank, 0b10, 0b01))
                with m.If(loader.last_tile):
                    m.d.sync += loading.eq(0)
                with m.Else():
                    loader.step(m)
            with m.Else():
                m.d.sync += ld_row.eq(ld_row + lanes)

        # Issuer.
        can_issue = Signal()
        inject = Signal()
        has_credit = Signal(init=1)
        m.d.comb += [
            can_issue.eq(issuing & full.bit_select(is_bank, 1) & (~issuer.final | has_credit)),
            self.act.ready.eq(can_issue),
            inject.eq(can_issue & self.act.valid),
            self.sel.eq(is_bank),
        ]
        for r in range(rows):
            m.d.comb += self.a_row[r].eq(Mux(inject & (r < issuer.k_valid), self.act.payload[r], 0))
        m.d.comb += [
            self.tag.valid.eq(inject),
            self.tag.row.eq(is_row),
            self.tag.first.eq(issuer.k0 == 0),
            self.tag.final.eq(issuer.final),
            self.tag.second_pass.eq(issuer.second),
            self.tag.n_tile.eq(issuer.n_tile),
            self.tag.n_valid.eq(issuer.n_valid),
            self.tag.last.eq(issuer.last_tile & row_last),
        ]
        clear_full = Signal(2)
        start_cool = Signal(2)
        with m.If(inject):
            with m.If(row_last):
                m.d.sync += [is_row.eq(0), is_bank.eq(~is_bank)]
                m.d.sync += row_last.eq(
                    Mux(
                        issuer.final & issuer.last_n,
                        issuer.next_block_single,
                        issuer.block_last == 0,
                    )
                )
                m.d.comb += [
                    clear_full.eq(Mux(is_bank, 0b10, 0b01)),
                    start_cool.eq(Mux(is_bank, 0b10, 0b01)),
                ]
                with m.If(issuer.last_tile):
                    m.d.sync += issuing.eq(0)
                with m.Else():
                    issuer.step(m)
            with m.Else():
                m.d.sync += [is_row.eq(is_row + 1), row_last.eq(is_row + 1 == issuer.block_last)]
        m.d.sync += full.eq((full | set_full) & ~clear_full)
        for b in range(2):
            with m.If(start_cool[b]):
                m.d.sync += cool[b].eq(self.cooldown)
            with m.Elif(cool[b] != 0):
                m.d.sync += cool[b].eq(cool[b] - 1)

        spend = inject & issuer.final
        with m.If(spend & ~self.credit_return):
            m.d.sync += [credits.eq(credits - 1), has_credit.eq(credits != 1)]
        with m.Elif(~spend & self.credit_return):
            m.d.sync += [credits.eq(credits + 1), has_credit.eq(1)]

        # Completion: every final row has left the engine and post-processing is empty.
        with m.If(self.busy & ~issuing & (credits == self.credits) & ~self.pp_busy):
            m.d.sync += [self.busy.eq(0), self.done.eq(1)]

        # Counters: each busy cycle lands in exactly one bucket.
        counters = self.counters
        bucket = {
            "mac_cycles": inject,
            "stall_weight": issuing & ~full.bit_select(is_bank, 1),
            "stall_out": issuing & full.bit_select(is_bank, 1) & issuer.final & ~has_credit,
            "stall_act": can_issue & ~self.act.valid,
            "drain": ~issuing,
        }
        # An injected row's MAC count is multiplied, then added, in later cycles (a
        # multiplier and a 48-bit adder after the issue logic do not fit one cycle);
        # the drain after the last row always covers the two cycles.
        row_k = Signal.like(issuer.k_valid)
        row_n = Signal.like(issuer.n_valid)
        row_macs = Signal(range(rows * cols + 1))
        m.d.sync += [
            row_k.eq(Mux(inject, issuer.k_valid, 0)),
            row_n.eq(issuer.n_valid),
            row_macs.eq(row_k * row_n),
        ]
        with m.If(self.counters_clear):
            m.d.sync += counters.eq(0)
        with m.Elif(self.busy):
            m.d.sync += counters.busy.eq(counters.busy + 1)
            for name, cond in bucket.items():
                with m.If(cond):
                    m.d.sync += counters[name].eq(counters[name] + 1)
            m.d.sync += counters.macs.eq(counters.macs + row_macs)
        return m
