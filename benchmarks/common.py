"""Shared benchmark plumbing: machine description, interleaved timing, results.

Every figure is a ratio measured in one run: contenders are timed in
rotation (A B C A B C ...) after a warm-up, and the median with p10/p90 is
reported (see ../shared/BENCHMARKS.md)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

__all__ = ["machine_info", "interleaved", "summary", "write_results", "RESULTS_DIR"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    import mono_quant as mq

    model = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = mq.cpu_info()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mono_quant": mq.__version__,
        "dispatched_isa": info.pop("active_isa"),
        "best_isa": info.pop("best_isa"),
        "flags": {k: v for k, v in info.items()},
    }


def interleaved(contenders: Dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 2) -> Dict[str, list]:
    """Time each contender ``repeats`` times in rotation; seconds per call."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(samples: list) -> dict:
    s = sorted(samples)
    q = statistics.quantiles(s, n=10) if len(s) >= 2 else [s[0]] * 9
    return {"median_us": statistics.median(s) * 1e6, "p10_us": q[0] * 1e6, "p90_us": q[-1] * 1e6, "n": len(s)}


def write_results(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
