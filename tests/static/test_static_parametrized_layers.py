"""Static int8 of a Conv2d / Linear whose weight is parametrized (weight_norm, spectral_norm): quantized
with the weight the float layer computes in eval mode, as dynamic int8 does; it stayed float with
"no int8 kernel".  The caller's parametrized modules are untouched."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import mono_quant as mq


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = parametrizations.weight_norm(nn.Conv2d(3, 8, 3))
        self.fc = parametrizations.spectral_norm(nn.Linear(8, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3))
        if not torch.jit.is_tracing() and getattr(self, "data_dependent", False) and y.sum() > -1e9:
            y = y + 0  # (torch.fx can't trace this: the per-layer fallback)
        return self.head(torch.relu(self.fc(y)))


@pytest.mark.parametrize("data_dependent", [False, True], ids=["fx", "per_layer"])
def test_parametrized_layers_are_quantized(tmp_path, data_dependent):
    torch.manual_seed(0)
    model = Net().eval()
    model.data_dependent = data_dependent
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [torch.randn(16, 3, 8, 8) for _ in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(model, "int8", activations="static", calibration=data)
    assert not {"conv", "fc", "head"} & {s.name for s in result.skipped}
    assert {r.name for r in result.report.layers if r.kind in ("conv", "linear")} == {"conv", "fc", "head"}
    x = data[0]
    with torch.no_grad():
        y, ref = result.model(x), model(x)
    assert 10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean()) > 25
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert type(model.conv).__name__ == "ParametrizedConv2d"
    path = mq.save(result, tmp_path / "p.safetensors")
    skeleton = Net().eval()  # (parametrized as the caller's)
    skeleton.data_dependent = data_dependent
    with torch.no_grad():
        assert torch.equal(mq.load(path, model=skeleton)(x), y)


def test_a_parametrized_layer_not_selected_or_shared_stays_as_it_is(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 4)).eval()
    data = [torch.randn(32, 8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        excluded = mq.quantize(model, "int8", activations="static", calibration=data, exclude=["0"])
    kept = excluded.model.layers["_0"]
    assert type(kept).__name__ == "ParametrizedLinear" and all(p.requires_grad for p in kept.parameters())

    class Shared(nn.Module):  # one parametrized module under two names, behind data-dependent flow
        def __init__(self):
            super().__init__()
            self.a = parametrizations.weight_norm(nn.Linear(8, 8))
            self.b = self.a

        def forward(self, x):
            if x.sum() > -1e9:
                x = self.a(x)
            return self.b(x)

    shared = Shared().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(shared, "int8", activations="static", calibration=data)
    assert result.model.a is result.model.b  # (one module stays one: it was split, and its file refused)
    path = mq.save(result, tmp_path / "shared.safetensors")
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(mq.load(path, model=Shared().eval())(x), result.model(x))
