"""How the static int8 program shares a call between threads (issue 12, batch 1 on 2 threads).

The Fashion-MNIST ResNet8's one-call program (minmax, 512 calibration images), interleaved in
one run, each contender the same C call on the same images:

* ``1 thread``: every image on the calling thread;
* ``auto``: the default: threads take whole images, and the images left over (fewer than the
  threads) have every node split between them (csrc/static_program_split.c), backing off to one
  thread while splits gain too little;
* ``nodes``: every image split node by node, each node in as many pieces as it allows (the
  tests' setting: the split's worst case for overheads);
* ``images``: the previous scheme: whole images only, and a batch smaller than the threads runs
  each node on all threads (one mq_parallel_for per node).

    python benchmarks/static/bench_static_split.py --threads 2
    MONO_QUANT_ISA=avx2 python benchmarks/static/bench_static_split.py --threads 2
    python benchmarks/static/bench_static_split.py --threads 2 --size 112 --batches 1

Writes benchmarks/results/static_split_<isa>_<size>.json.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_static import load_model  # noqa: E402
from common import interleaved, machine_info, summary, write_results  # noqa: E402
from resnet8 import normalize_images  # noqa: E402

import torch  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant import _C  # noqa: E402
from mono_quant.calibration import CalibrationWarning  # noqa: E402
from mono_quant.datasets import load_fashion_mnist  # noqa: E402
from mono_quant.kernels import static_int8 as static_kernels  # noqa: E402
from mono_quant.static.program import compile_program  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,3,64")
    parser.add_argument("--repeats", type=int, default=200, help="calls per contender (batch 64: a tenth)")
    parser.add_argument("--size", type=int, default=28,
                        help="image side: the images resized (bilinear) to size x size, more work per node")
    args = parser.parse_args()
    warnings.simplefilter("ignore", CalibrationWarning)
    train_x, _ = load_fashion_mnist("train", limit=512)
    train_x = normalize_images(train_x)
    static = mq.quantize(load_model(), "int8", activations="static", calibration=train_x, observer="minmax").model
    program = compile_program(static)
    run = static_kernels.static_program_run
    results = {}
    for batch in (int(b) for b in args.batches.split(",")):
        x = train_x[:batch]
        if args.size != 28:
            x = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bilinear")
        x = x.contiguous().numpy()
        contenders = {"1 thread": lambda: run(program.handle, x, 1)}
        for split in ("auto", "nodes", "images"):
            contenders[split] = lambda split=split: run(program.handle, x, args.threads, split=split)
        repeats = args.repeats if batch < 16 else max(10, args.repeats // 10)
        times = interleaved(contenders, repeats=repeats, warmup=5)
        results[batch] = {name: summary(t) for name, t in times.items()}
    isa = _C.get_isa()
    print(f"# static int8 program (Fashion-MNIST ResNet8), {args.size}x{args.size} images, ISA {isa}, "
          f"{args.threads} threads")
    print(f"{'batch':<6} {'contender':<10} {'median us':>10} {'p10':>9} {'p90':>9} {'vs 1 thread':>12}")
    for batch, rows in results.items():
        base = rows["1 thread"]["median_us"]
        for name, s in rows.items():
            print(f"{batch:<6} {name:<10} {s['median_us']:10.1f} {s['p10_us']:9.1f} {s['p90_us']:9.1f} "
                  f"{base / s['median_us']:11.2f}x")
    path = write_results(f"static_split_{isa}_{args.size}", {"machine": machine_info(), "isa": isa,
                                                             "threads": args.threads, "size": args.size,
                                                             "speed": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
