"""Dropping the pages of a memory-mapped file from this process (madvise).

A checkpoint read through a memory map would otherwise stay resident as it is
read: once a tensor is quantized its pages are released.  They are clean file
pages, so they are only dropped from this process, never lost (touched again,
they are read back from the page cache)."""
from __future__ import annotations

import ctypes
import functools
import mmap
import os
from pathlib import Path
from typing import List, Tuple

import torch

__all__ = ["file_mappings", "drop_pages", "map_address"]


def file_mappings(path: Path) -> List[Tuple[int, int, int]]:
    """(start, end, file offset) of each address range where this process maps ``path``
    (Linux; empty elsewhere)."""
    try:
        target = os.path.realpath(path)
        ranges = []
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip() == target:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end, int(fields[2], 16)))
        return ranges
    except OSError:
        return []


def map_address(mapping: mmap.mmap) -> int:
    """The address of a writable (copy-on-write) mmap's first byte."""
    anchor = ctypes.c_char.from_buffer(mapping)
    address = ctypes.addressof(anchor)
    del anchor  # (a live ctypes view would keep the map from ever closing)
    return address


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def drop_pages(tensor: torch.Tensor, mappings: List[Tuple[int, int, int]]) -> None:
    """madvise(MADV_DONTNEED) the pages under ``tensor`` when they lie in a file
    mapping (clean file pages are only dropped from this process, never lost;
    anonymous memory is never touched; no madvise on Windows: the pages go when the map does)."""
    if not mappings or tensor.numel() == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    for lo, hi, _ in mappings:
        if lo <= start and end <= hi:
            first, last = start - start % page, min(hi, end + (-end) % page)
            _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)
            return
