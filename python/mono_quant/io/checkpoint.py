"""quantize_checkpoint(): quantize a checkpoint on disk without loading the model.

Inputs: one ``.safetensors`` file, a directory of shards (with an
``*.index.json``, or else every ``*.safetensors`` in it), an
``*.index.json`` file, or a ``.pt`` / ``.bin`` / ``.pth`` state_dict (see
:mod:`.reader`).  Tensors are read one at a time, quantized with
:func:`~mono_quant.entries.quantize_state_dict_entry` (so the result is
tensor for tensor what ``quantize(state_dict)`` gives) or streamed in parts
(:mod:`.stream_weight`), and appended to the output file, so memory holds
about one input tensor and its quantized form at a time.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch

from ..config import DEFAULT, QuantConfig, resolve_options
from ..composites import attention_out_proj_keys
from ..entries import packs_straight_to_int8, quantize_state_dict_entry, state_dict_entry_plan
from ..errors import AlreadyQuantizedError, CheckpointError, ConfigError
from ..formats import get_format
from ..modules.conv1d import conv2d_weight_of
from ..orig_dtype import ORIG_DTYPES
from ..report import LayerReport, Report, tensor_bytes
from ..result import QuantizationResult
from ..strictness import (check_patterns_match, holder_names_of_keys, layer_names_of_keys, refuse_quantized_state_dict,
                          warn_if_nothing_quantized)
from .atomic import atomic_output, check_destination
from .container import StreamingWriter
from .file_kinds import has_metadata_key, kind_for_file
from .hf_checkpoint import HfCheckpointPlan, add_tied_aliases, hf_checkpoint_plan, mark_module_types, write_hf_entry
from .layers import state_dict_layer_entry
from .manifest import METADATA_KEY, dump_manifest, new_manifest
from .progress import Progress
from .reader import CheckpointReader, open_checkpoint
from .stream_weight import stream_int4, stream_packed_int8
from .tied import FirstEntry, alias_entry, storage_ties

__all__ = ["quantize_checkpoint", "CheckpointReader", "open_checkpoint"]

log = logging.getLogger("mono_quant")

_PART_BYTES = 4 << 20  # a streamed weight's part: large enough to keep calls few, small enough to stay in cache


def quantize_checkpoint(src, dst, dtype=None, *, symmetric: Optional[bool] = None,
                        granularity: Optional[str] = None, group_size=DEFAULT,
                        include=None, exclude=None, min_weight_numel: Optional[int] = None,
                        nonfinite: Optional[str] = None, activations=DEFAULT, method: Optional[str] = None,
                        embeddings: Optional[bool] = None, config=None, overwrite: bool = False,
                        progress: bool = False, measure_error: bool = False,
                        reduce_range: Optional[bool] = None) -> QuantizationResult:
    """Quantize the checkpoint at ``src`` into one mono-quant ``.safetensors`` file ``dst``.

    Each tensor is quantized exactly as ``quantize(state_dict, ...)`` does with
    the same options (2-D / 4-D floating ``*.weight`` tensors, filtered by
    ``include`` / ``exclude`` name globs and ``min_weight_numel``; other
    tensors are copied), so ``load(dst)`` holds the same tensors and
    ``load(dst, model=skeleton)`` gives the model ``quantize(model)`` would.
    Only about one tensor is in memory at a time.  The write is atomic.

    Args:
        src: A ``.safetensors`` file, a folder of shards, an ``*.index.json``,
            or a ``.pt`` / ``.bin`` / ``.pth`` state_dict (read with
            ``weights_only=True``: no code runs).  A folder without an index
            is read as its ``*.safetensors`` files or, without any, its
            ``pytorch_model*.bin`` / ``model*.bin`` / ``.pt`` / ``.pth``
            files (others there, such as ``training_args.bin`` or
            ``optimizer.pt``, are training state); ``dst``, when an earlier
            output lies in that folder, is never read as a shard.  Suffixes
            match in any case.
        dst: The output ``.safetensors`` file.
        dtype: As for :func:`~mono_quant.quantize` ("int8" by default).
        symmetric: As for :func:`~mono_quant.quantize`.
        granularity: As for :func:`~mono_quant.quantize`.
        group_size: int4 only: as for :func:`~mono_quant.quantize` (None is per-channel).
        include: Layer-name globs to quantize (types cannot match: there is no model).
        exclude: Layer-name globs to leave in float.
        min_weight_numel: As for :func:`~mono_quant.quantize`.
        nonfinite: As for :func:`~mono_quant.quantize`.
        activations: "dynamic" (default) or None (weight-only): recorded in
            the file, and what ``load(dst, model=...)`` gives its int8 layers.
        reduce_range: int8 dynamic only: 7-bit activations (see
            :func:`~mono_quant.quantize`), recorded in the file like ``activations``.
        method: int4 only: "rtn", "mse" (default) or "hqq".
        embeddings: Must not be True: without the model a 2-D ``*.weight``
            cannot be told from an embedding table (quantize the model with
            :func:`~mono_quant.quantize` instead).
        config: As for :func:`~mono_quant.quantize`.
        overwrite: Replace an existing ``dst``.
        progress: Draw a progress bar on stderr.
        measure_error: Also compute each layer's SQNR for the report (one
            more pass over each weight; otherwise NaN, and ``mono-quant
            compare`` measures it afterwards).

    Returns:
        A :class:`~mono_quant.QuantizationResult` with ``model`` None,
        ``path`` the output file, ``.report``, ``.skipped`` and ``.config``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
        OSError: ``dst`` cannot be written (the message names it; nothing is left behind).
        ConfigError: A bad option, or ``embeddings=True``.
        NonFiniteWeightError: A weight holds NaN/Inf with ``nonfinite="error"``.
        CheckpointError: ``src`` is unreadable, inconsistent, or a mono-quant file already.
        AlreadyQuantizedError: ``src`` holds a state_dict mono-quant quantized, saved
            without its manifest (as :func:`~mono_quant.quantize` refuses it).

    Warns:
        NothingQuantizedWarning: No entry was quantized (the output holds the float tensors).

    Examples:
        >>> result = mq.quantize_checkpoint("model.safetensors", "model-int4.safetensors", dtype="int4")
        >>> qmodel = mq.load(result.path, model=skeleton)
    """
    for what, value in (("src", src), ("dst", dst)):
        if not isinstance(value, (str, bytes, os.PathLike)):
            raise TypeError(f"quantize_checkpoint() takes file paths; {what} is a {type(value).__name__}"
                            + (": for a model or a state_dict in memory use mono_quant.quantize()"
                               if isinstance(value, (torch.nn.Module, Mapping)) else ""))
    src, dst = os.fsdecode(src), os.fsdecode(dst)  # bytes paths too, as open() takes them
    cfg = resolve_options(config, dtype=dtype, symmetric=symmetric, granularity=granularity, include=include,
                          exclude=exclude, min_weight_numel=min_weight_numel, nonfinite=nonfinite,
                          activations=activations, group_size=group_size, method=method, embeddings=embeddings,
                          reduce_range=reduce_range)
    _check_checkpoint_options(cfg)
    if cfg.activations == "static":  # calibration runs a model: a checkpoint has none (issue 12)
        raise ConfigError("activations='static' needs the model and calibration data: use mono_quant.quantize()")
    check_destination(dst, overwrite)
    with open_checkpoint(src, skip=_earlier_output(dst)) as reader:
        if reader.is_mono_quant():
            raise CheckpointError(f"{src} is already a mono-quant file; quantize the float checkpoint instead")
        _refuse_quantized_entries(reader, src)
        _refuse_overwriting_source(reader, src, dst)
        hf_plan = hf_checkpoint_plan(src, reader.keys())
        _use_model_names(reader, hf_plan, src)
        check_patterns_match(cfg, layer_names_of_keys(reader.keys()), holders=holder_names_of_keys(reader.keys()))
        hf_plan.keep_float.update(attention_out_proj_keys(reader.keys()))  # as quantize(state_dict) does
        report = _write(reader, src, dst, cfg, overwrite, progress, measure_error, hf_plan)
    return QuantizationResult(None, report.skipped, report, cfg, path=Path(dst))


def _use_model_names(reader: CheckpointReader, hf_plan: HfCheckpointPlan, src) -> None:
    """Read an HF folder under its model's names (transformers renames checkpoint keys on load:
    a ViT's ``encoder.layer.0.attention.attention.query`` is the model's ``layers.0.attention.q_proj``),
    so that include / exclude, the plan and the output's layers are the names ``load(dst, model=...)``
    finds.  CheckpointError, before anything is written, for a folder whose tensors transformers
    merges / splits on load (MoE experts, a fused qkv): that takes the whole model, not a tensor at a time."""
    converted = hf_plan.converted()
    if converted:
        key, pattern = next(iter(converted.items()))
        raise CheckpointError(
            f"{src}: transformers converts {len(converted)} of its tensors while loading (merges, splits or "
            f"permutes them, e.g. {key!r} by its conversion {pattern!r}), which quantize_checkpoint can't do one "
            f"tensor at a time: load the folder with from_pretrained(..., quantization_config="
            f"mono_quant.MonoQuantConfig(...)) and save_pretrained the model, or quantize the loaded model with "
            f"mono_quant.quantize() and mono_quant.save()")
    if hf_plan.ignored:
        reader.drop(hf_plan.ignored)
        log.info("%s: %d tensors the model ignores on load left out (e.g. %s)", src, len(hf_plan.ignored),
                 hf_plan.ignored[0])
    renamed = hf_plan.renamed()
    if renamed:
        reader.rename(renamed)
        log.info("%s: %d tensors read under the model's names (e.g. %s -> %s)", src, len(renamed),
                 *next(iter(renamed.items())))


def _earlier_output(dst) -> Optional[str]:
    """``dst`` when it is a file mono-quant wrote (an earlier run's output, which ``overwrite``
    replaces): a scan of the folder it lies in must not read it as a shard of the float model.
    A float ``dst`` stays in the scan, so that :func:`_refuse_overwriting_source` refuses it."""
    if has_metadata_key(dst, METADATA_KEY) or kind_for_file(dst) is not None:
        return dst
    return None


def _refuse_quantized_entries(reader: CheckpointReader, src) -> None:
    """AlreadyQuantizedError, as quantize(state_dict) raises, for a state_dict of mono-quant layers
    saved without a manifest (``torch.save(qmodel.state_dict())``): its float entries would be
    copied and its integer ones kept, a "quantized" file of the float weights.  Names only: no
    tensor is read."""
    try:
        refuse_quantized_state_dict(dict.fromkeys(reader.keys()))
    except AlreadyQuantizedError as exc:
        raise AlreadyQuantizedError(f"{src}: {exc}") from None


def _refuse_overwriting_source(reader: CheckpointReader, src, dst) -> None:
    """Refuse a ``dst`` that is one of the files being read: with ``overwrite`` the rename at the
    end would replace the float checkpoint by its quantized copy, and the original would be lost."""
    dst = Path(os.fspath(dst))
    if not dst.exists():
        return
    sources = {reader.shard_path(k) for k in reader.keys()}
    src = Path(os.fspath(src))
    if src.is_file():
        sources.add(src)  # an *.index.json too
    elif src.is_dir():  # a folder's index and config.json are read too
        sources |= {p for p in src.iterdir() if p.name == "config.json" or p.name.endswith(".index.json")}
    for path in sources:
        if os.path.samefile(path, dst):
            raise CheckpointError(f"{dst} is the checkpoint being quantized ({path}): write the quantized "
                                  f"file to another path (overwriting would lose the float weights)")


def _check_checkpoint_options(cfg: QuantConfig) -> None:
    """Refuse what a checkpoint cannot honour: there is no model to find embedding tables in."""
    if not cfg.embeddings:
        return
    if cfg.source.get("embeddings") == "argument":
        raise ConfigError("embeddings=True needs the model: in a checkpoint an embedding table is a 2-D "
                          "*.weight like a Linear's; quantize the model with mono_quant.quantize(model, "
                          "embeddings=True), or leave embeddings unset here")
    log.warning("%s: embeddings = true is not used by quantize_checkpoint (a checkpoint has no model to find "
                "embedding tables in); they are treated as any other 2-D weight", cfg.source.get("embeddings"))
    cfg.embeddings = False


def _write(reader: CheckpointReader, src, dst, cfg: QuantConfig, overwrite: bool, progress: bool,
           measure_error: bool, hf_plan: HfCheckpointPlan) -> Report:
    """Quantize every tensor of ``reader`` into ``dst`` (atomically); the report."""
    report = Report()
    manifest = new_manifest("state_dict", cfg)
    keys = reader.keys()
    bar = Progress(reader.total_bytes(), bool(progress))
    ties = storage_ties(reader)  # a torch.save'd state_dict's tied weights: stored once, as mq.save does
    tied_to = set(ties.values())
    firsts: Dict[str, FirstEntry] = {}
    try:
        with atomic_output(dst, overwrite) as tmp:
            with open(tmp, "w+b") as f, StreamingWriter(f, _header_reserve(reader, keys), path=tmp,
                                                        part_bytes=_PART_BYTES) as writer:
                for key, tensor in reader.items():
                    first = firsts.get(ties.get(key))
                    # (only a tie's names need it: the plan once more for each)
                    treatment, own_reason = _treatment(key, tensor, cfg, hf_plan) \
                        if first is not None or key in tied_to else (None, None)
                    if first is not None and first.treatment == treatment:
                        alias_entry(first, key, manifest, report, own_reason)
                    else:
                        report.model_bytes_before += tensor_bytes(tensor)
                        before = (len(writer.names), len(manifest["layers"]), len(report.layers),
                                  len(report.skipped)) if key in tied_to else None
                        if not write_hf_entry(hf_plan, _write_entry, key, tensor, cfg, writer, reader, src, report,
                                              manifest, measure_error):
                            _write_entry(key, tensor, cfg, writer, reader, src, report, manifest, measure_error)
                        if before is not None:
                            firsts[key] = FirstEntry(key, writer.names[before[0]:], manifest["layers"][before[1]:],
                                                     report.layers[before[2]:], report.skipped[before[3]:],
                                                     treatment)
                    bar.update(tensor_bytes(tensor), key)
                    del tensor
                manifest["skipped"] = [list(s) for s in report.skipped]
                mark_module_types(hf_plan, manifest)
                # an HF folder's tied names it does not store: kept tied
                report.tied.update(add_tied_aliases(hf_plan, keys, manifest))
                writer.finish(dump_manifest(manifest))
                # as quantize(state_dict) does; before dst appears, so a warning made an error (-W error, a
                # filter) leaves no output behind
                warn_if_nothing_quantized(report.layers, report.skipped)
    finally:
        bar.close()
    return report


def _treatment(key: str, tensor: torch.Tensor, cfg: QuantConfig, hf_plan: HfCheckpointPlan) -> tuple:
    """How ``key`` is written (two tied names treated alike give the same tensors: stored once),
    and why it stays float by its own name (its selection), or None."""
    if key in hf_plan.keep_float:
        return ("float",), hf_plan.keep_float[key][1]
    plan = state_dict_entry_plan(key, _oriented(key, tensor, hf_plan), cfg)
    if plan is None or plan[2] is not None:
        return ("float",), None if plan is None else plan[2]
    return ("quantized", key in hf_plan.transposed, key in hf_plan.conv1d), None


def _oriented(key: str, tensor: torch.Tensor, hf_plan: HfCheckpointPlan) -> torch.Tensor:
    """A view of ``key``'s weight as write_hf_entry quantizes it (a GPT-2 Conv1D's [out, in], a Conv1d's 4-D)."""
    if key in hf_plan.transposed:
        return tensor.t()
    return conv2d_weight_of(tensor) if key in hf_plan.conv1d else tensor


def _write_entry(key: str, tensor: torch.Tensor, cfg: QuantConfig, writer: StreamingWriter,
                 reader: CheckpointReader, src, report: Report, manifest: dict, measure_error: bool,
                 streamable: bool = True) -> None:
    """Quantize (or copy) one entry into ``writer``; record it in the report and the manifest.
    ``streamable=False``: ``tensor`` is not the reader's (a transposed copy), so it is never re-read in parts."""
    streamed = _streams(key, tensor, cfg) if streamable else None
    if streamed is not None:
        stream, name = streamed
        layer, own = stream(key, tensor, name, cfg, writer, reader, measure_error)
        report.model_bytes_after += layer.bytes_after
        _record_layer(layer, own, tensor, cfg, report, manifest)
        return
    outputs, layer, skipped = quantize_state_dict_entry(key, tensor, cfg, copy=False, measure_error=measure_error)
    for name, out in outputs.items():
        try:
            writer.add(name, out)
        except ValueError as exc:
            raise CheckpointError(f"{src}: {exc} (quantizing {key!r})") from None
        report.model_bytes_after += tensor_bytes(out)
    if layer is not None:
        prefix = key[: -len("weight")]
        _record_layer(layer, {name[len(prefix):]: out for name, out in outputs.items()}, tensor, cfg, report,
                      manifest)
    if skipped is not None:
        report.skipped.append(skipped)


def _record_layer(layer: LayerReport, own: Dict[str, torch.Tensor], tensor: torch.Tensor, cfg: QuantConfig,
                  report: Report, manifest: dict) -> None:
    report.layers.append(layer)
    # (a float8 weight stands for float32 in the layer, but says nothing of the model's dtype: not recorded)
    orig = tensor.dtype if tensor.dtype in ORIG_DTYPES else None
    manifest["layers"].append(state_dict_layer_entry(layer, cfg, own, orig))


def _streams(key: str, tensor: torch.Tensor, cfg: QuantConfig):
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
    if get_format(cfg.dtype).streams_row_ranges:
        return stream_int4, plan[0]
    return None


def _header_reserve(reader: CheckpointReader, keys: List[str]) -> int:
    """Bytes to set aside for the output header: generous for weights that may be
    quantized (three tensors and a manifest entry), tight for the rest."""
    total = 4096
    for key in keys:
        dtype, shape = reader.spec(key)
        # (3-D and integer weights: a manifest "skipped" entry, or the HF plan's Conv1d layer)
        maybe_layer = key.endswith("weight") and len(shape) in (2, 3, 4)
        total += 1024 + 4 * len(key) if maybe_layer else 96 + len(key)
    return total
