"""Weight formats: one object per format (int8, uint8, int4, fp16, bf16) that owns
quantizing a weight, a module's buffers, dequantizing, the Linear / Conv2d / Embedding
forward and the manifest fields and file checks (see :mod:`.base`), and the registry
that maps a dtype name to its object (:func:`get_format`)."""
from .base import ACTIVATION_MODES, ALLOWED_LAYER_TENSORS, PACKED_BUFFERS, WeightFormat, checked_activations
from .checks import BadLayer
from .quantize import quantize_weight
from .registry import FORMATS, format_of, get_format

__all__ = ["WeightFormat", "FORMATS", "get_format", "format_of", "quantize_weight", "ACTIVATION_MODES",
           "ALLOWED_LAYER_TENSORS", "PACKED_BUFFERS", "BadLayer", "checked_activations"]
