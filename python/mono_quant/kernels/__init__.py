"""The one door to the C extension ``mono_quant._C``: typed wrappers (torch <-> NumPy,
dtype and device checks), the pure-torch twin of every entry point (:mod:`.reference`),
the packed layouts' constants (:mod:`.layout`) and the runtime settings (:mod:`.settings`).

Nothing else in the package imports ``_C``.  The names below are the wrappers most callers
use; the submodules hold the rest (``rows``, ``int8``, ``int4``, ``observers``).
"""
from __future__ import annotations

from . import int4, int8, layout, observers, reference, rows, settings
from .int8 import (MAX_IN_FEATURES, linear_int8, linear_kernels, pack_int8, packed_check, quantize_pack_int8,
                   quantize_pack_int8_file)
from .rows import (choose_qparams, dequantize_packed_int8, dequantize_rows, per_tensor_uses_fma, quantize_rows,
                   quantize_rows_fused, rows_minmax, rows_sqerr, to_numpy)
from .settings import SETTINGS, THREADING_BACKENDS

__all__ = [
    "SETTINGS", "THREADING_BACKENDS", "cpu_info", "per_tensor_uses_fma", "get_isa", "set_isa", "num_threads",
    "rows_minmax", "choose_qparams", "quantize_rows", "quantize_rows_fused", "rows_sqerr", "dequantize_rows",
    "dequantize_packed_int8",
    "to_numpy", "pack_int8", "quantize_pack_int8", "quantize_pack_int8_file", "packed_check", "linear_int8",
    "linear_kernels", "MAX_IN_FEATURES",
    "int4", "int8", "layout", "observers", "reference", "rows", "settings",
]


# thin aliases of the settings object (the names callers and tests have used)
def cpu_info() -> dict:
    """The CPU features mono-quant dispatches on, and the kernel level in use.

    Returns:
        A dict of booleans (``avx2``, ``fma``, ``f16c``, ``avx512f``, ``avx512bw``,
        ``avx512vl``, ``avx512dq``, ``avx512_vnni``, ``avx512_bf16``, ``avx_vnni``,
        ``amx_int8``: each true only when the CPU and the OS support it) plus
        ``best_isa`` (the best level this CPU runs: "scalar", "avx2" or "avx512")
        and ``active_isa`` (the level in use: lower when ``MONO_QUANT_ISA`` caps it).

    Examples:
        >>> info = mq.cpu_info()
        >>> info["active_isa"], info["avx512_vnni"]
        ('avx512', True)
    """
    return SETTINGS.cpu_info()


def get_isa() -> str:
    """The kernel level in use (``SETTINGS.isa``)."""
    return SETTINGS.isa


def set_isa(name: str) -> str:
    """Force the kernel level (``"scalar"``, ``"avx2"``, ``"avx512"``); returns the previous one."""
    return SETTINGS.set_isa(name)


def num_threads() -> int:
    """Threads the C kernels use: torch's intra-op setting, so both agree."""
    return SETTINGS.num_threads()
