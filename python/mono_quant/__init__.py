"""mono-quant: quantize any PyTorch model to INT8, INT4, FP16 or BF16 in one call.

    import mono_quant as mq
    qmodel, skipped = mq.quantize(model, dtype="int8")   # the original is untouched
"""
from .torch_features import check_torch_version

check_torch_version()  # (before the modules that use newer torch APIs)

from .api import QuantizationResult, SkippedLayer, quantize
from .config import DEFAULT, QuantConfig
from .errors import AlreadyQuantizedError, CheckpointError, ConfigError, MonoQuantError, NonFiniteWeightError
from .export_onnx import export_onnx
from .io import QuantizedStateDict, load, quantize_checkpoint, save
from . import reference  # noqa: F401  (historical module names, kept importable as attributes)
from .formats import quantize_weight
from .int4 import Int4Weight
from .kernels import SETTINGS, cpu_info
from .modules import (QuantizedConv2d, QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedLinear, QuantizedModule,
                      register_qmodule)
from .qtypes import QTYPES, get_qtype
from .report import LayerReport, Report
from .tensor import QuantizedWeight
from .version import __version__

SETTINGS.apply_environment()  # MONO_QUANT_THREADS, once, where the package starts

from .integrations.hf_autoregister import register_when_transformers_imports

# a save_pretrained folder of a quantized model loads quantized once mono_quant is imported, before
# or after transformers (which mono_quant itself never imports)
register_when_transformers_imports()

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
    "QuantizedEmbeddingBag",
    "Int4Weight",
    "register_qmodule",
    "MonoQuantError",
    "ConfigError",
    "CheckpointError",
    "NonFiniteWeightError",
    "AlreadyQuantizedError",
    "DEFAULT",
    "Report",
    "LayerReport",
    "QTYPES",
    "get_qtype",
    "cpu_info",
    "__version__",
]


def __getattr__(name):
    # mono_quant.MonoQuantConfig: the transformers integration, imported on first use only
    # (mono_quant itself never needs transformers)
    if name == "MonoQuantConfig":
        try:
            from .integrations.transformers import MonoQuantConfig
        except ImportError as exc:  # an AttributeError, so hasattr() and getattr(..., default) keep working
            raise AttributeError(f"mono_quant.MonoQuantConfig needs the transformers package ({exc}): "
                                 f"pip install transformers") from exc
        return MonoQuantConfig
    raise AttributeError(f"module 'mono_quant' has no attribute {name!r}")
