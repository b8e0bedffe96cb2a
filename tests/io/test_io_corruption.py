"""Corrupted files: truncated at many offsets, one bit flipped in the length prefix, the
header, the manifest or the data.  Every variant either raises CheckpointError or loads;
a variant that loads must give bit-identical tensors and output, except that a flip in the
data section may change exactly the flipped byte of exactly one stored tensor (the format
has no checksum: a flipped weight is a different, valid weight), and then the model must
still run.  Never a crash (any other exception), never a hang, never a silently different
model.  The same for quantize_checkpoint() inputs: truncated or corrupted shards, index
files naming paths outside their folder, symlinks leaving it.

Deterministic (fixed seed) and bounded; ``MONO_QUANT_FUZZ_LONG=1`` flips every bit of the
header and one bit of every data byte, and truncates at every offset (minutes).
Run this file as a script for the counts.
"""
import faulthandler
import json
import os
import random
import struct
import sys
from collections import Counter

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError
from mono_quant.io.manifest import METADATA_KEY

LONG = os.environ.get("MONO_QUANT_FUZZ_LONG") == "1"
SEED = 14
HANG_SECONDS = 3600 if LONG else 300  # a whole run far past this is a hang: dump the stacks and exit


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 24)
        self.fc2 = nn.Linear(24, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _reference(tmp_path, dtype):
    """(file bytes, {tensor: (begin, end) in the file}, data start, the loaded model's
    state_dict, its output on a fixed input, the input)."""
    torch.manual_seed(SEED)
    kwargs = {"group_size": 32} if dtype == "int4" else {}
    result = mq.quantize(Net(), dtype=dtype, **kwargs)
    path = mq.save(result, tmp_path / f"ref-{dtype}.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    spans = {k: (8 + n + e["data_offsets"][0], 8 + n + e["data_offsets"][1])
             for k, e in header.items() if k != "__metadata__"}
    loaded = mq.load(path, model=Net())
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        out = loaded(x)
    state = {k: v.detach().clone() for k, v in loaded.state_dict().items()}
    return raw, spans, 8 + n, state, out, x


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaN included)."""
    return a.dtype == b.dtype and a.shape == b.shape and bytes(a.contiguous().view(torch.uint8).reshape(-1).numpy()) \
        == bytes(b.contiguous().view(torch.uint8).reshape(-1).numpy())


def _byte_diffs(a: torch.Tensor, b: torch.Tensor):
    ab = a.contiguous().view(torch.uint8).reshape(-1)
    bb = b.contiguous().view(torch.uint8).reshape(-1)
    return set((ab != bb).nonzero().reshape(-1).tolist())


def _judge(path, ref, flipped_data_byte=None):
    """'rejected', 'identical', 'data-flip' (loaded; exactly the flipped byte differs), or
    'crash: ...' / 'wrong: ...'."""
    raw, spans, data_start, state, out, x = ref
    try:
        model = mq.load(path, model=Net())
    except CheckpointError:
        return "rejected"
    except Exception as exc:  # anything else is a bug
        return f"crash: {type(exc).__name__}: {exc}"
    try:
        got_state = model.state_dict()
        with torch.no_grad():
            got = model(x)
    except Exception as exc:
        return f"crash in forward: {type(exc).__name__}: {exc}"
    if set(got_state) != set(state):
        return f"wrong: keys {sorted(set(got_state) ^ set(state))}"
    changed = {}
    for key, t in state.items():
        if not _same(t, got_state[key]):
            if t.dtype != got_state[key].dtype or t.shape != got_state[key].shape:
                return f"wrong: {key} is {got_state[key].dtype}{list(got_state[key].shape)}"
            changed[key] = _byte_diffs(t, got_state[key])
    if not changed:
        return "identical" if _same(out, got) else "wrong: same tensors, different output"
    if flipped_data_byte is None:
        return f"wrong: a header/manifest change altered {sorted(changed)}"
    where = set()
    for key, diffs in changed.items():
        if key not in spans:
            return f"wrong: {key} changed but is not stored as it is"
        where.update(spans[key][0] + d for d in diffs)
        if key.endswith("weight_scale") and not bool((torch.isfinite(got_state[key]) & (got_state[key] > 0)).all()):
            return f"wrong: {key} loaded with an invalid scale"
    if where != {flipped_data_byte}:
        return f"wrong: changed bytes {sorted(where)[:5]} for a flip at {flipped_data_byte}"
    if got.shape != out.shape or got.dtype != out.dtype:
        return "wrong: output shape/dtype changed"
    return "data-flip"


def _manifest_span(raw: bytes, data_start: int):
    """(begin, end) of the manifest's JSON text inside the header bytes (as escaped there)."""
    key = json.dumps(METADATA_KEY).encode() + b":"
    begin = raw.index(key, 8, data_start) + len(key)
    while raw[begin:begin + 1] in (b" ", b"\t"):
        begin += 1
    end = begin + 1
    while raw[end:end + 1] != b'"' or raw[end - 1:end] == b"\\":
        end += 1
    return begin + 1, end


def _cases(raw: bytes, data_start: int, rng: random.Random):
    """(kind, bytes, flipped data byte or None) variants of one file."""
    size = len(raw)
    m_begin, m_end = _manifest_span(raw, data_start)
    if LONG:
        truncations = range(size)
        header_bits = [(i, b) for i in range(data_start) for b in range(8)]
        data_bits = [(i, rng.randrange(8)) for i in range(data_start, size)]
    else:
        truncations = sorted(set(list(range(17)) + [data_start - 1, data_start, data_start + 1, size - 1]
                                 + rng.sample(range(size), 16)))
        prefix = [(i, rng.randrange(8)) for i in range(8)] + [(i, rng.randrange(8)) for i in range(8)]
        manifest = [(i, rng.randrange(8)) for i in rng.sample(range(m_begin, m_end), min(80, m_end - m_begin))]
        rest = [i for i in range(8, data_start) if not m_begin <= i < m_end]
        header_only = [(i, rng.randrange(8)) for i in rng.sample(rest, min(50, len(rest)))]
        header_bits = prefix + manifest + header_only
        data_bits = [(i, rng.randrange(8)) for i in rng.sample(range(data_start, size), min(50, size - data_start))]
    for cut in truncations:
        yield "truncate", raw[:cut], None
    for i, bit in header_bits:
        kind = "prefix" if i < 8 else ("manifest" if m_begin <= i < m_end else "header")
        yield kind, raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1:], None
    for i, bit in data_bits:
        yield "data", raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1:], i


def run_corruption(tmp_path, dtype):
    """Counter of (kind, verdict) over every variant, and the list of failures."""
    ref = _reference(tmp_path, dtype)
    raw, _, data_start, *_ = ref
    rng = random.Random(f"{SEED}-{dtype}")
    counts, failures = Counter(), []
    path = tmp_path / f"variant-{dtype}.safetensors"
    for kind, variant, flipped in _cases(raw, data_start, rng):
        path.write_bytes(variant)
        verdict = _judge(path, ref, flipped)
        if kind == "truncate" and verdict != "rejected":
            verdict = f"wrong: a truncated file ({len(variant)} of {len(raw)} bytes) gave {verdict}"
        counts[kind, verdict.split(":")[0]] += 1
        if verdict.startswith(("crash", "wrong")):
            failures.append((kind, len(variant) if kind == "truncate" else flipped, verdict))
    return counts, failures


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_corrupted_files_are_refused_or_load_honestly(tmp_path, dtype):
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        counts, failures = run_corruption(tmp_path, dtype)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert not failures, f"{len(failures)} bad outcomes, e.g. {failures[:5]}"
    tried = sum(counts.values())
    assert tried >= (1000 if LONG else 200)
    assert counts["truncate", "rejected"] > 0 and counts["data", "data-flip"] > 0
    if dtype == "int8":  # the packed buffers' column sums catch most flips in the weight
        assert counts["data", "rejected"] > 0


# ---- quantize_checkpoint inputs ---------------------------------------------------------------


def _shard(path, seed=0, rows=16):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({f"l{seed}.weight": torch.randn(rows, 32, generator=g), f"l{seed}.bias": torch.randn(rows, generator=g)},
              os.fspath(path))
    return path


def _quantize_outcome(src, dst):
    """'ok', 'rejected' (CheckpointError, or the documented ValueError for NaN/Inf weights), or 'crash: ...'."""
    try:
        mq.quantize_checkpoint(src, dst, overwrite=True)
    except CheckpointError:
        return "rejected"
    except ValueError as exc:
        return "rejected" if "NaN or Inf" in str(exc) else f"crash: {type(exc).__name__}: {exc}"
    except Exception as exc:
        return f"crash: {type(exc).__name__}: {exc}"
    mq.load(dst)  # what it wrote is a valid file
    return "ok"


def test_corrupted_safetensors_shards(tmp_path):
    src = _shard(tmp_path / "model.safetensors")
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    rng = random.Random(SEED)
    outcomes = Counter()
    cuts = range(len(raw)) if LONG else sorted(set([0, 7, 8, 9, 8 + n - 1, 8 + n, len(raw) - 1]
                                                  + rng.sample(range(len(raw)), 12)))
    for cut in cuts:
        src.write_bytes(raw[:cut])
        verdict = _quantize_outcome(src, tmp_path / "out.safetensors")
        assert verdict == "rejected", (cut, verdict)
        outcomes["truncate", verdict] += 1
    flips = [(i, b) for i in range(len(raw)) for b in range(8)] if LONG else \
        [(i, rng.randrange(8)) for i in rng.sample(range(len(raw)), 50)]
    for i, bit in flips:
        src.write_bytes(raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1:])
        verdict = _quantize_outcome(src, tmp_path / "out.safetensors")
        assert not verdict.startswith("crash"), (i, bit, verdict)
        outcomes["flip", verdict] += 1
    assert outcomes["flip", "ok"] and outcomes["flip", "rejected"]


def test_corrupted_torch_shards(tmp_path):
    sd = {"fc.weight": torch.randn(16, 32), "fc.bias": torch.randn(16)}
    src = tmp_path / "model.pt"
    torch.save(sd, src)
    raw = src.read_bytes()
    rng = random.Random(SEED)
    for cut in sorted(set([0, 1, 10, len(raw) // 2, len(raw) - 1] + rng.sample(range(len(raw)), 15))):
        src.write_bytes(raw[:cut])
        assert _quantize_outcome(src, tmp_path / "out.safetensors") == "rejected", cut
    for i in rng.sample(range(len(raw)), 40):
        src.write_bytes(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1:])
        verdict = _quantize_outcome(src, tmp_path / "out.safetensors")
        assert not verdict.startswith("crash"), (i, verdict)


def _index(folder, weight_map, name="model.safetensors.index.json"):
    (folder / name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder / name


@pytest.mark.parametrize("target", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../outside.safetensors",
                                    "sub/inner.safetensors", "..", ".", "", "a\0b.safetensors"])
def test_index_naming_a_path_outside_its_folder_is_refused(tmp_path, target):
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    _shard(tmp_path / "outside.safetensors")
    _shard(folder / "sub" / "inner.safetensors")
    _shard(folder / "ok.safetensors", seed=1)
    index = _index(folder, {"l0.weight": target, "l0.bias": target, "l1.weight": "ok.safetensors",
                            "l1.bias": "ok.safetensors"})
    for src in (folder, index):
        with pytest.raises(CheckpointError, match="folder|file name"):
            mq.quantize_checkpoint(src, tmp_path / "out.safetensors", overwrite=True)


def test_symlinks_leaving_the_folder_are_refused(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    outside = _shard(tmp_path / "outside.safetensors")
    (folder / "evil.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="symlink|outside"):
        mq.quantize_checkpoint(folder, tmp_path / "out.safetensors")  # found by the folder scan
    _shard(folder / "ok.safetensors", seed=1)
    index = _index(folder, {"l0.weight": "evil.safetensors", "l0.bias": "evil.safetensors",
                            "l1.weight": "ok.safetensors", "l1.bias": "ok.safetensors"})
    for src in (folder, index):
        with pytest.raises(CheckpointError, match="symlink|outside"):
            mq.quantize_checkpoint(src, tmp_path / "out.safetensors", overwrite=True)
    # a symlinked index file leaving the folder is refused too
    (folder / "model.safetensors.index.json").unlink()
    (folder / "evil.safetensors").unlink()
    elsewhere = _index(tmp_path, {"l1.weight": "ok.safetensors", "l1.bias": "ok.safetensors"}, "x.index.json")
    (folder / "model.safetensors.index.json").symlink_to(elsewhere)
    with pytest.raises(CheckpointError, match="symlink|outside"):
        mq.quantize_checkpoint(folder, tmp_path / "out.safetensors", overwrite=True)


def test_symlinks_inside_the_folder_and_the_hub_cache_layout_work(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    _shard(folder / "real.bin.safetensors")
    (folder / "model.safetensors").symlink_to("real.bin.safetensors")
    _index(folder, {"l0.weight": "model.safetensors", "l0.bias": "model.safetensors"})
    mq.quantize_checkpoint(folder, tmp_path / "a.safetensors")
    # Hugging Face hub cache: snapshots/<revision>/<file> -> ../../blobs/<hash>
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    _shard(repo / "blobs" / "f00d")
    (snapshot / "model.safetensors").symlink_to("../../blobs/f00d")
    mq.quantize_checkpoint(snapshot, tmp_path / "b.safetensors")
    assert mq.load(tmp_path / "a.safetensors").keys() == mq.load(tmp_path / "b.safetensors").keys()


def test_a_shard_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors")  # open() on it would wait for a writer forever
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        with pytest.raises(CheckpointError, match="regular file"):
            mq.quantize_checkpoint(folder, tmp_path / "out.safetensors")
        with pytest.raises(CheckpointError, match="regular file"):
            mq.quantize_checkpoint(folder / "model.safetensors", tmp_path / "out.safetensors")
        with pytest.raises(CheckpointError, match="regular file"):
            mq.load(folder / "model.safetensors")
        # a shard named by an index: "is not a regular file" (it said "does not exist")
        os.rename(folder / "model.safetensors", folder / "model-00001-of-00001.safetensors")
        (folder / "model.safetensors.index.json").write_text(
            '{"weight_map": {"w.weight": "model-00001-of-00001.safetensors"}}')
        with pytest.raises(CheckpointError, match="shard 'model-00001-of-00001.safetensors' is not a regular file"):
            mq.quantize_checkpoint(folder, tmp_path / "out.safetensors")
    finally:
        faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":  # the counts: python tests/io/test_io_corruption.py [int8 int4 fp16]
    import tempfile
    from pathlib import Path

    for dtype in sys.argv[1:] or ("int8", "int4", "fp16"):
        with tempfile.TemporaryDirectory() as tmp:
            counts, failures = run_corruption(Path(tmp), dtype)
        verdicts = Counter()
        for (kind, verdict), n in counts.items():
            verdicts[verdict] += n
        print(f"{dtype}: {sum(counts.values())} cases; " + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
              + f"; failures {len(failures)}")
        for kind in ("truncate", "prefix", "header", "manifest", "data"):
            row = {v: n for (k, v), n in counts.items() if k == kind}
            print(f"    {kind:9s} {row}")
        for failure in failures[:10]:
            print("    FAIL", failure)
    sys.exit(0)


@pytest.mark.parametrize("local", ["weight", "bias"])
def test_a_float_tensor_under_a_quantized_layers_name_is_refused(tmp_path, local):
    """A float ``fc.weight`` beside quantized layer ``fc`` loaded without model=: dequantize() gave the
    planted tensor, compare the layer's, inspect both (a file says two things at once)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, bias=local == "weight"), nn.ReLU(), nn.Linear(32, 16))
    path = mq.save(mq.quantize(model, "int8"), tmp_path / "q.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert f"0.{local}" not in tensors
    tensors[f"0.{local}"] = torch.randn(32, 64) if local == "weight" else torch.zeros(32)  # (a layer without bias)
    save_file(tensors, str(tmp_path / "planted.safetensors"), meta)
    with pytest.raises(CheckpointError, match=rf"'0\.{local}' is stored beside quantized layer '0'"):
        mq.load(tmp_path / "planted.safetensors")
