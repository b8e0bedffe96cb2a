"""A small DenseNet-style net (channel concatenations) on Fashion-MNIST under static int8.

Dense blocks whose layers (conv 3x3 + BN + ReLU, growth 12) each append their
output to the block's features with ``torch.cat``; a strided conv between the
two blocks, global pool, Linear.  Trains for ``--epochs`` on the first
``--train-images`` training images (seed 0, one thread), then reports top-1 on
the 10k test images of fp32 and static int8 (512 calibration images) per
observer, which concatenations run in int8 and how many of their inputs are
requantized (the rest are copied: their producers share the concatenation's
scale), and the speed at batch 1 and 64, interleaved (median of ``--repeats``,
``--threads`` each, default 1): fp32 eager, static int8 (the one-call program), the same model
op by op from Python, and ONNX Runtime static uint8 QDQ (MinMax, 512 images;
when onnxruntime is installed).

    python benchmarks/static/bench_densenet.py [--epochs 1]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import interleaved, machine_info, summary, write_results  # noqa: E402
from bench_static import ort_static  # noqa: E402
from resnet8 import normalize_images  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant import _C  # noqa: E402
from mono_quant.calibration import CalibrationWarning  # noqa: E402
from mono_quant.datasets import load_fashion_mnist  # noqa: E402
from mono_quant.static import StaticCat  # noqa: E402


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DenseBlock(nn.Module):
    def __init__(self, cin: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(conv_bn_relu(cin + i * growth, growth) for i in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


class TinyDenseNet(nn.Module):
    def __init__(self, growth: int = 12, layers: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn_relu(1, 16)
        self.block1 = DenseBlock(16, growth, layers)
        c1 = 16 + layers * growth
        self.down = conv_bn_relu(c1, 32, 2)
        self.block2 = DenseBlock(32, growth, layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32 + layers * growth, 10)

    def forward(self, x):
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def top1(model, x, y) -> float:
    with torch.inference_mode():
        return 100.0 * sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum())
                           for i in range(0, len(x), 500)) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=30000)
    parser.add_argument("--observers", default="minmax,entropy,mse")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="threads of every contender in the speed runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", CalibrationWarning)
    train_x, train_y = load_fashion_mnist("train", limit=args.train_images)
    test_x, test_y = load_fashion_mnist("test")
    train_x, test_x = normalize_images(train_x), normalize_images(test_x)
    train_y, test_y = torch.as_tensor(train_y).long(), torch.as_tensor(test_y)
    model = TinyDenseNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
            opt.step()
    model.eval()
    seconds = time.perf_counter() - t0
    results = {"fp32": top1(model, test_x, test_y)}
    cats, static = {}, None
    for observer in args.observers.split(","):
        q = mq.quantize(model, "int8", activations="static", calibration=train_x[:512], observer=observer)
        results[f"static {observer} 512"] = top1(q.model, test_x, test_y)
        cats[observer] = {n: {"int8_output": m.out_scale is not None, "requantized": m.requantized_inputs()}
                          for n, m in q.model.layers.items() if isinstance(m, StaticCat)}
        static = static or q.model
    static_nodes = copy.deepcopy(static)  # the same model, op by op from Python (no one-call program)
    static_nodes.run_as_program = False
    speed = {}
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ort = ort_static(model, train_x[:512], args.threads, Path(tmp))
        if ort is not None:
            results["ort static uint8 qdq minmax 512"] = top1(ort, test_x, test_y)
        for batch in (1, 64):
            x = test_x[:batch].contiguous()
            contenders = {"fp32": lambda: model(x), "static_int8": lambda: static(x),
                          "static_int8_nodes": lambda: static_nodes(x)}
            if ort is not None:
                contenders["ort_static_uint8"] = lambda: ort(x)
            with torch.inference_mode():
                times = interleaved(contenders, repeats=args.repeats, warmup=3)
            speed[batch] = {name: summary(t) for name, t in times.items()}
    one_call = bool(static._compiled)
    print(f"# TinyDenseNet ({sum(p.numel() for p in model.parameters())} parameters), {args.epochs} epoch(s) on "
          f"{len(train_x)} images in {seconds:.0f} s (1 thread), ISA {_C.get_isa()}, speed at {args.threads} "
          f"thread(s)")
    for name, acc in results.items():
        print(f"{name:<24} {acc:6.2f}  drop {results['fp32'] - acc:5.2f}")
    print(f"static int8 runs as one C call: {one_call}")
    first = next(iter(cats.values()))
    print(f"\nconcatenations on int8: {sum(c['int8_output'] for c in first.values())} of {len(first)}; inputs "
          f"requantized: {sum(len(c['requantized']) for c in first.values())}")
    for batch, rows in speed.items():
        base = rows["fp32"]["median_us"]
        for name, s in rows.items():
            print(f"batch {batch:<3} {name:<18} {s['median_us']:10.1f} us  {base / s['median_us']:5.2f}x")
    write_results(f"static_densenet_{_C.get_isa()}", {"machine": machine_info(), "epochs": args.epochs,
                                                       "train_images": len(train_x), "train_seconds": seconds, "threads": args.threads,
                                                       "top1": results, "concatenations": cats, "one_call": one_call,
                                                       "speed": speed})


if __name__ == "__main__":
    main()
