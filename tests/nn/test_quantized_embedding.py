"""Embedding tables: quantized only with embeddings=True (int8 per row, int4
group-wise), lookups dequantize just the rows read, persistence works."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.modules import QuantizedEmbedding


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 96, padding_idx=0)
        self.proj = nn.Linear(96, 8)

    def forward(self, idx):
        return self.proj(self.emb(idx))


def test_embeddings_are_off_by_default():
    qmodel, skipped = mq.quantize(Tiny(), dtype="int4")
    assert isinstance(qmodel.emb, nn.Embedding)
    assert [(s.name, s.reason) for s in skipped] == [
        ("emb", "embedding tables are quantized only with embeddings=True")]


@pytest.mark.parametrize("dtype,group_size", [("int8", None), ("int4", 32), ("int4", None), ("fp16", None)])
def test_lookup_dequantizes_the_rows_it_reads(dtype, group_size):
    model = Tiny()
    kwargs = {"group_size": group_size} if dtype == "int4" else {}
    qmodel, skipped = mq.quantize(model, dtype=dtype, embeddings=True, **kwargs)
    assert skipped == []
    emb = qmodel.emb
    assert isinstance(emb, QuantizedEmbedding) and emb.weight_format == dtype
    idx = torch.tensor([[3, 0, 49], [7, 7, 12]])
    got = emb(idx)
    full = emb.dequantized_weight()
    assert got.shape == (2, 3, 96) and got.dtype == torch.float32
    torch.testing.assert_close(got, full[idx], rtol=0, atol=0)
    assert (got - model.emb(idx)).abs().max() < 0.5
    if dtype == "int4":
        assert emb.weight_qdata.dtype == torch.uint8 and emb.weight_qdata.shape == (50, 48)
    for bad in (50, -1):
        with pytest.raises(IndexError):
            emb(torch.tensor([bad]))


def test_quantized_embedding_from_saved_is_bit_identical():
    qmodel, _ = mq.quantize(Tiny(), dtype="int4", group_size=32, embeddings=True)
    emb = qmodel.emb
    rebuilt = QuantizedEmbedding.from_saved(emb.init_kwargs(), emb.get_state_attrs(),
                                            {k: v.clone() for k, v in emb.state_dict().items()})
    idx = torch.randint(0, 50, (4, 5))
    assert torch.equal(rebuilt(idx), emb(idx))
    assert rebuilt.padding_idx == 0


def test_tied_embedding_and_head_share_storage():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(64, 128)
            self.head = nn.Linear(128, 64, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            return self.head(self.emb(idx))

    qmodel, skipped = mq.quantize(Tied(), dtype="int4", embeddings=True)
    assert skipped == []
    assert qmodel.emb.weight_qdata.data_ptr() == qmodel.head.weight_qdata.data_ptr()
    assert qmodel(torch.tensor([[1, 2, 3]])).shape == (1, 3, 64)


def test_max_norm_embedding_is_skipped():
    model = nn.Sequential(nn.Embedding(10, 32, max_norm=1.0))
    qmodel, skipped = mq.quantize(model, dtype="int8", embeddings=True)
    assert isinstance(qmodel[0], nn.Embedding) and "max_norm" in skipped[0].reason
