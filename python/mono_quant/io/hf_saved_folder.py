"""A file of a Hugging Face folder written by ``save_pretrained`` of a mono-quant model: its
quantized layers are listed in the folder's config.json (``quantization_config.layers``), not in
a manifest of the file.  ``inspect``, ``compare`` and ``bench`` read a file's manifest: on such a
file they reported "plain safetensors, 0 quantized layers" and compared only its float tensors
("lowest SQNR inf"), which read as a perfect result.  They say what the file is instead."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError
from .untrusted_json import UntrustedJSONError, loads_bounded

__all__ = ["refuse_saved_pretrained"]

#: a config.json larger than this is not read (a model's config is some kilobytes; its layer list
#: some hundred bytes a layer)
_MAX_CONFIG_BYTES = 64 << 20


def refuse_saved_pretrained(path) -> None:
    """CheckpointError when ``path`` (a file without a mono-quant manifest, or a folder of shards) is,
    or sits in, a folder whose config.json names mono-quant as its quantization method."""
    path = Path(os.fspath(path))
    config = (path if path.is_dir() else path.parent) / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > _MAX_CONFIG_BYTES:
            return
        data = loads_bounded(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, UntrustedJSONError):
        return
    method = (data.get("quantization_config") or {}).get("quant_method") if isinstance(data, dict) else None
    if isinstance(method, str) and method.startswith("mono_quant"):
        raise CheckpointError(
            f"{os.fspath(path)}: from a Hugging Face folder saved by save_pretrained: its quantized layers are "
            f"listed in {config.name}, which this command does not read; load the folder with from_pretrained "
            f"(import mono_quant first), or write a mono-quant file with mono_quant.save(model, path)")
