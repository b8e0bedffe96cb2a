"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzip IDX files).

Read with NumPy only (no torchvision, no network).  The files are validated
as untrusted input: magic number, rank, dimensions and payload length.

    images, labels = load_fashion_mnist("test")   # uint8 (10000, 28, 28), uint8 (10000,)
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

__all__ = ["FASHION_MNIST_DIR", "DatasetMissingError", "fashion_mnist_available", "load_fashion_mnist"]

#: Where Debian installs the files; ``MONO_QUANT_FASHION_MNIST`` overrides it.
FASHION_MNIST_DIR = Path(os.environ.get("MONO_QUANT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
_UBYTE = 0x08  # IDX type code of unsigned bytes


class DatasetMissingError(FileNotFoundError):
    """The dataset files are not installed."""


def fashion_mnist_available(directory: Union[str, Path, None] = None) -> bool:
    """True when all four files are present."""
    d = Path(directory) if directory is not None else FASHION_MNIST_DIR
    return all((d / name).is_file() for images, labels, _ in _FILES.values() for name in (images, labels))


def _read_idx(path: Path, ndim: int, count: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes)")
    zero, dtype_code, rank = data[0] | data[1], data[2], data[3]
    if zero != 0 or dtype_code != _UBYTE or rank != ndim:
        raise ValueError(f"{path}: not an unsigned-byte IDX file of rank {ndim} "
                         f"(header bytes {data[:4].hex()})")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims[0] != count or (ndim == 3 and dims[1:] != (28, 28)):
        raise ValueError(f"{path}: expected {count} items of 28x28, header says {dims}")
    payload = memoryview(data)[4 + 4 * ndim:]
    if len(payload) != int(np.prod(dims)):
        raise ValueError(f"{path}: payload is {len(payload)} bytes, header promises {int(np.prod(dims))}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims).copy()


def load_fashion_mnist(split: str = "test", directory: Union[str, Path, None] = None,
                       limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (N, 28, 28)`` and labels ``uint8 (N,)`` of ``split`` ("train" or "test").

    ``limit`` keeps the first ``limit`` items.  Raises DatasetMissingError
    (saying which package to install) when the files are absent, ValueError
    when a file is malformed.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = Path(directory) if directory is not None else FASHION_MNIST_DIR
    images_name, labels_name, count = _FILES[split]
    missing = [n for n in (images_name, labels_name) if not (d / n).is_file()]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST not found in {d} (missing {', '.join(missing)}): install Debian's package with "
            "`apt-get install -y dataset-fashion-mnist`, or set MONO_QUANT_FASHION_MNIST to a directory holding "
            "the four *-idx*-ubyte.gz files")
    images = _read_idx(d / images_name, 3, count)
    labels = _read_idx(d / labels_name, 1, count)
    if labels.max(initial=0) > 9:
        raise ValueError(f"{d / labels_name}: label {int(labels.max())} outside 0..9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels
