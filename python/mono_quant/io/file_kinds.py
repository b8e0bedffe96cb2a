"""Files of another layout than the quantized-checkpoint one, which ``mono_quant.save``
and ``mono_quant.load`` hand over to the package that writes them (static int8 models:
``mono_quant.static.persist``).  The other package registers itself when it is imported,
so io/ never imports the packages built on top of it."""
from __future__ import annotations

import os
import stat
from typing import Any, Callable, List, NamedTuple, Optional

from safetensors import safe_open

__all__ = ["FileKind", "register_file_kind", "kind_for_object", "kind_for_file", "has_metadata_key",
           "is_mono_quant_metadata", "is_mono_quant_file"]


class FileKind(NamedTuple):
    """One other file layout.

    Attributes:
        name: What the layout is called in messages.
        writes: Whether ``save`` should hand this object (a model or result) over.
        save: ``save(obj, path, overwrite) -> Path``.
        reads: Whether the file at ``path`` has this layout (False on any read error).
        load: ``load(path, model) -> model`` (``model``: the ``model=`` given to ``load``, None
            when not given); raises CheckpointError on anything inconsistent.
    """

    name: str
    writes: Callable[[Any], bool]
    save: Callable[[Any, Any, bool], Any]
    reads: Callable[[Any], bool]
    load: Callable[[Any, Any], Any]


_KINDS: List[FileKind] = []


def register_file_kind(kind: FileKind) -> None:
    """Make ``save`` / ``load`` hand objects and files of ``kind`` over to it (once per name)."""
    if all(k.name != kind.name for k in _KINDS):
        _KINDS.append(kind)


def kind_for_object(obj) -> Optional[FileKind]:
    """The registered kind that writes ``obj``, or None (the quantized-checkpoint layout)."""
    return next((k for k in _KINDS if k.writes(obj)), None)


def kind_for_file(path) -> Optional[FileKind]:
    """The registered kind whose layout the file at ``path`` has, or None."""
    return next((k for k in _KINDS if k.reads(path)), None)


def is_mono_quant_metadata(metadata) -> bool:
    """Whether a safetensors header's metadata is one mono-quant wrote: a quantized checkpoint's
    ``mono_quant`` manifest, or another layout's ``mono_quant.*`` one (static int8 models,
    calibration files)."""
    return any(key == "mono_quant" or key.startswith("mono_quant.") for key in (metadata or {}))


def is_mono_quant_file(path) -> bool:
    """Whether ``path`` is a regular safetensors file mono-quant wrote (False on any read error)."""
    return is_mono_quant_metadata(_metadata(path))


def has_metadata_key(path, key: str) -> bool:
    """Whether ``path`` is a regular safetensors file whose metadata has ``key`` (False on any
    read error: the general loader then reports what is wrong with the file)."""
    return key in _metadata(path)


def _metadata(path) -> dict:
    """A regular safetensors file's header metadata ({} for none, or on any read error)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block the open
            return {}
        with safe_open(os.fspath(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - not ours, or unreadable
        return {}
