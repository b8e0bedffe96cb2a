"""A per-tensor int8 / uint8 embedding table has one scale for all rows: every row index
looks up right (it once read scale[index] and raised IndexError past row 0), eagerly, through
the torch.library op, and after a save / load."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.formats import traced_forward


def _float_model():
    return nn.Sequential(nn.Embedding(30, 16), nn.Linear(16, 16))


def _per_tensor_embedding(dtype):
    torch.manual_seed(0)
    model = _float_model()
    qmodel, skipped = mq.quantize(model, dtype=dtype, granularity="per_tensor", embeddings=True)
    assert skipped == []
    return model, qmodel


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_every_row_of_a_per_tensor_table_looks_up(dtype):
    model, qmodel = _per_tensor_embedding(dtype)
    emb = qmodel[0]
    assert emb.weight_axis is None and emb.weight_scale.numel() == 1
    idx = torch.tensor([[0, 1, 29], [7, 7, 12]])
    got = emb(idx)
    torch.testing.assert_close(got, emb.dequantized_weight()[idx], rtol=0, atol=0)
    step = float(emb.weight_scale)
    assert (got - model[0](idx)).abs().max() <= step / 2 + 1e-6
    assert qmodel(idx).shape == (2, 3, 16)
    with pytest.raises(IndexError):
        emb(torch.tensor([30]))


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_op_route_matches_eager_per_tensor(dtype):
    _, qmodel = _per_tensor_embedding(dtype)
    emb = qmodel[0]
    idx = torch.arange(30).reshape(5, 6)
    assert torch.equal(traced_forward.embedding_forward(emb, idx), emb(idx))


def test_per_tensor_table_survives_save_and_load(tmp_path):
    _, qmodel = _per_tensor_embedding("int8")
    path = tmp_path / "emb.safetensors"
    mq.save(qmodel, path)
    loaded = mq.load(path, model=_float_model())
    idx = torch.arange(30)
    assert torch.equal(loaded[0](idx), qmodel[0](idx))
