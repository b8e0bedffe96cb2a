"""A dynamic int8 QuantizedLinear keeps its kernel call's arguments per module
(formats/packed_linear.py, dynamic_linear): every change they depend on must give what a
fresh copy of the layer (nothing kept) gives, bit for bit, and the inputs that call does
not take must go the general way with the same results."""
import copy

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.formats import packed_linear


def _qlinear(bias=True):
    torch.manual_seed(0)
    return mq.quantize(nn.Sequential(nn.Linear(48, 20, bias=bias)), "int8").model[0]


def _same_as_fresh(q, x):
    with torch.no_grad():
        y = q(x)
        fresh = copy.deepcopy(q)(x)
    assert torch.equal(y, fresh)
    return y


def test_the_call_is_kept_and_used():
    q = _qlinear()
    x = torch.randn(3, 48)
    _same_as_fresh(q, x)
    assert packed_linear._DYNAMIC_CALLS.get(q) is not None
    with torch.no_grad():
        assert torch.equal(packed_linear.dynamic_linear(q, x), q(x))


def test_weight_bias_and_mode_changes_are_seen():
    q = _qlinear()
    x = torch.randn(3, 48)
    y0 = _same_as_fresh(q, x)
    with torch.no_grad():
        q.weight_scale.mul_(2.0)  # a buffer in place
    y1 = _same_as_fresh(q, x)
    assert not torch.equal(y0, y1)
    q.weight_scale.data = q.weight_scale.data / 2  # storage swapped
    y2 = _same_as_fresh(q, x)
    assert torch.equal(y0, y2)
    q.register_buffer("weight_zero_point", q.weight_zero_point.clone())  # a buffer replaced
    _same_as_fresh(q, x)
    with torch.no_grad():
        q.bias.add_(1.0)  # the bias in place
    y3 = _same_as_fresh(q, x)
    assert not torch.equal(y2, y3)
    q.bias = nn.Parameter(torch.zeros(20), requires_grad=False)  # replaced
    y4 = _same_as_fresh(q, x)
    assert not torch.equal(y3, y4)
    q.bias = None
    y5 = _same_as_fresh(q, x)
    q.set_reduce_range(True)  # 7-bit activations: another kernel
    assert not torch.equal(_same_as_fresh(q, x), y5)
    q.set_activations(None)  # weight-only: the general path
    _same_as_fresh(q, x)
    q.set_activations("dynamic")
    _same_as_fresh(q, x)


@pytest.mark.parametrize("make_x", [
    lambda: torch.randn(2, 5, 48),  # rows of any leading shape
    lambda: torch.randn(48),  # one unbatched row
    lambda: torch.randn(6, 96)[:, ::2],  # strided elements
    lambda: torch.randn(7, 60)[:, 5:53],  # strided rows
    lambda: torch.randn(3, 48).half(),  # another dtype: the general path
    lambda: torch.randn(3, 48, dtype=torch.float64),  # one the kernels don't take
    lambda: torch.randn(0, 48),  # empty
    lambda: torch.randn(3, 48).requires_grad_(),  # a leaf that records no grad under no_grad
], ids=["3d", "1d", "strided-elements", "strided-rows", "half", "float64", "empty", "requires-grad"])
def test_inputs_of_every_shape_and_dtype(make_x):
    q = _qlinear()
    _same_as_fresh(q, torch.randn(3, 48))  # the call kept first
    x = make_x()
    y = _same_as_fresh(q, x)
    assert y.shape == (*x.shape[:-1], 20) and y.dtype == x.dtype


def test_a_wrong_width_raises_as_before():
    q = _qlinear()
    _same_as_fresh(q, torch.randn(3, 48))
    with pytest.raises(RuntimeError), torch.no_grad():
        q(torch.randn(3, 47))


# ---- weight-only layers: the same memo for their common call (packed_linear.weight_only_linear) ----------

def _qlinear_weight_only():
    torch.manual_seed(0)
    return mq.quantize(nn.Sequential(nn.Linear(48, 20)), "int8", activations=None).model[0]


def _general_path(q, x):
    """q's forward through the format's general path (the kept call skipped)."""
    saved = packed_linear.weight_only_linear
    packed_linear.weight_only_linear = lambda module, x: None
    try:
        with torch.no_grad():
            return q.format.linear(q, x)
    finally:
        packed_linear.weight_only_linear = saved


def test_the_weight_only_call_is_the_general_paths():
    from mono_quant.kernels.int8 import linear_int8_raw
    from mono_quant.formats.layer_cache import kernel_args
    q = _qlinear_weight_only()
    x = torch.randn(3, 48)
    y = _same_as_fresh(q, x)
    assert packed_linear._WEIGHT_ONLY_CALLS.get(q)[1] is not None
    with torch.no_grad():
        assert torch.equal(y, torch.from_numpy(linear_int8_raw(x.numpy(), kernel_args(q)[1][0], "weight_only")))
        # 3-D, strided rows, the AMX and small-weight BLAS rules' rows: the kept call, the general path's bits
        for x in (x.unsqueeze(0), torch.randn(2, 5, 48), torch.randn(48, 3).t(), torch.randn(64, 48),
                  torch.randn(1024, 48)):
            y = packed_linear.weight_only_linear(q, x)
            assert y is not None and torch.equal(y, _general_path(q, x))
            _same_as_fresh(q, x)


def test_the_large_weight_blas_rule_takes_the_general_path():
    from mono_quant.kernels.settings import SETTINGS
    torch.manual_seed(0)
    q = mq.quantize(nn.Sequential(nn.Linear(768, 40)), "int8", activations=None).model[0]
    x = torch.randn(1024, 768)
    with torch.no_grad():
        y = packed_linear.weight_only_linear(q, x)
        if packed_linear.takes_blas(1024, 768, 40):  # an Intel CPU's MKL without AMX: torch's BLAS
            assert y is None
        else:
            assert torch.equal(y, _general_path(q, x))
        with SETTINGS.for_tests(amx=False):
            y = packed_linear.weight_only_linear(q, x)
            assert (y is None) == packed_linear.takes_blas(1024, 768, 40)
        _same_as_fresh(q, x)


def test_weight_only_changes_are_seen():
    q = _qlinear_weight_only()
    x = torch.randn(2, 48)
    y0 = _same_as_fresh(q, x)
    with torch.no_grad():
        q.weight_scale.mul_(2.0)
    y1 = _same_as_fresh(q, x)
    assert not torch.equal(y0, y1)
    q.bias = None
    y2 = _same_as_fresh(q, x)
    assert not torch.equal(y1, y2)
    q.set_activations("dynamic")  # the mode: the dynamic call's now
    assert packed_linear.weight_only_linear(q, x) is None
    _same_as_fresh(q, x)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int4", "fp16", "bf16"])
@pytest.mark.parametrize("grad", [False, True], ids=["eager", "autograd"])
def test_every_format_raises_runtime_error_on_a_wrong_width(dtype, grad):
    """As F.linear does (int4 raised ValueError: an `except RuntimeError` written for the float
    model missed it)."""
    q = mq.quantize(nn.Sequential(nn.Linear(64, 32)), dtype=dtype).model
    with pytest.raises(RuntimeError):
        q(torch.randn(3, 63, requires_grad=grad))
