"""Fuzz the loaders: mutate files written by ``mq.save`` and ``mq.quantize_checkpoint`` (and a
static int8 model) and check that each mutated file either loads and runs with finite outputs
or is refused with a mono-quant error (:class:`mono_quant.MonoQuantError`): never another
exception, never a hang, never a non-finite output from a file whose float tensors are intact.

Mutations: a value anywhere in the header JSON or in a manifest (tensor entries, layer fields,
init_kwargs, scales) replaced by a value of another type, a boundary number or removed; raw
bytes of the header flipped; special numbers (0, -1, subnormal, NaN, Inf, huge) written into a
scale tensor; random bytes written into a tensor's data; the file truncated.  Each mutated file
goes through ``mq.load(path, model=...)`` and a forward, ``mq.load(path)`` (+ ``dequantize()``)
and ``mono_quant.io.describe.describe(path)``.

Not part of the test suite (tests/io/test_io_corruption.py and test_io_fuzz_findings.py are).

    python benchmarks/fuzz_load.py --cases 3000 --seed 0 [--json out.json] [--show 20]

Prints a table of outcomes per seed file and mutation kind, then each failure: "BUG" (another
exception at load, a non-finite output from intact float tensors, a model returning no tensor)
or "forward-error" (loaded, then torch refused the forward: an edited argument of a static
program's replayed call, which the file cannot be checked for without an input shape).
"""
from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import math
import random
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch import nn

import mono_quant as mq
from mono_quant.errors import MonoQuantError
from mono_quant.io.describe import describe

HANG_SECONDS = 60  # one case far past this is a hang: dump the stacks and exit
MANIFEST_KEYS = ("mono_quant", "mono_quant.static", "mono_quant.static_per_layer")
QUANT_BUFFERS = ("weight_qdata", "weight_scale", "weight_zero_point", "weight_packed", "weight_colsum",
                 "weight_packed_info", "weight_dw", "b_codes")
WEIRD_VALUES = [0, -1, 1, 2, 7, 1.5, -0.5, 1e-40, 1e30, 1e300, 2 ** 31, 2 ** 63, -2 ** 63, True, False, None, "",
                "x", "int8", "float32", "F32", "I8", "Linear", "QuantizedLinear", [], [0], [1, 2], [-1, 4], {},
                {"a": 1}, {"$float": "nan"}, {"$float": "inf"}, {"$ref": "nowhere"}, [[1]]]
SPECIAL_FLOATS = [0.0, -0.0, -1.0, 1e-40, 1e-45, float("nan"), float("inf"), -float("inf"), 1e30, 1e37, 3.4e38]


# ---- seed files ------------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 32)
        self.fc1 = nn.Linear(32, 24)
        self.fc2 = nn.Linear(24, 8)

    def forward(self, idx):
        return self.fc2(torch.relu(self.fc1(self.emb(idx))))


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


class Branchy(nn.Module):
    """Data-dependent control flow torch.fx can't trace: saved as a per-layer static model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


NET_INPUT = torch.tensor([[0, 3, 19, 7]])
CONV_INPUT = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def seed_files(folder: Path):
    """{name: (path, float model class, input)} of the files to mutate."""
    torch.manual_seed(0)
    seeds = {}
    for name, kwargs in {"int8": {}, "int8-per-tensor": {"granularity": "per_tensor"},
                         "uint8-weight-only": {"dtype": "uint8", "activations": None},
                         "int4": {"dtype": "int4", "group_size": 32}, "fp16": {"dtype": "fp16"}}.items():
        kwargs = {"dtype": "int8", **kwargs}
        result = mq.quantize(Net(), embeddings=True, **kwargs)
        seeds[name] = (mq.save(result, folder / f"{name}.safetensors"), Net, NET_INPUT)
    float_file = folder / "float.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in Net().state_dict().items()}, str(float_file))
    for dtype, kwargs in {"int8": {}, "int4": {"group_size": 32}}.items():
        out = folder / f"checkpoint-{dtype}.safetensors"
        mq.quantize_checkpoint(float_file, out, dtype=dtype, **kwargs)
        seeds[f"checkpoint-{dtype}"] = (out, Net, NET_INPUT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        static = mq.quantize(Convs().eval(), "int8", activations="static",
                             calibration=torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2)))
    seeds["static"] = (mq.save(static, folder / "static.safetensors"), Convs, CONV_INPUT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_layer = mq.quantize(Branchy().eval(), "int8", activations="static",
                                calibration=torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2)))
    seeds["static-per-layer"] = (mq.save(per_layer, folder / "static-per-layer.safetensors"), Branchy, CONV_INPUT)
    return seeds


# ---- the file's parts -------------------------------------------------------------------------------------


def split(raw: bytes):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def leaves(obj, path=()):
    """Every (path, value) in a JSON value, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, path + (i,))


def set_at(obj, path, value, delete=False):
    for key in path[:-1]:
        obj = obj[key]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def new_value(rng: random.Random, old):
    """Another type, a boundary number or a nearby number."""
    if isinstance(old, (int, float)) and not isinstance(old, bool) and rng.random() < 0.4:
        return rng.choice([old + 1, old - 1, old * 2, old / 2, -old, old * 1e30, old * 1e-30, 0])
    return copy.deepcopy(rng.choice(WEIRD_VALUES))


# ---- mutations: each returns (kind, bytes, name of the float tensor whose data it changed or None) ----------


def mutate_json(rng, raw):
    """One to three values of the header or of a manifest replaced or removed."""
    kind = None
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind, raw, _ = _mutate_json_once(rng, raw)
    return kind, raw, None


def _mutate_json_once(rng, raw):
    header, data = split(raw)
    meta = header.get("__metadata__", {})
    targets = [("header", None)] + [(k, json.loads(meta[k])) for k in MANIFEST_KEYS if k in meta]
    where, manifest = rng.choice(targets)
    doc = header if manifest is None else manifest
    paths = [p for p, _ in leaves(doc) if p and p[0] != "__metadata__"]
    if not paths:
        return "json-header", raw, None
    path = rng.choice(paths)
    old = doc
    for key in path:
        old = old[key]
    delete = rng.random() < 0.15
    set_at(doc, path, new_value(rng, old), delete)
    if manifest is not None:
        meta[where] = json.dumps(manifest)
    return f"json-{'header' if manifest is None else 'manifest'}", join(header, data), None


def flip_header_bytes(rng, raw):
    (n,) = struct.unpack("<Q", raw[:8])
    out = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(8, 8 + n)
        out[i] = rng.randrange(256)
    return "header-bytes", bytes(out), None


def tensor_spans(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return {k: (8 + n + e["data_offsets"][0], 8 + n + e["data_offsets"][1], e["dtype"])
            for k, e in header.items() if k != "__metadata__"}


def scale_values(rng, raw):
    """Special numbers written into a float32 scale (or other float32 tensor)."""
    spans = tensor_spans(raw)
    floats = {"F32": ("<f", 4), "F16": ("<e", 2)}
    scales = [k for k, (b, e, d) in spans.items() if d in floats and e > b and "scale" in k]
    key = rng.choice(scales or [k for k, (b, e, d) in spans.items() if d in floats and e > b])
    begin, end, code = spans[key]
    fmt, size = floats[code]
    out = bytearray(raw)
    for _ in range(rng.randint(1, 2)):
        i = begin + size * rng.randrange((end - begin) // size)
        value = rng.choice(SPECIAL_FLOATS)
        try:
            out[i:i + size] = struct.pack(fmt, value)
        except OverflowError:  # beyond float16: its infinity
            out[i:i + size] = struct.pack(fmt, math.copysign(math.inf, value))
    return "scale-values", bytes(out), None if "scale" in key else key


def data_bytes(rng, raw):
    spans = tensor_spans(raw)
    key = rng.choice([k for k, (b, e, _) in spans.items() if e > b])
    begin, end, _ = spans[key]
    out = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(begin, end)] = rng.randrange(256)
    quant = any(key.endswith("." + b) or key == b for b in QUANT_BUFFERS)
    return "data-bytes", bytes(out), None if quant else key


def truncate(rng, raw):
    return "truncate", raw[:rng.randrange(len(raw))], None


MUTATIONS = [(mutate_json, 5), (flip_header_bytes, 1), (scale_values, 2), (data_bytes, 2), (truncate, 1)]


# ---- judging -----------------------------------------------------------------------------------------------


def judge(path: Path, model_cls, x, float_key):
    """'refused', 'loaded', 'loaded (non-finite from float tensor X)', or 'BUG: ...'."""
    outcome = []
    for step in ("load", "load-no-model", "describe"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if step == "load":
                    model = mq.load(path, model=model_cls())
                    try:
                        with torch.no_grad():
                            y = model(x)
                    except Exception as exc:  # noqa: BLE001
                        return f"forward-error: {type(exc).__name__}: {str(exc)[:300]}"
                    if not isinstance(y, torch.Tensor):
                        return f"BUG: {step}: the model returns a {type(y).__name__}"
                    if not bool(torch.isfinite(y).all()):
                        if float_key is None:
                            return f"BUG: {step}: non-finite output"
                        outcome.append("non-finite (float tensor edited)")
                elif step == "load-no-model":
                    if model_cls is Branchy:  # a per-layer static file needs model= (a TypeError without)
                        continue
                    qsd = mq.load(path)
                    if hasattr(qsd, "dequantize"):
                        for key, t in qsd.dequantize().items():
                            if t.is_floating_point() and not bool(torch.isfinite(t).all()) and float_key is None:
                                return f"BUG: {step}: dequantized {key} is not finite"
                else:
                    describe(path)  # (a static file: its tensors, as a plain state_dict's)
            outcome.append(f"{step} ok")
        except MonoQuantError:
            outcome.append(f"{step} refused")
        except Exception as exc:  # noqa: BLE001 - anything else is what this driver looks for
            return f"BUG: {step}: {type(exc).__name__}: {str(exc)[:300]}"
    return "refused" if all("refused" in o for o in outcome[:1]) else "loaded"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--show", type=int, default=20, help="failures printed")
    parser.add_argument("--keep", type=Path, help="folder to copy each failing file to")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    counts = defaultdict(Counter)
    failures = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seeds = seed_files(folder)
        raws = {name: path.read_bytes() for name, (path, _, _) in seeds.items()}
        functions, weights = zip(*MUTATIONS)
        for case in range(args.cases):
            name = rng.choice(sorted(seeds))
            _, model_cls, x = seeds[name]
            kind, raw, float_key = rng.choices(functions, weights)[0](rng, raws[name])
            path = folder / "case.safetensors"
            path.write_bytes(raw)
            faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
            verdict = judge(path, model_cls, x, float_key)
            faulthandler.cancel_dump_traceback_later()
            label = verdict.split(":")[0]
            counts[(name, kind)][label] += 1
            if label in ("BUG", "forward-error"):
                failures.append({"case": case, "seed_file": name, "mutation": kind, "verdict": verdict})
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / f"case{case}-{name}-{kind}.safetensors").write_bytes(raw)
    seconds = time.perf_counter() - start
    columns = ("loaded", "refused", "forward-error", "BUG")
    print(f"{'seed file':18} {'mutation':15} {'cases':>6} " + " ".join(f"{c:>13}" for c in columns))
    for (name, kind), c in sorted(counts.items()):
        print(f"{name:18} {kind:15} {sum(c.values()):6} " + " ".join(f"{c[k]:13}" for k in columns))
    total = Counter()
    for c in counts.values():
        total.update(c)
    print(f"{'total':34} {sum(total.values()):6} " + " ".join(f"{total[k]:13}" for k in columns)
          + f"   ({seconds:.0f} s)")
    by_message = Counter(f"{f['seed_file']}/{f['mutation']}: {f['verdict'][:160]}" for f in failures)
    for message, n in by_message.most_common(args.show):
        print(f"{n:5} x {message}")
    if args.json:
        args.json.write_text(json.dumps({"cases": args.cases, "seed": args.seed, "seconds": seconds,
                                         "counts": {f"{a}/{b}": dict(c) for (a, b), c in counts.items()},
                                         "failures": failures}, indent=1))
    return 1 if total["BUG"] else 0


if __name__ == "__main__":
    sys.exit(main())
