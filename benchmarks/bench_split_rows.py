"""The AVX2 split kernel of dynamic int8 (csrc/act_split.c): against the sign trick and fbgemm.

Where the CPU has AVX2 without VNNI, the dynamic int8 Linear runs the split kernel on the calls its
rules take (csrc/linear.c: 8 rows and 2^21 multiply-adds or more, a budget of list entries).  For
Linear layers of some shapes and activation distributions, times interleaved in one process:
fbgemm's dynamic Linear (torch.ao ``quantize_dynamic``), ours by the rules (``split``), ours with
the split off (``sign``, ``_C.set_split_rows(0)``), ours forced on (``forced``, mode 2) and the
opt-in ``reduce_range`` (7-bit activations, fbgemm's numerics).  Prints each one's speed against
fbgemm and the entries' share of the K-groups (the split's cost).  Post-ReLU inputs (``relu``: codes
0..127) run the 7-bit kernel on their 8-bit codes instead of the split (``split`` is then that
kernel).  1 thread is timed in CPU time.

    python benchmarks/bench_split_rows.py [--threads 1] [--repeats 31] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import background_load, interleaved, machine_info, summary, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant import _C  # noqa: E402

SHAPES = [(4096, 4096, 32), (4096, 4096, 128), (768, 768, 128), (3072, 768, 128), (768, 3072, 128),
          (384, 384, 128), (1536, 384, 128), (384, 1536, 128), (384, 384, 1024)]
QUICK = [(4096, 4096, 32), (4096, 4096, 128), (768, 768, 128), (384, 384, 128)]


def inputs(name: str, rows: int, k: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(rows, k, generator=g)
    if name == "gelu":  # an FFN's down projection
        return torch.nn.functional.gelu(x)
    if name == "heavy":  # a scale mixture: heavy tails, as activations with outliers
        return x * torch.rand(rows, k, generator=g).pow(4) * 10
    if name == "outliers":  # a few outlier channels (LLM-style)
        x[:, :: max(1, k // 4)] *= 20
        return x
    if name == "uniform":  # a quarter of the pairs break: the rules keep the sign trick
        return torch.rand(rows, k, generator=g) - 0.5
    if name == "relu":  # an FFN's down projection in a ReLU model (OPT, T5): no negative code
        return torch.relu(x)
    return x


def entries_share(x: torch.Tensor) -> float:
    """The split's list entries as a share of the K-groups (the per-row symmetric codes')."""
    k = x.shape[1] - x.shape[1] % 4
    q = torch.round(x[:, :k] / (x.abs().amax(1, keepdim=True) / 127).clamp_min(1e-30))
    breaking = q.reshape(len(q), -1, 2).sum(-1).abs() > 128  # one sign, past 128 together
    need = torch.maximum(breaking[:, 0::2].sum(1), breaking[:, 1::2].sum(1))
    return float(need.float().mean() / (k / 4))


@contextlib.contextmanager
def split_mode(mode: int):
    previous = _C.set_split_rows(mode)
    try:
        yield
    finally:
        _C.set_split_rows(previous)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark")
    ap.add_argument("--quick", action="store_true", help="4 shapes, Gaussian and heavy-tailed inputs")
    ap.add_argument("--dists", default=None, help="comma-separated: gauss,gelu,heavy,outliers,uniform,relu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    dists = (args.dists.split(",") if args.dists else
             ["gauss", "heavy"] if args.quick else ["gauss", "gelu", "heavy", "outliers", "uniform", "relu"])
    print(f"{machine_info()['cpu']}, threads {args.threads}, kernels {_C.linear_kernels()['dynamic']}"
          f" ({'CPU time' if args.threads == 1 else 'wall clock'}); speed vs fbgemm (above 1: faster)")
    g = torch.Generator().manual_seed(0)
    rows_out = []
    with background_load(args.load) if args.load else contextlib.nullcontext(), torch.no_grad():
        for out_f, in_f, rows in (QUICK if args.quick else SHAPES):
            lin = torch.nn.Sequential(torch.nn.Linear(in_f, out_f)).eval()
            fbgemm = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
            ours = mq.quantize(lin, "int8").model.eval()
            ours7 = mq.quantize(lin, "int8", reduce_range=True).model.eval()
            for dist in dists:
                x = inputs(dist, rows, in_f, g)

                def at(mode, model=ours):
                    def call():
                        with split_mode(mode):
                            return model(x)
                    return call

                contenders = {"fbgemm": at(1, fbgemm), "split": at(1), "sign": at(0), "forced": at(2),
                              "reduce_range": at(1, ours7)}
                times = interleaved(contenders, repeats=args.repeats, clock=clock)
                med = {name: summary(t)["median_us"] for name, t in times.items()}
                share = entries_share(x)
                rows_out.append({"out": out_f, "in": in_f, "rows": rows, "dist": dist, "entries_share": share,
                                 **{f"{name}_us": v for name, v in med.items()}})
                print(f"{out_f}x{in_f} rows {rows:5d} {dist:8s} entries {100 * share:4.1f}%: fbgemm "
                      f"{med['fbgemm']:8.0f} us; " + ", ".join(
                          f"{name} x{med['fbgemm'] / med[name]:.2f}" for name in
                          ("split", "sign", "forced", "reduce_range")), flush=True)
    path = write_results(f"split_rows_t{args.threads}", {"machine": machine_info(), "threads": args.threads,
                                                         "load": args.load, "rows": rows_out})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
