"""The benchmark scripts' --isa option: run as if on a CPU with fewer
instructions (an AVX2-only EPYC, say) on a bigger one.  Import this module
before torch: it reads --isa / --torch-isa from sys.argv and sets the
environment variables each library reads once at start-up.

  --isa avx2          mono-quant capped at its AVX2 level (MONO_QUANT_ISA=avx2);
                      the int8 matmul is AVX-VNNI's where the CPU has it
  --isa avx2-maddubs  the same with the maddubs int8 matmul an AVX2 CPU without
                      AVX-VNNI (Zen 2/3, Intel before Alder Lake) runs
  --clock cpu         time each call in the thread's CPU time (one thread)
  --torch-isa avx2    caps torch's libraries too: fbgemm
                      (FBGEMM_ENABLE_INSTRUCTIONS), oneDNN (ONEDNN_MAX_CPU_ISA),
                      MKL (MKL_ENABLE_INSTRUCTIONS), ATen (ATEN_CPU_CAPABILITY)
"""
from __future__ import annotations

import os
import sys
import time

__all__ = ["ISA", "ISA_CHOICES", "add_isa_arguments", "apply_isa", "isa_description", "clock"]

ISA_CHOICES = ["native", "scalar", "avx2", "avx2-maddubs", "avx512"]
_TORCH_ENV = {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
              "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def _argv_value(flag: str, default: str) -> str:
    for i, arg in enumerate(sys.argv):
        if arg == flag and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


ISA = _argv_value("--isa", "native")
_TORCH_ISA = _argv_value("--torch-isa", "native")
if ISA not in ("native", "avx2-maddubs"):
    os.environ["MONO_QUANT_ISA"] = ISA
elif ISA == "avx2-maddubs":
    os.environ["MONO_QUANT_ISA"] = "avx2"
if _TORCH_ISA == "avx2":
    os.environ.update(_TORCH_ENV)
if "torch" in sys.modules and (_TORCH_ISA != "native"):
    raise RuntimeError("isa_cap must be imported before torch")


_CLOCK = _argv_value("--clock", "wall")


def clock() -> float:
    """The benchmarks' clock, seconds: wall time (perf_counter), or with
    --clock cpu the calling thread's CPU time (thread_time), which on a busy
    shared machine leaves out the time other processes held the core; only
    meaningful at one thread (a helper thread's work is not counted)."""
    return time.thread_time() if _CLOCK == "cpu" else time.perf_counter()


def add_isa_arguments(parser) -> None:
    parser.add_argument("--isa", choices=ISA_CHOICES, default="native",
                        help="cap mono-quant's kernels (avx2-maddubs: the AVX2 level without AVX-VNNI)")
    parser.add_argument("--torch-isa", choices=["native", "avx2"], default="native",
                        help="cap fbgemm / oneDNN / MKL / ATen at AVX2 too")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the calling thread's CPU time per call (one thread only; a busy machine)")


def check_clock(threads) -> None:
    if _CLOCK == "cpu" and threads != 1:
        raise SystemExit("--clock cpu needs --threads 1 (helper threads' work would not be counted)")


def apply_isa() -> None:
    """After mono_quant is imported: the maddubs variant (the environment did the rest)."""
    from mono_quant import _C

    if ISA == "avx2-maddubs":
        _C.use_maddubs_for_tests(True)


def isa_description() -> dict:
    from mono_quant import _C

    return {"isa_option": ISA, "torch_isa_option": _TORCH_ISA, "clock": _CLOCK, "active_isa": _C.cpu_info()["active_isa"],
            "qgemm": _C.linear_kernels()["dynamic"],
            "torch_env": {k: os.environ.get(k) for k in _TORCH_ENV}}
