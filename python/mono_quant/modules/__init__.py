"""Quantized modules, registered against the float types they replace."""
from .conv import QuantizedConv2d
from .embedding import QuantizedEmbedding
from .linear import QuantizedLinear
from .registry import QMODULES, QuantizedModule, qmodule_for, register_qmodule

__all__ = ["QuantizedModule", "QuantizedLinear", "QuantizedConv2d", "QuantizedEmbedding", "register_qmodule", "qmodule_for", "QMODULES"]
