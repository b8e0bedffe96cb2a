"""activations= does what it says in every integer format: an int4 layer with activations=None
multiplies float inputs (it quantized them to int8 per group whatever the layer said), and uint8
layers, which have no kernel that quantizes inputs, say weight-only (they said "dynamic")."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.kernels import SETTINGS


def _relative_error(y, reference):
    return float((y - reference).norm() / reference.norm())


@pytest.mark.parametrize("rows", [1, 4, 64])
@pytest.mark.parametrize("grad", [False, True])  # True: the torch.library op (autograd, compile, export)
def test_int4_weight_only_layer_takes_float_inputs(rows, grad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 320))
    layer = mq.quantize(model, "int4", activations=None).model[0]
    assert layer.activations is None and "activations=None" in repr(layer)
    x = torch.randn(rows, 256, requires_grad=grad)
    reference = F.linear(x.detach(), layer.dequantized_weight(), layer.bias)
    assert _relative_error(layer(x).detach(), reference) < 1e-5


def test_int4_dynamic_layer_still_quantizes_where_the_kernel_can():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 320))
    dynamic = mq.quantize(model, "int4").model[0]
    weight_only = mq.quantize(model, "int4", activations=None).model[0]
    x = torch.randn(4, 256)
    reference = F.linear(x, dynamic.dequantized_weight(), dynamic.bias)
    error = _relative_error(dynamic(x), reference)
    if SETTINGS.isa == "scalar" or not SETTINGS.int4_int8_activations:
        assert error < 1e-5  # no integer kernel here: float activations either way
    else:
        assert 1e-4 < error < 3e-2  # int8 activations per group: ~0.5% noise
    # the two layers share the same codes: switching a layer's mode switches its kernel
    assert torch.equal(dynamic.dequantized_weight(), weight_only.dequantized_weight())
    dynamic.set_activations(None)
    assert torch.equal(dynamic(x), weight_only(x))


def test_uint8_layers_say_weight_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 10))
    result = mq.quantize(model, "uint8")
    assert result.config.activations is None
    assert result.model[0].activations is None and result.model[2].activations is None
    x = torch.randn(2, 4, 8, 8)
    reference = F.conv2d(x, result.model[0].dequantized_weight(), result.model[0].bias)
    assert _relative_error(result.model[0](x), reference) < 1e-5


def test_uint8_with_dynamic_activations_is_refused():
    with pytest.raises(mq.ConfigError, match="uint8 layers take float inputs"):
        mq.quantize(nn.Linear(64, 64), "uint8", activations="dynamic")


@pytest.mark.parametrize("dtype", ["uint8", "fp16", "bf16"])
def test_set_activations_dynamic_is_refused_for_float_input_formats(dtype):
    """It was taken (the repr said activations=dynamic, a save wrote it) and the layer ran weight-only."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Conv2d(4, 8, 3))
    qmodel = mq.quantize(model, dtype).model
    for layer in qmodel:
        before = layer.activations
        with pytest.raises(ValueError, match=rf"activations='dynamic' applies to int8 and int4 layers; {dtype} "
                                             r"layers take float inputs"):
            layer.set_activations("dynamic")
        assert layer.activations == before
        layer.set_activations(None)
    int8 = mq.quantize(model, "int8", activations=None).model
    int8[0].set_activations("dynamic")  # (int8 and int4 switch modes)
    assert int8[0].activations == "dynamic"


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr", "nested"])
def test_sparse_and_nested_inputs_say_what_to_pass(dtype, kind):
    """nn.Linear takes them; each route of the quantized one failed on its own terms ("can't convert
    Sparse layout tensor to numpy", "reshape is not implemented for sparse tensors", "view(): ...")."""
    layer = mq.quantize(nn.Sequential(nn.Linear(64, 32)), dtype).model[0]
    dense = torch.randn(3, 64)
    if kind == "nested":
        x = torch.nested.nested_tensor([torch.randn(2, 64), torch.randn(5, 64)], layout=torch.jagged)
        fix = r"x\.to_padded_tensor"
    else:
        x = dense.to_sparse() if kind == "sparse_coo" else dense.to_sparse_csr()
        fix = r"x\.to_dense\(\)"
    with pytest.raises(TypeError, match=rf"QuantizedLinear: a .*{kind.split('_')[0]}.* input; quantized layers take "
                                        rf"dense \(strided\) tensors: pass {fix}"):
        layer(x)
