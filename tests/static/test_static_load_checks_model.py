"""mq.load(static_file, model=...) checks the file's layers against the model passed (a static file
holds its whole graph, so it used to ignore model=: an edited conv geometry, a missing bias or an
unrelated architecture loaded silently and computed another function than the model describes)."""
import pytest
import torch
from torch import nn

import mono_quant as mq

from static_file_edits import StaticFileEdits
from static_helpers import BranchyConv

KEY = "mono_quant.static"


class Net(nn.Module):
    def __init__(self, padding=1, bias=True, pool=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=padding, bias=bias)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.MaxPool2d(pool)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.block(y)) + y
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # a BatchNorm that is not the identity, folded into block.0 (bias=False)
        model.block[1].running_mean.uniform_(-0.5, 0.5)
        model.block[1].running_var.uniform_(0.5, 2.0)
    result = mq.quantize(model, "int8", activations="static", calibration=[torch.randn(4, 3, 8, 8) for _ in range(3)])
    path = mq.save(result, tmp_path_factory.mktemp("static") / "net.safetensors")
    return path, result.model


def test_the_model_it_was_saved_from_loads(saved):
    path, model = saved
    x = torch.randn(2, 3, 8, 8)
    with torch.device("meta"):
        meta = Net()
    for skeleton in (Net(), meta, None):  # (the folded BatchNorm's bias is the file's, not the model's)
        assert torch.equal(mq.load(path, model=skeleton)(x), model(x))


@pytest.mark.parametrize("skeleton, message", [
    (lambda: Net(padding=0), r"layer 'conv1': padding \(1, 1, 1, 1\) \(zeros\) in the file, \(0, 0, 0, 0\) \(zeros\) in the model"),
    (lambda: Net(pool=4), "layer 'pool': arguments"),
    (lambda: nn.Sequential(nn.Linear(5, 5)), "is no module of the model"),
])
def test_another_model_is_refused(saved, skeleton, message):
    path, _ = saved
    with pytest.raises(mq.CheckpointError, match=message):
        mq.load(path, model=skeleton())


@pytest.mark.parametrize("field, value", [("padding", [0, 0]), ("stride", [2, 2]), ("dilation", [1, 2])])
def test_an_edited_geometry_is_refused_against_the_model(saved, tmp_path, field, value):
    path, _ = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    manifest = edits.manifest_copy()
    manifest["layers"]["conv1"]["init_kwargs"]["$dict"][field] = value
    edited = edits.write("edited.safetensors", manifest)
    with pytest.raises(mq.CheckpointError, match=f"layer 'conv1': {field}"):
        mq.load(edited, model=Net())


def test_a_removed_bias_is_refused_against_the_model(saved, tmp_path):
    path, _ = saved
    edits = StaticFileEdits(path, KEY, tmp_path)
    manifest = edits.manifest_copy()
    manifest["layers"]["fc"]["tensors"] = [t for t in manifest["layers"]["fc"]["tensors"] if t != "bias"]
    tensors = {k: v for k, v in edits.tensors.items() if k != "layers.fc.bias"}
    edited = edits.write("nobias.safetensors", manifest, tensors)
    mq.load(edited)  # a file alone may hold a layer without bias
    with pytest.raises(mq.CheckpointError, match="layer 'fc': the model's layer has a bias, the file's has none"):
        mq.load(edited, model=Net())


class CalledTwice(nn.Module):
    """Module ``c`` called twice beside a module named ``c_1``: fx names the calls c, c_1, c_1_1."""

    def __init__(self):
        super().__init__()
        self.c, self.c_1 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.c_1(torch.relu(self.c(torch.relu(self.c(x)))))


def _saved_and_reloaded(make, shape, path):
    """Static int8 of ``make()`` saved at ``path``, which loads into a fresh ``make()`` with the same outputs."""
    torch.manual_seed(0)
    result = mq.quantize(make().eval(), "int8", activations="static",
                         calibration=[torch.randn(*shape) for _ in range(3)])
    mq.save(result, path)
    x = torch.randn(*shape)
    assert torch.equal(mq.load(path, model=make())(x), result.model(x))
    return path


def test_a_module_called_twice_beside_a_suffixed_name_loads(tmp_path):
    _saved_and_reloaded(CalledTwice, (2, 8, 8, 8), tmp_path / "twice.safetensors")


def test_a_per_layer_file_is_checked_as_a_graph_file_is(tmp_path):
    path = _saved_and_reloaded(BranchyConv, (2, 3, 8, 8), tmp_path / "per_layer.safetensors")
    # a model whose conv reflects is another model
    with pytest.raises(mq.CheckpointError, match=r"layer 'conv': padding \(1, 1, 1, 1\) \(zeros\) in the file, "
                                                 r"\(1, 1, 1, 1\) \(reflect\) in the model"):
        mq.load(path, model=BranchyConv(padding_mode="reflect"))
