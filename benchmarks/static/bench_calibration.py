"""Calibration cost: mono-quant's MinMax and histogram calibration vs ONNX Runtime's MinMax.

    .venv/bin/python benchmarks/static/bench_calibration.py [--samples 1000] [--repeats 5]

Same model (the ResNet8 of tests/data, fp32), same images (the first
``--samples`` Fashion-MNIST test images, batches of 64), same threads
(torch.set_num_threads and ORT's intra_op_num_threads).  Each
contender is one whole calibration, setup included, timed in rotation:
- ours_minmax:      Calibrator(bins=None, per_channel=False) + feed + ranges("minmax")
- ours_minmax_pc:   the same with per-channel min/max too
- ours_histogram:   Calibrator(2048 bins, per_channel=False) + feed + ranges("entropy") (the costliest search)
- ours_histogram_pc: the same with per-channel min/max too
- api_cal_minmax / api_cal_histogram: the calibration step of ``mq.quantize(...,
                    activations="static")`` alone: fx capture + BN folding + the Calibrator on the
                    fused float graph (fused outputs only) + ranges("minmax" / "histogram")
- api_minmax / api_histogram: ``mq.quantize(model, "int8", activations="static",
                    calibration=x, observer=...)`` end to end (capture, calibration, conversion,
                    weight packing, the report's SQNR probe)
- ort_minmax:       onnxruntime.quantization create_calibrator(MinMax) + collect_data + compute_data
                    (the model exported to ONNX once, outside the timing)
- ort_quantize_static: onnxruntime.quantization.quantize_static(MinMax, QDQ, per-channel) end to end
Targets (issue 12): ours <= ort_minmax; histogram <= 1.5x our minmax.
``--memory``: peak memory of the new API's calibration at 512 and 4096 samples (each in a fresh
subprocess, batches made on the fly from the uint8 images): tracemalloc peak (NumPy + Python
objects: the statistics) and the growth of the process's peak RSS (torch's buffers included).
onnxruntime and onnx are benchmark-only dependencies.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import interleaved, machine_info, summary, write_results  # noqa: E402
from resnet8 import ResNet8, normalize_images  # noqa: E402

from mono_quant.calibration import Calibrator  # noqa: E402
from mono_quant.datasets import fashion_mnist_available, load_fashion_mnist  # noqa: E402

CHECKPOINT = HERE.parents[1] / "tests" / "data" / "resnet8_fashion_mnist.safetensors"


def load_model() -> tuple:
    model = ResNet8().eval()
    if CHECKPOINT.is_file():
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(CHECKPOINT)))
        return model, "trained checkpoint"
    return model, "random init (checkpoint missing)"


def load_images(n: int) -> tuple:
    if fashion_mnist_available():
        images, _ = load_fashion_mnist("test", limit=n)
        return normalize_images(images), "fashion-mnist test"
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)), "random (dataset missing)"


def ort_minmax_contender(model: torch.nn.Module, x: torch.Tensor, batch: int, workdir: Path, threads: int):
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    # the calibrator builds its own SessionOptions: give them the same thread count as torch
    plain_options = onnxruntime.SessionOptions

    def session_options():
        options = plain_options()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return options

    onnxruntime.SessionOptions = session_options

    onnx_path = workdir / "resnet8.onnx"
    torch.onnx.export(model, (x[:batch],), str(onnx_path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": b.numpy()} for b in x.split(batch)])

        def get_next(self):
            return next(self.batches, None)

    def run():
        cal = create_calibrator(onnx_path, augmented_model_path=str(workdir / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(Reader())
        return cal.compute_data()

    def run_quantize_static():
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        quantize_static(str(onnx_path), str(workdir / "resnet8.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)

    return run, run_quantize_static


def api_calibration_step(model: torch.nn.Module, x: torch.Tensor, batch: int, observer: str):
    """What quantize_static (mono_quant/static/quantize.py) does before converting: one callable."""
    import copy

    from mono_quant.calibration import DEFAULT_BINS
    from mono_quant.static.capture import build_plan
    from mono_quant.static.graph import FusedFloat, float_graph

    def run():
        fmodel = float_graph(build_plan(copy.deepcopy(model).eval()))
        cal = Calibrator(fmodel, bins=None if observer == "minmax" else DEFAULT_BINS, per_channel=False,
                         batch_size=batch)
        cal.types = (FusedFloat,)
        cal.feed(x)
        return cal.ranges(observer)
    return run


def api_end_to_end(model: torch.nn.Module, x: torch.Tensor, batch: int, observer: str):
    import warnings

    import mono_quant as mq

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the clipping / SQNR warnings are not what is timed
            return mq.quantize(model, "int8", activations="static", calibration=list(x.split(batch)),
                               observer=observer)
    return run


MEMORY_CHILD = r"""
import json, resource, sys, tracemalloc, warnings
sys.path.insert(0, {here!r}); sys.path.insert(0, {parent!r})
import torch
torch.set_num_threads(1)
from bench_calibration import load_model
from resnet8 import normalize_images
from mono_quant.datasets import fashion_mnist_available, load_fashion_mnist
import mono_quant as mq
n, observer, batch = {n}, {observer!r}, {batch}
model, _ = load_model()
if fashion_mnist_available():
    raw, _ = load_fashion_mnist("train", limit=n)
else:
    raw = (torch.rand(n, 1, 28, 28) * 255).to(torch.uint8)
def batches():  # made on the fly: the data is the caller's, never held whole as float
    for i in range(0, n, batch):
        yield normalize_images(raw[i:i + batch])
with warnings.catch_warnings():  # a warm-up run: imports, lazy kernels, first-call buffers
    warnings.simplefilter("ignore")
    mq.quantize(model, "int8", activations="static", calibration=batches(), observer=observer,
                calibration_samples=64)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = mq.quantize(model, "int8", activations="static", calibration=batches(), observer=observer)
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"samples": result.report.samples, "tracemalloc_peak_bytes": peak,
                   "peak_rss_growth_bytes": (rss1 - rss0) * 1024, "peak_rss_bytes": rss1 * 1024}}))
"""


def measure_memory(batch: int) -> dict:
    """Peak memory of mq.quantize(activations="static") at 512 and 4096 samples, minmax and histogram."""
    import json
    import subprocess
    out = {}
    for observer in ("minmax", "histogram"):
        for n in (512, 4096):
            code = MEMORY_CHILD.format(here=str(HERE), parent=str(HERE.parent), n=n, observer=observer, batch=batch)
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            out[f"{observer}_{n}"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    # torch's OpenMP team slows down by ~10x on a busy 2-core host when it asks for 2 threads
    # (threads spin waiting for descheduled peers); run 1 and 2 and report both
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", action="store_true", help="also measure peak memory at 512 vs 4096 samples")
    p.add_argument("--no-time", action="store_true", help="skip the timing (with --memory)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, model_note = load_model()
    x, data_note = load_images(args.samples)

    def ours(bins, per_channel, observer):
        def run():
            cal = Calibrator(model, bins=bins, per_channel=per_channel, batch_size=args.batch)
            cal.feed(x)
            return cal.ranges(observer)
        return run

    contenders = {
        "ours_minmax": ours(None, False, "minmax"),
        "ours_minmax_pc": ours(None, True, "minmax"),
        "ours_histogram": ours(2048, False, "entropy"),
        "ours_histogram_pc": ours(2048, True, "entropy"),
        "api_cal_minmax": api_calibration_step(model, x, args.batch, "minmax"),
        "api_cal_histogram": api_calibration_step(model, x, args.batch, "histogram"),
        "api_minmax": api_end_to_end(model, x, args.batch, "minmax"),
        "api_histogram": api_end_to_end(model, x, args.batch, "histogram"),
    }
    memory = measure_memory(args.batch) if args.memory else None
    if memory:
        print(f"{'peak memory':18s} {'samples':>8s} {'tracemalloc MB':>15s} {'peak RSS growth MB':>19s}")
        for key, m in memory.items():
            print(f"{key.split('_')[0]:18s} {m['samples']:8d} {m['tracemalloc_peak_bytes'] / 1e6:15.3f} "
                  f"{m['peak_rss_growth_bytes'] / 1e6:19.1f}")
        if args.no_time:
            return 0
    with tempfile.TemporaryDirectory() as tmp:
        try:
            contenders["ort_minmax"], contenders["ort_quantize_static"] = ort_minmax_contender(
                model, x, args.batch, Path(tmp), args.threads)
            ort_note = __import__("onnxruntime").__version__
        except ImportError as e:
            ort_note = f"not run ({e}); pip install onnxruntime onnx"
        times = interleaved(contenders, repeats=args.repeats, warmup=1)

    stats = {name: summary(t) for name, t in times.items()}
    base = stats["ours_minmax"]["median_us"]
    print(f"model: ResNet8 ({model_note}); data: {args.samples} images ({data_note}), batch {args.batch}, "
          f"{args.threads} threads; onnxruntime {ort_note}")
    print(f"{'contender':18s} {'median s':>9s} {'p10 s':>8s} {'p90 s':>8s} {'vs ours_minmax':>15s} {'vs ort_minmax':>14s}")
    for name, s in stats.items():
        vs_ort = (f"{s['median_us'] / stats['ort_minmax']['median_us']:.2f}x" if "ort_minmax" in stats else "-")
        print(f"{name:18s} {s['median_us'] / 1e6:9.3f} {s['p10_us'] / 1e6:8.3f} {s['p90_us'] / 1e6:8.3f} "
              f"{s['median_us'] / base:14.2f}x {vs_ort:>14s}")
    path = write_results("bench_calibration", {"machine": machine_info(), "args": vars(args), "model": model_note,
                                               "data": data_note, "onnxruntime": ort_note, "results": stats,
                                               "memory": memory})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
