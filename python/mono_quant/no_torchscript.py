"""torch.jit.script refuses quantized modules with what to do.

Their forwards call mono-quant's kernels from Python (NumPy views, format objects, Python
control flow), which TorchScript cannot compile: it failed deep inside its frontend
("Unknown type annotation: 'bool'", "Can't redefine method: __format_getter", "Cannot create
dict for key type '(int, int)'").  ``torch.jit.script`` calls ``__prepare_scriptable__`` on
the module and on every submodule before compiling, so one quantized layer anywhere in a
model stops it there, naming the layer's type and the ways that work.
"""
from __future__ import annotations

__all__ = ["RefusesTorchScript"]


class RefusesTorchScript:
    """Mixed into quantized modules (before nn.Module).  ``torchscript_alternatives`` says
    what records or runs this module instead."""

    torchscript_alternatives = ("torch.compile, torch.export.export or torch.jit.trace (they record its "
                                "torch.ops.mono_quant kernels)")

    def __prepare_scriptable__(self):
        raise NotImplementedError(
            f"torch.jit.script can't compile {type(self).__name__}: its forward calls mono-quant's kernels from "
            f"Python; use {self.torchscript_alternatives} (docs/ecosystem.md)")
