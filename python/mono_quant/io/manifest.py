"""The JSON manifest stored in the safetensors metadata: format version,
schema, validation, and the layer entries save() and quantize_checkpoint() write.

Layout (``__metadata__["mono_quant"]``, a JSON string)::

    {"format": "mono-quant", "format_version": 1, "mono_quant_version": "0.1.0",
     "kind": "model" | "state_dict",
     "layers": [{"name": "fc1", "type": "Linear", "dtype": "int8",
                 "scheme": "symmetric" | "asymmetric" | "cast", "axis": 0, "group_size": null,
                 "shape": [out, in], "orig_dtype": "float32",
                 "tensors": {"weight_qdata": {"dtype": "int8", "shape": [out, in]}, ...},
                 # kind "state_dict" only (absent in older files: not known)
                 "type_from": "module" | "shape",
                 # kind "model" only: how to rebuild the module
                 "class": "QuantizedLinear", "init_kwargs": {...}, "attrs": {...}, "aliases": ["fc1_again"]}],
     "tensor_aliases": {"lm_head.weight": "embed.weight"},
     "config": {...} | null, "skipped": [[name, type, reason], ...],
     # kind "model", where the model has quantized LSTM / GRU / RNN / MultiheadAttention modules
     # (absent otherwise, and in older files): their paths, for the float names of their children
     "composites": {"encoder.lstm": "LSTM"}}

A layer's tensors are stored under ``name + "." + local name``.  Kind
"model" files come from ``save(quantized_model)`` and rebuild each module with
``cls.from_saved(init_kwargs, attrs, tensors)``; kind "state_dict" files come
from ``quantize(state_dict)`` / ``quantize_checkpoint()`` and are built into a
model from its float skeleton, as ``quantize(state_dict, model=...)`` does.
``tensor_aliases`` lists names whose tensor is stored once under another name
(tied weights, modules shared under several names).  Each layer's format is
its own "dtype" (a mixed-precision model has several), checked at load against
its class's ``init_kwargs`` / ``attrs`` and tensors; "config" only records the
options of the quantize() call that made the result (with mixed precision, the
last one), and nothing is rebuilt from its dtype.  A safetensors file
without a manifest reads as format version 0: a plain float state_dict.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Type

import torch

from ..modules.composite import is_composite
from ..modules.registry import QMODULES, QMODULES_BY_NAME
from ..version import __version__
from .container import SafetensorsHeader
from .dtypes import dtype_name
from .composite_names import check_composites
from .errors import CheckpointError
from .untrusted_json import UntrustedJSONError, loads_bounded

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "METADATA_KEY", "TYPE_FROM", "layer_key", "parse_manifest", "dump_manifest",
           "check_layer_list", "check_against_header", "quantized_class", "new_manifest", "tensor_spec"]

FORMAT_NAME = "mono-quant"
FORMAT_VERSION = 1
METADATA_KEY = "mono_quant"
_KINDS = ("model", "state_dict")
_SCHEMES = ("symmetric", "asymmetric", "cast")
#: where a state_dict layer's "type" came from: its module (an HF skeleton), or the weight's
#: dims alone (2-D: "Linear", 4-D: "Conv2d"), which cannot tell a Linear from an Embedding
TYPE_FROM = ("module", "shape")


def layer_key(name: str, local: str) -> str:
    """Full state_dict key of a layer's tensor (the root module has name "")."""
    return f"{name}.{local}" if name else local


def tensor_spec(t: torch.Tensor) -> Dict[str, Any]:
    return {"dtype": dtype_name(t.dtype), "shape": list(t.shape)}


def new_manifest(kind: str, config=None, skipped=()) -> Dict[str, Any]:
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "mono_quant_version": __version__,
        "kind": kind, "layers": [], "tensor_aliases": {},
        "config": None if config is None else config.to_dict(),
        "skipped": [list(s) for s in skipped],
    }


def dump_manifest(manifest: Mapping[str, Any]) -> Dict[str, str]:
    """The safetensors ``__metadata__`` (str -> str) holding the manifest.
    Raises TypeError naming the value when something isn't JSON-able."""
    try:
        text = json.dumps(manifest, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot store the manifest as JSON: {exc}") from None
    return {"format": "pt", METADATA_KEY: text}


def quantized_class(name: str) -> Type:
    """The registered quantized module class called ``name`` (never an arbitrary import)."""
    # a composite (LSTM, attention) is saved as its children's layers, never as a layer itself
    by_name = {cls.__name__: cls for cls in [*QMODULES.values(), *QMODULES_BY_NAME.values()] if not is_composite(cls)}
    if name not in by_name:
        raise CheckpointError(f"unknown quantized module class {name!r} (this mono-quant knows "
                              f"{', '.join(sorted(by_name))}; written by a newer version?)")
    return by_name[name]


# ---- validation -------------------------------------------------------------------------------


def parse_manifest(metadata: Optional[Mapping[str, str]], path: str = "") -> Dict[str, Any]:
    """The validated manifest of a file's metadata.  A file without one gives
    an empty "state_dict" manifest of format version 0.  Raises
    :class:`CheckpointError` for invalid JSON, a wrong schema, or a newer
    format version."""
    where = f"{path}: " if path else ""
    if not metadata or METADATA_KEY not in metadata:
        return {"format": FORMAT_NAME, "format_version": 0, "mono_quant_version": None, "kind": "state_dict",
                "layers": [], "tensor_aliases": {}, "config": None, "skipped": []}
    try:
        m = loads_bounded(metadata[METADATA_KEY])
    except UntrustedJSONError as exc:
        raise CheckpointError(f"{where}corrupted manifest ({exc})") from None
    _require(isinstance(m, dict), where, "the manifest is not a JSON object")
    _require(m.get("format") == FORMAT_NAME, where, f"manifest format is {m.get('format')!r}, not {FORMAT_NAME!r}")
    version = m.get("format_version")
    _require(isinstance(version, int) and not isinstance(version, bool) and version >= 1, where,
             f"bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}written by mono-quant {m.get('mono_quant_version', '?')} in format version {version}; "
            f"this mono-quant reads format versions up to {FORMAT_VERSION}: upgrade mono-quant to load it")
    m.setdefault("tensor_aliases", {})
    m.setdefault("config", None)
    m.setdefault("skipped", [])
    _require(m.get("kind") in _KINDS, where, f"kind must be one of {_KINDS}, got {m.get('kind')!r}")
    _require(m.get("mono_quant_version") is None or isinstance(m["mono_quant_version"], str), where,
             "mono_quant_version must be a string")
    _require(m["config"] is None or isinstance(m["config"], dict), where, "config must be an object or null")
    _require(isinstance(m["skipped"], list) and all(isinstance(s, list) and len(s) == 3
                                                      and all(isinstance(v, str) for v in s) for s in m["skipped"]),
             where, "skipped must be a list of [name, type, reason]")
    aliases = m["tensor_aliases"]
    _require(isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()),
             where, "tensor_aliases must map names to names")
    check_layer_list(m.get("layers"), m["kind"], where)
    if "composites" in m:
        check_composites(m["composites"], where)
    return m


def check_layer_list(layers, kind: str, where: str = "", what: str = "bad manifest") -> None:
    """Raise :class:`CheckpointError` (prefixed ``where``, then ``what``) unless ``layers`` is a
    list of layer entries of manifest kind ``kind``, each with every field of the right type
    and no name listed twice.  Also what a Hugging Face ``quantization_config.layers`` must be."""
    _require(isinstance(layers, list), where, "layers must be a list", what)
    names = set()
    for i, layer in enumerate(layers):
        _check_layer(layer, kind, f"{where}layer #{i}: ", what)
        for name in [layer["name"]] + layer.get("aliases", []):
            _require(name not in names, where, f"layer {name!r} is listed twice", what)
            names.add(name)


def _require(ok: bool, where: str, message: str, what: str = "bad manifest") -> None:
    if not ok:
        raise CheckpointError(f"{where}{what}: {message}")


def _is_shape(value) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def _check_layer(layer, kind: str, where: str, what: str = "bad manifest") -> None:
    _require(isinstance(layer, dict), where, "is not an object", what)
    where = f"{where[:-2]} ({layer.get('name')!r}): "
    _require(isinstance(layer.get("name"), str), where, "name must be a string", what)
    _require(isinstance(layer.get("dtype"), str), where, f"dtype must be a string, got {layer.get('dtype')!r}", what)
    _require(layer.get("scheme") in _SCHEMES, where, f"scheme must be one of {_SCHEMES}", what)
    _require(layer.get("axis") is None or isinstance(layer.get("axis"), int), where, "axis must be an int or null",
             what)
    _require(layer.get("group_size") is None or isinstance(layer.get("group_size"), int), where,
             "group_size must be an int or null", what)
    _require(_is_shape(layer.get("shape")), where, "shape must be a list of non-negative ints", what)
    _require(layer.get("orig_dtype") is None or isinstance(layer.get("orig_dtype"), str), where,
             "orig_dtype must be a string or null", what)
    _require(layer.get("type_from") in (None, *TYPE_FROM), where, f"type_from must be one of {TYPE_FROM} or null",
             what)
    tensors = layer.get("tensors")
    _require(isinstance(tensors, dict) and tensors, where, "tensors must be a non-empty object", what)
    for local, spec in tensors.items():
        _require(isinstance(local, str) and local and "." not in local, where, f"bad tensor name {local!r}", what)
        _require(isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and _is_shape(spec.get("shape")),
                 where, f"tensor {local!r} needs a dtype (a string) and a shape (a list of ints >= 0), got {spec!r}",
                 what)
    aliases = layer.setdefault("aliases", [])  # (every kind: the loaders add them to a list of names)
    _require(isinstance(aliases, list) and all(isinstance(a, str) for a in aliases), where,
             "aliases must be a list of names", what)
    _KIND_FIELDS[kind](layer, where, what)


def _check_saved_module_fields(layer, where: str, what: str = "bad manifest") -> None:
    """A kind "model" layer also says how to rebuild its module, and may have aliases."""
    _require(isinstance(layer.get("class"), str), where, "class must be a string", what)
    _require(isinstance(layer.get("init_kwargs"), dict), where, "init_kwargs must be an object", what)
    _require(isinstance(layer.get("attrs"), dict), where, "attrs must be an object", what)


# manifest kind -> the checks of the fields only its layers have
_KIND_FIELDS = {"model": _check_saved_module_fields, "state_dict": lambda layer, where, what: None}


def check_against_header(manifest: Mapping[str, Any], header: SafetensorsHeader) -> None:
    """Raise :class:`CheckpointError` when the manifest and the tensors in the
    file disagree: a layer tensor missing or with another dtype/shape, an
    alias to a missing tensor, an alias shadowing a stored tensor, or a tensor
    under the name of the float weight (or a saved layer's bias) a layer stands for."""
    stored = header.tensors
    problems: List[str] = []
    for alias, target in manifest["tensor_aliases"].items():
        if alias in stored:
            problems.append(f"{alias!r} is both stored and an alias")
        if target not in stored:
            problems.append(f"alias {alias!r} points to missing tensor {target!r}")
    for layer in manifest["layers"]:
        for name in [layer["name"]] + layer.get("aliases", []):
            for local, spec in layer["tensors"].items():
                key = layer_key(name, local)
                target = manifest["tensor_aliases"].get(key, key)
                entry = stored.get(target)
                if entry is None:
                    problems.append(f"layer tensor {key!r} is missing")
                elif dtype_name(entry.dtype) != spec["dtype"] or list(entry.shape) != spec["shape"]:
                    problems.append(f"{key!r} is {dtype_name(entry.dtype)}{list(entry.shape)} in the file, "
                                    f"{spec['dtype']}{spec['shape']} in the manifest")
            # the float tensors the layer stands for (a saved model's bias is its own; a state_dict's is
            # an entry of its own): another tensor of that name would be read instead, or beside it
            for local in ("weight", "bias") if manifest["kind"] == "model" else ("weight",):
                key = layer_key(name, local)
                if local not in layer["tensors"] and (key in stored or key in manifest["tensor_aliases"]):
                    problems.append(f"{key!r} is stored beside quantized layer {name!r}, which stands for it")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise CheckpointError(f"{header.path}: the manifest disagrees with the tensors: "
                              f"{'; '.join(problems[:10])}{more}")
