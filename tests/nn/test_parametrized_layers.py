"""Layers whose weight is a torch.nn.utils.parametrize parametrization (parametrizations.weight_norm,
spectral_norm, the user's own) are quantized with the weight the float layer computes; they used to
stay float, listed under their ``parametrizations.weight`` child as an "unsupported type"."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import mono_quant as mq
from mono_quant.demo import output_sqnr_db


class Symmetric(nn.Module):
    def forward(self, w):
        return w.triu() + w.triu(1).transpose(-1, -2)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = weight_norm(nn.Linear(32, 32))
        self.sym = nn.Linear(32, 32)
        parametrize.register_parametrization(self.sym, "weight", Symmetric())
        self.conv = weight_norm(nn.Conv1d(4, 8, 3), dim=2)  # as wav2vec2's positional conv

    def forward(self, x, xc):
        return self.sym(torch.relu(self.fc(x))), self.conv(xc)


def _inputs():
    return torch.randn(4, 32), torch.randn(2, 4, 16)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_parametrized_weights_are_quantized_and_the_caller_model_still_runs(dtype):
    torch.manual_seed(0)
    model = Net().eval()
    before, classes = _state(model), [type(m) for m in model.modules()]
    result = mq.quantize(model, dtype=dtype, **({"group_size": 32} if dtype == "int4" else {}))
    assert result.skipped == []
    assert [r.name for r in result.report.layers] == ["fc", "sym", "conv"]
    q = result.model
    assert (type(q.fc), type(q.sym), type(q.conv)) == (mq.QuantizedLinear, mq.QuantizedLinear,
                                                          mq.modules.QuantizedConv1d)
    after = _state(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert [type(m) for m in model.modules()] == classes
    assert parametrize.is_parametrized(model.fc, "weight")
    x, xc = _inputs()
    with torch.no_grad():
        want, got = model(x, xc), q(x, xc)  # the float model still runs (its classes keep their properties)
    floor = 20 if dtype == "int4" else 35
    assert output_sqnr_db(want[0], got[0]) > floor and output_sqnr_db(want[1], got[1]) > floor


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_spectral_norm_in_any_mode_leaves_the_callers_vectors(mode):
    torch.manual_seed(0)
    model = nn.Sequential(spectral_norm(nn.Linear(32, 32)))
    getattr(model, mode)()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    qmodel, skipped = mq.quantize(model)
    assert not skipped and qmodel.training == (mode == "train")
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    model.eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert output_sqnr_db(model(x), qmodel.eval()(x)) > 35


def test_what_stays_float_is_listed_under_the_layer_with_why():
    model = nn.Sequential(nn.Linear(8, 8), weight_norm(nn.ConvTranspose1d(2, 2, 3)), nn.Linear(8, 8))
    parametrize.register_parametrization(model[0], "bias", nn.Identity())
    qmodel, skipped = mq.quantize(model)
    assert {s.name: s.type for s in skipped} == {"0": "ParametrizedLinear", "1": "ParametrizedConvTranspose1d"}
    assert all("parametrize" in s.reason for s in skipped)
    assert "bias parametrized" in skipped[0].reason
    assert type(qmodel[2]) is mq.QuantizedLinear and parametrize.is_parametrized(qmodel[0], "bias")


def test_parametrized_embedding_only_with_embeddings_true():
    model = nn.Sequential(weight_norm(nn.Embedding(10, 16)), nn.Linear(16, 16))
    _, skipped = mq.quantize(model)
    assert [(s.name, s.reason) for s in skipped] == [("0", "embedding tables are quantized only with "
                                                            "embeddings=True")]
    qmodel, skipped = mq.quantize(model, embeddings=True)
    assert not skipped and type(qmodel[0]) is mq.QuantizedEmbedding


def test_save_load_into_plain_parametrized_and_meta_skeletons(tmp_path):
    torch.manual_seed(0)
    result = mq.quantize(Net().eval())
    path = mq.save(result, tmp_path / "net.safetensors")
    x, xc = _inputs()
    with torch.device("meta"):
        meta = Net()
    for skeleton in (Net(), meta):
        again = mq.load(path, model=skeleton)
        for a, b in zip(again(x, xc), result.model(x, xc)):
            assert torch.equal(a, b)


def test_state_dict_with_a_parametrized_skeleton_is_skipped_with_a_reason():
    model = nn.Sequential(weight_norm(nn.Linear(16, 16)), nn.Linear(16, 16))
    result = mq.quantize(model.state_dict(), model=nn.Sequential(weight_norm(nn.Linear(16, 16)), nn.Linear(16, 16)))
    assert [(s.name, "parametrization's tensors" in s.reason) for s in result.skipped] == [("0", True)]
