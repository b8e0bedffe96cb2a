"""quantize_checkpoint(): quantize a checkpoint on disk without loading the model.

Inputs: one ``.safetensors`` file, a directory of shards (with an
``*.index.json``, or else every ``*.safetensors`` in it), an
``*.index.json`` file, or a ``.pt`` / ``.bin`` / ``.pth`` state_dict (opened
with ``torch.load(mmap=True, weights_only=True)``: no code runs).  Tensors are
read one at a time, quantized with ``quantize_state_dict_entry`` (so the
result is tensor for tensor what ``quantize(state_dict)`` gives), and
appended to the output file, so memory holds about one input tensor and its
quantized form at a time.
"""
from __future__ import annotations

import ctypes
import functools
import mmap
import os
import stat
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..api import _UNSET as UNSET
from ..api import check_group_size_given, packs_straight_to_int8, quantize_state_dict_entry, state_dict_entry_plan
from ..config import resolve_config
from ..qtypes import get_qtype
from ..report import Report, tensor_bytes
from .atomic import atomic_output, check_destination
from .container import MAX_HEADER_BYTES, StreamingWriter, open_regular_file, read_header
from .errors import CheckpointError
from .layers import state_dict_layer_entry
from .manifest import METADATA_KEY, dump_manifest, new_manifest
from .progress import Progress
from .stream_weight import stream_int4, stream_packed_int8
from .untrusted_json import UntrustedJSONError, loads_bounded

__all__ = ["quantize_checkpoint", "CheckpointReader", "open_checkpoint"]

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_PART_BYTES = 4 << 20  # a streamed weight's part: large enough to keep calls few, small enough to stay in cache


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


class _SafetensorsShard(_Descriptor):
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
            anchor = ctypes.c_char.from_buffer(self._map)
            self._address = ctypes.addressof(anchor)
            del anchor  # (a live ctypes view would keep the map from ever closing)
        return self._map

    def get(self, key: str) -> torch.Tensor:
        entry = self.header.tensors[key]
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        if sys.byteorder != "little":  # the file is little-endian: the package converts
            from safetensors import safe_open

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
            _drop_pages(tensor, [(self._address, self._address + len(self._map), 0)])

    def close(self) -> None:
        self._map = None  # unmapped once no tensor views it any more
        self._close_descriptor()


class _TorchShard(_Descriptor):
    """A torch.save'd state_dict, memory-mapped; only tensors are accepted (weights_only)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            obj = torch.load(os.fspath(path), map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:  # UnpicklingError for non-weights content, RuntimeError for legacy / corrupted files
            raise CheckpointError(f"{path}: cannot read as a state_dict with torch.load(mmap=True, "
                                  f"weights_only=True): {exc}") from exc
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            for wrapper in ("state_dict", "model"):
                if isinstance(obj.get(wrapper), dict):
                    obj = obj[wrapper]
                    break
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
        bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if bad:
            raise CheckpointError(f"{path}: not a state_dict of tensors (entries {bad[:5]!r})")
        self._tensors: Dict[str, torch.Tensor] = obj
        self._mappings: Optional[List[Tuple[int, int, int]]] = None
        # torch.load byte-swaps a file saved on a machine of the other byte order in its private
        # map: then the file's bytes are not the tensors' and the swapped pages must stay
        self._file_is_tensors = _archive_byteorder(path) in (None, sys.byteorder)

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
            self._mappings = _file_mappings(self.path)
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
            self._mappings = _file_mappings(self.path)
        _drop_pages(tensor, self._mappings)

    def close(self) -> None:
        self._tensors = {}
        self._close_descriptor()


def _archive_byteorder(path: Path) -> Optional[str]:
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


def _file_mappings(path: Path) -> List[Tuple[int, int, int]]:
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


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _drop_pages(tensor: torch.Tensor, mappings: List[Tuple[int, int, int]]) -> None:
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


def _open_shard(path: Path):
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from exc
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        raise CheckpointError(f"{path}: not a regular file (a pipe, socket or device?)")
    if path.suffix == ".safetensors":
        return _SafetensorsShard(path)
    if path.suffix in _TORCH_SUFFIXES:
        return _TorchShard(path)
    raise CheckpointError(f"{path}: unknown checkpoint type (expected .safetensors, .pt, .pth or .bin)")


class CheckpointReader:
    """The tensors of a checkpoint on disk, by name, read one at a time.

    ``keys()`` lists them in file order, ``spec(key)`` gives (dtype, shape)
    without reading, ``get(key)`` reads one.  Use as a context manager.
    Raises ``FileNotFoundError`` for a missing source and CheckpointError for
    an unreadable one, a bad index, or a name found in two shards.
    """

    def __init__(self, src):
        self.src = Path(os.fspath(src))
        if not self.src.exists():
            raise FileNotFoundError(f"{self.src} does not exist")
        self._shards = []
        self._where: "OrderedDict[str, object]" = OrderedDict()
        try:
            for path, wanted in _shard_plan(self.src):
                shard = _open_shard(path)
                self._shards.append(shard)
                keys = shard.keys()
                if wanted is not None:
                    absent = sorted(set(wanted) - set(keys))
                    if absent:
                        raise CheckpointError(f"{path}: the index lists tensors the shard lacks: {absent[:10]}")
                    keys = [k for k in keys if k in wanted]
                for key in keys:
                    if key in self._where:
                        raise CheckpointError(f"tensor {key!r} is in two shards ({self._where[key].path} and {path})")
                    self._where[key] = shard
        except BaseException:
            self.close()
            raise

    def keys(self) -> List[str]:
        return list(self._where)

    def spec(self, key: str) -> Tuple[torch.dtype, Tuple[int, ...]]:
        return self._where[key].spec(key)

    def nbytes(self, key: str) -> int:
        dtype, shape = self.spec(key)
        n = torch.empty((), dtype=dtype).element_size()
        for d in shape:
            n *= d
        return n

    def metadata(self) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` of a single-file safetensors source (None otherwise)."""
        if len(self._shards) == 1 and isinstance(self._shards[0], _SafetensorsShard):
            return self._shards[0].header.metadata
        return None

    def is_mono_quant(self) -> bool:
        """Whether a shard carries a mono-quant manifest (an already quantized file)."""
        return any(isinstance(s, _SafetensorsShard) and METADATA_KEY in (s.header.metadata or {})
                   for s in self._shards)

    def total_bytes(self) -> int:
        return sum(self.nbytes(k) for k in self._where)

    def get(self, key: str) -> torch.Tensor:
        return self._where[key].get(key)

    def location(self, key: str) -> Optional[Tuple[int, int]]:
        """(open file descriptor, byte offset) of ``key``'s data when it can be read
        straight from its file (a safetensors shard on a POSIX system), else None."""
        return self._where[key].location(key)

    def shard_path(self, key: str) -> Path:
        """The file ``key`` is read from."""
        return self._where[key].path

    def release(self, key: str, tensor: torch.Tensor) -> None:
        """Drop the pages under ``tensor`` (``key``'s tensor or a view of it) from this
        process; its data stays valid and is read again if touched."""
        self._where[key].release(key, tensor)

    def items(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time; each shard is closed once its tensors are done."""
        previous = None
        for key, shard in self._where.items():
            if previous is not None and shard is not previous:
                previous.close()
            previous = shard
            tensor = shard.get(key)
            yield key, tensor
            shard.release(key, tensor)
            del tensor

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(src) -> CheckpointReader:
    """A :class:`CheckpointReader` over ``src`` (file, shard directory or index)."""
    return CheckpointReader(src)


def _shard_plan(src: Path) -> List[Tuple[Path, Optional[set]]]:
    """(shard path, names the index assigns to it or None) in reading order.  Every file
    found through a folder or an index must lie in that folder (see :func:`_check_inside`)."""
    if src.is_dir():
        indexes = sorted(src.glob("*.index.json"))
        if len(indexes) > 1:
            raise CheckpointError(f"{src}: several index files ({', '.join(p.name for p in indexes)}); "
                                  f"pass the one to use")
        if indexes:
            _check_inside(indexes[0], src)
            return _index_plan(indexes[0])
        files = sorted(src.glob("*.safetensors")) or sorted(p for p in src.iterdir() if p.suffix in _TORCH_SUFFIXES)
        if not files:
            raise CheckpointError(f"{src}: no *.safetensors, *.bin, *.pt or *.index.json in this directory")
        for path in files:
            _check_inside(path, src)
        return [(p, None) for p in files]
    if src.name.endswith(".index.json"):
        return _index_plan(src)
    return [(src, None)]


def _index_plan(index: Path) -> List[Tuple[Path, Optional[set]]]:
    try:
        with open_regular_file(index) as f:
            raw = f.read(MAX_HEADER_BYTES + 1)
        if len(raw) > MAX_HEADER_BYTES:
            raise CheckpointError(f"{index}: larger than {MAX_HEADER_BYTES} bytes; not a shard index")
        data = loads_bounded(raw)
    except UntrustedJSONError as exc:
        raise CheckpointError(f"{index}: {exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise CheckpointError(f"{index}: needs a non-empty \"weight_map\" of tensor names to shard files")
    by_shard: Dict[str, set] = OrderedDict()
    for key, shard in weight_map.items():
        if os.path.basename(shard) != shard or shard in ("", ".", "..") or "\0" in shard:
            raise CheckpointError(f"{index}: shard {shard!r} must be a file name in the index's folder")
        by_shard.setdefault(shard, set()).add(key)
    plan = []
    for shard in sorted(by_shard):
        path = index.parent / shard
        _check_inside(path, index.parent)
        if not path.is_file():
            raise CheckpointError(f"{index}: shard {shard!r} does not exist")
        plan.append((path, by_shard[shard]))
    return plan


def _check_inside(path: Path, folder: Path) -> None:
    """Refuse a file found in ``folder`` (by a scan or an index) that is a symlink leading
    out of it: a checkpoint folder from elsewhere must not make us read the rest of the
    machine.  The Hugging Face hub cache's layout (``snapshots/<revision>/<file>`` linking
    to ``../../blobs/<hash>``) is allowed."""
    if not path.is_symlink():
        return
    target = Path(os.path.realpath(path))
    home = Path(os.path.realpath(folder))
    roots = [home]
    if home.parent.name == "snapshots":
        roots.append(home.parent.parent / "blobs")
    if not any(target == root or root in target.parents for root in roots):
        raise CheckpointError(f"{path}: a symlink to {target}, outside the checkpoint's folder {home}; refusing to "
                              f"follow it (pass that file itself, or copy it into the folder)")


def _streams(key: str, tensor: torch.Tensor, cfg):
    """``(function that streams key in parts (see :mod:`.stream_weight`), layer name)``, or
    None to quantize it whole: a selected, non-empty 2-D weight of a dtype the C kernels read,
    going to packed int8 or to int4, with NaN/Inf an error (a weight to skip must be
    checked whole before any of it is written)."""
    plan = state_dict_entry_plan(key, tensor, cfg)
    if not (plan is not None and plan[2] is None and cfg.nonfinite == "error" and tensor.dim() == 2
            and tensor.device.type == "cpu" and tensor.numel() > 0
            and tensor.dtype in (torch.float32, torch.float16, torch.bfloat16)):
        return None
    if packs_straight_to_int8(tensor, cfg):
        return stream_packed_int8, plan[0]
    if get_qtype(cfg.dtype).name == "int4":
        return stream_int4, plan[0]
    return None


def _header_reserve(reader: CheckpointReader, keys: List[str]) -> int:
    """Bytes to set aside for the output header: generous for weights that may be
    quantized (three tensors and a manifest entry), tight for the rest."""
    total = 4096
    for key in keys:
        dtype, shape = reader.spec(key)
        maybe_layer = key.endswith("weight") and dtype.is_floating_point and len(shape) in (2, 4)
        total += 1024 + 4 * len(key) if maybe_layer else 96 + len(key)
    return total


def quantize_checkpoint(src, dst, dtype=None, *, symmetric: Optional[bool] = None,
                        granularity: Optional[str] = None, group_size=UNSET,
                        include=None, exclude=None, min_weight_numel: Optional[int] = None,
                        nonfinite: Optional[str] = None, method: Optional[str] = None, config=None,
                        overwrite: bool = False,
                        progress: bool = False, measure_error: bool = False) -> Report:
    """Quantize the checkpoint at ``src`` into one mono-quant ``.safetensors`` file ``dst``.

    Each tensor is quantized exactly as ``quantize(state_dict, ...)`` does with
    the same options (2-D / 4-D floating ``*.weight`` tensors, filtered by
    ``include`` / ``exclude`` name globs and ``min_weight_numel``; other
    tensors are copied), so ``load(dst)`` holds the same tensors and
    ``load(dst, model=skeleton)`` gives the model ``quantize(model)`` would.
    Only about one tensor is in memory at a time.  ``progress``: draw a
    progress bar on stderr.  ``method`` (int4): "rtn", "mse" (default) or "hqq", as for
    ``quantize()``.  ``measure_error``: also compute each layer's
    SQNR for the report (one more pass over each weight; otherwise NaN, and
    ``mono-quant compare`` measures it afterwards).  ``group_size``: unset takes the config's
    default; None is per-channel (int4).  The write is atomic and an existing ``dst`` is replaced only with
    ``overwrite=True``.

    Returns a :class:`~mono_quant.report.Report` (layers, skipped, bytes
    before / after).  Raises ``FileNotFoundError`` (missing ``src``),
    ``FileExistsError`` (``dst`` exists), ``ValueError`` for bad options or
    NaN/Inf weights (with ``nonfinite="error"``), :class:`CheckpointError`
    for an unreadable checkpoint.
    """
    options = dict(dtype=dtype, symmetric=symmetric, granularity=granularity, include=include, exclude=exclude,
                   min_weight_numel=min_weight_numel, nonfinite=nonfinite, method=method)
    if group_size is not UNSET:  # None is meaningful: per-channel int4
        options["group_size"] = 0 if group_size is None else group_size
    cfg = resolve_config(config, **options)
    check_group_size_given(cfg, group_size is not UNSET)
    check_destination(dst, overwrite)
    report = Report()
    manifest = new_manifest("state_dict", cfg)
    with open_checkpoint(src) as reader:
        if reader.is_mono_quant():
            raise CheckpointError(f"{src} is already a mono-quant file; quantize the float checkpoint instead")
        keys = reader.keys()
        total = reader.total_bytes()
        bar = Progress(total, bool(progress))
        reserve = _header_reserve(reader, keys)
        try:
            with atomic_output(dst, overwrite) as tmp:
                with open(tmp, "w+b") as f, StreamingWriter(f, reserve, path=tmp, part_bytes=_PART_BYTES) as writer:
                    for key, tensor in reader.items():
                        report.model_bytes_before += tensor_bytes(tensor)
                        streamed = _streams(key, tensor, cfg)
                        if streamed is not None:
                            stream, name = streamed
                            layer, own = stream(key, tensor, name, cfg, writer, reader, measure_error)
                            report.layers.append(layer)
                            report.model_bytes_after += layer.bytes_after
                            manifest["layers"].append(state_dict_layer_entry(layer, cfg, own, tensor.dtype))
                            bar.update(tensor_bytes(tensor), key)
                            del tensor
                            continue
                        outputs, layer, skipped = quantize_state_dict_entry(key, tensor, cfg, copy=False,
                                                                            measure_error=measure_error)
                        for name, out in outputs.items():
                            try:
                                writer.add(name, out)
                            except ValueError as exc:
                                raise CheckpointError(f"{src}: {exc} (quantizing {key!r})") from None
                            report.model_bytes_after += tensor_bytes(out)
                        if layer is not None:
                            report.layers.append(layer)
                            prefix = key[: -len("weight")]
                            own = {name[len(prefix):]: out for name, out in outputs.items()}
                            manifest["layers"].append(state_dict_layer_entry(layer, cfg, own, tensor.dtype))
                        if skipped is not None:
                            report.skipped.append(skipped)
                        bar.update(tensor_bytes(tensor), key)
                        del tensor, outputs
                    manifest["skipped"] = [list(s) for s in report.skipped]
                    writer.finish(dump_manifest(manifest))
        finally:
            bar.close()
    return report
