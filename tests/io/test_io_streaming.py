"""The streaming pieces under quantize_checkpoint(): the staged (direct-I/O) sink, the
writer's parts and in-place regions, the kernel that reads rows from a file,
and whole checkpoints through every path (in place, part buffers, a writer
thread, memory-mapped .pt input) giving exactly quantize(state_dict)."""
import errno
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import mono_quant as mq
from mono_quant import _C, kernels
from mono_quant.io import checkpoint as checkpoint_module
from mono_quant.io import shards as shards_module
from mono_quant.io import sink as sink_module
from mono_quant.io.container import StreamingWriter
from mono_quant.io.sink import DIRECT_ALIGN, StagedSink, open_sink, wants_direct_io


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- direct-I/O sink -----------------------------------------------------------------------------


def _random_bytes(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


@pytest.mark.parametrize("direct", [True, False])
def test_staged_sink_writes_exact_bytes_across_staging_buffers(tmp_path, monkeypatch, direct):
    monkeypatch.setattr(sink_module, "_STAGE_BYTES", 3 * DIRECT_ALIGN)
    path = tmp_path / "out.bin"
    path.write_bytes(b"H" * DIRECT_ALIGN)  # a header area the sink must leave alone
    sink = StagedSink(path, DIRECT_ALIGN, direct)
    expected = []
    for i, n in enumerate([1, 4095, 4096, 12288, 5, 30000, 0, 7]):
        data = _random_bytes(n, i)
        sink.write(memoryview(data))
        expected.append(data)
    region = sink.region()  # filled in place
    data = _random_bytes(min(len(region), 1000), 99)
    region[:len(data)] = data.tobytes()
    sink.commit(len(data))
    expected.append(data)
    with pytest.raises(ValueError, match="past the staging buffer"):
        sink.commit(10 ** 9)
    sink.close()
    body = b"".join(d.tobytes() for d in expected)
    assert path.read_bytes() == b"H" * DIRECT_ALIGN + body  # cut at the real end, not the padded block


def test_staged_sink_falls_back_to_plain_writes(tmp_path, monkeypatch):
    real = os.pwrite
    calls = {"n": 0}

    def refusing(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EINVAL, "direct I/O refused")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing)
    path = tmp_path / "out.bin"
    path.write_bytes(b"")
    sink = StagedSink(path, 0)
    data = _random_bytes(10000, 1)
    sink.write(memoryview(data))
    sink.close()
    assert not sink.direct and path.read_bytes() == data.tobytes()


def test_staged_sink_reports_write_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(sink_module, "_STAGE_BYTES", DIRECT_ALIGN)
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    path = tmp_path / "out.bin"
    path.write_bytes(b"")
    sink = StagedSink(path, 0)
    with pytest.raises(OSError, match="full"):
        for _ in range(4):
            sink.write(memoryview(_random_bytes(DIRECT_ALIGN, 2)))
        sink.close()
    sink.abort()


def test_direct_io_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("MONO_QUANT_DIRECT_IO", "0")
    assert not wants_direct_io(tmp_path / "x")
    monkeypatch.setenv("MONO_QUANT_DIRECT_IO", "1")
    assert wants_direct_io(tmp_path / "x") == hasattr(os, "O_DIRECT")
    monkeypatch.delenv("MONO_QUANT_DIRECT_IO")
    if os.path.isdir("/dev/shm") and sink_module._filesystem_type("/dev/shm") == "tmpfs":
        assert not wants_direct_io("/dev/shm/x")  # no disk to skip: plain writes
    with open(tmp_path / "f.bin", "w+b") as f:  # unaligned start: plain writes through f
        sink = open_sink(f, tmp_path / "f.bin", 100)
        assert not sink.direct and not sink.staged
    monkeypatch.setenv("MONO_QUANT_DIRECT_IO", "0")
    with open(tmp_path / "f.bin", "w+b") as f:
        sink = open_sink(f, tmp_path / "f.bin", 4096)
        assert sink.staged and not sink.direct
        sink.abort()


# ---- writer: parts and regions ---------------------------------------------------------------------


@pytest.mark.parametrize("direct", ["0", "1", "no path"])
def test_writer_parts_and_regions(tmp_path, monkeypatch, direct):
    """Staged sinks (direct or not; the caller fills regions, parts are copied) and a plain
    file (parts written from recycled buffers)."""
    monkeypatch.setenv("MONO_QUANT_DIRECT_IO", "1" if direct == "1" else "0")
    monkeypatch.setattr(sink_module, "_STAGE_BYTES", 2 * DIRECT_ALIGN)
    big = torch.randint(-128, 128, (50000,), generator=_gen(1), dtype=torch.int8)
    small = torch.randn(7, 3)
    path = tmp_path / "w.safetensors"
    with open(path, "w+b") as f, StreamingWriter(f, 100, part_bytes=3000,
                                                 path=None if direct == "no path" else path) as writer:
        assert direct == "1" or not writer.direct_io  # with "1", direct where the file system allows
        writer.add("small", small)
        writer.begin("big", torch.int8, big.shape)
        with pytest.raises(RuntimeError, match="being streamed"):
            writer.add("other", small)
        done = 0
        while done < big.numel():
            region = writer.region()
            if region is not None and region.numel() and done % 3 == 0:
                n = min(region.numel(), big.numel() - done, 5000)
                region[:n] = big[done:done + n]
                del region
                writer.commit(n)
            else:
                buf = writer.part_buffer()
                n = min(buf.numel(), big.numel() - done)
                buf[:n] = big[done:done + n]
                writer.add_part(buf[:n], recycle=True)
            done += n
        with pytest.raises(ValueError, match="more than"):
            writer.add_part(big[:1])
        writer.end()
        writer.finish({"k": "v"})
    with safe_open(os.fspath(path), "pt") as f:
        assert torch.equal(f.get_tensor("big"), big) and torch.equal(f.get_tensor("small"), small)
        assert f.metadata() == {"k": "v"}


def test_writer_misuse(tmp_path):
    with open(tmp_path / "w.bin", "w+b") as f, StreamingWriter(f) as writer:
        with pytest.raises(RuntimeError, match="outside"):
            writer.add_part(torch.ones(1))
        with pytest.raises(RuntimeError, match="without begin"):
            writer.end()
        writer.begin("a", torch.int8, (3,))
        with pytest.raises(RuntimeError, match="being streamed"):
            writer.finish()
        writer.add_part(torch.ones(2, dtype=torch.int8))
        with pytest.raises(ValueError, match="cover 2 of its 3 bytes"):
            writer.end()


# ---- reading rows from a file ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cols", [(1, 1), (17, 5), (40, 129), (3, 4100)])
def test_quantize_pack_from_file_equals_from_memory(tmp_path, isa, dtype, rows, cols):
    w = (torch.randn(rows, cols, generator=_gen(rows + cols)) * 0.1).to(dtype)
    if rows > 2:
        w[1] = 0
    offset = 13  # any byte offset
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * offset + w.view(torch.uint8).numpy().tobytes() + b"tail")
    fd = os.open(path, os.O_RDONLY)
    try:
        for symmetric in (True, False):
            qmin = -127 if symmetric else -128
            got = kernels.quantize_pack_int8_file(fd, offset, (rows, cols), dtype, qmin, 127, symmetric, True)
            want = kernels.quantize_pack_int8(w, qmin, 127, symmetric, True)
            for a, b in zip(got, want):
                assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    finally:
        os.close(fd)


def test_quantize_pack_from_file_errors(tmp_path):
    path = tmp_path / "w.bin"
    w = torch.randn(20, 8)
    w[13, 2] = float("nan")
    path.write_bytes(w.numpy().tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        assert kernels.quantize_pack_int8_file(fd, 0, (20, 8), torch.float32, -127, 127, True)[5] == 13
        with pytest.raises(ValueError, match="too short"):
            kernels.quantize_pack_int8_file(fd, 4, (20, 8), torch.float32, -127, 127, True)
        with pytest.raises(ValueError, match="dtype must be"):
            _C.quantize_pack_int8_file(fd, 0, 20, 8, "float64", -127, 127, True)
        with pytest.raises(ValueError, match="offset >= 0"):
            _C.quantize_pack_int8_file(fd, -1, 20, 8, "float32", -127, 127, True)
        with pytest.raises(ValueError, match="rows, cols"):
            _C.quantize_pack_int8_file(fd, 0, 0, 8, "float32", -127, 127, True)
        with pytest.raises(ValueError, match="signed int8 range"):
            _C.quantize_pack_int8_file(fd, 0, 20, 8, "float32", 0, 255, True)
        with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
            kernels.quantize_pack_int8_file(fd, 0, (20, 8), torch.float64, -127, 127, True)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        _C.quantize_pack_int8_file(fd, 0, 20, 8, "float32", -127, 127, True)  # closed descriptor
    wfd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(OSError):
            _C.quantize_pack_int8_file(wfd, 0, 20, 8, "float32", -127, 127, True)  # not readable
    finally:
        os.close(wfd)


# ---- whole checkpoints through every path ---------------------------------------------------------


def _state_dict():
    g = _gen(3)
    return {
        "embed.weight": torch.randn(300, 64, generator=g),
        "layers.0.q.weight": torch.randn(200, 96, generator=g) * 0.05,
        "layers.0.q.bias": torch.randn(200, generator=g),
        "layers.0.up.weight": (torch.randn(333, 70, generator=g) * 0.02).bfloat16(),
        "layers.0.down.weight": (torch.randn(70, 333, generator=g) * 0.02).half(),
        "layers.0.norm.weight": torch.ones(64),
        "head.weight": torch.randn(40, 64, generator=g),
    }


def _assert_same(path, sd, **options):
    expected = mq.quantize(sd, **options)
    qsd = mq.load(path)
    exp_sd = expected.state_dict()
    assert set(qsd) == set(exp_sd)
    for key, tensor in exp_sd.items():
        assert qsd[key].dtype == tensor.dtype and torch.equal(qsd[key], tensor), key
    return expected


@pytest.mark.parametrize("direct", ["0", "1"])
@pytest.mark.parametrize("stage,part", [(3 * 4096, 5000), (1 << 20, 1 << 20), (4096, 100)])
def test_streamed_checkpoint_matches_quantize(tmp_path, monkeypatch, direct, stage, part):
    """Small staging buffers and parts force every path: in place, panels straddling a
    staging buffer's end, part buffers, panels larger than a part, plain writes."""
    monkeypatch.setenv("MONO_QUANT_DIRECT_IO", direct)
    monkeypatch.setattr(sink_module, "_STAGE_BYTES", stage)
    monkeypatch.setattr(checkpoint_module, "_PART_BYTES", part)
    sd = _state_dict()
    src = tmp_path / "ckpt"
    src.mkdir()
    keys = list(sd)
    weight_map = {}
    for i, part_keys in enumerate((keys[:3], keys[3:])):
        save_file({k: sd[k] for k in part_keys}, os.fspath(src / f"m-{i}.safetensors"))
        weight_map.update({k: f"m-{i}.safetensors" for k in part_keys})
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for symmetric in (True, False):
        dst = tmp_path / f"q{symmetric}.safetensors"
        report = mq.quantize_checkpoint(src, dst, "int8", symmetric=symmetric, measure_error=True).report
        expected = _assert_same(dst, sd, dtype="int8", symmetric=symmetric)
        got_sqnr = {layer.name: layer.weight_sqnr_db for layer in report.layers}
        for layer in expected.report.layers:
            assert abs(got_sqnr[layer.name] - layer.weight_sqnr_db) < 1e-6, layer.name
        assert report.model_bytes_after == expected.report.model_bytes_after


@pytest.mark.parametrize("from_file", [True, False])
def test_streamed_pt_checkpoint(tmp_path, monkeypatch, from_file):
    """A .pt's tensors are read from the file at the offsets torch.load mapped them from;
    without that (from_file=False), through the map, its pages dropped part by part."""
    monkeypatch.setattr(checkpoint_module, "_PART_BYTES", 4096)
    sd = _state_dict()
    torch.save(sd, tmp_path / "m.pt")
    located, released = [], []
    real_location, real_release = shards_module.TorchShard.location, shards_module.TorchShard.release

    def location(self, key):
        found = real_location(self, key) if from_file else None
        located.append(found is not None)
        return found

    monkeypatch.setattr(shards_module.TorchShard, "location", location)
    monkeypatch.setattr(shards_module.TorchShard, "release",
                        lambda self, key, t: (released.append(key), real_release(self, key, t))[1])
    mq.quantize_checkpoint(tmp_path / "m.pt", tmp_path / "q.safetensors")
    _assert_same(tmp_path / "q.safetensors", sd)
    assert located and all(located) == from_file
    assert (released.count("layers.0.q.weight") > 1) == (not from_file)  # page drops part by part


def test_streamed_weight_with_nan_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "_PART_BYTES", 4096)
    sd = _state_dict()
    sd["layers.0.q.weight"][150, 3] = float("inf")  # in a later part, after earlier parts were written
    save_file(sd, os.fspath(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match=r"layers.0.q.weight.*channel 150"):
        mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    report = mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors", nonfinite="skip").report
    assert [s.name for s in report.skipped] == ["layers.0.q"]


# ---- review fixes: empty weights, byte order, descriptors, pool, sizes ---------------------------------


def test_empty_weights_quantize_and_stream(tmp_path):
    sd = {"a.weight": torch.empty(5, 0), "b.weight": torch.empty(0, 7), "c.weight": torch.randn(20, 8)}
    packed, w_sum, *_ = kernels.quantize_pack_int8(sd["a.weight"], -127, 127, True)
    assert packed.numel() == 0 and w_sum.tolist() == [0] * 16
    save_file(sd, os.fspath(tmp_path / "m.safetensors"))
    mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors")
    _assert_same(tmp_path / "q.safetensors", sd)


def test_pt_of_the_other_byte_order_is_read_through_torch(tmp_path, monkeypatch):
    """torch.load swaps such a file's tensors in its private map: no pread at file offsets,
    no dropping of the swapped pages."""
    sd = _state_dict()
    torch.save(sd, tmp_path / "m.pt")
    assert shards_module.archive_byteorder(tmp_path / "m.pt") == "little"
    other = "big" if os.sys.byteorder == "little" else "little"
    monkeypatch.setattr(shards_module, "archive_byteorder", lambda path: other)
    drops = []
    monkeypatch.setattr(shards_module, "drop_pages", lambda t, m: drops.append(t))
    shard = shards_module.TorchShard(tmp_path / "m.pt")
    assert shard.location("layers.0.q.weight") is None
    shard.release("layers.0.q.weight", shard.get("layers.0.q.weight"))
    assert drops == []
    mq.quantize_checkpoint(tmp_path / "m.pt", tmp_path / "q.safetensors")
    _assert_same(tmp_path / "q.safetensors", sd)


def test_staged_sink_fallback_keeps_the_descriptor_on_a_failed_reopen(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"")
    sink = StagedSink(path, 0, True)
    fd = sink._fd
    monkeypatch.setattr(os, "pwrite", lambda *a: (_ for _ in ()).throw(OSError(errno.EINVAL, "no direct")))
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EMFILE, "too many")))
    with pytest.raises(OSError, match="too many"):
        sink.write(memoryview(_random_bytes(100, 3)))
        sink.close()
    monkeypatch.setattr(os, "open", real_open)
    assert sink._fd == -1  # closed once, by abort(), not twice
    with pytest.raises(OSError):
        os.fstat(fd)


def test_staged_sink_failed_start_leaks_nothing(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"")
    opened = []
    real_open = os.open

    def tracking_open(*a, **k):
        fd = real_open(*a, **k)
        opened.append(fd)
        return fd

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(sink_module.mmap, "mmap", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOMEM, "no mem")))
    with pytest.raises(OSError, match="no mem"):
        StagedSink(path, 0, False)
    monkeypatch.setattr(os, "open", real_open)
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed


def test_part_buffers_never_block(tmp_path):
    with open(tmp_path / "w.bin", "w+b") as f, StreamingWriter(f, part_bytes=64) as writer:
        first = writer.part_buffer()
        second = writer.part_buffer()  # the first never came back: a new one instead of waiting forever
        assert first is not second
        writer.begin("t", torch.int8, (10,))
        with pytest.raises(ValueError, match="more than"):
            writer.add_part(second[:11], recycle=True)
        assert writer.part_buffer() is second  # handed back on the error path


def test_file_kernel_size_overflow_is_a_value_error(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="past any file size|too short"):
            _C.quantize_pack_int8_file(fd, 2 ** 62, 2 ** 31 - 1, 2 ** 31 - 1, "float32", -127, 127, True)
        with pytest.raises(ValueError, match="past any file size|too short"):
            _C.quantize_pack_int8_file(fd, 0, 2 ** 31 - 1, 2 ** 31 - 1, "float32", -127, 127, True)
    finally:
        os.close(fd)


def test_truncated_shard_while_streaming_is_a_checkpoint_error(tmp_path, monkeypatch):
    sd = _state_dict()
    save_file(sd, os.fspath(tmp_path / "m.safetensors"))
    monkeypatch.setattr(kernels, "quantize_pack_int8_file",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("the file ended before the weight's last row")))
    with pytest.raises(mq.io.CheckpointError, match="m.safetensors: cannot read tensor 'embed.weight'"):
        mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()


@pytest.mark.parametrize("options", [dict(group_size=128), dict(group_size=None), dict(group_size=32, symmetric=True),
                                     dict(group_size=64, method="rtn")])
def test_streamed_int4_checkpoint_matches_quantize(tmp_path, monkeypatch, options):
    monkeypatch.setattr(checkpoint_module, "_PART_BYTES", 700)  # several row ranges per weight
    sd = _state_dict()
    save_file(sd, os.fspath(tmp_path / "m.safetensors"))
    config = None
    if "method" in options:  # the method comes from a config file
        config = tmp_path / "mono_quant.toml"
        config.write_text(f'method = "{options.pop("method")}"\n')
    streamed = []
    real = checkpoint_module.stream_int4
    monkeypatch.setattr(checkpoint_module, "stream_int4", lambda *a: (streamed.append(a[0]), real(*a))[1])
    report = mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors", "int4", config=config,
                                    **options).report
    expected = _assert_same(tmp_path / "q.safetensors", sd, dtype="int4", config=config, **options)
    assert "layers.0.q.weight" in streamed
    got = {layer.name: layer.weight_sqnr_db for layer in report.layers}
    for layer in expected.report.layers:
        assert abs(got[layer.name] - layer.weight_sqnr_db) < 1e-6, layer.name
    qsd = mq.load(tmp_path / "q.safetensors")
    assert [entry for entry in qsd.layers if entry["name"] == "layers.0.up"][0]["group_size"] == options["group_size"]


def test_streamed_int4_nan_names_the_channel(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "_PART_BYTES", 700)
    sd = _state_dict()
    sd["layers.0.up.weight"][300, 1] = float("nan")
    save_file(sd, os.fspath(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match=r"layers.0.up.weight.*channel 300"):
        mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors", "int4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
