"""FPGA synthesis flow: Amaranth component → yosys → nextpnr → utilisation and Fmax report.

Why this package exists: the accelerator must be shown to fit and to close
timing on a real, open-toolchain FPGA (ECP5-85F), for any `AccelConfig`,
with nothing installed beyond the project's PyPI dependencies (YoWASP's
WebAssembly builds of yosys and nextpnr). Everything a user needs is one
call, `flow.runs.synth(cfg)` (or `make synth CONFIG=…`), which returns a `SynthReport`:
LUT4s, flip-flops, DSPs, block RAMs, logic-cell percentage, the achieved
Fmax of every clock, peak int8 GOPS at that Fmax and the wall time.

Flow (under `build/fpga/<device>/`, cached in two levels so an unchanged
design is never synthesised twice: the netlist directory is keyed by the
RTLIL, the synthesis command and the yosys version; inside it, `pnr-<key>/`
by the nextpnr options — target clock, seed — and the nextpnr version):

1. the named top (`flow.tops.TOPS`, e.g. `gemm_engine`) is built from the config and
   wrapped in `SynthHarness`, which registers every port behind a serial
   shift chain: the design's timing is then register to register (as inside
   a SoC) and its hundreds of port bits fit a 381-ball package in 3 pins;
2. Amaranth writes RTLIL; yosys runs `synth_ecp5` / `synth_ice40 -dsp`,
   writes the netlist JSON and its cell statistics (`stat -json`);
3. nextpnr places and routes with `--timing-allow-fail` (a timing failure
   is a result to report, not a crash), `--threads 1` (shared 2-core
   machines) and writes its JSON report (`--report`): utilisation per cell
   type, achieved Fmax per clock and the critical path.

A design that does not fit (more multipliers than the device has DSPs, say)
is a result too: when yosys' counts exceed the device, nextpnr is not run
and the report says what is short, with `status = "no-fit"`.

Tools: `YOSYS`, `NEXTPNR_ECP5`, `NEXTPNR_ICE40` (absolute paths, the
variables Amaranth's build system uses) override the YoWASP scripts
installed beside this interpreter. YoWASP compiles its WebAssembly to
machine code on first use (1–3 min for yosys on 2 cores; cached under
`~/.cache/YoWASP`): the flow detects a cold cache and says so before it
starts.

Tops are chosen by name from `TOPS` (name → callable taking an
`AccelConfig` and returning a `lib.wiring.Component`): `gemm_engine` (the
default), `moe_accel` (the whole accelerator), `systolic_array`.

Modules: `paths` (repository and build folders, no Amaranth), `devices`,
`tops` (what is synthesised), `tools` (running yosys/nextpnr), `runs`
(`synth`, `sweep`, the cache), `reports` (parsing, tables, docs/fpga.md),
`verilog_export` (standalone Verilog), `cli` (`python -m flow`). Importing
the package imports none of them, so `flow.paths` stays Amaranth-free.
"""
