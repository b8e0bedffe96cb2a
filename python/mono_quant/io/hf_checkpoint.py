"""quantize_checkpoint() of a Hugging Face model folder: quantize what
``quantize(model)`` would, so the output loads back into the HF class.

Without a model a 2-D ``*.weight`` could be an embedding table or a GPT-2
``Conv1D`` (weight ``[in, out]``) as well as a Linear's.  When ``src`` is a
folder whose ``config.json`` names an architecture of the installed
``transformers``, that architecture is built on the meta device (no weights)
and gives each weight its treatment:

(``src`` may also be a file of such a folder: its shards' index, or ``model.safetensors``.)

- kept float, with the reason: embedding tables (quantize the model with
  ``embeddings=True`` for those), layers mono-quant does not replace, and a
  Linear whose weight is tied to a layer kept float (GPT-2's ``lm_head``);
- transposed: a GPT-2 ``Conv1D`` weight is quantized as ``[out, in]`` (scales per
  output feature, as ``quantize(model)`` does) and recorded as a "Conv1D" layer,
  which ``load(dst, model=skeleton)`` rebuilds as QuantizedGPT2Conv1D;
- reshaped: an nn.Conv1d weight ``[out, in/groups, k]`` is quantized as its height-1
  Conv2d view ``[out, in/groups, 1, k]`` (as ``quantize(model)`` does) and recorded as a
  "Conv1d" layer, which ``load(dst, model=skeleton)`` rebuilds as QuantizedConv1d.

Tied weights the folder stores once (transformers drops ``lm_head.weight`` when
it is tied) stay tied: load() maps the model's tied names to the one tensor.

The folder's names need not be the model's: transformers renames checkpoint keys on load
for many architectures (ViT's ``encoder.layer.0.attention.attention.query`` is the model's
``layers.0.attention.q_proj``; a GPT-2 folder may lack ``transformer.``).  The plan carries
``key_map`` (:func:`~mono_quant.integrations.hf_keys.model_key_map`, transformers' own
mapping), by which quantize_checkpoint reads the folder under the model's names: its globs,
its plan and its output are the model's, which ``load(dst, model=skeleton)`` finds.
"""
from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..entries import nonfinite_entry_error, nonfinite_skip_reason, state_dict_entry_plan
from ..errors import NonFiniteWeightError
from ..modules import QuantizedConv1d, QuantizedConv2d, QuantizedGPT2Conv1D, QuantizedLinear, qmodule_for
from ..modules.conv1d import conv2d_weight_of
from ..report import SkippedLayer, tensor_bytes

__all__ = ["HfCheckpointPlan", "hf_checkpoint_plan", "write_hf_entry", "add_tied_aliases", "mark_module_types"]

log = logging.getLogger("mono_quant")


@dataclass
class HfCheckpointPlan:
    """``keep_float``: key -> (module type, reason); ``transposed``: key -> module type
    of weights stored ``[in, out]``; ``conv1d``: key -> module type of nn.Conv1d weights
    (quantized as their height-1 Conv2d view); ``tied``: key -> the first key it shares its tensor with;
    ``module_types``: key -> the type of the module holding every 2-D / 4-D weight of the model;
    ``key_map``: the folder's key -> (the model's name of it, the pattern of the transformers
    WeightConverter that takes it on load, or None), for the keys given to hf_checkpoint_plan;
    ``tied_tensors``: key -> the first key of the same parameter, for the tied parameters that are
    no layer's weight (BertForMaskedLM's ``cls.predictions.decoder.bias`` is ``cls.predictions.bias``);
    ``ignored``: the folder's keys the model has no tensor for and tells transformers to ignore on load
    (``_keys_to_ignore_on_load_unexpected``: the Hub's GPT-2 stores its attention masks ``h.0.attn.bias``).
    The other fields' keys are the model's names."""

    keep_float: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    transposed: Dict[str, str] = field(default_factory=dict)
    conv1d: Dict[str, str] = field(default_factory=dict)
    tied: Dict[str, str] = field(default_factory=dict)
    module_types: Dict[str, str] = field(default_factory=dict)
    key_map: Dict[str, Tuple[str, Optional[str]]] = field(default_factory=dict)
    tied_tensors: Dict[str, str] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)

    def renamed(self) -> Dict[str, str]:
        """{the folder's key: the model's name} of the keys the model names otherwise."""
        return {key: new for key, (new, _) in self.key_map.items() if new != key}

    def converted(self) -> Dict[str, str]:
        """{the folder's key: the WeightConverter's pattern} of the keys transformers converts on load."""
        return {key: pattern for key, (_, pattern) in self.key_map.items() if pattern is not None}


def hf_checkpoint_plan(src, keys: Iterable[str] = ()) -> HfCheckpointPlan:
    """The plan for the HF folder ``src`` whose tensors are ``keys``; an empty plan when
    ``src`` is not one, or transformers is not installed or cannot build its architecture.
    The model is built once (its config.json read once), on the meta device."""
    plan = HfCheckpointPlan()
    model = _meta_model(Path(src))
    if model is None:
        return plan
    from ..integrations.hf_keys import model_key_map

    keys = list(keys)
    try:
        plan.key_map = model_key_map(model, keys)
    except Exception as exc:  # (transformers' mapping code failing on this model): the names as stored
        log.warning("%s: cannot map the checkpoint's names to the model's (%s); reading them as stored", src, exc)
    # as from_pretrained: a key the model has no tensor for, matching one of these patterns, is dropped
    model_keys = set(model.state_dict())
    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    for key in keys:
        name = plan.key_map.get(key, (key, None))[0]
        if name not in model_keys and any(p.search(name) for p in ignore):
            plan.ignored.append(key)
    owners: Dict[int, Tuple[str, nn.Module]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        weight = m._parameters.get("weight")
        qcls = qmodule_for(m)
        if weight is None or weight.dim() not in ((2, 3, 4) if qcls is QuantizedConv1d else (2, 4)):
            continue
        key = f"{name}.weight" if name else "weight"
        plan.module_types[key] = type(m).__name__
        first = owners.setdefault(id(weight), (key, m))
        if first[0] != key:
            plan.tied[key] = first[0]
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            plan.keep_float[key] = (type(m).__name__, "embedding tables are quantized only with embeddings=True "
                                                      "(quantize the model for that)")
        elif qcls is None:
            plan.keep_float[key] = (type(m).__name__, f"{type(m).__name__} is not a layer mono-quant replaces")
        elif qcls is QuantizedGPT2Conv1D:
            plan.transposed[key] = type(m).__name__
        elif qcls is QuantizedConv1d:
            plan.conv1d[key] = type(m).__name__
        elif qcls not in (QuantizedLinear, QuantizedConv2d):
            plan.keep_float[key] = (type(m).__name__, f"{type(m).__name__} is quantized by quantize(model) only")
    firsts: Dict[int, str] = {}
    for key, parameter in model.named_parameters(remove_duplicate=False):
        first = firsts.setdefault(id(parameter), key)
        if first != key and key not in plan.tied:
            plan.tied_tensors[key] = first
    for key, first in plan.tied.items():  # a layer tied to one kept float stays float (never a larger model)
        if first in plan.keep_float and key not in plan.keep_float:
            plan.keep_float[key] = (plan.transposed.get(key, "Linear"),
                                    f"weight tied to {first[:-len('.weight')]!r}, which stays float")
        if key in plan.keep_float and first not in plan.keep_float:
            plan.keep_float[first] = (plan.transposed.get(first, "Linear"),
                                      f"weight tied to {key[:-len('.weight')]!r}, which stays float")
    return plan


def mark_module_types(plan: HfCheckpointPlan, manifest: dict) -> None:
    """Record ``"type_from": "module"`` on the manifest's layers whose type (read off the weight's
    dims, or set by write_hf_entry) the model confirms: ``mono-quant inspect`` then names them
    as they are, where a bare 2-D weight could be a Linear's or an Embedding's."""
    for layer in manifest["layers"]:
        key = f"{layer['name']}.weight" if layer["name"] else "weight"
        if plan.module_types.get(key) == layer["type"]:
            layer["type_from"] = "module"


def write_hf_entry(plan: HfCheckpointPlan, write_entry, key: str, tensor: torch.Tensor, cfg, writer, reader, src,
                   report, manifest: dict, measure_error: bool) -> bool:
    """Write ``key`` as the plan says; False when the plan has nothing to say and the
    caller's ``write_entry`` (checkpoint._write_entry, also used here on the transposed
    copy, never streamed from the reader) does it."""
    name = key[: -len(".weight")]

    def keep_float(kind: str, reason: str) -> bool:
        writer.add(key, tensor)
        report.model_bytes_after += tensor_bytes(tensor)
        report.skipped.append(SkippedLayer(name, kind, reason))
        return True

    if key in plan.keep_float:
        return keep_float(*plan.keep_float[key])
    kind = plan.transposed.get(key) or plan.conv1d.get(key)
    if kind is None:
        return False
    # the weight as quantize(model) quantizes it: [out, in] for a Conv1D, [out, in/g, 1, k] for a Conv1d
    oriented = tensor.t().contiguous() if key in plan.transposed else conv2d_weight_of(tensor).contiguous()
    entry = state_dict_entry_plan(key, oriented, cfg)
    if entry is None:
        return False
    if entry[2] is not None:  # excluded, too small, ...: as stored, with quantize(model)'s reason
        return keep_float(kind, entry[2])
    finite = torch.isfinite(oriented.reshape(oriented.shape[0], -1)).all(1)
    if not bool(finite.all()):  # as quantize(model) treats the layer: an error, or float with the reason
        row = int((~finite).nonzero()[0, 0])
        if cfg.nonfinite == "error":
            raise nonfinite_entry_error(key, name, row)
        return keep_float(kind, nonfinite_skip_reason(NonFiniteWeightError("", row)))
    layers = len(report.layers)
    write_entry(key, oriented, cfg, writer, reader, src, report, manifest, measure_error, streamable=False)
    if len(report.layers) > layers:  # quantized as the Linear / Conv2d it is: recorded as its own type
        report.layers[-1].type = manifest["layers"][-1]["type"] = kind
    return True


#: config.json keys that count a model's blocks (a block is modules built even on meta: the time
#: goes there), at any depth of its sub-configs (text_config, vision_config, ...)
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers",
                     "num_decoder_layers", "num_encoder_layers")

#: the most blocks a config.json may count in one stack: every released model has far fewer
#: (Llama 3.1 405B: 126); 20000 took minutes to build on the meta device
MAX_LAYERS = 1024


def _layer_counts(config: dict, where: str = "") -> Dict[str, int]:
    """The block counts a config dict names, by their dotted key, sub-configs included."""
    counts = {}
    for key, value in config.items():
        if isinstance(value, dict):
            counts.update(_layer_counts(value, f"{where}{key}."))
        elif key in _LAYER_COUNT_KEYS and isinstance(value, int) and not isinstance(value, bool):
            counts[where + key] = value
    return counts


def _meta_model(src: Path):
    """The model config.json describes, built on the meta device; None (with a warning) when
    it is not a transformers model class, or counts more than MAX_LAYERS blocks in a stack (a
    config.json is untrusted input: building 20000 layers takes minutes, even on meta)."""
    src = src if src.is_dir() else src.parent  # a folder, or one of its files (model.safetensors, the index)
    if not (src / "config.json").is_file():
        return None
    try:
        import transformers
    except ImportError:
        return None
    try:
        # trust_remote_code=False: a config.json's auto_map must never run the folder's code (nor ask to)
        config = transformers.AutoConfig.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            log.warning("%s: config.json names no model class of the installed transformers (%r); quantizing "
                        "as a plain state_dict", src, arch)
            return None
        too_many = {k: v for k, v in _layer_counts(config.to_dict()).items() if v > MAX_LAYERS}
        if too_many:
            log.warning("%s: config.json counts more than %d layers (%s); quantizing as a plain state_dict", src,
                        MAX_LAYERS, ", ".join(f"{k}={v}" for k, v in too_many.items()))
            return None
        with torch.device("meta"):
            return cls(config)
    except Exception as exc:  # an architecture this transformers can't build: plain state_dict rules
        log.warning("%s: cannot build the model from config.json (%s); quantizing as a plain state_dict", src, exc)
        return None


def add_tied_aliases(plan: HfCheckpointPlan, keys, manifest: dict) -> Dict[str, str]:
    """Record in ``manifest`` each tied key the folder does not store (transformers saves a
    tied tensor once) as an alias of the key it does store: a layer alias when that key was
    quantized, else a tensor alias (a tied bias too: load() found no tensor for the layer's
    ``bias`` and refused the file).  Returns {alias: stored key}."""
    groups: Dict[str, list] = {}
    for key, first in itertools.chain(plan.tied.items(), plan.tied_tensors.items()):
        groups.setdefault(first, [first]).append(key)
    present = set(keys)
    layers = {layer["name"] + ".weight": layer for layer in manifest["layers"]}
    added: Dict[str, str] = {}
    for group in groups.values():
        stored = [k for k in group if k in present]
        if not stored:
            continue
        for key in group:
            if key in present:
                continue
            if stored[0] in layers:
                if not key.endswith(".weight"):  # a quantized weight tied to a parameter that is no layer's
                    log.warning("%s shares its tensor with the quantized %s and is not stored: not kept tied",
                                key, stored[0])
                    continue
                layers[stored[0]].setdefault("aliases", []).append(key[: -len(".weight")])
            else:
                manifest["tensor_aliases"][key] = stored[0]
            added[key] = stored[0]
    if added:
        log.info("tied weights stored once: %s", ", ".join(f"{a} -> {t}" for a, t in added.items()))
    return added
