"""Tied tensors (one storage under several names) stored once, as ``mq.save`` stores them: the
first name holds the data, the others are ``tensor_aliases`` in the manifest (a quantized
layer's buffers alias the first layer's, one layer entry per name), and load() maps every
name to the one tensor again.

``quantize_checkpoint`` finds the ties of a torch.save'd state_dict (safetensors stores none):
an alias whose treatment agrees with the first name's (both quantized the same way, or both
float) is not quantized again and writes nothing; the first name's manifest entries, report
and skipped entries are repeated under its name.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Dict, List

from ..report import storage_view

__all__ = ["storage_ties", "FirstEntry", "alias_entry"]


def storage_ties(reader) -> Dict[str, str]:
    """key -> the first key (in file order) holding the very same tensor view, over the keys
    of ``reader`` whose tensors may share storage (kept mapped by the reader while it is open,
    so no address is reused between two of them)."""
    first: Dict[tuple, str] = {}
    ties: Dict[str, str] = {}
    for key in reader.keys():
        if not reader.may_share_storage(key):
            continue
        t = reader.get(key)
        if t.numel() == 0:
            continue
        owner = first.setdefault(storage_view(t)[1], key)
        if owner != key:
            ties[key] = owner
    return ties


@dataclasses.dataclass
class FirstEntry:
    """What writing the first name of a tie produced: the stored tensor names and the
    manifest layers, report layers and skipped entries it added."""
    key: str
    names: List[str]
    manifest_layers: list
    layers: list
    skipped: list
    treatment: tuple


def alias_entry(first: FirstEntry, key: str, manifest: dict, report, own_reason=None) -> None:
    """Record ``key`` (tied to ``first.key``, treated alike) as aliases of what ``first`` stored:
    tensor aliases, and its own layer entries, report layers and skipped entries
    (``own_reason``: its skip reason, when the selection gives it one of its own)."""
    if first.names == [first.key]:  # copied as it is (any tensor, not only a weight)
        manifest["tensor_aliases"][key] = first.key
    else:  # a quantized weight's buffers, all under its layer's prefix
        old, new = first.key[: -len("weight")], key[: -len("weight")]
        for stored in first.names:
            manifest["tensor_aliases"][new + stored[len(old):]] = stored
    new_name = key[: -len("weight")].rstrip(".") if key.endswith("weight") else key
    for entry in first.manifest_layers:
        entry = copy.deepcopy(entry)
        entry["name"] = new_name
        manifest["layers"].append(entry)
    for layer in first.layers:
        report.layers.append(dataclasses.replace(layer, name=new_name))
    for skip in first.skipped:
        report.skipped.append(skip._replace(name=new_name, reason=own_reason or skip.reason))
    report.tied[key] = first.key
