"""What a quantized weight stands for (``orig_dtype``: the dtype of ``.weight``, of the
dequantized weight and of an embedding lookup): float32, float16, bfloat16 or float64, and
nothing else at any door (the constructors, QuantizedWeight, from_saved, ``.to(dtype)``; the
file checks are in tests/io/test_io_validation.py).  A float8 model (a storage dtype: torch
has no float8 matmul or conv on the CPU) quantizes to weights that stand for float32, the
bits of its float32 copy's; a float64 model stays float64 (torch's quantize_dynamic
quantizes one, then its forward fails on a float64 input)."""
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.orig_dtype import ORIG_DTYPES, check_orig_dtype, orig_dtype_of

ACCEPTED = "float32, float16, bfloat16, float64"
FLOAT8 = [torch.float8_e4m3fn, torch.float8_e5m2]
REFUSED = FLOAT8 + [torch.int8, torch.complex64, "int8", "float8_e4m3fn", "floaty", 32]
FORMATS = ["int8", "uint8", "int4", "fp16", "bf16"]


def _empty_modules(orig_dtype):
    return [mq.QuantizedLinear(64, 8, orig_dtype=orig_dtype),
            mq.QuantizedConv2d(4, 8, 3, orig_dtype=orig_dtype),
            mq.QuantizedEmbedding(10, 32, orig_dtype=orig_dtype)]


@pytest.mark.parametrize("dtype", REFUSED, ids=str)
def test_constructors_refuse_what_no_weight_stands_for(dtype):
    for make in (lambda: _empty_modules(dtype)[0], lambda: _empty_modules(dtype)[1], lambda: _empty_modules(dtype)[2],
                 lambda: mq.QuantizedWeight(torch.zeros(2, 2, dtype=torch.int8), torch.ones(2),
                                            torch.zeros(2, dtype=torch.int32), 0, "int8", True, dtype),
                 lambda: mq.Int4Weight(torch.zeros(2, 16, dtype=torch.uint8), torch.ones(2, 1, dtype=torch.float16),
                                       torch.zeros(2, 1, dtype=torch.uint8), 0, "int4", False, dtype, None, (2, 32))):
        with pytest.raises(mq.ConfigError, match=f"orig_dtype {dtype!r} is not one of {ACCEPTED}"):
            make()


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("torch.bfloat16", torch.bfloat16),
                                        (torch.float16, torch.float16), ("float64", torch.float64)])
def test_constructors_take_each_accepted_dtype_or_its_name(name, dtype):
    for module in _empty_modules(name):
        assert module.orig_dtype == dtype
    assert check_orig_dtype(name) == dtype and set(ORIG_DTYPES) == {torch.float32, torch.float16, torch.bfloat16,
                                                                      torch.float64}


def test_from_saved_refuses_a_float8_orig_dtype():
    module = _empty_modules(torch.float32)[0]
    with pytest.raises(ValueError, match=f"saved orig_dtype 'float8_e4m3fn' is not one of {ACCEPTED}"):
        mq.QuantizedLinear.from_saved(module.init_kwargs(), {"orig_dtype": "float8_e4m3fn"}, {})


def test_float8_stands_for_float32():
    assert [orig_dtype_of(d) for d in FLOAT8 + list(ORIG_DTYPES)] == [torch.float32] * 2 + list(ORIG_DTYPES)
    with pytest.raises(mq.ConfigError, match="weight dtype torch.int8 is not one of"):
        orig_dtype_of(torch.int8)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.conv = nn.Conv2d(4, 8, 3)
        self.embed = nn.Embedding(50, 64)


def _quantized(model, fmt):
    qmodel, skipped = mq.quantize(model, dtype=fmt, embeddings=True, min_weight_numel=0)
    assert not skipped
    return qmodel


def _inputs():
    g = torch.Generator().manual_seed(1)
    return {"fc": torch.randn(3, 64, generator=g), "conv": torch.randn(2, 4, 7, 7, generator=g),
            "embed": torch.tensor([[0, 7, 49]])}


@pytest.mark.parametrize("float8", FLOAT8, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
def test_float8_model_quantizes_as_its_float32_copy(fmt, float8):
    torch.manual_seed(0)
    model8 = _Net().to(float8)
    q8, q32 = _quantized(model8, fmt), _quantized(model8.float(), fmt)  # float8 values are exact in float32
    for name, x in _inputs().items():
        m8, m32 = getattr(q8, name), getattr(q32, name)
        assert m8.orig_dtype == torch.float32 and m8.weight.dtype == torch.float32
        assert m8.bias is None or m8.bias.dtype == torch.float32
        assert torch.equal(m8.weight.dequantize(), m32.weight.dequantize())
        assert torch.equal(m8(x), m32(x)) and m8(x).dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(q8.state_dict().values(), q32.state_dict().values()))


def test_float8_model_saves_loads_and_streams_as_float32(tmp_path):
    torch.manual_seed(0)
    model8 = _Net().to(torch.float8_e4m3fn)
    mq.save(_quantized(model8, "int8"), tmp_path / "q.safetensors")
    loaded = mq.load(tmp_path / "q.safetensors", model=_Net().to(torch.float8_e4m3fn))
    assert {loaded.fc.weight.dtype, loaded.conv.weight.dtype, loaded.embed.weight.dtype} == {torch.float32}
    assert {layer["orig_dtype"] for layer in mq.load(tmp_path / "q.safetensors").layers} == {"float32"}
    save_file(model8.state_dict(), os.fspath(tmp_path / "m8.safetensors"))
    mq.quantize_checkpoint(tmp_path / "m8.safetensors", tmp_path / "c.safetensors", "int4", min_weight_numel=0)
    qsd = mq.load(tmp_path / "c.safetensors")
    # a checkpoint's float8 weight records no dtype (its model's dtype is its other tensors'); float32 unless told
    assert qsd.layers and {layer["orig_dtype"] for layer in qsd.layers} == {None}
    assert qsd.dequantize()["fc.weight"].dtype == torch.float32


def test_a_float8_checkpoint_with_bfloat16_norms_loads_into_its_bfloat16_model(tmp_path):
    # (a float8 layer recorded as float32 was refused there, and a float32 model by the norms' dtype)
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.ln, self.l2 = nn.Linear(64, 64, bias=False), nn.LayerNorm(64), nn.Linear(64, 32, bias=False)

        def forward(self, x):
            return self.l2(self.ln(self.l1(x)))

    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in Net().to(torch.bfloat16).state_dict().items()}
    for key in ("l1.weight", "l2.weight"):
        sd[key] = sd[key].to(torch.float8_e4m3fn)
    save_file(sd, os.fspath(tmp_path / "fp8.safetensors"))
    mq.quantize_checkpoint(tmp_path / "fp8.safetensors", tmp_path / "q.safetensors", "int8")
    loaded = mq.load(tmp_path / "q.safetensors", model=Net().to(torch.bfloat16))
    assert loaded(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("fmt", FORMATS)
def test_float64_model_stays_float64(fmt):
    torch.manual_seed(0)
    model = _Net().double()
    qmodel = _quantized(model, fmt)
    for name, x in _inputs().items():
        m, float_layer = getattr(qmodel, name), getattr(model, name)
        x = x.double() if x.is_floating_point() else x
        assert m.orig_dtype == torch.float64 and m.weight.dtype == torch.float64
        assert m.bias is None or m.bias.dtype == torch.float64
        y, ref = m(x), float_layer(x)
        assert y.dtype == torch.float64
        assert (y - ref).norm() <= (0.1 if fmt == "int4" else 0.02) * ref.norm()  # the format's rounding
    if fmt in ("int8", "uint8", "int4"):  # the codes of the float32 copy (the kernels quantize float32 rows)
        q32 = _quantized(model.float(), fmt)
        for name in ("fc", "conv", "embed"):
            codes64, codes32 = (getattr(q, name).quantized_weight().qdata for q in (qmodel, q32))
            assert torch.equal(codes64, codes32)


def test_to_float8_is_refused_and_leaves_the_layer_as_it_was():
    torch.manual_seed(0)
    qmodel = _quantized(_Net(), "int8")
    x = _inputs()["fc"]
    before = qmodel.fc(x)
    with pytest.raises(mq.ConfigError, match=f"torch.float8_e4m3fn is not one of {ACCEPTED}"):
        qmodel.fc.to(torch.float8_e4m3fn)
    assert qmodel.fc.orig_dtype == torch.float32 and qmodel.fc.bias.dtype == torch.float32
    assert torch.equal(qmodel.fc(x), before)
    qmodel.fc.double()
    assert qmodel.fc.weight.dtype == torch.float64 and qmodel.fc(x.double()).dtype == torch.float64
