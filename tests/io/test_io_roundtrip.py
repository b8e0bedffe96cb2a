"""save() -> load(): bit-identical outputs, meta skeletons, tied weights, shared modules, state_dict results."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.io.skeleton import parameters_on_meta
from mono_quant.io import CheckpointError, QuantizedStateDict


class Net(nn.Module):
    """Linear + Conv2d (reflect padding) + BatchNorm (buffers) + a non-persistent buffer + a float head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 32, bias=False)
        self.head = nn.Linear(32, 5)
        self.register_buffer("offset", torch.linspace(-1, 1, 32), persistent=False)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.head(self.fc2(x) + self.offset)


def _trained_net(seed=0):
    torch.manual_seed(seed)
    net = Net()
    net(torch.randn(4, 3, 6, 6))  # moves the BatchNorm running stats off their defaults
    return net.eval()


INPUT = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))

CASES = {
    "int8": dict(dtype="int8"),
    "int8-asymmetric": dict(dtype="int8", symmetric=False),
    "int8-per-tensor": dict(dtype="int8", granularity="per_tensor"),
    "uint8": dict(dtype="uint8"),
    "fp16": dict(dtype="fp16"),
    "bf16": dict(dtype="bf16"),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("skeleton_device", ["cpu", "meta"])
def test_roundtrip_bit_identical(tmp_path, options, skeleton_device):
    qmodel, skipped = mq.quantize(_trained_net(), exclude=["head"], **options)
    path = mq.save(qmodel, tmp_path / "m.safetensors")
    skeleton = Net().eval()
    if skeleton_device == "meta":
        offset = skeleton.offset
        skeleton = skeleton.to("meta")
        skeleton.offset = offset  # a non-persistent buffer must come from a real skeleton
    before = {k: v.clone() for k, v in skeleton.state_dict().items()} if skeleton_device == "cpu" else None
    loaded = mq.load(path, model=skeleton)
    assert type(loaded.fc1) is type(qmodel.fc1) and type(loaded.conv) is type(qmodel.conv)
    assert isinstance(loaded.head, nn.Linear) and type(loaded.head) is nn.Linear  # skipped layer stays float
    assert torch.equal(loaded(INPUT), qmodel(INPUT))
    for (k, a), (k2, b) in zip(qmodel.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    assert loaded.fc1.weight_format == qmodel.fc1.weight_format
    assert not loaded.training
    if before is not None:  # the skeleton is not modified
        assert all(torch.equal(before[k], v) for k, v in skeleton.state_dict().items())
        assert type(skeleton.fc1) is nn.Linear


def test_save_quantization_result_and_manifest(tmp_path):
    result = mq.quantize(_trained_net(), exclude=["head"])
    mq.save(result, tmp_path / "r.safetensors")
    qsd = mq.load(tmp_path / "r.safetensors")
    assert isinstance(qsd, QuantizedStateDict)
    assert qsd.kind == "model" and qsd.format_version == mq.io.FORMAT_VERSION
    by_name = {layer["name"]: layer for layer in qsd.layers}
    assert set(by_name) == {"conv", "fc1", "fc2"}
    assert by_name["fc1"]["dtype"] == "int8" and by_name["fc1"]["scheme"] == "symmetric"
    assert by_name["fc1"]["axis"] == 0 and by_name["fc1"]["shape"] == [32, 288]
    assert by_name["conv"]["type"] == "Conv2d" and by_name["conv"]["orig_dtype"] == "float32"
    assert qsd.manifest["config"]["dtype"] == "int8"
    assert [s[0] for s in qsd.manifest["skipped"]] == ["head"]
    assert qsd["fc1.weight_packed"].dtype == torch.int8
    # the quantized size is what is stored: int8 data, not float
    assert qsd.nbytes < mq.quantize(_trained_net(), dtype="fp16").report.model_bytes_after
    loaded = qsd.load_into(Net().eval())
    assert torch.equal(loaded(INPUT), result.model(INPUT))


def test_dequantize_gives_float_state_dict(tmp_path):
    qmodel, _ = mq.quantize(_trained_net(), exclude=["head"])
    qsd = mq.load(mq.save(qmodel, tmp_path / "m.safetensors"))
    float_sd = qsd.dequantize()
    assert set(float_sd) == set(Net().state_dict())
    assert torch.equal(float_sd["fc1.weight"], qmodel.fc1.dequantized_weight())
    assert float_sd["fc1.weight"].dtype == torch.float32
    assert torch.equal(float_sd["conv.bias"], qmodel.conv.bias)
    assert "fc2.bias" not in float_sd
    net = Net().eval()
    net.load_state_dict(float_sd)  # a plain float model again
    assert float_sd["fc1.weight"].dtype == torch.float32
    assert qsd.dequantize(torch.bfloat16)["fc1.weight"].dtype == torch.bfloat16


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.proj = nn.Linear(16, 16)
        self.proj2 = nn.Linear(16, 16)
        self.proj2.weight = self.proj.weight  # tied quantized layers
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.emb.weight  # tied float weights (head excluded)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(self.proj2(torch.relu(self.proj(h))))


def test_tied_weights(tmp_path):
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(Tied(), exclude=["head"])
    assert qmodel.proj.weight_packed is qmodel.proj2.weight_packed
    path = mq.save(qmodel, tmp_path / "t.safetensors")
    qsd = mq.load(path)
    aliases = qsd.manifest["tensor_aliases"]
    assert aliases["head.weight"] == "emb.weight"
    assert aliases["proj2.weight_packed"] == "proj.weight_packed"
    assert qsd["head.weight"] is qsd["emb.weight"]
    with torch.device("meta"):  # (module.to("meta") would untie the skeleton's own weights)
        skeleton = Tied()
    assert skeleton.head.weight is skeleton.emb.weight
    loaded = mq.load(path, model=skeleton)
    assert loaded.head.weight is loaded.emb.weight  # the tie is kept
    assert loaded.proj.weight_packed.data_ptr() == loaded.proj2.weight_packed.data_ptr()
    ids = torch.tensor([[1, 2, 3, 9]])
    assert torch.equal(loaded(ids), qmodel(ids))


def test_tied_in_model_but_different_in_file(tmp_path):
    sd = {"emb.weight": torch.randn(10, 16), "head.weight": torch.randn(10, 16)}
    sd.update({f"{n}.{p}": t for n in ("proj", "proj2") for p, t in nn.Linear(16, 16).state_dict().items()})
    mq.save(sd, tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError, match="tied"):
        mq.load(tmp_path / "p.safetensors", model=Tied())


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(8, 8)
        self.again = self.block  # one module under two names
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.again(torch.relu(self.block(x))))


def test_shared_module(tmp_path):
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(Shared())
    path = mq.save(qmodel, tmp_path / "s.safetensors")
    qsd = mq.load(path)
    layer = next(l for l in qsd.layers if l["name"] == "block")
    assert layer["aliases"] == ["again"]
    loaded = mq.load(path, model=Shared().to("meta"))
    assert loaded.block is loaded.again
    x = torch.randn(2, 8)
    assert torch.equal(loaded(x), qmodel(x))


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_root_module_is_quantized(tmp_path, dtype):
    torch.manual_seed(0)
    qlinear, _ = mq.quantize(nn.Linear(12, 7), dtype=dtype)
    path = mq.save(qlinear, tmp_path / "root.safetensors")
    loaded = mq.load(path, model=nn.Linear(12, 7, device="meta"))
    assert type(loaded) is type(qlinear)
    x = torch.randn(3, 12)
    assert torch.equal(loaded(x), qlinear(x))
    assert "weight" in mq.load(path).dequantize()


def test_state_dict_result_roundtrip(tmp_path):
    net = _trained_net()
    result = mq.quantize(net.state_dict(), exclude=["head"])
    path = mq.save(result, tmp_path / "sd.safetensors")
    qsd = mq.load(path)
    assert qsd.kind == "state_dict"
    quantized = result.state_dict()
    assert list(qsd) == list(quantized) or set(qsd) == set(quantized)
    for key, tensor in quantized.items():
        assert qsd[key].dtype == tensor.dtype and torch.equal(qsd[key], tensor), key
    # into a model: the same model quantize(model) gives
    expected, _ = mq.quantize(net, exclude=["head"])
    with pytest.raises(mq.CheckpointError, match="non-persistent buffers.*offset"):  # never a placeholder
        mq.load(path, model=Net().eval().to("meta"))
    with parameters_on_meta():  # parameters on meta, buffers real
        skeleton = Net().eval()
    loaded = mq.load(path, model=skeleton)
    assert torch.equal(loaded(INPUT), expected(INPUT))
    assert torch.equal(qsd.dequantize()["fc1.weight"], expected.fc1.dequantized_weight())


def test_plain_state_dict_and_mismatches(tmp_path):
    net = _trained_net()
    path = mq.save(net.state_dict(), tmp_path / "float.safetensors")
    with pytest.raises(mq.CheckpointError, match="offset"):
        mq.load(path, model=Net().to("meta"))
    with parameters_on_meta():
        loaded = mq.load(path, model=Net())
    assert all(type(m) in (nn.Linear, nn.Conv2d, nn.BatchNorm2d, Net) for m in loaded.modules())
    qmodel, _ = mq.quantize(net)
    qpath = mq.save(qmodel, tmp_path / "q.safetensors")

    class Wider(Net):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(32, 6)
            self.extra = nn.Linear(2, 2)

    with pytest.raises(CheckpointError) as info:
        mq.load(path, model=Wider())
    message = str(info.value)
    assert "missing keys (2): ['extra.weight', 'extra.bias']" in message
    assert "head.weight: [5, 32] in the file, [6, 32] in the model" in message
    with pytest.raises(CheckpointError, match="unexpected keys"):
        mq.load(path, model=nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match="weight shape"):
        mq.load(qpath, model=Wider())
    with pytest.raises(CheckpointError, match="no module 'conv'"):
        mq.load(qpath, model=nn.Sequential())

    class ConvAsLinear(Net):
        def __init__(self):
            super().__init__()
            self.conv = nn.Linear(3, 8)

    with pytest.raises(CheckpointError, match="'conv' is a Linear in the model"):
        mq.load(qpath, model=ConvAsLinear())


def test_save_refuses_bad_inputs(tmp_path):
    with pytest.raises(TypeError):
        mq.save(42, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="meta"):
        mq.save(nn.Linear(2, 2, device="meta"), tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="not a tensor"):
        mq.save({"a": 1}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_non_contiguous_and_overlapping_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"t": base.t(), "row0": base[0], "row1": base[1], "same": base, "same2": base, "empty": torch.empty(0),
          "empty2": torch.empty(0, 3)}
    qsd = mq.load(mq.save(sd, tmp_path / "v.safetensors"))
    for key, tensor in sd.items():
        assert torch.equal(qsd[key], tensor), key
    assert qsd.manifest["tensor_aliases"] == {"same2": "same"}


class Scaled(nn.Linear):
    """A float type only this test registers a quantized class for."""


def test_generic_over_module_buffers_and_state_attrs(tmp_path):
    """A quantized class with its own extra buffer and state attribute round-trips
    through the persistence protocol, with no change to save / load."""
    from mono_quant.modules import QMODULES, QuantizedLinear, register_qmodule

    class QuantizedScaled(QuantizedLinear):
        state_attrs = QuantizedLinear.state_attrs + ("mode",)

        def __init__(self, in_features, out_features, weight_format="int8", orig_dtype=torch.float32):
            super().__init__(in_features, out_features, weight_format, orig_dtype)
            self.mode = "plain"

        @classmethod
        def from_float(cls, module, weight):
            q = super().from_float(module, weight)
            q.register_buffer("weight_extra", q.quantized_weight().qdata.t().contiguous())
            q.mode = "packed"
            return q

        def forward(self, x):
            return super().forward(x) * (2.0 if self.mode == "packed" else 1.0)

    register_qmodule(Scaled)(QuantizedScaled)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(Scaled(6, 4), nn.ReLU(), nn.Linear(4, 2))
        qmodel, _ = mq.quantize(model)
        path = mq.save(qmodel, tmp_path / "g.safetensors")
        layer = next(l for l in mq.load(path).layers if l["name"] == "0")
        assert layer["class"] == "QuantizedScaled" and layer["attrs"]["mode"] == "packed"
        assert "weight_extra" in layer["tensors"]
        loaded = mq.load(path, model=nn.Sequential(Scaled(6, 4), nn.ReLU(), nn.Linear(4, 2)).to("meta"))
        assert type(loaded[0]) is QuantizedScaled and loaded[0].mode == "packed"
        assert torch.equal(loaded[0].weight_extra, qmodel[0].weight_extra)
        x = torch.randn(3, 6)
        assert torch.equal(loaded(x), qmodel(x))
    finally:
        del QMODULES[Scaled]


@pytest.mark.parametrize("conv", [
    lambda: nn.Conv2d(3, 4, 3, padding="same", dilation=2),
    lambda: nn.Conv2d(4, 8, (3, 1), stride=2, padding=(1, 0), groups=2, padding_mode="circular"),
], ids=["same-dilated", "grouped-circular"])
def test_conv_options_roundtrip(tmp_path, conv):
    torch.manual_seed(0)
    float_conv = conv()
    qconv, _ = mq.quantize(float_conv, symmetric=False)
    path = mq.save(qconv, tmp_path / "c.safetensors")
    torch.manual_seed(1)
    loaded = mq.load(path, model=conv().to("meta"))
    x = torch.randn(2, float_conv.in_channels, 9, 7)
    assert torch.equal(loaded(x), qconv(x))
    assert loaded.padding == qconv.padding and loaded.groups == qconv.groups
