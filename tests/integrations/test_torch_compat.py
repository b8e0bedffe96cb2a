"""Quantized modules seen by code written for float ones (torch_compat.py): ``.weight``
of the float weight's shape/dtype/device, and ``.to(dtype)`` / ``.half()`` that keep the
stored format and change the compute dtype."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.torch_compat import DequantizedWeightView

DTYPES = ["int8", "int4", "fp16", "bf16"]


def _sqnr(ref, y):
    ref, y = ref.double(), y.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_has_the_float_weights_metadata_and_values(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.Conv2d(3, 8, 3))
    qmodel, _ = mq.quantize(model, dtype=dtype)
    for q, f in zip(qmodel, model):
        w = q.weight
        assert isinstance(w, torch.Tensor) and isinstance(w, DequantizedWeightView)
        assert w.shape == f.weight.shape and w.dtype == torch.float32 and w.device == f.weight.device
        assert w.size(0) == f.weight.size(0) and w.dim() == f.weight.dim() and not w.requires_grad
        assert torch.equal(w * 1, q.dequantized_weight(torch.float32))  # any op computes on the dequantized values
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(F.linear(x, qmodel[0].weight, qmodel[0].bias), qmodel[0](x), rtol=1e-2, atol=1e-2)
    assert set(qmodel.state_dict()) == set(copy.deepcopy(qmodel).state_dict())  # the view is no state


def test_t5_style_code_reading_weight_dtype_runs():
    class DenseActDense(nn.Module):  # as transformers' T5DenseActDense
        def __init__(self):
            super().__init__()
            self.wi, self.wo = nn.Linear(32, 64, bias=False), nn.Linear(64, 32, bias=False)

        def forward(self, h):
            h = F.relu(self.wi(h))
            if isinstance(self.wo.weight, torch.Tensor) and h.dtype != self.wo.weight.dtype \
                    and self.wo.weight.dtype != torch.int8:
                h = h.to(self.wo.weight.dtype)
            return self.wo(h)

    torch.manual_seed(0)
    model = DenseActDense().eval()
    x = torch.randn(2, 5, 32)
    for dtype in DTYPES:
        qmodel, _ = mq.quantize(model, dtype=dtype)
        with torch.no_grad():
            y = qmodel(x)
        assert y.dtype == torch.float32 and _sqnr(model(x).detach(), y) > 15


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_encoder_quantized_takes_its_regular_path(dtype):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    qmodel, _ = mq.quantize(model, dtype=dtype)
    x = torch.randn(2, 9, 64)
    with torch.no_grad():  # eval + no_grad: the conditions of torch's fused fast path
        y = qmodel(x)
    assert _sqnr(model(x).detach(), y) > (20 if dtype == "int4" else 30)


def test_multihead_attention_with_a_quantized_out_proj():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    q = copy.deepcopy(mha)
    plain = nn.Linear(32, 32)
    plain.load_state_dict(mha.out_proj.state_dict())  # (out_proj's own type is not quantized by default)
    q.out_proj = mq.quantize(nn.Sequential(plain), dtype="int8").model[0]
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        ref, y = mha(x, x, x)[0], q(x, x, x)[0]
    assert _sqnr(ref, y) > 30


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16", "bf16"])
@pytest.mark.parametrize("convert", ["bf16", "half"])
def test_dtype_conversion_keeps_the_stored_format(dtype, convert):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 64))
    qmodel, _ = mq.quantize(model, dtype=dtype)
    stored = {k: (v.dtype, v.clone()) for k, v in qmodel.state_dict().items() if not k.endswith("bias")}
    x = torch.randn(4, 256)
    with torch.no_grad():
        ref, y32 = model(x), qmodel(x)
        target = torch.bfloat16 if convert == "bf16" else torch.float16
        converted = qmodel.to(target) if convert == "bf16" else qmodel.half()
        assert converted is qmodel
        for k, v in qmodel.state_dict().items():
            if k in stored:
                assert v.dtype == stored[k][0] and torch.equal(v, stored[k][1]), k
        assert qmodel[0].bias.dtype == target and qmodel[0].weight.dtype == target
        y = qmodel(x.to(target))
        assert y.dtype == target
        assert _sqnr(ref, y) > min(_sqnr(ref, y32) - 6, 35)  # bf16/fp16 activations round (~50 dB), never garbage
        back = qmodel.float()(x)  # back to float32: only the bias kept its rounding
        assert back.dtype == torch.float32 and _sqnr(y32, back) > 40


class _ReadsWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.conv = nn.Linear(16, 16), nn.Conv2d(4, 4, 3)

    def forward(self, x, image):
        return self.fc(x) + self.fc.weight.sum(), self.conv(image) * self.conv.weight.mean()


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non-strict"])
def test_export_of_a_forward_reading_weight(dtype, strict):
    """A forward that reads a quantized layer's .weight exports (non-strict export gave the view
    fake buffers, which the C dequantization read: '.numpy() is not supported for tensor
    subclasses', or a data-dependent guard)."""
    torch.manual_seed(0)
    q = mq.quantize(_ReadsWeights(), dtype=dtype, min_weight_numel=0).model
    x, image = torch.randn(2, 16), torch.randn(1, 4, 6, 6)
    program = torch.export.export(q, (x, image), strict=strict).module()
    with torch.no_grad():
        for got, expected in zip(program(x, image), q(x, image)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
