# Two entry points (see README): `make demo` and `make test`.  Each builds a
# fresh-enough .venv: torch==2.13.0 (the CPU build) first, so nothing pulls a
# CUDA torch, then a real (non-editable) install of this package, so a file
# missing from the wheel fails here as it would for a user.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test test-isa docs bench clean

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

# The package on CPUs without the host's instructions (qemu-user; see the
# script's header): a smoke run of every entry point compared with a native
# run at the same level, and the kernel tests, on an AVX2 and a pre-AVX2 CPU.
test-isa: install
	tools/test_isa_levels.sh

# The API reference from the docstrings, with the guide and references
# (mkdocs strict: any warning, such as a broken link or a docstring that
# drifts from its signature, fails).
docs: install
	$(PIP) install "mkdocs==1.6.1" "mkdocstrings-python==2.0.11"
	$(PY) -m mkdocs build --quiet

bench: install
	$(PY) benchmarks/bench_quantize.py

clean:
	rm -rf $(VENV) build dist
