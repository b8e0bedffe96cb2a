"""Malformed headers, manifests and index files of any shape are a CheckpointError, never a
RecursionError or a traceback (issue 14, finding 4)."""
import json
import struct

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError
from mono_quant.io import container
from mono_quant.io.container import read_header
from mono_quant.io.manifest import METADATA_KEY


def _raw_file(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _saved(tmp_path):
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    return mq.save(qmodel, tmp_path / "m.safetensors")


BOMBS = {
    "nested-lists": b"[" * 100_000 + b"]" * 100_000,
    "nested-objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "unclosed": b"[" * 100_000,
    "in-an-entry": b'{"w": {"dtype": "F32", "shape": ' + b"[" * 50_000 + b"]" * 50_000 + b', "data_offsets": [0, 0]}}',
    "brackets-in-strings-are-fine-but-depth-is-not": b'{"a": "[[[[[[", "b": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS.keys())
def test_json_bomb_in_the_header(tmp_path, bomb):
    path = _raw_file(tmp_path / "bomb.safetensors", bomb)
    with pytest.raises(CheckpointError, match="nest|JSON"):
        read_header(path)
    with pytest.raises(CheckpointError):
        mq.load(path)


def test_depth_limit_leaves_real_headers_alone(tmp_path):
    # strings holding brackets don't count; a header just under the limit parses
    header = {"__metadata__": {"note": "[[[[{{{{" * 100},
              "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    path = _raw_file(tmp_path / "ok.safetensors", json.dumps(header).encode(), b"\0" * 4)
    assert list(read_header(path).tensors) == ["x"]
    assert container.MAX_HEADER_DEPTH >= 8  # safetensors headers are 3 levels deep


def test_json_bomb_in_the_manifest(tmp_path):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["__metadata__"][METADATA_KEY] = "[" * 100_000 + "]" * 100_000
    _raw_file(path, json.dumps(header).encode(), raw[8 + n:])
    with pytest.raises(CheckpointError, match="nest|manifest"):
        mq.load(path)


@pytest.mark.parametrize("junk", [b"\xff\xfe\x00", b"", b"   ", b"null", b"\"str\"", b"1e999999", b"[]",
                                  b'{"x": NaN}', b'{"a": 1}',
                                  b'{"__metadata__": {"mono_quant": 5}}'])
def test_malformed_headers(tmp_path, junk):
    path = _raw_file(tmp_path / "bad.safetensors", junk)
    with pytest.raises(CheckpointError):
        mq.load(path)


def test_json_bomb_in_a_checkpoint_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nest|JSON"):
        mq.quantize_checkpoint(tmp_path, tmp_path / "out.safetensors")


@pytest.mark.parametrize("command", ["inspect", "compare", "quantize"])
def test_cli_says_one_line_for_a_json_bomb(tmp_path, command, capsys):
    from mono_quant import cli

    path = _raw_file(tmp_path / "bomb.safetensors", b"[" * 100_000 + b"]" * 100_000)
    args = {"inspect": [str(path)], "compare": [str(path), str(path)],
            "quantize": [str(path), "-o", str(tmp_path / "out.safetensors")]}[command]
    assert cli.main([command, *args]) == 1  # (the console script exits with main's return value)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith(f"mono-quant {command}: error"), err[-2000:]
    assert "nest" in lines[0]


def test_cli_never_prints_a_traceback_for_a_recursion_error(monkeypatch, capsys):
    from mono_quant import cli
    from mono_quant.io import describe as describe_module

    def boom(path):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(describe_module, "describe", boom)
    assert cli.main(["inspect", "x.safetensors"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _with_header(path, out, edit):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = edit(raw[8:8 + n].decode())
    header = header.encode() + b" " * ((8 - len(header.encode()) % 8) % 8)
    out.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n:])
    return out


@pytest.mark.parametrize("where", ["header", "manifest"])
def test_an_integer_of_thousands_of_digits_is_a_checkpoint_error(tmp_path, where):
    """Python's int() refuses more than 4300 digits with a bare ValueError, which reached the caller
    (and the CLI) without the file's name."""
    path = _saved(tmp_path)
    huge = "1" + "0" * 5000
    if where == "header":
        def edit(text):
            header = json.loads(text)
            key = next(k for k in header if k != "__metadata__")
            header[key]["data_offsets"] = [0, "HUGE"]
            return json.dumps(header).replace('"HUGE"', huge)
    else:
        def edit(text):
            header = json.loads(text)
            manifest = json.loads(header["__metadata__"][METADATA_KEY])
            header["__metadata__"][METADATA_KEY] = json.dumps(manifest).replace('"format_version": 1',
                                                                                f'"format_version": {huge}')
            return json.dumps(header)
    bad = _with_header(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*an integer of 5001 digits"):
        mq.load(bad)
