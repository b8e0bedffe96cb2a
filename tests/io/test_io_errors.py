"""Malformed files, newer / older format versions, atomic writes: clear CheckpointErrors, never a crash."""
import json
import os
import pickle
import struct

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError
from mono_quant.io.manifest import METADATA_KEY
from safetensors.torch import save_file
from safetensors_bytes import split_file, write_file


def _saved(tmp_path, name="m.safetensors"):
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    return mq.save(qmodel, tmp_path / name), qmodel


_split, _write = split_file, write_file


def _edit_header(path, edit):
    header, data = _split(path)
    edit(header)
    _write(path, header, data)


def _edit_manifest(path, edit):
    def apply(header):
        manifest = json.loads(header["__metadata__"][METADATA_KEY])
        edit(manifest)
        header["__metadata__"][METADATA_KEY] = json.dumps(manifest)

    _edit_header(path, apply)


def _corrupt_bytes(path, raw_edit):
    path.write_bytes(raw_edit(path.read_bytes()))


def _offsets(header, key):
    return header[key]["data_offsets"]


CORRUPTIONS = {
    "empty": (lambda p: p.write_bytes(b""), "truncated"),
    "only-length": (lambda p: _corrupt_bytes(p, lambda b: b[:8]), "truncated"),
    "truncated-header": (lambda p: _corrupt_bytes(p, lambda b: b[:40]), "truncated"),
    "truncated-data": (lambda p: _corrupt_bytes(p, lambda b: b[:-7]), "truncated"),
    "trailing-garbage": (lambda p: _corrupt_bytes(p, lambda b: b + b"xx"), "trailing garbage"),
    "huge-header-length": (lambda p: _corrupt_bytes(p, lambda b: struct.pack("<Q", 1 << 62) + b[8:]),
                           "corrupted header"),
    "header-not-json": (lambda p: _corrupt_bytes(p, lambda b: b[:8] + b"X" + b[9:]), "not valid JSON"),
    "header-not-object": (lambda p: _write(p, [1, 2], b""), "not an object"),
    "metadata-not-strings": (lambda p: _edit_header(p, lambda h: h.update({"__metadata__": {"a": 1}})), "__metadata__"),
    "offsets-past-end": (lambda p: _edit_header(p, lambda h: _offsets(h, "2.bias").__setitem__(1, 10 ** 9)),
                         "past the end"),
    "negative-offsets": (lambda p: _edit_header(p, lambda h: h["2.bias"].update(data_offsets=[-4, 0])),
                         "bad data_offsets"),
    "unknown-dtype": (lambda p: _edit_header(p, lambda h: h["2.bias"].update(dtype="Q7")), "unsupported dtype"),
    "dtype-size-mismatch": (lambda p: _edit_header(p, lambda h: h["2.bias"].update(dtype="F16")), "bytes of data"),
    "bad-shape": (lambda p: _edit_header(p, lambda h: h["2.bias"].update(shape=[-4])), "bad shape"),
    "overlap": (lambda p: _edit_header(p, lambda h: h["2.bias"].update(
        data_offsets=[_offsets(h, "2.bias")[0] - 4, _offsets(h, "2.bias")[1] - 4])), "overlaps|hole"),
    "manifest-not-json": (lambda p: _edit_header(p, lambda h: h["__metadata__"].update({METADATA_KEY: "{oops"})),
                          "corrupted manifest"),
    "manifest-wrong-format": (lambda p: _edit_manifest(p, lambda m: m.update(format="other")), "bad manifest"),
    "manifest-bad-kind": (lambda p: _edit_manifest(p, lambda m: m.update(kind="zip")), "kind must be"),
    "manifest-bad-layer": (lambda p: _edit_manifest(p, lambda m: m["layers"][0].pop("tensors")), "tensors must be"),
    "manifest-bad-version": (lambda p: _edit_manifest(p, lambda m: m.update(format_version="1")), "format_version"),
    "manifest-dtype-disagrees": (lambda p: _edit_manifest(
        p, lambda m: m["layers"][0]["tensors"]["weight_packed"].update(dtype="uint8")), "disagrees"),
    "manifest-missing-tensor": (lambda p: _edit_manifest(
        p, lambda m: m["layers"][0]["tensors"].update(weight_extra={"dtype": "int8", "shape": [4]})), "missing"),
    "alias-to-nothing": (lambda p: _edit_manifest(p, lambda m: m["tensor_aliases"].update({"x": "nope"})),
                         "missing tensor"),
    "duplicate-layer": (lambda p: _edit_manifest(p, lambda m: m["layers"].append(m["layers"][0])), "listed twice"),
}


@pytest.mark.parametrize("corrupt,message", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_malformed_files_raise_checkpoint_error(tmp_path, corrupt, message):
    path, _ = _saved(tmp_path)
    corrupt(path)
    with pytest.raises(CheckpointError, match=message):
        mq.load(path)
    with pytest.raises(CheckpointError):
        mq.load(path, model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    from mono_quant.io.describe import describe

    with pytest.raises(CheckpointError):
        describe(path)
    assert issubclass(CheckpointError, ValueError)


def test_newer_format_version_is_refused(tmp_path):
    path, _ = _saved(tmp_path)
    _edit_manifest(path, lambda m: m.update(format_version=99, mono_quant_version="9.0"))
    with pytest.raises(CheckpointError, match="format version 99.*upgrade mono-quant"):
        mq.load(path)


def test_older_formats_load(tmp_path):
    # version 0: a plain safetensors file (no manifest) is a float state_dict
    from safetensors.torch import save_file

    net = nn.Linear(8, 4)
    save_file(net.state_dict(), os.fspath(tmp_path / "plain.safetensors"))
    qsd = mq.load(tmp_path / "plain.safetensors")
    assert qsd.format_version == 0 and qsd.layers == [] and torch.equal(qsd["weight"], net.weight.detach())
    assert torch.equal(mq.load(tmp_path / "plain.safetensors", model=nn.Linear(8, 4)).weight, net.weight)
    # version 1 without the optional fields later writers add
    path, qmodel = _saved(tmp_path)
    _edit_manifest(path, lambda m: [m.pop(k) for k in ("tensor_aliases", "config", "skipped", "mono_quant_version")])
    loaded = mq.load(path, model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), qmodel(x))


def test_manifest_that_cannot_be_rebuilt(tmp_path):
    path, _ = _saved(tmp_path)
    _edit_manifest(path, lambda m: m["layers"][0].update({"class": "QuantizedLSTM"}))
    with pytest.raises(CheckpointError, match="unknown quantized module class 'QuantizedLSTM'"):
        mq.load(path, model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    path, _ = _saved(tmp_path, "b.safetensors")
    _edit_manifest(path, lambda m: m["layers"][0]["attrs"].update(evil="__import__('os')"))
    with pytest.raises(CheckpointError, match="unknown saved attribute 'evil'"):
        mq.load(path).dequantize()


def test_state_dict_layer_with_inconsistent_tensors(tmp_path):
    sd = {"fc.weight": torch.randn(16, 8), "fc.bias": torch.randn(16)}
    mq.save(mq.quantize(sd), tmp_path / "q.safetensors")
    path = tmp_path / "q.safetensors"
    _edit_manifest(path, lambda m: m["layers"][0].update(axis=1))  # scale has 16 entries, axis 1 has 8 channels
    model = nn.Module()
    model.fc = nn.Linear(8, 16)
    with pytest.raises(CheckpointError, match="'fc'.*axis"):
        mq.load(path, model=model)
    with pytest.raises(CheckpointError, match="'fc'.*axis"):
        mq.load(path).dequantize()


def test_quantized_weight_into_a_module_mono_quant_does_not_replace(tmp_path):
    sd = {"embed.weight": torch.randn(10, 4)}
    mq.quantize_checkpoint(_save_plain(tmp_path, sd), tmp_path / "q.safetensors")

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)

    with pytest.raises(CheckpointError, match="'embed' is quantized in the checkpoint as a Linear but is an Embedding"):
        mq.load(tmp_path / "q.safetensors", model=Emb())


def _save_plain(tmp_path, sd):
    from safetensors.torch import save_file

    save_file(sd, os.fspath(tmp_path / "plain.safetensors"))
    return tmp_path / "plain.safetensors"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        mq.load(tmp_path / "nope.safetensors")


def test_load_never_unpickles(tmp_path, monkeypatch):
    path, qmodel = _saved(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used on a load path")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = mq.load(path, model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    x = torch.randn(2, 8)
    assert torch.equal(loaded(x), qmodel(x))


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def partial_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    path, qmodel = _saved(tmp_path)
    path.unlink()
    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_fail)
    with pytest.raises(OSError, match="disk full"):
        mq.save(qmodel, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []

    def interrupted(tensors, filename, metadata=None):
        open(filename, "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mq.save(qmodel, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_destination_created_during_save_is_not_replaced(tmp_path, monkeypatch):
    import safetensors.torch

    real_save_file = safetensors.torch.save_file
    path, qmodel = _saved(tmp_path)
    path.unlink()

    def someone_else_writes_dst(tensors, filename, metadata=None):
        path.write_bytes(b"theirs")
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", someone_else_writes_dst)
    with pytest.raises(FileExistsError):
        mq.save(qmodel, path)
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_never_overwrites_unless_asked(tmp_path):
    path, qmodel = _saved(tmp_path)
    original = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mq.save({"x": torch.ones(3)}, path)
    assert path.read_bytes() == original
    mq.save({"x": torch.ones(3)}, path, overwrite=True)
    assert set(mq.load(path)) == {"x"}
    with pytest.raises(IsADirectoryError):
        mq.save(qmodel, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mq.save(qmodel, tmp_path / "no" / "such" / "dir.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("name", ["model.bin", "model.pt", "model.PTH", "model.ckpt"])
def test_a_pickle_name_for_the_output_is_refused(tmp_path, name):
    """What mono-quant writes is safetensors: under a .bin / .pt name, torch.load and Hugging Face
    tools (and our own checkpoint reader) would take it for a pickled state_dict."""
    qmodel = mq.quantize(nn.Linear(16, 8)).model
    with pytest.raises(ValueError, match=r"safetensors.*name it model\.safetensors"):
        mq.save(qmodel, tmp_path / name)
    assert not (tmp_path / name).exists()
    src = tmp_path / "float.safetensors"
    save_file({"fc.weight": torch.randn(8, 16)}, str(src))
    with pytest.raises(ValueError, match="safetensors"):
        mq.quantize_checkpoint(src, tmp_path / name)
