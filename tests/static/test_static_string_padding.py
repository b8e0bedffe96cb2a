"""Static int8 of convs with padding='same' / 'valid' (Keras-style models, 1-D front ends): they
stayed float ("string padding") though 'valid' is no padding and 'same' with an odd kernel is the
numeric padding (dilation * (k - 1)) / 2 at both ends.  Bit-identical to the numeric twin, saved and
checked against model= at load, in the per-layer fallback too.  An uneven 'same' (an even kernel:
torch pads one more at the end) is padded on the codes: test_static_padding_modes.py."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.errors import CheckpointError
from mono_quant.static.conv_padding import conv_pads, static_padding


class Net(nn.Module):
    def __init__(self, numeric: bool, per_layer: bool = False):
        super().__init__()
        pad = (lambda same, n: n) if numeric else (lambda same, n: same)
        self.c1 = nn.Conv2d(3, 16, 3, padding=pad("same", 1))
        self.c2 = nn.Conv2d(16, 16, (3, 5), dilation=(1, 2), padding=pad("same", (1, 4)))
        self.c3 = nn.Conv2d(16, 16, 3, padding=pad("valid", 0))
        self.c4 = nn.Conv1d(16, 8, 5, padding=pad("same", 2), groups=2)
        self.fc = nn.Linear(8, 4)
        self.per_layer = per_layer

    def forward(self, x):
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        y = torch.relu(self.c3(y))
        if self.per_layer and y.sum() > -1e9:  # (data-dependent: torch.fx can't trace it)
            y = y + 0
        y = torch.relu(self.c4(y.flatten(2)))
        return self.fc(y.mean(-1))


def _pair(per_layer=False):
    torch.manual_seed(0)
    strings = Net(numeric=False, per_layer=per_layer).eval()
    numeric = Net(numeric=True, per_layer=per_layer).eval()
    numeric.load_state_dict(strings.state_dict())
    return strings, numeric


def _static(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, "int8", activations="static", calibration=data)


@pytest.mark.parametrize("per_layer", [False, True], ids=["fx", "per-layer"])
def test_same_and_valid_paddings_run_int8_with_the_numeric_twins_bits(per_layer, tmp_path):
    strings, numeric = _pair(per_layer)
    torch.manual_seed(1)
    data = [torch.randn(4, 3, 12, 12) for _ in range(4)]
    got, want = _static(strings, data), _static(numeric, data)
    assert got.report.capture == ("hooks" if per_layer else "fx")
    kinds = {r.name: r.kind for r in got.report.layers}
    assert kinds == {r.name: r.kind for r in want.report.layers}
    assert {kinds["c1"], kinds["c2"], kinds["c3"], kinds["c4"]} <= {"conv", "conv1d"}
    assert not {"c1", "c2", "c3", "c4"} & {s.name for s in got.skipped}
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        y = got.model(x)
        assert torch.equal(y, want.model(x))
        ref = strings(x)
        assert float(10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean())) > 25
    assert strings.c1.padding == "same"  # (the caller's model untouched)
    path = mq.save(got, tmp_path / "same.safetensors")
    with torch.no_grad():
        assert torch.equal(mq.load(path, model=_pair(per_layer)[0])(x), y)
        assert torch.equal(mq.load(path, model=_pair(per_layer)[1])(x), y)  # the same geometry
    wrong = _pair(per_layer)[0]
    wrong.c3 = nn.Conv2d(16, 16, 3, padding="same")
    with pytest.raises(CheckpointError, match=r"layer 'c3': padding \(0, 0, 0, 0\) \(zeros\) in the file, "
                                              r"\(1, 1, 1, 1\) \(zeros\) in the model"):
        mq.load(path, model=wrong)


@pytest.mark.parametrize("conv, padding", [
    (nn.Conv2d(2, 2, 3, padding="same"), (1, 1)), (nn.Conv2d(2, 2, (1, 7), padding="same"), (0, 3)),
    (nn.Conv2d(2, 2, 4, padding="same", dilation=2), (3, 3)), (nn.Conv2d(2, 2, 5, padding="valid"), (0, 0)),
    (nn.Conv1d(2, 2, 9, padding="same"), (4,)), (nn.Conv1d(2, 2, 3, padding=2), (2,)),
    (nn.Conv2d(2, 2, 4, padding="same"), None), (nn.Conv2d(2, 2, (3, 2), padding="same"), None),
])
def test_conv_pads_match_torch_and_an_uneven_same_goes_to_the_codes(conv, padding):
    sides = conv_pads(conv)
    kernels, mode, pads = static_padding(conv)
    if padding is None:  # one more at the end: padded on the codes, the kernels' padding 0
        assert any(a != b for a, b in sides) and mode == "zeros" and not any(kernels)
        assert pads == tuple(v for side in sides for v in side)
    else:
        assert sides == tuple((p, p) for p in padding) and kernels == padding and pads is None
    twin = type(conv)(2, 2, conv.kernel_size, dilation=conv.dilation)
    twin.load_state_dict(conv.state_dict())
    x = torch.randn(1, 2, *([11] * len(conv.kernel_size)))
    with torch.no_grad():  # what torch computes, as numbers per side
        assert torch.equal(twin(F.pad(x, [v for side in reversed(sides) for v in side])), conv(x))
