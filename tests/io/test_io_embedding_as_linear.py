"""A checkpoint quantized without its model takes an embedding table (a 2-D *.weight) for a
Linear's; loading it into the model is refused, and the message now says what to do (it only
said what was wrong: "... as a Linear but is a Embedding in the model")."""
import os

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.errors import CheckpointError


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(100, 32)
        self.fc = nn.Linear(32, 32)
        self.lm_head = nn.Linear(32, 100, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, x):
        return self.lm_head(self.fc(self.wte(x)))


def test_the_error_names_the_remedy_and_the_remedy_loads(tmp_path):
    torch.manual_seed(0)
    model = TiedLM().eval()
    src = tmp_path / "model.pt"
    torch.save(model.state_dict(), os.fspath(src))
    mq.quantize_checkpoint(src, tmp_path / "all.safetensors", "int8")
    with pytest.raises(CheckpointError, match=r"'wte' is quantized in the checkpoint as a Linear but is an Embedding "
                                              r"in the model .*exclude=\['wte'\] \(--exclude wte; and any layer tied "
                                              r"to it, such as an lm_head\), or quantize the model itself"):
        mq.load(tmp_path / "all.safetensors", model=TiedLM())
    mq.quantize_checkpoint(src, tmp_path / "q.safetensors", "int8", exclude=["wte", "lm_head"])
    loaded = mq.load(tmp_path / "q.safetensors", model=TiedLM().eval())
    x = torch.randint(0, 100, (2, 5))
    assert loaded.lm_head.weight is loaded.wte.weight
    assert torch.equal(loaded(x), mq.quantize(model, "int8").model(x))  # as quantize(model) (the tie stays float)
