"""Static int8 models run eagerly: their kernels read the input's memory (``.numpy()``), which a
traced input (torch.export's FakeTensor, make_fx, any tensor subclass) has none of.  Refuse
such an input with what to do, instead of torch's ".numpy() is not supported for tensor
subclasses".  (torch.compile works, ``fullgraph=True`` too: the model is one op in its graph,
which runs it eagerly; see compiled.py.)"""
from __future__ import annotations

import torch

from ..warn_site import warn_at_caller
from ..torch_features import is_exporting

__all__ = ["refuse_traced_input", "warn_if_grad_input", "StaticNoGradWarning"]


class StaticNoGradWarning(UserWarning):
    """A static int8 model's output is detached from an input that requires grad."""


def refuse_traced_input(args) -> None:
    """NotImplementedError when a tensor among ``args`` is a tensor subclass (a traced input), or
    under torch.jit.trace."""
    if torch.jit.is_tracing():
        # the kernels write the output through NumPy, which a trace does not record: the traced
        # module would return the uninitialized memory of its recorded torch.empty
        raise NotImplementedError(
            "static int8 models can't be traced with torch.jit.trace: their kernels fill the output outside "
            "torch, so the traced module would return uninitialized memory; run the model eagerly or with "
            "torch.compile, or quantize with dynamic int8 activations (mono_quant.quantize(model, 'int8')), "
            "which torch.jit.trace records")
    exporting = is_exporting()
    if torch.compiler.is_compiling() and not exporting:
        return  # torch.compile: the model's op (or a graph break) runs it eagerly on real tensors
    for x in args:
        if exporting or (isinstance(x, torch.Tensor) and type(x) is not torch.Tensor
                         and not isinstance(x, torch.nn.Parameter)):
            raise NotImplementedError(
                f"static int8 models run eagerly only (got a {type(x).__name__} input under torch.export, make_fx or "
                f"a tensor subclass): export_onnx / torch.export need a dynamic int8 or weight-only model "
                f"(mono_quant.quantize(model, 'int8')); torch.compile runs a static model as one op")


def warn_if_grad_input(args) -> None:
    """A warning (once per process, Python's default filter) for an input that requires grad while
    grad mode is on: the int8 kernels record no backward, so the output is detached and what trains
    before the static layers would get no gradient from them.  Not an error: a model whose float
    layers keep requires_grad, called without no_grad, is the common case and wants only outputs."""
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in args):
        warn_at_caller("static int8 layers are inference-only: no gradient flows back through int8 activations, "
                       "so this output is detached from an input that requires grad; run the model under "
                       "torch.no_grad() to silence this, or quantize with dynamic activations "
                       "(mono_quant.quantize(model, 'int8')) to train through it", StaticNoGradWarning)
