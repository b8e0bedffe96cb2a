"""compare(): per-tensor SQNR and sizes of two checkpoints (float or mono-quant), one tensor at a time."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..tensor import sqnr_db
from .checkpoint import CheckpointReader
from .dtypes import dtype_name
from .errors import CheckpointError
from .load import dequantize_layer
from .rebuild import float_weight_shape
from .composite_names import composite_key_map
from .container import read_header
from .hf_saved_folder import refuse_saved_pretrained
from .manifest import check_against_header, layer_key, parse_manifest

__all__ = ["compare", "FloatView"]


class FloatView:
    """A checkpoint seen as a float state_dict: quantized layers of a mono-quant
    file appear as ``<layer>.weight`` (dequantized on demand) and, for saved
    models, ``<layer>.bias``.  Tensors are read one at a time."""

    def __init__(self, src):
        self.reader = CheckpointReader(src)
        self.manifest = parse_manifest(self.reader.metadata(), os.fspath(src))
        if self.manifest["format_version"]:
            check_against_header(self.manifest, read_header(src))
        else:
            refuse_saved_pretrained(src, self.reader.keys(), lambda key: self.reader.spec(key)[0])
        aliases = self.manifest["tensor_aliases"]
        self._entries: Dict[str, Tuple[str, Any]] = {}  # key -> ("tensor", stored key) or ("layer"/"bias", layer)
        hidden = set()
        for layer in self.manifest["layers"]:
            for name in [layer["name"]] + layer.get("aliases", []):
                hidden.update(layer_key(name, local) for local in layer["tensors"])
                self._entries[layer_key(name, "weight")] = ("layer", (layer, name))
                if self.manifest["kind"] == "model" and "bias" in layer["tensors"]:
                    self._entries[layer_key(name, "bias")] = ("bias", (layer, name))
        for key in list(self.reader.keys()) + list(aliases):
            if key not in hidden and key not in self._entries:
                self._entries[key] = ("tensor", aliases.get(key, key))
        # composites (LSTM / GRU / RNN, MultiheadAttention) under the float module's names, as
        # QuantizedStateDict.dequantize() gives them: a float file compares name for name
        self._parts = self._entries
        self._entries = {name: keys[0] if len(keys) == 1 else keys for name, keys in
                         composite_key_map(list(self._parts), self.manifest.get("composites", {})).items()}

    def keys(self) -> List[str]:
        return list(self._entries)

    def _parts_of(self, key: str) -> List[str]:
        """The stored entries a name is made of (a MultiheadAttention's in_proj_bias: its q / k / v biases)."""
        ref = self._entries[key]
        return [ref] if isinstance(ref, str) else list(ref)

    def _own(self, layer, name) -> Dict[str, torch.Tensor]:
        aliases = self.manifest["tensor_aliases"]
        out = {}
        for local in layer["tensors"]:
            key = layer_key(name, local)
            out[local] = self.reader.get(aliases.get(key, key))
        return out

    def get(self, key: str) -> torch.Tensor:
        parts = [self._get_part(k) for k in self._parts_of(key)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _get_part(self, key: str) -> torch.Tensor:
        what, ref = self._parts[key]
        if what == "tensor":
            return self.reader.get(ref)
        layer, name = ref
        own = self._own(layer, name)
        if what == "bias":
            return own["bias"]
        return dequantize_layer(self.manifest["kind"], layer, own)[0]

    def stored(self, key: str) -> Tuple[str, int]:
        """(dtype label, bytes stored) of an entry, without reading it (0 bytes for an alias)."""
        labels, total = zip(*(self._stored_part(k) for k in self._parts_of(key)))
        return labels[0], sum(total)

    def _stored_part(self, key: str) -> Tuple[str, int]:
        what, ref = self._parts[key]
        if what == "tensor":  # (a second name of a stored tensor, a tied head's: no bytes of its own)
            dtype, _ = self.reader.spec(ref)
            return dtype_name(dtype), 0 if key in self.manifest["tensor_aliases"] else self.reader.nbytes(ref)
        layer, name = ref
        if what == "bias":
            return layer["tensors"]["bias"]["dtype"], self._nbytes(layer, name, ["bias"])
        locals_ = [n for n in layer["tensors"] if n != "bias" or self.manifest["kind"] != "model"]
        return layer["dtype"], self._nbytes(layer, name, locals_)

    def _nbytes(self, layer, name, locals_) -> int:
        """The bytes a layer's tensors hold of their own (one stored under another name, a tied
        head's, holds none)."""
        aliases = self.manifest["tensor_aliases"]
        return sum(self.reader.nbytes(layer_key(name, n)) for n in locals_ if layer_key(name, n) not in aliases)

    def shape(self, key: str) -> Optional[List[int]]:
        shapes = [self._shape_part(k) for k in self._parts_of(key)]
        return shapes[0] if len(shapes) == 1 else [sum(shape[0] for shape in shapes)] + shapes[0][1:]

    def _shape_part(self, key: str) -> Optional[List[int]]:
        what, ref = self._parts[key]
        if what == "tensor":
            return list(self.reader.spec(ref)[1])
        layer, _ = ref
        if what == "layer":  # the float layer's weight shape, as get() gives it (a Conv1d's 3-D one)
            return float_weight_shape(self.manifest["kind"], layer)
        return layer["tensors"]["bias"]["shape"]

    def close(self) -> None:
        self.reader.close()


def compare(a, b) -> Dict[str, Any]:
    """Compare checkpoint ``b`` against the reference ``a`` tensor by tensor.

    Returns ``{"rows": [...], "totals": {...}}``; a row has name, shape,
    dtype/bytes in each, and ``sqnr_db`` of b against a (inf when equal;
    None for non-float tensors) or ``status`` "only in A" / "only in B" /
    "shape mismatch".  Raises CheckpointError / FileNotFoundError for
    unreadable inputs.
    """
    view_a = _named(a, FloatView, a)
    try:
        view_b = _named(b, FloatView, b)
    except BaseException:
        view_a.close()
        raise
    try:
        rows = []
        keys_b = set(view_b.keys())
        for key in view_a.keys():
            dtype_a, bytes_a = view_a.stored(key)
            row = {"name": key, "shape": view_a.shape(key), "dtype_a": dtype_a, "bytes_a": bytes_a,
                   "dtype_b": None, "bytes_b": None, "sqnr_db": None, "status": "ok"}
            if key not in keys_b:
                row["status"] = "only in A"
            else:
                row["dtype_b"], row["bytes_b"] = view_b.stored(key)
                if view_b.shape(key) != row["shape"]:
                    row["status"] = "shape mismatch"
                else:
                    row["sqnr_db"] = _sqnr(_named(a, view_a.get, key), _named(b, view_b.get, key))
            rows.append(row)
        names_a = set(view_a.keys())
        for key in view_b.keys():
            if key not in names_a:
                dtype_b, bytes_b = view_b.stored(key)
                rows.append({"name": key, "shape": view_b.shape(key), "dtype_a": None, "bytes_a": None,
                             "dtype_b": dtype_b, "bytes_b": bytes_b, "sqnr_db": None, "status": "only in B"})
    finally:
        view_a.close()
        view_b.close()
    both = [r for r in rows if r["status"] == "ok"]
    finite = [r["sqnr_db"] for r in both if r["sqnr_db"] is not None]
    totals = {
        "bytes_a": sum(r["bytes_a"] or 0 for r in rows), "bytes_b": sum(r["bytes_b"] or 0 for r in rows),
        "compared": len(both), "only_in_a": sum(r["status"] == "only in A" for r in rows),
        "only_in_b": sum(r["status"] == "only in B" for r in rows),
        "shape_mismatches": sum(r["status"] == "shape mismatch" for r in rows),
        "min_sqnr_db": min(finite) if finite else None,
    }
    totals["ratio"] = totals["bytes_b"] / totals["bytes_a"] if totals["bytes_a"] else None
    return {"a": os.fspath(a), "b": os.fspath(b), "rows": rows, "totals": totals}


def _named(path, call, *args):
    """``call(*args)``, a CheckpointError it raises naming ``path`` (a tensor's checks at first read name the
    layer and field only; with two files, which one is not clear)."""
    try:
        return call(*args)
    except CheckpointError as exc:
        where = os.fspath(path)
        if str(exc).startswith(f"{where}:"):
            raise
        raise CheckpointError(f"{where}: {exc}") from None


_CHUNK = 1 << 18  # elements per float64 step: its temporaries stay in cache


def _sqnr(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    """SQNR of b against a in dB, summed in float64 chunk by chunk (whole-tensor float64
    temporaries of a 180 MB weight cost seconds of page faults); inf when equal, None when
    not comparable (non-float, or NaN/Inf that differ)."""
    if not (a.is_floating_point() and b.is_floating_point()):
        return math.inf if torch.equal(a, b) else None
    a, b = a.detach().reshape(-1), b.detach().reshape(-1)
    signal, noise = _power_sums(a, b, 1.0)
    if not (math.isfinite(signal) and math.isfinite(noise)):
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            return math.inf if torch.equal(a, b) else None
        # finite float64 values past ~1e154 overflow their squares: the ratio doesn't depend on a scale
        signal, noise = _power_sums(a, b, max(float(a.abs().max()), float(b.abs().max())))
    return sqnr_db(signal, noise)


def _power_sums(a: torch.Tensor, b: torch.Tensor, scale: float) -> Tuple[float, float]:
    """(sum (a/scale)^2, sum ((a-b)/scale)^2) in float64, chunk by chunk."""
    signal = noise = 0.0
    for start in range(0, a.numel(), _CHUNK):
        a64, b64 = a[start:start + _CHUNK].double(), b[start:start + _CHUNK].double()
        if scale != 1.0:
            a64, b64 = a64 / scale, b64 / scale
        diff = a64 - b64
        signal += float(torch.dot(a64, a64))
        noise += float(torch.dot(diff, diff))
    return signal, noise
