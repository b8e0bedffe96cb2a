"""Static int8 of convs whose padding the kernels don't make themselves: padding_mode reflect /
replicate / circular, and an uneven 'same' (an even kernel: torch pads one more at the end).  They
stayed float; now the codes are padded before the kernels (static/conv_padding.py).  Quantizing is
per element, so a layer's output is bit for bit its unpadded twin's on the float input torch pads;
saved, loaded and checked against model= with the mode; a file's pads are validated at load."""
import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.errors import CheckpointError
from mono_quant.static.conv1d import StaticConv1d
from mono_quant.static.conv_padding import conv_pads, pad_codes, static_padding
from mono_quant.static.modules import StaticConv2d
from static_helpers import BranchyConv

CONVS = {
    "reflect": lambda: nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"),
    "replicate-2x1": lambda: nn.Conv2d(4, 8, 3, padding=(2, 1), padding_mode="replicate"),
    "circular": lambda: nn.Conv2d(4, 8, (3, 5), padding=(1, 2), padding_mode="circular"),
    "same-even": lambda: nn.Conv2d(4, 8, 4, padding="same"),
    "same-even-reflect": lambda: nn.Conv2d(4, 8, (2, 3), padding="same", dilation=(3, 1), padding_mode="reflect"),
    "reflect-strided": lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1, padding_mode="reflect"),
    "depthwise-reflect": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
    "grouped-circular": lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2, padding_mode="circular"),
    "conv1d-reflect": lambda: nn.Conv1d(4, 8, 5, padding=2, padding_mode="reflect"),
    "conv1d-same-even": lambda: nn.Conv1d(4, 8, 4, padding="same"),
    "conv1d-replicate": lambda: nn.Conv1d(4, 4, 3, padding=1, groups=4, padding_mode="replicate"),
}


class Net(nn.Module):
    """conv (zeros) -> ReLU -> the conv under test (int8 codes in, zero-point -127) -> float output."""

    def __init__(self, make, one_d: bool):
        super().__init__()
        self.first = (nn.Conv1d if one_d else nn.Conv2d)(3, 4, 3, padding=1)
        self.conv = make()

    def forward(self, x):
        return self.conv(torch.relu(self.first(x)))


def _static(model, data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, "int8", activations="static", calibration=data, **kwargs)


def _case(name, seed=0):
    torch.manual_seed(seed)
    one_d = name.startswith("conv1d")
    model = Net(CONVS[name], one_d).eval()
    shape = (3, 3, 13) if one_d else (3, 3, 11, 10)
    torch.manual_seed(seed + 1)
    return model, [torch.randn(*shape) for _ in range(4)], torch.randn(*shape)


def _unpadded_twin(layer):
    """The layer without its pads (the kernels' padding 0): run on the float input torch pads."""
    twin = copy.deepcopy(layer)
    twin.pads, twin.padding_mode = None, "zeros"
    return twin


@pytest.mark.parametrize("name", CONVS)
def test_a_padding_the_kernels_dont_make_runs_int8_with_the_padded_inputs_bits(name, tmp_path):
    model, data, x = _case(name)
    result = _static(model, data)
    assert not result.skipped, result.skipped
    layer = next(m for m in result.model.modules() if isinstance(m, StaticConv2d) and m.pads is not None)
    conv = model.conv
    _, mode, pads = static_padding(conv)
    assert layer.padding_mode == mode and tuple(layer.pads[-len(pads):]) == pads
    assert "pads=" in repr(layer)
    # the layer on its int8 input = its unpadded twin on the codes of the padded float input
    one_d = isinstance(layer, StaticConv1d)
    with torch.no_grad():
        first = next(m for m in result.model.modules() if isinstance(m, StaticConv2d) and m is not layer)
        q = first(x)  # int8 codes, NHWC (a Conv1d's: [batch, 1, length, channels])
        got = layer(q)
        image = q.permute(0, 3, 1, 2).float()  # codes as floats (exact): padding them pads the codes
        image = image.squeeze(2) if one_d else image
        sides = [v for side in reversed(conv_pads(conv)) for v in side]  # F.pad's order: the last dim first
        padded = (F.pad(image, sides, value=float(layer.in_zp)) if mode == "zeros"
                  else F.pad(image, sides, mode=mode))
        padded = padded.unsqueeze(2) if one_d else padded
        want = _unpadded_twin(layer)(padded.to(torch.int8).permute(0, 2, 3, 1).contiguous())
        assert torch.equal(got, want)
        y, ref = result.model(x), model(x)
    assert y.shape == ref.shape
    assert float(10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean())) > 25
    assert model.conv.padding_mode == conv.padding_mode  # (the caller's model untouched)
    path = mq.save(result, tmp_path / f"{name}.safetensors")
    with torch.no_grad():
        assert torch.equal(mq.load(path)(x), y)
        assert torch.equal(mq.load(path, model=_case(name)[0])(x), y)


def test_pad_codes_is_torchs_pad_of_the_codes():
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (2, 5, 6, 3), dtype=torch.int8)
    image = q.permute(0, 3, 1, 2).float()
    for mode in ("reflect", "replicate", "circular"):
        for pads in [(1, 2, 3, 0), (4, 4, 5, 5), (0, 0, 1, 1)]:
            want = F.pad(image, (pads[2], pads[3], pads[0], pads[1]), mode=mode)
            assert torch.equal(pad_codes(q, pads, mode, 0).permute(0, 3, 1, 2).float(), want), (mode, pads)
    want = F.pad(image, (1, 2, 0, 3), value=-127.0)
    assert torch.equal(pad_codes(q, (0, 3, 1, 2), "zeros", -127).permute(0, 3, 1, 2).float(), want)
    # past LINE_COPIES lines a side: one gather (a file's pads may be up to 2^20)
    big = torch.randint(-127, 128, (1, 20, 17, 2), dtype=torch.int8)
    image = big.permute(0, 3, 1, 2).float()
    for mode, pads in [("reflect", (19, 10, 16, 9)), ("circular", (20, 12, 17, 9)), ("replicate", (1000, 9, 3, 700))]:
        want = F.pad(image, (pads[2], pads[3], pads[0], pads[1]), mode=mode)
        assert torch.equal(pad_codes(big, pads, mode, 0).permute(0, 3, 1, 2).float(), want), mode


@pytest.mark.parametrize("capture", ["fx", "hooks"])
def test_a_mode_pads_by_what_the_layer_was_made_with_as_torch_does(capture):
    # torch pads a reflect conv by _reversed_padding_repeated_twice, set when it was made, whatever padding /
    # dilation say later (a DeepLab-style output-stride change); zeros padding reads the current padding
    torch.manual_seed(0)
    model = (BranchyConv("reflect") if capture == "hooks" else
             nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU())).eval()
    conv = model.conv if capture == "hooks" else model[0]
    conv.padding, conv.dilation = (2, 2), (2, 2)
    result = _static(model, [torch.randn(2, 3, 12, 12) for _ in range(3)])
    assert result.report.capture == capture and not result.skipped
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        y, ref = result.model(x), model(x)
    assert y.shape == ref.shape
    assert float(10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean())) > 25
    assert conv_pads(conv) == ((1, 1), (1, 1))


def test_the_program_leaves_a_padded_conv_to_the_node_by_node_path():
    model, data, x = _case("reflect")
    result = _static(model, data)
    with torch.no_grad():
        y = result.model(x)
        result.model.run_as_program = False
        assert torch.equal(result.model(x), y)


def test_a_reflect_padding_past_the_input_size_says_so():
    model, data, _ = _case("reflect")
    result = _static(model, data)
    with pytest.raises(ValueError, match=r"padding_mode 'reflect' pads .* less than the input's size \(height 1"):
        result.model(torch.randn(1, 3, 1, 8))


def test_the_per_layer_fallback_pads_the_codes_too(tmp_path):
    torch.manual_seed(0)
    model = BranchyConv("replicate").eval()
    result = _static(model, [torch.randn(2, 3, 8, 8) for _ in range(3)])
    assert result.report.capture == "hooks" and not result.skipped
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y, ref = result.model(x), model(x)
        assert float(10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean())) > 25
        path = mq.save(result, tmp_path / "per_layer.safetensors")
        assert torch.equal(mq.load(path, model=BranchyConv("replicate"))(x), y)


def test_a_file_loaded_into_a_model_of_another_padding_mode_is_refused(tmp_path):
    model, data, _ = _case("reflect")
    path = mq.save(_static(model, data), tmp_path / "reflect.safetensors")
    other = _case("reflect")[0]
    other.conv = nn.Conv2d(4, 8, 3, padding=1, padding_mode="replicate")
    with pytest.raises(CheckpointError, match=r"layer 'conv': padding \(1, 1, 1, 1\) \(reflect\) in the file, "
                                              r"\(1, 1, 1, 1\) \(replicate\) in the model"):
        mq.load(path, model=other)


def _edited(path, tmp_path, edit):
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta["mono_quant.static"])
    edit(manifest["layers"]["conv"]["init_kwargs"]["$dict"])
    meta["mono_quant.static"] = json.dumps(manifest)
    save_file(tensors, str(tmp_path / "edited.safetensors"), meta)
    return tmp_path / "edited.safetensors"


@pytest.mark.parametrize("edit, message", [
    (lambda kw: kw.update(pads=[1, 1, 1]), "pads must be None or four ints"),
    (lambda kw: kw.update(pads=[1, -1, 1, 1]), "pads must be None or four ints"),
    (lambda kw: kw.update(pads=[1, 1, 1, 1.5]), "pads must be None or four ints"),
    (lambda kw: kw.update(pads=[1, 1, 1, 2 ** 21]), "pads must be None or four ints"),
    (lambda kw: kw.update(pads="1111"), "pads must be None or four ints"),
    (lambda kw: kw.update(padding_mode="mirror"), "padding_mode must be one of"),
    (lambda kw: kw.update(padding=[1, 1]), r"replace the kernels' padding, which must then be \(0, 0\)"),
])
def test_a_files_pads_are_validated_at_load(edit, message, tmp_path):
    model, data, _ = _case("reflect")
    path = mq.save(_static(model, data), tmp_path / "reflect.safetensors")
    with pytest.raises(CheckpointError, match=f"layer 'conv' .*{message}"):
        mq.load(_edited(path, tmp_path, edit))


def test_a_conv1d_file_padding_its_height_is_refused(tmp_path):
    model, data, _ = _case("conv1d-reflect")
    path = mq.save(_static(model, data), tmp_path / "c1d.safetensors")
    with pytest.raises(CheckpointError, match="layer 'conv' .*StaticConv1d takes the height-1 geometry"):
        mq.load(_edited(path, tmp_path, lambda kw: kw.update(pads=[1, 0, 2, 2])))


def test_the_constructor_moves_a_modes_padding_to_the_codes():
    layer = StaticConv2d(4, 8, 3, padding=(1, 2), padding_mode="circular")
    assert layer.padding == (0, 0) and layer.pads == (1, 1, 2, 2) and layer.padding_mode == "circular"
    plain = StaticConv2d(4, 8, 3, padding=0, padding_mode="reflect")
    assert plain.pads is None and plain.padding_mode == "zeros"
    assert "padding_mode" not in StaticConv2d(4, 8, 3, padding=1).init_kwargs()  # (as earlier files)
