"""StaticGraphModel: runs a fusion plan, in float (for calibration) or static int8.

The plan's ops run in order; each op with a module is ``layers[name]`` called
on its inputs; float ops replay the traced call.  The float modules here
(``FusedConvFloat`` ...) are what calibration observes: their outputs are the
fused outputs (after folded BatchNorm and ReLU), exactly the tensors static
int8 requantizes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module

from .arguments import bind_inputs
from .capture import FusionPlan, PlanOp, ValueRef
from .casts import refuse_casts
from .compiled import CompilesAsOneOp
from .eager_only import refuse_traced_input, warn_if_grad_input
from .layer_errors import raise_named_input_problem
from .modules import _StaticBase, check_flag
from .modules_eltwise import StaticCat
from .qparams_state import check_before_load

__all__ = ["FusedFloat", "FusedConvFloat", "FusedLinearFloat", "FusedAddFloat", "FusedCatFloat", "FusedGapFloat",
           "StaticGraphModel", "float_graph", "apply_act"]


def apply_act(y: torch.Tensor, act: Optional[str]) -> torch.Tensor:
    if act == "relu":
        return F.relu(y)
    if act == "relu6":
        return F.relu6(y)
    return y


class FusedFloat(nn.Module):
    """Marker base of the fused float ops (what the Calibrator hooks)."""


class FusedConvFloat(FusedFloat):
    def __init__(self, conv: nn.Module, act: Optional[str]):  # an nn.Conv2d or nn.Conv1d
        super().__init__()
        self.conv, self.act = conv, act

    def forward(self, x):
        return apply_act(self.conv(x), self.act)


class FusedLinearFloat(FusedFloat):
    def __init__(self, linear: nn.Linear, act: Optional[str]):
        super().__init__()
        self.linear, self.act = linear, act

    def forward(self, x):
        return apply_act(self.linear(x), self.act)


class FusedAddFloat(FusedFloat):
    """act(a + b); ``const``: b is that constant (a float buffer), the op takes a alone.
    ``broadcast`` records whether a call ever broadcast (the int8 add then expands)."""

    def __init__(self, act: Optional[str], const: Optional[torch.Tensor] = None):
        super().__init__()
        self.act = act
        self.broadcast = const is not None
        self.register_buffer("const", None if const is None else const.detach().to(torch.float32).clone())

    def forward(self, a, b=None):
        if b is None:
            b = self.const
        if a.shape != b.shape:
            self.broadcast = True
        return apply_act(a + b, self.act)


class FusedCatFloat(FusedFloat):
    """torch.cat; ``seen_rank`` records its inputs' rank (-1 when they differed)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.seen_rank: Optional[int] = None

    def forward(self, *xs):
        r = xs[0].dim()
        one_rank = all(x.dim() == r for x in xs) and self.seen_rank in (None, r)
        self.seen_rank = r if one_rank else -1
        return torch.cat(xs, self.dim)


class FusedGapFloat(FusedFloat):
    def __init__(self, flatten: bool):
        super().__init__()
        self.flatten = check_flag("flatten", flatten)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, 1)
        return torch.flatten(y, 1) if self.flatten else y


def _global_hooks() -> bool:
    return bool(_torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks)


def _resolve(obj, env: Dict[str, Any]):
    if isinstance(obj, ValueRef):
        return env[obj.name]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, env) for v in obj)
    if isinstance(obj, list):
        return [_resolve(v, env) for v in obj]
    if isinstance(obj, dict):
        return {k: _resolve(v, env) for k, v in obj.items()}
    if isinstance(obj, slice):  # a bound computed in the graph (h[:, : h.shape[1] // 2])
        return slice(_resolve(obj.start, env), _resolve(obj.stop, env), _resolve(obj.step, env))
    return obj


class StaticGraphModel(CompilesAsOneOp, nn.Module):
    """A model as a list of ops over named values; ``layers`` holds the op modules.

    ``program`` entries: (name, kind, inputs, call).  kind "input" binds a forward
    argument (call: its arguments.InputSpec, or None: a required one of its name),
    "module" calls ``layers[name]`` on its inputs, "call" replays a traced function /
    method call, "output" returns."""

    def __init__(self, program: List[tuple], layers: Dict[str, nn.Module]):
        super().__init__()
        self.program = program
        self.layers = nn.ModuleDict(layers)
        self._register_for_compile()

    def _apply(self, fn, *args, **kwargs):
        refuse_casts(fn, "a static int8 model")  # before any layer converts a tensor
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        check_before_load(self, state_dict)  # a model calibrated otherwise: refused before any copy
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def one_tensor_in_and_out(self) -> bool:
        inputs = sum(1 for _, kind, _, _ in self.program if kind == "input")  # (dynamo of torch < 2.5: no list.count)
        return inputs == 1 and isinstance(self.program[-1][3], ValueRef)

    def accepts_arguments(self, args: tuple, kwargs: dict) -> bool:
        """Whether ``forward(*args, **kwargs)`` binds to the captured inputs (the calibrator asks:
        forward's own signature is ``*args, **kwargs``)."""
        try:
            bind_inputs(self.program, args, kwargs)
        except TypeError:
            return False
        return True

    def forward(self, *args, **kwargs):
        compiled = self.compiled_call(args, kwargs)  # torch.compile: the whole model as one op (compiled.py)
        if compiled is not None:
            return compiled
        return self._forward_eager(*args, **kwargs)

    def _forward_eager(self, *args, **kwargs):
        """The eager forward (what the compiled op runs: it never calls the op again)."""
        refuse_traced_input(args)
        warn_if_grad_input(args)
        # (one warning a call: the inputs' above, else the first static layer's whose input requires grad)
        grad = torch.is_grad_enabled() and not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        env: Dict[str, Any] = bind_inputs(self.program, args, kwargs)
        for name, kind, ins, call in self.program:
            if kind == "module":
                m = self._modules["layers"]._modules[name]
                # no hooks on it: its forward directly (nn.Module.__call__ costs ~2 us a layer)
                fn = m.forward if not (m._forward_hooks or m._forward_pre_hooks or _global_hooks()) else m
                if grad and isinstance(m, _INT8_LAYERS) and any(
                        isinstance(env[i], torch.Tensor) and env[i].requires_grad for i in ins):
                    warn_if_grad_input([env[i] for i in ins])  # (a float layer that trains before it: no gradient)
                    grad = False
                try:  # (free when nothing is raised)
                    env[name] = fn(*[env[i] for i in ins])
                except ValueError:
                    raise_named_input_problem(m, name, [env[i] for i in ins])  # the wrong input width: which layer
                    raise
            elif kind == "input":
                pass  # (bound above)
            elif kind == "call":
                how, target, cargs, ckwargs = call
                cargs, ckwargs = _resolve(cargs, env), _resolve(ckwargs, env)
                if how == "call_function":
                    env[name] = target(*cargs, **ckwargs)
                elif how == "call_method":
                    receiver = cargs[0]
                    if target in _NEEDS_CONTIGUOUS and isinstance(receiver, torch.Tensor) \
                            and not receiver.is_contiguous():
                        receiver = receiver.contiguous()  # a static layer's NHWC view: contiguous in float
                    env[name] = getattr(receiver, target)(*cargs[1:], **ckwargs)
                else:  # get_attr: a constant
                    env[name] = target
            else:  # output
                return _contiguous_outputs(_resolve(call, env))
        return None


#: the layers whose kernels record no backward (the program's float modules do)
_INT8_LAYERS = (_StaticBase, StaticCat)

#: methods that need the strides the float model's tensor has (contiguous after a float conv):
#: a static layer's float output is a channels-last view (nchw_output), on which they fail
_NEEDS_CONTIGUOUS = frozenset({"view", "view_as"})


def _contiguous_outputs(value):
    """The model's outputs with a static layer's channels-last view made contiguous, as the float
    conv / add / cat returns it (code after the model may .view it); anything else as it is."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 4 and not value.is_contiguous() \
                and value.is_contiguous(memory_format=torch.channels_last):
            return value.contiguous()
        if value.dim() == 3 and not value.is_contiguous() and value.transpose(1, 2).is_contiguous():
            return value.contiguous()  # (a StaticConv1d's [batch, channels, length] view)
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_contiguous_outputs(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_contiguous_outputs(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _contiguous_outputs(v)) for k, v in value.items())
    return value


def float_op_entry(op: PlanOp, layers: Dict[str, nn.Module]) -> tuple:
    """The program entry of an op that stays float (a traced call or module)."""
    if op.kind == "input":
        return (op.name, "input", [], op.spec)
    if op.kind == "output":
        return (op.name, "output", op.inputs, op.output_structure)
    how, target, args, kwargs = op.call
    if how == "call_module":
        if kwargs or not all(isinstance(a, ValueRef) for a in args):
            # a module called with constants or keywords: replay the call on the module
            layers[op.name] = op.module
            return (op.name, "call", op.inputs, ("call_function", layers[op.name], args, kwargs))
        layers[op.name] = op.module
        return (op.name, "module", [a.name for a in args], None)
    return (op.name, "call", op.inputs, op.call)


def float_graph(plan: FusionPlan) -> StaticGraphModel:
    """The plan run in float with the fused ops as FusedFloat modules (calibration, SQNR reference)."""
    layers: Dict[str, nn.Module] = {}
    program = []
    for op in plan.ops:
        if op.kind in ("conv", "conv1d"):
            layers[op.name] = FusedConvFloat(op.module, op.act)
        elif op.kind == "linear":
            layers[op.name] = FusedLinearFloat(op.module, op.act)
        elif op.kind == "add":
            layers[op.name] = FusedAddFloat(op.act, op.const)
        elif op.kind == "cat":
            layers[op.name] = FusedCatFloat(op.dim)
        elif op.kind == "gap":
            layers[op.name] = FusedGapFloat(op.flatten)
        else:
            program.append(float_op_entry(op, layers))
            continue
        program.append((op.name, "module", list(op.inputs), None))
    return StaticGraphModel(program, layers).eval()
