"""A file of a Hugging Face folder written by ``save_pretrained`` of a mono-quant model: its
quantized layers are listed in the folder's config.json (``quantization_config.layers``), not in
a manifest of the file.  ``inspect``, ``compare`` and ``bench`` read a file's manifest: on such a
file they reported "plain safetensors, 0 quantized layers" and compared only its float tensors
("lowest SQNR inf"), which read as a perfect result.  They say what the file is instead.  Decided
by the file's own tensors: a quantized layer's tensor the config lists, of the dtype it lists (a
float checkpoint of the same model in that folder is no such file)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import torch

from .dtypes import dtype_name
from .errors import CheckpointError
from .manifest import layer_key
from .untrusted_json import UntrustedJSONError, loads_bounded

__all__ = ["refuse_saved_pretrained"]

#: a config.json larger than this is not read (a model's config is some kilobytes; its layer list
#: some hundred bytes a layer)
_MAX_CONFIG_BYTES = 64 << 20


def _listed_tensors(config: Path) -> dict:
    """{file key: dtype name} of the quantized layers' tensors (not their biases) a mono-quant
    config.json lists; {} for any other file, or one that can't be read."""
    try:
        if not config.is_file() or config.stat().st_size > _MAX_CONFIG_BYTES:
            return {}
        data = loads_bounded(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, UntrustedJSONError):
        return {}
    qc = data.get("quantization_config") if isinstance(data, dict) else None
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    layers = qc.get("layers") if isinstance(method, str) and method.startswith("mono_quant") else None
    listed = {}
    for entry in layers if isinstance(layers, list) else ():
        tensors = entry.get("tensors") if isinstance(entry, dict) else None
        names = [entry.get("name")] + list(entry.get("aliases") or []) if isinstance(tensors, dict) else []
        for name in names:
            for local, spec in tensors.items():
                if isinstance(name, str) and isinstance(local, str) and local != "bias" and isinstance(spec, dict):
                    listed[layer_key(name, local)] = spec.get("dtype")
    return listed


def refuse_saved_pretrained(path, keys: Iterable[str], dtype_of: Callable[[str], torch.dtype]) -> None:
    """CheckpointError when ``path`` (a file without a mono-quant manifest, or a folder of shards,
    holding ``keys``) is, or sits in, a folder whose config.json lists quantized layers whose
    tensors the file holds."""
    path = Path(os.fspath(path))
    listed = _listed_tensors((path if path.is_dir() else path.parent) / "config.json")
    if listed and any(key in listed and dtype_name(dtype_of(key)) == listed[key] for key in keys):
        raise CheckpointError(
            f"{os.fspath(path)}: from a Hugging Face folder saved by save_pretrained: its quantized layers are "
            f"listed in config.json, which this command does not read; load the folder with from_pretrained "
            f"(import mono_quant first), or write a mono-quant file with mono_quant.save(model, path)")
