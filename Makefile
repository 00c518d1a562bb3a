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
	rm -rf $(VENV) build *.egg-info

# On a CUDA machine: no venv, no install, no internet. The machine's python (PYTHON=...) runs the source tree
# (bpmt_fast maps kernels/ itself); PYTHONPATH keeps what is already there (e.g. carried xformers wheels).
# Options: make gpu-check GPU_CHECK_ARGS="--budget-s 450 --out DIR". Refused (exit status 2) without CUDA.
.PHONY: gpu-check
gpu-check:
	@PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PYTHON) -m bpmt_fast.cli gpu-check $(GPU_CHECK_ARGS)
