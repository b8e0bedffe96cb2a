"""Empty weights quantize to empty quantized weights (as torch does), shared submodules work
on the state_dict path, and QuantizedEmbedding takes exactly the indices nn.Embedding takes
(issue 14, findings 7 and 8)."""
import pytest
import torch
from torch import nn

import mono_quant as mq


@pytest.mark.parametrize("axis", [0, 1, None])
@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 0), (0,), (0, 3, 2, 2), (3, 0, 2, 2)])
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_quantize_weight_of_an_empty_tensor(shape, axis, dtype):
    t = torch.empty(shape)
    if axis is not None and axis >= t.dim():
        pytest.skip("axis out of range for this shape")
    qw = mq.quantize_weight(t, dtype, axis=axis)
    channels = 1 if axis is None else shape[axis]
    assert qw.qdata.shape == t.shape and qw.qdata.dtype == getattr(torch, dtype)
    assert qw.scale.numel() == channels and qw.zero_point.numel() == channels
    assert qw.dequantize().shape == t.shape
    if axis is None:  # torch's oracle for the per-tensor case: an empty quantized tensor
        ref = torch.quantize_per_tensor(t, 1.0, 0, torch.qint8 if dtype == "int8" else torch.quint8)
        assert ref.int_repr().shape == qw.qdata.shape


@pytest.mark.parametrize("shape", [(0, 64), (16, 0), (0, 0)])
def test_quantize_weight_int4_of_an_empty_tensor(shape):
    qw = mq.quantize_weight(torch.empty(shape), "int4", group_size=32)
    assert tuple(qw.shape) == shape
    assert qw.dequantize().shape == shape


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int4", "fp16", "bf16"])
@pytest.mark.parametrize("in_features,out_features", [(4, 0), (0, 4), (0, 0)])
@pytest.mark.parametrize("activations", ["dynamic", None])
def test_empty_linear_quantizes_runs_and_saves(tmp_path, dtype, in_features, out_features, activations):
    torch.manual_seed(0)
    net = nn.Linear(in_features, out_features)
    kwargs = {"activations": activations} if dtype == "int8" or (dtype == "uint8" and activations is None) else {}
    qnet, skipped = mq.quantize(net, dtype=dtype, **kwargs)
    assert skipped == [] and type(qnet).__name__ == "QuantizedLinear"
    for x in (torch.randn(3, in_features), torch.randn(2, 5, in_features), torch.randn(0, in_features)):
        got = qnet(x)
        want = net(x)
        assert got.shape == want.shape and got.dtype == want.dtype
        if out_features and not in_features:  # y = bias exactly
            assert torch.equal(got, want)
    path = mq.save(qnet, tmp_path / "e.safetensors")
    loaded = mq.load(path, model=nn.Linear(in_features, out_features))
    x = torch.randn(3, in_features)
    assert torch.equal(loaded(x), qnet(x))
    sd_result = mq.quantize(net.state_dict(), dtype=dtype)
    mq.save(sd_result, tmp_path / "sd.safetensors")
    from_sd = mq.load(tmp_path / "sd.safetensors", model=nn.Linear(in_features, out_features))
    assert from_sd(x).shape == (3, out_features)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_empty_conv_quantizes_like_torch(dtype):
    net = nn.Conv2d(3, 0, 3)
    qnet, skipped = mq.quantize(net, dtype=dtype)
    assert skipped == [] and qnet.weight_shape == (0, 3, 3, 3)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError):  # torch's conv2d refuses an empty weight: so does ours
        net(x)
    with pytest.raises(RuntimeError):
        qnet(x)


def test_empty_model_in_a_sequential_is_not_the_only_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 0), nn.Linear(0, 4))
    qnet, skipped = mq.quantize(net)
    x = torch.randn(2, 8)
    assert skipped == [] and torch.equal(qnet(x), net(x))  # y = the last bias


# ---- finding 8: a shared submodule on the state_dict path -----------------------------------


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = self.a
        self.head = nn.Linear(8, 16)

    def forward(self, x):
        return self.head(self.b(self.a(x)))


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_shared_submodule_with_a_state_dict(dtype):
    torch.manual_seed(0)
    model = Shared()
    kwargs = {"group_size": 32} if dtype == "int4" else {}
    from_model, _ = mq.quantize(model, dtype=dtype, **kwargs)
    from_sd, skipped = mq.quantize(model.state_dict(), dtype=dtype, model=Shared(), **kwargs)
    assert skipped == []
    assert from_sd.a is from_sd.b  # still shared
    x = torch.randn(3, 8)
    assert torch.equal(from_sd(x), from_model(x))


def test_shared_submodule_with_a_state_dict_on_meta():
    torch.manual_seed(0)
    model = Shared()
    with torch.device("meta"):
        skeleton = Shared()
    qmodel, _ = mq.quantize(model.state_dict(), model=skeleton)
    x = torch.randn(3, 8)
    assert torch.equal(qmodel(x), mq.quantize(model)[0](x))


def test_shared_submodule_whose_names_disagree_in_the_state_dict():
    model = Shared()
    sd = dict(model.state_dict())
    sd["b.weight"] = sd["a.weight"] + 1  # no longer the same module's weight
    with pytest.raises(ValueError, match="b.weight"):
        mq.quantize(sd, model=Shared())


# ---- finding 7: QuantizedEmbedding takes what nn.Embedding takes ------------------------------

INDICES = {
    "bool-as-long-as-table": torch.tensor([True, False, True, False, True, True, False, True, False, True]),
    "bool-short": torch.tensor([True, False]),
    "float": torch.tensor([0.0, 1.0]),
    "float-empty": torch.tensor([]),
    "int8": torch.tensor([0, 4], dtype=torch.int8),
    "uint8": torch.tensor([0, 4], dtype=torch.uint8),
    "uint8-as-long-as-table": torch.ones(10, dtype=torch.uint8),
    "int16": torch.tensor([0, 4], dtype=torch.int16),
    "int32": torch.tensor([0, 4], dtype=torch.int32),
    "int64": torch.tensor([[0, 4], [9, 1]]),
    "uint16": torch.tensor([0, 4], dtype=torch.uint16),
    "uint32": torch.tensor([0, 4], dtype=torch.uint32),
    "uint64": torch.tensor([0, 4], dtype=torch.uint64),
    "complex": torch.tensor([0j]),
    "scalar": torch.tensor(3),
    "empty-long": torch.zeros(0, 2, dtype=torch.long),
    "negative": torch.tensor([-1]),
    "too-large": torch.tensor([10]),
    "strided": torch.arange(10)[::3],
}


def _outcome(module, idx):
    try:
        out = module(idx)
    except Exception as exc:  # the exception type is the contract
        return type(exc), None
    return None, out


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("name", INDICES.keys())
def test_embedding_index_dtypes_like_nn_embedding(dtype, name):
    torch.manual_seed(0)
    emb = nn.Embedding(10, 32)
    kwargs = {"group_size": 32} if dtype == "int4" else {}
    qemb, _ = mq.quantize(emb, dtype=dtype, embeddings=True, **kwargs)
    idx = INDICES[name]
    want_exc, want = _outcome(emb, idx)
    got_exc, got = _outcome(qemb, idx)
    assert got_exc is want_exc, (got_exc, want_exc)
    if want is not None:
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.equal(got, qemb(idx.long()))


@pytest.mark.parametrize("fmt", [dict(dtype="int8"), dict(dtype="int8", activations=None), dict(dtype="uint8"),
                                 dict(dtype="int4"), dict(dtype="fp16"), dict(dtype="bf16")],
                         ids=["int8-dynamic", "int8-weight-only", "uint8", "int4", "fp16", "bf16"])
def test_an_empty_batch_gives_the_float_layers_strides(fmt):
    """(uint8 returned strides (0, 0) for 0 rows: torch.from_numpy of an empty array)"""
    net = nn.Linear(208, 17).eval()
    qnet, _ = mq.quantize(net, **fmt)
    for x in (torch.randn(0, 208), torch.randn(0, 3, 208), torch.randn(3, 0, 208)):
        with torch.no_grad():
            got, want = qnet(x), net(x)
        assert got.shape == want.shape and got.stride() == want.stride()
