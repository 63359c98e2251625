"""Streaming top-k selector: one candidate per cycle, ties to the lower index.

The gate unit ranks router logits, biased sigmoid scores and group scores with
it. A sorted register list of `k` (value, index) entries is kept; every
candidate is compared with all `k` entries in parallel (one comparator per
entry, no tree to wait on) and inserted at its rank, the entries below it
shifting down by one. "Better" is `value` greater, or `value` equal and `index`
lower, so the result is the golden model's stable top-k (`topk_lower_index`)
whatever order the candidates arrive in.

Because the list holds the best `k` candidates in order, its first `k'`
entries are the top-`k'` for every `k' ≤ k`: a runtime top-k needs no other
hardware.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Shape, ShapeCastable, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TopK", "topk_entry_layout"]


def topk_entry_layout(value_shape: Shape, index_width: int) -> data.StructLayout:
    """Layout of one ranked entry: `valid` is low until a candidate fills the slot."""
    return data.StructLayout(
        {"value": value_shape, "index": unsigned(index_width), "valid": unsigned(1)}
    )


class TopK(wiring.Component):
    """Keep the `k` best (value, index) candidates seen since the last `clear`.

    Parameters
    ----------
    k : int
        Entries kept (≥ 1).
    value_shape : shape
        Shape of the ranked value (signed or unsigned).
    index_width : int
        Width of the candidate index (≥ 1).

    Ports
    -----
    cand : In(stream)
        Candidates {value, index}; always ready (one per cycle).
    clear : In(1)
        Empty the list this cycle; a candidate in the same cycle starts the new list.
    entries : Out(ArrayLayout(entry, k))
        The ranked list, best first, updated one cycle after each candidate.
    """

    def __init__(self, k: int, value_shape: ShapeCastable, index_width: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"TopK.k must be an int >= 1, got {k!r}")
        if not isinstance(index_width, int) or index_width < 1:
            raise ValueError(f"TopK.index_width must be an int >= 1, got {index_width!r}")
        self.k = k
        self.value_shape = Shape.cast(value_shape)
        self.index_width = index_width
        entry = topk_entry_layout(self.value_shape, index_width)
        cand = data.StructLayout({"value": self.value_shape, "index": unsigned(index_width)})
        super().__init__(
            {
                "cand": In(stream.Signature(cand, always_ready=True)),
                "clear": In(1),
                "entries": Out(data.ArrayLayout(entry, k)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        value = self.cand.payload.value
        index = self.cand.payload.index
        # Entries as they stand this cycle (an empty list after `clear`).
        cur = [
            {
                "value": self.entries[j].value,
                "index": self.entries[j].index,
                "valid": self.entries[j].valid & ~self.clear,
            }
            for j in range(self.k)
        ]
        beats = []
        for j, e in enumerate(cur):
            b = Signal(name=f"beats{j}")
            m.d.comb += b.eq(
                ~e["valid"] | (value > e["value"]) | ((value == e["value"]) & (index < e["index"]))
            )
            beats.append(b)
        with m.If(self.clear):
            for j in range(self.k):
                m.d.sync += self.entries[j].valid.eq(0)
        with m.If(self.cand.valid):
            for j in range(self.k):
                dst = self.entries[j]
                above = beats[j - 1] if j else Const(0)
                with m.If(beats[j] & ~above):
                    m.d.sync += [dst.value.eq(value), dst.index.eq(index), dst.valid.eq(1)]
                with m.Elif(beats[j] & above):
                    src = cur[j - 1]
                    m.d.sync += [
                        dst.value.eq(src["value"]),
                        dst.index.eq(src["index"]),
                        dst.valid.eq(src["valid"]),
                    ]
        return m
