"""reduce_range (7-bit dynamic activations): accuracy and speed on the BERT-style encoder
of bench_models.py, against fp32 eager, our default 8-bit dynamic int8 and torch.ao
``quantize_dynamic`` (fbgemm, whose dynamic Linear also quantizes activations to 7 bits),
interleaved in one process (median of the per-call times; time ratios vs fp32, lower is
faster).  Accuracy: SQNR (dB) of each model's output against fp32's, on the same input;
``--formulations`` adds pure-torch simulations of the choices considered (8-bit symmetric,
7-bit symmetric -63..63, 7-bit asymmetric 0..127 per row), which is how the asymmetric
form was picked (docs/benchmarks.md).

On an AVX-512 host, ``--isa avx2-maddubs --torch-isa avx2`` stands in for an AVX2 CPU
without VNNI (mono-quant's AVX2 level with its maddubs kernels; fbgemm, oneDNN and MKL
capped at AVX2 too, see isa_cap.py); ``--clock cpu`` times one thread in its CPU time
(steadier on a shared machine).

Usage: python benchmarks/bench_reduce_range.py [--cases bert384-128,bert768-1024] [--threads 1,2]
       [--isa avx2-maddubs] [--torch-isa avx2] [--clock cpu] [--budget S] [--formulations]
"""
from __future__ import annotations

import argparse
import copy
import warnings

import isa_cap  # noqa: F401  (before torch: --isa / --torch-isa set the environment)
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from bench_models import build_case, fbgemm_model
from common import interleaved, machine_info, summary, write_results
from mono_quant import kernels

warnings.filterwarnings("ignore")


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    noise = (out.double() - ref.double()).pow(2).sum()
    return float(10 * torch.log10(ref.double().pow(2).sum() / noise))


def _simulated_activations(x: torch.Tensor, form: str) -> torch.Tensor:
    """x through per-row activation quantization of one formulation, dequantized."""
    if form == "8-bit symmetric":
        s = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
        return torch.clamp(torch.round(x / s), -127, 127) * s
    if form == "7-bit symmetric":
        s = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 63
        return torch.clamp(torch.round(x / s), -63, 63) * s
    mn, mx = x.amin(-1, keepdim=True).clamp_max(0), x.amax(-1, keepdim=True).clamp_min(0)
    s = ((mx - mn) / 127).clamp_min(1e-12)
    zp = torch.clamp(-torch.round(mn / s), 0, 127)
    return (torch.clamp(torch.round(x / s) + zp, 0, 127) - zp) * s


class _Simulated(nn.Module):
    """A Linear with our int8 weight (dequantized) and simulated activations."""

    def __init__(self, qlinear, form: str):
        super().__init__()
        self.weight, self.bias, self.form = qlinear.dequantized_weight(), qlinear.bias, form

    def forward(self, x):
        return F.linear(_simulated_activations(x, self.form), self.weight, self.bias)


def simulated(qmodel: nn.Module, form: str) -> nn.Module:
    model = copy.deepcopy(qmodel)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, mq.QuantizedLinear):
                setattr(module, name, _Simulated(child, form))
    return model


def run_case(name: str, threads, budget_s: float, formulations: bool):
    model, x = build_case(name)
    q8 = mq.quantize(model, "int8").model.eval()
    q7 = mq.quantize(model, "int8", reduce_range=True).model.eval()
    fbgemm = fbgemm_model(model)
    rows = []
    with torch.no_grad():
        reference = model(x)
        accuracy = {"int8 dyn": sqnr_db(q8(x), reference), "int8 dyn reduce_range": sqnr_db(q7(x), reference)}
        if fbgemm is not None:
            accuracy["fbgemm dyn"] = sqnr_db(fbgemm(x), reference)
        if formulations:
            for form in ("8-bit symmetric", "7-bit symmetric", "7-bit asymmetric"):
                accuracy[f"simulated {form}"] = sqnr_db(simulated(q8, form)(x), reference)
        print(f"{name}: SQNR vs fp32 (dB): " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()), flush=True)
        for n in threads:
            torch.set_num_threads(n)
            contenders = {"fp32": lambda: model(x), "int8 dyn": lambda: q8(x), "int8 dyn reduce_range": lambda: q7(x)}
            if fbgemm is not None:
                contenders["fbgemm dyn"] = lambda: fbgemm(x)
            for fn in contenders.values():
                fn()
            t0 = isa_cap.clock()
            for fn in contenders.values():
                fn()
            rounds = int(min(max(budget_s / max(isa_cap.clock() - t0, 1e-6), 5), 200))
            times = interleaved(contenders, rounds, warmup=2, clock=isa_cap.clock)
            stats = {label: summary(samples) for label, samples in times.items()}
            base = stats["fp32"]["median_us"]
            for s in stats.values():
                s["ratio_vs_fp32"] = s["median_us"] / base
            row = {"case": name, "threads": n, "rounds": rounds, "accuracy_sqnr_db": accuracy, "contenders": stats}
            if "fbgemm dyn" in stats:
                row["reduce_range_speed_vs_fbgemm"] = (stats["fbgemm dyn"]["median_us"]
                                                       / stats["int8 dyn reduce_range"]["median_us"])
            rows.append(row)
            print(f"  {n} thread(s), {rounds} rounds: fp32 {base / 1e3:.2f} ms; time / fp32: "
                  + ", ".join(f"{k} {s['ratio_vs_fp32']:.2f}" for k, s in stats.items() if k != "fp32")
                  + (f"; reduce_range speed vs fbgemm x{row['reduce_range_speed_vs_fbgemm']:.2f}"
                     if "reduce_range_speed_vs_fbgemm" in row else ""), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="bert384-128,bert384-1024,bert768-128")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--budget", type=float, default=8.0, help="seconds of timed rounds per case and thread count")
    parser.add_argument("--formulations", action="store_true",
                        help="also the SQNR of simulated 8-bit / 7-bit symmetric / 7-bit asymmetric activations")
    isa_cap.add_isa_arguments(parser)
    args = parser.parse_args()
    isa_cap.apply_isa()
    info = machine_info()
    info["isa"] = isa_cap.isa_description()
    info["linear_kernels"] = kernels.linear_kernels()
    print(f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['isa']}, "
          f"kernels {info['linear_kernels']}")
    threads = [int(t) for t in args.threads.split(",")]
    for n in threads:
        isa_cap.check_clock(n)
    rows = []
    for name in args.cases.split(","):
        rows += run_case(name, threads, args.budget, args.formulations)
    path = write_results(f"bench_reduce_range_{isa_cap.ISA}", {"machine": info, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
