"""Per-layer caches at their edges (found in review): two `.data =` in a row, an in-place
load under torch.inference_mode, a trainable fp16 weight, and the C layer's messages with
float values."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C


def _fp16_conv(seed=0):
    torch.manual_seed(seed)
    return mq.quantize(nn.Sequential(nn.Conv2d(16, 8, 3, padding=1)), dtype="fp16").model.eval()


def test_two_data_assignments_in_a_row_are_seen():
    """The memo's key holds addresses; the memo pins the storage they name, so a second
    `.data =` cannot land on the address the key remembers."""
    model, x = _fp16_conv(), torch.randn(1, 16, 16, 16)  # 16x16: torch's conv on the kept float weight
    with torch.no_grad():
        model(x)
        for trial in range(10):
            buf = model[0]._buffers["weight"]
            buf.data = buf.data.clone() * 1
            buf.data = buf.data.clone() * (1.5 if trial % 2 else 0.5)
            assert torch.equal(model(x), copy.deepcopy(model)(x)), trial


def _int8_small_conv(seed):
    torch.manual_seed(seed)
    return mq.quantize(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))).model.eval()


@pytest.mark.parametrize("build,shape", [(_int8_small_conv, (1, 4, 8, 8)), (_fp16_conv, (1, 16, 16, 16))],
                         ids=["int8-float-route", "fp16-torch-route"])
def test_load_state_dict_under_inference_mode_is_seen(build, shape):
    """Inference tensors move no version counter: the load's post hook drops what was derived."""
    x = torch.randn(*shape)
    with torch.inference_mode():
        a, b = build(1), build(2)
        a(x)  # caches built from a's tensors
        a.load_state_dict(b.state_dict())
        assert torch.equal(a(x), b(x))


def test_trainable_fp16_conv_weight_gets_its_gradient():
    """A float16 weight made trainable: its gradient (torch's conv), on every route."""
    for hw in (4, 16):  # the C kernel's route and torch's
        model = _fp16_conv()
        w = model[0]._buffers["weight"]
        w.requires_grad_()
        x = torch.randn(1, 16, hw, hw)
        y = model(x)
        assert y.grad_fn is not None
        y.square().sum().backward()
        ref_w = w.detach().float().requires_grad_()
        nn.functional.conv2d(x, ref_w, model[0].bias.detach(), padding=1).square().sum().backward()
        assert w.grad is not None
        torch.testing.assert_close(w.grad.float(), ref_w.grad, rtol=2e-2, atol=2e-2)


def test_c_messages_show_float_values():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError) as err:
        _C.quantize_rows(x, np.array([-0.5, 1.0], np.float32), np.zeros(2, np.int32), -128, 127)
    assert "-0.5" in str(err.value) and "%g" not in str(err.value)
