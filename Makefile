# All set-up lives here: every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint soak coverage formal bench fullsize notebooks clean synth verilog synth-sweep resource-fit lz4-headers

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory lz4-headers
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[ref,dev,fpga,notebooks]'
	touch $(STAMP)

# FST waveforms need the lz4 headers (Debian/Ubuntu `liblz4-dev`): installed when missing and
# running as root with apt-get (as CI does), else the command to run is printed (VCD works
# without them: `--waves run.fst` then writes run.vcd with a warning).
lz4-headers:
	@if command -v dpkg >/dev/null 2>&1 && dpkg -s liblz4-dev >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing liblz4-dev (lz4 headers, for FST waveforms)"; \
	  { apt-get install -y -qq liblz4-dev >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y -qq liblz4-dev >/dev/null; }; } || \
	  echo "note: could not install liblz4-dev; waveforms will be VCD"; \
	else \
	  echo "note: FST waveforms need the lz4 headers: sudo apt-get install liblz4-dev" \
	    "(Debian/Ubuntu; lz4-devel on Fedora); without them waveforms are VCD"; \
	fi

demo: $(STAMP)
	$(BIN)/moe-accel demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest

# The long randomised runs, among them 10,000 random layers, spread over the cores (pytest-xdist);
# every declared functional bin must be hit (sim/tb/functional_coverage.py, summed over workers).
soak: $(STAMP)
	$(BIN)/python -m pytest -m slow -n auto -p sim.tb.functional_coverage

# The RTL tests on Verilator coverage builds (own cache under build/coverage/): line, branch and
# toggle coverage per module, before and after sim/coverage_waivers.toml, with the functional
# bins, in build/coverage/report.md (annotated Verilog, lcov .info beside it); tables into
# docs/verification.md. COVERAGE_ARGS go to pytest (e.g. COVERAGE_ARGS="-n 2").
COVERAGE_ARGS ?=
coverage: $(STAMP)
	$(BIN)/python -m sim.coverage --write-doc docs/verification.md -- $(COVERAGE_ARGS)

# Every bounded proof (tests/rtl/test_formal.py), the deep ones included; make test runs the
# shallow subset.
formal: $(STAMP)
	$(BIN)/python -m pytest -m formal tests/rtl/test_formal.py

# Expert-GEMM MAC utilisation, whole layers vs the roofline and simulation speed, the cycle
# model against the RTL, a 5,000-trial design-space study (twice, same seed): writes
# bench/results.json, bench/results.md (copied into docs/benchmarks.md) and docs/img/*.png.
bench: $(STAMP)
	$(BIN)/python bench/gemm_bench.py
	$(BIN)/python bench/layer_bench.py
	$(BIN)/python bench/format_bench.py
	$(BIN)/python bench/offload_bench.py
	$(BIN)/python bench/offload_model.py
	$(BIN)/python bench/calibrate.py
	$(BIN)/python bench/explore_bench.py
	$(BIN)/python bench/plots.py

# One Mixtral-8x7B and one DeepSeek-V3 layer decode step (T = 1) on the Verilator backend
# (configs/fullsize.json), bit-exact against the golden model, each in its own process: wall
# time, peak RSS, cycles beside the cycle model and the roofline (docs/simulation.md).
fullsize: $(STAMP)
	$(BIN)/python bench/fullsize.py mixtral_8x7b
	$(BIN)/python bench/fullsize.py deepseek_v3

# Co-design notebooks, executed in place (plots and tables land in the .ipynb files).
notebooks: $(STAMP)
	$(BIN)/jupyter-execute --inplace notebooks/*.ipynb

# FPGA: `make synth CONFIG=configs/4x4.json` (DEVICE=ice40-up5k, TOP=systolic_array also work);
# `make verilog TOP=moe_accel` for the whole accelerator (the default TOP is the GEMM engine).
CONFIG ?= configs/default.json
TOP ?= gemm_engine
DEVICE ?= ecp5-85f
SWEEP_CONFIGS ?= configs/4x4.json configs/default.json configs/9x9.json configs/10x10.json

synth: $(STAMP)
	$(BIN)/moe-accel synth run --config $(CONFIG) --top $(TOP) --device $(DEVICE)

verilog: $(STAMP)
	$(BIN)/moe-accel synth verilog --config $(CONFIG) --top $(TOP)

synth-sweep: $(STAMP)
	$(BIN)/moe-accel synth sweep $(SWEEP_CONFIGS) --top $(TOP) --doc docs/fpga.md

# The resource model's fitting table (pymodel/data/resource_fit.csv): yosys netlists of a
# documented set of configs (bench/resource_sweep.py), then its held-out errors.
resource-fit: $(STAMP)
	$(BIN)/python bench/resource_sweep.py
	$(BIN)/python -m pymodel.resources

clean:
	rm -rf $(VENV) build sim_build .pytest_cache
