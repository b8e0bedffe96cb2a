"""Readers of one checkpoint file: a safetensors shard (memory-mapped, with pread
locations) or a torch.save'd state_dict (``torch.load(mmap=True, weights_only=True)``:
no code runs).  Both give tensors one at a time and drop their pages when done."""
from __future__ import annotations

import mmap
import os
import pickle
import re
import stat
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import safe_open

from ..tensor import no_data_reason
from .container import check_empty_sides, read_header
from .errors import CheckpointError
from .pages import drop_pages, file_mappings, map_address

__all__ = ["open_shard", "SafetensorsShard", "TorchShard", "archive_byteorder", "TORCH_SUFFIXES"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class _Descriptor:
    """A shard's read-only file descriptor for pread locations, opened on first use."""

    path: Path
    _fd: Optional[int] = None

    def _descriptor(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise CheckpointError(f"{self.path}: cannot open: {exc}") from exc
        return self._fd

    def _close_descriptor(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SafetensorsShard(_Descriptor):
    """A safetensors file, memory-mapped once (privately: nothing can write the
    file); tensors are zero-copy views of the map.  :meth:`release` drops the
    pages under a tensor (or a part of one) from this process, so the map
    never keeps the file resident: they are clean file pages, read again from
    the page cache if touched again."""

    def __init__(self, path: Path):
        self.path = path
        self.header = read_header(path)
        self._map: Optional[mmap.mmap] = None
        self._address = 0

    def keys(self) -> List[str]:
        return list(self.header.tensors)

    def spec(self, key: str) -> Tuple[torch.dtype, Tuple[int, ...]]:
        entry = self.header.tensors[key]
        return entry.dtype, entry.shape

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            try:
                with open(self.path, "rb") as f:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{self.path}: cannot map the file: {exc}") from exc
            if len(self._map) != self.header.file_size:
                raise CheckpointError(f"{self.path}: changed size while being read")
            self._address = map_address(self._map)
        return self._map

    def get(self, key: str) -> torch.Tensor:
        entry = self.header.tensors[key]
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        if sys.byteorder != "little":  # the file is little-endian: the package converts
            with safe_open(os.fspath(self.path), framework="pt", device="cpu") as f:
                return f.get_tensor(key)
        count = entry.nbytes // torch.empty((), dtype=entry.dtype).element_size()
        flat = torch.frombuffer(self._mapping(), dtype=entry.dtype, count=count,
                                offset=self.header.data_start + entry.begin)
        return flat.reshape(entry.shape)

    def location(self, key: str) -> Optional[Tuple[int, int]]:
        """(an open file descriptor, byte offset) of ``key``'s data, to read it without mapping."""
        if os.name != "posix" or sys.byteorder != "little":
            return None
        return self._descriptor(), self.header.data_start + self.header.tensors[key].begin

    def release(self, key: str, tensor: torch.Tensor) -> None:
        if self._map is not None:
            drop_pages(tensor, [(self._address, self._address + len(self._map), 0)])

    def close(self) -> None:
        self._map = None  # unmapped once no tensor views it any more
        self._close_descriptor()


def _unreadable(path: Path, exc: Exception) -> str:
    """What a torch.load failure means, in words (torch's own messages speak of mmap options and
    records): a file that is no zip archive is a legacy torch.save file or no checkpoint at all."""
    if not zipfile.is_zipfile(path):
        return (f"{path}: not a torch.save zip archive: a legacy torch.save file (torch < 1.6, or "
                f"_use_new_zipfile_serialization=False), or not a checkpoint at all; re-save its state_dict with a "
                f"current torch.save, or as .safetensors, and quantize that")
    reason = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    reason = re.sub(r"\s*\(Could this error message be improved\?.*", "", reason[0]) if reason else type(exc).__name__
    return (f"{path}: a zip archive that torch.load(weights_only=True) cannot read (corrupted, or not a "
            f"torch.save file): {reason}")


class TorchShard(_Descriptor):
    """A torch.save'd state_dict, memory-mapped; only tensors are accepted (weights_only)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            obj = torch.load(os.fspath(path), map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refused an object: never unpickled here
            raise CheckpointError(f"{path}: holds Python objects besides tensors (a whole model saved with "
                                  f"torch.save(model)?), which mono-quant never unpickles: save "
                                  f"model.state_dict() (or a .safetensors file) and quantize that") from exc
        except Exception as exc:  # RuntimeError for legacy (non-zip) or corrupted files
            raise CheckpointError(_unreadable(path, exc)) from exc
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            if all(isinstance(obj.get(wrapper), dict) for wrapper in ("state_dict", "model")):
                raise CheckpointError(f"{path}: holds both a 'state_dict' and a 'model' dict: save the one to "
                                      f"quantize alone (torch.save(checkpoint['model'], ...)) and quantize that")
            for wrapper in ("state_dict", "model"):
                if isinstance(obj.get(wrapper), dict):
                    obj = obj[wrapper]
                    break
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
        bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if bad:
            raise CheckpointError(f"{path}: not a state_dict of tensors (entries {bad[:5]!r})")
        for k, v in obj.items():
            check_empty_sides(f"{path}: tensor {k!r}", v.shape)
        no_data = [r for r in (no_data_reason(v, f"tensor {k!r}") for k, v in obj.items()) if r is not None]
        if no_data:  # (a .safetensors file always holds dense data)
            more = f" ({len(no_data) - 1} more like it)" if len(no_data) > 1 else ""
            raise CheckpointError(f"{path}: {no_data[0]}{more}")
        self._tensors: Dict[str, torch.Tensor] = obj
        self._mappings: Optional[List[Tuple[int, int, int]]] = None
        # torch.load byte-swaps a file saved on a machine of the other byte order in its private
        # map: then the file's bytes are not the tensors' and the swapped pages must stay
        self._file_is_tensors = archive_byteorder(path) in (None, sys.byteorder)

    def keys(self) -> List[str]:
        return list(self._tensors)

    def spec(self, key: str):
        t = self._tensors[key]
        return t.dtype, tuple(t.shape)

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def location(self, key: str) -> Optional[Tuple[int, int]]:
        """(open file descriptor, byte offset) of ``key``'s data: an uncompressed member of the
        zip archive, found through the address torch.load mapped it at (None when it can't
        be: not contiguous, not in a mapping of this file, not a POSIX system)."""
        t = self._tensors[key]
        if os.name != "posix" or not self._file_is_tensors or not t.is_contiguous() or t.numel() == 0:
            return None
        if self._mappings is None:
            self._mappings = file_mappings(self.path)
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        for lo, hi, file_offset in self._mappings:
            if lo <= start and end <= hi:
                return self._descriptor(), file_offset + (start - lo)
        return None

    def release(self, key: str, tensor: torch.Tensor) -> None:
        """Drop the pages of a tensor read from the memory map, so the map does
        not keep the whole file resident (they are re-read from the page cache
        if touched again)."""
        if not self._file_is_tensors:
            return
        if self._mappings is None:
            self._mappings = file_mappings(self.path)
        drop_pages(tensor, self._mappings)

    def close(self) -> None:
        self._tensors = {}
        self._close_descriptor()


def archive_byteorder(path: Path) -> Optional[str]:
    """The byte order a torch.save zip archive records ("little" / "big"), None when it
    records none (files from before torch 2.1: native order)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("/byteorder") and name.count("/") == 1:
                    return archive.read(name).decode("ascii", "replace").strip()
    except (OSError, zipfile.BadZipFile):
        pass
    return None


def open_shard(path: Path):
    """The reader of one checkpoint file, by its suffix (in any case).  Raises CheckpointError for a
    file that is not a regular file or of an unknown type."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from exc
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        raise CheckpointError(f"{path}: not a regular file (a pipe, socket or device?)")
    suffix = path.suffix.lower()  # model.SAFETENSORS too, as check_destination reads names (atomic.py)
    if suffix == ".safetensors":
        return SafetensorsShard(path)
    if suffix in TORCH_SUFFIXES:
        return TorchShard(path)
    raise CheckpointError(f"{path}: unknown checkpoint type (expected .safetensors, .pt, .pth or .bin)")
