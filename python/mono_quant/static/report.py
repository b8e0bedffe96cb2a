"""StaticReport: per-layer activation ranges, clipping and output SQNR of a static int8 model."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from ..report import SkippedLayer

__all__ = ["StaticLayerReport", "StaticReport", "clipped_fraction"]


@dataclass
class StaticLayerReport:
    """One fused op: what it absorbed, its output range and qparams, the share of
    calibration values outside the range, and its output SQNR against float."""
    name: str
    kind: str                     # conv, linear, add, cat, gap
    fused: List[str]
    act: Optional[str]
    output: str                   # "int8" or "float"
    lo: float
    hi: float
    scale: Optional[float]
    clipped: Optional[float]      # fraction of calibration values outside [lo, hi]; None without a histogram
    sqnr_db: Optional[float] = None

    @property
    def name_and_kind(self) -> str:
        return f"{self.name} ({self.kind})"


@dataclass
class StaticReport:
    """What static quantization did: ``layers``, the ops left in float (``skipped``),
    the capture used (``capture``: "fx" or "hooks", with ``fallback_reason``; "none" when no layer
    was left to quantize: the model is a float copy),
    the observer and how many samples calibrated it.  ``str(report)`` is a table."""
    layers: List[StaticLayerReport] = field(default_factory=list)
    skipped: List[SkippedLayer] = field(default_factory=list)
    capture: str = "fx"
    fallback_reason: Optional[str] = None
    observer: str = "minmax"
    samples: int = 0
    not_fused: List[Tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"capture": self.capture, "fallback_reason": self.fallback_reason, "observer": self.observer,
                "samples": self.samples, "layers": [asdict(r) for r in self.layers],
                "skipped": [s._asdict() for s in self.skipped], "not_fused": [list(x) for x in self.not_fused]}

    def __str__(self) -> str:
        head = (f"static int8 ({self.capture} capture, observer {self.observer}, {self.samples} calibration "
                f"samples)" + (f"; fallback: {self.fallback_reason}" if self.fallback_reason else ""))
        rows = [head, f"{'layer':<28} {'kind':<6} {'fused':<24} {'out':<5} {'range':>22} {'clip %':>7} "
                      f"{'SQNR dB':>8}"]
        for r in self.layers:
            clip = "-" if r.clipped is None else f"{100 * r.clipped:.3f}"
            sqnr = "-" if r.sqnr_db is None else f"{r.sqnr_db:.1f}"
            fused = "+".join(r.fused[1:]) if len(r.fused) > 1 else ""
            rows.append(f"{r.name:<28.28} {r.kind:<6} {fused:<24.24} {r.output:<5} "
                        f"{f'[{r.lo:.4g}, {r.hi:.4g}]':>22} {clip:>7} {sqnr:>8}")
        for s in self.skipped:
            rows.append(f"{s.name:<28.28} float: {s.reason}")
        return "\n".join(rows)


def clipped_fraction(stats, lo: float, hi: float) -> Optional[float]:
    """Share of the histogram's values in bins lying wholly outside [lo, hi] (a lower bound
    on the clipped share; exact to one bin)."""
    h = getattr(stats, "histogram", None)
    if h is None or not h.has_data or h.total == 0:
        return None
    edges = h.edges()
    outside = (edges[:-1] > hi) | (edges[1:] < lo)  # bins straddling an end are not counted
    return float(np.asarray(h.counts)[outside].sum()) / float(h.total)
