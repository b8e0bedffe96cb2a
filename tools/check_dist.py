"""Check what `make wheel` put in dist/ before anyone installs it.

Usage: python tools/check_dist.py DIST_DIR [MAX_GLIBC]   (MAX_GLIBC default 2.28)

Fails (exit 1, one line per problem) unless dist/ holds one sdist and one
wheel where:
- the wheel is tagged manylinux_X_Y with X.Y <= MAX_GLIBC (no bare linux_*),
  and `auditwheel show` agrees the binary needs no newer glibc;
- the wheel ships mono_quant/_C*.so, mono_quant/py.typed and the LICENSE,
  and its metadata says Apache-2.0 and asks for tomli on Python < 3.11;
- the sdist ships LICENSE, py.typed, the C sources and the build files.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

__all__ = ["check_dist"]

MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_\w+")


def _glibc_of(tag: str) -> tuple[int, int] | None:
    match = MANYLINUX.fullmatch(tag)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check_wheel(wheel: Path, max_glibc: tuple[int, int]) -> list[str]:
    problems = []
    platform_tags = wheel.stem.split("-")[-1].split(".")
    for tag in platform_tags:
        glibc = _glibc_of(tag)
        if tag.startswith("manylinux20"):
            continue  # legacy alias (manylinux2014 == manylinux_2_17), checked through its twin
        if glibc is None:
            problems.append(f"{wheel.name}: platform tag {tag!r} is not manylinux_X_Y (run auditwheel repair)")
        elif glibc > max_glibc:
            problems.append(f"{wheel.name}: tag {tag} needs glibc newer than {max_glibc[0]}.{max_glibc[1]}")

    shown = subprocess.run(["auditwheel", "show", str(wheel)], capture_output=True, text=True)
    found = MANYLINUX.search(" ".join(shown.stdout.split()))
    if shown.returncode != 0 or found is None:
        problems.append(f"auditwheel show failed on {wheel.name}: {shown.stderr.strip()[-300:]}")
    elif _glibc_of(found.group(0)) > max_glibc:
        problems.append(f"auditwheel places {wheel.name} at {found.group(0)}, newer than allowed")
    else:
        print(f"auditwheel: {wheel.name} is consistent with {found.group(0)}")

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        metadata = zf.read(metadata_name).decode() if metadata_name else ""
    wanted = {
        "the extension mono_quant/_C*.so": lambda n: re.fullmatch(r"mono_quant/_C\..*\.so", n),
        "mono_quant/py.typed": lambda n: n == "mono_quant/py.typed",
        "the LICENSE in .dist-info": lambda n: re.fullmatch(r"[^/]+\.dist-info/(licenses/)?LICENSE", n),
    }
    for what, matches in wanted.items():
        if not any(matches(n) for n in names):
            problems.append(f"{wheel.name} lacks {what}")
    if "License-Expression: Apache-2.0" not in metadata:
        problems.append(f"{wheel.name}: METADATA has no 'License-Expression: Apache-2.0'")
    if not re.search(r"Requires-Dist: tomli>=1\.1; python_version < \"3\.11\"", metadata):
        problems.append(f"{wheel.name}: METADATA does not ask for tomli on Python < 3.11")
    return problems


def _check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as tf:
        names = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    wanted = ["LICENSE", "pyproject.toml", "CMakeLists.txt", "README.md", "python/mono_quant/py.typed",
              "python/mono_quant/__init__.py", "csrc/mq.h", "csrc/dispatch.c", "csrc/module.c"]
    return [f"{sdist.name} lacks {name}" for name in wanted if name not in names]


def check_dist(dist: Path, max_glibc: tuple[int, int]) -> list[str]:
    """Return the problems found in dist/ (an empty list when all is well)."""
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"{dist} should hold one wheel and one sdist, found {[p.name for p in wheels + sdists]}"]
    return _check_wheel(wheels[0], max_glibc) + _check_sdist(sdists[0])


def main(argv: list[str]) -> int:
    dist = Path(argv[1]) if len(argv) > 1 else Path("dist")
    major, minor = (int(part) for part in (argv[2] if len(argv) > 2 else "2.28").split("."))
    problems = check_dist(dist, (major, minor))
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_dist: {dist} is fine")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
