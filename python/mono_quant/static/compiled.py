"""A static int8 model under ``torch.compile`` (``fullgraph=True`` included): one custom op.

The static kernels read and write their tensors' memory through NumPy, which dynamo cannot
trace (it broke the graph there, and ``fullgraph=True`` failed on torch's own error).  So a
static model (StaticGraphModel, StaticInt8Model, the per-layer fallback's PerLayerStatic)
with one tensor in and one tensor out is, inside a compiled graph, one call of the op
``mono_quant::static_forward(x, model)``, whose implementation runs the model's eager
forward on the real input: the same kernels, the same bits.  ``model`` is a key into a
table of this process's live models (an op takes no Python object); each model gets its own
random key when it is built or copied.  The op's fake implementation (the output's shape and dtype while
tracing) runs the model once on zeros of the input's shape (of batch 1 and 2 when the batch
is a symbolic size): a static model's output shape follows from its input's.  Only the batch
may be dynamic: the other sizes are specialized (``mark_dynamic`` on them fails in torch).
torch.export still refuses a static model (``eager_only.py``): its graph would call back
into Python.  (torch < 2.6 has no ``is_exporting``: export records the op there, which runs
in the exporting process and fails with a clear error in any other.)
"""
from __future__ import annotations

import secrets
import weakref
from typing import Dict, Optional

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from ..no_torchscript import RefusesTorchScript
from ..torch_features import is_exporting

__all__ = ["CompilesAsOneOp"]

_LIB = torch.library.Library("mono_quant", "FRAGMENT")  # the namespace kernels/torch_library.py defines
_LIB.define("static_forward(Tensor x, int model) -> Tensor")

_MODELS: Dict[int, "weakref.ref"] = {}
_SHAPES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {input shape, dtype: output}


def _register(module) -> int:
    # a random key, not a count: a graph that outlives this process (a program exported on a torch
    # without is_exporting, a compile cache) never finds another process's model under its key
    key = secrets.randbits(62)
    while key in _MODELS:
        key = secrets.randbits(62)
    _MODELS[key] = weakref.ref(module, lambda _, key=key: _MODELS.pop(key, None))
    return key


def _model(key: int):
    ref = _MODELS.get(key)
    module = ref() if ref is not None else None
    if module is None:
        raise RuntimeError(f"mono_quant::static_forward: static int8 model {key} no longer exists (the compiled "
                           f"function outlived the model it was compiled from, or runs in another process: a "
                           f"static model's graph calls back into that model; export is not supported)")
    return module


def _eager(module, x: torch.Tensor) -> torch.Tensor:
    # the model's eager forward, never its forward (which under dynamo's tracing, in the fake
    # implementation's probe, would call the op again); no shared state, so threads may call
    # compiled models at once (a global "inside the op" counter made dynamo guard on it)
    with torch.no_grad():
        out = module._forward_eager(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"static int8 model returned a {type(out).__name__}, not a tensor, under torch.compile")
    # a fresh contiguous tensor: the strides the fake implementation promises, never the input's memory
    out = out.contiguous()
    return out.clone() if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() else out


def _static_forward(x: torch.Tensor, model: int) -> torch.Tensor:
    return _eager(_model(model), x)


def _probe(module, shape, dtype) -> tuple:
    """(output shape, dtype) of the model on zeros of ``shape`` (cached per model)."""
    cache = _SHAPES.setdefault(module, {})
    key = (tuple(shape), dtype, tuple(map(id, module.modules())))  # (a replaced layer: probed again)
    if key not in cache:
        with unset_fake_temporarily():
            out = _eager(module, torch.zeros(shape, dtype=dtype))
        cache[key] = (tuple(out.shape), out.dtype)
    return cache[key]


def _static_forward_fake(x: torch.Tensor, model: int) -> torch.Tensor:
    module = _model(model)
    batch, rest = x.shape[0] if x.dim() else None, [int(s) for s in x.shape[1:]]  # (int(): specialized)
    if isinstance(batch, int) or batch is None:
        shape, dtype = _probe(module, [int(s) for s in x.shape], x.dtype)
        return x.new_empty(shape, dtype=dtype)
    one, two = _probe(module, [1] + rest, x.dtype), _probe(module, [2] + rest, x.dtype)
    if one[0][:1] == (1,) and two[0][:1] == (2,) and one[0][1:] == two[0][1:]:  # the batch passes through
        return x.new_empty((batch, *one[0][1:]), dtype=one[1])
    shape, dtype = _probe(module, [int(batch)] + rest, x.dtype)
    return x.new_empty(shape, dtype=dtype)


torch.library.impl("mono_quant::static_forward", "CPU", lib=_LIB)(_static_forward)
torch.library.register_fake("mono_quant::static_forward", _static_forward_fake, lib=_LIB)


class CompilesAsOneOp(RefusesTorchScript):
    """Mixed into a static model (before nn.Module): its key in the table of live models,
    given at construction and again to a copy, and :meth:`compiled_call`.  The model's
    ``forward`` returns ``compiled_call``'s op when it gives one, else ``_forward_eager``,
    the eager body the op runs."""

    torchscript_alternatives = "torch.compile (the model is one op in its graph) or the eager model"

    def _register_for_compile(self) -> None:
        self._static_op_key = _register(self)

    def __setstate__(self, state):  # deepcopy / copy / unpickling: the copy is another model
        super().__setstate__(state)
        self._register_for_compile()

    def compiled_call(self, args, kwargs) -> Optional[torch.Tensor]:
        """Under torch.compile (not torch.export), the op call standing for this model's forward
        on one tensor; None otherwise (eager, or not one tensor in: dynamo breaks the graph)."""
        if not torch.compiler.is_compiling() or is_exporting():
            return None
        if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor) or not self.one_tensor_in_and_out():
            torch._dynamo.graph_break(
                msg="a static int8 model runs as one op under torch.compile only when called on one tensor and "
                    "returning one; compile without fullgraph=True (it runs eagerly between graphs), or quantize "
                    "with dynamic int8 activations (mono_quant.quantize(model, 'int8'))")
            return None
        # detached, as the eager forward takes it: no gradient flows through static int8 kernels
        return torch.ops.mono_quant.static_forward(args[0].detach(), self._static_op_key)

    def one_tensor_in_and_out(self) -> bool:
        """Whether the model takes one tensor and returns one (what the op can stand for)."""
        return True
