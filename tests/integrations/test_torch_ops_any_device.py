"""The ``mono_quant`` ops a traced forward calls on a GPU (the dequantizing ops, the embedding lookup)
have a torch-only kernel for every device besides the CPU's C one.  On a GPU, autograd, torch.compile
and torch.export stopped at "Could not run 'mono_quant::dequantize_int4' with arguments from the
'CUDA' backend", and then inductor refused the int4 one's strided result.  Here the kernel a CUDA
tensor would get is called on CPU tensors: it must give the C op's values, contiguous, as the fake
says.  (tests/nn/test_cuda_device.py runs the same on a real GPU.)"""
import math

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.formats.traced_forward import _int4_group

if not hasattr(torch.library, "get_kernel"):
    pytest.skip("torch.library.get_kernel (torch 2.9+) reads a device's kernel", allow_module_level=True)

_CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


def _both(name, *args):
    """(the CPU op's result, the CUDA kernel's on the same CPU tensors)."""
    cpu = getattr(torch.ops.mono_quant, name)(*args)
    other = torch.library.get_kernel(f"mono_quant::{name}", "CUDA").call_boxed(_CUDA, *args)
    return cpu, other


def _check(cpu, other):
    assert other.is_contiguous() and other.shape == cpu.shape and other.dtype == cpu.dtype
    torch.testing.assert_close(other, cpu, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(16, 27), (5, 1), (33, 64), (1, 130)])
def test_dequantize_int8_packed(shape):
    torch.manual_seed(0)
    layer = mq.quantize(nn.Sequential(nn.Linear(shape[1], shape[0])), dtype="int8", include=["0"]).model[0]
    _check(*_both("dequantize_int8_packed", layer.weight_packed, layer.weight_packed_info, layer.weight_scale,
                  layer.weight_zero_point, shape[0], shape[1], 0))


def test_dequantize_int8_packed_conv_groups():
    torch.manual_seed(0)
    conv = mq.quantize(nn.Sequential(nn.Conv2d(8, 12, 3, groups=4)), dtype="int8").model[0]
    for g in range(4):
        _check(*_both("dequantize_int8_packed", conv.weight_packed, conv.weight_packed_info, conv.weight_scale,
                      conv.weight_zero_point, 3, 2 * 9, g))


def test_dequantize_rows_uint8():
    torch.manual_seed(0)
    layer = mq.quantize(nn.Sequential(nn.Linear(27, 9)), dtype="uint8").model[0]
    _check(*_both("dequantize_rows", layer.weight_qdata, layer.weight_scale, layer.weight_zero_point))


@pytest.mark.parametrize("cols,group_size", [(27, 128), (64, 32), (200, None), (1, 128)])
def test_dequantize_int4(cols, group_size):
    torch.manual_seed(0)
    layer = mq.quantize(nn.Sequential(nn.Linear(cols, 7)), dtype="int4", group_size=group_size).model[0]
    _check(*_both("dequantize_int4", layer.weight_qdata, layer.weight_scale, layer.weight_zero_point, cols,
                  _int4_group(layer)))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int4"])
def test_embedding_lookup(dtype):
    torch.manual_seed(0)
    emb = mq.quantize(nn.Sequential(nn.Embedding(40, 27)), dtype=dtype, embeddings=True).model[0]
    group = _int4_group(emb) if dtype == "int4" else 0
    indices = torch.tensor([[3, 0, 39], [7, 7, 1]])
    _check(*_both("embedding_lookup", indices, emb.weight_qdata, emb.weight_scale, emb.weight_zero_point, 40, 27,
                  group))
    assert math.prod(indices.shape) * 27 == _both("embedding_lookup", indices, emb.weight_qdata, emb.weight_scale,
                                                  emb.weight_zero_point, 40, 27, group)[1].numel()
