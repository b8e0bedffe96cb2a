"""Shared fixtures and helpers: the one place tests switch kernel levels (the ISA
levels this CPU supports, forced one at a time), and the paths tests read beside
the package.  Test folders mirror the package (kernels/, formats/, nn/, io/, cli/,
calibration/); helpers shared across folders stay here, beside this file."""
import contextlib
import os
import warnings
from pathlib import Path

import pytest
import torch

from mono_quant import _C

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the source tree, or the folder `make wheel-test` copies tests/, docs/, ... into
DATA = TESTS / "data"

LEVELS = ["scalar", "avx2", "avx512"]
BEST = _C.cpu_info()["best_isa"]
SUPPORTED = LEVELS[: LEVELS.index(BEST) + 1]

# The AVX2 level's alternative int8 matmuls, as "level+variant": the AVX-VNNI kernel
# (256-bit vpdpbusd) in its EVEX encoding where the CPU has AVX-512 VNNI + VL (the same
# source, so the same arithmetic), and where the CPU has AVX-VNNI, the maddubs kernel
# that AVX2-only CPUs run; and where the AVX-512 level runs its int8 matmul on AMX tiles, that
# level's AVX-512 VNNI kernel (what AVX-512 CPUs without AMX run).  Each maps to its switch
# and the kernel name it installs.
_INFO = _C.cpu_info()
AMX = "avx512" in SUPPORTED and _C.use_amx(None)
VARIANTS = {"vnni256": (_C.use_vnni256_for_tests, "vnni256_evex"),
            "maddubs": (_C.use_maddubs_for_tests, "avx2_maddubs"),
            "vnni": (lambda on: _C.use_amx(not on), "avx512_vnni")}
MADDUBS = ["avx2+maddubs"] if _INFO["avx_vnni"] and "avx2" in SUPPORTED else []
KERNELS = (SUPPORTED + (["avx2+vnni256"] if _INFO["avx512_vnni"] and _INFO["avx512vl"] else []) + MADDUBS
           + (["avx512+vnni"] if AMX else []))


@contextlib.contextmanager
def at_isa(name):
    """Run the block at kernel level ``name`` ("scalar", "avx2", ... or "avx2+maddubs" for
    a variant, see KERNELS), restoring the previous level and kernels after."""
    level, _, variant = name.partition("+")
    previous = _C.set_isa(level)
    use, kernel = VARIANTS[variant] if variant else (None, None)
    # nested in a block of the same variant (a helper that asks the level's kernels): leave the switch
    # to the outer block, whose variant an inner use(False) would undo
    switch = variant and _C.linear_kernels()["dynamic"] != kernel
    try:
        if switch:
            use(True)
        if variant:
            assert _C.linear_kernels()["dynamic"] == kernel
        yield name
    finally:
        if switch:
            use(False)
        _C.set_isa(previous)


# a test parameter with one of these names holds a kernel level ("avx2") or a variant ("avx2+maddubs")
_LEVEL_PARAMS = ("isa", "kernel_isa", "kernel", "level")


def _level_of(item):
    """The kernel level a test case is parametrized with (its isa / kernel_isa / kernel / level
    parameter), or None."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in _LEVEL_PARAMS:
        value = params.get(name)
        level = value.partition("+")[0] if isinstance(value, str) else None
        if level in LEVELS:
            return level
    return None


def _deselect(config, items, keep) -> None:
    """Keep the items for which ``keep(position, item)`` holds, in order; report the others deselected."""
    kept, dropped = [], []
    for position, item in enumerate(items):
        (kept if keep(position, item) else dropped).append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_collection_modifyitems(config, items):
    """Two selections for tools/test_isa_levels.sh, which runs the kernel tests under qemu, where a
    test takes ~50x its native time.

    MONO_QUANT_TEST_LEVELS="avx2" (a comma list): cases parametrized with another kernel level (an
    ``isa`` / ``kernel_isa`` / ``kernel`` / ``level`` parameter) are left out: each emulated CPU runs
    its own level's cases, the lower levels' run on their own CPU model.  Tests that loop over the
    levels themselves (comparing them) still run whole.

    MONO_QUANT_TEST_SHARD="i/n": keep every n-th test from the i-th (0-based), so that n processes
    run the set between them (one qemu process a core).  Every n-th test, not every n-th file: a
    file's large cases then spread over the shards."""
    only = [name for name in os.environ.get("MONO_QUANT_TEST_LEVELS", "").split(",") if name]
    if any(name not in LEVELS for name in only):
        raise pytest.UsageError(f"MONO_QUANT_TEST_LEVELS={','.join(only)!r}: each name one of {LEVELS}")
    if only:
        _deselect(config, items, lambda position, item: _level_of(item) in (None, *only))
    shard = os.environ.get("MONO_QUANT_TEST_SHARD")
    if not shard:
        return
    index, _, count = shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise pytest.UsageError(f"MONO_QUANT_TEST_SHARD={shard!r}: expected i/n with 0 <= i < n, e.g. 0/2")
    index, count = int(index), int(count)
    _deselect(config, items, lambda position, item: position % count == index)


@pytest.fixture(params=SUPPORTED)
def isa(request):
    """Run the test once per kernel level this CPU has, restoring the default after."""
    with at_isa(request.param):
        yield request.param


@pytest.fixture(params=KERNELS)
def kernel_isa(request):
    """Run the test once per kernel level and int8 matmul variant this CPU has (see KERNELS)."""
    with at_isa(request.param):
        yield request.param


@pytest.fixture
def one_torch_thread():
    """torch.set_num_threads(1) for the test, restored after (tiny models on a busy host)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _no_thread_backoff():
    """Which calls split over threads must not depend on the host's load: after a call
    that waited for a descheduled thread, the C layer pauses the omp-team and the split of
    middling calls (parallel.c), and on a busy CI host that happens for real."""
    _C.team_backoff_for_tests(False)
    yield
    _C.team_backoff_for_tests(True)


@pytest.fixture(autouse=True)
def _quiet_torch_quantized_deprecation():
    # torch 2.13 deprecates its quantized dtypes; we only use them as test oracles
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantiz.*")
        yield


def torch_per_channel(x: torch.Tensor, scale, zero_point, axis: int, dtype=torch.qint8) -> torch.Tensor:
    """The oracle: torch's own per-channel quantization, as plain integers."""
    return torch.quantize_per_channel(x.float(), scale.double(), zero_point.long(), axis, dtype).int_repr()


def torch_per_tensor(x: torch.Tensor, scale: float, zero_point: int, dtype=torch.qint8) -> torch.Tensor:
    return torch.quantize_per_tensor(x.float(), float(scale), int(zero_point), dtype).int_repr()
