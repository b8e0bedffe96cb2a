"""MonoQuantConfig on a transformers model holding an nn.LSTM, an nn.RNN and an nn.MultiheadAttention:
quantized while loading as quantize(model) does, saved and reloaded bit-identical."""
import warnings

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import mono_quant as mq  # noqa: E402
from mono_quant.modules import QuantizedLSTM, QuantizedMultiheadAttention, QuantizedRNN  # noqa: E402


class TinyConfig(transformers.PretrainedConfig):
    model_type = "mq_tiny_rnn_attention"

    def __init__(self, hidden=32, **kw):
        self.hidden = hidden
        super().__init__(**kw)


class TinyModel(transformers.PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        h = config.hidden
        self.lstm = nn.LSTM(h, h, num_layers=2, batch_first=True)
        self.rnn = nn.RNN(h, h, nonlinearity="relu", batch_first=True, bidirectional=True)
        self.attn = nn.MultiheadAttention(h, 4, batch_first=True)
        self.head = nn.Linear(h, h)
        self.norm = nn.LayerNorm(h)  # a float parameter (save_pretrained asks the model's dtype)
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, x):
        y, _ = self.lstm(x)
        y = self.rnn(y)[0][..., :32] + y
        y, _ = self.attn(y, y, y, need_weights=False)
        return self.head(self.norm(y))


def test_lstm_and_attention_through_from_pretrained(tmp_path):
    torch.manual_seed(0)
    model = TinyModel(TinyConfig()).eval()
    model.save_pretrained(tmp_path / "float")
    x = torch.randn(2, 5, 32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        expected = mq.quantize(model, dtype="int8").model(x)
        loaded = TinyModel.from_pretrained(tmp_path / "float", quantization_config=mq.MonoQuantConfig(dtype="int8"))
        assert isinstance(loaded.lstm, QuantizedLSTM) and isinstance(loaded.attn, QuantizedMultiheadAttention)
        assert isinstance(loaded.rnn, QuantizedRNN) and loaded.rnn.nonlinearity == "relu"
        assert torch.equal(loaded.eval()(x), expected)
        loaded.save_pretrained(tmp_path / "q")
        again = TinyModel.from_pretrained(tmp_path / "q").eval()
        assert isinstance(again.lstm, QuantizedLSTM) and isinstance(again.attn, QuantizedMultiheadAttention)
        assert isinstance(again.rnn, QuantizedRNN) and again.rnn.nonlinearity == "relu"
        assert torch.equal(again(x), expected)
