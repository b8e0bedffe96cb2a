"""Streaming one weight of a checkpoint into the output file, part by part:
per-channel int8 (:func:`stream_packed_int8`) and group-wise int4
(:func:`stream_int4`).

``quantize_state_dict_entry`` makes a layer's whole packed weight before it
can be written.  For a checkpoint that costs a fresh output buffer per
tensor (page faults on every 4 KiB), keeps the whole input tensor's pages
mapped, and leaves the writer idle until the tensor is done.  Here the
weight goes through in parts of whole whole panels (kernels.layout.INT8_PANEL_ROWS rows), each quantized by the
C kernel straight into the writer's staging buffer (no copy; written with
direct I/O where that pays) or into a reusable part buffer, so quantizing
and writing overlap and memory holds a few parts instead of whole tensors.  A
safetensors shard's rows are read by the kernel itself (pread into
per-thread buffers that stay in cache, nothing mapped); other inputs are
read through their memory map, whose pages are dropped part by part.  The
bytes and the report are exactly those of ``quantize_state_dict_entry``.
int4 (compute-bound: the parameter search) goes through in row ranges read
through the map, so memory holds one range instead of the whole weight.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

from .. import kernels
from ..entries import finish_entry, nonfinite_entry_error
from ..formats.int4_weight import DEFAULT_INT4_METHOD, effective_group, quantize_int4_rows
from ..kernels.layout import INT8_PANEL_ROWS, PACKED_LAYOUT_VERSION, int4_padded_cols
from ..packing import packed_sizes
from ..qtypes import get_qtype
from ..tensor import NonFiniteWeightError, error_powers, raise_if_dequantize_overflows, sqnr_db
from .errors import CheckpointError

__all__ = ["stream_packed_int8", "stream_int4"]


class _Panels:
    """Quantizes row ranges of one weight (whole panels) into given buffers."""

    def __init__(self, key, tensor, name, qmin, qmax, symmetric, measure_error, reader):
        self.key, self.tensor, self.name, self.reader = key, tensor, name, reader
        self.qmin, self.qmax, self.symmetric, self.measure_error = qmin, qmax, symmetric, measure_error
        rows, cols = tensor.shape
        size, np_ = packed_sizes(rows, cols)
        self.panel_bytes = size // np_ * INT8_PANEL_ROWS
        self.location = reader.location(key)
        self.row_bytes = cols * tensor.element_size()
        self.colsum = torch.empty(np_, dtype=torch.int32)
        self.scale = torch.empty(rows, dtype=torch.float32)
        self.zero_point = torch.empty(rows, dtype=torch.int32)
        self.has_m128, self.sum_x2, self.sum_err2 = False, 0.0, 0.0

    def fill(self, r0: int, panels: int, out: torch.Tensor) -> None:
        """Quantize rows [r0, r0 + 16 * panels) (clipped to the weight) into ``out``."""
        rows, cols = self.tensor.shape
        r1 = min(rows, r0 + panels * INT8_PANEL_ROWS)
        target = (out, self.colsum[r0:r0 + panels * INT8_PANEL_ROWS])
        if self.location is not None:  # straight from the file: nothing mapped, no pages to drop
            fd, offset = self.location
            try:
                _, _, s, z, m128, bad, sx, se = kernels.quantize_pack_int8_file(
                    fd, offset + r0 * self.row_bytes, (r1 - r0, cols), self.tensor.dtype, self.qmin, self.qmax,
                    self.symmetric, self.measure_error, out=target)
            except (OSError, ValueError) as exc:  # a file changed or unreadable under us
                raise CheckpointError(f"{self.reader.shard_path(self.key)}: cannot read tensor {self.key!r}: "
                                      f"{exc}") from exc
        else:
            chunk = self.tensor[r0:r1]
            _, _, s, z, m128, bad, sx, se = kernels.quantize_pack_int8(
                chunk, self.qmin, self.qmax, self.symmetric, self.measure_error, out=target)
            self.reader.release(self.key, chunk)
        if bad >= 0:
            raise nonfinite_entry_error(self.key, self.name, r0 + bad)
        chunk = self.tensor[r0:r1]  # (read only for a weight at float32's limit)
        try:
            raise_if_dequantize_overflows(chunk, s, z, self.qmin, self.qmax)
        except NonFiniteWeightError as exc:
            raise nonfinite_entry_error(self.key, self.name, r0 + exc.row, exc.what) from None
        self.scale[r0:r1], self.zero_point[r0:r1] = s, z
        self.has_m128 |= m128
        if self.measure_error:
            x2, err2 = error_powers(chunk, sx, se, self.qmin, self.qmax, self.symmetric)
            self.sum_x2 += x2
            self.sum_err2 += err2


def stream_packed_int8(key: str, tensor: torch.Tensor, name: str, cfg, writer, reader,
                       measure_error: bool) -> Tuple[object, Dict[str, torch.Tensor]]:
    """Quantize the 2-D weight ``tensor`` (entry ``key`` of ``reader``, layer ``name``) to
    packed per-channel int8 and write its entries through ``writer``.

    Returns ``(LayerReport, own)``: ``own`` maps the entries' local names to tensors
    with their dtypes and shapes (the packed weight as a ``meta`` tensor: its bytes
    are already written) for the manifest.  Raises ValueError naming the first
    channel holding NaN/Inf (only used with ``nonfinite="error"``: a written part
    cannot be taken back).
    """
    qtype = get_qtype(cfg.dtype)
    symmetric = cfg.symmetric_for("Linear")
    qmin, qmax = qtype.qrange(symmetric)
    rows, cols = tensor.shape
    size, _ = packed_sizes(rows, cols)
    job = _Panels(key, tensor, name, qmin, qmax, symmetric, measure_error, reader)
    total_panels = -(-rows // INT8_PANEL_ROWS)
    prefix = key[: -len("weight")]
    writer.begin(prefix + "weight_packed", torch.int8, (size,))
    done = 0
    while done < total_panels:
        region = writer.region()
        fit = 0 if region is None else region.numel() // job.panel_bytes
        if fit:  # in place, in the staging buffer about to be written
            n = min(fit, total_panels - done)
            job.fill(done * INT8_PANEL_ROWS, n, region[:n * job.panel_bytes])
            del region
            writer.commit(n * job.panel_bytes)
        else:  # through a part buffer (copied into the staging buffer's last bytes, or written by a thread)
            n = min(max(1, writer.part_bytes // job.panel_bytes), total_panels - done)
            if region is not None:
                n = 1  # only to straddle the staging buffer's end
            nbytes = n * job.panel_bytes
            pooled = nbytes <= writer.part_bytes
            buf = writer.part_buffer()[:nbytes] if pooled else torch.empty(nbytes, dtype=torch.int8)
            job.fill(done * INT8_PANEL_ROWS, n, buf)
            writer.add_part(buf, recycle=pooled)
        done += n
    writer.end()
    info = torch.tensor([PACKED_LAYOUT_VERSION, rows, cols, int(job.has_m128), 1], dtype=torch.int32)
    own = {"weight_scale": job.scale, "weight_zero_point": job.zero_point,
           "weight_packed": torch.empty(size, dtype=torch.int8, device="meta"),
           "weight_colsum": job.colsum, "weight_packed_info": info}
    for suffix in ("weight_colsum", "weight_packed_info", "weight_scale", "weight_zero_point"):
        writer.add(prefix + suffix, own[suffix])
    sqnr = sqnr_db(job.sum_x2, job.sum_err2) if measure_error else math.nan
    _, layer, _ = finish_entry({prefix + s: t for s, t in own.items()}, key, name, "Linear", qtype, tensor,
                                sqnr, None)
    return layer, own


def stream_int4(key: str, tensor: torch.Tensor, name: str, cfg, writer, reader,
                measure_error: bool) -> Tuple[object, Dict[str, torch.Tensor]]:
    """Quantize the 2-D weight ``tensor`` to group-wise int4 as ``quantize_state_dict_entry``
    does (its SQNR always measured, as there) and write ``weight_qdata`` in row ranges of
    about ``writer.part_bytes``, then the scales and zero-points.  Returns and raises as
    :func:`stream_packed_int8`."""
    del measure_error  # the int4 path always measures (the search computes the error anyway)
    qtype = get_qtype(cfg.dtype)
    symmetric = cfg.symmetric_for("Linear")
    method = cfg.method or DEFAULT_INT4_METHOD
    rows, cols = tensor.shape
    kpad = int4_padded_cols(cols)
    groups = -(-kpad // effective_group(cols, cfg.group_size))
    part_rows = max(1, writer.part_bytes // (kpad // 2))
    scale = torch.empty(rows, groups, dtype=torch.float16)
    zero_point = torch.empty(rows, groups, dtype=torch.uint8)
    sum_x2 = sum_err2 = 0.0
    prefix = key[: -len("weight")]
    writer.begin(prefix + "weight_qdata", torch.uint8, (rows, kpad // 2))
    for r0 in range(0, rows, part_rows):
        r1 = min(rows, r0 + part_rows)
        chunk = tensor[r0:r1]
        try:
            packed, s, z, sx, se = quantize_int4_rows(chunk, cfg.group_size, symmetric, method, True)
        except NonFiniteWeightError as exc:
            raise nonfinite_entry_error(key, name, r0 + exc.row, exc.what) from None
        reader.release(key, chunk)
        writer.add_part(packed)
        scale[r0:r1], zero_point[r0:r1] = s, z
        sum_x2 += float(sx.sum())
        sum_err2 += float(se.sum())
    writer.end()
    own = {"weight_qdata": torch.empty(rows, kpad // 2, dtype=torch.uint8, device="meta"),
           "weight_scale": scale, "weight_zero_point": zero_point}
    writer.add(prefix + "weight_scale", scale)
    writer.add(prefix + "weight_zero_point", zero_point)
    _, layer, _ = finish_entry({prefix + s: t for s, t in own.items()}, key, name, "Linear", qtype, tensor,
                                sqnr_db(sum_x2, sum_err2), None)
    return layer, own
