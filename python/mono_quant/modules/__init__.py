"""Quantized modules, registered against the float types they replace."""
from .conv import QuantizedConv2d
from .conv1d import QuantizedConv1d
from .embedding import QuantizedEmbedding
from .embedding_bag import QuantizedEmbeddingBag
from .gpt2_conv1d import QuantizedGPT2Conv1D
from .linear import QuantizedLinear
from .attention import QuantizedMultiheadAttention
from .composite import QuantizedComposite
from .rnn import QuantizedGRU, QuantizedLSTM, QuantizedRNN
from .registry import QMODULES, QuantizedModule, qmodule_for, register_qmodule

__all__ = ["QuantizedModule", "QuantizedLinear", "QuantizedConv2d", "QuantizedEmbedding", "register_qmodule", "qmodule_for", "QMODULES"]
__all__ += ["QuantizedConv1d", "QuantizedGPT2Conv1D", "QuantizedEmbeddingBag"]
__all__ += ["QuantizedComposite", "QuantizedLSTM", "QuantizedGRU", "QuantizedRNN", "QuantizedMultiheadAttention"]
