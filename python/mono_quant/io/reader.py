"""CheckpointReader: the tensors of a checkpoint on disk (one file, a shard folder
or an index), by name, read one at a time."""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from .errors import CheckpointError
from .file_kinds import is_mono_quant_metadata
from .plan import shard_plan
from .shards import SafetensorsShard, open_shard

__all__ = ["CheckpointReader", "open_checkpoint"]


class CheckpointReader:
    """The tensors of a checkpoint on disk, by name, read one at a time.

    ``keys()`` lists them in file order, ``spec(key)`` gives (dtype, shape)
    without reading, ``get(key)`` reads one.  Use as a context manager.
    Raises ``FileNotFoundError`` for a missing source and CheckpointError for
    an unreadable one, a bad index, or a name found in two shards.  ``skip``: a
    file a folder scan leaves out (see :func:`~.plan.shard_plan`).  :meth:`rename`
    gives tensors other names (a Hugging Face model's), by which every method then
    takes them.
    """

    def __init__(self, src, skip=None):
        self.src = Path(os.fsdecode(src))
        if not self.src.exists():
            raise FileNotFoundError(f"{self.src} does not exist")
        self._shards = []
        self._where: "OrderedDict[str, object]" = OrderedDict()
        self._stored: Dict[str, str] = {}  # a renamed tensor's name -> its name in its shard
        try:
            for path, wanted in shard_plan(self.src, None if skip is None else Path(os.fsdecode(skip))):
                shard = open_shard(path)
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

    def rename(self, mapping: Mapping[str, str]) -> None:
        """Name the tensors ``mapping`` maps (current name -> new name; the others keep theirs)
        by their new names, in the same order; each is still read from its shard by the name
        stored there.  CheckpointError when two tensors would get one name."""
        names = [mapping.get(k, k) for k in self._where]
        first: Dict[str, str] = {}
        for key, new in zip(self._where, names):
            if first.setdefault(new, key) != key:
                raise CheckpointError(f"{self.src}: tensors {first[new]!r} and {key!r} would both be named {new!r}")
        self._stored = {new: self.stored_name(key) for key, new in zip(self._where, names)
                        if self.stored_name(key) != new}
        self._where = OrderedDict(zip(names, self._where.values()))

    def drop(self, keys) -> None:
        """Leave the tensors ``keys`` out (as if the files did not hold them)."""
        for key in keys:
            self._where.pop(key, None)
            self._stored.pop(key, None)

    def stored_name(self, key: str) -> str:
        """The name ``key``'s tensor has in its file (``key`` unless renamed)."""
        return self._stored.get(key, key)

    def spec(self, key: str) -> Tuple[torch.dtype, Tuple[int, ...]]:
        return self._where[key].spec(self.stored_name(key))

    def nbytes(self, key: str) -> int:
        dtype, shape = self.spec(key)
        n = torch.empty((), dtype=dtype).element_size()
        for d in shape:
            n *= d
        return n

    def metadata(self) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` of a single-file safetensors source (None otherwise)."""
        if len(self._shards) == 1 and isinstance(self._shards[0], SafetensorsShard):
            return self._shards[0].header.metadata
        return None

    def is_mono_quant(self) -> bool:
        """Whether a shard is a file mono-quant wrote (an already quantized file, a static int8 model, a
        calibration file)."""
        return any(isinstance(s, SafetensorsShard) and is_mono_quant_metadata(s.header.metadata)
                   for s in self._shards)

    def total_bytes(self) -> int:
        return sum(self.nbytes(k) for k in self._where)

    def get(self, key: str) -> torch.Tensor:
        return self._where[key].get(self.stored_name(key))

    def location(self, key: str) -> Optional[Tuple[int, int]]:
        """(open file descriptor, byte offset) of ``key``'s data when it can be read
        straight from its file (a safetensors shard on a POSIX system), else None."""
        return self._where[key].location(self.stored_name(key))

    def shard_path(self, key: str) -> Path:
        """The file ``key`` is read from."""
        return self._where[key].path

    def may_share_storage(self, key: str) -> bool:
        """Whether ``key``'s tensor may be another key's too: a torch.save'd state_dict keeps
        tied weights tied (its tensors stay mapped while the reader is open); a safetensors
        file stores each name's own bytes."""
        return not isinstance(self._where[key], SafetensorsShard)

    def release(self, key: str, tensor: torch.Tensor) -> None:
        """Drop the pages under ``tensor`` (``key``'s tensor or a view of it) from this
        process; its data stays valid and is read again if touched."""
        self._where[key].release(self.stored_name(key), tensor)

    def items(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time; each shard is closed once its tensors are done."""
        previous = None
        for key, shard in self._where.items():
            if previous is not None and shard is not previous:
                previous.close()
            previous = shard
            stored = self.stored_name(key)
            tensor = shard.get(stored)
            yield key, tensor
            shard.release(stored, tensor)
            del tensor

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(src, skip=None) -> CheckpointReader:
    """A :class:`CheckpointReader` over ``src`` (file, shard directory or index; str, bytes or
    path-like); a folder scan leaves out the file ``skip``."""
    return CheckpointReader(src, skip)
