"""The hardware/software contract: everything the RTL, the driver and the simulators must agree on.

Why a top-level package of its own (and not `rtl/` or `pymodel/`): the driver
(`sw_driver/`) must be usable without Amaranth, and the RTL must not reach
into the driver. Both read this package; it imports only NumPy and
`pymodel.config`, never Amaranth (a test imports it with Amaranth made
unimportable). The RTL turns its typed tables into `lib.data` layouts in
`rtl/descriptor.py`; nothing here is redefined there.

- `contract.regs`: the register map (offsets, fields, access kinds) and the
  enums written into it (`ErrorCause`, `RoutingMode`, `FFNKind`, `SharedExpert`);
- `contract.layout`: the memory layout of one layer (regions, strides, the
  weight-stream order, the expert descriptor and routing record as NumPy dtypes);
- `contract.descriptor`: the layer descriptor the top hands its sequencer
  (one table from which the RTL's `StructLayout` is generated) and the
  descriptor-validity rules, written once as predicates on Python ints and
  Amaranth values alike;
- `contract.timing`: the units' documented latencies and sizes that the
  cycle, energy and resource models use (the RTL imports them from here).
"""
