"""What a static int8 file holds, for ``mono-quant inspect`` (which read one as a plain safetensors
file: "no manifest, 0 quantized layers").

A graph file (``save_static``) is loaded, so every check ``mq.load`` makes is made, and its
layers are listed from the model it gives.  A per-layer file (the fallback's: the user's
architecture around static layers) cannot be built without ``model=``: its header is checked and
its manifest's layers listed; ``mq.load(path, model=...)`` makes the rest of the checks.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ..errors import CheckpointError
from ..io.container import read_header
from ..io.dtypes import dtype_name
from ..io.untrusted_json import UntrustedJSONError, loads_bounded
from ..report import tensor_bytes
from .persist import is_static_file, load_static
from .persist_per_layer import PER_LAYER_META_KEY, is_per_layer_file

__all__ = ["describe_static"]


def _tensor_bytes(module) -> int:
    return sum(tensor_bytes(t) for t in list(module.parameters()) + list(module.buffers()))


def describe_static(path) -> Optional[Dict[str, Any]]:
    """A JSON-able description of a static int8 file (``kind`` "static graph" or "static per-layer",
    ``layers``: name, class, output ("int8" / "float" / None) and bytes; ``ops``; ``totals``), or
    None for any other file.  Raises CheckpointError for an invalid one."""
    path = os.fspath(path)
    if is_static_file(path):
        model = load_static(path)
        layers = [{"name": name, "class": type(m).__name__, "output": _output(m), "bytes": _tensor_bytes(m)}
                  for name, m in model.layers.items()]
        return {"path": path, "kind": "static graph", "layers": layers, "ops": len(model.program),
                "checked": "every check of mq.load", "totals": _totals(layers, read_header(path).file_size)}
    if is_per_layer_file(path):
        header = read_header(path)
        try:
            manifest = loads_bounded(header.metadata[PER_LAYER_META_KEY])
            classes = {str(name): str(entry["class"]) for name, entry in manifest["layers"].items()}
        except (UntrustedJSONError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: invalid per-layer static manifest: {type(exc).__name__}: {exc}") from None
        owned = {name: {} for name in classes}  # each static layer's tensors (``<name>.layer.*``), the rest float
        floats = {}
        for key, entry in header.tensors.items():
            owner = next((name for name in classes if key.startswith(f"{name}.layer.")), None)
            (owned[owner] if owner is not None else floats)[key] = entry
        layers = [{"name": name, "class": cls, "output": "float", "bytes": sum(e.nbytes for e in owned[name].values())}
                  for name, cls in classes.items()]
        totals = _totals(layers, header.file_size)
        totals["float_bytes"] = sum(e.nbytes for e in floats.values())
        return {"path": path, "kind": "static per-layer", "layers": layers, "ops": None,
                "checked": "the header; mq.load(path, model=...) checks the rest",
                "float_tensors": {k: dtype_name(e.dtype) for k, e in floats.items()}, "totals": totals}
    return None


def _output(m) -> Optional[str]:
    if not hasattr(m, "out_scale"):
        return None  # a float module or op of the program
    return "int8" if m.out_scale is not None else "float"


def _totals(layers, file_bytes: int) -> Dict[str, int]:
    return {"layers": len(layers), "static_layers": sum(1 for layer in layers if layer["class"].startswith("Static")),
            "bytes": sum(layer["bytes"] for layer in layers), "file_bytes": file_bytes}
