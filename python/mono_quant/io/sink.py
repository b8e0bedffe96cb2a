"""Where a streamed file's data section goes.

:class:`StagedSink` collects the bytes in page-aligned 8 MiB staging buffers
(which the producer can also fill in place: no copy) and a thread of its own
writes each full one while the next fills.  A checkpoint's output (about a
quarter of the input, written once) gains nothing from the page cache:
buffered writes there cost the CPU a page allocation and a copy per 4 KiB
and leave gigabytes of dirty pages that the final fsync then waits on.  So
on a disk the staging buffers are written with ``O_DIRECT`` (the disk's DMA
moves the bytes), falling back to plain writes where the file system refuses
direct I/O.  On tmpfs there is no disk and direct I/O is itself a page-cache
copy, so plain writes are used there.  ``MONO_QUANT_DIRECT_IO=0`` turns
direct I/O off, ``=1`` forces it.  :class:`BufferedSink` is the plain
fallback for a data section that doesn't start on a page.
"""
from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
from typing import BinaryIO, Optional

import numpy as np

__all__ = ["BufferedSink", "StagedSink", "open_sink", "wants_direct_io", "DIRECT_ALIGN"]

DIRECT_ALIGN = 4096  # offsets, sizes and buffer addresses of O_DIRECT writes: a multiple of this
_STAGE_BYTES = 8 << 20  # one direct write
_MEMORY_FILE_SYSTEMS = {"tmpfs", "ramfs", "hugetlbfs"}


class BufferedSink:
    """Appends to an open binary file at its current position (through the page cache)."""

    direct = False
    staged = False

    def region(self) -> None:
        return None  # no in-place filling: parts are written from the caller's buffers

    def __init__(self, f: BinaryIO):
        self._f = f

    def write(self, data: memoryview) -> None:
        self._f.write(data)

    def close(self) -> None:
        self._f.flush()

    def abort(self) -> None:
        pass


class StagedSink:
    """Appends to ``path`` from offset ``start`` (a multiple of DIRECT_ALIGN) through
    page-aligned staging buffers: :meth:`write` copies bytes in (or the caller
    fills :meth:`region` and :meth:`commit`-s it), and a thread of its own writes
    each full buffer while the next fills, so producing and writing overlap.
    :meth:`close` writes the padded last block and cuts the file at the real
    end.  With ``direct`` the writes use O_DIRECT; one refused with EINVAL (a
    file system without direct I/O) switches to plain writes at the same offsets."""

    staged = True

    def __init__(self, path, start: int, direct: bool = True, buffers: int = 3):
        if start % DIRECT_ALIGN:
            raise ValueError(f"staged writes must start at a multiple of {DIRECT_ALIGN}, got {start}")
        self._path = os.fspath(path)
        self.direct = bool(direct and hasattr(os, "O_DIRECT"))
        self._fd = os.open(self._path, os.O_WRONLY | (os.O_DIRECT if self.direct else 0))
        self._maps: list = []
        self._free: "queue.Queue" = queue.Queue()
        self._view: Optional[memoryview] = None
        self._thread: Optional[threading.Thread] = None
        try:
            for _ in range(max(2, buffers)):
                self._maps.append(mmap.mmap(-1, _STAGE_BYTES))  # anonymous maps: page aligned
            for m in self._maps[1:]:
                self._free.put(memoryview(m))
            self._view = memoryview(self._maps[0])
            self._filled = 0
            self._offset = start  # file offset of the current staging buffer's first byte
            self._full: "queue.Queue" = queue.Queue()
            self._error: Optional[BaseException] = None
            self._thread = threading.Thread(target=self._run, name="mono-quant-writer-io", daemon=True)
            self._thread.start()
        except BaseException:
            self._thread = None
            self.abort()
            raise

    def write(self, data: memoryview) -> None:
        data = data.cast("B")
        while len(data):
            n = min(len(data), _STAGE_BYTES - self._filled)
            # numpy copies without holding the GIL: the quantizing thread keeps running
            np.copyto(np.frombuffer(self._view[self._filled:self._filled + n], np.uint8),
                      np.frombuffer(data[:n], np.uint8))
            data = data[n:]
            self.commit(n)

    def region(self) -> memoryview:
        """The free rest of the current staging buffer, to be filled in place and then
        :meth:`commit`-ted (the bytes go to the file next, with no copy)."""
        return self._view[self._filled:]

    def commit(self, nbytes: int) -> None:
        """Append the first ``nbytes`` of :meth:`region`."""
        if not 0 <= nbytes <= _STAGE_BYTES - self._filled:
            raise ValueError(f"commit({nbytes}) past the staging buffer's {_STAGE_BYTES - self._filled} free bytes")
        self._filled += nbytes
        if self._filled == _STAGE_BYTES:
            self._submit(_STAGE_BYTES)
            self._view = self._free.get()

    def _submit(self, nbytes: int) -> None:
        if self._error is not None:
            raise self._error
        self._full.put((self._view, self._offset, nbytes))
        self._offset += nbytes
        self._filled = 0

    def _run(self) -> None:
        while True:
            item = self._full.get()
            if item is None:
                return
            view, offset, nbytes = item
            try:
                if self._error is None:
                    self._pwrite_all(view[:nbytes], offset)
            except BaseException as exc:  # raised by the next write() or close()
                self._error = exc
            finally:
                self._free.put(view)

    def _pwrite_all(self, view: memoryview, offset: int) -> None:
        written = 0
        while written < len(view):
            try:
                written += os.pwrite(self._fd, view[written:], offset + written)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                plain = os.open(self._path, os.O_WRONLY)  # the file system refused direct I/O: without it
                old, self._fd = self._fd, plain
                os.close(old)
                self.direct = False

    def close(self) -> None:
        """Write what is staged (padded to the alignment), wait for the writes and cut the
        file at the real end."""
        try:
            end = self._offset + self._filled
            if self._filled:
                padded = -(-self._filled // DIRECT_ALIGN) * DIRECT_ALIGN
                self._view[self._filled:padded] = bytes(padded - self._filled)
                self._submit(padded)
            self._stop()
            if self._error is not None:
                raise self._error
            os.ftruncate(self._fd, end)
        finally:
            self.abort()

    def _stop(self) -> None:
        if self._thread is not None:
            self._full.put(None)
            self._thread.join()
            self._thread = None

    def abort(self) -> None:
        self._stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._view = None
        while not self._free.empty():
            try:
                self._free.get().release()
            except BufferError:  # still viewed (only after an error): left to the collector
                pass
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # a view still out (only after an error): left to the collector
                pass
        self._maps = []


def _filesystem_type(path) -> Optional[str]:
    """The type of the file system holding ``path`` (Linux /proc/self/mountinfo; None elsewhere)."""
    try:
        target = os.path.realpath(path)
        best, kind = "", None
        with open("/proc/self/mountinfo") as info:
            for line in info:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount = fields[4].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, right.split()[0]
        return kind
    except OSError:
        return None


def wants_direct_io(path) -> bool:
    """Whether ``path``'s data should be written with O_DIRECT (see the module doc)."""
    choice = os.environ.get("MONO_QUANT_DIRECT_IO", "").strip().lower()
    if choice in ("0", "no", "off", "false"):
        return False
    if not hasattr(os, "O_DIRECT"):
        return False
    if choice in ("1", "yes", "on", "true"):
        return True
    return _filesystem_type(os.path.dirname(os.path.abspath(path)) or ".") not in _MEMORY_FILE_SYSTEMS


def open_sink(f: BinaryIO, path, start: int):
    """The sink for a data section starting at ``start`` of the file ``f`` opened at ``path``:
    a StagedSink (direct I/O where it pays) when ``start`` is aligned, else a BufferedSink on ``f``."""
    if start % DIRECT_ALIGN == 0:
        direct = wants_direct_io(path)
        try:
            return StagedSink(path, start, direct)
        except OSError:
            if not direct:
                raise
            return StagedSink(path, start, False)  # O_DIRECT refused at open (some file systems)
    f.seek(start)
    return BufferedSink(f)
