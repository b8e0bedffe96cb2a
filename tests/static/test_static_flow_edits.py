"""Static int8 files edited so that every layer still passes its own checks, yet the model would
compute other numbers or touch the caller's tensors (a review's findings): a consumer reading int8
codes with another scale or zero-point than its producer wrote them with, a float layer built with
arguments a save never writes (ReLU(inplace=True) on the input), a replayed call in place or in
training mode. Each is refused at load, or replayed out of place with the same values."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import mono_quant as mq
from mono_quant.io.errors import CheckpointError
from static_file_edits import StaticFileEdits
from static_helpers import Chain

KEY = "mono_quant.static"


class TwoConvs(Chain):
    """Chain with an in-place relu after its second conv (a saved call with inplace=True)."""

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        return self.fc(F.relu(y, inplace=True).mean((2, 3)))


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(TwoConvs().eval(), "int8", activations="static",
                             calibration=torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2)))
    path = mq.save(result, tmp_path_factory.mktemp("static") / "m.safetensors")
    with torch.no_grad():
        expected = mq.load(path)(X)
    return path, expected


def _kwargs(manifest, layer):
    kw = manifest["layers"][layer]["init_kwargs"]
    return kw["$dict"] if "$dict" in kw else kw


def _int8_links(manifest):
    """(producer, consumer) module ops joined by int8 codes."""
    layers = {n: _kwargs(manifest, n) for n in manifest["layers"]}
    return [(e["inputs"][0], e["name"]) for e in manifest["program"]
            if e["kind"] == "module" and layers[e["name"]].get("int8_input")
            and layers.get(e["inputs"][0], {}).get("out_scale") is not None]


@pytest.mark.parametrize("field,change", [("in_scale", lambda v: v * 2), ("in_scale", lambda v: v * 1.0000001),
                                          ("in_zp", lambda v: 0 if v else 5)])
def test_consumer_must_read_codes_as_written(saved, tmp_path, field, change):
    path, _ = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    manifest = edits.manifest_copy()
    links = _int8_links(manifest)
    assert links, "the model should pass int8 codes between its convs"
    consumer = _kwargs(manifest, links[0][1])
    consumer[field] = change(consumer[field])
    with pytest.raises(CheckpointError, match="reads its input .* as int8 codes of scale"):
        mq.load(edits.write("edited.safetensors", manifest))


def test_float_layer_takes_only_saved_arguments(saved, tmp_path):
    path, _ = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    manifest = edits.manifest_copy()
    manifest["layers"]["r"] = {"class": "ReLU", "init_kwargs": {"$dict": {"inplace": True}}}
    first = next(i for i, e in enumerate(manifest["program"]) if e["kind"] == "module")
    manifest["program"][first]["inputs"] = ["r"]
    manifest["program"].insert(first, {"name": "r", "kind": "module", "inputs": ["x"]})
    with pytest.raises(CheckpointError, match=r"arguments \['inplace'\] are not among"):
        mq.load(edits.write("edited.safetensors", manifest))
    manifest["layers"]["r"] = {"class": "Hardtanh", "init_kwargs": {"$dict": {"min_val": 1.0, "max_val": 0.0}}}
    with pytest.raises(CheckpointError, match="Hardtanh"):  # torch's assertion, as a CheckpointError
        mq.load(edits.write("edited2.safetensors", manifest))


IN_PLACE_CALLS = {  # each writes x in place when replayed as written
    "method": ("call_method", "relu_", [{"$ref": "x"}], {}),
    "keyword": ("call_function", "torch.nn.functional.relu", [{"$ref": "x"}], {"inplace": True}),
    "positional": ("call_function", "torch.nn.functional.relu", [{"$ref": "x"}, True], {}),
    "iadd": ("call_function", "operator.iadd", [{"$ref": "x"}, 1.0], {}),
}


@pytest.mark.parametrize("call", IN_PLACE_CALLS.values(), ids=IN_PLACE_CALLS.keys())
def test_in_place_calls_replay_out_of_place(saved, tmp_path, call):
    path, expected = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    manifest = edits.manifest_copy()
    how, target, args, kwargs = call
    # the first op reads the caller's input: make it an in-place call on x
    manifest["program"].insert(1, {"name": "r", "kind": "call", "inputs": ["x"], "call": {
        "how": how, "target": target, "args": args, "kwargs": {"$dict": kwargs}}})
    first = next(i for i, e in enumerate(manifest["program"]) if e["kind"] == "module")
    manifest["program"][first]["inputs"] = ["r"]
    model = mq.load(edits.write("edited.safetensors", manifest))
    x = X.clone()
    with torch.no_grad():
        model(x)
    assert torch.equal(x, X)  # the caller's input is not written
    with torch.no_grad():
        assert torch.equal(mq.load(path)(X.clone()), expected)  # (the saved F.relu(inplace=True) too)


@pytest.mark.parametrize("args,kwargs", [([], {"p": 0.5, "training": True}), ([0.5, True], {}), ([0.5], {})],
                         ids=["keyword", "positional", "default"])
def test_dropout_in_training_mode_is_refused(saved, tmp_path, args, kwargs):
    path, _ = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    manifest = edits.manifest_copy()
    out = manifest["program"][-1]
    manifest["program"].insert(-1, {"name": "drop", "kind": "call", "inputs": out["inputs"], "call": {
        "how": "call_function", "target": "torch.nn.functional.dropout",
        "args": [{"$ref": out["inputs"][0]}, *args], "kwargs": {"$dict": kwargs}}})
    manifest["program"][-1] = {"name": "output", "kind": "output", "inputs": ["drop"], "structure": {"$ref": "drop"}}
    with pytest.raises(CheckpointError, match="dropout in training mode"):
        mq.load(edits.write("edited.safetensors", manifest))
    manifest["program"][-2]["call"]["args"], manifest["program"][-2]["call"]["kwargs"] = \
        [{"$ref": out["inputs"][0]}, 0.5, False], {"$dict": {}}
    mq.load(edits.write("eval.safetensors", manifest))  # eval mode, positional: loads
