"""The ``mono-quant`` command (also ``python -m mono_quant``)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mono-quant", description="Quantize PyTorch models to INT8, FP16 or BF16.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser("demo", help="quantize the built-in example models and print a table")
    demo.add_argument("--dtype", action="append", choices=["int8", "fp16", "bf16"],
                      help="dtype(s) to show (default: all three)")
    demo.add_argument("--no-speed", action="store_true", help="skip timing the int8 model against fp32")
    return parser


def _cmd_demo(args) -> int:
    from . import kernels
    from .demo import run_demo, run_speed

    info = kernels.cpu_info()
    print(f"mono-quant demo  (kernels: {info['active_isa']}, int8 matmul: {kernels.linear_kernels()['dynamic']}, "
          f"threads: {kernels.num_threads()})")
    run_demo(tuple(args.dtype) if args.dtype else ("int8", "fp16", "bf16"))
    if not args.no_speed:
        run_speed()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"demo": _cmd_demo}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        print(f"mono-quant {args.command}: error: {exc}", file=sys.stderr)
        return 1
