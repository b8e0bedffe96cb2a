"""The safetensors container: checking an untrusted header before the
safetensors package opens the file, and a streaming writer.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {str: str}}`` (may end in spaces), then the
tensor bytes; offsets are relative to the end of the header, contiguous, and
cover the data exactly.  The Python package only writes whole dicts held in
memory, so quantize_checkpoint() writes through :class:`StreamingWriter`.
"""
from __future__ import annotations

import json
import math
import os
import queue
import struct
import threading
from dataclasses import dataclass
from typing import BinaryIO, Dict, List, Optional, Tuple

import torch

from .dtypes import SAFETENSORS_DTYPES, safetensors_code
from .errors import CheckpointError

__all__ = ["TensorEntry", "SafetensorsHeader", "read_header", "StreamingWriter", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100_000_000  # the safetensors package's own limit


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: torch dtype, shape, byte range in the data section."""

    dtype: torch.dtype
    shape: Tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class SafetensorsHeader:
    """A checked header: tensors in file order, the ``__metadata__`` dict, where the data starts."""

    path: str
    tensors: Dict[str, TensorEntry]
    metadata: Optional[Dict[str, str]]
    data_start: int
    file_size: int


def read_header(path) -> SafetensorsHeader:
    """Read and check the header of a safetensors file without reading its data.

    Raises ``FileNotFoundError`` / ``IsADirectoryError`` for a missing path and
    :class:`CheckpointError` for a file that is not a complete, valid
    safetensors file (truncated, corrupted header, unknown dtype, offsets past
    the end or not matching the shape, holes or overlaps in the data).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes, truncated?)")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: corrupted header (claims {n} bytes of header, limit {MAX_HEADER_BYTES})")
        if n > size - 8:
            raise CheckpointError(f"{path}: truncated file (header of {n} bytes, file has {size - 8} after the length)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupted header (not valid JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupted header (JSON is not an object)")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise CheckpointError(f"{path}: corrupted header (__metadata__ must map strings to strings)")
    data_size = size - 8 - n
    tensors: Dict[str, TensorEntry] = {}
    for name, info in header.items():
        tensors[name] = _check_entry(path, name, info, data_size)
    _check_layout(path, tensors, data_size)
    ordered = dict(sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)))
    return SafetensorsHeader(path, ordered, metadata, 8 + n, size)


def _check_entry(path: str, name: str, info, data_size: int) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: header entry is not an object")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if code not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{where}: unsupported dtype {code!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise CheckpointError(f"{where}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise CheckpointError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise CheckpointError(f"{where}: bad data_offsets {offsets!r}")
    if end > data_size:
        raise CheckpointError(f"{where}: data_offsets {offsets!r} run past the end of the data "
                              f"({data_size} bytes; file truncated?)")
    dtype = SAFETENSORS_DTYPES[code]
    expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if end - begin != expected:
        raise CheckpointError(f"{where}: {end - begin} bytes of data for shape {shape} of {code} ({expected} expected)")
    return TensorEntry(dtype, tuple(shape), begin, end)


def _check_layout(path: str, tensors: Dict[str, TensorEntry], data_size: int) -> None:
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if entry.begin != position:
            what = "overlaps the previous tensor" if entry.begin < position else "leaves a hole before it"
            raise CheckpointError(f"{path}: tensor {name!r} {what} (data_offsets [{entry.begin}, {entry.end}])")
        position = entry.end
    if position != data_size:
        raise CheckpointError(f"{path}: the tensors cover {position} bytes but the data section has {data_size} "
                              f"(truncated or trailing garbage)")


class StreamingWriter:
    """Write a safetensors file one tensor at a time, holding no tensor longer than needed.

    The data goes after a reserved header area; :meth:`finish` writes the
    header there, padded with spaces.  When the header outgrows the
    reservation, :meth:`finish` moves the data up (one extra copy).  With
    ``background=True`` a thread does the writes, so waiting on the disk
    overlaps the caller's work; at most ``max_pending_bytes`` (or one tensor)
    wait in its queue.  Use as a context manager so the thread always stops;
    a write error is raised by the next :meth:`add` or by :meth:`finish`.
    """

    def __init__(self, f: BinaryIO, reserve: int = 1 << 16, *, background: bool = False,
                 max_pending_bytes: int = 64 << 20):
        self._f = f
        self._reserve = max(16, reserve - reserve % 8)
        self._entries: Dict[str, dict] = {}
        self._position = 0
        self._error: Optional[BaseException] = None
        self._thread = None
        f.seek(self._reserve)
        if background:
            self._max_pending = max_pending_bytes
            self._pending = 0
            self._queue: "queue.Queue" = queue.Queue()
            self._room = threading.Condition()
            self._thread = threading.Thread(target=self._run, name="mono-quant-writer", daemon=True)
            self._thread.start()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append one tensor's bytes; ``name`` must be new."""
        self._raise_pending_error()
        if name in self._entries or name == "__metadata__":
            raise ValueError(f"duplicate tensor name {name!r} in the output")
        code = safetensors_code(tensor.dtype)
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        self._entries[name] = {"dtype": code, "shape": list(t.shape),
                               "data_offsets": [self._position, self._position + nbytes]}
        self._position += nbytes
        if not nbytes:
            return
        if self._thread is None:
            self._write(t)
            return
        with self._room:
            while self._pending and self._pending + nbytes > self._max_pending and self._error is None:
                self._room.wait()
            self._pending += nbytes
        self._queue.put(t)
        self._raise_pending_error()

    def _write(self, t: torch.Tensor) -> None:
        self._f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

    def _run(self) -> None:
        while True:
            t = self._queue.get()
            if t is None:
                return
            try:
                if self._error is None:
                    self._write(t)
            except BaseException as exc:  # reported to the caller by add() / finish()
                self._error = exc
            finally:
                with self._room:
                    self._pending -= t.numel() * t.element_size()
                    self._room.notify_all()
                del t

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "StreamingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    @property
    def names(self) -> List[str]:
        return list(self._entries)

    def finish(self, metadata: Optional[Dict[str, str]] = None) -> None:
        """Wait for pending writes, write the header (with ``metadata`` as ``__metadata__``) and flush."""
        self._stop()
        self._raise_pending_error()
        header = dict(self._entries)
        if metadata:
            header = {"__metadata__": dict(metadata), **header}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        f = self._f
        if 8 + len(raw) <= self._reserve:
            raw += b" " * (self._reserve - 8 - len(raw))
        else:  # header larger than reserved: shift the data up
            size = 8 + len(raw)
            size += (-size) % 8
            raw += b" " * (size - 8 - len(raw))
            _move_data(f, self._reserve, size, self._position)
        f.seek(0)
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.flush()


def _move_data(f: BinaryIO, src: int, dst: int, length: int, chunk: int = 1 << 24) -> None:
    """Move ``length`` bytes from offset ``src`` to a larger offset ``dst`` (back to front)."""
    remaining = length
    while remaining:
        n = min(chunk, remaining)
        remaining -= n
        f.seek(src + remaining)
        block = f.read(n)
        f.seek(dst + remaining)
        f.write(block)
