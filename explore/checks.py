"""The slow evidence for a front's points: an RTL run and a synthesis, each a Dask task.

`rtl_check` builds the config's accelerator under Verilator and runs every
workload layer at both token counts (seeded random weights and tokens, as
the RTL tests make them), bit-exact against the golden model, with the
measured cycles beside the cycle model's prediction for the same routing.
`synth_check` is `flow.runs.synth` (yosys + nextpnr on ECP5) of the GEMM
engine: measured LUT/FF/DSP/BRAM and Fmax replace the estimates.
Both return plain dicts (stored as JSON with the study), never raise for a
design that fails: the failure is the result.
"""

from __future__ import annotations

import time

from pymodel.config import AccelConfig, ConfigError

from .workload import Workload

__all__ = ["rtl_check", "synth_check"]


def rtl_check(cfg: AccelConfig, workload: Workload, seed: int) -> dict[str, object]:
    """Run `workload` on `cfg`'s RTL (Verilator backend); bit-exactness and cycles per step."""
    from pymodel.cycles import golden_cycles
    from sim.tb.layer_cases import check_outputs, make_case
    from sw_driver.device import DeviceError, VerilatorDevice

    start = time.monotonic()
    try:
        for _, spec in workload.layers:
            for tokens in (workload.decode_tokens, workload.prefill_tokens):
                cfg.check_fits(spec, tokens)
        device = VerilatorDevice(cfg)
    except ConfigError as exc:
        return {"bit_exact": False, "error": f"the RTL does not admit the workload: {exc}"}
    out: dict[str, object] = {"bit_exact": True}
    for step, tokens in (("decode", workload.decode_tokens), ("prefill", workload.prefill_tokens)):
        measured = predicted = 0
        for i, (name, spec) in enumerate(workload.layers):
            case = make_case(name, spec, cfg, tokens, seed + 7919 * i)
            try:
                res = device.run(case.ql, case.x_q)
            except DeviceError as exc:
                return {"bit_exact": False, "error": f"{name}, {tokens} tokens: {exc}"}
            try:
                check_outputs(case, res, res.tokens_per_expert)
            except AssertionError as exc:
                out["bit_exact"] = False
                first = str(exc).strip().splitlines()[0]
                out["error"] = f"{name}, {tokens} tokens: hardware differs from golden: {first}"
            measured += res.counters["cycles_total"]
            predicted += int(golden_cycles(cfg, case.golden).cycles_total[0])
        out[f"{step}_cycles_measured"] = measured
        out[f"{step}_cycles_predicted"] = predicted
    out["wall_s"] = round(time.monotonic() - start, 1)
    return out


def synth_check(cfg: AccelConfig, device: str, name: str) -> dict[str, object]:
    """`flow.runs.synth` of `cfg`'s GEMM engine on `device`: counts, Fmax, status."""
    from flow.devices import DEVICES
    from flow.errors import SynthError
    from flow.runs import synth

    try:
        rep = synth(cfg, top="gemm_engine", device=device, config_name=name)
    except SynthError as exc:
        return {"status": "error", "error": str(exc).splitlines()[0]}
    return {
        "status": rep.status,
        "luts": rep.luts + DEVICES[device].carry_luts * rep.carry,
        "ffs": rep.ffs,
        "dsps": rep.dsps,
        "brams": rep.brams,
        "fmax_mhz": rep.fmax_min_mhz,
        "wall_s": rep.wall_s,
    }
