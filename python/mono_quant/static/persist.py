"""Save / load of static int8 models (StaticGraphModel): safetensors + a JSON manifest.

The manifest (metadata key ``mono_quant.static``) holds the program (ops in
order, their inputs, the traced calls of float ops) and each layer's class,
constructor arguments (scales, fused activation, geometry) and buffer names;
the tensors are ``layers.<op>.<buffer>``.  Loading never unpickles and never
imports by name: classes, functions and tensor methods come from fixed
allow-lists, and every tensor is checked (dtype, shape) against the layer it
belongs to.  A loaded model gives bit-identical outputs.
"""
from __future__ import annotations

import inspect
import json
import math
import operator
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from safetensors import safe_open

from ..errors import CheckpointError
from ..formats.checks import BadLayer, check_scales
from ..io.aligned import aligned
from ..io.atomic import atomic_output
from ..io.dtypes import dtype_name
from ..io.save import write_safetensors
from ..io.file_kinds import FileKind, has_metadata_key, register_file_kind
from ..io.untrusted_json import loads_bounded
from ..kernels.layout import PACKED_LAYOUT_VERSION
from ..packing import check_packed_groups, packed_sizes
from .arguments import BINDINGS, InputSpec
from .capture import ValueRef
from .graph import FusedAddFloat, FusedGapFloat, StaticGraphModel
from .conv1d import StaticConv1d
from .modules import StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear
from .modules_eltwise import StaticBroadcastAdd
from .persist_checks import check_activation_scales, check_outputs_not_constant, check_weight_geometry
from .persist_eltwise import ELTWISE_CLASSES, attach_eltwise_tensors, build_fused_add, check_constant_shape
from .persist_float import FLOAT_BY_NAME, FLOAT_MODULES, build_float_module, float_module_kwargs, resample_problem
from .persist_float_weighted import (WEIGHTED_BY_NAME, WEIGHTED_FLOAT_MODULES, build_weighted_module,
                                      check_saved_tensors, weighted_module_kwargs)
from .persist_skeleton import check_static_layers_against_model
from .program import StaticInt8Model
from .qparams_state import EXTRA_STATE

__all__ = ["save_static", "load_static", "is_static_file", "saves_as_static", "STATIC_FORMAT", "encode_value",
           "build_layer"]

STATIC_FORMAT = "mono_quant.static/1"
_META_KEY = "mono_quant.static"

_STATIC_CLASSES = {c.__name__: c for c in (StaticConv2d, StaticConv1d, StaticLinear, StaticAdd, StaticGlobalAvgPool,
                                           *ELTWISE_CLASSES)}
_FUNCTIONS = {f"{mod}.{f.__name__}": f for mod, fs in (
    ("torch", (torch.flatten, torch.cat, torch.relu, torch.add, torch.mul, torch.sigmoid, torch.tanh,
               torch.reshape, torch.mean, torch.sum, torch.permute, torch.transpose, torch.clamp, torch.stack)),
    ("operator", (operator.add, operator.mul, operator.getitem, operator.sub, operator.truediv, operator.iadd,
                  operator.floordiv)),
    ("torch.nn.functional", (F.relu, F.relu6, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.hardswish,
                             F.silu, F.gelu, F.sigmoid, F.softmax, F.dropout, F.interpolate, F.layer_norm,
                             F.hardtanh, F.leaky_relu, F.pad)),
) for f in fs}
_FUNCTION_NAMES = {id(f): name for name, f in _FUNCTIONS.items()}


def _tensor_shape(x, name):
    """fx's ``getattr(x, "shape")`` (``x.shape[0]`` in a forward) as a file replays it: the shape of a tensor
    and nothing else (any other attribute of any object could be reached by a getattr)."""
    if name != "shape" or not isinstance(x, torch.Tensor):
        raise TypeError(f"a static program reads only a tensor's shape, not {name!r} of {type(x).__name__}")
    return x.shape


_FUNCTIONS["builtins.getattr"] = _tensor_shape
_FUNCTION_NAMES[id(getattr)] = "builtins.getattr"
_OUT_OF_PLACE = {operator.iadd: operator.add}  # (a += b writes a tensor a in place)
_METHODS = frozenset({"flatten", "view", "reshape", "relu", "relu_", "mean", "sum", "size", "permute", "contiguous",
                      "transpose", "squeeze", "unsqueeze", "add", "add_", "mul", "sigmoid", "softmax", "clamp",
                      "chunk", "split", "float", "dim", "view_as"})


def encode_value(obj):
    if isinstance(obj, ValueRef):
        return {"$ref": obj.name}
    if isinstance(obj, tuple):
        return {"$tuple": [encode_value(v) for v in obj]}
    if isinstance(obj, list):
        return [encode_value(v) for v in obj]
    if isinstance(obj, dict):
        return {"$dict": {str(k): encode_value(v) for k, v in obj.items()}}
    if isinstance(obj, slice):
        return {"$slice": [encode_value(v) for v in (obj.start, obj.stop, obj.step)]}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).replace("torch.", "")}
    if obj is Ellipsis:  # (x[..., 1:-1])
        return {"$ellipsis": None}
    raise TypeError(f"cannot save a {type(obj).__name__} constant in a static program")


def _decode(obj):
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, dict):
        if len(obj) != 1:
            raise ValueError(f"bad encoded value {obj!r}")
        (tag, value), = obj.items()
        if tag == "$ref":
            return ValueRef(str(value))
        if tag == "$ellipsis" and value is None:
            return Ellipsis
        if tag == "$tuple":
            return tuple(_decode(v) for v in value)
        if tag == "$dict":
            return {k: _decode(v) for k, v in value.items()}
        if tag == "$slice":
            bounds = [_decode(v) for v in value]
            if len(bounds) != 3 or not all(b is None or isinstance(b, (int, ValueRef)) for b in bounds):
                raise ValueError(f"bad encoded slice {obj!r}")
            return slice(*bounds)
        if tag == "$float" and value in ("inf", "-inf", "nan"):
            return float(value)
        if tag == "$dtype" and isinstance(getattr(torch, str(value), None), torch.dtype):
            return getattr(torch, value)
        raise ValueError(f"bad encoded value {obj!r}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"bad encoded value {obj!r}")


def _layer_entry(name: str, m: nn.Module) -> dict:
    cls = type(m)
    if cls.__name__ in _STATIC_CLASSES and _STATIC_CLASSES[cls.__name__] is cls:
        return {"class": cls.__name__, "init_kwargs": encode_value(m.init_kwargs())}
    kwargs = None
    if cls in WEIGHTED_FLOAT_MODULES:  # (its tensors are saved with the layers')
        kwargs = weighted_module_kwargs(name, m)
        check_saved_tensors(name, m, kwargs)  # (a pruned layer: its pruning hook is named there)
    if m._forward_hooks or m._forward_pre_hooks:  # (the program calls the float modules: hooks ran in memory)
        raise TypeError(f"cannot save static model: layer {name!r} ({cls.__name__}) has forward hooks, which a file "
                        f"does not hold (the loaded model would not run them): remove them before saving and "
                        f"register them again on the loaded model")
    if kwargs is not None:
        return {"class": cls.__name__, "init_kwargs": encode_value(kwargs)}
    if cls is FusedAddFloat:
        return {"class": "FusedAddFloat", "init_kwargs": encode_value({"act": m.act})}
    if cls is FusedGapFloat:
        return {"class": "FusedGapFloat", "init_kwargs": encode_value({"flatten": m.flatten})}
    if cls in FLOAT_MODULES:
        return {"class": cls.__name__, "init_kwargs": encode_value(float_module_kwargs(name, m))}
    if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
        raise TypeError(f"cannot save static model: layer {name!r} is a {cls.__name__}, a float module with "
                        f"parameters or buffers, which a static file holds for a fixed table of classes only "
                        f"({', '.join(sorted(WEIGHTED_BY_NAME))}; nothing is imported by name): make it one of those, "
                        f"or leave it out of the traced part)")
    raise TypeError(f"cannot save static model: layer {name!r} is a {cls.__name__}, not among the float modules a "
                    f"static file rebuilds (a fixed table, nothing is imported by name: "
                    f"{', '.join(sorted(FLOAT_BY_NAME))})")


#: the dtypes a constant tensor of the program (fx's get_attr: a LayerNorm2d's weight, a layer scale) is saved in
_CONSTANT_DTYPES = {dtype_name(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _program_entry(entry: tuple, constants: Dict[str, torch.Tensor]) -> dict:
    """One op's manifest entry; a constant's tensor goes to ``constants`` (saved as ``constants.<op>``)."""
    name, kind, inputs, call = entry
    if kind == "call" and call[0] == "get_attr":  # a float tensor the model's forward reads: saved with its dtype
        value = call[1]
        if not isinstance(value, torch.Tensor) or dtype_name(value.dtype) not in _CONSTANT_DTYPES:
            raise TypeError(f"cannot save static model: op {name!r} reads a constant "
                            f"{getattr(value, 'dtype', type(value).__name__)}, which a file holds only as a float "
                            f"tensor ({', '.join(_CONSTANT_DTYPES)})")
        constants[name] = value.detach().to("cpu").contiguous().clone()
        return {"name": name, "kind": "constant", "inputs": [], "dtype": dtype_name(value.dtype),
                "shape": list(value.shape)}
    out = {"name": name, "kind": kind, "inputs": list(inputs)}
    if kind == "output":
        out["structure"] = encode_value(call)
    elif kind == "input" and call is not None:  # (no spec: a required argument of the op's name)
        out["argument"], out["binding"] = call.argument, call.binding
        if call.binding in ("default", "fixed"):
            out["default"] = encode_value(call.default)
    elif kind == "call":
        how, target, args, kwargs = call
        if how == "call_function":
            fname = _FUNCTION_NAMES.get(id(target))
            if fname is None:
                raise TypeError(f"cannot save static model: op {name!r} calls "
                                f"{getattr(target, '__name__', target)!r}, which is not in the allow-list")
            target = fname
        elif how == "call_method":
            if target not in _METHODS:
                raise TypeError(f"cannot save static model: op {name!r} calls the tensor method {target!r}")
        else:
            raise TypeError(f"cannot save static model: op {name!r} is a {how}")
        out["call"] = {"how": how, "target": target, "args": encode_value(args), "kwargs": encode_value(kwargs)}
    return out


def saves_as_static(obj) -> bool:
    """Whether mono_quant.save should write ``obj`` (a model or QuantizationResult) as a static file."""
    return isinstance(getattr(obj, "model", obj), StaticGraphModel)


def save_static(model: StaticGraphModel, path, overwrite: bool = True) -> Path:
    """Write ``model`` to ``path`` (safetensors with the JSON manifest); returns the path."""
    if not isinstance(model, StaticGraphModel):
        raise TypeError(f"save_static takes a StaticGraphModel, got {type(model).__name__}")
    layers = {name: _layer_entry(name, m) for name, m in model.layers.items()}
    constants: Dict[str, torch.Tensor] = {}
    program = [_program_entry(e, constants) for e in model.program]
    tensors = {f"constants.{name}": t for name, t in constants.items()}
    for name, m in model.layers.items():
        for key, t in m.state_dict(keep_vars=False).items():
            if key == EXTRA_STATE:  # (the manifest holds the layer's constants)
                continue
            tensors[f"layers.{name}.{key}"] = t.detach().contiguous().clone()
            layers[name].setdefault("tensors", []).append(key)
    text = json.dumps({"format": STATIC_FORMAT, "layers": layers, "program": program})
    try:  # the load's own checks on what the file will hold: never write a file load refuses
        _read_manifest(loads_bounded(text), tensors)
    except (CheckpointError,) + _BAD_JSON as exc:
        raise ValueError(f"cannot save static model: mq.load would refuse the file: {exc}") from None
    path = Path(os.fspath(path))
    with atomic_output(path, overwrite) as tmp:
        write_safetensors(tensors, tmp, {_META_KEY: text}, path)
    return path


def is_static_file(path) -> bool:
    """Whether ``path`` is a safetensors file written by save_static (False on any read error)."""
    return has_metadata_key(path, _META_KEY)


def _check_tensor(where: str, t: torch.Tensor, dtype: torch.dtype, shape) -> None:
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{where}: expected {str(dtype).replace('torch.', '')}{list(shape)}, got "
                              f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}")


_LEGACY_RAW_KWARGS = {"FusedAddFloat": {"act"}, "FusedGapFloat": {"flatten"}}


def build_layer(name: str, entry: dict, tensors: Dict[str, torch.Tensor]) -> nn.Module:
    cls_name, raw = entry["class"], entry.get("init_kwargs", {})
    if cls_name in _LEGACY_RAW_KWARGS and isinstance(raw, dict) and set(raw) == _LEGACY_RAW_KWARGS[cls_name]:
        raw = encode_value(raw)  # files before the fix wrote these two unencoded (and could not load them)
    kwargs = _decode(raw)
    if not isinstance(kwargs, dict):
        raise ValueError("init_kwargs must be a mapping")
    own = {k[len(f"layers.{name}."):]: v for k, v in tensors.items() if k.startswith(f"layers.{name}.")}
    if cls_name in _STATIC_CLASSES:
        if cls_name == StaticBroadcastAdd.__name__:
            check_constant_shape(name, kwargs, own)
        try:
            m = _STATIC_CLASSES[cls_name](**kwargs)
        except (TypeError, ValueError) as exc:  # the constructor's own checks: say which layer
            raise CheckpointError(f"layer {name!r} ({cls_name}): {exc}") from None
        check_activation_scales(name, m)
        _attach_static_tensors(name, m, own)
        return m
    if cls_name == "FusedAddFloat":
        return build_fused_add(name, kwargs, own)
    if cls_name in WEIGHTED_BY_NAME:
        return build_weighted_module(name, cls_name, kwargs, own)
    if own:
        raise CheckpointError(f"layer {name!r} ({cls_name}) has unexpected tensors {sorted(own)}")
    if cls_name == "FusedGapFloat":
        try:
            return FusedGapFloat(kwargs.get("flatten"))
        except ValueError as exc:
            raise CheckpointError(f"layer {name!r} ({cls_name}): {exc}") from None
    if cls_name in FLOAT_BY_NAME:  # only what save_static writes, checked: no inplace=True
        return build_float_module(name, cls_name, kwargs)
    raise CheckpointError(f"layer {name!r}: unknown class {cls_name!r}")


def _attach_static_tensors(name: str, m: nn.Module, own: Dict[str, torch.Tensor]) -> None:
    where = f"layer {name!r}"
    if isinstance(m, ELTWISE_CLASSES):
        return attach_eltwise_tensors(name, m, own)
    if isinstance(m, (StaticAdd, StaticGlobalAvgPool)):
        if own:
            raise CheckpointError(f"{where}: unexpected tensors {sorted(own)}")
        return
    if isinstance(m, StaticConv2d):
        n, groups = m.out_channels, m.groups
        k = m.in_channels // groups * m.kernel_size[0] * m.kernel_size[1]
    else:
        n, groups, k = m.out_features, 1, m.in_features
    expected = {"weight_scale", "bias"} | ({"weight_dw"} if getattr(m, "depthwise", False) else
                                          {"weight_packed", "weight_colsum", "weight_packed_info"})
    if not set(own) <= expected or not (expected - {"bias"}) <= set(own):
        raise CheckpointError(f"{where}: tensors {sorted(own)}, expected {sorted(expected)} (bias optional)")
    if "weight_packed_info" in own:  # the weight's own geometry first: a wrong width is named as such
        check_weight_geometry(where, m, own["weight_packed_info"], n, k, groups)
    _check_tensor(f"{where} weight_scale", own["weight_scale"], torch.float32, (n,))
    try:
        check_scales(own["weight_scale"])
    except BadLayer as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if "bias" in own:
        _check_tensor(f"{where} bias", own["bias"], torch.float32, (n,))
    if "weight_dw" in own:
        _check_tensor(f"{where} weight_dw", own["weight_dw"], torch.int8, (*m.kernel_size, n))
        if bool((own["weight_dw"] == -128).any()):
            raise CheckpointError(f"{where}: weight_dw holds -128 (symmetric int8 is -127..127)")
    else:
        size, colsum = packed_sizes(n // groups, k)
        _check_tensor(f"{where} weight_packed", own["weight_packed"], torch.int8, (groups * size,))
        _check_tensor(f"{where} weight_colsum", own["weight_colsum"], torch.int32, (groups * colsum,))
        info = [int(v) for v in own["weight_packed_info"]]
        if info != [PACKED_LAYOUT_VERSION, n, k, info[3], groups] or info[3] not in (0, 1):
            raise CheckpointError(f"{where}: weight_packed_info {info} does not match the layer ({n} outputs, "
                                  f"{k} inputs, {groups} groups, layout {PACKED_LAYOUT_VERSION})")
        # the kernels trust the column sums and the -128 flag: check them against the bytes
        problem = check_packed_groups(own["weight_packed"], own["weight_colsum"], n, k, groups, info[3])
        if problem:
            raise CheckpointError(f"{where}: bad packed int8 weight: {problem}")
    for key, t in own.items():
        m.register_buffer(key, t)
    if "bias" not in own:
        m.register_buffer("bias", None)
    m._derive()


def _ref_names(obj):
    """The names of the values an op's arguments (or the output structure) read."""
    if isinstance(obj, ValueRef):
        yield obj.name
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _ref_names(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _ref_names(v)
    elif isinstance(obj, slice):
        yield from _ref_names((obj.start, obj.stop, obj.step))


def _check_refs(op: str, obj, defined) -> None:
    """Every value an op's arguments (or the output) name must be computed before it."""
    for ref in _ref_names(obj):
        if ref not in defined:
            raise CheckpointError(f"op {op!r} reads {ref!r} before it is computed")


def _check_call(op: str, how: str, args, kwargs, inputs: List[str]) -> None:
    """A replayed call's arguments read exactly the op's inputs (a method: on the first argument)."""
    ok = isinstance(args, (list, tuple)) and isinstance(kwargs, dict) and \
        set(_ref_names((args, kwargs))) == set(inputs) and \
        (how != "call_method" or (len(args) > 0 and isinstance(args[0], ValueRef)))
    if not ok:
        raise CheckpointError(f"op {op!r}: its call's arguments do not read its inputs {inputs}")
    if "out" in kwargs:  # (torch's functions without a Python signature take it: a write into a program value)
        raise CheckpointError(f"op {op!r}: a call with out= writes into a tensor it is given (an input of the "
                              f"model, a constant), which a program never does")


def _check_output_reads_an_input(program: List[tuple]) -> None:
    """Refuse a program whose output reads a value no input reaches (through the ops' inputs): its model
    would answer constants, whatever it is given, or hand the caller a constant itself, whose in-place
    change would change every later call (a file's constants and input-free calls are such roots)."""
    reached = set()
    for name, kind, inputs, _ in program:
        if kind == "output":
            constant = [i for i in inputs if i not in reached]
            if constant:
                raise CheckpointError(f"op {name!r}: the output reads {constant}, computed from no input of the "
                                      f"model")
        elif kind == "input" or any(i in reached for i in inputs):
            reached.add(name)


def _replayed_call(op: str, how: str, target, args, kwargs):
    """``(target, args, kwargs)`` of a call as the program replays it: out of place (the same values;
    an in-place call could write the caller's input tensor, which a program's first op receives as
    it is) and never in training mode (an eval-mode trace records ``training=False``; dropout's
    default is True).  ``inplace`` / ``training`` count however they are passed."""
    if how == "call_method":
        return (target[:-1] if target.endswith("_") and target[:-1] in _METHODS else target), args, kwargs
    target = _OUT_OF_PLACE.get(target, target)
    try:
        signature = inspect.signature(target)
    except ValueError:  # a builtin without a signature (torch.relu, ...): no inplace / training argument
        return target, args, kwargs
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise CheckpointError(f"op {op!r}: arguments that {target.__name__} does not take ({exc})") from None
    training = signature.parameters["training"].default if "training" in signature.parameters else False
    if bound.arguments.get("training", training):
        raise CheckpointError(f"op {op!r}: {target.__name__} in training mode (random at every call)")
    if bound.arguments.get("inplace"):
        bound.arguments["inplace"] = False
    if target is F.interpolate:  # (every forward allocates what it asks for)
        problem = resample_problem(bound.arguments.get("size"), bound.arguments.get("scale_factor"))
        if problem:
            raise CheckpointError(f"op {op!r}: interpolate {problem}")
    return target, type(args)(bound.args), bound.kwargs


def _check_arity(op: str, layer: nn.Module, inputs: List[str]) -> None:
    """A layer op's inputs must be the arguments its forward takes (a concatenation: as many as it was built for)."""
    try:
        inspect.signature(layer.forward).bind(*inputs)
    except TypeError as exc:
        raise CheckpointError(f"op {op!r}: {len(inputs)} inputs for {type(layer).__name__} ({exc})") from None
    built_for = getattr(layer, "in_scales", None)
    if built_for is not None and len(built_for) != len(inputs):
        raise CheckpointError(f"op {op!r}: {len(inputs)} inputs, its layer was built for {len(built_for)}")


def _is_static(layer) -> bool:
    return isinstance(layer, (StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear) + ELTWISE_CLASSES)


def _check_int8_flow(program: List[tuple], layers: Dict[str, nn.Module]) -> None:
    """int8 codes flow only from a static layer with an int8 output (out_scale set) into a static
    layer that takes int8 (int8_input); everything else passes floats.  A file whose scales or
    flags break that chain would load and then fail (or misread codes as floats) at its first call."""
    int8: Dict[str, bool] = {}
    for name, kind, inputs, _ in program:
        layer = layers.get(name) if kind == "module" else None
        wants = bool(getattr(layer, "int8_input", True)) if _is_static(layer) else False
        for index, i in enumerate(inputs):
            if int8.get(i, False) != wants:
                raise CheckpointError(f"op {name!r} takes {'int8 codes' if wants else 'floats'} but its input {i!r} "
                                      f"is {'int8 codes' if int8.get(i) else 'float'} (an edited scale or flag?)")
            if wants:  # codes are read with the scale and zero-point they were written with, or misread
                producer = layers[i]
                read_as, written_as = _input_qparams(layer, index), (producer.out_scale, producer.out_zp)
                if read_as != written_as:
                    raise CheckpointError(f"op {name!r} reads its input {i!r} as int8 codes of scale {read_as[0]!r} "
                                          f"zero-point {read_as[1]!r}, but {i!r} writes them with scale "
                                          f"{written_as[0]!r} zero-point {written_as[1]!r} (an edited scale?)")
        int8[name] = _is_static(layer) and getattr(layer, "out_scale", None) is not None


def _input_qparams(layer, index: int) -> tuple:
    """The (scale, zero-point) a static layer reads its input ``index`` with."""
    if hasattr(layer, "in_scales"):  # a concatenation: one pair per input
        return layer.in_scales[index], layer.in_zps[index]
    if index == 1:  # an addition's second operand
        return layer.b_scale, layer.b_zp
    return layer.in_scale, layer.in_zp


def _input_spec(op: str, entry: dict) -> Optional[InputSpec]:
    """An input op's binding (files before forward defaults had none: a required argument)."""
    if "argument" not in entry:
        return None
    argument, binding = entry["argument"], entry.get("binding")
    default = _decode(entry.get("default"))
    if not isinstance(argument, str) or binding not in BINDINGS or list(_ref_names(default)) \
            or (binding == "fixed" and default is not None):
        raise CheckpointError(f"op {op!r}: bad input binding {argument!r} {binding!r} {default!r}")
    return InputSpec(argument, binding, default)


# (a manifest may hold any JSON where a mapping or list is expected: .items() / [i] of the wrong type)
_BAD_JSON = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, json.JSONDecodeError)


def _read_manifest(manifest, tensors: Dict[str, torch.Tensor]):
    """(program, layers) of a static file's decoded manifest and tensors, every check made: a
    CheckpointError, or KeyError / TypeError / ... for JSON of the wrong shape (load_static says
    which file)."""
    if manifest.get("format") != STATIC_FORMAT:
        raise CheckpointError(f"format {manifest.get('format')!r}; this version reads {STATIC_FORMAT!r}")
    layers = {str(name): build_layer(str(name), entry, tensors) for name, entry in manifest["layers"].items()}
    claimed = {f"layers.{n}.{k}" for n, e in manifest["layers"].items() for k in e.get("tensors", [])}
    claimed |= {f"constants.{e['name']}" for e in manifest["program"] if e["kind"] == "constant"}
    if claimed != set(tensors):
        raise CheckpointError(f"tensors in the file {sorted(set(tensors) ^ claimed)} disagree with the manifest")
    program: List[tuple] = []
    defined = set()
    for e in manifest["program"]:
        name, kind, inputs = str(e["name"]), e["kind"], [str(i) for i in e["inputs"]]
        if name in defined:  # (two inputs of one name: every call failed binding its arguments)
            raise CheckpointError(f"op {name!r} is defined twice")
        missing = [i for i in inputs if i not in defined]
        if missing:
            raise CheckpointError(f"op {name!r} reads {missing} before they are computed")
        if kind == "module":
            if name not in layers:
                raise CheckpointError(f"op {name!r} has no layer")
            _check_arity(name, layers[name], inputs)
            program.append((name, "module", inputs, None))
        elif kind == "input":
            program.append((name, "input", [], _input_spec(name, e)))
        elif kind == "constant":  # a float tensor the forward reads: its dtype and shape as the manifest says
            dtype, shape = _CONSTANT_DTYPES.get(e["dtype"]), e["shape"]
            if inputs or dtype is None or not isinstance(shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise CheckpointError(f"op {name!r}: a constant takes no inputs and has a float dtype "
                                      f"({', '.join(_CONSTANT_DTYPES)}) and a shape of sizes >= 0")
            constant = tensors[f"constants.{name}"]
            _check_tensor(f"op {name!r}", constant, dtype, shape)
            if not torch.isfinite(constant).all():
                raise CheckpointError(f"op {name!r}: a constant with NaN or Inf values")
            program.append((name, "call", [], ("get_attr", constant, (), {})))
        elif kind == "output":
            structure = _decode(e["structure"])
            _check_refs(name, structure, defined)
            reads = sorted(set(_ref_names(structure)))
            if not inputs or reads != sorted(set(inputs)):
                # a structure reading no value is a constant: the model would ignore its input
                raise CheckpointError(f"op {name!r}: the output structure reads {reads}, not the op's inputs "
                                      f"{inputs}")
            program.append((name, "output", inputs, structure))
        elif kind == "call":
            c = e["call"]
            how, target = c["how"], c["target"]
            if how == "call_function" and target in _FUNCTIONS:
                target = _FUNCTIONS[target]
            elif not (how == "call_method" and target in _METHODS):
                raise CheckpointError(f"op {name!r}: {how} {target!r} is not allowed")
            cargs, ckwargs = _decode(c["args"]), _decode(c["kwargs"])
            _check_refs(name, (cargs, ckwargs), defined)
            _check_call(name, how, cargs, ckwargs, inputs)
            if target is _tensor_shape and (len(cargs) != 2 or cargs[1] != "shape" or ckwargs):
                raise CheckpointError(f"op {name!r}: getattr reads only a tensor's 'shape', got {cargs[1:]!r}")
            target, cargs, ckwargs = _replayed_call(name, how, target, cargs, ckwargs)
            program.append((name, "call", inputs, (how, target, cargs, ckwargs)))
        else:
            raise CheckpointError(f"op {name!r}: unknown kind {kind!r}")
        defined.add(name)
    if [op[1] for op in program].count("output") != 1 or program[-1][1] != "output":
        raise CheckpointError("the program must end with its one output op")
    _check_output_reads_an_input(program)
    check_outputs_not_constant(program, layers)
    _check_int8_flow(program, layers)
    return program, layers


def load_static(path, model=None) -> StaticGraphModel:
    """Read a file written by save_static (the graph is in the file: ``model`` is not needed; when
    given, each layer of the file is checked against the model's module of its name:
    persist_skeleton.py).  Raises CheckpointError on anything inconsistent."""
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: aligned(f.get_tensor(k)) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        program, layers = _read_manifest(loads_bounded(meta[_META_KEY]), tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except _BAD_JSON as exc:
        raise CheckpointError(f"{path}: invalid static manifest: {type(exc).__name__}: {exc}") from exc
    if model is not None:
        try:
            check_static_layers_against_model(layers, model)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return StaticInt8Model(program, layers).eval()


# mono_quant.save / mono_quant.load hand static models and files over to this module
register_file_kind(FileKind("static int8 model", saves_as_static,
                            lambda obj, path, overwrite: save_static(getattr(obj, "model", obj), path, overwrite),
                            is_static_file, load_static))
