"""fp16 / bf16 casts of finite weights beyond the dtype's range: an error naming the layer (or a skip
with nonfinite="skip"), never Inf stored silently nor a bare 'math domain error'."""
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq


def _model(big):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[2].weight[1, 3] = big
    return model


@pytest.mark.parametrize("dtype, big", [("fp16", 1e5), ("fp16", -70000.0), ("bf16", 3.4e38)])
def test_model_and_state_dict_name_the_layer(dtype, big):
    model = _model(big)
    for source, where in ((model, "layer '2' (Linear)"), (model.state_dict(), "tensor '2.weight'")):
        with pytest.raises(mq.NonFiniteWeightError, match=f"beyond {dtype}'s range") as info:
            mq.quantize(source, dtype=dtype)
        assert where in str(info.value) and "output channel 1" in str(info.value)
        assert info.value.layer == "2" and info.value.row == 1


def test_skip_leaves_the_layer_float_with_its_reason():
    model = _model(1e5)
    qmodel, skipped = mq.quantize(model, dtype="fp16", nonfinite="skip")
    assert [(s.name, s.type) for s in skipped] == [("2", "Linear")]
    assert "beyond fp16's range" in skipped[0].reason and "bf16 holds them" in skipped[0].reason
    assert type(qmodel[2]) is nn.Linear and torch.equal(qmodel[2].weight, model[2].weight)
    x = torch.randn(3, 8)
    assert torch.isfinite(qmodel(x)).all()


def test_in_range_weights_and_bf16_still_quantize():
    model = _model(60000.0)  # fp16's max is 65504
    qmodel, skipped = mq.quantize(model, dtype="fp16")
    assert not skipped and torch.isfinite(qmodel[2].weight).all()
    big = _model(1e5)
    qmodel, skipped = mq.quantize(big, dtype="bf16")
    assert not skipped
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = big(x)
        assert torch.allclose(qmodel(x), want, rtol=2e-2, atol=1e-2 * float(want.abs().max()))


def test_quantize_checkpoint_and_cli_report_it(tmp_path, capsys):
    src = tmp_path / "model.safetensors"
    save_file(_model(1e5).state_dict(), os.fspath(src))
    with pytest.raises(mq.NonFiniteWeightError, match="beyond fp16's range"):
        mq.quantize_checkpoint(src, tmp_path / "q.safetensors", "fp16")
    from mono_quant.cli import main
    assert main(["quantize", os.fspath(src), "-o", os.fspath(tmp_path / "q.safetensors"), "--dtype", "fp16"]) == 1
    err = capsys.readouterr().err
    assert "tensor '2.weight' has values beyond fp16's range" in err and "Traceback" not in err
    assert not (tmp_path / "q.safetensors").exists()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_float8_weights_cast(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16)).to(torch.float8_e4m3fn)
    qmodel, skipped = mq.quantize(model, dtype=dtype)
    assert not skipped
    assert torch.equal(qmodel[0]._buffers["weight"].float(), model[0].weight.float())  # float8 values are exact
