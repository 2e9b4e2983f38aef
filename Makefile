PYTHON ?= python

.PHONY: install demo test zoo bench

install:  ## the package and its test tools, editable
	$(PYTHON) -m pip install -e ".[dev]"

demo:  ## the embedded default job: compile -> train -> de-ghost -> verify -> sparse ONNX
	surgery demo

test:  ## the README's test command (what CI runs)
	$(PYTHON) -m pytest

zoo:  ## every torchvision model and timm family, numeric and ONNX parity included -> docs/zoo.md
	$(PYTHON) benchmarks/zoo.py

bench:  ## timings and sizes measured side by side -> docs/benchmarks.md
	$(PYTHON) benchmarks/compile_time.py
	$(PYTHON) benchmarks/onnx_export.py
	$(PYTHON) benchmarks/overhead.py
	$(PYTHON) benchmarks/pruning_cost.py
