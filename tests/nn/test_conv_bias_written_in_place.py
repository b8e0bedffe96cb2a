"""A quantized conv's bias written through ``.data`` (hand-written optimizers, EMA, init code) reaches
the next call: the direct routes' kept panels carried their own copy of the bias, and a ``.data``
write moves neither the version counter nor the address the route's stamp checks."""
import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C

LAYERS = [(lambda: nn.Conv2d(16, 32, 3, padding=1), (2, 16, 8, 8)),  # kept panels
          (lambda: nn.Conv2d(64, 128, 3, padding=1), (1, 64, 16, 16)),
          (lambda: nn.Conv2d(8, 16, 3, groups=2), (1, 8, 9, 9)),
          (lambda: nn.Conv1d(16, 32, 3, padding=1), (2, 16, 20)),
          (lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16), (2, 16, 8, 8))]  # the depthwise route


@pytest.mark.parametrize("dtype,activations", [("int8", "dynamic"), ("int8", None), ("int4", None), ("fp16", None),
                                               ("bf16", None)])
@pytest.mark.parametrize("case", range(len(LAYERS)))
def test_a_bias_written_through_data_reaches_the_next_call(case, dtype, activations):
    make, shape = LAYERS[case]
    torch.manual_seed(case)
    conv, x = make(), torch.randn(*shape)
    q = mq.quantize(nn.Sequential(conv), dtype, activations=activations, include=["0"]).model
    shifted = make()
    shifted.load_state_dict(conv.state_dict())
    with torch.no_grad():
        shifted.bias.add_(torch.linspace(-1, 1, shifted.bias.numel()))
        want = mq.quantize(nn.Sequential(shifted), dtype, activations=activations, include=["0"]).model(x)
        q(x)  # the route and its panels are kept by now
        q[0].bias.data.add_(torch.linspace(-1, 1, shifted.bias.numel()))
        assert torch.equal(q(x), want)


def test_dconv2d_refuses_a_bias_of_another_size():
    w = torch.randn(8, 4, 3, 3)
    panels, lanes = _C.dconv_panels(w.numpy(), False, None, 1)
    x = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="bias has 7 floats, the conv 8 outputs"):
        _C.dconv2d(x, panels, lanes, 8, (3, 3), (1, 1), (0, 0), (1, 1), 1, bias=np.zeros(7, np.float32))
    y = _C.dconv2d(x + 0, panels, lanes, 8, (3, 3), (1, 1), (0, 0), (1, 1), 1, bias=np.arange(8, dtype=np.float32))
    assert np.array_equal(y[0, :, 0, 0], np.arange(8, dtype=np.float32))
