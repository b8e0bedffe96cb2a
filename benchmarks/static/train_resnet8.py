"""Train the ResNet8 reference model on Fashion-MNIST, reproducibly, on a few CPU cores.

    .venv/bin/python benchmarks/static/train_resnet8.py            # writes tests/data/resnet8_fashion_mnist.safetensors

Fixed seed, deterministic algorithms, 1 thread, no pickle: the checkpoint is
a safetensors file of the state_dict with the training settings and the
test-set top-1 in its metadata.  Data: Debian's dataset-fashion-mnist
(python/mono_quant/datasets/fashion_mnist.py).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resnet8 import ResNet8, normalize_images  # noqa: E402

from mono_quant.datasets import load_fashion_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "tests" / "data" / "resnet8_fashion_mnist.safetensors"


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 2-pixel shifts (pad + crop, per image) and horizontal flips: cheap tensor ops."""
    b = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    oy = torch.randint(0, 5, (b,), generator=generator)
    ox = torch.randint(0, 5, (b,), generator=generator)
    ar = torch.arange(28)
    rows = (oy[:, None] + ar)[:, :, None]
    cols = (ox[:, None] + ar)[:, None, :]
    x = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return 100.0 * correct / len(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    # 1 thread: on a busy 2-core host torch's 2-thread OpenMP team runs ~5x slower (spinning on
    # descheduled peers), and one thread makes the run bit-reproducible whatever the machine
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--augment", action="store_true", help="random 2-pixel shifts and flips (helps from 3+ epochs)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(args.seed)

    xtr_u8, ytr = load_fashion_mnist("train")
    xte_u8, yte = load_fashion_mnist("test")
    xtr, xte = normalize_images(xtr_u8), normalize_images(xte_u8)
    ytr, yte = torch.from_numpy(ytr).long(), torch.from_numpy(yte).long()

    # channels_last: oneDNN's fast path for these small convolutions on CPU (about 3x here)
    model = ResNet8().to(memory_format=torch.channels_last)
    xtr = xtr.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    total = args.epochs * steps_per_epoch
    # linear warm-up for 3% of the steps, then cosine to zero
    warm = max(1, total // 33)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))

    t_start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        loss_sum, t0 = 0.0, time.perf_counter()
        for i in range(0, len(xtr), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb = augment(xtr[idx], gen) if args.augment else xtr[idx]
            xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            step = i // args.batch_size + 1
            if step % 100 == 0:
                print(f"  step {step}/{steps_per_epoch}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
        top1 = evaluate(model, xte, yte)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / len(xtr):.4f}  test top-1 {top1:.2f}%  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    elapsed = time.perf_counter() - t_start

    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": "ResNet8 (benchmarks/static/resnet8.py)", "dataset": "fashion-mnist",
            "test_top1": f"{top1:.2f}", "epochs": str(args.epochs), "batch_size": str(args.batch_size),
            "lr": str(args.lr), "weight_decay": str(args.weight_decay), "seed": str(args.seed),
            "threads": str(args.threads), "augment": str(args.augment),
            "train_seconds": f"{elapsed:.0f}", "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata=meta)
    print(json.dumps(meta, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
