"""Save / load quantized models as safetensors with a JSON manifest, and
quantize checkpoints on disk without loading them (no pickle anywhere on load)."""
from .checkpoint import CheckpointReader, open_checkpoint, quantize_checkpoint
from .errors import CheckpointError
from .load import QuantizedStateDict, load
from .manifest import FORMAT_VERSION
from .save import save

__all__ = ["save", "load", "quantize_checkpoint", "QuantizedStateDict", "CheckpointError", "CheckpointReader",
           "open_checkpoint", "FORMAT_VERSION"]
