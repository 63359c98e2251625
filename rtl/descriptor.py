"""The layer descriptor the top hands its sequencer, as a `lib.data.StructLayout`.

Generated from `contract.descriptor.DESCRIPTOR_FIELDS` (the one table of the
descriptor's fields, their widths and the registers they come from), so the
top fills it in a loop and no field is renamed on the way.
"""

from __future__ import annotations

from amaranth import unsigned
from amaranth.lib import data

from contract.descriptor import DESCRIPTOR_FIELDS
from pymodel.config import AccelConfig

__all__ = ["descriptor_layout"]


def descriptor_layout(cfg: AccelConfig) -> data.StructLayout:
    """The descriptor's layout for hardware `cfg`, field by field from the contract's table
    (fields of width 0 in `cfg` left out)."""
    return data.StructLayout(
        {f.name: unsigned(f.width(cfg)) for f in DESCRIPTOR_FIELDS if f.width(cfg)}
    )
