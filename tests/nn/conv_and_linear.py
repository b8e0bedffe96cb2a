"""A 1x1 conv and the Linear of the same weight and bias, both quantized weight-only int8: the
routes that run a 1x1 conv's pixels (or one-pixel images) as Linear rows give that Linear's bits."""
import torch
from torch import nn

import mono_quant as mq

__all__ = ["weight_only_conv_and_linear"]


def weight_only_conv_and_linear(cin: int, cout: int, stride=1, seed: int = 0):
    """``(float conv, quantized conv layer, quantized Linear layer)`` of one random 1x1 weight."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 1, stride=stride).eval()
    linear = nn.Linear(cin, cout).eval()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.view(cout, cin))
        linear.bias.copy_(conv.bias)
    qc = mq.quantize(nn.Sequential(conv), dtype="int8", activations=None).model[0]
    ql = mq.quantize(nn.Sequential(linear), dtype="int8", activations=None).model[0]
    return conv, qc, ql
