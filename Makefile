# Two entry points (see README): `make demo` and `make test`.  Each builds a
# fresh-enough .venv: torch==2.13.0 (the CPU build) first, so nothing pulls a
# CUDA torch, then a real (non-editable) install of this package, so a file
# missing from the wheel fails here as it would for a user.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test bench clean sanitize sanitize-ci sanitize-install

$(VENV)/.deps: Makefile  # a new dependency here reaches existing venvs too
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install "numpy>=1.23" "scikit-build-core>=0.8" "safetensors>=0.4" pytest hypothesis
	touch $@

install: $(VENV)/.deps
	$(PIP) install --no-build-isolation --no-deps --force-reinstall .

demo: install
	$(VENV)/bin/mono-quant demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: install
	$(PY) benchmarks/bench_quantize.py

# `make sanitize`: _C built with ASan + UBSan (CMake option MQ_SANITIZE, every report
# fatal) in its own venv and build folder, the kernel, io and property tests run with gcc's
# sanitizer runtimes preloaded (the interpreter itself is not instrumented, so its leaks
# are not ours: detect_leaks=0; huge requests return NULL so MemoryError paths run).
# `make sanitize-ci` runs the subset .ci/run has time for.
SAN_CC ?= gcc
SAN_VENV := .venv-sanitize
SAN_PY := $(SAN_VENV)/bin/python
SAN_PIP := $(SAN_PY) -m pip --disable-pip-version-check -q
# --capture=sys: pytest captures Python's output only, so a report the runtime writes to
# fd 2 before it aborts the interpreter reaches the log (fd capture would swallow it).
# ASan's "failed to allocate" warnings (MemoryError paths under allocator_may_return_null)
# are dropped from the log; a real report is "ERROR: AddressSanitizer" or "runtime error:".
SAN_LOG := build/sanitize.log
SAN_ENV = LD_PRELOAD="$$($(SAN_CC) -print-file-name=libasan.so):$$($(SAN_CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 MONO_QUANT_SANITIZED=1
# $(call run_sanitized,tests): fails on a failed or crashed test run, or on any sanitizer report
run_sanitized = mkdir -p build && \
	{ $(SAN_ENV) $(SAN_PY) -m pytest -q -p no:cacheprovider --capture=sys $(1) 2>&1; echo $$? > $(SAN_LOG).status; } \
	  | grep --line-buffered -v "WARNING: AddressSanitizer failed to allocate" | tee $(SAN_LOG); \
	reports=$$(grep -c -e "ERROR: AddressSanitizer" -e "runtime error:" $(SAN_LOG)); \
	echo "sanitizer reports: $$reports (log: $(SAN_LOG))"; \
	test "$$(cat $(SAN_LOG).status)" = 0 && test "$$reports" = 0
SAN_TESTS := tests/test_quant_kernels.py tests/test_int4_kernels.py tests/test_int8_linear.py \
	tests/test_int8_conv.py tests/test_quantize_pack.py tests/test_quantized_embedding.py \
	tests/test_properties_c.py tests/test_size_overflow.py tests/test_io_*.py
SAN_CI_TESTS := tests/test_properties_c.py tests/test_size_overflow.py tests/test_quant_kernels.py \
	tests/test_int4_kernels.py tests/test_int8_conv.py tests/test_quantize_pack.py tests/test_io_errors.py

$(SAN_VENV)/.deps: Makefile
	$(PYTHON) -m venv $(SAN_VENV)
	$(SAN_PIP) install torch==2.13.0
	$(SAN_PIP) install "numpy>=1.23" "scikit-build-core>=0.8" "safetensors>=0.4" pytest hypothesis
	touch $@

sanitize-install: $(SAN_VENV)/.deps
	CC=$(SAN_CC) $(SAN_PIP) install --no-build-isolation --no-deps --force-reinstall \
		-C cmake.define.MQ_SANITIZE=ON -C build-dir=build/sanitize-{wheel_tag} .

sanitize: sanitize-install
	@$(call run_sanitized,$(SAN_TESTS))

sanitize-ci: sanitize-install
	@$(call run_sanitized,$(SAN_CI_TESTS))

clean:
	rm -rf $(VENV) $(SAN_VENV) build dist
