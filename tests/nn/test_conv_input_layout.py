"""QuantizedConv2d's input as the float Conv2d takes it: a wrong channel count raises torch's
error on every route (the direct kernel's route used to fail on its panel sizes instead), and a
channels_last input gives a channels_last result, as torch's conv does, whichever route ran."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq

FORMATS = [dict(dtype="int8"), dict(dtype="int8", activations=None), dict(dtype="uint8"), dict(dtype="int4"),
           dict(dtype="fp16"), dict(dtype="bf16")]
IDS = ["int8-dynamic", "int8-weight-only", "uint8", "int4", "fp16", "bf16"]


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_wrong_channel_count_raises_torchs_error(fmt, grad):
    conv = nn.Conv2d(8, 16, 3).eval()
    qconv, _ = mq.quantize(conv, **fmt)
    x = torch.randn(1, 7, 10, 10, requires_grad=grad)
    with pytest.raises(RuntimeError) as float_error:
        conv(x)
    with pytest.raises(RuntimeError) as quantized_error:
        qconv(x)
    assert str(quantized_error.value) == str(float_error.value)
    assert "expected input[1, 7, 10, 10] to have 8 channels, but got 7 channels instead" in str(quantized_error.value)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_an_input_smaller_than_the_kernel_raises_torchs_error(fmt):
    """(the weight-only int8 conv raised unfold's "sliding blocks as (2, -2)")"""
    conv = nn.Conv2d(4, 8, 3, dilation=(1, 2), padding=(0, 1)).eval()
    qconv, _ = mq.quantize(conv, **fmt)
    x = torch.randn(1, 4, 2, 6)
    with pytest.raises(RuntimeError) as float_error:
        conv(x)
    with pytest.raises(RuntimeError) as quantized_error:
        qconv(x)
    assert str(quantized_error.value) == str(float_error.value)


LAYERS = [  # in, out, kernel, stride, padding, groups, padding_mode; the sizes pick different routes
    (8, 16, 3, 1, 1, 1, "zeros"),
    (64, 64, 1, 1, 0, 1, "zeros"),
    (32, 48, 3, 2, 1, 1, "reflect"),
    (8, 8, 3, 1, 1, 8, "zeros"),
    (128, 128, 3, 1, 1, 1, "zeros"),
]


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda c: "x".join(str(v) for v in c))
def test_channels_last_input_gives_channels_last_result(fmt, layer):
    cin, cout, k, stride, padding, groups, mode = layer
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, padding_mode=mode).eval()
    qconv, _ = mq.quantize(conv, **fmt)
    x = torch.randn(2, cin, 9, 9)
    x_cl = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        y, y_cl = qconv(x), qconv(x_cl)
    assert conv(x_cl).is_contiguous(memory_format=torch.channels_last)  # what torch does
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    assert y.is_contiguous()
    # the same values up to the float conv's own order of sums (torch's conv differs so between layouts)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("shape", [(2, 1, 5, 5), (2, 16, 1, 1), (1, 16, 5, 5), (2, 16, 1, 6)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "nhwc_permuted"])
def test_result_strides_follow_torch_on_ambiguous_shapes(fmt, shape, layout):
    """One channel or one pixel: both layouts at once, where torch reads the strides (c10's
    suggest_memory_format); the result's strides are the float conv's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 16, 1).eval()
    with warnings.catch_warnings():  # (a 16 x 1 weight: LargerModelWarning, as it should)
        warnings.simplefilter("ignore")
        qconv, _ = mq.quantize(conv, **fmt, min_weight_numel=0)
    x = torch.randn(*shape)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "nhwc_permuted":
        x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    with torch.no_grad():
        assert qconv(x).stride() == conv(x).stride()


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_give_torchs_result_strides(fmt, mode):
    """A circular padding makes torch's result contiguous whatever x's layout (it pads into a new
    tensor); ours stayed channels_last."""
    conv = nn.Conv2d(16, 32, 3, padding=1, padding_mode=mode).eval()
    qconv, _ = mq.quantize(conv, **fmt)
    x = torch.randn(3, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    for given in (x, x.contiguous()):
        with torch.no_grad():
            assert qconv(given).stride() == conv(given).stride()
