"""Row rules: from how many rows (of an input reshaped to 2-D) a layer leaves its C kernel for
torch's BLAS on a float32 weight made per call, per kernel level and BLAS class.

Rules on the shapes, never a timing: the same input always takes the same path on a machine.
Eager forwards and the ops of traced graphs (kernels/torch_library.py) read the same tables,
so a compiled or exported model takes eager's path, and its bits, at each row count.

Which side wins depends on torch's BLAS as much as on our kernels.  torch's x86 wheels run
MKL, whose AVX-512 sgemm runs on Intel CPUs only: on an AMD CPU with AVX-512 (Zen 4 / Zen 5)
sgemm runs its AVX2 code, and our AVX-512 kernels win at every row count; on an Intel CPU
with AVX-512 sgemm is about twice as fast, and our kernels lose from some tens or hundreds
of rows.  So the AVX-512 level has two rows in each table: ``BLAS_AVX512`` picks one at
import.  From ``benchmarks/bench_fp16.py --crossover`` and the weight-only / int4
crossover of docs/benchmarks.md ("Row rules per BLAS class", in the Intel AVX-512 CPU's
section), 1 thread, BERT layer shapes, rows 1-2048:

- AMD Zen 3 (AVX2) / Zen 4, Zen 5 (AVX-512): see each table.
- Intel Xeon with AVX-512 and AMX (1 Dec 2026): fp16 kernel 0.42-0.89x fp32's time up to 16
  rows, 0.89-1.24x the converted path's at 64 (past 32 rows the panel path, below); int8
  weight-only kernel (its panels converted once per block of rows from 32 rows) 0.79-1.05x fp32's time up to 512 rows, ahead of
  dequantize + BLAS (1.07-1.81x) there, mixed at 1024-2048 (0.94-1.11x against 1.01-1.07x);
  int4 kernel 0.64-0.95x fp32 up to 128 rows, behind from 512-1024 (1024 rows: 1.06-1.40x
  against 1.00-1.08x).  Those are the AVX-512 VNNI kernels' figures: where that CPU runs AMX
  (``SETTINGS.amx``), int4's int8 activations run on AMX-INT8 (under 8 rows, and fewer than 8
  rows past whole 16-row tiles, its VNNI fallback: the same bits) and the BLAS rule yields to
  them (int4_takes_blas), and int8 weight-only and fp16 / bf16 take AMX-BF16 from
  INT8_WEIGHT_ONLY_AMX_MIN_ROWS / HALF_AMX_MIN_ROWS rows (each table's note).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .. import _C
from .layout import INT4_BLOCK

__all__ = ["BLAS_AVX512", "L1D_BYTES", "SMALL_L1D", "l1d_bytes", "HALF_KERNEL_MAX_ROWS", "U8_KERNEL_MAX_ROWS", "U8_PANEL_MAX_ROWS",
           "U8_PANEL_MAX_IN_FEATURES", "uint8_path", "HALF_PANEL_MAX_ROWS",
           "HALF_PANEL_MAX_IN_FEATURES", "HALF_AMX_MIN_ROWS", "AMX_MIN_OUT_FEATURES", "half_takes_amx",
           "INT8_WEIGHT_ONLY_BLAS_MIN_ROWS", "INT8_WEIGHT_ONLY_BLAS_MIN_IN_FEATURES", "INT8_WEIGHT_ONLY_BLAS_LONG_K",
           "int8_weight_only_takes_blas",
           "int8_weight_only_blas_rows",
           "INT8_WEIGHT_ONLY_AMX_MIN_ROWS", "INT8_WEIGHT_ONLY_AMX_MIN_MACS", "int8_weight_only_takes_amx",
           "INT4_BLAS_MIN_ROWS", "INT4_BLAS_MAX_OUT_FEATURES", "int4_takes_blas", "int4_int8_activations_fit",
           "blas_runs_avx512", "SMALL_BLAS_MAX_WEIGHT_ELEMENTS", "SMALL_BLAS_MAX_OUT_FEATURES", "SMALL_BLAS_MIN_ROWS",
           "SMALL_BLAS_SHORT_MIN_ROWS", "SMALL_BLAS_SHORT_MAX_IN_FEATURES",
           "NARROW_BLAS", "SHORT_BLAS", "INT4_SMALL_BLAS_ROWS",
           "SMALL_BLAS_FORMATS", "small_weight_takes_blas"]

_NEVER = 1 << 62


def blas_runs_avx512(info: dict) -> bool:
    """Whether torch's float32 matmul runs AVX-512 code on the CPU that ``info``
    (``_C.cpu_info()``) describes: MKL's AVX-512 kernels on an Intel CPU with AVX-512."""
    return (info.get("vendor") == "GenuineIntel" and bool(info.get("avx512f"))
            and torch.backends.mkl.is_available())


#: this machine's class (see the module's note); the tables below are built for it
BLAS_AVX512 = blas_runs_avx512(_C.cpu_info())

_CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def l1d_bytes(caches: Path = _CPU_CACHES) -> int:
    """The first core's level-1 data cache in bytes, from Linux's sysfs (``index*/level``, ``type``,
    ``size``); 32 KiB where that can't be read (another OS, a container without sysfs): the smaller
    class, whose rules are never far from fp32 on a wider CPU."""
    try:
        for index in sorted(caches.glob("index*")):
            if (index / "level").read_text().strip() == "1" and (index / "type").read_text().strip() == "Data":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 32 << 10


#: The AVX2 level's tiles at many rows read a 16-channel float32 panel (64 bytes per 4 inputs) and
#: 6 rows of x per pass over the reduction: within a 48 KiB L1D at BERT widths (AMD Zen 5 capped at AVX2,
#: the stand-in the AVX2 tables were first set on; Intel's P-cores from Alder Lake), not within 32 KiB (AMD
#: Zen 2 / 3, Intel's client cores before Alder Lake and its E-cores), where they fall behind torch's BLAS
#: from some hundreds of rows (the tables below).  A class per machine, like BLAS_AVX512: never a timing.
L1D_BYTES = l1d_bytes()
SMALL_L1D = L1D_BYTES <= 32 << 10

#: Weight-only layers (int8 weight-only, int4, fp16 / bf16; dynamic int8 keeps its int8 activations)
#: of a small, narrow weight (at most SMALL_BLAS_MAX_WEIGHT_ELEMENTS weights and
#: SMALL_BLAS_MAX_OUT_FEATURES outputs) run torch's BLAS on their float32 weight from
#: SMALL_BLAS_MIN_ROWS[isa] rows: the layer keeps that weight (formats/layer_cache.float_weight; 256 KiB
#: at most), a traced graph's op dequantizes it per call (the same values, the same bits).  Few outputs
#: leave the kernels' per-row work (int4's int8 activations, the tiles' row blocks) little to share:
#: Intel Xeon (2 Dec, 2 threads, time / fp32 at 1024 rows): 128 -> 10 int8 weight-only 1.37, int4 1.91;
#: 128 -> 32 1.45-1.48 in every format; the BLAS 0.93-1.06.  Fewer rows keep the kernels (at 256 rows
#: 1024 -> 10 took 0.56 / 0.81 / 0.77 there).  Ahead of every other rule of the format.  AMD CPUs (MKL's
#: AVX2 code) and the AVX2 level: not measured, off.
SMALL_BLAS_MAX_WEIGHT_ELEMENTS = 65536
SMALL_BLAS_MAX_OUT_FEATURES = 32
SMALL_BLAS_MIN_ROWS = {"scalar": _NEVER, "avx2": _NEVER, "avx512": 1024 if BLAS_AVX512 else _NEVER}
#: ... and int4 and fp16 / bf16 layers of at most SMALL_BLAS_SHORT_MAX_IN_FEATURES inputs from
#: SMALL_BLAS_SHORT_MIN_ROWS[isa] rows: there the kernels run a narrow weight on one thread (few
#: outputs to split; a 2-thread split of such a call, 10-70 us, lost its helper's wake-up) where
#: MKL's spinning OpenMP threads halve it.  Intel Xeon (2 Dec, 2 threads, module time / fp32 at
#: 256 / 512 rows): 512 -> 10 int4 2.25 / 1.74, fp16 1.18 / 1.19 -> 1.12 / 1.03, 1.14 / 1.06; 256 -> 32
#: int4 1.19 / 1.47, fp16 1.41 / 1.52 -> 1.21 / 1.15, 1.19 / 1.11; 1024 -> 32 level (1.03-1.26 -> 1.02-1.04).
#: At 1 thread the kernels win there (0.77-1.09 against the BLAS's 1.00-1.11), but a rule on the
#: threads would give a call other bits when torch's count changes.  int8 weight-only's tiles split
#: over row blocks and held level (0.64-1.39 against 1.03-1.24): its rows stay at SMALL_BLAS_MIN_ROWS;
#: wider layers too (2048 -> 32 at 256 rows: int4 0.81, fp16 0.89 on the kernels).
SMALL_BLAS_SHORT_MIN_ROWS = {"scalar": _NEVER, "avx2": _NEVER, "avx512": 256 if BLAS_AVX512 else _NEVER}
SMALL_BLAS_SHORT_MAX_IN_FEATURES = 1024


#: ... and, on every CPU, such a weight of few outputs or inputs: NARROW_BLAS[isa][format] lists
#: (most outputs, fewest rows) pairs, SHORT_BLAS[isa][format] one (most inputs, fewest rows) pair
#: that holds for any number of outputs within SMALL_BLAS_MAX_WEIGHT_ELEMENTS (a coordinate MLP's
#: Linear(3, 256), a NeRF's Linear(63, 256); format: "int8_weight_only", "int4", "half"), and int4 at
#: the AVX2 level from INT4_SMALL_BLAS_ROWS[0]
#: up to INT4_SMALL_BLAS_ROWS[1] rows with at most SMALL_BLAS_SHORT_MAX_IN_FEATURES inputs.  The kernels
#: pad a layer's outputs to 16 (int8, fp16 panels) or 4 (int4) and its inputs to 128 (int4), and int4
#: quantizes each activation row: a 1-8 output head's or a 64-input layer's work is mostly padding and
#: the activations' pass.  AMD Zen 5 (2 Dec 2026, 2 threads, module time / fp32, kernels -> BLAS on the
#: kept weight): 1 output at 1-32 rows, AVX-512 / AVX2: weight-only 768 -> 1 1.60-1.91 / 1.53-1.64 ->
#: 1.40-1.53, int4 2000 -> 1 1.71-5.04 / 1.72-5.62 -> 1.32-1.50 (fp16 at AVX-512: 1.26-1.45 against
#: 1.25-1.38, and the kernel ahead from 256 rows: kept); at 64 / 256 / 1024 rows, AVX-512, int4 768 -> 1
#: 2.11 / 2.46 / 2.33 -> 1.07-1.29, 768 -> 2 1.39 / 1.66 / 1.82 -> 1.06-1.20, 768 -> 4 1.22 / 1.45 / 1.46 ->
#: 1.04-1.17, 64 -> 16 1.07 / 1.50 / 2.20 -> 1.11-1.24, 32 -> 16 1.07 / 1.37 / 1.98 -> 1.11-1.27 (768 -> 10
#: 0.91 / 0.71 / 0.53 stays: 1.01-1.11); int8 weight-only 768 -> 2 1.35 / 1.62 / 1.12 -> 1.07-1.23 (64 -> 32
#: 0.89-0.96 stays); fp16 64 -> 32 1.05 / 1.20 / 1.38 -> 1.04-1.18, 32 -> 16 1.00 / 1.16 / 1.55 -> 1.10-1.22.
#: The AVX2 level (MKL's AVX2 sgemm, as on every AMD CPU): int4 on 2-4 outputs 1.31-1.86 at 4-32 rows
#: (BLAS 1.27-1.37; from 8 rows), 2.2-3.5 at 64-1024, on 64 inputs 1.6-3.1, 1.1-1.6 at 64-256 rows on
#: 128 -> 10 .. 1024 -> 32 (2048 inputs: 0.84, kept), against 1.02-1.30; 64 -> 32 every format 1.31-2.64
#: -> 1.07-1.31.  Short layers of many outputs, 64 / 256 / 1024 / 4096 rows, AVX-512: int4 3 -> 64 2.42 /
#: 3.94 / 8.69 / 13.59, 63 -> 256 1.33-1.50, fp16 3 -> 256 3.10-11.0, 63 -> 256 1.60-2.19, 64 -> 1024
#: 1.06-1.63, weight-only 3 -> 64 1.79-5.87, 17 -> 100 1.37-1.87 (32 -> 512 0.75-1.33, 64 -> 1024 0.63-1.10:
#: kept), against the BLAS's 0.98-1.58; the AVX2 level every format 1.5-12 on 3-63 inputs (64 -> 1024
#: weight-only / fp16 level, 0.98-1.51), BLAS 1.00-1.57.  Below 64 rows (2-32): int4 from 4 rows 2.4-3.9
#: on 3 -> 256, 63 -> 256, 32 -> 512 (the BLAS 1.19-1.41; at 2 rows level), fp16 from 16 rows at AVX-512
#: (1.34-2.25 against 1.09-1.34), from 8 at AVX2 (1.44-5.03 against 1.13-1.42), weight-only at AVX2 from
#: 16 (1.31-1.68 against 1.09-1.42; at AVX-512 the kernel level or ahead below 32 rows).  Intel CPUs not
#: measured below 256 rows (from 256 / 1024 the rules above).
#: A real AVX2-only CPU (AMD Zen 3, 2 Dec 2026, 2 threads, kernels / BLAS at 8 / 64 / 1024 rows) agrees:
#: int4 768 -> 1 1.84 / 2.27 / 1.95 against 1.54 / 1.54 / 1.11, 3 -> 256 int4 1.93-5.03 against 1.11-1.56, fp16
#: 2.07-4.80 against 1.16-1.56, weight-only 64 -> 32 at 8 rows level (1.67 / 1.72, kept), 1.63-1.88 -> 1.21-1.55 from 64.
NARROW_BLAS = {"scalar": {},
               "avx2": {"int8_weight_only": ((1, 1),), "int4": ((1, 1), (8, 8)), "half": ((1, 1),)},
               "avx512": {"int8_weight_only": ((1, 1), (2, 64)), "int4": ((1, 1), (8, 64)), "half": ()}}
SHORT_BLAS = {"scalar": {},
              "avx2": {"int8_weight_only": (64, 16), "int4": (64, 4), "half": (64, 8)},
              "avx512": {"int8_weight_only": (17, 64), "int4": (64, 4), "half": (64, 16)}}
INT4_SMALL_BLAS_ROWS = {"scalar": (0, 0), "avx2": (64, 1024), "avx512": (0, 0)}

#: the formats of small_weight_takes_blas
SMALL_BLAS_FORMATS = ("int8_weight_only", "int4", "half")


def small_weight_takes_blas(rows: int, in_features: int, out_features: int, isa: str, *, fmt: str) -> bool:
    """Whether a weight-only Linear call of ``rows`` rows of an ``in_features`` -> ``out_features`` layer
    in format ``fmt`` (one of SMALL_BLAS_FORMATS: int8 weight-only, int4, fp16 / bf16) runs torch's BLAS
    on the layer's float32 weight at kernel level ``isa``: a small, narrow weight (the tables above; the
    short-layer rows of SMALL_BLAS_SHORT_MIN_ROWS leave int8 weight-only out)."""
    if fmt not in SMALL_BLAS_FORMATS:
        raise ValueError(f"small_weight_takes_blas: unknown format {fmt!r}; one of {SMALL_BLAS_FORMATS}")
    if in_features * out_features > SMALL_BLAS_MAX_WEIGHT_ELEMENTS:
        return False
    short = SHORT_BLAS[isa].get(fmt)  # (any number of outputs)
    if short is not None and in_features <= short[0] and rows >= short[1]:
        return True
    if out_features > SMALL_BLAS_MAX_OUT_FEATURES:
        return False
    if rows >= SMALL_BLAS_MIN_ROWS[isa]:
        return True
    if any(out_features <= most and rows >= fewest for most, fewest in NARROW_BLAS[isa].get(fmt, ())):
        return True
    if fmt == "int4" and INT4_SMALL_BLAS_ROWS[isa][0] <= rows < INT4_SMALL_BLAS_ROWS[isa][1] \
            and in_features <= SMALL_BLAS_SHORT_MAX_IN_FEATURES:
        return True
    return (fmt != "int8_weight_only" and in_features <= SMALL_BLAS_SHORT_MAX_IN_FEATURES
            and rows >= SMALL_BLAS_SHORT_MIN_ROWS[isa])


#: fp16 / bf16 weights: the C kernel up to this many rows, torch's F.linear on the weight
#: converted to float32 above.  AVX2 (Zen 3, 1 Dec): the kernel 0.28-0.93x the converted path's
#: time up to 64 rows, 1.02-1.33x from 128-256.  AVX-512 on AMD (Zen 5): the kernel ahead at
#: every row count (0.5-0.7x fp32).  The scalar level (no F16C: the portable reference, 4-11x
#: slower) keeps torch's op.
HALF_KERNEL_MAX_ROWS = {"scalar": 0, "avx2": 64, "avx512": 32 if BLAS_AVX512 else _NEVER}

#: uint8 weight-only Linear layers (kernels/uint8.py) up to U8_KERNEL_MAX_ROWS rows run the C kernel
#: on the stored uint8 weight (a few rows: each weight widened once per 4-row tile), up to
#: U8_PANEL_MAX_ROWS rows of at most U8_PANEL_MAX_IN_FEATURES inputs its panel path (each 16-channel
#: panel widened once per block of rows, the weight-only tiles); more take torch's F.linear on the
#: weight dequantized per call.  AMD Zen 3 (AVX2, 32 KiB L1D, 5 Dec 2026, 1 thread, fp32's time / ours,
#: BERT-base / -small layers and 4096x4096): the kernel 1.1-2.0x at 1 row, 1.5-4.2x at 2-8, 1.1-1.8x at
#: 16, 0.87-1.19x at 32, 0.74-0.94x at 64; the panels 0.84-1.02x at 64-128 rows on 384-768 inputs
#: (0.76-0.91x on 1536-4096), 0.78-0.95x from 256; the dequantized weight and torch's op 0.23-0.46x at
#: 1 row, 0.60-0.82x at 16, 0.77-0.92x at 64, 0.83-1.03x at 128, 0.86-1.05x from 256.  The AVX-512 level
#: runs the AVX2 kernels (on an Intel CPU, whose AVX-512 sgemm is about twice as fast, not measured:
#: fewer rows there); the scalar level's reference loop (one dependent add a weight) is 0.05-0.18x
#: fp32: torch's op.
U8_KERNEL_MAX_ROWS = {"scalar": 0, "avx2": 32, "avx512": 16 if BLAS_AVX512 else 32}
U8_PANEL_MAX_ROWS = {"scalar": 0, "avx2": 128, "avx512": 0 if BLAS_AVX512 else 128}
U8_PANEL_MAX_IN_FEATURES = 1024

#: fp16 / bf16 weights past HALF_KERNEL_MAX_ROWS and up to this many rows: the C panel path
#: (``_C.h16_linear(..., panels=True)``: each 16-channel panel widened once per block of rows,
#: the weight-only tiles' FMAs; the same bits at both levels); torch's F.linear on the converted
#: weight above.  Intel Xeon (1 Dec, 1 thread, BERT shapes): the panels 0.77-0.96x fp32's time
#: at 64-256 rows where the converted path took 1.08-1.47x, at 512 0.94-1.09x against 1.01-1.09x,
#: at 1024 0.97-1.14x against 1.00-1.06x.  The AVX2 level, on two stand-ins for an AVX2-only CPU
#: (no real one measured yet): that Xeon with torch capped at AVX2 too (MKL_ENABLE_INSTRUCTIONS=AVX2),
#: one layer alone 0.90-1.05x at 64-128 rows against 1.09-1.16x, the BERT encoders at 128 rows 1.09
#: of fp32's time against 1.08; an AMD Zen 5 (2 Dec 2026, 2 threads; MKL runs its AVX2 sgemm on AMD
#: CPUs in any case), BERT layers 0.74-0.89x at 128-256 rows against 1.02-1.22x, 0.96-1.03x at 1024
#: against 1.00-1.03x, the encoders (interleaved, time / fp32) at 128 rows 0.78-0.84 against
#: 1.12-1.32, at 1024 0.93-0.98 against 1.02-1.06 (1 thread 0.95-1.02 / 0.99-1.03), at 2048-4096
#: 1.04-1.09 against 1.01-1.07: so up to 1024 rows.
#: A real AVX2-only CPU of a 32 KiB L1D (SMALL_L1D; AMD Zen 3, 2 Dec 2026, time / fp32 at 1 / 2 threads,
#: BERT layers, panels against converted): at 128 rows 1.00-1.05 / 0.84-0.95 against 1.05 / 1.06-1.11 on
#: 384-768 inputs but 1.22-1.33 / 0.98-1.08 against 1.05-1.09 / 1.09-1.12 on 1536-3072; from 256 rows
#: 1.04-1.46 / 0.97-1.38 against 1.00-1.05 / 0.98-1.07 (the wider the input, the further behind): so up
#: to 128 rows and HALF_PANEL_MAX_IN_FEATURES inputs there.  The encoders of bench_models.py (time / fp32,
#: 1 / 2 threads, the tables before -> these): bert768-1024 1.12 / 1.13 -> 1.03 / 1.03, bert768-128 1.10 /
#: 0.94 -> 1.06 / 0.96; with 1536-input layers off the panels too, bert384-128 went 0.93 -> 0.98-1.00 at 2
#: threads (level at 1), hence the width limit between 1536 and 3072.
HALF_PANEL_MAX_ROWS = {"scalar": 0, "avx2": 128 if SMALL_L1D else 1024, "avx512": 1023 if BLAS_AVX512 else 0}
#: ... and only for layers of at most this many inputs (in_features): wider ones take torch's F.linear
#: on the converted weight past HALF_KERNEL_MAX_ROWS rows.
HALF_PANEL_MAX_IN_FEATURES = {"scalar": _NEVER, "avx2": 2048 if SMALL_L1D else _NEVER, "avx512": _NEVER}

#: fp16 / bf16 weights from this many rows on AMX-BF16 where the CPU has it and the AVX-512 level
#: runs AMX (``_C.h16_linear(..., panels=2)``: x and the weight split into bf16 pieces with exact
#: sums, fp32-accurate), ahead of the panels and of torch's op.  Intel Xeon (1 Dec, BERT layers,
#: fp16 weights, time / fp32): 1 thread 40 rows 0.64-0.78 (panels 0.76-0.87), 48 0.60-0.71
#: (0.81-0.88), 128 0.62-0.70, 1024 0.59-0.74 (converted weight + BLAS 1.01-1.04); 2 threads 40
#: rows 0.68-0.79 (panels 0.69-0.84), 48 0.63-0.73, 64 0.63-0.79 (0.77-0.89), 128 0.63-0.78
#: (0.90-1.01), since few rows split over panel pairs (session 29: 256 rows before, when a call
#: of few rows ran its row range on one thread).  384x384 at 40 rows on 2 threads is 1.08 of
#: fp32's time (the panels 1.57).  At 33 rows the panels won some shapes.  The same at every
#: thread count: a rule on the threads would give a call other bits when torch's changes.
HALF_AMX_MIN_ROWS = {"scalar": _NEVER, "avx2": _NEVER,
                     "avx512": 40 if _C.cpu_info().get("amx_bf16") else _NEVER}


#: AMX-BF16 (fp16 / bf16 and int8 weight-only Linear calls) only for layers of at least this many
#: outputs: x's bf16 pieces cost the same per row whatever the outputs, and few outputs leave them
#: little work (Intel Xeon, 2 Dec, 2 threads, time / fp32 at 256 / 1024 rows: a 512 -> 10 head
#: 2.2 / 2.5 on AMX, 1.16 / 0.85 on the tiles; 768 -> 64 on AMX 0.70 at 1024 rows)
AMX_MIN_OUT_FEATURES = 32


def half_takes_amx(rows: int, out_features: int, isa: str) -> bool:
    """Whether an fp16 / bf16 Linear call of ``rows`` rows of a layer of ``out_features`` outputs runs
    on AMX-BF16 at kernel level ``isa`` (HALF_AMX_MIN_ROWS, AMX_MIN_OUT_FEATURES, and the AVX-512
    level running AMX now: ``SETTINGS.amx``)."""
    return rows >= HALF_AMX_MIN_ROWS[isa] and out_features >= AMX_MIN_OUT_FEATURES and bool(_C.use_amx(None))


#: int8 weight-only: from this many rows torch's BLAS on the weight dequantized once per call.
#: AVX2 (torch capped at AVX2 too): the 6-row tiles 1.1-1.4x faster than fp32 from 16 to 2048
#: rows, dequantize + BLAS 0.8-1.0x; AVX-512 on AMD: the kernel wins at every row count (0.5-0.7x
#: fp32's time).
#: A real AVX2-only CPU of a 32 KiB L1D (SMALL_L1D; AMD Zen 3, 2 Dec 2026, BERT layers, time / fp32 at
#: 1 / 2 threads, tiles against dequantize + BLAS): up to 128 rows the tiles 0.95-1.09 / 0.79-0.97
#: against 1.11-1.51 / 1.16-1.74 (768 -> 3072's 128 rows: 1.27 / 1.08 against 1.19 / 1.19); at 256 mixed
#: (1.02-1.12 / 0.95-1.10 against 1.07-1.16 / 1.09-1.26 on 384-768 inputs; 1536-3072 inputs 1.12-1.73
#: against 1.08-1.16); from 512 the BLAS ahead everywhere, 1.01-1.09 / 1.00-1.09 against 1.07-1.62 /
#: 1.07-1.34.  Neither beats fp32 there: the weight is dequantized (or widened in the tiles) per call.
INT8_WEIGHT_ONLY_BLAS_MIN_ROWS = {"scalar": _NEVER, "avx2": 512 if SMALL_L1D else _NEVER,
                                  "avx512": 1024 if BLAS_AVX512 else _NEVER}
#: ... and only for layers at least this wide (in_features): narrower ones keep the tiles at any
#: row count.  Intel Xeon (1 Dec, 1 thread, time / fp32 at 1024 / 2048 / 4096 rows): 384x384
#: tiles 0.98 / 0.98 / 1.02 against BLAS 1.09-1.11 / 1.06 / 1.10, 1536x384 0.96 / 0.96 / 0.99
#: against 1.16 / 1.06 / 1.03; from 768 columns BLAS level or ahead (768x768 at 2048: 1.07 against
#: tiles 1.09, 768x3072 at 4096: 1.02 against 1.14).
INT8_WEIGHT_ONLY_BLAS_MIN_IN_FEATURES = {"scalar": 0, "avx2": 0, "avx512": 768 if BLAS_AVX512 else 0}
#: ... and from this many rows for layers of at least this many inputs, ``(rows, in_features)``, or
#: None: long reductions, where the tiles on a 32 KiB L1D fall furthest behind.  AMD Zen 3 (3 Dec 2026,
#: after the one-pass dequantize, time / fp32 at 256 rows, 1 / 2 threads, tiles against dequantize +
#: BLAS): 768 -> 3072 1.25-1.29 / 1.31 against 1.11-1.15 / 1.17, 1024 -> 2048 1.23-1.50 / 1.22 against
#: 1.09-1.13 / 1.15; not below 2048 inputs (768 inputs 1.08-1.36 / 0.97-1.15 against 1.06-1.09 /
#: 1.14-1.31: 2 threads keep the tiles ahead), nor at 128 rows (768 -> 3072 1.21-1.58 against 1.20-1.27
#: at 1 thread, 1.08 against 1.19 at 2).  With the tiles K-blocked past 1024 inputs (x86/avx2/linear.c)
#: the tiles come near (768 -> 3072 at 256 rows 1.17 / 1.11), and the tier still helps the encoders a
#: little (bert768 at 256 / 384 rows, without -> with: 1.11 -> 1.09 / 1.15 -> 1.08 at 1 thread).
INT8_WEIGHT_ONLY_BLAS_LONG_K = {"scalar": None, "avx2": (256, 2048) if SMALL_L1D else None, "avx512": None}


#: int8 weight-only Linear calls from this many rows on AMX-BF16 where the CPU has it and the
#: AVX-512 level runs AMX (``_C.linear_int8(..., mode="weight_only_amx")``: x split into bf16
#: pieces with exact sums, the weight minus its zero-point one exact piece; fp32-accurate, not
#: the tiles' bits), ahead of the tiles and of the BLAS.  Intel Xeon (1 Dec, 1 thread, BERT
#: layers, time / fp32): 16 rows 0.38-0.49 (tiles 0.54-0.93), 32-128 0.38-0.49 (tiles 0.70-1.00),
#: 1024 0.44-0.56 (tiles 0.99-1.13, dequantize + BLAS 1.0-1.1).
INT8_WEIGHT_ONLY_AMX_MIN_ROWS = {"scalar": _NEVER, "avx2": _NEVER,
                                 "avx512": 16 if _C.cpu_info().get("amx_bf16") else _NEVER}
#: ... and calls of at least this many multiply-adds (rows x in x out): below, AMX's fixed cost per
#: call (the tile setup, x's bf16 pieces) outweighs the tiles' work.  Intel Xeon (2 Dec, 2 threads): a
#: CNN's 128 -> 10 head at 16 / 64 rows (20 k / 82 k) took 2.7x / 2.3x fp32's time on AMX
INT8_WEIGHT_ONLY_AMX_MIN_MACS = 1 << 19


def int8_weight_only_takes_amx(rows: int, in_features: int, out_features: int, isa: str) -> bool:
    """Whether an int8 weight-only Linear call of ``rows`` rows (``in_features`` -> ``out_features``)
    runs on AMX-BF16 at kernel level ``isa`` (INT8_WEIGHT_ONLY_AMX_MIN_ROWS and _MIN_MACS,
    AMX_MIN_OUT_FEATURES, and the AVX-512 level running AMX now: ``SETTINGS.amx``), unless the
    small-weight rule sends it to torch's BLAS (small_weight_takes_blas)."""
    return (rows >= INT8_WEIGHT_ONLY_AMX_MIN_ROWS[isa] and out_features >= AMX_MIN_OUT_FEATURES
            and rows * in_features * out_features >= INT8_WEIGHT_ONLY_AMX_MIN_MACS and _C.use_amx(None)
            and not small_weight_takes_blas(rows, in_features, out_features, isa, fmt="int8_weight_only"))


def int8_weight_only_takes_blas(rows: int, in_features: int, out_features: int, isa: str) -> bool:
    """Whether an int8 weight-only Linear call of ``rows`` rows runs torch's BLAS on its weight
    dequantized per call (else the packed tiles or AMX), at kernel level ``isa``: a small, narrow
    weight (small_weight_takes_blas), or the three tables above unless AMX-BF16 takes the call
    (int8_weight_only_takes_amx)."""
    if small_weight_takes_blas(rows, in_features, out_features, isa, fmt="int8_weight_only"):
        return True
    return (int8_weight_only_blas_rows(rows, in_features, isa)
            and not int8_weight_only_takes_amx(rows, in_features, out_features, isa))


def int8_weight_only_blas_rows(rows: int, in_features: int, isa: str) -> bool:
    """The tables' condition alone (INT8_WEIGHT_ONLY_BLAS_MIN_ROWS, _MIN_IN_FEATURES, _LONG_K), for a caller
    that has already asked the small-weight and AMX rules (int8_weight_only_takes_blas asks both)."""
    long_k = INT8_WEIGHT_ONLY_BLAS_LONG_K[isa]
    return ((rows >= INT8_WEIGHT_ONLY_BLAS_MIN_ROWS[isa] and in_features >= INT8_WEIGHT_ONLY_BLAS_MIN_IN_FEATURES[isa])
            or (long_k is not None and rows >= long_k[0] and in_features >= long_k[1]))

#: int4: from this many rows, on layers of at most INT4_BLAS_MAX_OUT_FEATURES outputs, torch's
#: BLAS on the weight dequantized once per call.  AVX2 (torch capped at AVX2): the kernels with
#: pairs of activation rows 0.4-1.05x fp32's time from 16 to 2048 rows, dequantize + BLAS
#: 0.5-1.16x, tied only on 384x384 at 2048 rows; AVX-512 on AMD: the kernels win everywhere
#: (0.3-0.45x).
INT4_BLAS_MIN_ROWS = {"scalar": _NEVER, "avx2": _NEVER, "avx512": 1024 if BLAS_AVX512 else _NEVER}
INT4_BLAS_MAX_OUT_FEATURES = {"scalar": 0, "avx2": 0, "avx512": _NEVER if BLAS_AVX512 else 0}

#: the int8-activation int4 kernels' shape condition (mq_q4_int8_ok): the group a multiple of 128, at
#: most 4096 (a padded width not of whole 128-column chunks runs on a copy that is, from 2 rows)
INT4_INT8_CHUNK, INT4_INT8_MAX_GROUP = 128, 4096


def int4_int8_activations_fit(kpad: int, group: int) -> bool:
    """Whether an int4 weight of padded width ``kpad`` (whole INT4_BLOCK blocks) and group ``group`` can
    take int8 activations."""
    return kpad % INT4_BLOCK == 0 and group % INT4_INT8_CHUNK == 0 and group <= INT4_INT8_MAX_GROUP


def int4_takes_blas(rows: int, out_features: int, kpad: int, group: int, isa: str, int8_activations: bool,
                    in_features: Optional[int] = None) -> bool:
    """Whether an int4 Linear call of ``rows`` rows runs torch's BLAS on its weight dequantized
    per call (else the packed kernels), at kernel level ``isa``: the two tables above, except
    where the AVX-512 level runs AMX and the call takes int8 activations (``int8_activations``:
    allowed, and the shape fits): AMX's int4 x int8 tiles took 0.23-0.33 of fp32's time at 1024
    rows of BERT layers (Intel Xeon, 1 Dec, 1 thread), where dequantize + BLAS took 1.00-1.08.
    A small, narrow weight (small_weight_takes_blas, on the layer's ``in_features``; None: ``kpad``)
    takes the BLAS first."""
    if small_weight_takes_blas(rows, kpad if in_features is None else in_features, out_features, isa, fmt="int4"):
        return True
    if rows < INT4_BLAS_MIN_ROWS[isa] or out_features > INT4_BLAS_MAX_OUT_FEATURES[isa]:
        return False
    return not (int8_activations and isa == "avx512" and int4_int8_activations_fit(kpad, group)
                and _C.use_amx(None))


def uint8_path(rows: int, in_features: int, isa: str) -> str:
    """"kernel", "panels" or "torch": the route of a uint8 weight-only Linear call of ``rows`` rows
    of ``in_features`` inputs at kernel level ``isa`` (U8_KERNEL_MAX_ROWS, U8_PANEL_MAX_ROWS)."""
    if rows <= U8_KERNEL_MAX_ROWS[isa]:
        return "kernel"
    if rows <= U8_PANEL_MAX_ROWS[isa] and in_features <= U8_PANEL_MAX_IN_FEATURES:
        return "panels"
    return "torch"
