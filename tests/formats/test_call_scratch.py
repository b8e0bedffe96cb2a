"""The per-thread buffer of weights made per call (formats/call_scratch.py) and dequantize_rows'
out=: the same bits as a fresh tensor, one buffer reused per thread, never while autograd
records, and the C layer's checks of the buffer it is given."""
import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C
from mono_quant.formats import call_scratch, layer_cache
from mono_quant.formats.call_scratch import float_scratch
from mono_quant.kernels import direct_conv
from mono_quant.modules import conv as conv_module


def _q8(rows=5, cols=7):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (rows, cols), dtype=torch.int8, generator=g).numpy()
    scale = (torch.rand(rows, generator=g) + 0.1).numpy()
    return q, scale, torch.randint(-3, 4, (rows,), dtype=torch.int32, generator=g).numpy()


def _q4(rows=4, cols=200):
    from mono_quant.kernels import int4 as q4
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1))
    packed, scale, zero = q4.q4_quantize(w, 128, False, 0, False)[:3]
    return packed.numpy(), scale.numpy().view(np.int16), zero.numpy(), cols


def _dequantize_call(fn, out=None, inputs=None):
    """_C.dequantize_rows or _C.q4_dequantize on small arrays (``inputs``: given ones), into ``out``."""
    if fn == "rows":
        q, scale, zp = inputs or _q8(4, 8)
        return _C.dequantize_rows(q, scale, zp, **({} if out is None else {"out": out}))
    packed, scale, zero, cols = inputs or _q4()
    return _C.q4_dequantize(packed, scale, zero, cols, 128, **({} if out is None else {"out": out}))


@pytest.mark.parametrize("fn", ["rows", "q4"])
def test_dequantize_into_out_gives_the_fresh_arrays_values(fn):
    fresh = _dequantize_call(fn)
    out = np.full(fresh.shape, np.nan, dtype=np.float32)
    got = _dequantize_call(fn, out)
    assert got is out and np.array_equal(out, fresh)


@pytest.mark.parametrize("fn", ["rows", "q4"])
@pytest.mark.parametrize("bad", ["float64", "shape", "strided", "readonly", "list", "overlap"])
def test_dequantize_refuses_an_out_it_cannot_write(fn, bad):
    rows, cols = _dequantize_call(fn).shape
    out = np.zeros((rows, cols), dtype=np.float32)
    inputs = None
    if bad == "float64":
        out = out.astype(np.float64)
    elif bad == "shape":
        out = np.zeros((rows, cols - 1), dtype=np.float32)
    elif bad == "strided":
        out = np.zeros((rows, 2 * cols), dtype=np.float32)[:, ::2]
    elif bad == "readonly":
        out.setflags(write=False)
    elif bad == "list":
        out = out.tolist()
    elif fn == "rows":  # the codes read from the same memory the floats are written to
        inputs = (out.view(np.int8).reshape(-1)[:rows * cols].reshape(rows, cols), *_q8(rows, cols)[1:])
    else:
        packed, scale, zero, cols = _q4()
        inputs = (out.view(np.uint8).reshape(-1)[:packed.size].reshape(packed.shape), scale, zero, cols)
    with pytest.raises(ValueError, match="out"):
        _dequantize_call(fn, out, inputs)


def test_one_buffer_per_thread_reused_and_its_limits(monkeypatch):
    a = float_scratch((3, 4))
    b = float_scratch((2, 5))
    assert a.shape == (3, 4) and b.shape == (2, 5) and a.dtype == torch.float32 and b.is_contiguous()
    assert a.data_ptr() == b.data_ptr()  # (the same buffer, not a new one per call)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(float_scratch((3, 4)).data_ptr()))
    worker.start()
    worker.join()
    assert seen[0] != a.data_ptr()  # another thread, another buffer
    monkeypatch.setattr(call_scratch, "SCRATCH_MAX_ELEMENTS", 11)
    assert float_scratch((3, 4)) is None
    x = torch.randn(2, requires_grad=True)
    assert float_scratch((2, 2), x) is None  # autograd would keep the weight of the op on x
    with torch.no_grad():
        assert float_scratch((2, 2), x) is not None
    with torch.inference_mode():
        buf = float_scratch((2, 2))
        buf.fill_(1)  # (a normal tensor, written in place inside inference mode and out of it)
    float_scratch((2, 2)).fill_(2)


def _two_large_layers(kind):
    torch.manual_seed(0)
    if kind == "conv":  # 128 * 128 * 9 and 64 * 256 * 9 weights: past SMALL_WEIGHT_ELEMENTS
        model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 256, 3, padding=1, groups=2))
        return model.eval(), torch.randn(1, 128, 20, 20)
    model = nn.Sequential(nn.Linear(384, 320), nn.ReLU(), nn.Linear(320, 256))
    return model.eval(), torch.randn(600, 384)


def _buffer_fresh_and_torch(q, x, kind, monkeypatch, float_weight_of):
    """q(x) twice on the buffer, once on fresh tensors (the buffer off), and torch's layers on
    ``float_weight_of(layer)`` for each quantized one."""
    with torch.no_grad():
        fast = [q(x), q(x)]
    monkeypatch.setattr(call_scratch, "SCRATCH_MAX_ELEMENTS", 0)
    with torch.no_grad():
        fresh = q(x)
        ref = x
        for m in q:
            if not type(m).__name__.startswith("Quantized"):
                ref = m(ref)
                continue
            w = float_weight_of(m)
            ref = (nn.functional.conv2d(ref, w, m.bias, m.stride, m.padding, m.dilation, m.groups) if kind == "conv"
                   else nn.functional.linear(ref, w, m.bias))
    return fast, fresh, ref


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_layers_on_the_buffer_give_the_fresh_weights_bits(kind, monkeypatch):
    """Two large int8 weight-only layers one after the other on the buffer (each call's weight
    overwrites the last): the bits of the fresh tensors, call after call."""
    model, x = _two_large_layers(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = mq.quantize(model, activations=None).model
    if kind == "linear":  # the dequantize + BLAS rule at these rows
        from mono_quant.kernels import row_rules
        monkeypatch.setitem(row_rules.INT8_WEIGHT_ONLY_BLAS_MIN_ROWS, mq.kernels.SETTINGS.isa, 512)
    else:  # torch's conv on the weight dequantized per call, not the direct kernel (which some CPUs take)
        monkeypatch.setattr(direct_conv, "WIDE_ANY_OUTPUTS_ON_THIS_CPU", False)
        monkeypatch.setitem(direct_conv.MAX_OUTPUTS, mq.kernels.SETTINGS.isa, 0)
    layers = [m for m in q.modules() if type(m).__name__.startswith("Quantized")]
    assert all(m.in_features * m.out_features if kind == "linear" else m.weight_numel()
               > layer_cache.SMALL_WEIGHT_ELEMENTS for m in layers)
    fast, fresh, ref = _buffer_fresh_and_torch(q, x, kind, monkeypatch, lambda m: m.dequantized_weight(torch.float32))
    if kind == "conv":
        assert all(conv_module._ROUTES[m][5] == "float" for m in layers)
    assert torch.equal(fast[0], fresh) and torch.equal(fast[1], fresh)
    torch.testing.assert_close(fresh, ref, rtol=1e-5, atol=1e-5)


def _spy_scratch(monkeypatch) -> list:
    """Every float_scratch call of the forwards (None or the buffer): layer_cache.float_weight's,
    the one place that asks for it."""
    calls = []

    def spy(*args):
        calls.append(call_scratch.float_scratch(*args))
        return calls[-1]
    monkeypatch.setattr(layer_cache, "float_scratch", spy)
    return calls


@pytest.mark.parametrize("dtype,kind,route", [
    ("fp16", "linear", "general"), ("bf16", "linear", "general"), ("fp16", "conv", "general"),
    ("fp16", "conv", "half_conv"), ("bf16", "conv", "half_conv"), ("int4", "conv", "general"),
    ("int4", "linear", "blas")])
def test_weights_made_per_call_on_the_buffer_give_the_fresh_bits(dtype, kind, route, monkeypatch):
    """fp16 / bf16 weights widened and int4 ones dequantized per call for torch's op (past the C
    kernels' rules): on the buffer, the bits of a fresh float32 copy, call after call."""
    from mono_quant.formats import half_conv
    from mono_quant.kernels import row_rules
    isa = mq.kernels.SETTINGS.isa
    for table in (row_rules.HALF_KERNEL_MAX_ROWS, row_rules.HALF_PANEL_MAX_ROWS):
        monkeypatch.setitem(table, isa, 0)  # every row count on torch's op
    monkeypatch.setitem(row_rules.HALF_AMX_MIN_ROWS, isa, 1 << 62)
    monkeypatch.setattr(half_conv, "takes_half_conv", lambda *args: False)  # (torch's conv, not the C ones)
    monkeypatch.setattr(direct_conv, "WIDE_ANY_OUTPUTS_ON_THIS_CPU", False)  # (int4: nor the direct kernel)
    monkeypatch.setitem(direct_conv.MAX_OUTPUTS, isa, 0)
    if route == "general":  # the format's general path (base / cast compute_weight), not eager_half_conv's
        monkeypatch.setattr(mq.formats.cast, "eager_half_conv", lambda module, x: None)
    if route == "blas":  # int4's kept call on torch's BLAS (int4_call), not the packed kernel
        monkeypatch.setattr(mq.formats.int4_call, "int4_takes_blas", lambda *args, **kwargs: True)
    model, x = _two_large_layers(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = mq.quantize(model, dtype=dtype).model
    calls = _spy_scratch(monkeypatch)
    fast, fresh, ref = _buffer_fresh_and_torch(
        q, x, kind, monkeypatch, lambda m: m.dequantized_weight(torch.float32) if dtype == "int4" else m.weight.float())
    assert len(calls) == 6 and all(c is not None for c in calls[:4]) and calls[4:] == [None, None]  # (buffer off)
    assert torch.equal(fast[0], fresh) and torch.equal(fast[1], fresh)
    assert torch.equal(fresh, ref)
