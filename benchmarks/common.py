"""Shared benchmark plumbing: machine description, interleaved timing, results.

Every figure is a ratio measured in one run: contenders are timed in
rotation (A B C A B C ...) after a warm-up, and the median with p10/p90 is
reported (see ../shared/BENCHMARKS.md)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator

import numpy as np
import torch


def _checkout_timing():
    """This checkout's python/mono_quant/timing.py, loaded by path: the A/B scripts
    (bench_act_rows.py --base, bench_restructure.py --old) run a worker with an older
    mono_quant first on the path, and both workers must time with the same loop."""
    path = Path(__file__).resolve().parent.parent / "python" / "mono_quant" / "timing.py"
    spec = importlib.util.spec_from_file_location("_checkout_mono_quant_timing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


interleaved_times = _checkout_timing().interleaved_times

__all__ = ["machine_info", "interleaved", "summary", "write_results", "background_load", "RESULTS_DIR"]

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


def interleaved(contenders: Dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 2,
                order: str = "rotate", seed: int = 0,
                clock: Callable[[], float] = time.perf_counter) -> Dict[str, list]:
    """Time each contender ``repeats`` times, interleaved, after ``warmup`` rounds;
    seconds per call (of ``clock``): the package's timer (mono_quant.timing), the one
    ``mono-quant bench`` uses, with the benchmarks' default order.

    The call right after fp32 F.linear / conv2d runs measurably slower (torch's
    OpenMP team still winding down; ~0.4 ms at 4096x4096 batch 1, more on a busy
    machine), so no contender may always hold that slot.  ``order``: "rotate"
    starts each round one contender later (A B C, B C A, ...); "shuffle" runs
    each round in a fresh random order (seeded), which also keeps one contender
    from following fp32 in every round but one; "fixed" is A B C every round;
    "reverse" (the package's) runs every other round backwards.
    """
    return interleaved_times(contenders, repeats, warmup, order=order, seed=seed, clock=clock)


def summary(samples: list) -> dict:
    s = sorted(samples)
    q = statistics.quantiles(s, n=10) if len(s) >= 2 else [s[0]] * 9
    return {"median_us": statistics.median(s) * 1e6, "mean_us": statistics.fmean(s) * 1e6,
            "p10_us": q[0] * 1e6, "p90_us": q[-1] * 1e6, "n": len(s)}


def write_results(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


@contextlib.contextmanager
def background_load(processes: int) -> Iterator[None]:
    """Run ``processes`` CPU-bound Python processes (a busy loop each) for the
    duration of the block, then stop them: the "steady under load" mode, where
    other work (DataLoader workers, a second notebook) competes for the cores
    and a thread of ours may sit descheduled for a whole scheduler slice."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, processes))]
    try:
        if busy:
            time.sleep(0.2)  # let them start spinning before the first timed call
        yield
    finally:
        for proc in busy:
            proc.kill()
        for proc in busy:
            proc.wait()
