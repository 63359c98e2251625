"""The RTL's side of the register map: `contract.regs` (defined once there) and the
sequencer's descriptor as a `lib.data.StructLayout` generated from `contract.descriptor`."""

from __future__ import annotations

from amaranth import unsigned
from amaranth.lib import data

from contract.descriptor import DESCRIPTOR_FIELDS
from contract.regs import (
    CONTROL_BLOCK,
    COUNTER_BITS,
    COUNTER_BLOCK,
    COUNTER_SOURCES,
    DESCRIPTOR_BLOCK,
    ID_BLOCK,
    ID_MAGIC,
    REGISTER_MAP,
    REGMAP_VERSION,
    WINDOW_BLOCK,
    Access,
    Block,
    ErrorCause,
    FFNKind,
    Field,
    PlacedRegister,
    Reg,
    Register,
    RegisterMap,
    RoutingMode,
    SharedExpert,
    config_hash,
)
from pymodel.config import AccelConfig

__all__ = [
    "CONTROL_BLOCK",
    "COUNTER_BITS",
    "COUNTER_BLOCK",
    "COUNTER_SOURCES",
    "DESCRIPTOR_BLOCK",
    "ID_BLOCK",
    "ID_MAGIC",
    "REGISTER_MAP",
    "REGMAP_VERSION",
    "WINDOW_BLOCK",
    "Access",
    "Block",
    "ErrorCause",
    "FFNKind",
    "Field",
    "PlacedRegister",
    "Reg",
    "Register",
    "RegisterMap",
    "RoutingMode",
    "SharedExpert",
    "config_hash",
    "descriptor_layout",
]


def descriptor_layout(cfg: AccelConfig) -> data.StructLayout:
    """The descriptor the top hands its sequencer, from `contract.descriptor.DESCRIPTOR_FIELDS`."""
    return data.StructLayout({f.name: unsigned(f.width(cfg)) for f in DESCRIPTOR_FIELDS})
