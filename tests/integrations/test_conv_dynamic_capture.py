"""QuantizedConv2d under torch.export with dynamic sizes: eager picks a route per image size (int8
activations only where they pay; weight-only / int4's packed kernels only for few output pixels), and
the exported program must pick the same one per call, not pin the example's with a guard (it raised
"Guard failed" for sizes inside the declared ranges) or refuse a dynamic batch at export."""
import io
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq


def _quantized(conv, **options):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(nn.Sequential(conv).eval(), min_weight_numel=0, **options).model


def _close_to_eager(program, q, x):
    """The program's result against eager's: the same route (int8 activations or not: ~1e-3 apart),
    up to the 1e-6 rounding of torch's conv in place of the direct kernel on symbolic sizes."""
    with torch.no_grad():
        y, expected = program(x), q(x)
    assert y.shape == expected.shape
    assert ((y - expected).abs().max() / expected.abs().max()).item() < 1e-5


def _routes(q, xs):
    return {bool(q[0]._packed_pays(x)) for x in xs}


def test_int8_dynamic_conv_with_dynamic_batch_and_image_size():
    q = _quantized(nn.Conv2d(16, 8, 3, padding=1), dtype="int8")
    dims = {0: torch.export.Dim("B", min=1, max=64), 2: torch.export.Dim("H", min=1, max=256),
            3: torch.export.Dim("W", min=1, max=256)}
    program = torch.export.export(q, (torch.randn(2, 16, 8, 8),), dynamic_shapes=(dims,))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    torch.manual_seed(1)
    xs = [torch.randn(shape) for shape in ((2, 16, 8, 8), (2, 16, 4, 5), (1, 16, 3, 3), (5, 16, 31, 40),
                                             (3, 16, 1, 1))]
    assert _routes(q, xs) == {True, False}  # both sides of the rule are run
    for x in xs:
        _close_to_eager(program.module(), q, x)
        _close_to_eager(loaded, q, x)


@pytest.mark.parametrize("options", [dict(dtype="int8", activations=None), dict(dtype="int4", group_size=32)],
                         ids=["int8-weight-only", "int4"])
def test_pointwise_conv_on_a_small_map_with_a_dynamic_batch(options):
    """An SE block / head on pooled features: the packed (or direct) kernels for few output pixels,
    torch's conv for many; the batch decides (export refused a dynamic batch: the rule specialised it)."""
    q = _quantized(nn.Conv2d(64, 256, 1), **options)
    batch = torch.export.Dim("B", min=1, max=1024)
    program = torch.export.export(q, (torch.randn(2, 64, 2, 2),), dynamic_shapes=({0: batch},)).module()
    torch.manual_seed(1)
    xs = [torch.randn(b, 64, 2, 2) for b in (1, 8, 64)]
    for x in xs:
        _close_to_eager(program, q, x)


def test_channels_last_input_with_dynamic_image_size():
    """The two routes give other layouts (torch's conv keeps channels_last, the packed op writes
    NCHW): torch.cond refused the branches; the program's result has eager's values and layout."""
    q = _quantized(nn.Conv2d(16, 8, 3, padding=1), dtype="int8")
    dims = {2: torch.export.Dim("H", min=1, max=256), 3: torch.export.Dim("W", min=1, max=256)}
    example = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    program = torch.export.export(q, (example,), dynamic_shapes=(dims,)).module()
    torch.manual_seed(1)
    xs = [torch.randn(2, 16, s, s).contiguous(memory_format=torch.channels_last) for s in (2, 8, 16)]
    assert _routes(q, xs) == {True, False}
    for x in xs:
        _close_to_eager(program, q, x)
        with torch.no_grad():
            assert program(x).is_contiguous(memory_format=torch.channels_last) == \
                q(x).is_contiguous(memory_format=torch.channels_last)
