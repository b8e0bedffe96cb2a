"""INT4 through save / load and streaming checkpoint quantization."""
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(100, 64)).eval()


def _skeleton():
    return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(100, 64))


@pytest.mark.parametrize("group_size", [32, 128, None])
def test_int4_model_and_checkpoint_roundtrips(tmp_path, group_size):
    model = _model()
    x = torch.randn(3, 256)
    qmodel, _ = mq.quantize(model, dtype="int4", group_size=group_size)
    model[1] = nn.Identity()  # only for the forward below: layer 2 takes 100 inputs
    qmodel[1] = nn.Sequential()
    mq.save(qmodel, tmp_path / "m.safetensors")
    loaded = mq.load(tmp_path / "m.safetensors", model=_skeleton())
    assert torch.equal(loaded[0](x), qmodel[0](x))
    assert loaded[0].weight_qdata.dtype == torch.uint8  # 4-bit codes, two per byte
    src = tmp_path / "src.safetensors"
    save_file({k: v.contiguous() for k, v in _model().state_dict().items()}, str(src))
    mq.quantize_checkpoint(src, tmp_path / "q.safetensors", dtype="int4", group_size=group_size)
    from_ckpt = mq.load(tmp_path / "q.safetensors", model=_skeleton())
    assert torch.equal(from_ckpt[0](x), qmodel[0](x))
    assert torch.equal(from_ckpt[2](x[:, :100]), qmodel[2](x[:, :100]))
    dense = mq.load(tmp_path / "q.safetensors").dequantize()
    assert torch.equal(dense["0.weight"], qmodel[0].dequantized_weight())


def test_int4_checkpoint_with_wrong_tensor_shapes_is_refused(tmp_path):
    src = tmp_path / "src.safetensors"
    save_file({k: v.contiguous() for k, v in _model().state_dict().items()}, str(src))
    mq.quantize_checkpoint(src, tmp_path / "q.safetensors", dtype="int4")
    qsd = mq.load(tmp_path / "q.safetensors")
    tensors = {k: v.clone() for k, v in qsd.items()}
    tensors["0.weight_scale"] = tensors["0.weight_scale"][:, :1].contiguous()
    from mono_quant.io.load import dequantize_layer

    layer = next(l for l in qsd.layers if l["name"] == "0")
    own = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("0.weight")}
    with pytest.raises(CheckpointError, match="inconsistent int4 tensors"):
        dequantize_layer(qsd.kind, layer, own)
