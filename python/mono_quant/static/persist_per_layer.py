"""Save / load of per-layer static int8 models (the fallback for models fx cannot trace).

Such a model is the user's own architecture with each Conv2d / Conv1d / Linear replaced by a
``PerLayerStatic`` (fallback.py), so unlike a StaticGraphModel it cannot be rebuilt
from the file alone: loading takes ``model=``, an instance of the float architecture
(possibly on the meta device; it is not modified), as ``mq.load`` does for other
quantized models.  The file: the model's whole state_dict (float parameters and
buffers, the static layers' int8 weights and scales) plus a JSON manifest (metadata key
``mono_quant.static_per_layer``) naming each static layer with its class and
constructor arguments.  Loading never unpickles, builds only StaticConv2d / StaticConv1d / StaticLinear,
checks each against the float layer it replaces (geometry) and every tensor (dtype,
shape) against its layer; the loaded model gives bit-identical outputs.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Dict

import torch
from torch import nn

from safetensors import safe_open

from ..errors import CheckpointError
from ..io.aligned import aligned
from ..io.atomic import atomic_output
from ..io.save import state_by_module_name, write_safetensors
from ..io.file_kinds import FileKind, has_metadata_key, register_file_kind
from ..io.skeleton import materialize_non_persistent_buffers
from ..io.untrusted_json import loads_bounded
from ..parametrized import parametrized_base
from .fallback import PerLayerStatic
from .graph import StaticGraphModel
from .convert import LAYER_CLASSES
from .persist import build_layer, encode_value
from .persist_skeleton import STATIC_GEOMETRY, geometry_problem
from .qparams_state import EXTRA_STATE, check_whole_load

__all__ = ["save_per_layer", "load_per_layer", "is_per_layer_model", "is_per_layer_file", "PER_LAYER_FORMAT",
           "PER_LAYER_META_KEY"]

PER_LAYER_FORMAT = "mono_quant.static_per_layer/1"
PER_LAYER_META_KEY = "mono_quant.static_per_layer"


def is_per_layer_model(model) -> bool:
    """Whether ``model`` holds per-layer static layers (the fallback's output)."""
    return isinstance(model, nn.Module) and any(isinstance(m, PerLayerStatic) for m in model.modules())


def is_per_layer_file(path) -> bool:
    """Whether ``path`` is a safetensors file written by save_per_layer (False on any read error)."""
    return has_metadata_key(path, PER_LAYER_META_KEY)


def save_per_layer(model: nn.Module, path, overwrite: bool = True) -> Path:
    """Write a per-layer static model to ``path``; returns the path."""
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, PerLayerStatic):
            inner = m.layer
            if type(inner) not in LAYER_CLASSES.values():
                raise TypeError(f"cannot save: {name!r} wraps a {type(inner).__name__}")
            layers[name] = {"class": type(inner).__name__, "init_kwargs": encode_value(inner.init_kwargs())}
    if not layers:
        raise TypeError("save_per_layer: the model has no per-layer static layers")
    # clone: safetensors refuses tensors sharing memory (tied weights are stored twice, tied again by the skeleton)
    constants = {f"{name}.layer.{EXTRA_STATE}" for name in layers}  # (the manifest holds them)
    # by module name, without the user's state_dict hooks (a hook renaming keys made an unloadable file)
    tensors = {k: v.detach().contiguous().clone() for k, v in state_by_module_name(model).items()
               if k not in constants}
    manifest = {"format": PER_LAYER_FORMAT, "layers": layers}
    path = Path(os.fspath(path))
    with atomic_output(path, overwrite) as tmp:
        write_safetensors(tensors, tmp, {PER_LAYER_META_KEY: json.dumps(manifest)}, path)
    return path


def load_per_layer(path, model: nn.Module) -> nn.Module:
    """Read a file written by save_per_layer into a copy of ``model`` (the float architecture)."""
    path = os.fspath(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{path} holds a per-layer static int8 model (of an architecture torch.fx could not "
                        "trace): pass model=, an instance of the float architecture (the meta device will do)")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors: Dict[str, torch.Tensor] = {k: aligned(f.get_tensor(k)) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        manifest = loads_bounded(meta[PER_LAYER_META_KEY])
        if not isinstance(manifest, dict) or manifest.get("format") != PER_LAYER_FORMAT:
            raise CheckpointError(f"format {manifest.get('format') if isinstance(manifest, dict) else None!r}; "
                                  f"this version reads {PER_LAYER_FORMAT!r}")
        work = copy.deepcopy(model)
        owned = set()
        for name, entry in manifest["layers"].items():
            name = str(name)
            if not isinstance(entry, dict) or entry.get("class") not in STATIC_GEOMETRY:
                raise CheckpointError(f"layer {name!r}: class must be one of {sorted(STATIC_GEOMETRY)}")
            float_cls = STATIC_GEOMETRY[entry["class"]][0]
            try:
                old = work.get_submodule(name) if name else None
            except AttributeError:
                old = None
            if (parametrized_base(old) or type(old)) is not float_cls:  # (quantized as its plain layer)
                raise CheckpointError(f"layer {name!r}: the model has {type(old).__name__ if old is not None else 'none'}"
                                      f" there, the file a static {float_cls.__name__}; pass model= the architecture "
                                      f"the file was saved from (a float {float_cls.__name__} at {name!r})")
            prefix = f"{name}.layer."
            own = {f"layers.{name}.{k[len(prefix):]}": v for k, v in tensors.items() if k.startswith(prefix)}
            layer = build_layer(name, entry, own)
            if layer.int8_input or layer.out_scale is not None:
                raise CheckpointError(f"layer {name!r}: a per-layer static layer takes and returns float")
            problem = geometry_problem(layer, old)
            if problem:
                raise CheckpointError(f"layer {name!r}: {problem}")
            parent, _, child = name.rpartition(".")
            setattr(work.get_submodule(parent) if parent else work, child, PerLayerStatic(layer, name))
            owned |= {k for k in tensors if k.startswith(prefix)}
        rest = {k: v for k, v in tensors.items() if k not in owned}
        _refuse_float_for_quantized(work, rest)
        own_state = state_by_module_name(work)  # (the names save wrote: no state_dict hooks)
        expected = {k for k in own_state if not any(k.startswith(f"{n}.layer.") for n in manifest["layers"])}
        if set(rest) != expected:
            raise CheckpointError(f"tensors disagree with the model: missing {sorted(expected - set(rest))}, "
                                  f"unexpected {sorted(set(rest) - expected)}; pass model= an instance of the "
                                  f"architecture the file was saved from")
        for k, v in rest.items():
            if v.dtype != own_state[k].dtype or v.shape != own_state[k].shape:
                raise CheckpointError(f"{k}: {v.dtype}{list(v.shape)} in the file, "
                                      f"{own_state[k].dtype}{list(own_state[k].shape)} in the model")
        work.load_state_dict(rest, strict=False, assign=True)
        materialize_non_persistent_buffers(work, model)  # a meta skeleton's non-persistent buffers
        check_whole_load(work)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid per-layer static manifest: {type(exc).__name__}: {exc}") from exc
    return work.eval()


def _refuse_float_for_quantized(work: nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    """CheckpointError when layers the file holds quantized (an earlier quantize() call's, kept by
    static int8: mixed precision) are float layers in ``model``: the float model was passed where
    the partly quantized one is needed (the bare comparison said only that tensors disagree)."""
    found = {}
    for name, m in work.named_modules():
        weight = m._parameters.get("weight") if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) \
            else None
        if weight is None:
            continue
        prefix = f"{name}." if name else ""
        stored = tensors.get(prefix + "weight")
        if prefix + "weight_scale" in tensors and stored is None:  # an integer format: codes and scales
            found[name] = sorted(k[len(prefix):] for k in tensors if k.startswith(prefix + "weight_"))
        elif stored is not None and stored.dtype in (torch.float16, torch.bfloat16) and weight.dtype != stored.dtype:
            found[name] = [f"weight ({str(stored.dtype).replace('torch.', '')})"]  # fp16 / bf16
    if found:
        names = sorted(found)
        shown = "; ".join(f"{n!r}: {', '.join(found[n])}" for n in names)
        raise CheckpointError(
            f"layers {names} are quantized in the file ({shown}) but float in the model: the file was saved from "
            f"a model an earlier quantize() call partly quantized (mixed precision), which static int8 kept; pass "
            f"model= that partly quantized model, or a copy of the float model quantized again as it was then "
            f"(e.g. mq.quantize(model, dtype, include={names}).model with the same options)")


def _writes(obj) -> bool:
    model = getattr(obj, "model", obj)
    return not isinstance(model, StaticGraphModel) and is_per_layer_model(model)


# mono_quant.save / mono_quant.load hand per-layer static models and their files over to this module
register_file_kind(FileKind("per-layer static int8 model", _writes,
                            lambda obj, path, overwrite: save_per_layer(getattr(obj, "model", obj), path, overwrite),
                            is_per_layer_file, load_per_layer))
