"""Which files a checkpoint source consists of: a file, a folder of shards, or an
``*.index.json`` (checked: bounded JSON, shard names inside the folder, no symlink
leading out of it)."""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .container import MAX_HEADER_BYTES, open_regular_file
from .errors import CheckpointError
from .file_kinds import is_mono_quant_file
from .shards import TORCH_SUFFIXES
from .untrusted_json import UntrustedJSONError, loads_bounded

__all__ = ["shard_plan", "index_plan", "check_inside", "is_weight_file_name"]

# the names Hugging Face gives weight files (model.safetensors, model-00001-of-00002.safetensors,
# pytorch_model.bin, pytorch_model-00001-of-00002.bin): a folder scan takes torch.save files by
# these only, as others beside them are training state (training_args.bin, optimizer.pt, rng_state.pth)
WEIGHT_FILE_PREFIXES = ("pytorch_model", "model")


def shard_plan(src: Path, skip: Optional[Path] = None) -> List[Tuple[Path, Optional[set]]]:
    """(shard path, names the index assigns to it or None) in reading order.  Every file
    found through a folder or an index must lie in that folder (see :func:`check_inside`).

    A folder with one ``*.index.json`` is read through it.  Without one, a folder scan takes its
    ``*.safetensors`` files or, when it has none, its torch.save files named as weights
    (:func:`is_weight_file_name`: ``pytorch_model*.bin``, ``model*.pt``, ...), or its one torch.save
    file when it holds one only.  Suffixes match in any case.  ``skip``: a file the scan leaves out
    (quantize_checkpoint's earlier output in the folder it reads)."""
    if src.is_dir():
        indexes = sorted(p for p in src.iterdir() if p.name.lower().endswith(".index.json"))
        if len(indexes) > 1:
            raise CheckpointError(f"{src}: several index files ({', '.join(p.name for p in indexes)}); "
                                  f"pass the one to use")
        if indexes:
            check_inside(indexes[0], src)
            return index_plan(indexes[0])
        files = _scan(src, skip)
        for path in files:
            check_inside(path, src)
        return [(p, None) for p in files]
    if src.name.lower().endswith(".index.json"):
        return index_plan(src)
    return [(src, None)]


def is_weight_file_name(name: str) -> bool:
    """Whether a torch.save file called ``name`` is taken by a folder scan: ``.bin`` / ``.pt`` /
    ``.pth`` named ``pytorch_model*`` or ``model*`` (any case), as Hugging Face names weights."""
    name = name.lower()
    return Path(name).suffix in TORCH_SUFFIXES and name.startswith(WEIGHT_FILE_PREFIXES)


def _scan(src: Path, skip: Optional[Path]) -> List[Path]:
    """The weight files of a folder without an index (see :func:`shard_plan`); CheckpointError
    naming the files considered when there is none."""
    candidates, skipped = [], []
    for path in sorted(src.iterdir()):
        if path.suffix.lower() in (".safetensors",) + TORCH_SUFFIXES:
            (skipped if _is_file(path, skip) else candidates).append(path)
    # files mono-quant wrote beside the float ones (earlier outputs of quantize_checkpoint under other
    # names) are not shards of the float model; a folder of such files only is read as it is (load's)
    ours = [p for p in candidates if p.suffix.lower() == ".safetensors" and is_mono_quant_file(p)]
    floats = [p for p in candidates if p not in ours and (p.suffix.lower() == ".safetensors"
                                                          or is_weight_file_name(p.name))]
    if ours and floats:
        candidates = [p for p in candidates if p not in ours]
        skipped += ours
    files = ([p for p in candidates if p.suffix.lower() == ".safetensors"]
             or [p for p in candidates if is_weight_file_name(p.name)]
             or (candidates if len(candidates) == 1 else []))  # (a folder of one checkpoint.pt: that file)
    if files:
        return files
    message = (f"{src}: no *.safetensors, pytorch_model*.bin or model*.bin / .pt / .pth weight files and no "
               f"*.index.json in this directory")
    if candidates:
        more = f" and {len(candidates) - 10} more" if len(candidates) > 10 else ""
        message += (f" (considered {', '.join(p.name for p in candidates[:10])}{more}: other torch.save files are "
                    f"not taken for weights, as they often hold training state; pass the state_dict file itself)")
    message += "".join(f" ({p.name} is the output or a mono-quant file, not read)" for p in skipped)
    raise CheckpointError(message)


def _is_file(path: Path, other: Optional[Path]) -> bool:
    """Whether ``path`` is the file ``other`` (False when either is missing)."""
    try:
        return other is not None and os.path.samefile(path, other)
    except OSError:
        return False


def index_plan(index: Path) -> List[Tuple[Path, Optional[set]]]:
    """(shard path, names) of each shard an ``*.index.json`` lists, checked: bounded JSON,
    plain file names in the index's folder, shards that exist."""
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
        check_inside(path, index.parent)
        if not path.is_file():
            raise CheckpointError(f"{index}: shard {shard!r} "
                                  + ("is not a regular file" if path.exists() else "does not exist"))
        plan.append((path, by_shard[shard]))
    return plan


def check_inside(path: Path, folder: Path) -> None:
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
