"""The ``mono-quant`` command (also ``python -m mono_quant``)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import List, Optional

from . import kernels
from .demo import run_demo, run_speed
from .io import quantize_checkpoint
from .io.compare import compare
from .io.describe import describe
from .report import human_bytes
from .version import __version__

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mono-quant",
                                     description="Quantize PyTorch models to INT8, INT4, FP16 or BF16.")
    parser.add_argument("--version", action="version", version=f"mono-quant {__version__}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser("demo", help="quantize the built-in example models and print a table")
    demo.add_argument("--dtype", action="append", choices=["int8", "int4", "fp16", "bf16"],
                      help="dtype(s) to show (default: all four)")
    demo.add_argument("--no-speed", action="store_true", help="skip timing the int8 model against fp32")

    quantize = sub.add_parser("quantize", help="quantize a checkpoint on disk (streaming, one tensor at a time)",
                              description="Quantize a .safetensors file, a folder of shards (with *.index.json) "
                                          "or a .pt/.bin state_dict into one mono-quant .safetensors file.")
    quantize.add_argument("src", metavar="SRC", help="checkpoint file, shard folder or *.index.json")
    quantize.add_argument("-o", "--output", required=True, metavar="DST", help="output .safetensors file")
    quantize.add_argument("--dtype", help="int8 (default), uint8, int4, fp16 or bf16")
    quantize.add_argument("--group-size", type=int, metavar="N",
                          help="group size for grouped formats (int4); 0 for one group per output channel")
    quantize.add_argument("--method", choices=["rtn", "mse", "hqq"],
                          help="int4 rounding: rtn (fastest), mse (default), hqq (slowest, best)")
    quantize.add_argument("--exclude", nargs="+", action="extend", metavar="GLOB",
                          help="layer-name globs to leave in float")
    quantize.add_argument("--include", nargs="+", action="extend", metavar="GLOB",
                          help="only quantize layers matching these globs")
    quantize.add_argument("--weight-only", action="store_true",
                          help="int8 layers multiply float inputs by int8 weights (activations=None) when loaded")
    quantize.add_argument("--reduce-range", action="store_true",
                          help="int8 dynamic layers quantize inputs to 7 bits (0..127) when loaded: faster on AVX2 "
                               "CPUs without VNNI, slightly less accurate (docs/guide.md)")
    quantize.add_argument("--config", metavar="FILE", help="TOML config file (default: mono_quant.toml here)")
    quantize.add_argument("--force", action="store_true", help="replace DST if it exists")
    quantize.add_argument("--quiet", action="store_true", help="no progress bar and no summary")

    inspect = sub.add_parser("inspect", help="list the layers, dtypes, shapes and bytes of a .safetensors file")
    inspect.add_argument("file", metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    compare = sub.add_parser("compare", help="per-tensor SQNR and sizes of checkpoint B against reference A")
    compare.add_argument("a", metavar="A", help="reference checkpoint (e.g. the float original)")
    compare.add_argument("b", metavar="B", help="checkpoint to compare (e.g. the quantized file)")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _cmd_demo(args) -> int:
    info = kernels.cpu_info()
    print(f"mono-quant demo  (kernels: {info['active_isa']}, int8 matmul: {kernels.linear_kernels()['dynamic']}, "
          f"threads: {kernels.num_threads()})")
    run_demo(tuple(args.dtype) if args.dtype else ("int8", "int4", "fp16", "bf16"))
    if not args.no_speed:
        run_speed()
    return 0


def _cmd_quantize(args) -> int:
    start = time.perf_counter()
    options = {}  # unset: the config's default
    if args.group_size is not None:
        options["group_size"] = args.group_size or None  # 0, as in a config file: per-channel
    if args.weight_only:
        options["activations"] = None
    if args.reduce_range:
        options["reduce_range"] = True
    report = quantize_checkpoint(
        args.src, args.output, args.dtype, **options, include=args.include,
        exclude=args.exclude, method=args.method, config=args.config, overwrite=args.force,
        progress=not args.quiet and sys.stderr.isatty(),
    ).report
    if not args.quiet:
        before, after = report.model_bytes_before, report.model_bytes_after
        ratio = after / before if before else 0.0
        print(f"{args.output}: {len(report.layers)} layers quantized, {len(report.skipped)} skipped; "
              f"{human_bytes(before)} -> {human_bytes(after)} ({ratio:.3f}x) in {time.perf_counter() - start:.1f} s"
              + (f"; tied: {', '.join(f'{a} = {t}' for a, t in report.tied.items())}" if report.tied else ""))
    return 0


def _cmd_inspect(args) -> int:
    info = describe(args.file)
    if args.json:
        print(_strict_json(info))
        return 0
    rows = [("name", "kind", "dtype", "shape", "bytes")]
    for layer in info["layers"]:
        scheme = layer["scheme"] + ("" if layer["axis"] is None else f", axis {layer['axis']}")
        scheme += "" if layer["group_size"] is None else f", group {layer['group_size']}"
        rows.append((layer["name"] or "<root>", f"{layer['type']} ({scheme})", layer["dtype"],
                     _shape(layer["shape"]), human_bytes(layer["bytes"])))
    for t in info["tensors"]:
        rows.append((t["name"], "tensor", t["dtype"], _shape(t["shape"]), human_bytes(t["bytes"])))
    _print_table(rows)
    totals = info["totals"]
    version = f"format v{info['format_version']}" if info["format_version"] else "plain safetensors (no manifest)"
    print(f"{info['path']}: {version}, {info['kind']}; {totals['quantized_layers']} quantized layers "
          f"({human_bytes(totals['quantized_bytes'])}), {len(info['tensors'])} other tensors "
          f"({human_bytes(totals['float_bytes'])}); total {human_bytes(totals['bytes'])}"
          + (f", {len(info['aliases'])} aliased" if info["aliases"] else ""))
    return 0


def _cmd_compare(args) -> int:
    result = compare(args.a, args.b)
    if args.json:
        print(_strict_json(result))
        return 0
    rows = [("name", "shape", "A", "B", "B/A", "SQNR dB")]
    for r in result["rows"]:
        a = "-" if r["bytes_a"] is None else f"{r['dtype_a']} {human_bytes(r['bytes_a'])}"
        b = "-" if r["bytes_b"] is None else f"{r['dtype_b']} {human_bytes(r['bytes_b'])}"
        ratio = f"{r['bytes_b'] / r['bytes_a']:.3f}" if r["bytes_a"] and r["bytes_b"] is not None else "-"
        if r["status"] != "ok":
            sqnr = r["status"]
        elif r["sqnr_db"] is None:
            sqnr = "differs"
        else:
            sqnr = "inf" if math.isinf(r["sqnr_db"]) else f"{r['sqnr_db']:.1f}"
        rows.append((r["name"], _shape(r["shape"]), a, b, ratio, sqnr))
    _print_table(rows)
    t = result["totals"]
    ratio = f"{t['ratio']:.3f}x" if t["ratio"] is not None else "-"
    worst = t["min_sqnr_db"]
    worst = "-" if worst is None else ("inf" if math.isinf(worst) else f"{worst:.1f} dB")
    print(f"{t['compared']} tensors compared (lowest SQNR {worst}); {human_bytes(t['bytes_a'])} -> {human_bytes(t['bytes_b'])} "
          f"({ratio}); only in A: {t['only_in_a']}, only in B: {t['only_in_b']}, shape mismatches: "
          f"{t['shape_mismatches']}")
    return 0


_INF = "\x00mono-quant inf\x00"


def _strict_json(obj) -> str:
    """JSON that strict parsers (jq, JavaScript, Go) accept: json.dumps writes Infinity / NaN,
    which only Python reads back.  An infinite SQNR (identical tensors) is written 1e999, a
    number that Python reads back as inf and others as their largest double; NaN as null."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None if math.isnan(x) else (_INF if x > 0 else "-" + _INF)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    text = json.dumps(clean(obj), indent=2, default=str, allow_nan=False)
    return text.replace(json.dumps("-" + _INF), "-1e999").replace(json.dumps(_INF), "1e999")


def _shape(shape) -> str:
    return "-" if shape is None else "x".join(str(d) for d in shape) or "scalar"


def _print_table(rows) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"demo": _cmd_demo, "quantize": _cmd_quantize, "inspect": _cmd_inspect, "compare": _cmd_compare}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print(f"mono-quant {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, OSError, RecursionError, MemoryError) as exc:
        # bad input of any shape (CheckpointError is a ValueError): one line, no traceback
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"mono-quant {args.command}: error: {message}", file=sys.stderr)
        return 1
