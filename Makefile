# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv when it is
# absent, installs the project into it from the package registry, and reuses it afterwards
# (re-installing only when pyproject.toml changed). Users who manage their own environment
# install with pip instead (README, "Install") and run `surgery demo` / `python -m pytest`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Stamps record what is installed in .venv: the package, and the package with its test tools.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: help demo test test-fast zoo bench bench-compile-zoo study study-cifar install clean-venv

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

demo: $(RUNTIME)  ## the embedded default job: compile -> train -> de-ghost -> verify -> sparse ONNX
	$(BIN)/surgery demo

test: $(DEV)  ## every test (the README's test command, what CI runs; <= 15 min on 2 cores)
	$(BIN)/python -m pytest

test-fast: $(DEV)  ## the unit tier for the edit loop (<= 3 min on 2 cores)
	$(BIN)/python -m pytest -m "not slow and not zoo"

zoo: $(DEV)  ## every torchvision model and timm family, numeric and ONNX parity included -> docs/zoo.md
	$(BIN)/python benchmarks/zoo.py

bench: $(DEV)  ## timings and sizes measured side by side -> docs/benchmarks.md
	$(BIN)/python benchmarks/compile_time.py
	$(BIN)/python benchmarks/onnx_export.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/pruning_cost.py
	$(BIN)/python benchmarks/sweep_overhead.py
	$(BIN)/python benchmarks/modes_cost.py
	$(BIN)/python benchmarks/run_stages.py

bench-compile-zoo: $(DEV)  ## compile + de-ghost + verify time of every zoo model (target 2 s) -> docs/benchmarks.md (~1 h; resumes)
	$(BIN)/python benchmarks/compile_time.py --zoo

study: $(RUNTIME)  ## the CPU study of docs/results.md: ToST vs plain sparse training, 60 runs (~30 min)
	$(BIN)/surgery sweep examples/configs/sweep-digits.yaml --jobs 2

# The CIFAR-10 study runs from a fixed commit in its own git worktree, so editing this tree while it runs
# changes nothing; run it again to resume (the same commit: STUDY_COMMIT, default this tree's HEAD).
CIFAR ?= ../shared/data/cifar10-jpeg.tar.gz
STUDY_COMMIT ?= $(shell git rev-parse --short HEAD)
STUDY_TREE ?= ../tost-surgery-study-$(STUDY_COMMIT)
STUDY_OUT ?= sweeps/study-cifar

study-cifar: $(RUNTIME)  ## the CIFAR-10 study of docs/results.md: 84 paired runs (over 8 h on 2 cores; resumes)
	@test -f $(CIFAR) || { echo "the study reads CIFAR-10 from $(CIFAR) (all of it as JPEGs); give its path: make study-cifar CIFAR=PATH" >&2; exit 1; }
	@test -d $(STUDY_TREE) || git worktree add --detach $(STUDY_TREE) $(STUDY_COMMIT)
	cd $(STUDY_TREE) && PYTHONPATH=$$PWD $(abspath $(BIN))/python -m surgery_launch sweep examples/configs/study-cifar.yaml \
		--jobs 2 --out $(abspath $(STUDY_OUT)) --set data.dataset=cifar10-jpeg:$(abspath $(CIFAR))

install: $(DEV)  ## .venv with the package (editable) and its test tools

clean-venv:  ## remove .venv (the next `make demo` / `make test` builds it again)
	rm -rf $(VENV)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "tost-surgery needs Python >= 3.10; $(PYTHON) is $$($(PYTHON) --version 2>&1). Run: make PYTHON=python3.12 ..." >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
		{ echo "could not create $(VENV) with $(PYTHON) -m venv; install your Python's venv module (Debian/Ubuntu: apt install python3-venv) and run make again" >&2; rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@ $(RUNTIME)
