"""A static layer's refusal of its input, naming the layer in its model when it runs as one step
of a model in Python (the eager graph, the per-layer fallback), as the one-call program names
it: the layer alone knows only its shape (``StaticLinear(16, 32) takes in_features=16 ...``)."""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["raise_named_input_problem"]


def raise_named_input_problem(layer, name: Optional[str], args: Sequence) -> None:
    """Called while handling the ValueError ``layer(*args)`` raised: raise it again as
    ``static int8 layer 'name': <the layer's message>`` when it was the layer's input check
    (``input_problem``) refusing ``args``; return otherwise (the caller re-raises as it was).
    The check runs only on this error path: the call itself costs nothing more."""
    check = getattr(layer, "input_problem", None)
    if check is None or name is None or len(args) != 1:
        return
    problem = check(args[0])
    if problem:
        raise ValueError(f"static int8 layer {name!r}: {problem}") from None
