"""Calibrated static int8 of a small residual CNN: calibrate, read the report, save and reload.

    python examples/static_calibration.py [--small]

Static int8 fixes each activation's scale from calibration data, folds BatchNorm into
the convs, fuses ReLU and keeps activations in int8 between layers. With the Fashion-MNIST
package installed (apt-get install dataset-fashion-mnist) it calibrates on real images;
otherwise on random ones (the numbers then only show the mechanics).
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import mono_quant as mq
from mono_quant.datasets import fashion_mnist_available, load_fashion_mnist


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input, then ReLU (a ResNet basic block)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def make_model(width: int) -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          Block(width), Block(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    for m in model.modules():  # BatchNorm statistics as a trained model would have them
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(count: int) -> torch.Tensor:
    if fashion_mnist_available():
        x, _ = load_fashion_mnist("test", limit=count)  # uint8 (N, 28, 28)
        x = torch.from_numpy(x).float().div_(255.0).unsqueeze(1)
        return (x - 0.286) / 0.353  # the dataset's mean / std
    return torch.randn(count, 1, 28, 28)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the test suite runs this)")
    args = parser.parse_args()
    torch.manual_seed(0)
    width, samples = (8, 128) if args.small else (32, 512)
    model = make_model(width)
    data = images(samples + 256)
    calibration, test = data[:samples], data[samples:]
    loader = torch.utils.data.DataLoader(calibration, batch_size=64)

    result = mq.quantize(model, "int8", activations="static", calibration=loader, observer="minmax",
                         calibration_samples=samples)  # the model itself is not modified
    qmodel, skipped = result
    print(result.report)  # per fused op: activation range, clipping, output SQNR against float
    print("left in float:", [(s.name, s.reason) for s in skipped])

    with torch.no_grad():
        ref, out = model(test), qmodel(test)
        agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        start = time.perf_counter()
        qmodel(test[:1])
        batch1_us = (time.perf_counter() - start) * 1e6
    print(f"top-1 agreement with fp32: {agree:.0%}; one image: {batch1_us:.0f} us")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet.static.safetensors"
        mq.save(result, path)
        reloaded = mq.load(path)
        with torch.no_grad():
            same = torch.equal(reloaded(test), out)
        print(f"saved {path.stat().st_size / 1024:.0f} KiB; reloaded model bit-identical: {same}")
    if not same:
        raise SystemExit("the reloaded static model differs from the saved one")


if __name__ == "__main__":
    main()
