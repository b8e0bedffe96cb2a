"""What quantize() did: per-layer sizes and error, totals, and the skipped list."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

__all__ = ["SkippedLayer", "LayerReport", "Report", "human_bytes", "tensor_bytes", "unique_bytes", "unique_tensor_bytes",
           "storage_view"]


class SkippedLayer(NamedTuple):
    """A layer left in float, or left as it was because an earlier quantize() call
    quantized it (mixed precision: its reason starts "already quantized as ...").  A named tuple.

    Attributes:
        name: The layer's module path ("" for the root; a state_dict key's prefix).
        type: The layer's class name ("Linear", "Conv2d", ...).
        reason: Why it was left in float (or as it was).

    Examples:
        >>> qmodel, skipped = mq.quantize(model)
        >>> for s in skipped:
        ...     print(s.name, s.type, s.reason)
    """

    name: str
    type: str
    reason: str


@dataclass
class LayerReport:
    """One quantized layer of a :class:`Report`.

    Bytes are counted from the real tensors (weight plus bias, and the
    quantized buffers after).

    Args:
        name: The layer's module path (a state_dict key's prefix).
        type: The float layer's class name ("Linear", "Conv2d", "Embedding").
        dtype: The format it was quantized to ("int8", "int4", ...).
        shape: The weight's shape.
        bytes_before: Bytes of the float weight and bias.
        bytes_after: Bytes of the quantized weight's buffers and the bias.
        weight_sqnr_db: The weight's signal-to-quantization-noise ratio in
            dB (inf when exact; NaN when not measured).
        orig_dtype: The float dtype the weight was quantized from ("float32",
            "float16", "bfloat16" or "float64"; None for a float8 weight, which
            stands for float32 in the layer whatever the model's dtype).

    Examples:
        >>> worst = min(result.report.layers, key=lambda r: r.weight_sqnr_db)
        >>> print(worst.name, worst.bits_per_weight)
    """

    name: str
    type: str
    dtype: str
    shape: tuple
    bytes_before: int
    bytes_after: int
    weight_sqnr_db: float
    orig_dtype: Optional[str] = None

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight element (scales and packing included)."""
        numel = math.prod(self.shape)
        return 8.0 * self.bytes_after / numel if numel else 0.0


@dataclass
class Report:
    """What a quantization did: the quantized layers, the skipped ones, and
    the whole model's bytes before and after.  ``str(report)`` is a table.

    Args:
        layers: One :class:`LayerReport` per quantized layer.
        skipped: The :class:`SkippedLayer` list.
        model_bytes_before: Bytes of every tensor of the input (tied tensors once).
        model_bytes_after: Bytes of every tensor of the output.
        tied: Names stored as aliases of a tied tensor (alias -> stored name;
            quantize_checkpoint of a Hugging Face folder).
        shared_bytes_before: Bytes of the layers' weights and biases tied to an earlier layer's,
            before quantization (each row shows them; ``bytes_before`` counts them once).
        shared_bytes_after: The same after quantization (``bytes_after`` counts them once).

    Examples:
        >>> print(mq.quantize(model, dtype="int8").report)
        >>> mq.quantize(model).report.to_dict()   # JSON-able
    """

    layers: List[LayerReport] = field(default_factory=list)
    skipped: List[SkippedLayer] = field(default_factory=list)
    model_bytes_before: int = 0
    model_bytes_after: int = 0
    tied: Dict[str, str] = field(default_factory=dict)
    shared_bytes_before: int = 0
    shared_bytes_after: int = 0

    @property
    def bytes_before(self) -> int:
        """Bytes of the quantized layers' float weights and biases (a tied one once)."""
        return sum(r.bytes_before for r in self.layers) - self.shared_bytes_before

    @property
    def bytes_after(self) -> int:
        """Bytes of the quantized layers after quantization (a tied one once)."""
        return sum(r.bytes_after for r in self.layers) - self.shared_bytes_after

    def to_dict(self) -> dict:
        """The report as plain data that ``json.dumps(..., allow_nan=False)`` takes: layers (an exact
        weight's infinite SQNR, or one not measured, as None), skipped, tied names and the bytes."""
        layers = []
        for r in self.layers:
            row = asdict(r)
            row["weight_sqnr_db"] = r.weight_sqnr_db if math.isfinite(r.weight_sqnr_db) else None
            layers.append(row)
        return {
            "layers": layers,
            "skipped": [s._asdict() for s in self.skipped],
            "tied": dict(self.tied),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "model_bytes_before": self.model_bytes_before,
            "model_bytes_after": self.model_bytes_after,
        }

    def __str__(self) -> str:
        rows = [("layer", "type", "dtype", "before", "after", "bits/w", "SQNR dB")]
        for r in self.layers:
            sqnr = "inf" if math.isinf(r.weight_sqnr_db) else f"{r.weight_sqnr_db:.1f}"
            rows.append((r.name or "<root>", r.type, r.dtype, human_bytes(r.bytes_before), human_bytes(r.bytes_after),
                         f"{r.bits_per_weight:.2f}", sqnr))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines.append(
            f"{len(self.layers)} layers quantized, {len(self.skipped)} skipped; model "
            f"{human_bytes(self.model_bytes_before)} -> {human_bytes(self.model_bytes_after)}"
        )
        for s in self.skipped:
            lines.append(f"  skipped {s.name or '<root>'} ({s.type}): {s.reason}")
        return "\n".join(lines)


def tensor_bytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def storage_view(t: torch.Tensor) -> Tuple[tuple, tuple]:
    """(storage, view) of a tensor with data: two tensors with the same view hold the very same
    values (tied: same storage, offset, shape, strides and dtype); the same storage alone means
    they overlap.  Compare only tensors alive together (a freed storage's address is reused)."""
    storage = (t.device, t.untyped_storage().data_ptr())
    return storage, storage + (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def unique_tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters, buffers and plain tensor attributes (a weight assigned as a
    tensor, a pruned layer's computed weight: held as much as the others), each storage counted
    once (tied weights)."""
    attributes = [t for m in module.modules() for t in vars(m).values() if isinstance(t, torch.Tensor)]
    return unique_bytes(list(module.parameters()) + list(module.buffers()) + attributes)


def unique_bytes(tensors) -> int:
    """Bytes of ``tensors``, each storage counted once (a state_dict's tied entries, shared weights)."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.nn.parameter.UninitializedTensorMixin):
            continue  # a lazy module's placeholder has no storage yet
        # the very same view counts once (tied); different views of one storage (a fused qkv's
        # q, k, v) each count
        strided = t.device.type != "meta" and t.layout == torch.strided
        key = storage_view(t)[1] if strided else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += tensor_bytes(t)
    return total


def human_bytes(n) -> str:
    """A byte count for people: "512 B", "1.5 KiB", "2.0 GiB"."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)
