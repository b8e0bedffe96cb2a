"""A loaded model's float tensors sit where torch would allocate them (64-byte aligned), so its
outputs are bit-identical to the saved model's.  A layer kept float was used straight from the
file's buffer, at the tensor's offset in the file: BLAS takes another path for a weight at
+8 / +24 / +56 bytes (float32 at batch 1; float64 at any batch), and some outputs differed
in their low bits from the model that was saved."""
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq


def _model(extra: int, dtype) -> nn.Module:
    # a float layer after tensors whose sizes shift its offset in the file by 8 bytes a step
    return nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64, bias=False), nn.Linear(64, 64 + extra),
                         nn.Linear(64 + extra, 64)).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_float_layers_load_aligned_and_bit_identical(dtype, tmp_path):
    path = tmp_path / "model.safetensors"
    offsets = set()
    for extra in range(0, 16, 2):
        torch.manual_seed(extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = mq.quantize(_model(extra, dtype), "int8", exclude=["2"])  # layer 2 stays float
        mq.save(result, path, overwrite=True)
        loaded = mq.load(path, model=_model(extra, dtype))
        for name, t in list(loaded.named_parameters()) + list(loaded.named_buffers()):
            if t.is_floating_point():
                assert t.data_ptr() % 64 == 0, (extra, name)
        offsets.add(mq.load(path)["2.weight"].data_ptr() % 64)
        for batch in (1, 3):
            x = torch.randn(batch, 64, dtype=dtype)
            assert torch.equal(loaded(x), result.model(x)), (extra, batch)
    assert len(offsets) == 1  # (a QuantizedStateDict's float tensors are aligned too)
