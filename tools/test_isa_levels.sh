#!/usr/bin/env bash
# Runs mono-quant on CPUs that really lack the host's instructions, under
# Debian's qemu-user, and compares every result with a native run capped at
# the same kernel level (MONO_QUANT_ISA).  Capping the level on a wider host
# proves nothing about a narrower CPU: code from an ISA-flagged unit that
# runs before the CPU check (the bug of issue 9) only shows up here.
#
#   tools/test_isa_levels.sh            # the CI set: smoke + kernel tests
#   ISA_LEVELS="Haswell-noTSX-IBRS:avx2" tools/test_isa_levels.sh
#   ISA_SHARDS=1 tools/test_isa_levels.sh   # one emulated pytest process (default: one a core)
#
# qemu 7.2's TCG has AVX2 but no AVX-512, so the AVX-512 level runs natively
# only (make test).  SandyBridge (AVX, no AVX2/FMA/F16C) stands for the
# scalar level: numpy 2.x itself dies on qemu's Nehalem and Westmere models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QEMU=${QEMU:-qemu-x86_64}
LEVELS=${ISA_LEVELS:-"Haswell-noTSX-IBRS:avx2 SandyBridge:scalar"}
SHARDS=${ISA_SHARDS:-$(nproc 2>/dev/null || echo 1)}  # emulated test processes at once
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || { echo "test_isa_levels: ISA_SHARDS=$SHARDS: a number of processes, 1 or more"; exit 1; }
# The levels some CPU model of the list runs: each model runs its own level's cases of the tests
# parametrized by level, and those of the lower levels no other model of the list runs.
covered=" "
for entry in $LEVELS; do covered+="${entry##*:} "; done
levels_for() {
  local own=$1 out=$1 lower
  for lower in scalar avx2 avx512; do
    [ "$lower" = "$own" ] && break
    [[ "$covered" == *" $lower "* ]] || out+=",$lower"
  done
  echo "$out"
}
# kernel-vs-reference tests: small shapes, every kernel family once at least
KERNEL_TESTS=${ISA_KERNEL_TESTS:-"tests/kernels/test_quant_kernels.py tests/formats/test_quantize_weight.py tests/kernels/test_quantize_pack.py tests/kernels/test_int8_linear.py tests/kernels/test_int4_kernels.py tests/nn/test_int8_conv.py tests/kernels/test_reduce_range_kernels.py tests/kernels/test_fp16_kernels.py tests/kernels/test_half_conv.py tests/kernels/test_half_conv_threads.py tests/kernels/test_act_rows.py tests/kernels/test_static_kernels.py tests/kernels/test_static_simd_kernels.py tests/static/test_static_program_split.py tests/nn/test_dynamic_conv_direct.py tests/nn/test_dynamic_conv_odd_channels.py tests/kernels/test_packed_dequantize.py tests/kernels/test_split_rows.py tests/nn/test_dynamic_conv_split.py tests/kernels/test_static_conv_split.py tests/nn/test_dynamic_conv_unsigned.py tests/kernels/test_static_conv_unsigned.py tests/kernels/test_unsigned_rows.py tests/kernels/test_uint8_linear.py tests/kernels/test_embedding_kernels.py tests/kernels/test_float_depthwise.py tests/kernels/test_transpose_f32.py"}

if [ "$(uname -m)" != "x86_64" ]; then
  echo "test_isa_levels: not an x86-64 host, nothing to emulate"; exit 0
fi
command -v "$QEMU" >/dev/null || { echo "test_isa_levels: $QEMU not found (apt-get install qemu-user)"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
quiet() { grep -v "TCG doesn't support requested feature" || true; }

for entry in $LEVELS; do
  cpu=${entry%%:*}; level=${entry##*:}
  echo "== $level: native (MONO_QUANT_ISA=$level) vs qemu -cpu $cpu"
  MONO_QUANT_ISA=$level "$PY" tests/isa_smoke.py run "$work/native-$level.npz" "$level"
  set +e
  "$QEMU" -cpu "$cpu" "$PY" tests/isa_smoke.py run "$work/emulated-$level.npz" "$level" 2>&1 | quiet
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || { echo "test_isa_levels: the emulated $cpu run failed (exit $rc)"; exit 1; }
  "$PY" tests/isa_smoke.py compare "$work/native-$level.npz" "$work/emulated-$level.npz"
  # The kernel tests in $SHARDS emulated processes at once, every SHARDS-th test each (conftest.py's
  # MONO_QUANT_TEST_SHARD): one qemu process runs on one core, and this step was most of .ci/run's time.
  # Only this level's cases of the tests parametrized by level (MONO_QUANT_TEST_LEVELS, levels_for): the
  # lower levels' run on their own CPU model (under Haswell the scalar cases were 45% of the time); tests
  # that compare the levels with each other still run whole.
  # (MONO_QUANT_TEST_EMULATED: tests that would take minutes under emulation run a small case only)
  pids=()
  for ((i = 0; i < SHARDS; i++)); do
    MONO_QUANT_TEST_EMULATED=1 MONO_QUANT_TEST_LEVELS=$(levels_for "$level") MONO_QUANT_TEST_SHARD="$i/$SHARDS" \
      "$QEMU" -cpu "$cpu" "$PY" -m pytest -q \
      -p no:cacheprovider $KERNEL_TESTS > "$work/shard-$level-$i.log" 2>&1 &
    pids+=($!)
  done
  failed=0 ran=0
  for ((i = 0; i < SHARDS; i++)); do
    set +e
    wait "${pids[$i]}"
    rc=$?
    set -e
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ]; then  # (5: pytest found no test for this shard: more shards than tests)
      [ "$rc" -eq 0 ] && ran=1
      echo "-- $level, shard $i/$SHARDS: $(tail -n 1 "$work/shard-$level-$i.log")"
    else
      failed=1
      echo "-- $level, shard $i/$SHARDS failed (exit $rc):"; quiet < "$work/shard-$level-$i.log"
    fi
  done
  [ "$failed" -eq 0 ] || { echo "test_isa_levels: kernel tests under $cpu failed"; exit 1; }
  [ "$ran" -eq 1 ] || { echo "test_isa_levels: no kernel test ran under $cpu"; exit 1; }
done
echo "test_isa_levels: all emulated levels passed"
