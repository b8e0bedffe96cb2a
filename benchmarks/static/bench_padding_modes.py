"""Static int8 of nets whose convs pad by reflection (an image-to-image generator's residual blocks,
CycleGAN / pix2pix style, and a super-resolution body) or with an uneven 'same' (a 1-D audio front end
of even kernels): their convs now run int8 with the codes padded first (static/conv_padding.py); before,
they stayed float.  Times fp32, static int8 with those convs left float ("before": the same model
quantized with them excluded, which is what quantize() did) and static int8 now, interleaved, at batch
1 and 4, and gives each output's SQNR against fp32.  ``--load N`` runs N busy processes beside it.

    python benchmarks/static/bench_padding_modes.py [--threads 1] [--load 0] [--repeats 11]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import background_load, interleaved, machine_info, summary, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.static.conv_padding import static_padding  # noqa: E402


class ResidualBlock(nn.Module):
    """CycleGAN's: reflect-padded 3x3 conv, InstanceNorm-free (BatchNorm, folded), ReLU, conv, + input."""

    def __init__(self, channels: int):
        super().__init__()
        self.c1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.b1 = nn.BatchNorm2d(channels)
        self.c2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.b2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


def generator(channels: int, blocks: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, channels, 7, padding=3, padding_mode="reflect"), nn.ReLU(),
                         *[ResidualBlock(channels) for _ in range(blocks)],
                         nn.Conv2d(channels, 3, 7, padding=3, padding_mode="reflect"))


def audio_same(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, channels, 8, stride=1, padding="same"), nn.ReLU(),
                         nn.Conv1d(channels, channels, 4, padding="same"), nn.ReLU(),
                         nn.Conv1d(channels, channels, 4, padding="same", padding_mode="replicate"), nn.ReLU(),
                         nn.Conv1d(channels, 16, 1))


CASES = {  # name: (model, input shape per image)
    "generator 64ch 64x64, 3 blocks": (lambda: generator(64, 3), (3, 64, 64)),
    "generator 128ch 32x32, 4 blocks": (lambda: generator(128, 4), (3, 32, 32)),
    "audio 'same' even kernels, 64ch x 4000": (lambda: audio_same(64), (1, 4000)),
}


def trained_like(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def padded_on_codes(model: nn.Module) -> list:
    """Names of the convs the static kernels do not pad themselves (left float before)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and static_padding(m)[2] is not None]


def sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (got - ref).pow(2).mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark")
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case, (make, shape) in CASES.items():
        torch.manual_seed(0)
        model = trained_like(make())
        torch.manual_seed(1)
        calibration = [torch.randn(4, *shape) for _ in range(8)]
        float_convs = padded_on_codes(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            now = mq.quantize(model, "int8", activations="static", calibration=calibration)
            before = mq.quantize(model, "int8", activations="static", calibration=calibration, exclude=float_convs)
        assert not {s.name for s in now.skipped} & set(float_convs), now.skipped
        probe = torch.randn(4, *shape)
        with torch.no_grad():
            ref = model(probe)
            quality = {"before": sqnr(ref, before.model(probe)), "now": sqnr(ref, now.model(probe))}
        with background_load(args.load) if args.load else contextlib.nullcontext(), torch.no_grad():
            for batch in (1, 4):
                x = torch.randn(batch, *shape)
                times = interleaved({"fp32": lambda: model(x), "before": lambda: before.model(x),
                                     "now": lambda: now.model(x)}, repeats=args.repeats)
                med = {k: summary(v)["median_us"] for k, v in times.items()}
                rows.append({"case": case, "batch": batch, "padded_convs": len(float_convs),
                             **{f"{k}_us": v for k, v in med.items()},
                             **{f"{k}_x_fp32": med["fp32"] / v for k, v in med.items() if k != "fp32"},
                             **{f"{k}_sqnr_db": v for k, v in quality.items()}})
                print(f"{case}, batch {batch}: fp32 {med['fp32'] / 1e3:.2f} ms, static before (those "
                      f"{len(float_convs)} convs float) x{med['fp32'] / med['before']:.2f}, now "
                      f"x{med['fp32'] / med['now']:.2f} (SQNR {quality['before']:.1f} / {quality['now']:.1f} dB)",
                      flush=True)
    path = write_results("static_padding_modes", {"machine": machine_info(), "threads": args.threads,
                                                  "load": args.load, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
