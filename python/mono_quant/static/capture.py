"""Graph capture for static int8: a torch.fx trace turned into a fusion plan.

The plan is the model's computation as a list of ``PlanOp`` in execution
order, with the patterns static int8 runs as one kernel already fused:

- ``conv``: Conv2d (+ BatchNorm2d folded into its weight and bias) (+ ReLU / ReLU6)
- ``conv1d``: Conv1d (+ BatchNorm1d folded) (+ ReLU / ReLU6)
- ``linear``: Linear (+ BatchNorm1d folded) (+ ReLU / ReLU6)
- ``add``: a residual ``a + b`` of two tensors, or of a tensor and a constant (a
  buffer / parameter or a number, in ``const``) (+ ReLU / ReLU6)
- ``cat``: ``torch.cat`` of tensors along ``dim`` (of the traced, NCHW tensors)
- ``gap``: global average pooling (AdaptiveAvgPool2d(1) or ``mean((2, 3))``), + ``flatten(x, 1)``
- ``float``: anything else, run as traced, in float

Each fused op records the fx nodes it absorbed (for the report).  The model
is never modified: folded layers are new modules (fold_batchnorm.py).
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..fold_batchnorm import fold_batchnorm
from .arguments import InputSpec

__all__ = ["PlanOp", "FusionPlan", "ValueRef", "build_plan", "TraceError", "LAYER_KINDS"]


class TraceError(RuntimeError):
    """torch.fx could not trace the model (the caller falls back to per-layer static int8)."""


@dataclass(frozen=True)
class ValueRef:
    """A reference to another op's output inside a float op's arguments."""
    name: str


@dataclass
class PlanOp:
    name: str
    kind: str                        # input, conv, linear, add, cat, gap, float, output
    inputs: List[str] = field(default_factory=list)
    module: Optional[nn.Module] = None   # conv / linear: the (folded) float layer; float call_module: the module
    act: Optional[str] = None        # None, "relu", "relu6"
    flatten: bool = False            # gap: flattened to [batch, channels]
    fused: List[str] = field(default_factory=list)  # names of the fx nodes this op absorbed
    # float ops: how to call them (op is call_module / call_function / call_method / get_attr)
    call: Optional[Tuple[str, Any, tuple, dict]] = None
    output_structure: Any = None     # output op: the model's output with ValueRefs at the tensors
    const: Optional[torch.Tensor] = None  # add: the constant operand (float32), when not a second tensor
    dim: int = 0                     # cat: the dimension concatenated
    seen_rank: Optional[int] = None  # cat: the rank of its inputs in calibration (-1: not one rank)
    spec: Optional[InputSpec] = None  # input: the forward argument it binds (arguments.py)


@dataclass
class FusionPlan:
    ops: List[PlanOp]
    not_fused: List[Tuple[str, str]]  # (fx node, why it stays in float)
    # (layer name, type, why) of each Conv2d / Linear ``keep_float`` kept in float (include / exclude)
    kept_float: List[Tuple[str, str, str]] = field(default_factory=list)

    def op(self, name: str) -> PlanOp:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)

    def consumers(self) -> Dict[str, List[Tuple[str, int]]]:
        """value name -> [(consumer op, input position)]."""
        out: Dict[str, List[Tuple[str, int]]] = {o.name: [] for o in self.ops}
        for o in self.ops:
            for i, v in enumerate(o.inputs):
                out.setdefault(v, []).append((o.name, i))
        return out


# modules that return their input in eval mode
_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_RELU_FUNCS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)


def _bound_args(node: fx.Node, names: Tuple[str, ...]) -> Optional[dict]:
    """A call node's arguments by parameter name (``names``, in the function's order), or None for arguments
    the function would not bind (too many, an unknown keyword, one given twice)."""
    if len(node.args) > len(names) or any(key not in names for key in node.kwargs) \
            or any(key in node.kwargs for key in names[:len(node.args)]):
        return None
    return dict(zip(names, node.args), **node.kwargs)


def _stochastic_depth_input(node: fx.Node) -> Optional[fx.Node]:
    """The input node when ``node`` calls torchvision.ops.stochastic_depth (EfficientNet's and ConvNeXt's blocks; fx keeps
    it a call, it is fx.wrap'ed) with ``training=False`` or ``p=0`` as constants: it returns its input then
    (torchvision's own rule), so the static program runs none (and a file needs no function outside its
    allow-list); else None.  Known by module and name, as nothing is imported for it; arguments torchvision
    would refuse (p outside [0, 1], another mode) keep the call, which raises as the float model does."""
    target = node.target
    if (node.op != "call_function" or getattr(target, "__module__", None) != "torchvision.ops.stochastic_depth"
            or getattr(target, "__name__", None) != "stochastic_depth"):
        return None
    names = ("input", "p", "mode", "training")
    bound = _bound_args(node, names)
    if bound is None:
        return None
    x, p, mode, training = (bound.get(name, True if name == "training" else None) for name in names)
    if not isinstance(x, fx.Node) or isinstance(p, bool) or not isinstance(p, (int, float)) \
            or not 0.0 <= p <= 1.0 or mode not in ("batch", "row") or not isinstance(training, bool):
        return None
    return x if not training or p == 0.0 else None


def _activation_of(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[str]:
    """'relu' / 'relu6' when the node is a plain ReLU / ReLU6 of its only tensor input."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is nn.ReLU:
            return "relu"
        if type(m) is nn.ReLU6 or (type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0):
            return "relu6"
    elif node.op == "call_function" and node.target in _RELU_FUNCS:
        return _RELU_FUNCS[node.target] if _tensor_call_args(node, ("input", "inplace")) is not None else None
    elif node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1:
        return "relu"
    elif node.op == "call_function" and node.target in _CLAMP_FUNCS:
        return _clamp_activation(node, _CLAMP_FUNCS[node.target])
    elif node.op == "call_method" and node.target in ("clamp", "clamp_"):
        return _clamp_activation(node, ("input", "min", "max"))
    return None


#: functional clamps and their parameter names: F.hardtanh(x, 0, 6) and torch.clamp(x, 0, 6) are ReLU6,
#: torch.clamp(x, min=0) a ReLU, as the modules are
_CLAMP_FUNCS = {F.hardtanh: ("input", "min_val", "max_val", "inplace"), torch.clamp: ("input", "min", "max")}


def _tensor_call_args(node: fx.Node, names: Tuple[str, ...]) -> Optional[dict]:
    """An activation call's arguments by name (_bound_args) when its tensor comes first and positionally and an
    ``inplace`` flag, if any, is a bool (either value: the fused op writes a new tensor); else None."""
    bound = _bound_args(node, names)
    if bound is None or "input" in node.kwargs or not isinstance(bound.get("input"), fx.Node) \
            or not isinstance(bound.get("inplace", False), bool):
        return None
    return bound


def _clamp_activation(node: fx.Node, names: Tuple[str, ...]) -> Optional[str]:
    """'relu6' / 'relu' for a clamp of its tensor (_tensor_call_args) to [0, 6] / [0, inf) given as
    constants (positionally or by name), else None."""
    bound = _tensor_call_args(node, names)
    if bound is None:
        return None
    defaults = (-1.0, 1.0) if node.target is F.hardtanh else (None, None)
    lo, hi = (bound.get(name, default) for name, default in zip(names[1:3], defaults))
    if any(isinstance(v, bool) or not (v is None or isinstance(v, (int, float))) for v in (lo, hi)):
        return None
    if lo == 0 and hi == 6:
        return "relu6"
    return "relu" if lo == 0 and hi is None else None


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_gap(node: fx.Node, modules) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1))
    return False


def _is_flatten1(node: fx.Node, modules) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        return tuple(node.args[1:]) in ((1,), (1, -1)) and not node.kwargs
    if node.op == "call_method" and node.target == "flatten":
        return tuple(node.args[1:]) in ((1,), (1, -1)) and not node.kwargs
    return False


# what reads a Python number (or a torch.Size) off a traced tensor, and what computes with those
_NUMBER_METHODS = ("size", "dim", "numel", "nelement", "item")
_NUMBER_ATTRS = ("shape", "ndim")
_NUMBER_OPS = (operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
               operator.mod, operator.neg, operator.pow, len)


def _makes_number(node: fx.Node, numbers: set) -> bool:
    """Whether the node computes a Python number / torch.Size, not a tensor (``x.shape[0]``,
    ``x.size(1) // 2``): a shape read, or arithmetic on nodes in ``numbers`` only."""
    if node.op == "call_method":
        return node.target in _NUMBER_METHODS
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return len(node.args) == 2 and node.args[1] in _NUMBER_ATTRS
    reads = node.all_input_nodes
    return node.target in _NUMBER_OPS and bool(reads) and all(n in numbers for n in reads)


def _is_add(node: fx.Node, numbers: set) -> bool:
    """A tensor + tensor add (``x.shape[0] + y`` adds a traced number: not one)."""
    if node.kwargs:
        return False
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCS) or (
        node.op == "call_method" and node.target in ("add", "add_"))
    return is_add and len(node.args) == 2 and all(isinstance(a, fx.Node) and a not in numbers for a in node.args)


_CAT_FUNCS = (torch.cat, torch.concat, torch.concatenate)


def _cat_operands(node: fx.Node):
    """(tensor nodes, dim) of ``torch.cat(tensors, dim)``, or None."""
    if node.op != "call_function" or node.target not in _CAT_FUNCS or not node.args:
        return None
    if set(node.kwargs) - {"dim", "axis"} or len(node.args) > 2:
        return None
    seq = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", node.kwargs.get("axis", 0))
    if not isinstance(seq, (list, tuple)) or not seq or not all(isinstance(a, fx.Node) for a in seq) \
            or isinstance(dim, bool) or not isinstance(dim, int):
        return None
    return list(seq), dim


def _constant_of(arg, root: nn.Module) -> Optional[torch.Tensor]:
    """A number, or a float buffer / parameter read by get_attr, as a float32 tensor; else None."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return torch.tensor(float(arg), dtype=torch.float32)
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        try:
            value = operator.attrgetter(arg.target)(root)
        except AttributeError:
            return None
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.detach().to(torch.float32).clone()
    return None


def _add_with_constant(node: fx.Node, root: nn.Module, numbers: set):
    """(tensor node, constant) of ``x + c`` / ``c + x``, c a number or a float buffer / parameter."""
    if node.kwargs or len(node.args) != 2 or any(isinstance(a, fx.Node) and a in numbers for a in node.args):
        return None
    if not ((node.op == "call_function" and node.target in _ADD_FUNCS) or
            (node.op == "call_method" and node.target in ("add", "add_"))):
        return None
    a, b = node.args
    for x, c in ((a, b), (b, a)):
        if isinstance(x, fx.Node) and x.op != "get_attr":
            const = _constant_of(c, root)
            if const is not None:
                return x, const
    return None


#: the layers static int8 replaces: their plan kind and the BatchNorm folded into them
LAYER_KINDS = {nn.Conv2d: ("conv", nn.BatchNorm2d), nn.Conv1d: ("conv1d", nn.BatchNorm1d),
               nn.Linear: ("linear", nn.BatchNorm1d)}


def _bn_after(node: fx.Node, modules, bn_type) -> Optional[fx.Node]:
    user = _only_user(node)
    if user is not None and user.op == "call_module":
        m = modules.get(user.target)
        if type(m) is bn_type and m.track_running_stats and m.running_mean is not None:
            return user
    return None


def _refs(obj, names: Dict[fx.Node, str]):
    """fx arguments with every Node replaced by a ValueRef to the op producing it."""
    return fx.node.map_arg(obj, lambda n: ValueRef(names[n]))


def _input_names(obj) -> List[str]:
    found: List[str] = []

    def visit(x):
        if isinstance(x, ValueRef):
            found.append(x.name)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, slice):  # a bound computed from a traced shape: h[:, : h.shape[1] // 2]
            for v in (x.start, x.stop, x.step):
                visit(v)
    visit(obj)
    return found


# fx's check that an argument traced as a constant None is None at the call (the program checks it)
_ASSERT_IS_NONE = getattr(fx._symbolic_trace, "_assert_is_none", None)


def trace(model: nn.Module, none_args: Sequence[str] = ()) -> fx.GraphModule:
    """The fx graph; ``none_args``: forward arguments traced as None (their ``is None`` branches)."""
    try:
        return fx.symbolic_trace(model, concrete_args=dict.fromkeys(none_args) or None)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back, with the reason
        raise TraceError(f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {exc})") from exc


def build_plan(model: nn.Module, keep_float: Optional[Callable[[str, nn.Module], Optional[str]]] = None,
               none_args: Sequence[str] = ()) -> FusionPlan:
    """The fusion plan of an eval-mode model.  Raises TraceError when fx can't trace it.

    ``keep_float(name, layer)``: why a Conv2d / Linear stays float (then it runs as traced,
    nothing fused into it, listed in ``kept_float``), or None to quantize it.  ``none_args``:
    optional arguments captured as None (calibration never passes them; arguments.py)."""
    gm = trace(model, none_args)
    arguments = iter(_argument_names(model))
    modules = dict(gm.named_modules())
    kept_float: List[Tuple[str, str, str]] = []
    names: Dict[fx.Node, str] = {}      # fx node -> op whose output it is
    absorbed: Dict[fx.Node, str] = {}
    ops: List[PlanOp] = []
    not_fused: List[Tuple[str, str]] = []
    numbers: set = set()  # nodes computing Python numbers (sizes), not tensors

    def absorb_act(op: PlanOp, node: fx.Node) -> fx.Node:
        user = _only_user(node)
        if user is not None:
            act = _activation_of(user, modules)
            if act is not None:
                op.act = act
                op.fused.append(user.name)
                absorbed[user] = op.name
                return user
        return node

    for node in gm.graph.nodes:
        if _makes_number(node, numbers):
            numbers.add(node)
        if node in absorbed:
            names[node] = absorbed[node]
            continue
        if node.op == "call_module" and type(modules.get(node.target)) in _PASSTHROUGH and len(node.args) == 1 \
                and isinstance(node.args[0], fx.Node):
            names[node] = names[node.args[0]]  # identity in eval mode: the same value
            continue
        if node.op == "call_function" and node.target is _ASSERT_IS_NONE:
            continue  # (the input op's "fixed" binding checks it)
        passed = _stochastic_depth_input(node)
        if passed is not None:
            names[node] = names[passed]  # torchvision's stochastic depth of an eval model: its input
            continue
        if node.op == "placeholder":
            op = PlanOp(node.name, "input", spec=_input_spec(node, next(arguments, node.target), none_args))
        elif node.op == "output":
            op = PlanOp(node.name, "output", output_structure=_refs(node.args[0], names))
            op.inputs = _input_names(op.output_structure)
        elif node.op == "call_module" and type(modules.get(node.target)) in LAYER_KINDS \
                and len(node.args) == 1 and not node.kwargs:
            layer = modules[node.target]
            kind, bn_type = LAYER_KINDS[type(layer)]
            kept = keep_float(node.target, layer) if keep_float is not None else None
            if kept is not None:
                kept_float.append((node.target, type(layer).__name__, kept))
                op = _float_op(node, names, modules)
            else:
                op = PlanOp(node.name, kind, [names[node.args[0]]], module=layer)
                op.fused.append(node.name)
                last = node
                bn = _bn_after(node, modules, bn_type)
                if bn is not None:
                    op.module = fold_batchnorm(layer, modules[bn.target])
                    op.fused.append(bn.name)
                    absorbed[bn] = op.name
                    last = bn
                absorb_act(op, last)
        elif _is_add(node, numbers) and not any(a.op == "get_attr" for a in node.args):
            op = PlanOp(node.name, "add", [names[a] for a in node.args], fused=[node.name])
            absorb_act(op, node)
        elif _add_with_constant(node, gm, numbers) is not None:
            x, const = _add_with_constant(node, gm, numbers)
            op = PlanOp(node.name, "add", [names[x]], fused=[node.name], const=const)
            absorb_act(op, node)
        elif _cat_operands(node) is not None:
            seq, dim = _cat_operands(node)
            op = PlanOp(node.name, "cat", [names[a] for a in seq], fused=[node.name], dim=dim)
            op.call = (node.op, node.target, _refs(node.args, names), _refs(node.kwargs, names))
        elif _is_gap(node, modules):
            op = PlanOp(node.name, "gap", [names[node.args[0]]], fused=[node.name])
            user = _only_user(node)
            if user is not None and _is_flatten1(user, modules):
                op.flatten = True
                op.fused.append(user.name)
                absorbed[user] = op.name
        else:
            op = _float_op(node, names, modules)
            if node.op in ("call_module", "call_function", "call_method"):
                what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
                not_fused.append((node.name, f"{node.op} {what}: no int8 kernel, runs in float"))
        names[node] = op.name
        ops.append(op)
    return FusionPlan(_without_unused_constants(ops), not_fused, kept_float)


def _argument_names(model: nn.Module) -> List[str]:
    """forward's argument names in order (fx's placeholders, whose names may differ: ``mask_1``)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return []  # (fx's own placeholders: their targets)
    return [p.name for p in params]


def _input_spec(node: fx.Node, argument: str, none_args: Sequence[str]) -> InputSpec:
    if not node.args:
        return InputSpec(argument)
    default = node.args[0]
    if argument in none_args:
        return InputSpec(argument, "fixed", None)
    if default is None and node.users:
        return InputSpec(argument, "given")  # traced as a tensor: None would not run the graph
    return InputSpec(argument, "default", default)


def _without_unused_constants(ops: List[PlanOp]) -> List[PlanOp]:
    """The ops less the get_attr constants no op reads any more (an add took them in)."""
    used = {i for o in ops for i in o.inputs}
    return [o for o in ops if not (o.kind == "float" and o.call and o.call[0] == "get_attr" and o.name not in used)]


def _float_op(node: fx.Node, names, modules) -> PlanOp:
    args, kwargs = _refs(node.args, names), _refs(node.kwargs, names)
    op = PlanOp(node.name, "float", _input_names((args, kwargs)))
    if node.op == "call_module":
        op.module = modules[node.target]
        op.call = ("call_module", node.target, args, kwargs)
    elif node.op == "get_attr":
        value = operator.attrgetter(node.target)(modules[""])
        op.call = ("get_attr", value, (), {})
    else:
        op.call = (node.op, node.target, args, kwargs)
    return op
