"""Quantize a small CNN to int8 (dynamic activations), check its accuracy, save and reload it.

    python examples/cnn.py [--small]
"""
import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import mono_quant as mq


def make_cnn(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(2 * width, 10),
    ).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the test suite runs this)")
    args = parser.parse_args()
    torch.manual_seed(0)
    width, size = (8, 16) if args.small else (64, 32)
    model = make_cnn(width)
    images = torch.randn(16, 3, size, size)

    result = mq.quantize(model, dtype="int8")         # the model itself is not modified
    qmodel, skipped = result
    print(result.report)                               # per-layer sizes and SQNR
    print("left in float:", [(s.name, s.reason) for s in skipped])

    with torch.no_grad():
        agree = (qmodel(images).argmax(1) == model(images).argmax(1)).float().mean().item()
    print(f"top-1 agreement with fp32: {agree:.0%}")

    with tempfile.TemporaryDirectory() as tmp:
        path = mq.save(qmodel, Path(tmp) / "cnn.safetensors")
        restored = mq.load(path, model=make_cnn(width))  # a fresh float skeleton
        with torch.no_grad():
            assert torch.equal(restored(images), qmodel(images))
        print(f"saved {path.stat().st_size} bytes; reloaded model gives identical outputs")


if __name__ == "__main__":
    main()
