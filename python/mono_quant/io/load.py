"""load(): a .safetensors file back to a quantized model or a QuantizedStateDict."""
from __future__ import annotations

import copy
import itertools
import os
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple

import torch
from safetensors import safe_open
from torch import nn

from ..warn_site import warn_at_caller
from ..formats import BadLayer, get_format
from ..modules import QuantizedLinear
from ..modules.composite import is_composite
from ..modules.registry import qmodule_for
from ..modules.whole_load import guard_whole_loads
from ..module_hooks import carry_hooks, hook_computed_names, hook_computed_tensors
from ..orig_dtype import orig_dtype_of
from ..parametrized import parametrized_base
from .aligned import aligned
from .container import read_header
from .dtypes import dtype_from_name, dtype_name
from .errors import CheckpointError
from .file_kinds import kind_for_file
from .layer_geometry import check_layer_geometry
from .skeleton import materialize_non_persistent_buffers
from .manifest import check_against_header, layer_key, parse_manifest, quantized_class
from .rebuild import (check_weight_shape, dequantize_layer, is_uninitialized, packed_int8_layer, packed_linear,
                      rebuild_saved, stored_weight)
from .composite_names import rename_composite_tensors
from .composites import expand_shells, finish_shells, load_float_parameters
from ..compiled_models import PREFIX, compiled_inner, compiled_like
from .validate import check_bias, check_layer

__all__ = ["load", "QuantizedStateDict", "dequantize_layer"]


def load(path, model: Optional[nn.Module] = None):
    """Read a file written by :func:`~mono_quant.save` or :func:`~mono_quant.quantize_checkpoint`.

    Never unpickles anything: the file is validated as untrusted input.

    Args:
        path: The ``.safetensors`` file (str, bytes or path-like).
        model: An instance of the float architecture (possibly on the
            ``meta`` device; it is not modified), or None.

    Returns:
        With ``model``, the quantized model: the layers named in the manifest
        rebuilt as quantized modules (with the forward and backward hooks of
        ``model``'s layers they replace), every other parameter and persistent
        buffer from the file (tied weights stay tied), non-persistent buffers
        from ``model``; its outputs are bit-identical to those of the model
        that was saved.  Without ``model``, a :class:`QuantizedStateDict`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: A truncated or corrupted file, a newer format
            version, a manifest that disagrees with the tensors, or a model
            that doesn't match (the message lists missing / unexpected keys,
            shape and dtype mismatches).

    Examples:
        >>> with torch.device("meta"):
        ...     skeleton = MyModel()
        >>> qmodel = mq.load("model-int8.safetensors", model=skeleton)
    """
    path = os.fsdecode(path)  # a bytes path too, as open() takes (safetensors' reader takes a str only)
    if torch.is_inference_mode_enabled():  # no inference tensors in a model that may be trained (as quantize())
        with torch.inference_mode(False):
            return load(path, model)
    inner = compiled_inner(model)  # torch.compile's wrapper: into the model it wraps, compiled back alike
    other = kind_for_file(path)  # e.g. a static int8 model (static/persist.py)
    if other is not None:
        return other.load(path, model) if inner is None else compiled_like(model, other.load(path, inner))
    qsd = _read(path)
    if model is None:
        return qsd
    if inner is not None and not all(key.startswith(PREFIX) for key in qsd):  # (older files of a wrapper: its names)
        return compiled_like(model, qsd.load_into(inner))
    return qsd.load_into(model)


def _read(path) -> "QuantizedStateDict":
    path = os.fspath(path)
    header = read_header(path)
    manifest = parse_manifest(header.metadata, path)
    check_against_header(manifest, header)
    tensors: Dict[str, torch.Tensor] = OrderedDict()
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            for key in header.tensors:
                tensors[key] = aligned(f.get_tensor(key))
    except Exception as exc:  # the safetensors package's own checks (SafetensorError)
        raise CheckpointError(f"{path}: cannot read the tensors: {exc}") from exc
    for alias, target in manifest["tensor_aliases"].items():
        tensors[alias] = tensors[target]
    for layer in manifest["layers"]:  # what the modules and kernels will trust, checked once, here
        check_layer(manifest["kind"], layer, {local: tensors[layer_key(layer["name"], local)]
                                              for local in layer["tensors"]}, f"{path}: ")
    return QuantizedStateDict(tensors, manifest, path)


class QuantizedStateDict(Mapping):
    """The tensors of a mono-quant file by name, plus its manifest (what :func:`load` returns without a model).

    A read-only mapping; aliases are resolved (tied names map to the same
    tensor).  ``layers`` lists the quantized layers (name, type, dtype,
    scheme, axis, group_size, shape, orig_dtype, tensors); :meth:`dequantize`
    gives a float state_dict, :meth:`load_into` the quantized model.

    Args:
        tensors: The tensors by name.
        manifest: The validated manifest.
        path: The file they were read from ("" if none).

    Examples:
        >>> qsd = mq.load("model-int8.safetensors")
        >>> qsd.layers[0]["dtype"], len(qsd)
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], manifest: Mapping[str, Any], path: str = ""):
        self._tensors = OrderedDict(tensors)
        self.manifest = dict(manifest)
        self.path = path

    # -- Mapping -----------------------------------------------------------------------------
    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    # -- description -------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """"model" (saved from a quantized model) or "state_dict"."""
        return self.manifest["kind"]

    @property
    def format_version(self) -> int:
        return self.manifest["format_version"]

    @property
    def layers(self) -> List[Dict[str, Any]]:
        return self.manifest["layers"]

    @property
    def config(self) -> Optional[Dict[str, Any]]:
        return self.manifest.get("config")

    def _weight_only(self) -> bool:
        """Whether the config recorded with a state_dict file asks for weight-only int8
        (``activations=None``); files without one, or with "dynamic", use dynamic activations."""
        config = self.config
        activations = config.get("activations", "dynamic") if isinstance(config, dict) else "dynamic"
        if activations not in ("dynamic", None):
            raise CheckpointError(f"{self.path or 'file'}: manifest config activations {activations!r} is not "
                                  f"'dynamic' or null")
        return activations is None

    def _reduce_range(self) -> bool:
        """Whether the config recorded with a state_dict file asks for 7-bit activations
        (``reduce_range=True``); files without the field (older ones) use 8 bits."""
        config = self.config
        reduce_range = config.get("reduce_range", False) if isinstance(config, dict) else False
        if not isinstance(reduce_range, bool):
            raise CheckpointError(f"{self.path or 'file'}: manifest config reduce_range {reduce_range!r} is not "
                                  f"true or false")
        return reduce_range

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors (aliases counted once)."""
        aliases = self.manifest["tensor_aliases"]
        return sum(t.numel() * t.element_size() for k, t in self._tensors.items() if k not in aliases)

    def __repr__(self) -> str:
        where = f" from {self.path!r}" if self.path else ""
        return (f"QuantizedStateDict({len(self)} tensors, {len(self.layers)} quantized layers, "
                f"kind={self.kind!r}, {self.nbytes} bytes{where})")

    # -- layers ------------------------------------------------------------------------------
    def layer_tensors(self, layer: Mapping[str, Any], name: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """A layer's own tensors by local name (under ``name``, default its first name)."""
        name = layer["name"] if name is None else name
        return {local: self._tensors[layer_key(name, local)] for local in layer["tensors"]}

    def _layer_keys(self) -> set:
        keys = set()
        for layer in self.layers:
            for name in [layer["name"]] + layer.get("aliases", []):
                keys.update(layer_key(name, local) for local in layer["tensors"])
        return keys

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> "OrderedDict[str, torch.Tensor]":
        """A float state_dict: each quantized layer's weight dequantized to
        ``dtype`` (default: its original dtype, float32 when unknown) under
        ``<layer>.weight``, its bias under ``<layer>.bias`` (an LSTM / GRU / RNN's or
        a MultiheadAttention's under the float module's names: ``weight_ih_l0``,
        ``in_proj_weight``, ...); every other tensor as stored.  Raises
        CheckpointError for inconsistent layers."""
        layer_keys = self._layer_keys()
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        pending = {}
        for layer in self.layers:
            weight, bias = self._dequantized_layer(layer, dtype)
            for name in [layer["name"]] + layer.get("aliases", []):
                pending[layer_key(name, next(iter(layer["tensors"])))] = (name, weight, bias)
        for key, t in self._tensors.items():
            if key in pending:
                name, weight, bias = pending[key]
                out[layer_key(name, "weight")] = weight
                if bias is not None:
                    out[layer_key(name, "bias")] = bias
            elif key not in layer_keys:
                out[key] = t
        rename_composite_tensors(out, self.manifest.get("composites", {}))  # (the float modules' names)
        return out

    def _dequantized_layer(self, layer, dtype) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return dequantize_layer(self.kind, layer, self.layer_tensors(layer), dtype)

    # -- into a model ------------------------------------------------------------------------
    def load_into(self, model: nn.Module) -> nn.Module:
        """The quantized model built from ``model`` (the float architecture, possibly
        on ``meta``; not modified).  See :func:`load`."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module instance of the float architecture, "
                            f"got {type(model).__name__}")
        where = f"{self.path}: " if self.path else ""
        modules = dict(model.named_modules(remove_duplicate=False))
        # an LSTM / attention saved as its quantized children: their placeholders join `modules`
        shells = expand_shells(modules, self.layers) if self.kind == "model" else {}
        # (a placeholder child is on meta: its dtype is the float composite's)
        owners = {id(child): module for module, shell in shells.values() for child in shell.children()}
        memo: Dict[int, Any] = {}
        consumed = set()
        replaced_paths: List[str] = []
        problems: List[str] = []
        failed: Set[str] = set()  # layers already reported in problems
        # a saved module is rebuilt as it was; a state_dict layer is built from the float module
        build = {"model": lambda layer, m: self._build_saved_layer(layer, m, owners.get(id(m), m)),
                 "state_dict": self._build_state_dict_layer}[self.kind]
        for layer in self.layers:
            names = [layer["name"]] + layer.get("aliases", [])
            missing = [n for n in names if n not in modules]
            if missing:
                problems.append(f"the model has no module {missing[0] or '<root>'!r} for quantized layer {names[0]!r}")
                continue
            float_module = modules[names[0]]
            try:
                qmodule, also_consumed = build(layer, float_module)
                _check_aliases(layer, names, modules, qmodule)
            except CheckpointError as exc:
                problems.append(str(exc))
                failed.update(names)
                continue
            qmodule.train(float_module.training)
            for name in names:
                memo[id(modules[name])] = qmodule
                consumed.update(layer_key(name, local) for local in layer["tensors"])
            consumed.update(also_consumed)
            replaced_paths.extend(names)
        load_float_parameters(shells, self._tensors, memo, consumed, problems)  # an attention's bias_k / bias_v
        finish_shells(shells, memo, replaced_paths, problems, failed)
        if problems:
            raise CheckpointError(f"{where}the model does not match the checkpoint: " + "; ".join(problems[:10]))
        self._map_remaining(model, modules, memo, consumed, replaced_paths, where)
        _carry_skeleton_hooks(model, memo)
        device = _skeleton_device(model)
        if "" in replaced_paths:
            return memo[id(model)] if device is None else memo[id(model)].to(device)
        _hook_computed_placeholders(model, memo)
        qmodel = copy.deepcopy(model, memo)
        for module in qmodel.modules():  # from the tensors just loaded
            for name, tensor in hook_computed_tensors(module).items():
                setattr(module, name, tensor)
        materialize_non_persistent_buffers(qmodel, model, where)  # rotary inv_freq, position_ids, ...
        _warn_meta(qmodel)
        guard_whole_loads(qmodel)  # a later load_state_dict: all quantized layers checked before any copy
        from ..integrations.hf_resize import guard_resize_token_embeddings  # (no transformers import)
        guard_resize_token_embeddings(qmodel)  # a Hugging Face model: resizing a quantized head is refused
        # the file's tensors are read on the CPU: a skeleton wholly on a GPU gets its model back there (its
        # non-persistent buffers, copied from it, stayed there: a model split between two devices)
        return qmodel if device is None else qmodel.to(device)

    def _build_saved_layer(self, layer, float_module: nn.Module,
                           dtype_source: nn.Module) -> Tuple[nn.Module, List[str]]:
        """A kind "model" layer: its saved module rebuilt (no other file key consumed); ``dtype_source``
        holds the model's dtype there (``float_module``, or the float LSTM / attention of a placeholder)."""
        name = layer["name"] or "<root>"
        cls = quantized_class(layer["class"])
        if (parametrized_base(float_module) or type(float_module)) is not cls.float_type:  # (weight_norm'd too)
            raise CheckpointError(f"layer {name!r} is a {type(float_module).__name__} in the model, the checkpoint "
                                  f"has a quantized {cls.float_type.__name__}")
        check_weight_shape(layer, float_module, name, getattr(cls, "float_weight_shape", None))
        _check_model_dtype(layer, dtype_source, name)
        qmodule = rebuild_saved(layer, self.layer_tensors(layer))
        check_layer_geometry(name, float_module, qmodule)
        return qmodule, []

    def _build_state_dict_layer(self, layer, float_module: nn.Module) -> Tuple[nn.Module, List[str]]:
        """A kind "state_dict" layer: the quantized module of ``float_module`` with the file's
        weight, and the file key of its bias (a separate entry) when it has one."""
        name = layer["name"] or "<root>"
        own = self.layer_tensors(layer)
        cls = qmodule_for(float_module)
        if is_composite(cls):  # an LSTM / attention is saved by save(quantized model), as its children
            raise CheckpointError(f"layer {name!r} is a {type(float_module).__name__} in the model, whose weights "
                                  f"a state_dict file does not hold as one layer")
        if cls is not None and layer.get("type") not in (None, type(float_module).__name__):
            # e.g. a 2-D weight quantized as a Linear's, but the model has an Embedding there
            kind = type(float_module).__name__
            raise CheckpointError(
                f"layer {name!r} is quantized in the checkpoint as a {layer['type']} but is "
                f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind} in the model (quantized without the model, every "
                f"2-D *.weight is taken for a Linear's): quantize the checkpoint again with "
                f"exclude=[{layer['name']!r}] (--exclude {layer['name']}; and any layer tied to it, such as an "
                f"lm_head), or quantize the model itself")
        if cls is None:
            raise CheckpointError(f"layer {name!r} is quantized in the checkpoint but is a "
                                  f"{type(float_module).__name__} in the model, which mono-quant does not replace")
        check_weight_shape(layer, float_module, name, getattr(cls, "float_weight_shape", None))
        _check_model_dtype(layer, float_module, name)  # (files before orig_dtype was recorded here: null, not checked)
        # the dtype the file records (a meta skeleton is built in the default dtype), else the model's
        recorded = dtype_from_name(layer["orig_dtype"]) if layer.get("orig_dtype") else None
        if issubclass(cls, QuantizedLinear) and packed_int8_layer(layer, own):
            # the file's packed buffers as they are: no unpacking and packing again
            qmodule = packed_linear(layer, own, float_module, name, cls)
        else:
            stored = stored_weight(layer, own, recorded or float_module.weight.dtype)
            qmodule = cls.from_float(float_module, stored)
        if recorded is not None:
            qmodule.orig_dtype = recorded
        bias, bias_keys = None, []
        if getattr(float_module, "bias", None) is not None:
            bias_key = layer_key(layer["name"], "bias")
            bias = self._tensors.get(bias_key)
            if bias is None:
                raise CheckpointError(f"missing key {bias_key!r} for layer {name!r}")
            try:
                check_bias(bias, layer["shape"][0], repr(bias_key))
            except BadLayer as exc:
                raise CheckpointError(f"layer {name!r}: {exc}") from None
            bias_keys.append(bias_key)
        qmodule._set_bias(bias)
        if self._weight_only() and get_format(layer["dtype"]).has_activation_modes \
                and hasattr(qmodule, "set_activations"):
            qmodule.set_activations(None)  # as quantize(activations=None) recorded it in the config
        if self._reduce_range() and getattr(qmodule.format, "packs", False) and hasattr(qmodule, "set_reduce_range"):
            qmodule.set_reduce_range(True)  # as quantize_checkpoint(reduce_range=True) recorded it
        extra = set(own) - set(qmodule.state_dict())
        if "weight_packed" in qmodule._buffers:  # the file's plain weight became the packed copy
            extra.discard("weight_qdata")
        if extra:
            raise CheckpointError(f"layer {name!r}: unexpected tensors {sorted(extra)} for {cls.__name__}")
        return qmodule, bias_keys

    def _map_remaining(self, model, modules, memo, consumed, replaced_paths, where) -> None:
        """Put each remaining file tensor in ``memo`` in place of the model's
        parameter / buffer, so deepcopy builds the model around them.
        Raises CheckpointError listing missing / unexpected keys, shape mismatches and (for a
        model not on the meta device) dtype mismatches."""
        def replaced(path: str) -> bool:
            return any(path == p or p == "" or path.startswith(p + ".") for p in replaced_paths)

        expected: Dict[str, torch.Tensor] = OrderedDict()
        for path, m in modules.items():
            if replaced(path) or id(m) in memo:
                continue
            for pname, p in m._parameters.items():
                if p is not None:
                    expected[layer_key(path, pname)] = p
            for bname, b in m._buffers.items():
                if b is not None and bname not in m._non_persistent_buffers_set:
                    expected[layer_key(path, bname)] = b
        available = [k for k in self._tensors if k not in consumed]
        missing = [k for k in expected if k not in self._tensors or k in consumed]
        unexpected = [k for k in available if k not in expected]
        mismatched = [f"{k}: {list(self._tensors[k].shape)} in the file, {list(t.shape)} in the model"
                      for k, t in expected.items()
                      if k in self._tensors and k not in consumed and not is_uninitialized(t)
                      and tuple(self._tensors[k].shape) != tuple(t.shape)]
        # a real (not meta) model fixes its dtypes: a file tensor of another dtype would make a module
        # that fails at forward (a meta skeleton takes the file's dtypes)
        retyped = [f"{k}: {_dtype(self._tensors[k])} in the file, {_dtype(t)} in the model (build the model in "
                   f"the file's dtype, or on the meta device)"
                   for k, t in expected.items()
                   if k in self._tensors and k not in consumed and not is_uninitialized(t)
                   and t.device.type != "meta" and self._tensors[k].dtype != t.dtype]
        if missing or unexpected or mismatched or retyped:
            parts = []
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("shape mismatches", mismatched), ("dtype mismatches", retyped)):
                if keys:
                    parts.append(f"{label} ({len(keys)}): {keys[:10]}{' ...' if len(keys) > 10 else ''}")
            raise CheckpointError(f"{where}the model does not match the checkpoint: " + "; ".join(parts))
        for key, old in expected.items():
            new = self._tensors[key]
            if id(old) in memo:  # tied in the model: the first name wins, the data must agree
                first = memo[id(old)]
                if first.data_ptr() != new.data_ptr() and not torch.equal(first.detach(), new):
                    raise CheckpointError(f"{where}{key!r} is tied to another parameter in the model "
                                          f"but holds different values in the checkpoint")
                continue
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad and (new.is_floating_point()
                                                                            or new.is_complex()))
            memo[id(old)] = new


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _check_model_dtype(layer, float_module: nn.Module, name: str) -> None:
    """A saved layer computes in its recorded ``orig_dtype``: a real (not meta) model of another
    dtype must be refused, as its float tensors are (a bfloat16 layer in a float32 model returned
    bfloat16 to the float32 layers after it)."""
    recorded = layer.get("orig_dtype")
    try:
        weight = float_module.weight
    except AttributeError:  # an LSTM / attention (its first weight below), a parametrization that cannot run
        weight = None
    if not isinstance(weight, torch.Tensor):
        weight = next((p for p in float_module.parameters() if p.is_floating_point()), None)
    if recorded is None or not isinstance(weight, torch.Tensor) or weight.device.type == "meta" \
            or not weight.is_floating_point():
        return
    if dtype_name(orig_dtype_of(weight.dtype)) != recorded:
        raise CheckpointError(f"layer {name!r} was quantized from {recorded} weights, the model's are "
                              f"{_dtype(weight)} (build the model in the file's dtype, or on the meta device)")


def _carry_skeleton_hooks(model: nn.Module, memo: Dict[int, Any]) -> None:
    """Give each rebuilt layer (an LSTM / attention too) the hooks of the skeleton's module it
    replaces, as quantize() does: a hook the architecture registers is part of what the saved model
    computed.  A layer standing for several modules (a tied twin) takes its first one's."""
    done = set()
    for module in model.modules():
        qmodule = memo.get(id(module))
        if isinstance(qmodule, nn.Module) and id(qmodule) not in done:
            done.add(id(qmodule))
            carry_hooks(module, qmodule)


def _hook_computed_placeholders(model: nn.Module, memo: Dict[int, Any]) -> None:
    """An empty tensor in ``memo`` for each attribute a norm or pruning hook computes on a module the
    copy keeps (a pruned layer left float): deepcopy refuses the skeleton's ``weight_orig * weight_mask``
    (a grad_fn), and the copy's is computed again from the file's tensors once they are in place."""
    for module in model.modules():
        if id(module) not in memo:
            for name in hook_computed_names(module):
                memo.setdefault(id(module.__dict__[name]), torch.empty(0))


def _warn_meta(model: nn.Module) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        warn_at_caller(f"{len(left)} tensors of the loaded model are still on the meta device (non-persistent "
                       f"buffers of a meta skeleton?): {left[:5]}")


def _check_aliases(layer, names: List[str], modules: Dict[str, nn.Module], qmodule: nn.Module) -> None:
    """Every other name a layer is saved under (a module the model shares, or a tied twin) must be a
    module the rebuilt layer can stand for: the same type, weight shape and geometry as the first
    (an edited alias list would otherwise put the layer in place of any module, the root included)."""
    first = modules[names[0]]
    kind = parametrized_base(first) or type(first)
    for alias in names[1:]:
        module = modules[alias]
        if module is first:
            continue
        label = alias or "<root>"
        if (parametrized_base(module) or type(module)) is not kind:
            raise CheckpointError(f"layer {names[0] or '<root>'!r} is also saved as {label!r}, which is a "
                                  f"{type(module).__name__} in the model, not a {kind.__name__}")
        check_weight_shape(layer, module, label, getattr(type(qmodule), "float_weight_shape", None))
        check_layer_geometry(label, module, qmodule)


def _skeleton_device(model: nn.Module) -> Optional[torch.device]:
    """The one device other than the CPU that holds all of ``model``'s tensors with values (meta ones
    aside), else None (a CPU or meta skeleton, or one spread over devices: the loaded model stays on
    the CPU)."""
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers()) if t.device.type != "meta"}
    device = devices.pop() if len(devices) == 1 else None
    return None if device is None or device.type == "cpu" else device
