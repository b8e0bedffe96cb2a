"""A calibration batch that is a tuple is read as (input, target): a model of several inputs given
its inputs as a tuple got only "missing argument 'ids'"; the error now says how the batch was read
and what to give instead (dict batches, which work, or a callable)."""
import warnings

import pytest
import torch
from torch import nn


import mono_quant as mq


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.emb = nn.Embedding(10, 16)

    def forward(self, x, ids):
        return self.fc(x) + self.emb(ids)


def _batch():
    return torch.randn(4, 16), torch.randint(0, 10, (4,))


def test_a_tuple_batch_for_a_model_of_two_inputs_says_how_it_was_read():
    with pytest.raises(TypeError, match=r"missing argument 'ids'.*read as \(input, target\).*dict batches"):
        mq.quantize(TwoInputs().eval(), "int8", activations="static", calibration=[_batch()])


def test_dict_batches_calibrate_it():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, ids = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(model, "int8", activations="static", calibration=[{"x": x, "ids": ids}] * 30)
    assert (result.model(x, ids) - model(x, ids)).abs().max() < 0.1
