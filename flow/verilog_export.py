"""Standalone Verilog of any synthesisable top, plus a Markdown description of its ports.

Why: users of vendor tools (Vivado, Quartus, Radiant, Diamond) take a
single Verilog file, not Amaranth. Amaranth flattens every `lib.data`
payload into one vector port and names nested interface members
`outer__inner`, so the field layout inside each vector is invisible in
the Verilog; the Markdown written beside it is generated from the
component's signature and gives every port's direction and width and
every field's bit range (`[offset +: width]`), enum values and stream
handshake rules.
"""

from __future__ import annotations

import enum as py_enum
from pathlib import Path

from amaranth import Shape
from amaranth.back import verilog
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In

from pymodel.config import AccelConfig
from rtl.checks import simulation_checks

__all__ = ["describe_ports", "export_verilog"]

_EXPAND_ARRAYS_UP_TO = 4
"""Arrays longer than this are described once with an index formula."""


def _type_name(shape) -> str:
    if isinstance(shape, type) and issubclass(shape, py_enum.Enum):
        values = ", ".join(f"{m.name}={m.value}" for m in shape)
        return f"enum {shape.__name__} {{{values}}}"
    if isinstance(shape, data.ArrayLayout):
        return f"{shape.length} × {_type_name(shape.elem_shape)}"
    if isinstance(shape, data.StructLayout):
        return "struct"
    if isinstance(shape, data.UnionLayout):
        return "union"
    cast = Shape.cast(shape)
    return f"{'signed' if cast.signed else 'unsigned'} {cast.width}"


def _fields(shape, name: str, offset: str) -> list[tuple[str, str, str]]:
    """(field, bits, type) rows for the inside of a structured shape, recursively."""
    rows: list[tuple[str, str, str]] = []
    if isinstance(shape, data.ArrayLayout):
        width = Shape.cast(shape.elem_shape).width
        if shape.length <= _EXPAND_ARRAYS_UP_TO:
            for i in range(shape.length):
                rows += _leaf(shape.elem_shape, f"{name}[{i}]", _add(offset, str(i * width)))
        else:
            every = f" (i = 0 … {shape.length - 1})"
            for field, bits, kind in _leaf(
                shape.elem_shape, f"{name}[i]", _add(offset, f"{width}·i")
            ):
                rows.append((field, bits, kind + every))
    elif isinstance(shape, data.StructLayout | data.UnionLayout):
        for field_name, field in shape:
            rows += _leaf(field.shape, f"{name}.{field_name}", _add(offset, str(field.offset)))
    return rows


def _leaf(shape, name: str, offset: str) -> list[tuple[str, str, str]]:
    width = Shape.cast(shape).width
    row = [(name, f"[{offset} +: {width}]", _type_name(shape))]
    if isinstance(shape, data.Layout):
        return row + _fields(shape, name, offset)
    return row


def _add(base: str, extra: str) -> str:
    if base == "0":
        return extra
    if extra == "0":
        return base
    return f"{base} + {extra}"


def describe_ports(component: wiring.Component, name: str, cfg: AccelConfig | None = None) -> str:
    """Markdown describing `component`'s Verilog ports (as `export_verilog` names them)."""
    sig = component.signature
    doc = (type(component).__doc__ or "").strip().split("\n")[0]
    lines = [
        f"# `{name}` — port description",
        "",
        f"Module `{name}`: {type(component).__name__} — {doc}" if doc else f"Module `{name}`.",
        "Generated from the component's Amaranth signature by `make verilog` (do not edit).",
    ]
    if cfg is not None:
        lines += [
            "",
            f"Configuration: {cfg.rows}×{cfg.cols} array, int{cfg.act_bits} activations, "
            f"int{cfg.weight_bits} weights, int{cfg.acc_bits} accumulators, "
            f"target {cfg.clock_mhz:g} MHz (full `AccelConfig` below).",
        ]
    lines += [
        "",
        "Clocking: one clock `clk` (all logic on its rising edge) and `rst`, a synchronous,",
        "active-high reset. Vectors are little-endian: field `[o +: w]` is bits o … o+w−1.",
        "",
        "| port | direction | width | type |",
        "|---|---|---|---|",
        "| `clk` | input | 1 | clock |",
        "| `rst` | input | 1 | synchronous reset, active high |",
    ]
    details: list[str] = []
    for path, member, _value in sig.flatten(component):
        port = "__".join(str(p) for p in path)
        direction = "input" if member.flow == In else "output"
        width = Shape.cast(member.shape).width
        lines.append(f"| `{port}` | {direction} | {width} | {_type_name(member.shape)} |")
        if isinstance(member.shape, data.Layout):
            rows = _fields(member.shape, port, "0")
            details += ["", f"### `{port}`", "", "| field | bits | type |", "|---|---|---|"]
            details += [f"| `{f}` | `{b}` | {t} |" for f, b, t in rows]
    streams = [
        "__".join(path)
        for path, member in sig.members.flatten()
        if member.is_signature and isinstance(member.signature, stream.Signature)
    ]
    if streams:
        lines += [
            "",
            "## Streams",
            "",
            "These port groups are valid/ready streams (`<name>__valid`, `__ready`, `__payload`): "
            "a beat transfers on a rising clock edge where both `valid` and `ready` are high; "
            "a source holds `valid` and `payload` until the transfer and never waits for "
            "`ready` before raising `valid`.",
            "",
            ", ".join(f"`{s}`" for s in streams),
        ]
    if details:
        lines += ["", "## Field layouts", *details]
    if cfg is not None:
        lines += ["", "## Configuration", "", "```json", cfg.to_json(), "```"]
    return "\n".join(lines) + "\n"


def export_verilog(
    component: wiring.Component,
    name: str,
    out_dir: Path | str,
    *,
    cfg: AccelConfig | None = None,
) -> tuple[Path, Path]:
    """Write `<name>.v` (module `name`, no source attributes) and `<name>_ports.md`.

    Returns both paths. The Verilog has no dependency on Amaranth or any
    library: one file, one top module, submodules inside.
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(f"export_verilog needs a lib.wiring.Component, got {type(component)}")
    if not name.isidentifier():
        raise ValueError(f"module name {name!r} is not a valid Verilog identifier")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    v_path = out / f"{name}.v"
    md_path = out / f"{name}_ports.md"
    with simulation_checks(False):  # exported Verilog never carries simulation invariants
        text = verilog.convert(component, name=name, emit_src=False)
    v_path.write_text(text)
    md_path.write_text(describe_ports(component, name, cfg))
    return v_path, md_path
