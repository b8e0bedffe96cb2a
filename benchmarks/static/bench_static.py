"""Static int8 on the Fashion-MNIST ResNet8 (issue 12): accuracy and speed.

Accuracy: top-1 on the 10k test images of fp32, of static int8 for each
observer at 100 and 512 calibration images (the first training images), and
of ONNX Runtime static uint8 QDQ (MinMax, per-channel weights, 512 images).
Speed: batch 1 and 64, interleaved in one run (common.interleaved), median
per call: fp32 eager, mono-quant dynamic int8, mono-quant static int8
(minmax, 512 images; also op by op from Python, ``static_int8_nodes``: the same model
without the one-call program), ONNX Runtime static uint8 QDQ (``--ort-threads``).

    python benchmarks/static/bench_static.py                     # this CPU's best ISA
    MONO_QUANT_ISA=avx2 python benchmarks/static/bench_static.py # the AVX2 kernels

Needs Debian's dataset-fashion-mnist; onnxruntime / onnx are the `bench` extra.
Writes benchmarks/results/static_resnet8_<isa>.json.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import interleaved, machine_info, summary, write_results  # noqa: E402
from resnet8 import ResNet8, normalize_images  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant import _C  # noqa: E402
from mono_quant.calibration import CalibrationWarning  # noqa: E402
from mono_quant.datasets import load_fashion_mnist  # noqa: E402

CHECKPOINT = HERE.parents[1] / "tests" / "data" / "resnet8_fashion_mnist.safetensors"


def load_model() -> torch.nn.Module:
    from safetensors.torch import load_file

    model = ResNet8()
    model.load_state_dict(load_file(str(CHECKPOINT)))
    return model.eval()


def top1(fn, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            correct += int((fn(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def ort_static(model, calib: torch.Tensor, threads: int, workdir: Path):
    """ORT session of the static uint8 QDQ model (MinMax, per-channel int8 weights), or None."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
    except ImportError:
        return None
    logging.getLogger().setLevel(logging.ERROR)
    fp32_path, q_path = workdir / "resnet8.onnx", workdir / "resnet8.qdq.onnx"
    torch.onnx.export(model, (calib[:1],), str(fp32_path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": b.numpy()} for b in calib.split(64)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32_path), str(q_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(q_path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observers", default="minmax,percentile,mse,entropy,moving_average")
    parser.add_argument("--calibration", default="100,512", help="calibration image counts")
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2, help="torch / mono-quant threads")
    parser.add_argument("--ort-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: each call timed in the process's CPU time (process_time), which a busy shared "
                             "host's preemptions do not inflate; needs --threads 1 --ort-threads 1")
    args = parser.parse_args()
    if args.clock == "cpu" and (args.threads != 1 or args.ort_threads != 1):
        raise SystemExit("--clock cpu needs --threads 1 --ort-threads 1 (waiting threads would not be counted)")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", CalibrationWarning)
    model = load_model()
    train_x, _ = load_fashion_mnist("train", limit=512)
    test_x, test_y = load_fashion_mnist("test", limit=args.test_images)
    train_x, test_x, test_y = normalize_images(train_x), normalize_images(test_x), torch.as_tensor(test_y)

    accuracy = {"fp32": top1(model, test_x, test_y)}
    calib_seconds = {}
    static_models = {}
    for observer in args.observers.split(","):
        for n in (int(v) for v in args.calibration.split(",")):
            t0 = time.perf_counter()
            result = mq.quantize(model, "int8", activations="static", calibration=train_x[:n], observer=observer)
            calib_seconds[f"{observer}/{n}"] = time.perf_counter() - t0
            accuracy[f"static {observer} {n}"] = top1(result.model, test_x, test_y)
            static_models[(observer, n)] = result.model
    dynamic = mq.quantize(model, "int8").model
    accuracy["dynamic int8"] = top1(dynamic, test_x, test_y)
    with tempfile.TemporaryDirectory() as tmp:
        ort = ort_static(model, train_x, args.ort_threads, Path(tmp))
        if ort is not None:
            accuracy["ort static uint8 qdq minmax 512"] = top1(ort, test_x, test_y)

        static = static_models.get(("minmax", 512)) or next(iter(static_models.values()))
        static_nodes = copy.deepcopy(static)  # the same model, op by op from Python (no one-call program)
        static_nodes.run_as_program = False
        speed = {}
        for batch in (1, 64):
            x = test_x[:batch].contiguous()
            contenders = {"fp32": lambda: model(x), "dynamic_int8": lambda: dynamic(x),
                          "static_int8": lambda: static(x), "static_int8_nodes": lambda: static_nodes(x)}
            if ort is not None:
                contenders["ort_static_uint8"] = lambda: ort(x)
            with torch.inference_mode():
                times = interleaved(contenders, repeats=args.repeats, warmup=3, clock=clock)
            speed[batch] = {name: summary(t) for name, t in times.items()}

    isa = _C.get_isa()
    print(f"# Fashion-MNIST ResNet8, static int8, ISA {isa}, {args.threads} threads (ORT {args.ort_threads}), "
          f"{len(test_x)} test images, {args.clock} clock")
    print(f"{'setting':<36} {'top-1 %':>8} {'drop':>6}")
    for name, acc in accuracy.items():
        print(f"{name:<36} {acc:8.2f} {accuracy['fp32'] - acc:6.2f}")
    print(f"\n{'batch':<6} {'contender':<18} {'median us':>10} {'p10':>9} {'p90':>9} {'vs fp32':>8}")
    for batch, rows in speed.items():
        base = rows["fp32"]["median_us"]
        for name, s in rows.items():
            print(f"{batch:<6} {name:<18} {s['median_us']:10.1f} {s['p10_us']:9.1f} {s['p90_us']:9.1f} "
                  f"{base / s['median_us']:7.2f}x")
    print("\nquantize() seconds (trace + calibrate + convert + SQNR check):",
          {k: round(v, 3) for k, v in calib_seconds.items()})
    path = write_results(f"static_resnet8_{isa}", {"machine": machine_info(), "isa": isa, "threads": args.threads,
                                                   "ort_threads": args.ort_threads, "clock": args.clock, "accuracy": accuracy,
                                                   "speed": speed, "quantize_seconds": calib_seconds})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
