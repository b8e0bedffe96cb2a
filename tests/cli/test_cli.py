"""The mono-quant command: quantize / inspect / compare output and exit status (demo is covered elsewhere)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.cli import main


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16), nn.LayerNorm(16))
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), os.fspath(path))
    return path


def test_quantize_inspect_compare(tmp_path, checkpoint, capsys):
    dst = tmp_path / "q.safetensors"
    assert main(["quantize", str(checkpoint), "-o", str(dst), "--exclude", "2"]) == 0
    out, err = capsys.readouterr()
    assert f"{dst}: 1 layers quantized, 1 skipped" in out and err == ""  # stderr is not a TTY: no progress bar
    qsd = mq.load(dst)
    assert [layer["name"] for layer in qsd.layers] == ["0"] and qsd["0.weight_packed"].dtype == torch.int8

    assert main(["inspect", str(dst)]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["name", "kind", "dtype", "shape", "bytes"]
    # a plain checkpoint cannot tell a Linear's 2-D weight from an Embedding's
    assert any(line.split()[:4] == ["0", "Linear", "or", "Embedding"] and "int8" in line and "64x32" in line
               for line in lines)
    assert any(line.split()[:4] == ["2.weight", "tensor", "float32", "16x64"] for line in lines)
    assert "format v1, state_dict; 1 quantized layers" in lines[-1]

    assert main(["inspect", str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["totals"]["quantized_layers"] == 1
    # packed int8 (64 rows x 32) + column sums + packing info + scale + zero-point
    assert info["layers"][0]["bytes"] == 64 * 32 + 64 * 4 + 5 * 4 + 64 * 4 + 64 * 4
    assert info["totals"]["file_bytes"] == dst.stat().st_size

    assert main(["compare", str(checkpoint), str(dst)]) == 0
    out, _ = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("0.weight"))
    assert "int8" in row and float(row.split()[-1]) > 30  # SQNR in dB
    assert "6 tensors compared" in out.splitlines()[-1]
    assert main(["compare", str(checkpoint), str(dst), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in result["rows"]}
    assert by_name["2.weight"]["sqnr_db"] == "inf" or by_name["2.weight"]["sqnr_db"] == float("inf")
    # a quarter of fp32, plus per channel a scale, zero-point and column sum (+20 bytes of packing info)
    assert by_name["0.weight"]["bytes_b"] == by_name["0.weight"]["bytes_a"] / 4 + 64 * 12 + 20


def test_quantize_options_and_failures(tmp_path, checkpoint, capsys):
    dst = tmp_path / "q.safetensors"
    assert main(["quantize", str(checkpoint), "-o", str(dst), "--dtype", "bf16", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert mq.load(dst)["0.weight"].dtype == torch.bfloat16

    assert main(["quantize", str(checkpoint), "-o", str(dst)]) == 1  # exists
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert main(["quantize", str(checkpoint), "-o", str(dst), "--force"]) == 0
    assert mq.load(dst)["0.weight_packed"].dtype == torch.int8
    capsys.readouterr()

    config = tmp_path / "mq.toml"
    config.write_text('dtype = "fp16"\nexclude = ["0"]\n')
    assert main(["quantize", str(checkpoint), "-o", str(tmp_path / "c.safetensors"), "--config", str(config)]) == 0
    qsd = mq.load(tmp_path / "c.safetensors")
    assert [layer["name"] for layer in qsd.layers] == ["2"] and qsd["2.weight"].dtype == torch.float16
    capsys.readouterr()

    for argv, message in [
        (["quantize", str(checkpoint), "-o", str(tmp_path / "x.safetensors"), "--dtype", "int3"], "unknown dtype"),
        (["quantize", str(tmp_path / "missing"), "-o", str(tmp_path / "x.safetensors")], "does not exist"),
        (["inspect", str(checkpoint.parent / "missing.safetensors")], "missing.safetensors does not exist"),
        (["bench", str(checkpoint.parent / "missing.safetensors")], "missing.safetensors does not exist"),
        (["compare", str(checkpoint), str(tmp_path / "missing.safetensors")], "does not exist"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"mono-quant {argv[0]}: error:") and message in err and err.count("\n") == 1
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    assert main(["inspect", str(tmp_path / "bad.safetensors")]) == 1
    assert "truncated" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_errors_name_the_command_line_options(tmp_path, checkpoint, capsys):
    """The library's messages name its Python arguments (group_size=None, include=...); the
    command's say what to type (0 for one group, --include, --force)."""
    dst = tmp_path / "q.safetensors"
    for argv, says, never in [
        (["--dtype", "int4", "--group-size", "48"], "or 0 for one group", "None"),
        (["--include", "nothing*"], "--include 'nothing*'", "include="),
        (["--exclude", "nothing*"], "--exclude 'nothing*'", "exclude="),
    ]:
        assert main(["quantize", str(checkpoint), "-o", str(dst)] + argv) == 1
        err = capsys.readouterr().err
        assert says in err and never not in err and "quantize(): " not in err, err
    dst.write_bytes(b"")
    assert main(["quantize", str(checkpoint), "-o", str(dst)]) == 1
    err = capsys.readouterr().err
    assert "pass --force to replace it" in err and "overwrite=True" not in err


def test_inspect_saved_model_with_aliases(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    model.append(model[0])  # the same Linear twice
    qmodel, _ = mq.quantize(model)
    mq.save(qmodel, tmp_path / "m.safetensors")
    assert main(["inspect", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "format v1, model; 1 quantized layers" in out and "aliased" in out


def test_python_dash_m(tmp_path, checkpoint):
    dst = tmp_path / "q.safetensors"
    run = subprocess.run([sys.executable, "-m", "mono_quant", "quantize", str(checkpoint), "-o", str(dst)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "layers quantized" in run.stdout and run.stderr == ""
    run = subprocess.run([sys.executable, "-m", "mono_quant", "inspect", str(tmp_path / "nope.safetensors")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.startswith("mono-quant inspect: error:")
    assert run.stderr.count("\n") == 1


def test_compare_saved_model_against_float(tmp_path, checkpoint, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16), nn.LayerNorm(16))
    qmodel, _ = mq.quantize(model, dtype="bf16")
    mq.save(qmodel, tmp_path / "m.safetensors")
    assert main(["compare", str(checkpoint), str(tmp_path / "m.safetensors"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["0.weight"]["dtype_b"] == "bf16" and rows["0.weight"]["bytes_b"] == 64 * 32 * 2
    assert 40 < rows["0.weight"]["sqnr_db"] < 80 and rows["0.bias"]["sqnr_db"] == float("inf")
    assert result["totals"]["only_in_a"] == 0 and result["totals"]["only_in_b"] == 0


def test_progress_bar_only_on_a_tty(tmp_path, checkpoint, monkeypatch, capsys):
    import io

    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    fake = FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    assert main(["quantize", str(checkpoint), "-o", str(tmp_path / "a.safetensors")]) == 0
    assert "100.0%" in fake.getvalue() and "GB/s" in fake.getvalue()
    fake = FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    assert main(["quantize", str(checkpoint), "-o", str(tmp_path / "b.safetensors"), "--quiet"]) == 0
    assert fake.getvalue() == ""


def test_inspect_plain_safetensors(checkpoint, capsys):
    assert main(["inspect", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "plain safetensors (no manifest)" in out and "0 quantized layers" in out
    assert any(line.split()[:4] == ["0.weight", "tensor", "float32", "64x32"] for line in out.splitlines())


def test_compare_sqnr_in_chunks(monkeypatch):
    """compare's SQNR is summed chunk by chunk in float64: the same figure as one float64 pass,
    NaN/Inf anywhere handled like the whole-tensor rule (inf when equal, else None)."""
    import math

    from mono_quant.io import compare as compare_module
    from mono_quant.tensor import sqnr_db

    monkeypatch.setattr(compare_module, "_CHUNK", 1000)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, 101, generator=g)
    b = a + 0.01 * torch.randn(37, 101, generator=g)
    a64, b64 = a.double(), b.double()
    whole = sqnr_db(float(a64.pow(2).sum()), float((a64 - b64).pow(2).sum()))
    assert abs(compare_module._sqnr(a, b) - whole) < 1e-9
    assert compare_module._sqnr(a, a.clone()) == math.inf
    a_bad = a.clone()
    a_bad[30, 7] = float("inf")  # in a later chunk
    assert compare_module._sqnr(a_bad, b) is None and compare_module._sqnr(a_bad, a_bad.clone()) == math.inf
    b_nan = b.clone()
    b_nan[36, 100] = float("nan")
    assert compare_module._sqnr(a, b_nan) is None
    ints = torch.arange(6)
    assert compare_module._sqnr(ints, ints.clone()) == math.inf and compare_module._sqnr(ints, ints + 1) is None


def test_quantize_int4_method_flag(tmp_path, checkpoint, capsys):
    """--method picks the int4 rounding, as quantize(method=...) does."""
    from safetensors.torch import load_file

    weights = load_file(os.fspath(checkpoint))
    for method in ("rtn", "mse"):
        dst = tmp_path / f"q_{method}.safetensors"
        assert main(["quantize", str(checkpoint), "-o", str(dst), "--dtype", "int4", "--group-size", "32",
                     "--method", method, "--quiet"]) == 0
        expected = mq.quantize(weights, dtype="int4", group_size=32, method=method).state_dict()
        got = mq.load(dst)
        assert all(torch.equal(got[k], v) for k, v in expected.items())
    rtn, mse = mq.load(tmp_path / "q_rtn.safetensors"), mq.load(tmp_path / "q_mse.safetensors")
    assert not torch.equal(rtn["0.weight_scale"], mse["0.weight_scale"])  # the search moved some ranges
    with pytest.raises(SystemExit):
        main(["quantize", str(checkpoint), "-o", str(tmp_path / "x.safetensors"), "--method", "best"])


def test_quantize_weight_only_and_per_channel_int4(tmp_path, checkpoint):
    """--weight-only reaches the loaded model; --group-size 0 is per-channel int4, as in a config file."""
    dst = tmp_path / "w.safetensors"
    assert main(["quantize", str(checkpoint), "-o", str(dst), "--weight-only", "--quiet"]) == 0
    assert mq.load(dst).config["activations"] is None
    dst4 = tmp_path / "g.safetensors"
    assert main(["quantize", str(checkpoint), "-o", str(dst4), "--dtype", "int4", "--group-size", "0",
                 "--method", "rtn", "--quiet"]) == 0
    assert {layer["group_size"] for layer in mq.load(dst4).layers} == {None}


def test_include_and_exclude_take_one_pattern_each_and_repeat(tmp_path, checkpoint, capsys):
    """--include / --exclude before SRC (as the usage line shows them) took SRC as a second pattern
    ("the following arguments are required: SRC"); each takes one pattern and repeats."""
    dst = tmp_path / "q.safetensors"
    assert main(["quantize", "--include", "0", str(checkpoint), "-o", str(dst), "--quiet"]) == 0
    assert [layer["name"] for layer in mq.load(dst).layers] == ["0"]
    assert main(["quantize", "--include", "0", "--include=2", str(checkpoint), "-o", str(dst), "--force",
                 "--quiet"]) == 0
    assert [layer["name"] for layer in mq.load(dst).layers] == ["0", "2"]
    assert main(["quantize", "--exclude", "0", str(checkpoint), "--exclude", "9*", "-o", str(dst), "--force",
                 "--quiet"]) == 1  # (both reach the library: '9*' matches no layer)
    assert "--exclude '9*' matches no layer" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--exclude", "0", "2", "SRC", "-o", "DST"],
    ["SRC", "-o", "DST", "--exclude", "0", "2"],
    ["--exclude=0", "2", "SRC", "-o", "DST"],
], ids=["before SRC", "after SRC", "with ="])
def test_several_patterns_after_one_flag_say_to_repeat_it(tmp_path, checkpoint, capsys, argv):
    argv = [str(checkpoint) if a == "SRC" else str(tmp_path / "q.safetensors") if a == "DST" else a for a in argv]
    with pytest.raises(SystemExit) as info:
        main(["quantize", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--exclude takes one pattern: repeat it for more, --exclude 0 --exclude 2" in err, err
    assert not (tmp_path / "q.safetensors").exists()


def test_control_characters_in_names_are_printed_escaped(tmp_path, capsys):
    """A file's names are untrusted: an escape sequence in one retitled or cleared the terminal, or
    forged rows of the table."""
    from safetensors.torch import save_file

    path = tmp_path / "names.safetensors"
    save_file({"fc1\x1b]0;pwned\x07\x1b[2J\nFAKE LINE": torch.zeros(2)}, str(path))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;pwned\\x07\\x1b[2J\\nFAKE LINE" in out


def test_inspect_a_static_file(tmp_path, capsys):
    """It read one as a plain safetensors file: "no manifest, 0 quantized layers"."""
    import json
    import warnings

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return self.fc(y + 0 if y.sum() > -1e9 else y)

    torch.manual_seed(0)
    graph = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in (("graph", graph), ("per-layer", Untraceable().eval())):
            result = mq.quantize(model, "int8", activations="static", calibration=torch.randn(16, 3, 8, 8))
            path = mq.save(result, tmp_path / f"{name}.safetensors")
            assert main(["inspect", str(path)]) == 0
            out = capsys.readouterr().out
            assert f"static {name} int8 model (activations='static')" in out and "StaticConv2d" in out
            assert main(["inspect", str(path), "--json"]) == 0
            info = json.loads(capsys.readouterr().out)
            assert info["kind"] == f"static {name}" and {"StaticConv2d", "StaticLinear"} <= {
                layer["class"] for layer in info["layers"]}


def test_warnings_print_as_one_line_of_the_command(tmp_path, capsys):
    """Python's printer gave the library's file and line, then that line's source."""
    from safetensors.torch import save_file

    path = tmp_path / "ints.safetensors"
    save_file({"ids": torch.arange(6)}, str(path))  # (nothing to quantize)
    out = subprocess.run([sys.executable, "-m", "mono_quant", "quantize", str(path), "-o",
                          str(tmp_path / "q.safetensors")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mono-quant quantize: warning: NothingQuantizedWarning: ")
    from mono_quant.strictness import NothingQuantizedWarning

    with pytest.warns(NothingQuantizedWarning):  # (a caller recording warnings still gets them)
        main(["quantize", str(path), "-o", str(tmp_path / "q2.safetensors")])


def test_compare_says_which_file_a_damaged_tensor_is_in(tmp_path, capsys):
    """A tensor's checks at its first read name the layer and the field; with two files, compare names
    the file too (mq.load did, compare did not)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(32, 64)), dtype="int8")
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    mq.save(qmodel, good)
    with safe_open(str(good), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.endswith("weight_scale"))
    tensors[key] = tensors[key].clone()
    tensors[key][0] = float("nan")
    save_file(tensors, str(bad), metadata=meta)
    for args in ([str(good), str(bad)], [str(bad), str(good)]):
        assert main(["compare", *args]) == 1
        err = capsys.readouterr().err
        assert f"mono-quant compare: error: {bad}: layer '0': weight_scale[0] = nan" in err, err
