"""describe(): what a .safetensors file holds (layers, dtypes, shapes, bytes), from its header only."""
from __future__ import annotations

import math
import os
from typing import Any, Dict

import torch

from ..orig_dtype import ORIG_DTYPES
from .container import read_header
from .dtypes import dtype_name
from .errors import CheckpointError
from .hf_saved_folder import refuse_saved_pretrained
from .manifest import check_against_header, layer_key, parse_manifest
from .rebuild import float_weight_shape

__all__ = ["describe", "layer_kind"]


def layer_kind(layer: Dict[str, Any], file_kind: str) -> Any:
    """What a manifest layer is, as far as its file knows: its type, except for a 2-D weight of
    a "state_dict" file quantized as a Linear's with nothing to confirm it (the type read off
    the weight's dims, or an older file that does not say): a state_dict cannot tell a Linear's
    weight from an Embedding's, so "Linear or Embedding" rather than a guess."""
    if (file_kind == "state_dict" and layer.get("type") == "Linear" and len(layer["shape"]) == 2
            and layer.get("type_from") != "module"):
        return "Linear or Embedding"
    return layer.get("type")


def _orig_itemsize(orig, name: str, path: str) -> int:
    """Bytes per element of a layer's original float dtype (float32 when the file does not say).
    CheckpointError for a name that is not one a weight can have (a torch dtype such as qint8
    included: torch.empty would refuse it)."""
    if orig is None:
        return 4
    dtype = next((d for d in ORIG_DTYPES if dtype_name(d) == orig), None)
    if dtype is None:
        raise CheckpointError(f"{path}: layer {name!r}: orig_dtype {orig!r} is not one of "
                              f"{[dtype_name(d) for d in ORIG_DTYPES]}")
    return torch.empty((), dtype=dtype).element_size()


def describe(path) -> Dict[str, Any]:
    """A JSON-able description of a safetensors file without reading its data:
    ``layers`` (quantized: name, type, type_from, layer_kind, dtype, scheme, axis,
    group_size, shape, bytes stored, bytes of the original float weight), ``tensors`` (every
    other stored tensor: name, dtype, shape, bytes), ``aliases`` and
    ``totals``.  ``type`` is the float type the weight was quantized as, ``type_from`` what
    says so ("module", "shape": the weight's dims, None: an older file that does not say), and
    ``layer_kind`` what the layer is as far as the file knows (see :func:`layer_kind`).  Raises
    CheckpointError for an invalid file."""
    path = os.fspath(path)
    header = read_header(path)
    manifest = parse_manifest(header.metadata, path)
    if not manifest["format_version"]:
        refuse_saved_pretrained(path, header.tensors, lambda key: header.tensors[key].dtype)
    check_against_header(manifest, header)
    aliases = manifest["tensor_aliases"]
    layer_keys = set()
    layers = []
    for layer in manifest["layers"]:
        keys = [layer_key(layer["name"], local) for local in layer["tensors"]]
        layer_keys.update(keys)
        for alias in layer.get("aliases", []):
            layer_keys.update(layer_key(alias, local) for local in layer["tensors"])
        stored = sum(header.tensors[aliases.get(k, k)].nbytes for k in keys)
        if stored * 2 < math.prod(layer["shape"]):  # (int4, the smallest format: half a byte a weight)
            # a shape no tensor backs: `bench` would allocate it, `inspect` report it
            raise CheckpointError(f"{path}: layer {layer['name']!r}: shape {layer['shape']} is "
                                  f"{math.prod(layer['shape'])} weights, but its tensors hold {stored} bytes")
        orig = layer.get("orig_dtype")
        itemsize = _orig_itemsize(orig, layer["name"], path)
        entry = {
            "name": layer["name"], "aliases": layer.get("aliases", []), "type": layer.get("type"),
            "type_from": "module" if manifest["kind"] == "model" else layer.get("type_from"),
            "layer_kind": layer_kind(layer, manifest["kind"]),
            # axis / group_size may be absent (the manifest reads absent as null), as load does
            "dtype": layer["dtype"], "scheme": layer["scheme"], "axis": layer.get("axis"),
            # the float layer's weight shape (a Conv1d's 3-D one, GPT-2 Conv1D's [in, out]), as compare gives it
            "group_size": layer.get("group_size"), "shape": float_weight_shape(manifest["kind"], layer),
            "orig_dtype": orig,
            "bytes": stored, "orig_bytes": math.prod(layer["shape"]) * itemsize,
        }
        entry.update(_run_settings(layer, path))
        layers.append(entry)
    tensors = [{"name": k, "dtype": dtype_name(e.dtype), "shape": list(e.shape), "bytes": e.nbytes}
               for k, e in header.tensors.items() if k not in layer_keys]
    quantized_bytes = sum(header.tensors[k].nbytes for k in layer_keys if k in header.tensors)
    float_bytes = sum(t["bytes"] for t in tensors)
    return {
        "path": path,
        "format_version": manifest["format_version"],
        "mono_quant_version": manifest.get("mono_quant_version"),
        "kind": manifest["kind"],
        "config": manifest.get("config"),
        "layers": layers,
        "tensors": tensors,
        "aliases": aliases,
        "skipped": manifest.get("skipped", []),
        "totals": {
            "stored_tensors": len(header.tensors),
            "quantized_layers": len(layers),
            "quantized_bytes": quantized_bytes,
            "float_bytes": float_bytes,
            "bytes": quantized_bytes + float_bytes,
            "file_bytes": header.file_size,
            "orig_bytes": sum(l["orig_bytes"] for l in layers) + float_bytes,
        },
    }


def _run_settings(layer: dict, path) -> dict:
    """A model file's per-layer ``activations`` / ``reduce_range`` (its attrs: what load restores and
    bench must time; a mixed-precision model's layers differ), checked; {} where the file has none."""
    attrs = layer.get("attrs")
    if not isinstance(attrs, dict):
        return {}
    out = {}
    if "activations" in attrs:
        if attrs["activations"] not in (None, "dynamic"):
            raise CheckpointError(f"{path}: layer {layer['name']!r}: activations {attrs['activations']!r} "
                                  f"(None or 'dynamic')")
        out["activations"] = attrs["activations"]
    if "reduce_range" in attrs:
        if not isinstance(attrs["reduce_range"], bool):
            raise CheckpointError(f"{path}: layer {layer['name']!r}: reduce_range {attrs['reduce_range']!r}")
        out["reduce_range"] = attrs["reduce_range"]
    return out
