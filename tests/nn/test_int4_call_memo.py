"""An int4 QuantizedLinear keeps NumPy views of its buffers for its common call
(formats/int4_call.py): every change they depend on must give what a fresh copy of the
layer (nothing kept) gives, bit for bit, and the inputs that call does not take must go
the general way (int4_weight.int4_linear) with the same results."""
import copy

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.formats import int4_call
from mono_quant.formats.int4_weight import int4_linear


def _qlinear(bias=True, k=256, n=40):
    torch.manual_seed(0)
    return mq.quantize(nn.Sequential(nn.Linear(k, n, bias=bias)), "int4", group_size=128).model[0]


def _general(q, x):
    return int4_linear(x, q.format.module_weight(q), q.bias)


def _same_as_fresh(q, x):
    with torch.no_grad():
        y = q(x)
        fresh = copy.deepcopy(q)(x)
        assert torch.equal(y, fresh) and torch.equal(y, _general(q, x))
    return y


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 256), (5, 256), (2, 3, 256), (256,)])
def test_the_call_is_kept_and_equals_the_general_path(bias, shape):
    q = _qlinear(bias)
    x = torch.randn(*shape)
    y = _same_as_fresh(q, x)
    assert y.shape == (*shape[:-1], 40)
    assert int4_call._CALLS.get(q) is not None
    with torch.no_grad():
        assert torch.equal(int4_call.kept_int4_linear(q, x), y)


def test_non_contiguous_rows():
    q = _qlinear()
    base = torch.randn(256, 6)
    with torch.no_grad():
        assert torch.equal(q(base.T), q(base.T.contiguous()))


def test_buffer_and_bias_changes_are_seen():
    q = _qlinear()
    x = torch.randn(3, 256)
    y0 = _same_as_fresh(q, x)
    with torch.no_grad():
        q.bias.add_(1.0)  # the bias in place
    y1 = _same_as_fresh(q, x)
    assert torch.allclose(y1, y0 + 1.0, atol=1e-5)
    with torch.no_grad():
        q.weight_scale.mul_(2)  # a buffer in place
    y2 = _same_as_fresh(q, x)
    assert not torch.equal(y1, y2)
    torch.manual_seed(5)
    other = mq.quantize(nn.Sequential(nn.Linear(256, 40)), "int4", group_size=128).model[0]
    q.weight_qdata.data = other.weight_qdata.clone()  # storage swapped
    _same_as_fresh(q, x)
    q.register_buffer("weight_zero_point", other.weight_zero_point.clone())  # a buffer replaced
    _same_as_fresh(q, x)
    q.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(q(x), other(x))
    q.bias = None  # the bias removed
    _same_as_fresh(q, x)


def test_inputs_the_kept_call_does_not_take():
    q = _qlinear()
    x = torch.randn(4, 256)
    with torch.no_grad():
        assert int4_call.kept_int4_linear(q, x.double()) is None
        assert int4_call.kept_int4_linear(q, torch.randn(4, 255)) is None
        assert int4_call.kept_int4_linear(q, torch.randn(0, 256)) is None
        for xi in (x.bfloat16(), x.half(), x.double()):
            assert torch.equal(q(xi), _general(q, xi))
    xg = x.clone().requires_grad_(True)
    assert int4_call.kept_int4_linear(q, xg) is None
    y = q(xg)
    y.sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape
    with pytest.raises((ValueError, RuntimeError)):
        q(torch.randn(4, 255))


def test_isa_and_activation_settings_are_read_per_call():
    from mono_quant.kernels import SETTINGS

    q = _qlinear()
    x = torch.randn(3, 256)
    with torch.no_grad():
        q(x)  # kept
        previous = SETTINGS.set_int4_int8_activations(not SETTINGS.int4_int8_activations)
        try:
            assert torch.equal(q(x), _general(q, x))
        finally:
            SETTINGS.set_int4_int8_activations(previous)
