"""ResNet8 of the MLPerf Tiny image-classification benchmark, one input channel (28x28 Fashion-MNIST).

Stem conv 3x3 (16) + BN + ReLU, then three residual stages of 16, 32, 64
channels (the last two stride 2 with a 1x1 strided conv on the shortcut, as
in the reference Keras model), each block conv-BN-ReLU-conv-BN, add, ReLU;
global average pool and a Linear head.  About 78k parameters (0.3 MB fp32).

The residual adds go through ``torch.add`` in ``forward``: they are not
modules, which is the case a hook-based calibrator cannot see (see
docs/static.md).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNet8", "BasicBlock", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "normalize_images"]

# statistics of the 60k training images scaled to [0, 1]
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def normalize_images(images_u8) -> torch.Tensor:
    """uint8 (N, 28, 28) array/tensor -> float32 (N, 1, 28, 28), standardised."""
    x = torch.as_tensor(images_u8).to(torch.float32).div_(255.0)
    return x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD).unsqueeze(1)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride, 0)
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.stage1 = BasicBlock(16, 16, 1)
        self.stage2 = BasicBlock(16, 32, 2)
        self.stage3 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
