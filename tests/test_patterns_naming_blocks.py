"""An include / exclude pattern that names a block (a module holding layers, not a layer) is a
ConfigError saying how to name the layers inside it: exclude=["encoder"] or exclude=[Block] passed
the "matches no layer" check (it matched a module) but selection looks at layers only, so the
whole encoder was quantized without a word; the same on the state_dict and checkpoint paths."""
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        return self.fc(x)


def _model():
    return nn.Sequential(Block(), nn.Linear(64, 64))


@pytest.mark.parametrize("option", ["include", "exclude"])
def test_a_block_name_or_type_is_an_error_naming_the_glob(option):
    with pytest.raises(mq.ConfigError, match=rf"{option}='0' \(it names '0', which holds layers but is none: "
                                             rf"'0\.\*' selects the layers inside it\)"):
        mq.quantize(_model(), **{option: ["0"]})
    with pytest.raises(mq.ConfigError, match=rf"{option}=Block \(it names '0', which holds layers"):
        mq.quantize(_model(), **{option: [Block]})


def test_the_glob_it_names_works():
    result = mq.quantize(_model(), exclude=["0.*"])
    assert [layer.name for layer in result.report.layers] == ["1"]
    assert [s.name for s in result.skipped] == ["0.fc"]


def test_layers_by_name_and_type_still_match():
    assert [l.name for l in mq.quantize(_model(), exclude=["0.fc"]).report.layers] == ["1"]
    assert len(mq.quantize(_model(), include=[nn.Linear]).report.layers) == 2
    assert len(mq.quantize(nn.Linear(64, 64), include=[""]).report.layers) == 1  # the root layer


@pytest.mark.parametrize("option", ["include", "exclude"])
def test_state_dict_and_checkpoint_paths(option, tmp_path):
    sd = {"encoder.0.weight": torch.randn(64, 64), "encoder.0.bias": torch.zeros(64), "head.weight": torch.randn(8, 64)}
    with pytest.raises(mq.ConfigError, match=rf"{option}='encoder' \(it names 'encoder', which holds layers"):
        mq.quantize(sd, **{option: ["encoder"]})
    src = tmp_path / "model.safetensors"
    save_file(sd, os.fspath(src))
    with pytest.raises(mq.ConfigError, match=rf"{option}='encoder' \(it names 'encoder'"):
        mq.quantize_checkpoint(src, tmp_path / "q.safetensors", **{option: ["encoder"]})
    assert [l.name for l in mq.quantize(sd, exclude=["encoder.*"]).report.layers] == ["head"]


def test_a_long_list_of_unmatched_names_gives_a_short_message():
    """40,000 names that match nothing made a 950 kB error: the first ten and a count."""
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(mq.ConfigError) as info:
        mq.quantize(model, include=[f"layer{i}" for i in range(40000)])
    message = str(info.value)
    assert len(message) < 1000
    assert "include='layer9' (and 39990 more) match no layer" in message and "layer10'" not in message


class _WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict({"q": nn.Linear(64, 64)})
        self.norm = nn.LayerNorm(64)
        self.act = nn.ReLU()


@pytest.mark.parametrize("option", ["include", "exclude"])
def test_a_module_that_is_no_layer_and_holds_none_is_named_for_what_it_is(option):
    """include=["norm"] (a LayerNorm) said "'norm', which holds layers but is none: 'norm.*' selects
    the layers inside it": it holds none, and 'norm.*' matches nothing either."""
    for pattern, label in ((["norm"], "'norm'"), ([nn.LayerNorm], "LayerNorm"), (["act"], "'act'")):
        with pytest.raises(mq.ConfigError) as info:
            mq.quantize(_WithNorm(), **{option: pattern})
        message = str(info.value)
        assert "holds layers" not in message and ".*" not in message.split("match")[0], message
        name = "norm" if pattern != ["act"] else "act"
        kind = "ReLU" if name == "act" else "LayerNorm"
        assert f"{option}={label} (it names {name!r}, a {kind}, which has no weight matrix to quantize and " \
               f"holds no layer)" in message, message
    with pytest.raises(mq.ConfigError, match=r"include='encoder' \(it names 'encoder', which holds layers"):
        mq.quantize(_WithNorm(), include=["encoder"])  # a block still says how to name its layers


def test_a_model_without_layers_names_its_modules_too():
    with pytest.raises(mq.ConfigError, match=r"include=ReLU \(it names '0', a ReLU, which has no weight matrix"):
        mq.quantize(nn.Sequential(nn.ReLU()), include=[nn.ReLU])
