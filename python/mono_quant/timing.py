"""Timing calls against each other on a busy machine (``mono-quant bench``, the demo's speed
table, and the scripts in benchmarks/): interleaved call by call, so that a slow spell slows
every contender alike, in an order that changes from round to round, so that none always
runs on a cache another just warmed (or right after fp32's OpenMP team winds down), and
medians, which a few preempted calls do not move."""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional

import torch

__all__ = ["ORDERS", "interleaved_times", "interleaved_medians"]

#: round orders of :func:`interleaved_times`
ORDERS = ("reverse", "rotate", "shuffle", "fixed")


def interleaved_times(calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1, *,
                      order: str = "reverse", seed: int = 0,
                      clock: Optional[Callable[[], float]] = None) -> Dict[str, List[float]]:
    """Seconds (of ``clock``, default ``time.perf_counter``) of each of ``repeats`` timed calls
    of each of ``calls`` (by name), interleaved round by round, after ``warmup`` untimed rounds
    in the given order.  ``order``:
    "reverse" runs every other round backwards (A B C, C B A, ...); "rotate" starts each round
    one contender later (A B C, B C A, ...); "shuffle" runs each round in a fresh random order
    (``random.Random(seed)``); "fixed" is A B C every round.  Raises ValueError for an unknown
    order, ``repeats < 1`` or ``warmup < 0``."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be at least 1 and warmup at least 0")
    clock = clock or time.perf_counter
    names = list(calls)
    shuffler = random.Random(seed)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        if order == "shuffle":
            shuffler.shuffle(names)
        if order == "rotate" and names:
            round_names = names[r % len(names):] + names[:r % len(names)]
        else:
            round_names = names[::-1] if order == "reverse" and r % 2 else names
        for name in round_names:
            t0 = clock()
            calls[name]()
            times[name].append(clock() - t0)
    return times


def interleaved_medians(calls: Mapping[str, Callable[[], object]], repeats: int,
                        warmup: int = 1) -> Dict[str, float]:
    """Median seconds of one call of each of ``calls`` (by name, in their order) over
    ``repeats`` interleaved rounds, each in the opposite order to the last, after ``warmup``
    untimed rounds, under ``torch.inference_mode``.  Raises ValueError when ``repeats < 1`` or
    ``warmup < 0``."""
    with torch.inference_mode():
        times = interleaved_times(calls, repeats, warmup)
    return {name: statistics.median(t) for name, t in times.items()}
