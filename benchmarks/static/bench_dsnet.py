"""A small depthwise-separable (MobileNet-style) net on Fashion-MNIST under static int8.

Trains the net for ``--epochs`` (seed 0, one thread, AdamW; about a minute an
epoch on the shared 2-core host), then reports top-1 on the 10k test images of
fp32 and static int8 (per-channel weights, per-tensor activations) for a few
observers at 512 calibration images.  Per-tensor depthwise weights are what
collapse MobileNets under static int8; per-channel weights keep them.

    python benchmarks/static/bench_dsnet.py [--epochs 1]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import machine_info, write_results  # noqa: E402
from resnet8 import normalize_images  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant import _C  # noqa: E402
from mono_quant.calibration import CalibrationWarning  # noqa: E402
from mono_quant.datasets import load_fashion_mnist  # noqa: E402


def ds_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class DSNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(ds_block(16, 32, 1), ds_block(32, 64, 2), ds_block(64, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def top1(model, x, y) -> float:
    with torch.inference_mode():
        return 100.0 * sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum())
                           for i in range(0, len(x), 500)) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--observers", default="minmax,percentile,mse")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", CalibrationWarning)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    train_x, test_x = normalize_images(train_x), normalize_images(test_x)
    train_y, test_y = torch.as_tensor(train_y).long(), torch.as_tensor(test_y)
    model = DSNet()
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
    reports = {}
    for observer in args.observers.split(","):
        q = mq.quantize(model, "int8", activations="static", calibration=train_x[:512], observer=observer)
        results[f"static {observer} 512"] = top1(q.model, test_x, test_y)
        reports[observer] = str(q.report)
    print(f"# DSNet (MobileNet-style, {sum(p.numel() for p in model.parameters())} parameters), {args.epochs} "
          f"epoch(s) in {seconds:.0f} s, ISA {_C.get_isa()}")
    for name, acc in results.items():
        print(f"{name:<24} {acc:6.2f}  drop {results['fp32'] - acc:5.2f}")
    for observer, text in reports.items():
        print(f"\n{text}")
    from safetensors.torch import save_file

    (HERE.parent / "results").mkdir(exist_ok=True)  # the trained net, to look at it again (not committed)
    save_file(model.state_dict(), str(HERE.parent / "results" / "dsnet_fashion_mnist.safetensors"))
    write_results(f"static_dsnet_{_C.get_isa()}", {"machine": machine_info(), "epochs": args.epochs,
                                                    "train_seconds": seconds, "top1": results})


if __name__ == "__main__":
    main()
