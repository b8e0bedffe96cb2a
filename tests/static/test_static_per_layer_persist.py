"""mq.save / mq.load of a per-layer static int8 model (the fallback for models fx can't trace)."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.static.fallback import PerLayerStatic
from mono_quant.static.modules import StaticConv2d, StaticLinear
from static_file_edits import StaticFileEdits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Branchy(nn.Module):
    """Data-dependent control flow (fx can't trace it), a BatchNorm and a float parameter kept as they are."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.head = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = y * self.scale
        return self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = Branchy().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    data = torch.randn(128, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(model, "int8", activations="static", calibration=data)
    assert result.report.capture == "hooks"
    path = mq.save(result, tmp_path_factory.mktemp("per_layer") / "branchy.safetensors")
    return model, result, path, data


def test_round_trip_is_bit_exact(saved):
    model, result, path, data = saved
    with torch.device("meta"):
        skeleton = Branchy()
    loaded = mq.load(path, model=skeleton)
    for name in ("conv", "head.0", "head.2"):
        got, want = loaded.get_submodule(name), result.model.get_submodule(name)
        assert type(got) is PerLayerStatic and type(got.layer) is type(want.layer)
        assert got.layer.init_kwargs() == want.layer.init_kwargs()
    assert type(loaded.conv.layer) is StaticConv2d and type(loaded.head[2].layer) is StaticLinear
    assert torch.equal(loaded.bn.running_var, result.model.bn.running_var)
    x = data[:7]
    assert torch.equal(loaded(x), result.model(x))
    assert type(skeleton.conv) is nn.Conv2d  # the skeleton is not modified


def test_loading_needs_the_architecture(saved):
    with pytest.raises(TypeError, match="model="):
        mq.load(saved[2])


def test_a_mismatched_architecture_is_refused(saved):
    other = Branchy()
    other.head[0] = nn.Linear(8, 5)
    with pytest.raises(mq.CheckpointError, match="head.0"):
        mq.load(saved[2], model=other)
    other = Branchy()
    other.conv = nn.Conv2d(3, 8, 3, padding=0)
    with pytest.raises(mq.CheckpointError, match="padding"):
        mq.load(saved[2], model=other)


def test_damaged_files_are_refused(saved, tmp_path):
    edits = StaticFileEdits(saved[2], "mono_quant.static_per_layer", tmp_path)
    tensors = edits.tensors
    bad = dict(tensors)
    bad["conv.layer.weight_scale"] = bad["conv.layer.weight_scale"][:-1]
    with pytest.raises(mq.CheckpointError, match="weight_scale"):
        mq.load(edits.write("scale.safetensors", tensors=bad), model=Branchy())
    evil = edits.manifest_copy()
    evil["layers"]["conv"]["class"] = "os.system"
    with pytest.raises(mq.CheckpointError, match="class"):
        mq.load(edits.write("evil.safetensors", evil), model=Branchy())
    wrong = edits.manifest_copy()
    wrong["layers"]["head.0"]["init_kwargs"]["in_scale"] = -1.0
    with pytest.raises(mq.CheckpointError, match="in_scale"):
        mq.load(edits.write("neg.safetensors", wrong), model=Branchy())
    missing = {k: v for k, v in tensors.items() if k != "scale"}
    with pytest.raises(mq.CheckpointError, match="missing"):
        mq.load(edits.write("missing.safetensors", tensors=missing), model=Branchy())
    float_dtype = dict(tensors, scale=tensors["scale"].double())
    with pytest.raises(mq.CheckpointError, match="scale"):
        mq.load(edits.write("dtype.safetensors", tensors=float_dtype), model=Branchy())


def test_a_hugging_face_encoder_round_trips_through_a_meta_skeleton(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(100, (128, 16), generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(model, "int8", activations="static", calibration=[{"input_ids": b} for b in ids.split(32)])
    assert result.report.capture == "hooks"  # BertModel is not fx-traceable: the per-layer path
    path = mq.save(result, tmp_path / "bert.safetensors")
    with torch.device("meta"):
        skeleton = transformers.BertModel(cfg, add_pooling_layer=False)
    loaded = mq.load(path, model=skeleton)  # position_ids (non-persistent) rebuilt from the architecture
    x = ids[:4]
    assert torch.equal(loaded(input_ids=x).last_hidden_state, result.model(input_ids=x).last_hidden_state)


class _RenamesItsKeys(nn.Module):
    """Legacy names through state_dict hooks (fx can't trace the if: the per-layer fallback)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)
        self._register_state_dict_hook(lambda m, sd, prefix, meta: {
            (k.replace(f"{prefix}a.", f"{prefix}alpha.", 1) if k.startswith(f"{prefix}a.") else k): v
            for k, v in sd.items()})

    def forward(self, x):
        if x.sum() > -1e9:
            x = x + 0
        return self.b(torch.relu(self.a(x)))


def test_state_dict_hooks_do_not_change_what_a_file_holds(tmp_path):
    """save wrote the hook's keys, which load could not match with the model's modules."""
    torch.manual_seed(0)
    model = _RenamesItsKeys().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        q = mq.quantize(model, "int8", activations="static", calibration=torch.randn(64, 8)).model
    mq.save(q, tmp_path / "m.safetensors")
    loaded = mq.load(tmp_path / "m.safetensors", model=_RenamesItsKeys())
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), q(x))
