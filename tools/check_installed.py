"""Check, from a fresh venv, that the installed wheel is what gets imported.

Run by `make wheel-test` with the test venv's Python, from outside the source
tree: fails unless mono_quant comes from that venv's site-packages (not from
python/ in a checkout), its extension loads, py.typed and the LICENSE were
installed with it, and the extension picks the ISA level the kernel reports in
/proc/cpuinfo: a release toolchain can break CPU detection silently (zig's
compiler-rt answers 0 to every __builtin_cpu_supports), leaving every user on
the scalar kernels with all tests green.
"""
from __future__ import annotations

import os
import platform
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

__all__ = ["check_installed"]


def expected_isa() -> str | None:
    """The best level dispatch.c should pick here, from the kernel's CPU flags (x86-64 Linux only)."""
    if platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"):
        return None
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    if {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "scalar"


def check_installed() -> list[str]:
    """Return the problems found (an empty list when all is well)."""
    import mono_quant
    from mono_quant import _C

    problems = []
    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    package = Path(mono_quant.__file__).resolve().parent
    if site not in package.parents:
        problems.append(f"mono_quant imported from {package}, not from this venv's {site}")
    if not (package / "py.typed").is_file():
        problems.append("py.typed is not installed")
    files = [str(f) for f in (metadata.files("mono-quant") or [])]
    if not any(f.endswith("LICENSE") for f in files):
        problems.append("the LICENSE is not installed with the distribution")
    info = _C.cpu_info()
    expected = expected_isa()
    if expected is not None and "MONO_QUANT_ISA" not in os.environ and info["best_isa"] != expected:
        problems.append(f"the extension picked {info['best_isa']!r} but /proc/cpuinfo says this CPU has {expected!r}")
    print(f"mono_quant {metadata.version('mono-quant')} from {package}; "
          f"extension {Path(_C.__file__).name}, best ISA {info['best_isa']}")
    return problems


if __name__ == "__main__":
    found = check_installed()
    for problem in found:
        print(f"check_installed: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
