"""load(path, model=...) of a saved quantized model: each quantized layer computes in the dtype it
was quantized from, so a real (not meta) model of another dtype is refused, as its float tensors
are; a model of the file's dtype, or on meta, loads."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq


def _net(dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).to(
        device=device, dtype=dtype)


@pytest.fixture(scope="module", params=[(fmt, source) for fmt in ("int8", "int4", "fp16")
                                        for source in ("model", "state_dict")], ids=lambda p: "-".join(p))
def saved_bf16(request, tmp_path_factory):
    # a state_dict's file records its weights' dtype too (it was null there: a float16 or bfloat16
    # weight's bytes can't tell which, and a bfloat16 file loaded into a float32 model)
    fmt, source = request.param
    path = tmp_path_factory.mktemp("dtype") / f"{fmt}-{source}.safetensors"
    net = _net(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(net if source == "model" else net.state_dict(), dtype=fmt)
        mq.save(result if source == "state_dict" else result.model, path)
    return path


def test_a_model_of_another_dtype_is_refused(saved_bf16):
    with pytest.raises(mq.CheckpointError, match=r"layer '0' was quantized from bfloat16 weights, the model's "
                                                   r"are float32 \(build the model in the file's dtype"):
        mq.load(saved_bf16, model=_net())


@pytest.mark.parametrize("skeleton", [lambda: _net(torch.bfloat16), lambda: _net(device="meta")],
                         ids=["same-dtype", "meta"])
def test_the_files_dtype_or_meta_loads(saved_bf16, skeleton):
    loaded = mq.load(saved_bf16, model=skeleton())
    assert loaded[0].orig_dtype == torch.bfloat16
    assert loaded(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


class _Recurrent(nn.Module):
    """An LSTM and an attention: saved as their quantized children (lstm.ih_l0, attn.in_proj, ...)."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.attn(y, y, y)[0]


@pytest.mark.parametrize("composite,child", [("lstm", "lstm.ih_l0"), ("attn", "attn.in_proj")])
def test_a_composite_of_another_dtype_is_refused(tmp_path, composite, child):
    torch.manual_seed(0)
    path = tmp_path / "recurrent.safetensors"
    mq.save(mq.quantize(_Recurrent().to(torch.bfloat16), dtype="int8").model, path)
    skeleton = _Recurrent().to(torch.bfloat16)
    getattr(skeleton, composite).float()  # (its placeholder children are on meta: the composite's dtype counts)
    with pytest.raises(mq.CheckpointError, match=rf"layer '{child}' was quantized from bfloat16 weights, the "
                                                   rf"model's are float32") as info:
        mq.load(path, model=skeleton)
    assert "has no layer" not in str(info.value)  # (the children are in the file: no second, wrong reason)
    loaded = mq.load(path, model=_Recurrent().to(torch.bfloat16))
    assert loaded(torch.randn(2, 5, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
