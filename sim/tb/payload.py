"""Python values ⇄ the flat bit vector of an Amaranth `lib.data` layout.

Amaranth's Verilog names a stream's payload `<port>__payload`, one vector
holding every field. These helpers walk the layout itself (the same object
the RTL was built from), so field order and widths are never repeated by
hand. Enum-shaped fields take a member or a raw int (so a test can send an
invalid code on purpose) and decode to plain ints.
"""

from __future__ import annotations

import enum as py_enum
from typing import Any

from amaranth.hdl import Shape, ShapeCastable
from amaranth.lib import data

__all__ = ["pack", "unpack", "width_of"]


def width_of(layout: ShapeCastable | Shape) -> int:
    """Bit width of a layout or shape."""
    return Shape.cast(layout).width


def pack(layout: ShapeCastable | Shape, value: Any) -> int:
    """Encode `value` (int for a plain shape, list for an array, dict for a struct) as an int.

    Missing struct fields are 0. Signed fields accept negative ints; the
    result is the unsigned bit pattern. A value that does not fit raises
    `ValueError` naming the field.
    """
    return _pack(layout, value, "payload")


def _pack(layout: Any, value: Any, where: str) -> int:
    if isinstance(layout, data.ArrayLayout):
        items = list(value)
        if len(items) != layout.length:
            raise ValueError(f"{where}: array needs {layout.length} elements, got {len(items)}")
        step = width_of(layout.elem_shape)
        return sum(
            _pack(layout.elem_shape, v, f"{where}[{i}]") << (i * step) for i, v in enumerate(items)
        )
    if isinstance(layout, data.Layout):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: a struct payload needs a dict, got {type(value).__name__}")
        names = {name for name, _ in layout}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}")
        bits = 0
        for name, field in layout:
            if name in value:
                bits |= _pack(field.shape, value[name], f"{where}.{name}") << field.offset
        return bits
    if isinstance(value, py_enum.Enum):
        value = value.value
    shape = Shape.cast(layout)
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "__int__") and not isinstance(value, float):
            value = int(value)
        else:
            raise TypeError(f"{where}: a {shape} field needs an int, got {type(value).__name__}")
    if shape.signed:
        lo, hi = -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    else:
        lo, hi = 0, (1 << shape.width) - 1
    if not lo <= value <= hi:
        raise ValueError(f"{where}: value {value} does not fit {shape}")
    return value & ((1 << shape.width) - 1)


def unpack(layout: ShapeCastable | Shape, bits: int) -> Any:
    """Decode an int bit pattern into ints, lists (arrays) and dicts (structs)."""
    bits = int(bits)
    if isinstance(layout, data.ArrayLayout):
        step = width_of(layout.elem_shape)
        return [unpack(layout.elem_shape, bits >> (i * step)) for i in range(layout.length)]
    if isinstance(layout, data.Layout):
        return {name: unpack(field.shape, bits >> field.offset) for name, field in layout}
    shape = Shape.cast(layout)
    bits &= (1 << shape.width) - 1
    if shape.signed and bits >> (shape.width - 1):
        bits -= 1 << shape.width
    return bits
