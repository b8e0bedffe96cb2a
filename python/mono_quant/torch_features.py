"""What the installed torch offers: the oldest torch mono-quant runs on, checked once at
import (a clear ImportError, not an AttributeError in the middle of a first call), and the
newer torch functions it uses where older releases lack them.

One wheel serves every torch from ``MIN_TORCH`` on: the C extension never links libtorch,
so only these Python-level APIs set the floor (``torch.library.register_fake`` and
``register_autograd``: torch 2.4).
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

import torch

__all__ = ["MIN_TORCH", "torch_release", "check_torch_version", "is_exporting", "autocast_enabled",
           "autocast_off", "capturing"]

#: the oldest torch release mono-quant runs on (major, minor)
MIN_TORCH: Tuple[int, int] = (2, 4)


def torch_release(version: str) -> Tuple[int, int]:
    """(major, minor) of a torch version string ("2.13.0+cpu", "2.6.0a0+git1234"); (0, 0)
    where it names none."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_torch_version(version: Optional[str] = None) -> None:
    """ImportError naming the installed (or the given) and the needed torch when it is older
    than ``MIN_TORCH``."""
    version = str(torch.__version__) if version is None else version
    if torch_release(version) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ImportError(f"mono-quant needs torch >= {need}; this environment has torch {version}. "
                          f"Upgrade torch (pip install 'torch>={need}'), or use a mono-quant release "
                          f"that supports this torch")


def _never_exporting() -> bool:
    return False


#: torch.compiler.is_exporting (torch 2.6), looked up once: torch's own function where it exists
#: (dynamo knows it; no lookup per static forward); on older torch, which has no such flag, always
#: False (torch.export then runs as torch.compile does: compiling, not exporting)
is_exporting = getattr(torch.compiler, "is_exporting", _never_exporting)


def _any_autocast_enabled() -> bool:
    return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


#: whether any autocast region is active (one C call, ~0.15 us: checked on each quantized call)
autocast_enabled = getattr(torch._C, "_is_any_autocast_enabled", _any_autocast_enabled)


def autocast_off(x: torch.Tensor):
    """A context that turns autocast off for ``x``'s device.  Quantized layers run outside autocast:
    their C routes and their traced ops never follow it, so the routes that call torch's BLAS did
    alone (the output's dtype, and bf16 numbers, changed with the batch size and under compile)."""
    return torch.autocast(x.device.type if x.device.type in ("cpu", "cuda") else "cpu", enabled=False)


def capturing(t: torch.Tensor) -> bool:
    """Whether ``t``'s device is recording a CUDA graph now (torch.compile's mode="reduce-overhead",
    torch.cuda.graph): reading a value back to the host is refused there (the capture is invalidated),
    so the host-side checks step aside.  Then an embedding's indices are not range-checked: one past
    the end fails on the device, a negative one reads from the end (as indexing does)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()
