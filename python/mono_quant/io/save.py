"""save(): one .safetensors file with every tensor and the manifest."""
from __future__ import annotations

import copy
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Tuple

import torch
import safetensors.torch
from safetensors import SafetensorError
from torch import nn

from ..compiled_models import uncompiled
from ..report import storage_view
from ..result import QuantizationResult
from ..strictness import QUANTIZED_SUFFIXES
from .atomic import atomic_output
from .composite_names import composite_entries
from .layers import guess_orig_dtype, quantized_layer_entries, state_dict_layer_entry
from .manifest import dump_manifest, new_manifest
from .file_kinds import kind_for_object

__all__ = ["save", "dedupe_tensors", "write_safetensors", "state_by_module_name"]


def save(model_or_result, path, *, overwrite: bool = False) -> Path:
    """Save a quantized model, a QuantizationResult or a state_dict to one ``.safetensors`` file.

    Every tensor is stored at its real size (int8 data, scales, zero-points,
    float parameters, persistent buffers); tensors shared by several names
    (tied weights, shared modules) are stored once.  The manifest in the
    metadata describes every quantized layer (see ``mono_quant.io.manifest``).
    The write is atomic.

    Args:
        model_or_result: A quantized model, a :class:`~mono_quant.QuantizationResult`
            of ``quantize()`` (of a model or of a state_dict), or a plain state_dict.
        path: The file to write (str, bytes or path-like).
        overwrite: Replace an existing ``path``.

    Returns:
        The path written.

    Raises:
        TypeError: Another input, a non-tensor state entry, or the result of
            ``quantize_checkpoint`` (already in its file).
        ValueError: A tensor is on the ``meta`` device.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        OSError: The write failed, e.g. a full disk or a read-only folder (the message
            names ``path``; nothing is left behind).

    Examples:
        >>> result = mq.quantize(model, dtype="int8")
        >>> mq.save(result, "model-int8.safetensors")
    """
    path = os.fsdecode(path)  # a bytes path too, as open() takes (and the file kinds below get a str)
    model_or_result = uncompiled(model_or_result)  # torch.compile's wrapper: the model it wraps
    if isinstance(model_or_result, QuantizationResult):
        inner = uncompiled(model_or_result.model)
        if inner is not model_or_result.model:
            model_or_result = copy.copy(model_or_result)
            model_or_result.model = inner
    other = kind_for_object(model_or_result)  # e.g. a static int8 model (static/persist.py)
    if other is not None:
        return other.save(model_or_result, path, overwrite)
    if isinstance(model_or_result, QuantizationResult):
        result = model_or_result
        if result.model is not None:
            manifest, tensors = _model_payload(result.model, result.config, result.skipped)
        else:
            manifest, tensors = _state_dict_payload(result.state_dict(), result)
    elif isinstance(model_or_result, nn.Module):
        manifest, tensors = _model_payload(model_or_result, None, ())
    elif isinstance(model_or_result, Mapping):
        _refuse_quantized_modules_state_dict(model_or_result)
        manifest, tensors = new_manifest("state_dict"), _check_tensors(model_or_result)
    else:
        raise TypeError(f"save() takes a quantized model, a QuantizationResult or a state_dict, "
                        f"got {type(model_or_result).__name__}")
    unique, aliases = dedupe_tensors(tensors)
    manifest["tensor_aliases"] = aliases
    metadata = dump_manifest(manifest)

    path = Path(path)
    with atomic_output(path, overwrite) as tmp:
        write_safetensors(unique, tmp, metadata, path)
    return path


def write_safetensors(tensors: Mapping[str, torch.Tensor], tmp: Path, metadata, dst: Path) -> None:
    """``safetensors.torch.save_file(tensors, tmp)`` inside ``atomic_output(dst)``, its write errors
    (a SafetensorError, an Exception only) raised as the OSError save() documents: with the errno
    the message gives ("No space left on device (os error 28)") and no file name, so that
    atomic_output names ``dst`` (not a temporary path of ours or of the package)."""
    try:
        safetensors.torch.save_file(tensors, os.fspath(tmp), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"\(os error (\d+)\)", str(exc))
        if code is None:
            raise OSError(f"cannot write {dst}: {exc}") from exc
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from exc


def _refuse_quantized_modules_state_dict(sd: Mapping) -> None:
    """TypeError for ``qmodel.state_dict()`` / ``result.state_dict()`` of a quantized model: its
    buffers without their modules' description made a file no skeleton could load ("missing keys
    ['0.weight']; unexpected keys ['0.weight_scale', ...]")."""
    for key in sd:
        prefix, _, suffix = key.rpartition(".") if isinstance(key, str) else ("", "", "")
        if suffix in QUANTIZED_SUFFIXES and (f"{prefix}.weight_zero_point" if prefix else "weight_zero_point") in sd:
            raise TypeError(f"save() got the state_dict of a quantized model (entry {key!r}): a file describes "
                            f"quantized layers with their modules, so pass the quantized model or the "
                            f"QuantizationResult itself (mq.save(qmodel, path)), not its state_dict()")


def _check_tensors(sd: Mapping) -> Dict[str, torch.Tensor]:
    out = OrderedDict()
    for key, value in sd.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be str, got {type(key).__name__} ({key!r})")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"cannot save {key!r}: a {type(value).__name__}, not a tensor "
                            f"(safetensors stores tensors only)")
        if value.device.type == "meta":
            raise ValueError(f"cannot save {key!r}: it is on the meta device (no data)")
        out[key] = value.detach()
    return out


def _model_payload(model: nn.Module, config, skipped) -> Tuple[dict, Dict[str, torch.Tensor]]:
    manifest = new_manifest("model", config, skipped)
    manifest["layers"].extend(quantized_layer_entries(model))
    composites = composite_entries(model)
    if composites:  # (absent when none: files without it read as before)
        manifest["composites"] = composites
    return manifest, _check_tensors(state_by_module_name(model))


def state_by_module_name(model: nn.Module, prefix: str = "", out=None) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` without the model's state_dict (pre-)hooks: each module's parameters,
    persistent buffers and extra state under its module path, as the manifest names the layers and
    load(model=skeleton) looks them up.  A user's hook that renames, adds or drops keys (legacy names)
    made a file whose tensors disagreed with its manifest: saved, then refused by every load."""
    out = OrderedDict() if out is None else out
    model._save_to_state_dict(out, prefix, False)  # (what state_dict() runs between the hooks)
    for name, child in model._modules.items():
        if child is not None:
            state_by_module_name(child, f"{prefix}{name}.", out)
    return out


def _state_dict_payload(sd: Mapping[str, torch.Tensor], result) -> Tuple[dict, Dict[str, torch.Tensor]]:
    manifest = new_manifest("state_dict", result.config, result.skipped)
    for layer in result.report.layers:
        prefix = f"{layer.name}." if layer.name else ""
        own = {k[len(prefix):]: v for k, v in sd.items()
               if k.startswith(prefix) and "." not in k[len(prefix):] and k[len(prefix):].startswith("weight")}
        manifest["layers"].append(state_dict_layer_entry(layer, result.config, own, guess_orig_dtype(layer)))
    return manifest, _check_tensors(sd)


def dedupe_tensors(tensors: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Split a state_dict into tensors to store and aliases (name -> stored name).

    Names holding the very same view of one storage (tied weights, modules
    shared under several names) become aliases of the first name.  Other
    tensors overlapping a storage already kept are cloned (safetensors refuses
    shared memory); non-contiguous or off-CPU tensors are made contiguous CPU
    copies.  Values are never changed.
    """
    unique: Dict[str, torch.Tensor] = OrderedDict()
    aliases: Dict[str, str] = {}
    views: Dict[tuple, str] = {}
    storages = set()
    for name, t in tensors.items():
        storage, view = storage_view(t)
        if view in views and t.numel():
            aliases[name] = views[view]
            continue
        if storage in storages and t.numel():
            stored = t.clone(memory_format=torch.contiguous_format)
        else:
            stored = t.contiguous()
        if stored.device.type != "cpu":
            stored = stored.cpu()
        unique[name] = stored
        views.setdefault(view, name)
        storages.add(storage)
    return unique, aliases
