"""Quantized models on a CUDA device (skipped where torch sees no GPU: CI has none).

The C kernels are CPU code: on a GPU every layer runs its torch twin.  What must hold there, each
seen broken on an H200 before the fix: a model quantized where it lives on the GPU stays wholly
there and gives the CPU's tensors bit for bit (scales included: CUDA divides by a scalar through its
reciprocal); autograd, torch.compile and torch.export reach the ``mono_quant`` ops on GPU tensors;
load_state_dict of GPU tensors checks packed buffers without the C kernels.
benchmarks/cuda_check.py is the longer walk-through (all formats, save / load, Hugging Face, times).
"""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq

# (MONO_QUANT_TEST_DEVICE=cpu runs the file on the CPU: a check of the tests themselves, where the
# CPU's int8 activations make the comparisons with the float twin fail by design)
DEVICE = os.environ.get("MONO_QUANT_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")

FORMATS = {
    "int8": dict(dtype="int8"),
    "int8-weight-only": dict(dtype="int8", activations=None),
    "uint8": dict(dtype="uint8"),
    "int8-embeddings": dict(dtype="int8", embeddings=True),
    "int4": dict(dtype="int4"),
    "fp16": dict(dtype="fp16"),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 64)
        self.lin = nn.Linear(64, 48)
        self.conv = nn.Conv2d(3, 16, 3, padding=1, groups=1)
        self.conv_g = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4)

    def forward(self, ids, img):
        a = self.lin(self.emb(ids))
        b = self.conv_g(F.relu(self.conv(img)))
        return a.square().mean() + b.square().mean(), a, b  # (a loss of positive terms: no cancellation)


def _inputs(device):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 50, (3, 7), generator=g).to(device), torch.randn(2, 3, 12, 12, generator=g).to(device)


def _float_twin(q):
    """A float copy computing with each quantized layer's dequantized weight: the GPU's semantics."""
    f = copy.deepcopy(q).cpu()
    for name, m in list(f.named_modules()):
        if isinstance(m, mq.QuantizedModule):
            setattr(f, name, _as_float(m))
    return f


def _as_float(m):
    if isinstance(m, mq.QuantizedLinear):
        layer = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    elif isinstance(m, mq.QuantizedConv2d):
        layer = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                          bias=m.bias is not None)
    else:
        layer = nn.Embedding(m.num_embeddings, m.embedding_dim)
    with torch.no_grad():
        layer.weight.copy_(m.weight.float())
        if getattr(m, "bias", None) is not None:
            layer.bias.copy_(m.bias.float())
    return layer


@pytest.fixture(autouse=True, scope="module")
def _full_float32():
    # TF32 (cuDNN convs allow it by default) would put 1e-3 between the GPU and the CPU's float32
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_quantized_on_the_gpu_is_the_cpus_and_stays_there(model, fmt):
    q_cpu, skipped_cpu = mq.quantize(model, **FORMATS[fmt])
    on_gpu = copy.deepcopy(model).to(DEVICE)
    q_gpu, skipped_gpu = mq.quantize(on_gpu, **FORMATS[fmt])
    assert [s.name for s in skipped_gpu] == [s.name for s in skipped_cpu]
    sd_cpu, sd_gpu = q_cpu.state_dict(), q_gpu.state_dict()
    assert sorted(sd_cpu) == sorted(sd_gpu)
    for k, v in sd_gpu.items():
        assert v.device.type == torch.device(DEVICE).type, k
        assert v.dtype == sd_cpu[k].dtype and torch.equal(v.cpu(), sd_cpu[k]), k  # bit for bit, scales too
    ids, img = _inputs(DEVICE)
    with torch.no_grad():
        out = q_gpu(ids, img)
        want = _float_twin(q_cpu)(*_inputs("cpu"))
    for o, w in zip(out, want):
        assert o.device.type == torch.device(DEVICE).type
        torch.testing.assert_close(o.cpu(), w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_autograd_compile_and_export_on_the_gpu(model, fmt):
    q = mq.quantize(model, **FORMATS[fmt]).model.to(DEVICE)
    ids, img = _inputs(DEVICE)
    with torch.no_grad():
        eager = q(ids, img)
    leaf = img.clone().requires_grad_(True)
    q(ids, leaf)[0].backward()
    want_leaf = _inputs("cpu")[1].requires_grad_(True)
    _float_twin(q)(_inputs("cpu")[0], want_leaf)[0].backward()
    torch.testing.assert_close(leaf.grad.cpu(), want_leaf.grad, rtol=1e-4, atol=1e-5)
    program = torch.export.export(q, (ids, img))
    ids2, img2 = ids.flip(0), img * 0.5
    with torch.no_grad():
        for o, w in zip(program.module()(ids2, img2), q(ids2, img2)):
            torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-6)
    if fmt in ("int8", "int4"):  # (one compile each: inductor's first compile takes seconds)
        compiled = torch.compile(q)
        with torch.no_grad():
            for o, w in zip(compiled(ids, img), eager):
                torch.testing.assert_close(o, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["int8", "int4", "uint8"])
def test_load_state_dict_of_gpu_tensors(model, fmt):
    q = mq.quantize(model, **FORMATS[fmt]).model.to(DEVICE)
    other = mq.quantize(Net().eval(), **FORMATS[fmt]).model.to(DEVICE)
    other.load_state_dict(q.state_dict())
    ids, img = _inputs(DEVICE)
    with torch.no_grad():
        for o, w in zip(other(ids, img), q(ids, img)):
            assert torch.equal(o, w)
    bad = {k: v.clone() for k, v in q.state_dict().items()}
    if fmt == "int8":  # a wrong column sum on the GPU is still refused
        bad["lin.weight_colsum"][0] += 1
        with pytest.raises(mq.CheckpointError, match="colsum"):
            other.load_state_dict(bad)


def test_static_int8_refuses_the_gpu_clearly():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    q, _ = mq.quantize(cnn, dtype="int8", activations="static",
                       calibration=[torch.randn(2, 3, 16, 16) for _ in range(4)])
    with pytest.raises(TypeError, match="dynamic"):
        q.to(DEVICE)


def test_static_int8_of_a_gpu_model_refused_clearly():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval().to(DEVICE)
    with pytest.raises(mq.ConfigError, match="runs on the CPU"):
        mq.quantize(cnn, dtype="int8", activations="static",
                    calibration=[torch.randn(2, 3, 16, 16, device=DEVICE) for _ in range(4)])


class _WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 64)
        self.register_buffer("offset", torch.zeros(64), persistent=False)  # as BERT's position_ids

    def forward(self, x):
        return self.lin(x + self.offset)


def test_load_into_a_gpu_skeleton_returns_a_gpu_model(tmp_path):
    model = _WithBuffer().to(DEVICE)
    q = mq.quantize(model, dtype="int8").model
    mq.save(q, tmp_path / "m.safetensors")
    loaded = mq.load(tmp_path / "m.safetensors", model=model)
    devices = {t.device.type for t in list(loaded.parameters()) + list(loaded.buffers())}
    assert devices == {torch.device(DEVICE).type}  # (was: the file's tensors on the CPU, the offset on the GPU)
    x = torch.randn(3, 64, device=DEVICE)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


def test_set_weight_follows_the_layer_device():
    q = mq.quantize(nn.Sequential(nn.Linear(64, 64)).to(DEVICE), dtype="int8").model
    q[0].set_weight(mq.quantize_weight(torch.randn(64, 64), "int8", symmetric=True))  # a CPU weight
    assert {t.device.type for t in q.state_dict().values()} == {torch.device(DEVICE).type}


@pytest.mark.parametrize("kwargs", [dict(dtype="int8"), dict(dtype="int8", embeddings=True), dict(dtype="int4")])
def test_compile_reduce_overhead(kwargs):
    # CUDA graphs: no value may be read back to the host inside the captured forward (the packed int8
    # geometry came from a GPU tensor, the embedding's range check read min / max)
    if DEVICE != "cuda":
        pytest.skip("CUDA graphs")
    torch.manual_seed(0)
    q = mq.quantize(nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 64)).eval(), **kwargs).model.to(DEVICE)
    ids = torch.randint(0, 100, (4, 8), device=DEVICE)
    compiled = torch.compile(q, mode="reduce-overhead")
    with torch.no_grad():
        want = q(ids)
        for _ in range(4):
            got = compiled(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
