"""The ``mono-quant`` command (also ``python -m mono_quant``)."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
import warnings
from typing import List, Optional

from . import kernels
from .bench import DEFAULT_BATCHES, DEFAULT_DTYPES, DEFAULT_SHAPES, bench_header, cases_from_file, default_cases, \
    parse_shape, run_bench
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
    # one pattern per flag: nargs="+" took SRC too when the flags came first (--include 0 m.safetensors)
    quantize.add_argument("--exclude", action="append", metavar="GLOB",
                          help="a layer-name glob to leave in float (repeatable: --exclude 'a.*' --exclude b)")
    quantize.add_argument("--include", action="append", metavar="GLOB",
                          help="quantize only layers matching this glob (repeatable: --include 'a.*' --include b)")
    quantize.add_argument("--weight-only", action="store_true",
                          help="int8 layers multiply float inputs by int8 weights (activations=None) when loaded")
    quantize.add_argument("--reduce-range", action="store_true",
                          help="int8 dynamic layers quantize inputs to 7 bits (0..127) when loaded: faster on AVX2 "
                               "CPUs without VNNI, slightly less accurate (docs/guide.md)")
    quantize.add_argument("--config", metavar="FILE", help="TOML config file (default: mono_quant.toml here)")
    quantize.add_argument("--force", action="store_true", help="replace DST if it exists")
    quantize.add_argument("--quiet", action="store_true", help="no progress bar and no summary")

    inspect = sub.add_parser("inspect", help="list the layers, dtypes, shapes and bytes of a .safetensors file")
    inspect.add_argument("file", metavar="FILE", help="a .safetensors file: a mono-quant file (a static int8 one "
                                                     "lists its static layers) or a plain checkpoint")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    compare = sub.add_parser("compare", help="per-tensor SQNR and sizes of checkpoint B against reference A")
    compare.add_argument("a", metavar="A", help="reference checkpoint (e.g. the float original)")
    compare.add_argument("b", metavar="B", help="checkpoint to compare (e.g. the quantized file)")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")

    bench = sub.add_parser("bench", help="time quantized Linear layers against fp32 on this machine",
                           description="Time quantized Linear layers against fp32 F.linear on the same weight, "
                                       "interleaved call by call, and print medians and the speed-up. Shapes come "
                                       "from --shape or from the quantized Linear layers of FILE (with its dtype "
                                       "and settings); weights are seeded random.")
    bench.add_argument("file", metavar="FILE", nargs="?", help="a mono-quant .safetensors file")
    bench.add_argument("--shape", action="append", metavar="OUTxIN",
                       help=f"a Linear weight shape, out x in (repeatable; default "
                            f"{', '.join(f'{o}x{i}' for o, i in DEFAULT_SHAPES)} without FILE)")
    bench.add_argument("--dtype", action="append", metavar="DTYPE",
                       help=f"int8, uint8, int4, fp16 or bf16 (repeatable; default {', '.join(DEFAULT_DTYPES)}, "
                            "or FILE's dtype)")
    bench.add_argument("--batch", action="append", type=int, metavar="N",
                       help=f"rows per call (repeatable; default {', '.join(map(str, DEFAULT_BATCHES))})")
    bench.add_argument("--weight-only", action="store_true", help="int8 layers take float inputs (activations=None)")
    bench.add_argument("--reduce-range", action="store_true", help="int8 dynamic layers use 7-bit activations")
    bench.add_argument("--group-size", type=int, metavar="N", help="int4 group size (0: one group per channel)")
    bench.add_argument("--threads", type=int, metavar="N", help="threads for torch and mono-quant (torch.set_num_threads)")
    bench.add_argument("--repeats", type=int, default=20, metavar="N", help="timed calls of each (default 20)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
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
    from .static.describe_static import describe_static

    static = describe_static(args.file)
    if static is not None:
        return _inspect_static(static, args.json)
    info = describe(args.file)
    if args.json:
        print(_strict_json(info))
        return 0
    rows = [("name", "kind", "dtype", "shape", "bytes")]
    for layer in info["layers"]:
        scheme = layer["scheme"] + ("" if layer["axis"] is None else f", axis {layer['axis']}")
        scheme += "" if layer["group_size"] is None else f", group {layer['group_size']}"
        rows.append((layer["name"] or "<root>", f"{layer['layer_kind']} ({scheme})", layer["dtype"],
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


def _inspect_static(info, as_json: bool) -> int:
    """A static int8 file (static/describe_static.py)."""
    if as_json:
        print(_strict_json(info))
        return 0
    rows = [("name", "class", "output", "bytes")]
    for layer in info["layers"]:
        rows.append((layer["name"], layer["class"], layer["output"] or "-", human_bytes(layer["bytes"])))
    _print_table(rows)
    t = info["totals"]
    ops = f", {info['ops']} ops" if info["ops"] is not None else ""
    print(_printable(f"{info['path']}: {info['kind']} int8 model (activations='static'); {t['static_layers']} static "
                     f"layers of {t['layers']}{ops}; {human_bytes(t['file_bytes'])}; checked: {info['checked']}"))
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


def _cmd_bench(args) -> int:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: give 1 or more")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: give 1 or more")
    notes: List[str] = []
    if args.file is not None:
        if args.shape:
            raise ValueError("give FILE or --shape, not both")
        if args.weight_only or args.reduce_range or args.group_size is not None:
            raise ValueError("--weight-only, --reduce-range and --group-size are read from FILE; "
                             "drop them, or give --shape instead of FILE")
        cases, notes = cases_from_file(args.file, args.dtype)
    else:
        shapes = [parse_shape(s) for s in args.shape] if args.shape else list(DEFAULT_SHAPES)
        cases = default_cases(shapes, args.dtype or DEFAULT_DTYPES, weight_only=args.weight_only,
                              reduce_range=args.reduce_range, group_size=args.group_size)
    header = bench_header()
    rows = run_bench(cases, batches=args.batch or DEFAULT_BATCHES, repeats=args.repeats)
    if args.json:
        print(_strict_json({"machine": header, "rows": rows, "notes": notes}))
        return 0
    print(f"mono-quant bench  (kernels: {header['active_isa']}, int8 matmul: {header['int8_matmul']}, "
          f"threads: {header['threads']}, torch {header['torch']}); median of {args.repeats} interleaved calls")
    table = [("shape", "dtype", "mode", "batch", "fp32 us", "quantized us", "speed-up")]
    for r in rows:
        if r["batch"] is None:
            table.append((_shape(r["shape"]), r["dtype"], r["mode"], "-", "-", "-", r["note"]))
            continue
        table.append((_shape(r["shape"]), r["dtype"], r["mode"], str(r["batch"]), f"{r['fp32_us']:.1f}",
                      f"{r['quantized_us']:.1f}", f"{r['speedup']:.2f}x"))
    _print_table(table)
    for note in notes:
        print(f"note: {note}")
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


def _printable(value) -> str:
    """A cell as text with control characters escaped: a file's layer and tensor names are untrusted
    (an escape sequence in one could retitle the terminal, clear it or forge rows of the table)."""
    text = str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_table(rows) -> None:
    rows = [[_printable(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


# The library's messages name its Python arguments; on the command line the same values are options.
_CLI_WORDING = (("quantize(): ", ""), ("or None for one group", "or 0 for one group"),
                ("pass nonfinite='skip'", "set nonfinite = \"skip\" in the config file (--config FILE)"),
                ("include=", "--include "), ("exclude=", "--exclude "),
                ("pass overwrite=True, or --force, to replace it", "pass --force to replace it"))


def _cli_wording(message: str) -> str:
    message = re.sub(r"exclude=\[('[^']*')\]", r"exclude=\1", message)  # a one-name list: the option's argument
    for api, cli in _CLI_WORDING:
        message = message.replace(api, cli)
    return message


def _parse(argv: Optional[List[str]]):
    """parse_args, with a hint where an unrecognized argument is a second pattern after --include /
    --exclude (the form ``--exclude a b`` of versions that took several patterns per flag)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        argv = list(sys.argv[1:] if argv is None else argv)
        hint = ""
        for i, token in enumerate(argv):
            flag, eq, pattern = token.partition("=")
            if flag not in ("--include", "--exclude") or (not eq and i + 1 >= len(argv)):
                continue
            after = argv[i + 1:i + 3] if eq else argv[i + 2:i + 4]  # the tokens after the flag's pattern
            pattern = pattern if eq else argv[i + 1]
            if after and not after[0].startswith("-") and any(t in extra for t in after):
                hint = f" ({flag} takes one pattern: repeat it for more, {flag} {pattern} {flag} {after[0]})"
                break
        commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}{hint}")  # (its usage)
    return args


def _warning_line(command: str):
    """``warnings.formatwarning`` for a command: one ``mono-quant COMMAND: warning: ...`` line, as its
    errors are (Python's gave our source file's path and line, then that line's code).  The format
    only: a caller recording warnings (``catch_warnings(record=True)``, pytest.warns) still gets them."""
    def line(message, category, filename, lineno, line=None):
        return f"mono-quant {command}: warning: {_printable(f'{category.__name__}: {message}')}\n"
    return line


class _Terminated(BaseException):
    """SIGTERM (a cancelled CI job, ``timeout``) or SIGHUP (the terminal or ssh session closed) raised in
    the main thread, as Ctrl-C raises KeyboardInterrupt: the files being written are deleted on the way
    out (io/atomic.py), where the default action ended the process and left its hidden temporary output
    behind.  ``args[0]``: the signal's number."""


#: the signals that end a command as _Terminated, and what its message says
_ENDING_SIGNALS = {signal.SIGTERM: "terminated"}
if hasattr(signal, "SIGHUP"):  # (POSIX)
    _ENDING_SIGNALS[signal.SIGHUP] = "hangup"


def _terminate_as_interrupt() -> dict:
    """Install the handlers of _ENDING_SIGNALS but those the process ignores; the previous ones (none off
    the main thread: left as they are)."""
    def handler(signum, frame):
        raise _Terminated(signum)
    previous = {}
    try:
        for signum in _ENDING_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # ignored by who started us (nohup: SIGHUP): the command goes on, as before
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread (main() called from a worker)
        pass
    return previous


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    handlers = {"demo": _cmd_demo, "quantize": _cmd_quantize, "inspect": _cmd_inspect, "compare": _cmd_compare,
                "bench": _cmd_bench}
    previous = _terminate_as_interrupt()
    previous_format, warnings.formatwarning = warnings.formatwarning, _warning_line(args.command)
    try:
        return handlers[args.command](args)
    except _Terminated as ended:
        signum = ended.args[0]  # (the handler's: one of _ENDING_SIGNALS)
        print(f"mono-quant {args.command}: {_ENDING_SIGNALS[signum]}", file=sys.stderr)
        return 128 + int(signum)
    except KeyboardInterrupt:
        print(f"mono-quant {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (mono-quant inspect FILE | head): stop quietly, with the
        # status of a command that SIGPIPE ended; stdout on /dev/null, so that Python's flush at exit
        # does not fail a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, TypeError, KeyError, OSError, RecursionError, MemoryError, OverflowError,
            RuntimeError, Warning) as exc:
        # bad input of any shape (CheckpointError is a ValueError; torch raises RuntimeError, e.g. for a
        # sparse or meta tensor in a .pt file, NotImplementedError included), or a warning that -W error or
        # PYTHONWARNINGS made an error (a CI run): one line, no traceback
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename:  # (open()'s "[Errno 2] ...": as our own say it)
            message = f"{exc.filename} does not exist"
        print(f"mono-quant {args.command}: error: {_printable(_cli_wording(message))}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous_format
        for signum, handler in previous.items():
            if handler is not None:  # (None: a handler set outside Python, which signal cannot restore)
                signal.signal(signum, handler)
