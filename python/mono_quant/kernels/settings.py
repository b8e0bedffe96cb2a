"""The kernels' runtime settings in one object, :data:`SETTINGS`.

The settings that live in the C extension (kernel level, threading backend,
GEMV row limit, the test-only kernel variants) are read and written through
here, so Python holds no copy that could disagree with C; the one setting the
C layer takes per call (int4's int8 activations) is kept here.  Tests change
settings with :meth:`RuntimeSettings.for_tests`, which restores them on exit.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

from ..warn_site import warn_at_caller
from .. import _C

__all__ = ["RuntimeSettings", "SETTINGS", "THREADING_BACKENDS", "ISA_LEVELS", "LEVEL_MARK", "MAX_THREADS"]

THREADING_BACKENDS = ("pool", "pthreads", "omp-team")
ISA_LEVELS = ("scalar", "avx2", "avx512")

#: One object per kernel level, set by SETTINGS.set_isa: a kept route chosen on the level (a conv's,
#: modules/conv.py; AMX plays no part in it) has it in its stamp (kernels/stamps.py), so a changed
#: level chooses again, as a layer quantized after the change would (a route kept at a level holds
#: again when the level comes back before the layer's next call).
if _C.ISA_FROM_ENV_IGNORED is not None:  # (the C module's import read the variable: warned here, at the user's line)
    warn_at_caller(f"MONO_QUANT_ISA={_C.ISA_FROM_ENV_IGNORED} is unknown or unsupported here; using "
                   f"{_C.get_isa()!r} (one of {', '.join(ISA_LEVELS)}, at most the CPU's own)", RuntimeWarning)

_LEVEL_MARKS: dict = {}
LEVEL_MARK = _LEVEL_MARKS.setdefault(_C.get_isa(), object())


def _new_level_mark() -> None:
    global LEVEL_MARK
    LEVEL_MARK = _LEVEL_MARKS.setdefault(_C.get_isa(), object())

#: The most threads a C binding takes (bind_args.c, mq_check_threads).
MAX_THREADS = 1024


class RuntimeSettings:
    """ISA cap, threads, GEMV rows and the test knobs of the kernels.

    ``isa`` / ``threading_backend`` / ``gemv_max_rows`` are the C module's own
    state (``MONO_QUANT_ISA`` and ``MONO_QUANT_THREADS`` set their start
    values); ``int4_int8_activations`` is passed to each int4 kernel call.
    """

    def __init__(self) -> None:
        self._int4_int8_activations = True
        self._vnni256_for_tests = False
        self._maddubs_for_tests = False

    # -- kernel level ----------------------------------------------------------------------------
    @property
    def isa(self) -> str:
        """The kernel level in use: "scalar", "avx2" or "avx512" (at most what the CPU has)."""
        return _C.get_isa()

    def set_isa(self, name: str) -> str:
        """Cap the kernel level at ``name``; returns the previous level.  ValueError for a
        level the CPU lacks or an unknown name (from the C layer)."""
        previous = _C.set_isa(name)
        _new_level_mark()
        return previous

    def cpu_info(self) -> dict:
        """CPU features the kernels dispatch on, plus ``best_isa`` / ``active_isa``."""
        return _C.cpu_info()

    # -- threads -----------------------------------------------------------------------------------
    def num_threads(self) -> int:
        """Threads a kernel call uses: torch's intra-op setting (at least 1), so both agree, up to
        the 1024 the C bindings take (torch accepts more; the kernels split no finer anyway)."""
        return min(torch.get_num_threads(), MAX_THREADS)

    @property
    def threading_backend(self) -> str:
        """How the kernels use threads: "pool" (persistent helpers), "pthreads" (per call) or
        "omp-team" (the pool, with jobs of 15 us or more of one thread's work on torch's OpenMP team
        when torch's libgomp is loaded)."""
        return _C.linear_kernels()["threads"]

    def set_threading_backend(self, name: str) -> str:
        """Switch the threading backend; returns the previous one."""
        return _C.set_threading_backend(name)

    def set_gemv_max_rows(self, rows: int) -> int:
        """Rows up to which the int8 matmul takes its GEMV kernels (-1: chosen by thread
        count); returns the previous value."""
        return _C.set_gemv_max_rows(rows)

    def apply_environment(self) -> None:
        """``MONO_QUANT_THREADS`` ("pool", "pthreads" or "omp-team") picks the threading backend; an
        unknown value warns and keeps the default ("omp-team").  Called once, by the package's ``__init__``."""
        name = os.environ.get("MONO_QUANT_THREADS", "").strip().lower()
        if not name:
            return
        if name not in THREADING_BACKENDS:
            warn_at_caller(f"MONO_QUANT_THREADS={name!r} is not one of {THREADING_BACKENDS}; using \"omp-team\"",
                           RuntimeWarning)
            return
        self.set_threading_backend(name)

    # -- int4 activations ------------------------------------------------------------------------
    @property
    def int4_int8_activations(self) -> bool:
        """Whether int4 layers may quantize activations to int8 (see int4.set_int8_activations)."""
        return self._int4_int8_activations

    def set_int4_int8_activations(self, enabled: bool) -> bool:
        """Allow or forbid int4's int8-activation kernels; returns the previous setting."""
        previous, self._int4_int8_activations = self._int4_int8_activations, bool(enabled)
        return previous

    # -- test knobs ------------------------------------------------------------------------------
    def use_vnni256_for_tests(self, on: bool) -> bool:
        """Run the AVX-512 VNNI int8 kernels on 256-bit vectors (a test-only variant); returns
        the previous setting.  ValueError (from C) where the CPU has no such kernels."""
        _C.use_vnni256_for_tests(bool(on))
        previous, self._vnni256_for_tests = self._vnni256_for_tests, bool(on)
        return previous

    def use_maddubs_for_tests(self, on: bool) -> bool:
        """Run the AVX2 maddubs int8 kernels where VNNI would be used (a test-only variant);
        returns the previous setting."""
        _C.use_maddubs_for_tests(bool(on))
        previous, self._maddubs_for_tests = self._maddubs_for_tests, bool(on)
        return previous

    # -- AMX ----------------------------------------------------------------------------------------
    @property
    def amx(self) -> bool:
        """Whether the AVX-512 level's int8 matmuls run on AMX tiles (on by default where the CPU
        has AMX-INT8 and the OS granted the tile data; the same bits as AVX-512 VNNI), and int8
        weight-only and fp16 / bf16 Linear calls on AMX-BF16 from the rows of kernels/row_rules.py where
        the CPU has it (fp32-accurate)."""
        return _C.use_amx(None)

    def set_amx(self, enabled: bool) -> bool:
        """Run the AVX-512 level's int8 matmuls (dynamic and static int8, int4 with int8
        activations) on AMX (True) or on AVX-512 VNNI (False), and int8 weight-only and fp16 / bf16
        Linear calls of the rows of kernels/row_rules.py on AMX-BF16 (True, where the CPU has it) or
        the AVX-512 paths (False);
        returns the previous setting.  One atomic switch: a call running on another thread
        finishes on the kernel it started with.  RuntimeError (from C) for True where AMX
        can't run: ``cpu_info()["amx"]`` says why (no AMX-INT8, ``MONO_QUANT_AMX``, or Linux
        refused the tile data)."""
        return _C.use_amx(bool(enabled))

    @contextlib.contextmanager
    def for_tests(self, *, isa: Optional[str] = None, vnni256: Optional[bool] = None,
                  maddubs: Optional[bool] = None, int4_int8_activations: Optional[bool] = None,
                  gemv_max_rows: Optional[int] = None, amx: Optional[bool] = None) -> Iterator["RuntimeSettings"]:
        """Change the given settings inside a ``with`` block, restoring each on exit (also on
        an exception).  None leaves a setting as it is."""
        changes = ((self.set_isa, isa), (self.use_vnni256_for_tests, vnni256), (self.use_maddubs_for_tests, maddubs),
                   (self.set_int4_int8_activations, int4_int8_activations), (self.set_gemv_max_rows, gemv_max_rows),
                   (self.set_amx, amx))
        undo = []
        try:
            for setter, value in changes:
                if value is not None:
                    undo.append((setter, setter(value)))  # each setter returns the previous value
            yield self
        finally:
            for setter, previous in reversed(undo):
                setter(previous)


#: The process's settings (the C module's state is process-wide too).
SETTINGS = RuntimeSettings()
