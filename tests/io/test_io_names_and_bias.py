"""Load checks a review of the loaders found missing: every name a layer is saved under (a
shared module's aliases) is checked against the model like the first (type, weight shape,
geometry; an edited alias list could put a layer in place of any module, the root included); a
quantize_checkpoint layer's bias must be a float vector of its outputs (a [1] bias broadcast over
every output, an int32 one stayed int32); ``aliases`` of the wrong JSON type is a CheckpointError
in every file kind; describe (inspect, bench) refuses a layer shape no tensor backs."""
import json
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.io.describe import describe
from mono_quant.io.errors import CheckpointError
from mono_quant.strictness import LargerModelWarning
from safetensors_bytes import edited_metadata

KEY = "mono_quant"


class Shared(nn.Module):
    """One conv under two names."""

    def __init__(self, second=None):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = self.a if second is None else second
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


@pytest.fixture(scope="module", params=["int8", "fp16"])
def shared_file(request, tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LargerModelWarning)  # (layers this small gain nothing)
        result = mq.quantize(Shared(), request.param, min_weight_numel=1)
    path = mq.save(result, tmp_path_factory.mktemp("shared") / "m.safetensors")
    manifest = json.loads(json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
                          ["__metadata__"][KEY])
    assert any(layer.get("aliases") == ["b"] for layer in manifest["layers"])
    return path, result.model


def test_shared_module_loads_into_its_own_architecture(shared_file):
    path, qmodel = shared_file
    x = torch.randn(2, 4, 5, 5)
    loaded = mq.load(path, model=Shared())
    assert loaded.a is loaded.b and torch.equal(loaded(x), qmodel(x))


@pytest.mark.parametrize("second,match", [
    (lambda: nn.Conv2d(4, 4, 3, stride=2), "stride"),
    (lambda: nn.Conv2d(4, 4, 1), "weight shape"),
    (lambda: nn.Linear(4, 4), "is also saved as 'b', which is a Linear"),
])
def test_alias_onto_another_module_is_refused(shared_file, second, match):
    path, _ = shared_file
    with pytest.raises(CheckpointError, match=match):
        mq.load(path, model=Shared(second()))


def test_alias_onto_the_root_is_refused(shared_file, tmp_path):
    path, _ = shared_file

    def edit(manifest):
        layer = next(layer for layer in manifest["layers"] if layer["name"] == "a")
        layer["aliases"].append("")
        manifest["tensor_aliases"].update({local: f"a.{local}" for local in layer["tensors"]})

    edited = edited_metadata(path, tmp_path / "root.safetensors", KEY, edit)
    with pytest.raises(CheckpointError, match="also saved as '<root>', which is a Shared"):
        mq.load(edited, model=Shared())


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int4", "fp16"])
@pytest.mark.parametrize("bias", [torch.ones(1), torch.tensor(1.0), torch.ones(16, dtype=torch.int32), torch.ones(15)],
                         ids=["one", "scalar", "int32", "short"])
def test_checkpoint_bias_must_be_a_float_vector_of_the_outputs(tmp_path, dtype, bias):
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in Net().state_dict().items()}
    state["fc1.bias"] = bias
    save_file(state, str(tmp_path / "float.safetensors"))
    mq.quantize_checkpoint(tmp_path / "float.safetensors", tmp_path / "q.safetensors", dtype=dtype)
    with pytest.raises(CheckpointError, match="'fc1.bias' is .* expected a float vector of the layer's 16 outputs"):
        mq.load(tmp_path / "q.safetensors", model=Net())


@pytest.mark.parametrize("aliases", ["fc1", 5, {}])
def test_aliases_of_the_wrong_type_in_a_checkpoint_file(tmp_path, aliases):
    torch.manual_seed(0)
    save_file(Net().state_dict(), str(tmp_path / "float.safetensors"))
    path = mq.quantize_checkpoint(tmp_path / "float.safetensors", tmp_path / "q.safetensors").path
    edited = edited_metadata(path, tmp_path / "e.safetensors", KEY,
                             lambda m: m["layers"][0].update({"aliases": aliases}))
    with pytest.raises(CheckpointError, match="aliases must be a list of names"):
        mq.load(edited, model=Net())
    with pytest.raises(CheckpointError, match="aliases must be a list of names"):
        describe(edited)


def test_describe_refuses_a_shape_no_tensor_backs(tmp_path):
    torch.manual_seed(0)
    path = mq.save(mq.quantize(Net(), "int4"), tmp_path / "m.safetensors")
    edited = edited_metadata(path, tmp_path / "e.safetensors", KEY,
                             lambda m: m["layers"][0].update({"shape": [20000, 20000]}))
    with pytest.raises(CheckpointError, match=r"shape \[20000, 20000\] is 400000000 weights, but its tensors hold"):
        describe(edited)
    assert [layer["shape"] for layer in describe(path)["layers"]] == [[16, 32], [8, 16]]
