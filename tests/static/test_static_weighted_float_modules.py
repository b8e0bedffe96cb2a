"""A static model whose program keeps float modules with parameters (a LayerNorm, a GroupNorm, a
Conv1d, a PReLU, an Embedding, a BatchNorm not folded, a Linear / Conv2d left float by include) saves
and loads back bit for bit; save refused it ("a float module with parameters or buffers"), leaving
whole-object pickling as the only way.  The file is untrusted: arguments and tensors are checked
at load (the module is built on the meta device first)."""
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.errors import CheckpointError
from mono_quant.static.persist_float_weighted import WEIGHTED_FLOAT_MODULES
from static_file_edits import StaticFileEdits

KEY = "mono_quant.static"


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(64, 128)
        self.ln = nn.LayerNorm(128, eps=1e-3)
        self.act = nn.PReLU(128)
        self.bn = nn.BatchNorm1d(128)
        self.l2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.l2(self.bn(self.act(self.ln(F.relu(self.l1(x))))))


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.line = nn.Conv1d(8, 4, 3, padding=1, bias=False, padding_mode="circular")

    def forward(self, x):
        y = self.c2(self.reflect(self.gn(F.relu(self.c1(x)))))
        return self.line(y.mean(3))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32, padding_idx=0)
        self.fc = nn.Linear(32, 16)

    def forward(self, ids):
        return self.fc(self.emb(ids))


def _trained_like(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


CASES = {
    "mlp": (MLP, lambda: torch.randn(32, 64), {}, {"ln": "LayerNorm", "act": "PReLU", "bn": "BatchNorm1d"}),
    "mlp-include": (MLP, lambda: torch.randn(32, 64), {"include": ["l1"]}, {"l2": "Linear"}),
    "convs": (Convs, lambda: torch.randn(8, 3, 8, 8), {"exclude": ["reflect", "line"]},  # (left float)
              {"gn": "GroupNorm", "reflect": "Conv2d", "line": "Conv1d"}),
    "convs-exclude": (Convs, lambda: torch.randn(8, 3, 8, 8), {"exclude": ["c2"]}, {"c2": "Conv2d"}),
    "tokens": (Tokens, lambda: torch.randint(0, 50, (8, 12)), {}, {"emb": "Embedding"}),
}


def _static(case):
    make, data, kw, _ = CASES[case]
    torch.manual_seed(0)
    model = _trained_like(make())
    torch.manual_seed(1)
    batches = [data() for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, batches, mq.quantize(model, "int8", activations="static", calibration=batches, **kw)


@pytest.mark.parametrize("case", CASES)
def test_float_modules_with_parameters_save_and_load_bit_for_bit(case, tmp_path):
    model, batches, result = _static(case)
    assert result.report.capture == "fx"
    kept = {name: type(m).__name__ for name, m in result.model.layers.items()}
    for name, cls in CASES[case][3].items():
        assert kept[name] == cls  # (kept as a float layer of the program)
    path = mq.save(result, tmp_path / "m.safetensors")
    loaded = mq.load(path)
    with torch.no_grad():
        for x in batches:
            assert torch.equal(loaded(x), result.model(x))
    for name in CASES[case][3]:
        assert torch.equal(loaded.layers[name].weight, result.model.layers[name].weight)
        assert loaded.layers[name].weight.device.type == "cpu"


# constructor arguments that are not saved: where the module lives, and what only the tensors replace
_NOT_SAVED = {"device", "dtype", "_weight", "_freeze", "init"}


@pytest.mark.parametrize("cls", list(WEIGHTED_FLOAT_MODULES), ids=lambda c: c.__name__)
def test_every_constructor_argument_is_saved(cls):
    params = {n for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    assert params - _NOT_SAVED == set(WEIGHTED_FLOAT_MODULES[cls])


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    return mq.save(_static("mlp")[2], tmp_path_factory.mktemp("weighted") / "mlp.safetensors")


BAD_ARGS = {
    "shape-mismatch": ("ln", "normalized_shape", {"$tuple": [64]}, r"weight is float32\[128\], its arguments make"),
    "eps-negative": ("ln", "eps", -1.0, "eps must be"),
    "eps-text": ("ln", "eps", "0.1", "eps must be"),
    "affine-off": ("ln", "elementwise_affine", False, "tensors .*its arguments make"),
    "huge": ("act", "num_parameters", 1 << 40, "num_parameters must be"),
    "momentum": ("bn", "momentum", 2.0, "momentum must be"),
    "eps-huge-int": ("ln", "eps", 10 ** 400, None),  # (too large for a float: refused as JSON, over 40 digits)
    "missing-arg": ("bn", None, None, "arguments .* expected"),
}


@pytest.mark.parametrize("layer,arg,value,message", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_a_bad_argument_is_refused_at_load(mlp_file, tmp_path, layer, arg, value, message):
    edits = StaticFileEdits(mlp_file, KEY, tmp_path)
    manifest = edits.manifest_copy()
    kwargs = manifest["layers"][layer]["init_kwargs"]["$dict"]
    if arg is None:
        kwargs.pop("affine")
    else:
        kwargs[arg] = value
    with pytest.raises(CheckpointError, match=rf"layer '{layer}' .*{message}" if message else "an integer of 401 digits"):
        mq.load(edits.write("edited.safetensors", manifest))


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("layers.ln.bias"), r"tensors \['weight'\], its arguments make \['bias', 'weight'\]"),
    (lambda t: t.update({"layers.ln.weight": t["layers.ln.weight"].double()}), "one of float32"),
    (lambda t: t.update({"layers.ln.weight": t["layers.ln.weight"].to(torch.float8_e4m3fn)}), "float8_e4m3fn"),
    (lambda t: t.update({"layers.bn.num_batches_tracked": torch.zeros((), dtype=torch.float32)}),
     "num_batches_tracked is float32"),
    (lambda t: t.update({"layers.act.weight": torch.zeros(3)}), r"weight is float32\[3\]"),
])
def test_bad_tensors_are_refused_at_load(mlp_file, tmp_path, edit, message):
    edits = StaticFileEdits(mlp_file, KEY, tmp_path)
    tensors = dict(edits.tensors)
    edit(tensors)
    manifest = edits.manifest_copy()
    for name, entry in manifest["layers"].items():  # (the manifest lists each layer's tensor names)
        if "tensors" in entry:
            entry["tensors"] = sorted(k.split(".", 2)[2] for k in tensors if k.startswith(f"layers.{name}."))
    with pytest.raises(CheckpointError, match=message):
        mq.load(edits.write("edited.safetensors", manifest, tensors))


def test_a_torch_without_groupnorms_bias_argument_takes_the_file_when_bias_is_affine(tmp_path, monkeypatch):
    # GroupNorm / BatchNorm take bias= from a recent torch only: an older one builds them without it
    from mono_quant.static import persist_float_weighted
    monkeypatch.setattr(persist_float_weighted, "_NO_BIAS_ARGUMENT", {nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d})
    _, batches, result = _static("convs")
    path = mq.save(result, tmp_path / "convs.safetensors")
    with torch.no_grad():
        assert torch.equal(mq.load(path)(batches[0]), result.model(batches[0]))
    edits = StaticFileEdits(path, KEY, tmp_path)
    manifest = edits.manifest_copy()
    manifest["layers"]["gn"]["init_kwargs"]["$dict"]["bias"] = False
    with pytest.raises(CheckpointError, match=r"layer 'gn' \(GroupNorm\): bias=False with affine=True needs a torch"):
        mq.load(edits.write("edited.safetensors", manifest))


@pytest.mark.parametrize("layer,arg,value", [("gn", "num_groups", 4), ("gn", "eps", 0.5),
                                             ("reflect", "dilation", {"$tuple": [2, 2]})])
def test_load_with_model_compares_them_with_the_models_modules(tmp_path, layer, arg, value):
    # (a file whose float modules were edited loaded "into" the model and computed another function)
    _, batches, result = _static("convs")
    path = mq.save(result, tmp_path / "convs.safetensors")
    edits = StaticFileEdits(path, KEY, tmp_path)
    manifest = edits.manifest_copy()
    manifest["layers"][layer]["init_kwargs"]["$dict"][arg] = value
    if arg == "dilation":
        manifest["layers"][layer]["init_kwargs"]["$dict"]["padding"] = {"$tuple": [2, 2]}
    edited = edits.write("edited.safetensors", manifest)
    mq.load(edited)  # (a consistent file on its own)
    with pytest.raises(CheckpointError, match=rf"layer '{layer}': arguments .* in the file, .* in the model"):
        mq.load(edited, model=_trained_like(Convs()))
    with torch.no_grad():
        assert torch.equal(mq.load(path, model=_trained_like(Convs()))(batches[0]), result.model(batches[0]))


def test_conv_geometry_is_bounded(tmp_path):
    # (a padding of 2^31 - 1 loaded, and the first call asked for terabytes)
    _, _, result = _static("convs")
    edits = StaticFileEdits(mq.save(result, tmp_path / "convs.safetensors"), KEY, tmp_path)
    manifest = edits.manifest_copy()
    manifest["layers"]["reflect"]["init_kwargs"]["$dict"]["padding"] = {"$tuple": [2 ** 31 - 1, 1]}
    with pytest.raises(CheckpointError, match=r"layer 'reflect' \(Conv2d\): padding must be"):
        mq.load(edits.write("edited.safetensors", manifest))


def test_a_pruned_or_hooked_float_layer_is_refused_at_save_with_why(tmp_path):
    import torch.nn.utils.prune as prune
    model, batches, _ = _static("mlp")
    pruned = _trained_like(MLP())
    prune.l1_unstructured(pruned.l2, "weight", 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(pruned, "int8", activations="static", calibration=batches, exclude=["l2"])
    with pytest.raises(TypeError, match=r"layer 'l2' \(Linear\) holds tensors .*weight_orig.*prune.remove"):
        mq.save(result, tmp_path / "pruned.safetensors")
    _, _, result = _static("mlp")
    result.model.layers["ln"].register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(TypeError, match=r"layer 'ln' \(LayerNorm\) has forward hooks"):
        mq.save(result, tmp_path / "hooked.safetensors")
    assert not (tmp_path / "pruned.safetensors").exists() and not (tmp_path / "hooked.safetensors").exists()
