"""Tensors a static model's forward reads (fx's get_attr: torchvision's LayerNorm2d weight and bias,
ConvNeXt's layer scale) are saved as the program's constants (``constants.<op>``, their dtype and shape in
the manifest, checked at load with the values finite): such models were refused at save ("a get_attr").
A file's program must still compute its output from its inputs: a constant (or any op no input reaches)
as the whole output is refused, the model would ignore what it is given."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.io.errors import CheckpointError
from static_file_edits import StaticFileEdits

KEY = "mono_quant.static"


class LayerNorm2d(nn.LayerNorm):
    """torchvision's: a LayerNorm over channels of an NCHW tensor (fx traces into it: not a torch.nn class)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return torch.permute(x, (0, 3, 1, 2))


class ScaledBlock(nn.Module):
    """A ConvNeXt-like block: conv, LayerNorm2d, a layer scale read in forward, a residual add."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.norm = LayerNorm2d(8)
        self.layer_scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        y = self.norm(self.stem(x))
        return self.head((y + self.layer_scale * self.conv(y)).mean((2, 3)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = ScaledBlock().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(model, "int8", activations="static", calibration=torch.randn(32, 3, 8, 8))
    path = tmp_path_factory.mktemp("constants") / "m.safetensors"
    mq.save(result, path)
    return model, result.model, path


def test_a_model_reading_its_tensors_saves_and_loads_bit_identical(saved):
    model, quantized, path = saved
    edits = StaticFileEdits(path, KEY, path.parent)
    constants = [e for e in edits.manifest["program"] if e["kind"] == "constant"]
    assert len(constants) == 3  # the norm's weight and bias, the layer scale
    for e in constants:
        t = edits.tensors[f"constants.{e['name']}"]
        assert e["dtype"] == "float32" and e["shape"] == list(t.shape)
    loaded = mq.load(path)
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), quantized(x))
        torch.testing.assert_close(loaded(x), model(x), rtol=0.1, atol=0.1)


def _constant(edits, shape=None):
    return next(e for e in edits.manifest["program"] if e["kind"] == "constant" and (
        shape is None or e["shape"] == shape))


def _edited(edits, name, edit):
    manifest, tensors = edits.manifest_copy(), dict(edits.tensors)
    edit(manifest, tensors)
    return edits.write(name, manifest, tensors)


@pytest.mark.parametrize("case, match", [
    ("dtype in the manifest", "a constant takes no inputs and has a float dtype"),
    ("an integer dtype", "a constant takes no inputs and has a float dtype"),
    ("a negative size", "sizes >= 0"),
    ("inputs", "a constant takes no inputs"),
    ("the tensor's shape", r"expected float32\[8, 1, 1\], got float32\[9, 1, 1\]"),
    ("the tensor's dtype", r"expected float32\[8, 1, 1\], got float16"),
    ("NaN", "NaN or Inf"),
    ("the tensor missing", "disagree with the manifest"),
    ("an extra constant tensor", "disagree with the manifest"),
    ("the output a constant", r"the output reads \['.*'\], computed from no input of the model"),
])
def test_damaged_constants_are_refused(saved, tmp_path, case, match):
    _, _, path = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    scale = _constant(edits, [8, 1, 1])
    key = f"constants.{scale['name']}"

    def edit(manifest, tensors):
        entry = next(e for e in manifest["program"] if e["name"] == scale["name"])
        if case == "dtype in the manifest":
            entry["dtype"] = "complex64"
        elif case == "an integer dtype":
            entry["dtype"] = "int64"
        elif case == "a negative size":
            entry["shape"] = [-8, 1, 1]
        elif case == "inputs":
            entry["inputs"] = [manifest["program"][0]["name"]]
        elif case == "the tensor's shape":
            tensors[key] = torch.ones(9, 1, 1)
        elif case == "the tensor's dtype":
            tensors[key] = tensors[key].half()
        elif case == "NaN":
            tensors[key] = tensors[key].clone()
            tensors[key][3] = float("nan")
        elif case == "the tensor missing":
            del tensors[key]
        elif case == "an extra constant tensor":
            tensors["constants.extra"] = torch.ones(2)
        elif case == "the output a constant":
            output = manifest["program"][-1]
            output["inputs"] = [scale["name"]]
            output["structure"] = {"$ref": scale["name"]}

    with pytest.raises(CheckpointError, match=match):
        mq.load(_edited(edits, f"{case}.safetensors", edit))


class ReadsAnIntegerBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("offset", torch.tensor([1, 2, 3, 4]).view(4, 1, 1))

    def forward(self, x):
        return self.conv(x) + self.offset


def test_an_integer_tensor_read_in_forward_is_refused_at_save_naming_it(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(ReadsAnIntegerBuffer().eval(), "int8", activations="static",
                             calibration=torch.randn(16, 3, 8, 8))
    with pytest.raises(TypeError, match="offset.*torch.int64.*float tensor"):
        mq.save(result, tmp_path / "m.safetensors")


@pytest.mark.parametrize("target", ["x", "constant"])
def test_a_call_with_out_is_refused(saved, tmp_path, target):
    """torch.mul(..., out=v) (torch's functions without a Python signature keep out=) wrote into the caller's
    input or a checked constant at every call: a program never writes into a value it is given."""
    _, _, path = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    scale = _constant(edits, [8, 1, 1])

    def edit(manifest, tensors):
        program = manifest["program"]
        victim = program[0]["name"] if target == "x" else scale["name"]
        at = next(i for i, e in enumerate(program) if e["name"] == victim) + 1
        program.insert(at, {"name": "write", "kind": "call", "inputs": [victim], "call": {
            "how": "call_function", "target": "torch.mul", "args": [{"$ref": victim}, 0.0],
            "kwargs": {"$dict": {"out": {"$ref": victim}}}}})

    with pytest.raises(CheckpointError, match="out= writes into a tensor it is given"):
        mq.load(_edited(edits, "out.safetensors", edit))


def test_an_output_handing_out_a_constant_is_refused(saved, tmp_path):
    """(its caller's in-place change of it would change every later call)"""
    _, _, path = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    scale = _constant(edits, [8, 1, 1])

    def edit(manifest, tensors):
        output = manifest["program"][-1]
        output["structure"] = {"$tuple": [output["structure"], {"$ref": scale["name"]}]}
        output["inputs"] = output["inputs"] + [scale["name"]]

    with pytest.raises(CheckpointError, match=r"the output reads \['.*'\], computed from no input"):
        mq.load(_edited(edits, "handed.safetensors", edit))
