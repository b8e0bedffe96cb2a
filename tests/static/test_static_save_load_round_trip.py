"""Every static model quantize() makes loads again, bit-identical, and save refuses what load
would refuse.  The load check against an output scale that makes every output the zero-point
refused files quantize itself wrote: a concatenation shares its output scale with the producers
it copies, so a branch 1e5 times smaller than its sibling rounds to the zero-point everywhere
(``cat([a(x), b(x)], 1)``), and an output calibration saw only zeros in (a dead ReLU) gets the
scale 1.0 whatever the layer can reach.  The check still refuses such a scale where quantize
never writes one (test_static_scale_validation.py: a lone layer; here: a whole concatenation)."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.io.errors import CheckpointError
from mono_quant.static.modules_eltwise import StaticCat
from static_file_edits import StaticFileEdits
from static_helpers import Chain

KEY = "mono_quant.static"


class CatScales(nn.Module):
    """Two branches concatenated, one 1e5 times smaller: it shares the concatenation's scale."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.weight.mul_(1e-3)
            self.a.bias.zero_()
            self.b.weight.mul_(100)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


class NestedCats(CatScales):
    """The concatenation inside another one, and read by a conv too (one scale for all of them)."""

    def __init__(self):
        super().__init__()
        self.d, self.e = nn.Conv2d(3, 4, 1), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        return self.e(torch.cat([y, self.d(x)], 1)) + self.c(y)


class LinearCat(nn.Module):
    """Rank-2 concatenation of a tiny and a large linear branch."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.a, self.b, self.head = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 2)
        with torch.no_grad():
            self.a.weight.mul_(1e-4)
            self.a.bias.zero_()

    def forward(self, x):
        y = self.stem(x).mean((2, 3))
        return self.head(torch.cat([self.a(y), self.b(y)], 1))


class DeadRelu(nn.Module):
    """A ReLU that calibration sees only zeros out of: its output scale is 1.0 (no range)."""

    def __init__(self, act=F.relu):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.act = act
        with torch.no_grad():
            self.a.weight.mul_(1e-4)
            self.a.bias.fill_(-0.1)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


class Residual(nn.Module):
    """conv -> two convs added (int8 add) -> pool -> linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = F.relu(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.c1(y) + self.c2(y)), 1).flatten(1))


MODELS = {
    "chain": Chain, "cat-scales": CatScales, "nested-cats": NestedCats, "linear-cat": LinearCat,
    "dead-relu": DeadRelu, "dead-relu6": lambda: DeadRelu(F.relu6), "residual": Residual,
}
OBSERVERS = ["minmax", "histogram"]


def _quantized(model, observer="minmax"):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model.eval(), "int8", activations="static", observer=observer,
                           calibration=torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))).model


@pytest.mark.parametrize("observer", OBSERVERS)
@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_every_quantized_model_loads_bit_identical(make, observer, tmp_path):
    torch.manual_seed(1)
    q = _quantized(make(), observer)
    loaded = mq.load(mq.save(q, tmp_path / "m.safetensors"))
    for seed in (3, 4):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            assert torch.equal(loaded(x), q(x))


def _kwargs(manifest, layer):
    return manifest["layers"][layer]["init_kwargs"]["$dict"]


def test_a_concatenation_whose_every_input_is_constant_is_refused(tmp_path):
    """All the scales the concatenation shares, edited alike (so that codes are still read as
    written): no input can reach half the scale any more."""
    torch.manual_seed(1)
    edits = StaticFileEdits(mq.save(_quantized(CatScales()), tmp_path / "m.safetensors"), KEY, tmp_path)
    manifest = edits.manifest_copy()
    cat = next(n for n, e in manifest["layers"].items() if e["class"] == StaticCat.__name__)
    shared = _kwargs(manifest, cat)["out_scale"]
    assert _kwargs(manifest, "a")["out_scale"] == shared == _kwargs(manifest, "b")["out_scale"]
    _kwargs(manifest, cat).update(out_scale=1e6, in_scales=[1e6, 1e6])
    for name in ("a", "b"):
        _kwargs(manifest, name)["out_scale"] = 1e6
    _kwargs(manifest, "c")["in_scale"] = 1e6
    with pytest.raises(CheckpointError, match=rf"layer '{cat}': out_scale .* every output would be the zero-point"):
        mq.load(edits.write("edited.safetensors", manifest))


def test_a_lone_branch_edited_is_still_refused(tmp_path):
    """One producer's scale edited (and the concatenation reading it so): the concatenation
    requantizes it and no longer shares that scale, so it is judged alone."""
    torch.manual_seed(1)
    edits = StaticFileEdits(mq.save(_quantized(CatScales()), tmp_path / "m.safetensors"), KEY, tmp_path)
    manifest = edits.manifest_copy()
    cat = next(n for n, e in manifest["layers"].items() if e["class"] == StaticCat.__name__)
    _kwargs(manifest, "b")["out_scale"] = 1e6
    _kwargs(manifest, cat)["in_scales"][1] = 1e6
    with pytest.raises(CheckpointError, match=r"layer 'b': out_scale .* every output would be the zero-point"):
        mq.load(edits.write("edited.safetensors", manifest))


def test_save_refuses_what_load_would_refuse(tmp_path):
    q = _quantized(Chain())
    q.layers["conv1"].out_scale = q.layers["conv2"].in_scale = 1e6  # (as an edited file would hold)
    with pytest.raises(ValueError, match=r"cannot save static model: .*layer 'conv1': out_scale .* zero-point"):
        mq.save(q, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
