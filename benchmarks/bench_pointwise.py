"""Dynamic int8 1x1 convs: the int8 route against fp32, the sweep behind the pointwise floors.

For 1x1 convs of K input and N output channels on one image of HW x HW (MobileNetV2's pointwise
shapes and their neighbours), times fp32 `nn.Conv2d`, the quantized layer with its route rule
(`modules/conv.py`: `DYNAMIC_MIN_K_POINTWISE`, `DYNAMIC_MIN_N_POINTWISE`) and the same layer with
the floors off (the int8 route forced), interleaved; prints fp32's time over each (above 1: faster
than fp32).  ``--load N`` runs N busy processes beside it.

    python benchmarks/bench_pointwise.py [--threads 1] [--load 0] [--repeats 9]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import background_load, interleaved, machine_info, summary, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.modules import conv as conv_module  # noqa: E402

KS = (64, 144, 256, 384)  # (under 64 every conv keeps DYNAMIC_MIN_K: no int8 route to force)
NS = (16, 24, 32, 48, 64, 96, 128)


@contextlib.contextmanager
def floors_off():
    saved = conv_module.DYNAMIC_MIN_K_POINTWISE, conv_module.DYNAMIC_MIN_N_POINTWISE
    conv_module.DYNAMIC_MIN_K_POINTWISE = conv_module.DYNAMIC_MIN_N_POINTWISE = 0
    try:
        yield
    finally:
        conv_module.DYNAMIC_MIN_K_POINTWISE, conv_module.DYNAMIC_MIN_N_POINTWISE = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []

    with background_load(args.load) if args.load else contextlib.nullcontext(), torch.no_grad():
        for hw in (56, 14):
            for k in KS:
                line = []
                for n in NS:
                    conv = torch.nn.Conv2d(k, n, 1).eval()
                    q = mq.quantize(conv, "int8").model
                    x = torch.randn(1, k, hw, hw)
                    rule_int8 = q._packed_pays(x)
                    # (two passes, each against fp32: switching the floors per call would rebuild the
                    # layer's route memo at every call)
                    ratio = {}
                    for name, context in (("rule", contextlib.nullcontext()), ("int8 route", floors_off())):
                        with context:
                            times = interleaved({"fp32": lambda: conv(x), name: lambda: q(x)},
                                                repeats=args.repeats)
                        med = {key: summary(t)["median_us"] for key, t in times.items()}
                        ratio[name] = med["fp32"] / med[name]
                        rows.append({"hw": hw, "k": k, "n": n, "rule_takes_int8": bool(rule_int8),
                                     "pass": name, **{f"{key}_us": v for key, v in med.items()}})
                    line.append(f"N{n} {ratio['int8 route']:.2f}/{ratio['rule']:.2f}" + ("" if rule_int8 else "*"))
                print(f"{hw}x{hw} K{k}: " + "  ".join(line), flush=True)
    print("each: fp32 / int8 route, fp32 / the rule (* the rule runs F.conv2d on the dequantized weight)")
    path = write_results("pointwise", {"machine": machine_info(), "threads": args.threads, "load": args.load,
                                       "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
