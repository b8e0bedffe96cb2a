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
import stat
import struct
from dataclasses import dataclass
from typing import BinaryIO, Dict, List, Optional, Tuple

import torch

from .dtypes import SAFETENSORS_DTYPES, safetensors_code
from .errors import CheckpointError
from .sink import DIRECT_ALIGN, BufferedSink, open_sink
from .untrusted_json import MAX_JSON_DEPTH, UntrustedJSONError, loads_bounded

__all__ = ["TensorEntry", "check_empty_sides", "SafetensorsHeader", "read_header", "open_regular_file",
           "StreamingWriter", "MAX_HEADER_BYTES", "MAX_HEADER_DEPTH"]

MAX_HEADER_BYTES = 100_000_000  # the safetensors package's own limit
MAX_HEADER_DEPTH = MAX_JSON_DEPTH  # checked before parsing: a header is 3 levels deep


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
    with open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes, truncated?)")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            if prefix.startswith(b"PK\x03\x04") or (prefix[0] == 0x80 and 2 <= prefix[1] <= 5):  # zip / pickle
                raise CheckpointError(f"{path}: a torch.save file (.pt / .bin), not a .safetensors file: "
                                      f"quantize_checkpoint / `mono-quant quantize` and `compare` read it, "
                                      f"load / `inspect` read .safetensors")
            if prefix.lstrip().startswith(b"{"):
                raise CheckpointError(f"{path}: a JSON file (a shard index?), not a .safetensors file: inspect or "
                                      f"load one shard, or give the index to quantize_checkpoint / `mono-quant "
                                      f"quantize` / `compare`")
            raise CheckpointError(f"{path}: not a safetensors file, or a corrupted header (its first 8 bytes claim "
                                  f"{n} bytes of header, limit {MAX_HEADER_BYTES})")
        if n > size - 8:
            raise CheckpointError(f"{path}: truncated file (header of {n} bytes, file has {size - 8} after the length)")
        raw = f.read(n)
    try:
        header = loads_bounded(raw, MAX_HEADER_DEPTH)
    except UntrustedJSONError as exc:
        raise CheckpointError(f"{path}: corrupted header ({exc})") from None
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


def open_regular_file(path):
    """``open(path, "rb")`` for a regular file only (symlinks followed): a FIFO or a device
    would block or never end.  Raises FileNotFoundError / IsADirectoryError as open() does,
    CheckpointError for anything else that is not a regular file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{path} is a directory")
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{path}: not a regular file (a pipe, socket or device?)")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f


#: the product of an empty tensor's non-zero sides, at most (an empty Linear of a million outputs)
EMPTY_TENSOR_MAX_SIDE = 1 << 20


def check_empty_sides(where: str, shape, allowance: int = 0) -> None:
    """CheckpointError when an empty tensor's non-zero sides make more than EMPTY_TENSOR_MAX_SIDE
    (+ ``allowance``): no element, so no data bounds them, and a weight [2**25, 0] of 88 bytes was
    "quantized" into per-row scales of hundreds of MB (a [0, 2**63] one overflowed torch.empty)."""
    claimed = math.prod(d for d in shape if d)
    if 0 in shape and claimed > EMPTY_TENSOR_MAX_SIDE + allowance:
        raise CheckpointError(f"{where}: shape {list(shape)} holds no element but its other sides make {claimed} "
                              f"(at most {EMPTY_TENSOR_MAX_SIDE} for an empty tensor)")


def _check_entry(path: str, name: str, info, data_size: int) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: header entry is not an object")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str):  # a number or list would not even be looked up (unhashable)
        raise CheckpointError(f"{where}: dtype {code!r} is not a string (one of {sorted(SAFETENSORS_DTYPES)})")
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
    check_empty_sides(where, shape, data_size)
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
    """Write a safetensors file one tensor (or one part of a tensor) at a time,
    holding no tensor longer than needed.

    The data goes after a reserved header area; :meth:`finish` writes the
    header there, padded with spaces.  When the header outgrows the
    reservation, :meth:`finish` moves the data up (one extra copy).  With
    ``path`` (the file ``f`` was opened at) the data section goes through the
    staging buffers of a :class:`~.sink.StagedSink`, written by its own thread
    (with direct I/O where it pays; the reservation is then rounded up to a
    page), so waiting on the disk overlaps the caller's work; without, it is
    written to ``f`` as it comes.  A large tensor can be streamed as
    consecutive parts (:meth:`begin`, then :meth:`region` / :meth:`commit` to
    fill the staging buffer in place, or :meth:`add_part`, e.g. of a reusable
    :meth:`part_buffer`, then :meth:`end`).  Use as a context manager so the
    sink's thread always stops; a write error is raised by the next write or
    by :meth:`finish`.
    """

    def __init__(self, f: BinaryIO, reserve: int = 1 << 16, *, path=None, part_bytes: int = 4 << 20):
        self._f = f
        reserve = max(16, reserve)
        if path is not None:
            reserve = -(-reserve // DIRECT_ALIGN) * DIRECT_ALIGN
            self._sink = open_sink(f, path, reserve)
        else:
            reserve += (-reserve) % 8
            f.seek(reserve)
            self._sink = BufferedSink(f)
        self._reserve = reserve
        self._entries: Dict[str, dict] = {}
        self._position = 0
        self._open_tensor: Optional[list] = None  # [name, bytes expected, bytes added] while streaming parts
        self._part_bytes = part_bytes
        self._free_parts: List[torch.Tensor] = []

    @property
    def direct_io(self) -> bool:
        """Whether the data section is being written with direct I/O."""
        return self._sink.direct

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append one tensor's bytes; ``name`` must be new."""
        if self._open_tensor is not None:
            raise RuntimeError(f"add({name!r}) while {self._open_tensor[0]!r} is being streamed; end() it first")
        t = self._prepare(tensor)
        self._register(name, tensor.dtype, list(t.shape), t.numel() * t.element_size())
        self._write(t)

    def begin(self, name: str, dtype: torch.dtype, shape) -> None:
        """Start the tensor ``name`` of ``dtype`` and ``shape``, whose bytes follow as parts."""
        if self._open_tensor is not None:
            raise RuntimeError(f"begin({name!r}) while {self._open_tensor[0]!r} is being streamed")
        nbytes = torch.empty((), dtype=dtype).element_size()
        for d in shape:
            nbytes *= int(d)
        self._register(name, dtype, [int(d) for d in shape], nbytes)
        self._open_tensor = [name, nbytes, 0]

    def part_buffer(self) -> torch.Tensor:
        """A reusable int8 buffer of ``part_bytes`` to fill and pass (or a prefix of it) to
        :meth:`add_part` with ``recycle=True`` (a new one when none has come back)."""
        if self._free_parts:
            return self._free_parts.pop()
        return torch.empty(self._part_bytes, dtype=torch.int8)

    @property
    def part_bytes(self) -> int:
        return self._part_bytes

    def add_part(self, tensor: torch.Tensor, recycle: bool = False) -> None:
        """Append the next bytes of the tensor opened by :meth:`begin`.  ``recycle``: ``tensor``
        is (a prefix of) a :meth:`part_buffer`, handed back once written; don't touch it after."""
        if self._open_tensor is None:
            raise RuntimeError("add_part() outside begin() / end()")
        t = tensor if recycle else self._prepare(tensor)
        try:
            self._count_part(t.numel() * t.element_size())
            self._write(t)
        finally:
            if recycle:
                self._free_parts.append(t._base if t._base is not None else t)

    def region(self) -> Optional[torch.Tensor]:
        """Where the next bytes of the tensor opened by :meth:`begin` can be made in place:
        an int8 tensor over the free rest of the sink's staging buffer (fill a prefix,
        then :meth:`commit` it: no copy), or None when the sink has no such buffer."""
        if self._open_tensor is None:
            raise RuntimeError("region() outside begin() / end()")
        view = self._sink.region()
        if view is None or not len(view):
            return None
        return torch.frombuffer(view, dtype=torch.int8)

    def commit(self, nbytes: int) -> None:
        """Append the first ``nbytes`` of the last :meth:`region` to the open tensor."""
        self._count_part(nbytes)
        self._sink.commit(nbytes)

    def end(self) -> None:
        """Close the tensor opened by :meth:`begin`; its parts must have covered it exactly."""
        if self._open_tensor is None:
            raise RuntimeError("end() without begin()")
        name, expected, done = self._open_tensor
        self._open_tensor = None
        if done != expected:
            raise ValueError(f"tensor {name!r}: parts cover {done} of its {expected} bytes")

    def _count_part(self, nbytes: int) -> None:
        name, expected, done = self._open_tensor
        if done + nbytes > expected:
            raise ValueError(f"tensor {name!r}: parts add up to more than its {expected} bytes")
        self._open_tensor[2] += nbytes

    @staticmethod
    def _prepare(tensor: torch.Tensor) -> torch.Tensor:
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.contiguous()

    def _register(self, name: str, dtype: torch.dtype, shape: list, nbytes: int) -> None:
        if name in self._entries or name == "__metadata__":
            raise ValueError(f"duplicate tensor name {name!r} in the output")
        code = safetensors_code(dtype)
        self._entries[name] = {"dtype": code, "shape": shape,
                               "data_offsets": [self._position, self._position + nbytes]}
        self._position += nbytes

    def _write(self, t: torch.Tensor) -> None:
        if t.numel():
            self._sink.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

    def __enter__(self) -> "StreamingWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    @property
    def names(self) -> List[str]:
        return list(self._entries)

    def finish(self, metadata: Optional[Dict[str, str]] = None) -> None:
        """Wait for pending writes, write the header (with ``metadata`` as ``__metadata__``) and flush."""
        if self._open_tensor is not None:
            raise RuntimeError(f"finish() while {self._open_tensor[0]!r} is being streamed")
        sink, self._sink = self._sink, None
        sink.close()
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
