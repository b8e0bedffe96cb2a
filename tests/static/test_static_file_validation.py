"""Static int8 files that lie (found by corrupting every manifest field of saved files): a
layer geometry, a value reference or a container of the wrong type is a CheckpointError at
load, never a model that loads and then fails (or divides by zero) at its first forward; and
a valid file whose tensors sit at odd addresses loads aligned and runs bit-identically."""
import struct
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from safetensors_bytes import edited_metadata
from static_helpers import Branchy  # data-dependent control flow: saved per layer

GRAPH_KEY, PER_LAYER_KEY = "mono_quant.static", "mono_quant.static_per_layer"


class Traced(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=[Traced, Branchy])
def saved(request, tmp_path_factory):
    torch.manual_seed(0)
    model = request.param().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(model, "int8", activations="static",
                             calibration=torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2)))
    path = mq.save(result, tmp_path_factory.mktemp("static") / "m.safetensors")
    key = GRAPH_KEY if request.param is Traced else PER_LAYER_KEY
    with torch.no_grad():
        expected = mq.load(path, model=request.param())(X)
    return request.param, path, key, expected


def _edited(saved, tmp_path, edit):
    cls, path, key, _ = saved
    return edited_metadata(path, tmp_path / "edited.safetensors", key, edit)


def _kwargs(manifest, layer):
    kw = manifest["layers"][layer]["init_kwargs"]
    return kw["$dict"] if "$dict" in kw else kw


GEOMETRY = {  # (layer, init_kwargs key, value)
    "stride-zero": ("conv", "stride", [0, 1]),
    "stride-negative": ("conv", "stride", [-1, 1]),
    "stride-string": ("conv", "stride", "2"),
    "stride-huge": ("conv", "stride", 2**40),
    "padding-negative": ("conv", "padding", [-1, 1]),
    "padding-float": ("conv", "padding", [1.0, 1]),
    "kernel-one-entry": ("conv", "kernel_size", [3]),
    "kernel-three-entries": ("conv", "kernel_size", [3, 3, 3]),
    "dilation-zero": ("conv", "dilation", [1, 0]),
    "groups-zero": ("conv", "groups", 0),
    "groups-not-dividing": ("conv", "groups", 3),
    "channels-float": ("conv", "in_channels", 3.5),
    "channels-infinite": ("conv", "out_channels", float("inf")),
    "channels-bool": ("conv", "in_channels", True),
    "features-zero": ("fc", "in_features", 0),
    "features-string": ("fc", "out_features", "4"),
}


@pytest.mark.parametrize("layer,key,value", GEOMETRY.values(), ids=GEOMETRY.keys())
def test_bad_layer_geometry_is_refused_at_load(saved, tmp_path, layer, key, value):
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, layer).update({key: value}))
    with pytest.raises(mq.CheckpointError):
        mq.load(path, model=saved[0]())


@pytest.mark.parametrize("where", ["layers", "init_kwargs"])
@pytest.mark.parametrize("value", [None, 5, "x", [1]], ids=["None", "int", "str", "list"])
def test_a_mapping_of_the_wrong_type_is_refused(saved, tmp_path, where, value):
    def edit(m):
        if where == "layers":
            m["layers"] = value
        elif "$dict" in m["layers"]["conv"]["init_kwargs"]:
            m["layers"]["conv"]["init_kwargs"]["$dict"] = value
        else:
            m["layers"]["conv"]["init_kwargs"] = value
    with pytest.raises(mq.CheckpointError):
        mq.load(_edited(saved, tmp_path, edit), model=saved[0]())


def _graph_only(saved):
    if saved[2] != GRAPH_KEY:
        pytest.skip("the traced graph's program")


def test_output_naming_a_value_never_computed_is_refused(saved, tmp_path):
    _graph_only(saved)

    def edit(m):
        out = next(e for e in m["program"] if e["kind"] == "output")
        out["structure"] = {"$ref": "nowhere"}
    with pytest.raises(mq.CheckpointError, match="'nowhere' before it is computed"):
        mq.load(_edited(saved, tmp_path, edit))


def test_a_program_without_its_output_is_refused(saved, tmp_path):
    _graph_only(saved)
    path = _edited(saved, tmp_path, lambda m: m.update(program=[e for e in m["program"] if e["kind"] != "output"]))
    with pytest.raises(mq.CheckpointError, match="output"):
        mq.load(path)


def test_tensors_at_odd_addresses_load_aligned_and_bit_identical(saved, tmp_path):
    # a valid safetensors file whose header length is odd (another writer, or a hand-edited
    # manifest): every tensor starts at an odd address; the kernels read them as int32 / float32
    cls, path, _, expected = saved
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8:8 + n].rstrip(b" ") + b" "
    if (8 + len(text)) % 2 == 0:
        text += b" "
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    loaded = mq.load(odd, model=cls())
    for name, t in list(loaded.named_buffers()) + list(loaded.named_parameters()):
        assert t.data_ptr() % t.element_size() == 0, name
    with torch.no_grad():
        assert torch.equal(loaded(X), expected)


@pytest.mark.parametrize("layer,key,value", [("conv", "out_scale", 0.05), ("fc", "out_scale", 0.05),
                                             ("conv", "int8_input", True), ("fc", "int8_input", "yes")])
def test_int8_codes_flow_only_between_static_layers_that_agree(saved, tmp_path, layer, key, value):
    # a float output given a scale, or a float input declared int8: the file loaded, then the
    # next op failed on (or misread) int8 codes at the first forward ("yes" is no flag at all)
    _graph_only(saved)
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, layer).update({key: value}))
    with pytest.raises(mq.CheckpointError, match="takes (int8 codes|floats)|int8_input must be True or False"):
        mq.load(path)


@pytest.mark.parametrize("count", [0, 2])
def test_a_layer_op_with_the_wrong_number_of_inputs_is_refused(saved, tmp_path, count):
    _graph_only(saved)

    def edit(m):
        conv = next(e for e in m["program"] if e["name"] == "conv")
        conv["inputs"] = conv["inputs"][:1] * count
    with pytest.raises(mq.CheckpointError, match="inputs for StaticConv2d"):
        mq.load(_edited(saved, tmp_path, edit))


def test_an_input_scale_of_none_is_refused(saved, tmp_path):
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, "conv").update(in_scale=None))
    with pytest.raises(mq.CheckpointError, match="in_scale"):
        mq.load(path, model=saved[0]())


@pytest.mark.parametrize("args", [None, 5, {"$tuple": []}, {"$tuple": [1, 2]}], ids=["None", "int", "empty", "no-ref"])
def test_a_replayed_call_that_does_not_read_its_inputs_is_refused(saved, tmp_path, args):
    # the traced mean(): its arguments replaced by ones without the value it reads
    _graph_only(saved)

    def edit(m):
        next(e for e in m["program"] if e["kind"] == "call")["call"]["args"] = args
    with pytest.raises(mq.CheckpointError, match="do not read its inputs"):
        mq.load(_edited(saved, tmp_path, edit))


def test_an_op_defined_twice_is_refused(saved, tmp_path):
    """Two input ops of one name loaded, then every call failed binding its arguments."""
    _graph_only(saved)
    path = _edited(saved, tmp_path, lambda m: m["program"].insert(1, dict(m["program"][0])))
    with pytest.raises(mq.CheckpointError, match="is defined twice"):
        mq.load(path)
