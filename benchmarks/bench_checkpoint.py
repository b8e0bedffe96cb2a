"""Benchmark quantize_checkpoint() on a synthetic sharded fp32 (or bf16) checkpoint.

Generates ~SIZE GB of fp32 tensors (``--dtype bfloat16``: the same weights in bf16) (LLM shapes up to 4096x11008) in N
safetensors shards with an index under a temporary folder, then, interleaved
(A B A B): ``cat shards > /dev/null`` from the page cache (the baseline: what
merely reading the files costs) and ``quantize_checkpoint`` in a fresh
subprocess (wall time, input GB/s, peak RSS from the child's VmHWM and
ru_maxrss).  Also the saved size against the fp32 files.  Prints a table and
writes benchmarks/results/bench_checkpoint.json.  Everything generated is
deleted at the end.

    python benchmarks/bench_checkpoint.py --size-gb 4 --shards 8 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, FFN = 4096, 11008
# one transformer layer of a 7B-class model: (name, shape)
LAYER = [("q_proj", (HIDDEN, HIDDEN)), ("k_proj", (HIDDEN, HIDDEN)), ("v_proj", (HIDDEN, HIDDEN)),
         ("o_proj", (HIDDEN, HIDDEN)), ("gate_proj", (FFN, HIDDEN)), ("up_proj", (FFN, HIDDEN)),
         ("down_proj", (HIDDEN, FFN)), ("input_layernorm", (HIDDEN,)), ("post_attention_layernorm", (HIDDEN,))]

CHILD = r"""
import json, resource, sys, time
import mono_quant as mq
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
src, dst, dtype, group = sys.argv[1:5]
options = {"group_size": int(group)} if group != "none" else {}
base_rss = status("VmRSS:")
start = time.perf_counter()
report = mq.quantize_checkpoint(src, dst, dtype, overwrite=True, **options).report
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "base_rss": base_rss, "vm_hwm": status("VmHWM:"),
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "bytes_in": report.model_bytes_before, "bytes_out": report.model_bytes_after,
                  "layers": len(report.layers)}))
"""


def tensor_plan(size_bytes: int):
    """(name, shape) pairs, whole layers, adding up to about size_bytes of fp32."""
    plan, total, layer = [], 0, 0
    while total < size_bytes:
        for name, shape in LAYER:
            plan.append((f"model.layers.{layer}.{name}.weight", shape))
            total += 4 * torch.Size(shape).numel()
            if total >= size_bytes:
                break
        layer += 1
    return plan


def generate(folder: Path, size_bytes: int, shards: int, dtype: torch.dtype = torch.float32) -> list:
    from safetensors.torch import save_file

    plan = tensor_plan(size_bytes)
    per_shard = -(-len(plan) // shards)
    weight_map, files = {}, []
    gen = torch.Generator().manual_seed(0)
    for i in range(shards):
        part = plan[i * per_shard:(i + 1) * per_shard]
        if not part:
            break
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {key: (torch.randn(shape, generator=gen) * 0.02).to(dtype) for key, shape in part}
        save_file(tensors, os.fspath(folder / name))
        del tensors
        weight_map.update({key: name for key, _ in part})
        files.append(folder / name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


def time_cat(files) -> float:
    start = time.perf_counter()
    subprocess.run(["cat", *map(os.fspath, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def run_child(src: Path, dst: Path, dtype: str, group) -> dict:
    if dst.exists():
        dst.unlink()  # deleting the last output (slow on this disk) is not part of the measurement
    out = subprocess.run([sys.executable, "-c", CHILD, os.fspath(src), os.fspath(dst), dtype, str(group)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["out_file_bytes"] = dst.stat().st_size
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4.0,
                        help="size in GB (1e9 bytes) of the fp32 checkpoint the weights make up")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype the shards are stored in (bfloat16: the same weights in half the bytes)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved cat / quantize pairs (int8)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to generate (deleted afterwards)")
    parser.add_argument("--ram-dir", default="/dev/shm", help="tmpfs for the second output target ('' to skip)")
    parser.add_argument("--json", default=None,
                        help="results file (default benchmarks/results/bench_checkpoint[_bfloat16].json)")
    args = parser.parse_args()

    import mono_quant as mq

    work = Path(tempfile.mkdtemp(prefix="mq-bench-ckpt-", dir=args.dir))
    cleanup = [work]
    try:
        src = work / "ckpt"
        src.mkdir()
        t0 = time.perf_counter()
        dtype = getattr(torch, args.dtype)
        files = generate(src, int(args.size_gb * 1e9), args.shards, dtype)
        gen_s = time.perf_counter() - t0
        os.sync()  # the generated shards' write-back must not compete with the measured runs
        input_bytes = sum(f.stat().st_size for f in files)
        element = torch.empty((), dtype=dtype).element_size()
        largest = max(element * torch.Size(shape).numel() for _, shape in tensor_plan(int(args.size_gb * 1e9)))
        print(f"generated {input_bytes / 1e9:.2f} GB in {len(files)} shards ({gen_s:.0f} s); largest tensor "
              f"{largest / 1e6:.0f} MB", flush=True)
        time_cat(files)  # warm the page cache
        time_cat(files)
        # the output goes to the same disk as the input (fsync included), and to tmpfs when there is one
        # (isolates the quantization pipeline from the disk's write-back)
        targets = {"int8 -> disk": work / "q_int8.safetensors"}
        if args.ram_dir and os.path.isdir(args.ram_dir):
            ram = Path(tempfile.mkdtemp(prefix="mq-bench-out-", dir=args.ram_dir))
            cleanup.append(ram)
            targets["int8 -> tmpfs"] = ram / "q_int8.safetensors"
        cats, variants = [], {name: [] for name in targets}
        for _ in range(args.repeats):  # A B C A B C
            cats.append(time_cat(files))
            line = f"  cat {cats[-1]:.2f} s"
            for name, dst in targets.items():
                variants[name].append(run_child(src, dst, "int8", "none"))
                line += f"   {name} {variants[name][-1]['wall_s']:.2f} s"
            print(line, flush=True)
        for dst in targets.values():
            dst.unlink(missing_ok=True)
        if "int4" in mq.QTYPES:
            variants["int4-g128 -> disk"] = [run_child(src, work / "q_int4.safetensors", "int4", 128)]
        cat_s = statistics.median(cats)
        cat_gbps = input_bytes / cat_s / 1e9
        limit = 2 * largest + 200 * 2 ** 20
        rows = []
        for name, results in variants.items():
            wall = statistics.median(r["wall_s"] for r in results)
            peak = max(r["vm_hwm"] for r in results)
            base = min(r["base_rss"] for r in results)
            rows.append({
                "variant": name, "wall_s": wall, "walls_s": [r["wall_s"] for r in results],
                "gbps": input_bytes / wall / 1e9, "throughput_vs_cat": (input_bytes / wall / 1e9) / cat_gbps,
                "best_wall_s": min(r["wall_s"] for r in results),
                "best_vs_best_cat": min(cats) / min(r["wall_s"] for r in results),
                "peak_rss_bytes": peak, "ru_maxrss_bytes": max(r["ru_maxrss"] for r in results),
                "rss_after_import_bytes": base, "peak_rss_limit_bytes": limit,
                "out_file_bytes": results[0]["out_file_bytes"],
                "size_ratio": results[0]["out_file_bytes"] / input_bytes,
            })
        print(f"\ninput {input_bytes / 1e9:.2f} GB {args.dtype}, {len(files)} shards; cat > /dev/null (page cache): "
              f"median {cat_s:.2f} s = {cat_gbps:.2f} GB/s, best {min(cats):.2f} s  "
              f"(runs {', '.join(f'{c:.2f}' for c in cats)})")
        header = ("variant", "median s", "GB/s", "vs cat", "best s", "best vs best", "peak RSS MiB",
                  "limit MiB", "import MiB", "size ratio")
        print(f"{header[0]:<18}" + "  ".join(f"{h:>12}" for h in header[1:]))
        for r in rows:
            print(f"{r['variant']:<18}" + "  ".join(f"{v:>12}" for v in (
                f"{r['wall_s']:.2f}", f"{r['gbps']:.2f}", f"{r['throughput_vs_cat']:.2f}x",
                f"{r['best_wall_s']:.2f}", f"{r['best_vs_best_cat']:.2f}x",
                f"{r['peak_rss_bytes'] / 2**20:.0f}", f"{limit / 2**20:.0f}",
                f"{r['rss_after_import_bytes'] / 2**20:.0f}", f"{r['size_ratio']:.4f}")))
        record = {
            "benchmark": "quantize_checkpoint", "dtype": args.dtype, "input_bytes": input_bytes, "shards": len(files),
            "largest_tensor_bytes": largest, "cat_s": cats, "cat_gbps": cat_gbps, "results": rows,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version(), "kernels": mq.cpu_info().get("active_isa")},
        }
        suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
        out = Path(args.json or Path(__file__).parent / "results" / f"bench_checkpoint{suffix}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
        print(f"wrote {out}")
    finally:
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
