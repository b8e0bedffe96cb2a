# Two entry points (see README): `make demo` and `make test`.  Each builds a
# fresh-enough .venv: torch==2.13.0 (the CPU build) first, so nothing pulls a
# CUDA torch, then a real (non-editable) install of this package, so a file
# missing from the wheel fails here as it would for a user.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test bench clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install "numpy>=1.23" "scikit-build-core>=0.8" "safetensors>=0.4" pytest
	touch $@

install: $(VENV)/.deps
	$(PIP) install --no-build-isolation --no-deps --force-reinstall .

demo: install
	$(VENV)/bin/mono-quant demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: install
	$(PY) benchmarks/bench_quantize.py

clean:
	rm -rf $(VENV) build dist
