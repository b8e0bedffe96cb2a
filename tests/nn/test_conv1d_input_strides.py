"""A quantized Conv1d gives the float Conv1d's result strides whatever x's: sequence models call it on
``hidden.transpose(1, 2)``, whose height-1 view reads as channels_last to the 2-D routes; the result was
then (L*C, 1, C), not contiguous, and ``y.view(batch, -1)`` raised where torch's works."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq

FORMATS = [dict(dtype="int8"), dict(dtype="int8", activations=None), dict(dtype="uint8"), dict(dtype="int4"),
           dict(dtype="fp16"), dict(dtype="bf16")]
IDS = ["int8-dynamic", "int8-weight-only", "uint8", "int4", "fp16", "bf16"]
LAYERS = [(64, 64, 3, 1, 1, 1), (96, 208, 1, 2, 1, 1), (96, 440, 3, 3, 1, 1), (32, 32, 5, 1, 2, 32)]


def _inputs(cin: int) -> dict:
    torch.manual_seed(1)
    hidden = torch.randn(4, 33, cin)  # (batch, length, channels)
    return {"transposed": hidden.transpose(1, 2), "contiguous": hidden.transpose(1, 2).contiguous(),
            "unbatched-transposed": hidden[0].t(), "every-other-step": torch.randn(4, cin, 66)[:, :, ::2]}


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda c: "x".join(str(v) for v in c))
def test_result_strides_are_the_float_conv1ds(fmt, layer):
    cin, cout, k, stride, padding, groups = layer
    torch.manual_seed(0)
    conv = nn.Conv1d(cin, cout, k, stride=stride, padding=padding, groups=groups).eval()
    qconv, _ = mq.quantize(conv, **fmt)
    for name, x in _inputs(cin).items():
        with torch.no_grad():
            want, got = conv(x), qconv(x)
        assert got.stride() == want.stride(), name
        # the values of a contiguous x's, up to a float conv's order of sums (torch's differ so between layouts)
        torch.testing.assert_close(got, qconv(x.contiguous()), rtol=1e-5, atol=1e-5, msg=name)
        got.view(-1)  # (raised before)
        graded = qconv(x.detach().clone().requires_grad_(True))  # the traced ops' route
        assert graded.stride() == want.stride(), name


@pytest.mark.parametrize("fmt", FORMATS[:2] + FORMATS[3:5], ids=IDS[:2] + IDS[3:5])
def test_traced_programs_give_the_float_conv1ds_strides(fmt):
    torch.manual_seed(0)
    conv = nn.Conv1d(96, 208, 1, stride=2, padding=1).eval()
    qconv, _ = mq.quantize(conv, **fmt)
    x = _inputs(96)["transposed"]
    with torch.no_grad():
        want = conv(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(qconv, (x,), check_trace=False)(x)
        exported = torch.export.export(qconv, (x,)).module()(x)
    for y in (traced, exported):
        assert y.stride() == want.stride()
