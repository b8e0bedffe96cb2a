"""A guard a model carries as one of its own methods (an instance attribute), holding the model weakly.

``functools.partial(fn, model)`` in ``model.__dict__`` made a reference cycle (model -> its dict ->
the partial -> model) that only Python's full collection frees: a quantized model outlived ``del``
by gigabytes until then.  A copy (``copy.deepcopy``, pickling) gets a guard bound to the copy.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

__all__ = ["BoundGuard"]


class BoundGuard:
    """``fn(model, *args, **kwargs)`` for one model, which it does not keep alive."""

    __slots__ = ("fn", "model_ref", "__weakref__")

    def __init__(self, fn: Callable[..., Any], model: Any):
        self.fn = fn
        self.model_ref = weakref.ref(model)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model = self.model_ref()
        if model is None:  # (only reachable through a reference kept to the guard alone)
            raise ReferenceError(f"{getattr(self.fn, '__name__', 'guard')}: its model no longer exists")
        return self.fn(model, *args, **kwargs)

    def __reduce__(self):
        return type(self), (self.fn, self.model_ref())
