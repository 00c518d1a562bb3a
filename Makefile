# `make test` and `make train` each create .venv if missing, install the package, then run.
# TORCH_SPEC pins torch before anything else can pull a (CUDA) build from the registry.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: test train install clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q tests

train: $(STAMP)
	$(BIN)/bpmt-fast train --config configs/quick.yaml

clean:
	rm -rf $(VENV) build *.egg-info $(TRITON_SECOND_DIR)

# Every kernel specialization compiled for sm80 and sm90 with the venv's triton (3.9) and with TRITON_SECOND (what
# CUDA builds of torch 2.11 ship), merged into benchmarks/results/compile-report.json + .md. CPU only: from
# scratch ~2.4 s per compile and core (one triton, 450 compiles: 18 min on 2 busy cores); specializations whose
# kernel source, signature and options are unchanged are reused from the committed report (then ~20 s). The second triton lives in its own folder on PYTHONPATH (pure compile, never meets torch).
TRITON_SECOND ?= 3.6.0
TRITON_SECOND_DIR := .triton-$(TRITON_SECOND)
COMPILE_REPORT := benchmarks/results/compile-report.json
.PHONY: compile-report
compile-report: $(STAMP)
	test -d $(TRITON_SECOND_DIR) || $(BIN)/python -m pip install --quiet --no-deps --target $(TRITON_SECOND_DIR) "triton==$(TRITON_SECOND)"
	env -u TRITON_INTERPRET PYTHONPATH=$(TRITON_SECOND_DIR) $(BIN)/python -m bpmt_fast.bench.compile_report --rows-only $(TRITON_SECOND_DIR)/rows.json --cache $(COMPILE_REPORT)
	env -u TRITON_INTERPRET $(BIN)/python -m bpmt_fast.bench.compile_report --merge $(TRITON_SECOND_DIR)/rows.json --readme README.md --cache $(COMPILE_REPORT)

# On a CUDA machine: no venv, no install, no internet. The machine's python (PYTHON=...) runs the source tree
# (bpmt_fast maps kernels/ itself); PYTHONPATH keeps what is already there (e.g. carried xformers wheels).
# Options: make gpu-check GPU_CHECK_ARGS="--budget-s 450 --out DIR". Refused (exit status 2) without CUDA.
.PHONY: gpu-check
gpu-check:
	@$(PYTHON) -c "import torch" 2>/dev/null || { echo "make gpu-check: error: $(PYTHON) cannot import torch; name a python that can: make gpu-check PYTHON=..." >&2; exit 2; }
	@PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PYTHON) -m bpmt_fast.cli gpu-check $(GPU_CHECK_ARGS)
