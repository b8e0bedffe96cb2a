"""Quantized models through the PyTorch ecosystem: does each route work, at what output
SQNR against fp32, at what speed against fp32 eager.

Routes: eager, ``torch.compile(fullgraph=True)``, ``torch.export`` (the exported
program's module), ONNX Runtime (``mono_quant.export_onnx``; fp32 through
``torch.onnx.export``).  Models (random weights): a small BERT-like
``nn.TransformerEncoder`` (4 layers, d=384, 6 heads, ffn 1536; mono-quant quantizes its
``nn.Linear`` feed-forward layers, attention projections stay float) on 1 x 128 tokens,
and a CNN (4 convs + head) on 8 x 3 x 64 x 64.  Dtypes: int8 dynamic, int8 weight-only,
int4 (group 128), fp16.

Also the per-call overhead of the custom-op route against the direct C call for one
768 x 768 int8 layer at batch 1.  Every speed figure is a ratio of medians timed
interleaved in one run (common.interleaved).

    python benchmarks/bench_ecosystem.py [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine_info, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.formats import traced_forward as torch_ops  # noqa: E402

DTYPES = [("int8 dyn", "int8", {"activations": "dynamic"}), ("int8 w-only", "int8", {"activations": None}),
          ("int4", "int4", {"group_size": 128}), ("fp16", "fp16", {})]


def _sqnr(ref, y) -> float:
    ref, y = torch.as_tensor(ref).double(), torch.as_tensor(y).double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum().clamp_min(1e-30)))


def _models(quick: bool):
    torch.manual_seed(0)
    layers = 2 if quick else 4
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(384, 6, 1536, dropout=0.0, batch_first=True), layers,
                                enable_nested_tensor=False).eval()
    cnn = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(128, 10)).eval()
    return {"bert-like encoder": (enc, torch.randn(1, 128, 384)), "cnn": (cnn, torch.randn(8, 3, 64, 64))}


def _ort_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch (--threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _routes(model, x, quantized: bool, tmp: Path, tag: str):
    """{route: callable or the error string}."""
    routes = {"eager": lambda: model(x)}
    try:
        compiled = torch.compile(model, fullgraph=True)
        compiled(x)
        routes["compile"] = lambda: compiled(x)
    except Exception as error:  # a route that fails is a result
        routes["compile"] = f"{type(error).__name__}: {str(error)[:120]}"
    try:
        exported = torch.export.export(model, (x,)).module()
        routes["export"] = lambda: exported(x)
    except Exception as error:
        routes["export"] = f"{type(error).__name__}: {str(error)[:120]}"
    try:
        path = tmp / f"{tag}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if quantized:
                mq.export_onnx(model, (x,), path)
            else:
                torch.onnx.export(model, (x,), dynamo=True, verbose=False).save(str(path))
        run, xn = _ort_session(path), x.numpy()
        routes["onnxruntime"] = lambda: torch.from_numpy(run(xn))
    except Exception as error:
        routes["onnxruntime"] = f"{type(error).__name__}: {str(error)[:120]}"
    return routes


def bench_models(quick: bool) -> list:
    rows = []
    repeats = 10 if quick else 30
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for model_name, (model, x) in _models(quick).items():
            ref = model(x)
            float_routes = _routes(model, x, False, Path(tmp), "fp32")
            contenders = {f"fp32 {r}": fn for r, fn in float_routes.items() if callable(fn)}
            results = {}
            for label, dtype, kw in DTYPES:
                qmodel, _ = mq.quantize(model, dtype=dtype, **kw)
                routes = _routes(qmodel, x, True, Path(tmp), label.replace(" ", "_"))
                for route, fn in routes.items():
                    if callable(fn):
                        results[(label, route)] = {"works": True, "sqnr_db": _sqnr(ref, fn())}
                        contenders[f"{label} {route}"] = fn
                    else:
                        results[(label, route)] = {"works": False, "error": fn}
                torch._dynamo.reset()
            times = interleaved(contenders, repeats=repeats, warmup=2, order="shuffle")
            base = statistics.median(times["fp32 eager"])
            for name, samples in times.items():
                if name.startswith("fp32 "):
                    rows.append({"model": model_name, "dtype": "fp32", "route": name[5:], "works": True,
                                 "sqnr_db": None, "median_ms": statistics.median(samples) * 1e3,
                                 "speed_vs_fp32_eager": base / statistics.median(samples)})
            for (label, route), res in results.items():
                row = {"model": model_name, "dtype": label, "route": route, **res}
                if res["works"]:
                    med = statistics.median(times[f"{label} {route}"])
                    row.update(median_ms=med * 1e3, speed_vs_fp32_eager=base / med)
                rows.append(row)
    return rows


def bench_op_overhead(quick: bool) -> dict:
    """One 768x768 int8 layer at batch 1: eager (direct C call), the op route's forward, and the bare op."""
    torch.manual_seed(0)
    out = {}
    for act in ("dynamic", None):
        q = mq.quantize(nn.Sequential(nn.Linear(768, 768)), dtype="int8", activations=act).model[0]
        x = torch.randn(1, 768)
        with torch.no_grad():
            times = interleaved({"eager (direct _C call)": lambda: q(x),
                                 "op route forward": lambda: torch_ops.linear_forward(q, x),
                                 "compiled layer": (lambda c: lambda: c(x))(torch.compile(q, fullgraph=True))},
                                repeats=300 if quick else 3000, warmup=50)
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        base = med["eager (direct _C call)"]
        out[str(act)] = {k: {"median_us": v, "vs_direct": v / base} for k, v in med.items()}
        torch._dynamo.reset()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer repeats")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (and ONNX Runtime's intra-op threads); default torch's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    overhead = bench_op_overhead(args.quick)
    print("per-call time, 768x768 int8 layer, batch 1 (median us, ratio to the direct call)")
    for act, row in overhead.items():
        print(f"  activations={act:8s} " + "  ".join(f"{k}: {v['median_us']:.1f} ({v['vs_direct']:.2f}x)"
                                                    for k, v in row.items()))
    rows = bench_models(args.quick)
    print(f"\n{'model':18s} {'dtype':12s} {'route':12s} {'works':6s} {'SQNR dB':>8s} {'ms':>8s} {'vs fp32 eager':>14s}")
    for r in rows:
        sq = "" if r.get("sqnr_db") is None else f"{r['sqnr_db']:.1f}"
        ms = f"{r['median_ms']:.2f}" if r["works"] else ""
        sp = f"{r['speed_vs_fp32_eager']:.2f}x" if r["works"] else r.get("error", "")[:40]
        print(f"{r['model']:18s} {r['dtype']:12s} {r['route']:12s} {str(r['works']):6s} {sq:>8s} {ms:>8s} {sp:>14s}")
    path = write_results("ecosystem", {"machine": machine_info(), "op_overhead": overhead, "models": rows,
                                       "quick": args.quick})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
