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

Compressed weight formats (`pymodel.weight_formats`; only in builds with
`AccelConfig.sparse_2_4` / `int4_weights`, whose commands carry a `fmt`
field; a format the build lacks, or a 2:4 command whose K is not a multiple
of 4, is rejected with `BAD_MODE`). Tiles of a compressed format are whole
(`pymodel.gemm_engine.tile_stream_rows`):

- 2:4: K steps of 2R (`k0`, `k_valid` count K positions, up to 2R); an
  activation beat carries the tile's 2R positions and the issuer passes the
  first `k_valid` lanes (a dense command's R lanes are spread to lane
  4g + j for x[2g + j], the array's dense positions); a tile is its R value
  rows, then its R/4 index rows at L a beat (`index_lanes` positions);
- int4 dense: K steps of 2R as for 2:4 (the activations lanes as they
  are; an int4-only build spreads an int8 command's x[r] to lane 2r); a
  tile is R byte rows loaded like int8 rows, each byte one PE's pair of
  K positions 2r (low nibble) and 2r + 1, marked by `w_pair`
  (`rtl.systolic.ProcessingElement` computes both products);
- int4 2:4 (both paths built): K steps of 2R, a beat's L byte rows are 2L
  array rows (low nibble first, sign-extended; `weight_lanes`); a byte
  beat (int8, int4 dense) in such a build fills the lower or upper L of
  the 2L lanes.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from contract.regs import COUNTER_BITS
from pymodel.config import AccelConfig, ConfigError
from pymodel.gemm_engine import activation_lanes

from .checks import invariant
from .postproc import SHIFT_BITS, Mode
from .systolic import IDX_BITS, index_lanes, nibble_rows, weight_lanes

__all__ = [
    "CommandError",
    "TileSequencer",
    "counter_layout",
    "format_layout",
    "gemm_command_layout",
    "max_gemm_k",
    "status_members",
    "tag_layout",
    "weight_beat_layout",
    "wide_tiles",
]


class CommandError(enum.Enum, shape=3):
    """Why a command was rejected (no output is produced for it).

    `BAD_MODE` also covers a weight format the build does not run (a code of
    its own would change this enum, and with it the Verilog of every build).
    """

    NONE = 0
    ZERO_DIM = 1
    M_TOO_LARGE = 2
    K_TOO_LARGE = 3
    BAD_MODE = 4
    PARAM_RANGE = 5


def format_layout() -> data.StructLayout:
    """A command's weight format: 2:4 sparse, int4 (both clear: int8 dense)."""
    return data.StructLayout({"sparse": 1, "int4": 1})


def max_gemm_k(cfg: AccelConfig) -> int:
    """Largest reduction length a command may ask for (also ≤ `cfg.max_k` by config rules)."""
    return max(cfg.max_d_model, cfg.max_d_ff)


def gemm_command_layout(cfg: AccelConfig, param_rows: int) -> data.StructLayout:
    """One grouped-GEMM command: `Y[M, N] = post(X[M, K] · W[K, N])`.

    `param_a`/`param_b` are the parameter-memory rows of N-tile 0 for W (or W1)
    and W3; N-tile j uses row `param_a + j`. `gate_mult`/`gate_shift` are the
    per-tensor requantisation of SwiGLU's gated product. A build with a
    compressed weight path adds `fmt` (`format_layout`).
    """
    rows = ceil_log2(param_rows) or 1
    fmt = {"fmt": format_layout()} if cfg.sparse_2_4 or cfg.int4_weights else {}
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
            **fmt,
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


def wide_tiles(cfg: AccelConfig, cmd):
    """Whether the command `cmd` (a `gemm_command_layout` view) steps K by 2R, or None in
    a build whose tiles are all R K positions: 2:4 (R kept rows) and int4 (two K
    positions a PE in an int4 dense tile, two kept rows a byte in an int4 2:4 tile)."""
    if not (cfg.sparse_2_4 or cfg.int4_weights):
        return None
    fmt = cmd.fmt
    if cfg.sparse_2_4 and cfg.int4_weights:
        return fmt.sparse | fmt.int4
    if cfg.sparse_2_4:
        return fmt.sparse
    return fmt.int4


def weight_beat_layout(cfg: AccelConfig, lanes: int | None = None) -> data.ArrayLayout:
    """One `weight` beat: `weight_rows_per_beat` rows of C int8, row i = tile row `w_addr + i`.

    `lanes` overrides the row count (the array's weight port in an int4 build).
    """
    row = data.ArrayLayout(signed(cfg.weight_bits), cfg.cols)
    return data.ArrayLayout(row, cfg.weight_rows_per_beat if lanes is None else lanes)


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
    and M with the per-tile flags and counts derived from them (`final`,
    `last_tile`, …), and K's and N's restart values from the command. The
    value every field takes at the next step is computed from these registers
    alone (`left <= 2·tile` rather than a compare of `left − tile`), in
    `after`, whose wires carry the `keep` attribute: synthesis has to build
    them as they are, so a step is a select behind the walker's decision
    instead of logic the decision passes through (on ECP5 it went five LUT
    levels deep into the step logic, and a subtract and compare behind it did
    not fit 100 MHz).
    """

    FIELDS = (
        "k0",
        "k_left",
        "n_left",
        "m_left",
        "n_tile",
        "second",
        "last_k",
        "last_pass",
        "last_n",
        "last_m",
        "k_valid",
        "n_valid",
        "block_last",
        "final",
        "last_tile",
    )

    def __init__(self, m: Module, cfg: AccelConfig, cmd, m_block: int, name: str) -> None:
        self.cfg, self.cmd, self.m_block, self.name = cfg, cmd, m_block, name
        shapes = {
            "k0": cmd.k.shape(),
            "k_left": cmd.k.shape(),
            "n_left": cmd.n.shape(),
            "m_left": cmd.m.shape(),
            "n_tile": unsigned(len(cmd.param_a)),
            "k_valid": range(activation_lanes(cfg) + 1),
            "n_valid": range(cfg.cols + 1),
            "block_last": range(m_block),
        }
        self.regs = {f: Signal(shapes.get(f, 1), name=f"{name}_{f}") for f in self.FIELDS}
        self.after = {
            f: Signal(shapes.get(f, 1), name=f"{name}_{f}_after", attrs={"keep": 1})
            for f in self.FIELDS
        }
        for f, reg in self.regs.items():
            setattr(self, f, reg)
        # `final`: the sums of this tile are complete (last K-tile of the last pass);
        # `last_tile`: `final` of the command's last tile; `block_last`: index of the
        # block's last row (rows in this M-block − 1).
        self.k_restart = (Signal(name=f"{name}_k_restart_last"), Signal.like(self.k_valid))
        self.n_restart = (Signal(name=f"{name}_n_restart_last"), Signal.like(self.n_valid))
        # K positions a tile covers: 2R for a 2:4 or an int4 command. `k_step` is a
        # register loaded with the nest (the format's select in front of the K
        # subtract-and-compare chains was a 90.7 MHz path on ECP5).
        if wide_tiles(cfg, cmd) is None:
            self.k_step = cfg.rows
        else:
            self.k_step = Signal(range(2 * cfg.rows + 1), name=f"{name}_k_step")
        self._compute_after(m)

    @property
    def next_block_single(self):
        """The M-block after this one has a single row (read before an M-step)."""
        mb = self.m_block
        return Mux(self.m_left <= 2 * mb, self.m_left == mb + 1, mb == 1)

    def reset(self, cmd) -> list:
        """Start the nest of the command `cmd` (the registered command, while it is checked)."""
        cfg, mb = self.cfg, self.m_block
        wide = wide_tiles(cfg, cmd)
        k_step = cfg.rows if wide is None else Mux(wide, 2 * cfg.rows, cfg.rows)
        k_last, n_last = cmd.k <= k_step, cmd.n <= cfg.cols
        k_count, n_count = Mux(k_last, cmd.k, k_step), Mux(n_last, cmd.n, cfg.cols)
        final = k_last & (cmd.mode != Mode.SWIGLU)
        step = [] if isinstance(self.k_step, int) else [self.k_step.eq(k_step)]
        return [
            *step,
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

    def step(self, m: Module, when) -> None:
        """Advance to the next tile in the cycles `when` holds (never past `last_tile`).

        `when` is a wire of its own (`keep`): one LUT from the walker's decision
        register, not merged into the per-field enables behind it.
        """
        stepping = Signal(name=f"{self.name}_stepping", attrs={"keep": 1})
        m.d.comb += stepping.eq(when)
        with m.If(stepping):
            m.d.sync += [self.regs[f].eq(self.after[f]) for f in self.FIELDS]

    def _compute_after(self, m: Module) -> None:
        """`after`: the next tile's fields (K-step, else next pass, else N-step, else M-step)."""
        cfg, cmd, mb = self.cfg, self.cmd, self.m_block
        rows, cols = self.k_step, cfg.cols
        after = self.after
        k_more, n_more, m_more = self.k_left - rows, self.n_left - cols, self.m_left - mb
        single_pass = cmd.mode != Mode.SWIGLU
        k_next_last = self.k_left <= 2 * rows
        n_next_last = self.n_left <= 2 * cols
        m_next_last = self.m_left <= 2 * mb
        k_first_last = self.k_restart[0]
        m.d.comb += [after[f].eq(self.regs[f]) for f in self.FIELDS]
        k_restart = [
            after["k0"].eq(0),
            after["k_left"].eq(cmd.k),
            after["last_k"].eq(k_first_last),
            after["k_valid"].eq(self.k_restart[1]),
        ]
        with m.If(~self.last_k):
            m.d.comb += [
                after["k0"].eq(self.k0 + rows),
                after["k_left"].eq(k_more),
                after["last_k"].eq(k_next_last),
                after["k_valid"].eq(Mux(k_next_last, k_more, rows)),
                after["final"].eq(k_next_last & self.last_pass),
                after["last_tile"].eq(k_next_last & self.last_pass & self.last_n & self.last_m),
            ]
        with m.Elif(~self.last_pass):
            m.d.comb += [*k_restart, after["second"].eq(1), after["last_pass"].eq(1)]
            m.d.comb += [
                after["final"].eq(k_first_last),
                after["last_tile"].eq(k_first_last & self.last_n & self.last_m),
            ]
        with m.Elif(~self.last_n):
            m.d.comb += [*k_restart, after["second"].eq(0), after["n_tile"].eq(self.n_tile + 1)]
            m.d.comb += [
                after["last_pass"].eq(single_pass),
                after["final"].eq(k_first_last & single_pass),
                after["last_tile"].eq(k_first_last & single_pass & n_next_last & self.last_m),
                after["n_left"].eq(n_more),
                after["last_n"].eq(n_next_last),
                after["n_valid"].eq(Mux(n_next_last, n_more, cols)),
            ]
        with m.Else():
            m.d.comb += [*k_restart, after["second"].eq(0)]
            m.d.comb += [
                after["n_tile"].eq(0),
                after["n_left"].eq(cmd.n),
                after["last_n"].eq(self.n_restart[0]),
                after["n_valid"].eq(self.n_restart[1]),
                after["last_pass"].eq(single_pass),
                after["final"].eq(k_first_last & single_pass),
                after["last_tile"].eq(k_first_last & single_pass & self.n_restart[0] & m_next_last),
                after["m_left"].eq(m_more),
                after["last_m"].eq(m_next_last),
                after["block_last"].eq(Mux(m_next_last, self.m_left - (mb + 1), mb - 1)),
            ]


def _times_const(x, c: int):
    """`x · c` as shifts and adds of `x`, one per set bit of `c`.

    synth_ecp5 maps a `*` by a constant to a combinational DSP; at C = 9 the
    command check's multiply-then-compare through it took 18.5 ns.
    """
    terms = [x << i for i in range(c.bit_length()) if c >> i & 1]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _decision_copies(name: str, groups: tuple[str, ...]) -> dict[str, Signal]:
    """One register per group of loads, all given the same next value by the caller.

    The `keep` attribute makes `flow.runs`' synthesis script keep the copies apart.
    """
    return {g: Signal(name=f"{name}_{g}", attrs={"keep": 1}) for g in groups}


def status_members() -> dict[str, wiring.Member]:
    """The status of a GEMM command's run: the tile sequencer's, passed on by `GemmEngine`."""
    return {
        "busy": Out(1),
        "done": Out(1),
        "error": Out(CommandError),
        "counters": Out(counter_layout()),
        "counters_clear": In(1),
    }


class _Format:
    """What a command's weight format changes in the loader and the issuer.

    In a build without compressed paths every method returns today's
    expressions (plain ints where they were constants), so that build's logic
    is exactly the dense engine's.
    """

    def __init__(self, m: Module, cfg: AccelConfig, cmd) -> None:
        self.m, self.cfg = m, cfg
        lanes = cfg.weight_rows_per_beat
        self.sparse = cmd.fmt.sparse if cfg.sparse_2_4 else 0
        self.int4 = cmd.fmt.int4 if cfg.int4_weights else 0
        self.compressed = (self.sparse | self.int4) if cfg.sparse_2_4 or cfg.int4_weights else 0
        # int4 2:4: a byte's two nibbles are two array rows; int4 dense: one PE's pair.
        self.nibbles = self.sparse & self.int4 if nibble_rows(cfg) else 0
        self.pair = (self.int4 & ~self.sparse) if cfg.int4_weights else 0
        # Array rows a value beat writes: 2L for int4 2:4.
        self.value_step = Mux(self.nibbles, 2 * lanes, lanes) if nibble_rows(cfg) else lanes
        if nibble_rows(cfg):
            # The array's weight port is 2L rows wide: an int8 beat writes half of it
            # (`half`), at `addr`, the array row of lane 0 (a multiple of 2L).
            self.addr = Signal(range(cfg.rows), name="ld_addr")
            self.half = Signal(name="ld_half")

    def value_rows(self, k_valid):
        """Array rows of a tile's value part: the K rows of a dense int8 tile, else R."""
        if self.cfg.sparse_2_4 or self.cfg.int4_weights:
            return Mux(self.compressed, self.cfg.rows, k_valid)
        return k_valid

    def one_beat(self, k_valid):
        """A tile of `k_valid` K positions loads its values in one beat.

        A compressed tile's R value rows are known from the format alone, so the
        compare of `k_valid` (the walker's next-tile value, itself behind a carry
        chain) serves only dense int8 tiles and sits beside the format's select.
        """
        lanes = self.cfg.weight_rows_per_beat
        if self.cfg.sparse_2_4 or self.cfg.int4_weights:
            return Mux(self.compressed, self.value_step >= self.cfg.rows, k_valid <= lanes)
        return k_valid <= lanes

    def restart(self) -> list:
        """Statements that start a tile's (or part's) weight addresses."""
        if not nibble_rows(self.cfg):
            return []
        return [self.addr.eq(0), self.half.eq(0)]

    def advance(self) -> list:
        """Statements that step the weight address past one value beat."""
        if not nibble_rows(self.cfg):
            return []
        step = self.half | self.nibbles
        return [
            self.addr.eq(Mux(step, self.addr + 2 * self.cfg.weight_rows_per_beat, self.addr)),
            self.half.eq(~self.half & ~self.nibbles),
        ]

    def w_addr(self, ld_row):
        """The array row of weight lane 0 for the beat at tile row `ld_row`."""
        return self.addr if nibble_rows(self.cfg) else ld_row

    def weight_rows(self, payload):
        """The array's weight lanes from a beat: as is, or (int4 2:4) nibbles sign-extended."""
        cfg = self.cfg
        if not nibble_rows(cfg):
            return payload
        lanes = cfg.weight_rows_per_beat
        rows = Signal(weight_beat_layout(cfg, weight_lanes(cfg)), name="ld_w_rows")
        for i in range(2 * lanes):
            for c in range(cfg.cols):
                byte = payload[i // 2][c]
                nibble = byte[4 * (i % 2) : 4 * (i % 2) + 4].as_signed()
                self.m.d.comb += rows[i][c].eq(Mux(self.nibbles, nibble, payload[i % lanes][c]))
        return rows

    def index_rows(self, payload):
        """A 2:4 index beat as positions: byte c of row q holds rows 4q … 4q+3 of column c."""
        cfg = self.cfg
        rows = Signal(
            data.ArrayLayout(data.ArrayLayout(unsigned(IDX_BITS), cfg.cols), index_lanes(cfg)),
            name="ld_i_rows",
        )
        for i in range(index_lanes(cfg)):
            for c in range(cfg.cols):
                byte = payload[i // 4][c]
                self.m.d.comb += rows[i][c].eq(byte[IDX_BITS * (i % 4) : IDX_BITS * (i % 4 + 1)])
        return rows

    def lane_writes(self, i: int, ld_row, k_valid, ld_idx):
        """Weight lane i writes in this beat (its row is in the tile, the beat is a value beat)."""
        cfg = self.cfg
        lanes = cfg.weight_rows_per_beat
        if not (cfg.sparse_2_4 or cfg.int4_weights):
            return ld_row + i < k_valid
        inside = ld_row + i % lanes < self.value_rows(k_valid)
        if nibble_rows(cfg):
            # Byte beats fill the lower (`half` clear) or upper L lanes; int4 2:4 beats all.
            inside = self.nibbles | ((self.half == (i >= lanes)) & inside)
        return ~ld_idx & inside if cfg.sparse_2_4 else inside

    def issue(self, a_row, act, k_valid) -> None:
        """Drive the array's activation lanes: the first `k_valid` K positions of the beat.

        The lanes are not gated by the injection: the row's valid bit (`tag.valid`)
        travels beside it and the array computes only valid rows, so the late
        `act.valid` stays out of these lanes' logic (behind it, their zeroing was
        the 97.9 MHz path of the formats build on ECP5).

        A 2R-position command (2:4, int4) passes its lanes as they are. An int8
        dense command in a 2:4 build puts x[2g + j] on lane 4g + j (j < 2),
        where the array's dense positions (row mod 2) pick it; in an int4 build
        without 2:4, x[r] on lane 2r (the lane of PE row r's multiplier).
        """
        m, cfg = self.m, self.cfg
        wide = self.sparse if cfg.sparse_2_4 and not cfg.int4_weights else self.compressed
        if not (cfg.sparse_2_4 or cfg.int4_weights):
            for r in range(cfg.rows):
                m.d.comb += a_row[r].eq(Mux(r < k_valid, act[r], 0))
            return
        for lane in range(2 * cfg.rows):
            if cfg.sparse_2_4:
                group, j = divmod(lane, 4)
                src = 2 * group + j if j < 2 else None
            else:
                src = lane // 2 if lane % 2 == 0 else None
            if src is not None:
                use = Mux(wide, lane < k_valid, src < k_valid)
                value = Mux(wide, act[lane], act[src])
            else:
                use, value = wide & (lane < k_valid), act[lane]
            m.d.comb += a_row[lane].eq(Mux(use, value, 0))

    def kept(self, k_valid):
        """MACs a row does per column: its K positions, half of them for 2:4."""
        if not self.cfg.sparse_2_4:
            return k_valid
        return Mux(self.sparse, k_valid >> 1, k_valid)


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
        cmd_layout = gemm_command_layout(cfg, param_rows)
        act_row = data.ArrayLayout(signed(cfg.act_bits), activation_lanes(cfg))
        index = {}
        if cfg.sparse_2_4:
            positions = data.ArrayLayout(unsigned(IDX_BITS), cfg.cols)
            index = {
                "i_row": Out(data.ArrayLayout(positions, index_lanes(cfg))),
                "i_addr": Out(range(cfg.rows)),
                "i_we": Out(index_lanes(cfg)),
            }
        super().__init__(
            {
                "cmd": In(stream.Signature(cmd_layout)),
                "act": In(stream.Signature(act_row)),
                "weight": In(stream.Signature(weight_beat_layout(cfg))),
                "a_row": Out(act_row),
                "sel": Out(1),
                "w_row": Out(weight_beat_layout(cfg, weight_lanes(cfg))),
                "w_addr": Out(range(cfg.rows)),
                "w_bank": Out(1),
                "w_we": Out(weight_lanes(cfg)),
                **({"w_pair": Out(1)} if cfg.int4_weights else {}),
                "tag": Out(tag_layout(cfg, m_block, param_rows)),
                "current": Out(cmd_layout),
                "credit_return": In(1),
                "pp_busy": In(1),
                **status_members(),
                **index,
            }
        )

    def _command_cause(self, m: Module, checking: Signal) -> tuple[Signal, Signal]:
        """Why the command being checked is rejected (`NONE`: it runs), from registered checks.

        Also returns `runs`, a register of its own that is high when no check
        fails: the start decision reads that one flip-flop rather than the
        cause's priority over every check (that chain in front of the issue
        decision was a 91.6 MHz path of the compressed builds on ECP5).
        """
        cfg, cmd, cols = self.cfg, self.current, self.cfg.cols
        p = cmd
        # `n` columns fit beside `param`: `n ≤ (param_rows − param) · C`.
        capacity = self.param_rows * cols

        def too_wide(param):
            return p.n + _times_const(param, cols) > capacity

        checks = {
            "zero_dim": (p.m == 0) | (p.k == 0) | (p.n == 0),
            "m_too_large": p.m > cfg.max_tokens,
            "k_too_large": p.k > max_gemm_k(cfg),
            "bad_mode": p.mode.as_value() > Mode.WIDE.value,
            "bad_param": (p.param_a >= self.param_rows)
            | too_wide(p.param_a)
            | ((p.mode == Mode.SWIGLU) & ((p.param_b >= self.param_rows) | too_wide(p.param_b))),
        }
        causes = {
            "zero_dim": CommandError.ZERO_DIM,
            "m_too_large": CommandError.M_TOO_LARGE,
            "k_too_large": CommandError.K_TOO_LARGE,
            "bad_mode": CommandError.BAD_MODE,
            "bad_param": CommandError.PARAM_RANGE,
        }
        if cfg.sparse_2_4 or cfg.int4_weights:
            checks["bad_format"] = (p.fmt.sparse & ((p.k[:2] != 0) if cfg.sparse_2_4 else 1)) | (
                p.fmt.int4 & (not cfg.int4_weights)
            )
            causes["bad_format"] = CommandError.BAD_MODE
        failed = {name: Signal(name=name) for name in checks}
        runs = Signal(init=1, name="command_runs")
        fails = Signal(name="command_fails")
        m.d.comb += fails.eq(Cat(*checks.values()).any())
        with m.If(checking):
            m.d.sync += [failed[name].eq(check) for name, check in checks.items()]
            m.d.sync += runs.eq(~fails)
        cause = Signal(CommandError)
        chain = None
        for name, flag in failed.items():
            chain = m.If(flag) if chain is None else m.Elif(flag)
            with chain:
                m.d.comb += cause.eq(causes[name])
        return cause, runs

    def _weight_loader(
        self,
        m: Module,
        fmt: _Format,
        loader: _Walker,
        ld_fire: dict,
        ld_row: Signal,
        ld_bank: Signal,
        ld_end: Signal,
        ld_last: Signal,
        ld_idx: Signal | None,
    ) -> None:
        """The weight port's lanes and the loader's row, part and tile steps on `ld_fire`.

        `ld_idx` (2:4 builds only) marks the index part of a 2:4 tile.
        """
        cfg, rows = self.cfg, self.cfg.rows
        m.d.comb += [
            self.w_row.eq(fmt.weight_rows(self.weight.payload)),
            self.w_addr.eq(fmt.w_addr(ld_row)),
            self.w_bank.eq(ld_bank),
        ]
        if cfg.int4_weights:
            m.d.comb += self.w_pair.eq(fmt.pair)
        for i in range(weight_lanes(cfg)):
            m.d.comb += self.w_we[i].eq(
                ld_fire["we"] & fmt.lane_writes(i, ld_row, loader.k_valid, ld_idx)
            )
        if cfg.sparse_2_4:
            m.d.comb += [
                self.i_row.eq(fmt.index_rows(self.weight.payload)),
                self.i_addr.eq(ld_row),
            ]
            for i in range(index_lanes(cfg)):
                m.d.comb += self.i_we[i].eq(ld_fire["we"] & ld_idx)
        loader.step(m, ld_fire["walk"] & ld_last & ~loader.last_tile)
        step, rows_now = fmt.value_step, fmt.value_rows(loader.k_valid)
        if cfg.sparse_2_4:
            step = Mux(ld_idx, index_lanes(cfg), step)
            rows_now = Mux(ld_idx, rows, rows_now)
        with m.If(ld_fire["walk"]):
            if cfg.sparse_2_4:
                # The value part of a 2:4 tile ends: its positions follow.
                with m.If(ld_end & fmt.sparse & ~ld_idx):
                    one_beat = index_lanes(cfg) >= rows
                    m.d.sync += [ld_row.eq(0), ld_idx.eq(1), ld_end.eq(one_beat)]
                    m.d.sync += [ld_last.eq(one_beat), *fmt.restart()]
                tile_end = m.Elif(ld_end)
            else:
                tile_end = m.If(ld_last)
            with tile_end:
                one_beat = fmt.one_beat(loader.after["k_valid"])
                m.d.sync += [ld_row.eq(0), ld_end.eq(one_beat)]
                m.d.sync += fmt.restart()
                if cfg.sparse_2_4:
                    m.d.sync += [ld_last.eq(one_beat & ~fmt.sparse), ld_idx.eq(0)]
            with m.Else():
                ends = ld_row + 2 * step >= rows_now
                m.d.sync += [ld_row.eq(ld_row + step), ld_end.eq(ends)]
                m.d.sync += fmt.advance()
                if cfg.sparse_2_4:
                    m.d.sync += ld_last.eq(ends & (~fmt.sparse | ld_idx))

    def _counters(
        self,
        m: Module,
        fmt: _Format,
        issuer: _Walker,
        inject,
        can_issue,
        issuing,
        full,
        is_bank,
        has_credit,
    ) -> None:
        """The performance counters: each busy cycle lands in exactly one bucket."""
        cfg, rows, cols = self.cfg, self.cfg.rows, self.cfg.cols
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
        # A row's MACs: up to R·C, 2R·C for an int4 pair tile (2R K positions).
        row_macs = Signal(range((2 if cfg.int4_weights else 1) * rows * cols + 1))
        m.d.sync += [
            row_k.eq(Mux(inject, fmt.kept(issuer.k_valid), 0)),
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

    def elaborate(self, platform):
        m = Module()
        cfg, cmd = self.cfg, self.current
        rows = cfg.rows

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
        cause, runs = self._command_cause(m, checking)
        invariant(m, runs == (cause == CommandError.NONE), "start flag disagrees with the checks")

        loader = _Walker(m, cfg, cmd, self.m_block, "ld")
        issuer = _Walker(m, cfg, cmd, self.m_block, "is")
        ld_row = Signal(range(rows))
        ld_bank = Signal()
        is_row = Signal(range(self.m_block))
        is_bank = Signal()
        # `ld_row + lanes >= loader.k_valid` (the beat ends the tile) and
        # `is_row == issuer.block_last`, kept as registers beside the row counters.
        ld_last, row_last = Signal(), Signal()
        fmt = _Format(m, cfg, cmd)
        if cfg.sparse_2_4:
            # A 2:4 tile loads in two parts, values then positions (`ld_idx`): `ld_end`
            # ends a part, `ld_last` the tile.
            ld_end, ld_idx = Signal(), Signal()
        else:
            ld_end, ld_idx = ld_last, None

        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += cmd.eq(self.cmd.payload)
        m.d.sync += [checking.eq(self.cmd.valid & self.cmd.ready), deciding.eq(checking)]
        # The walkers start from the registered command while it is checked.
        with m.If(checking):
            m.d.sync += loader.reset(cmd) + issuer.reset(cmd)
            m.d.sync += [ld_row.eq(0), is_row.eq(0)]
            m.d.sync += fmt.restart()
        with m.If(deciding):
            one_beat = fmt.one_beat(loader.k_valid)
            m.d.sync += [ld_end.eq(one_beat), row_last.eq(issuer.block_last == 0)]
            if cfg.sparse_2_4:
                m.d.sync += [ld_last.eq(one_beat & ~fmt.sparse), ld_idx.eq(0)]
            m.d.sync += self.error.eq(cause)
            with m.If(runs):
                m.d.sync += self.busy.eq(1)
            with m.Else():
                m.d.sync += self.done.eq(1)

        # Both walkers' decisions, `weight.ready` (take a weight beat) and `can_issue`
        # (which is `act.ready`: inject an activation row), are registers, so a beat or a
        # row goes in on one AND of a flip-flop with the stream's `valid`. Each is computed
        # from the next values of the registers it reads, and kept in one copy per group of
        # loads (the `keep` attribute stops synthesis from merging the copies): one
        # `inject` net with ~500 loads cost 4 ns of routing on ECP5, and the loop that makes
        # the next decision now sees only its own few loads.
        ld_ready = _decision_copies("ld_ready", ("loop", "walk", "we", "ready"))
        ld_fire = {g: Signal(name=f"ld_fire_{g}") for g in ("loop", "walk", "we")}
        groups = ("loop", "walk", "tag", "count", "ready")
        can_issue = _decision_copies("can_issue", groups)
        inject = {g: Signal(name=f"inject_{g}") for g in groups if g != "ready"}
        for g, sig in ld_fire.items():
            m.d.comb += sig.eq(ld_ready[g] & self.weight.valid)
        for g, sig in inject.items():
            m.d.comb += sig.eq(can_issue[g] & self.act.valid)

        # Weight loader.
        m.d.comb += self.weight.ready.eq(ld_ready["ready"])
        self._weight_loader(m, fmt, loader, ld_fire, ld_row, ld_bank, ld_end, ld_last, ld_idx)

        # Issuer.
        m.d.comb += [self.act.ready.eq(can_issue["ready"]), self.sel.eq(is_bank)]
        fmt.issue(self.a_row, self.act.payload, issuer.k_valid)
        m.d.comb += [
            self.tag.valid.eq(inject["tag"]),
            self.tag.row.eq(is_row),
            self.tag.first.eq(issuer.k0 == 0),
            self.tag.final.eq(issuer.final),
            self.tag.second_pass.eq(issuer.second),
            self.tag.n_tile.eq(issuer.n_tile),
            self.tag.n_valid.eq(issuer.n_valid),
            self.tag.last.eq(issuer.last_tile & row_last),
        ]

        # The registers the two decisions read, through their next values.
        tile_loaded = ld_fire["loop"] & ld_last
        bank_done = inject["loop"] & row_last
        spend = inject["loop"] & issuer.final
        loading_next, ld_bank_next = Signal(), Signal()
        issuing_next, bank_next, full_next = Signal(), Signal(), Signal(2)
        credits_next = Signal.like(credits)
        has_credit, has_credit_next = Signal(init=1), Signal()
        all_credits = Signal(init=1)
        cool_next = [Signal.like(c, name=f"{c.name}_next") for c in cool]
        final_next = Mux(bank_done & ~issuer.last_tile, issuer.after["final"], issuer.final)
        set_full = Mux(tile_loaded, Mux(ld_bank, 0b10, 0b01), 0)
        clear_full = Mux(bank_done, Mux(is_bank, 0b10, 0b01), 0)
        m.d.comb += [
            loading_next.eq(loading & ~(tile_loaded & loader.last_tile)),
            ld_bank_next.eq(ld_bank ^ tile_loaded),
            issuing_next.eq(issuing & ~(bank_done & issuer.last_tile)),
            bank_next.eq(is_bank ^ bank_done),
            full_next.eq((full | set_full) & ~clear_full),
            credits_next.eq(credits),
            has_credit_next.eq(has_credit),
        ]
        for b in range(2):
            m.d.comb += cool_next[b].eq(
                Mux(clear_full[b], self.cooldown, Mux(cool[b] == 0, 0, cool[b] - 1))
            )
        with m.If(deciding & runs):
            m.d.comb += [loading_next.eq(1), issuing_next.eq(1)]
        with m.If(checking):
            m.d.comb += [ld_bank_next.eq(0), bank_next.eq(0)]
        invariant(m, ~spend | has_credit, "a final row injected without a credit")
        invariant(m, credits <= self.credits, "more credits than post-processing buffers")
        invariant(m, all_credits == (credits == self.credits), "all_credits off the count")
        # `all_credits` next: from compares of the registered count, then one select by
        # the returning credit (`credit_return` crosses the chip from post-processing: a
        # compare of the next count behind it was a 99.3 MHz path on ECP5).
        all_credits_next = Signal()
        full_now, one_short = credits == self.credits, credits == self.credits - 1
        m.d.comb += all_credits_next.eq(
            Mux(self.credit_return, Mux(spend, full_now, one_short), ~spend & full_now)
        )
        with m.If(spend & ~self.credit_return):
            m.d.comb += [credits_next.eq(credits - 1), has_credit_next.eq(credits != 1)]
        with m.Elif(~spend & self.credit_return):
            m.d.comb += [credits_next.eq(credits + 1), has_credit_next.eq(1)]
        m.d.sync += [
            loading.eq(loading_next),
            ld_bank.eq(ld_bank_next),
            issuing.eq(issuing_next),
            is_bank.eq(bank_next),
            full.eq(full_next),
            credits.eq(credits_next),
            has_credit.eq(has_credit_next),
            all_credits.eq(all_credits_next),
            *(cool[b].eq(cool_next[b]) for b in range(2)),
        ]
        bank_free_next = ~full_next.bit_select(ld_bank_next, 1) & (
            Mux(ld_bank_next, cool_next[1], cool_next[0]) == 0
        )
        ld_ready_next = loading_next & bank_free_next
        can_issue_next = (
            issuing_next & full_next.bit_select(bank_next, 1) & (~final_next | has_credit_next)
        )
        m.d.sync += [copy.eq(ld_ready_next) for copy in ld_ready.values()]
        m.d.sync += [copy.eq(can_issue_next) for copy in can_issue.values()]

        # The rest of the issuer's state steps on its own copy of the decision.
        issuer.step(m, inject["walk"] & row_last & ~issuer.last_tile)
        with m.If(inject["walk"]):
            with m.If(row_last):
                m.d.sync += is_row.eq(0)
                m.d.sync += row_last.eq(
                    Mux(
                        issuer.final & issuer.last_n,
                        issuer.next_block_single,
                        issuer.block_last == 0,
                    )
                )
            with m.Else():
                m.d.sync += [is_row.eq(is_row + 1), row_last.eq(is_row + 1 == issuer.block_last)]

        # Completion: every final row has left the engine and post-processing is empty
        # (four registers into one LUT: `pp_busy` comes from across the chip).
        with m.If(self.busy & ~issuing & all_credits & ~self.pp_busy):
            m.d.sync += [self.busy.eq(0), self.done.eq(1)]

        self._counters(
            m, fmt, issuer, inject["count"], can_issue["count"], issuing, full, is_bank, has_credit
        )
        return m
