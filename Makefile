# All set-up lives here: every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint soak bench notebooks clean synth verilog synth-sweep

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[ref,dev,fpga,notebooks]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/moe-accel demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest

soak: $(STAMP)
	$(BIN)/python -m pytest -m slow

# Expert-GEMM MAC utilisation, then whole layers vs the roofline and simulation speed:
# writes bench/results.json, bench/results.md (copied into docs/benchmarks.md) and docs/img/*.png.
bench: $(STAMP)
	$(BIN)/python bench/gemm_bench.py
	$(BIN)/python bench/layer_bench.py
	$(BIN)/python bench/plots.py

# Co-design notebooks, executed in place (plots and tables land in the .ipynb files).
notebooks: $(STAMP)
	$(BIN)/jupyter-execute --inplace notebooks/*.ipynb

# FPGA: `make synth CONFIG=configs/4x4.json` (DEVICE=ice40-up5k, TOP=systolic_array also work).
CONFIG ?= configs/default.json
TOP ?= gemm_engine
DEVICE ?= ecp5-85f
SWEEP_CONFIGS ?= configs/4x4.json configs/default.json configs/9x9.json configs/10x10.json

synth: $(STAMP)
	$(BIN)/python -m rtl.fpga synth --config $(CONFIG) --top $(TOP) --device $(DEVICE)

verilog: $(STAMP)
	$(BIN)/python -m rtl.fpga verilog --config $(CONFIG) --top $(TOP)

synth-sweep: $(STAMP)
	$(BIN)/python -m rtl.fpga sweep $(SWEEP_CONFIGS) --top $(TOP) --doc docs/fpga.md

clean:
	rm -rf $(VENV) build sim_build .pytest_cache
