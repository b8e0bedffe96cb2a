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
- ort_minmax:       onnxruntime.quantization create_calibrator(MinMax) + collect_data + compute_data
                    (the model exported to ONNX once, outside the timing)
Targets (issue 12): ours_minmax <= ort_minmax; ours_histogram <= 1.5x ours_minmax.
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

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    # torch's OpenMP team slows down by ~10x on a busy 2-core host when it asks for 2 threads
    # (threads spin waiting for descheduled peers); run 1 and 2 and report both
    p.add_argument("--threads", type=int, default=1)
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
    }
    with tempfile.TemporaryDirectory() as tmp:
        try:
            contenders["ort_minmax"] = ort_minmax_contender(model, x, args.batch, Path(tmp), args.threads)
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
                                               "data": data_note, "onnxruntime": ort_note, "results": stats})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
