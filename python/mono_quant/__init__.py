"""mono-quant: quantize any PyTorch model to INT8, INT4, FP16 or BF16 in one call.

    import mono_quant as mq
    qmodel, skipped = mq.quantize(model, dtype="int8")   # the original is untouched
"""
from .api import QuantizationResult, SkippedLayer, quantize
from .config import DEFAULT, QuantConfig
from .errors import CheckpointError, ConfigError, MonoQuantError, NonFiniteWeightError
from .export_onnx import export_onnx
from .io import QuantizedStateDict, load, quantize_checkpoint, save
from .kernels import cpu_info
from .int4 import Int4Weight
from .modules import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, QuantizedModule, register_qmodule
from .qtypes import QTYPES, get_qtype
from .report import LayerReport, Report
from .tensor import QuantizedWeight, quantize_weight
from .version import __version__




__all__ = [
    "quantize",
    "quantize_weight",
    "save",
    "load",
    "quantize_checkpoint",
    "export_onnx",
    "QuantizedStateDict",
    "QuantizationResult",
    "SkippedLayer",
    "QuantConfig",
    "QuantizedWeight",
    "QuantizedModule",
    "QuantizedLinear",
    "QuantizedConv2d",
    "QuantizedEmbedding",
    "Int4Weight",
    "register_qmodule",
    "MonoQuantError",
    "ConfigError",
    "CheckpointError",
    "NonFiniteWeightError",
    "DEFAULT",
    "Report",
    "LayerReport",
    "QTYPES",
    "get_qtype",
    "cpu_info",
    "__version__",
]
