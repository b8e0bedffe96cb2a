"""Stamps: what a layer's cached kernel arguments were built from, checked again in one C
call per forward (``_C.tensors_unchanged``, csrc/bind_stamp.c).

A stamp is a tuple of entries ``(where, name, value, version, data_ptr)``: the object
found at ``name`` in ``where`` (None: the module's ``__dict__``; a str: the dict of that
name in it, such as ``"_buffers"``; a dict: that dict, such as a module's globals) when
the stamp was made, and for a tensor its write counter and data pointer.  The stamp
holds while every name still gives the same object (so a replaced buffer, bias or
attribute is seen), and every tensor the same ``_version`` (an in-place write) and
``data_ptr()`` (``.data = ...``, ``share_memory_()``).  On a small layer that check,
written in Python, cost as much as a float conv's whole Python wrapper.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

from .. import _C

__all__ = ["make_stamp", "tensor_version", "tensors_unchanged", "tensors_unchanged_py"]

#: ``tensors_unchanged(module.__dict__, stamp) -> bool`` (the C function itself: no Python frame per call)
tensors_unchanged = _C.tensors_unchanged


def tensor_version(t: torch.Tensor) -> int:
    """A tensor's in-place write counter; tensors made under torch.inference_mode (and
    tensors given such a tensor's data with ``.data = ...``) have none: -1, only a
    replaced tensor or a moved storage is then seen."""
    try:
        return t._version
    except RuntimeError:
        return -1


def make_stamp(module, sources: Iterable[Tuple[object, str]]) -> tuple:
    """The stamp of ``module`` over ``sources``, pairs ``(where, name)`` as in the entries
    (a missing name is recorded as None).  Tensors get their version and data pointer,
    anything else is compared by identity only."""
    namespace = module.__dict__
    entries = []
    for where, name in sources:
        container = namespace if where is None else (where if isinstance(where, dict) else namespace.get(where))
        value = container.get(name) if isinstance(container, dict) else None
        if isinstance(value, torch.Tensor):
            entries.append((where, name, value, tensor_version(value), value.data_ptr()))
        else:
            entries.append((where, name, value, None, None))
    return tuple(entries)


def tensors_unchanged_py(namespace: dict, stamp: tuple) -> bool:
    """The pure-Python twin of :data:`tensors_unchanged` (the tests' oracle)."""
    for where, name, value, version, data_ptr in stamp:
        container = namespace if where is None else (where if isinstance(where, dict) else namespace.get(where))
        now: Optional[object] = container.get(name) if isinstance(container, dict) else None
        if now is not value:
            return False
        if version is not None and (tensor_version(now) != version or now.data_ptr() != data_ptr):
            return False
    return True
