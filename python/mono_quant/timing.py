"""Timing calls against each other on a busy machine (``mono-quant bench``, the demo's speed
table): interleaved call by call, so that a slow spell slows every contender alike, each
round in the opposite order to the last, so that none always runs on a cache another just
warmed, and medians, which a few preempted calls do not move."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Mapping

import torch

__all__ = ["interleaved_medians"]


def interleaved_medians(calls: Mapping[str, Callable[[], object]], repeats: int,
                        warmup: int = 1) -> Dict[str, float]:
    """Median seconds of one call of each of ``calls`` (by name, in their order) over
    ``repeats`` interleaved rounds, after ``warmup`` untimed rounds, under
    ``torch.inference_mode``.  Raises ValueError when ``repeats < 1`` or ``warmup < 0``."""
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be at least 1 and warmup at least 0")
    order = list(calls.items())
    times: Dict[str, List[float]] = {name: [] for name, _ in order}
    with torch.inference_mode():
        for _ in range(warmup):
            for _, call in order:
                call()
        for i in range(repeats):
            for name, call in (order if i % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}
