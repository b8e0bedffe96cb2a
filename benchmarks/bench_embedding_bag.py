"""Quantized embedding tables: nn.EmbeddingBag (recommendation models) and nn.Embedding lookups.

For table shapes from a DLRM-style model (a million rows of 64) down to a table that fits the caches,
times interleaved in one process (medians): fp32 nn.EmbeddingBag, mono-quant's QuantizedEmbeddingBag
at int8 (the C bag kernel, csrc/embedding.c), uint8 (asymmetric: a zero-point per row, one more read)
and int4 (group-wise rows, the same C kernel), and torch.ao's quantized EmbeddingBag (8-bit
rowwise, fbgemm's fused rows: codes, scale and bias in one row).  Each call takes the next of 8
batches of random ids, so a batch's rows are not all in the caches from the call before.  Also the
nn.Embedding lookup of the same ids (rows gathered and dequantized in C).  Prints each one's speed
against fp32 and the table's bytes.

    python benchmarks/bench_embedding_bag.py [--threads 1] [--repeats 21] [--background-load N]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import background_load, interleaved, machine_info, summary, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402

warnings.filterwarnings("ignore")

#: (rows, dim, bags, ids per bag)
CASES = [(1_000_000, 64, 2048, 20), (200_000, 128, 512, 50), (50_000, 32, 4096, 1), (10_000, 64, 2048, 20)]


def torch_ao_bag(bag: nn.EmbeddingBag):
    """torch.ao's 8-bit rowwise EmbeddingBag (fbgemm), or None where this torch has none."""
    try:
        from torch.ao.quantization import float_qparams_weight_only_qconfig
        m = nn.Sequential(bag)
        m[0].qconfig = float_qparams_weight_only_qconfig
        return torch.ao.quantization.convert(torch.ao.quantization.prepare(m, inplace=False), inplace=False)[0]
    except Exception:  # noqa: BLE001 (a benchmark: report what runs)
        return None


def table_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--background-load", type=int, default=0, metavar="N")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 and not args.background_load else time.perf_counter
    print(machine_info(), f"threads {args.threads}, background load {args.background_load}")
    results = []
    with background_load(args.background_load), torch.no_grad():
        for rows, dim, bags, per in CASES:
            torch.manual_seed(0)
            bag = nn.EmbeddingBag(rows, dim, mode="sum")
            emb = nn.Embedding(rows, dim)
            emb.weight.data.copy_(bag.weight.data)
            q = {dt: mq.quantize(nn.Sequential(bag), dt, embeddings=True, **kw).model[0]
                 for dt, kw in [("int8", {}), ("uint8", {}), ("int4", {"group_size": 32})]}
            qe = mq.quantize(nn.Sequential(emb), "int8", embeddings=True).model[0]
            ao = torch_ao_bag(bag)
            batches = [torch.randint(0, rows, (bags * per,)) for _ in range(8)]
            offsets = torch.arange(0, bags * per, per)
            turn = itertools.cycle(range(8))

            def call(m, lookup=False):
                def run():
                    ids = batches[next(turn)]
                    return m(ids) if lookup else m(ids, offsets)
                return run

            contenders = {"fp32": call(bag), "int8": call(q["int8"]), "uint8": call(q["uint8"]),
                          "int4": call(q["int4"]), "lookup fp32": call(emb, True), "lookup int8": call(qe, True)}
            if ao is not None:
                contenders["torch.ao int8"] = call(ao)
            times = {k: summary(v) for k, v in interleaved(contenders, repeats=args.repeats, clock=clock).items()}
            stat = "mean_us" if args.background_load else "median_us"
            base, base_lookup = times["fp32"][stat], times["lookup fp32"][stat]
            row = {"rows": rows, "dim": dim, "bags": bags, "ids_per_bag": per, "times": times,
                   "bytes": {"fp32": table_bytes(bag), **{k: table_bytes(m) for k, m in q.items()}}}
            results.append(row)
            speed = "  ".join(f"{k} {(base_lookup if k.startswith('lookup') else base) / t[stat]:.2f}x"
                              for k, t in times.items() if k not in ("fp32", "lookup fp32"))
            print(f"{rows}x{dim}, {bags} bags of {per}: fp32 {base / 1e3:.3f} ms (lookup {base_lookup / 1e3:.3f} ms); "
                  f"speed vs fp32: {speed}; bytes int8 / fp32 {row['bytes']['int8'] / row['bytes']['fp32']:.3f}")
    print("wrote", write_results("bench_embedding_bag", {"machine": machine_info(), "threads": args.threads,
                                                         "background_load": args.background_load, "cases": results}))


if __name__ == "__main__":
    main()
