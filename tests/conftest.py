"""Shared fixtures: the ISA levels this CPU supports, forced one at a time."""
import warnings

import pytest
import torch

from mono_quant import _C

LEVELS = ["scalar", "avx2", "avx512"]
BEST = _C.cpu_info()["best_isa"]
SUPPORTED = LEVELS[: LEVELS.index(BEST) + 1]


@pytest.fixture(params=SUPPORTED)
def isa(request):
    """Run the test once per kernel level this CPU has, restoring the default after."""
    previous = _C.set_isa(request.param)
    try:
        yield request.param
    finally:
        _C.set_isa(previous)


@pytest.fixture
def one_torch_thread():
    """torch.set_num_threads(1) for the test, restored after (tiny models on a busy host)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
