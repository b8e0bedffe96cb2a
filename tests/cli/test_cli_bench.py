"""`mono-quant bench`: the shapes, dtypes and settings it times, its JSON, and its errors.
Never asserts a speed (tests don't time things): only that every case ran and the
speed-up is the ratio of the two medians it reports."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.bench import BenchCase, parse_shape, run_bench
from mono_quant.cli import main


def _bench_json(capsys, *argv):
    assert main(["bench", *argv, "--repeats", "2", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check_row(row):
    assert row["fp32_us"] > 0 and row["quantized_us"] > 0
    assert row["speedup"] == pytest.approx(row["fp32_us"] / row["quantized_us"])


def test_shapes_dtypes_and_batches(capsys):
    out = _bench_json(capsys, "--shape", "48x40", "--shape", "16X8", "--batch", "1", "--batch", "3")
    rows = out["rows"]
    assert {(tuple(r["shape"]), r["dtype"], r["batch"]) for r in rows} == {
        (s, d, b) for s in [(48, 40), (16, 8)] for d in ["int8", "int4", "fp16"] for b in [1, 3]}
    for r in rows:
        _check_row(r)
    assert {r["mode"] for r in rows if r["dtype"] == "int8"} == {"dynamic"}
    assert {r["mode"] for r in rows if r["dtype"] == "int4"} == {"group 128 (one: 40 inputs)",
                                                                 "group 128 (one: 8 inputs)"}
    assert out["machine"]["active_isa"] in ("scalar", "avx2", "avx512")


def test_options_reach_the_quantized_layer(capsys):
    rows = _bench_json(capsys, "--shape", "32x64", "--dtype", "INT8", "--dtype", "int4", "--weight-only",
                       "--group-size", "32", "--batch", "2", "--threads", "1")["rows"]
    assert [(r["dtype"], r["mode"]) for r in rows] == [("int8", "weight-only"), ("int4", "group 32")]
    rows = _bench_json(capsys, "--shape", "32x64", "--dtype", "int8", "--reduce-range", "--batch", "1")["rows"]
    assert rows[0]["mode"] == "dynamic, reduce_range"


def test_table_output(capsys):
    assert main(["bench", "--shape", "24x16", "--dtype", "bf16", "--batch", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "24x16" in out and "bf16" in out and "speed-up" in out


def test_shapes_and_settings_from_a_file(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 32), nn.Conv2d(3, 4, 3))
    path = tmp_path / "q.safetensors"
    mq.save(mq.quantize(model, dtype="int4", group_size=32), path)
    out = _bench_json(capsys, os.fspath(path), "--batch", "2")
    assert [(tuple(r["shape"]), r["mode"], r["layers"]) for r in out["rows"]] == [
        ((32, 64), "group 32", ["0"]), ((32, 32), "group 32", ["2", "3"])]
    assert out["notes"] == ["1 Conv2d layer not timed (bench times Linear layers)"]
    for r in out["rows"]:
        _check_row(r)
    # --dtype replaces the file's dtype
    rows = _bench_json(capsys, os.fspath(path), "--dtype", "fp16", "--batch", "1")["rows"]
    assert {r["dtype"] for r in rows} == {"fp16"} and len(rows) == 2


def test_weight_only_int8_file(tmp_path, capsys):
    path = tmp_path / "q.safetensors"
    mq.save(mq.quantize(nn.Linear(16, 8), dtype="int8", activations=None), path)
    rows = _bench_json(capsys, os.fspath(path), "--batch", "1")["rows"]
    assert [(r["dtype"], r["mode"]) for r in rows] == [("int8", "weight-only")]


@pytest.mark.parametrize("argv, message", [
    (["--shape", "10x0"], "at least 1"),
    (["--shape", "ten"], "expected OUTxIN"),
    (["--shape", "100000x100000"], "more than this"),
    (["--dtype", "int9", "--shape", "8x8"], "did you mean 'int8'"),
    (["--shape", "8x8", "--batch", "0"], "batch sizes must be at least 1"),
    (["--shape", "8x8", "--repeats", "0"], "--repeats 0"),
    (["--shape", "8x8", "--threads", "0"], "--threads 0"),
])
def test_bad_arguments_say_what_to_give(argv, message, capsys):
    assert main(["bench", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mono-quant bench: error:") and message in err


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "int8", "--group-size", "64"], "--group-size applies to dtype int4 only, and bench times int8: "
                                                "drop --group-size, or add --dtype int4"),
    (["--dtype", "fp16", "--weight-only"], "--weight-only applies to dtype int8 only"),
    (["--dtype", "int4", "--dtype", "bf16", "--reduce-range"], "--reduce-range applies to dtype int8 only, and "
                                                               "bench times int4, bf16"),
    (["--dtype", "int8", "--weight-only", "--reduce-range"], "drop one of them"),
], ids=["group-size int8", "weight-only fp16", "reduce-range int4 bf16", "weight-only and reduce-range"])
def test_options_for_none_of_the_dtypes_are_refused(argv, message, capsys):
    """They were ignored without a word; quantize refuses --group-size with --dtype int8 alike."""
    assert main(["bench", "--shape", "64x64", "--batch", "1", "--repeats", "1", *argv]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("mono-quant bench: error:") and message in err and err.count("\n") == 1, err


def test_uint8_and_options_that_fit_some_of_the_dtypes(capsys):
    rows = _bench_json(capsys, "--shape", "32x64", "--dtype", "uint8", "--dtype", "int8", "--reduce-range",
                       "--batch", "1")["rows"]  # (uint8 was run with activations="dynamic", which quantize refuses)
    assert [(r["dtype"], r["mode"]) for r in rows] == [("uint8", "weight-only"), ("int8", "dynamic, reduce_range")]


def test_file_after_the_options(tmp_path, capsys):
    path = tmp_path / "q.safetensors"
    mq.save(mq.quantize(nn.Linear(64, 32), dtype="int8"), path)
    rows = _bench_json(capsys, "--batch", "1", "--dtype", "uint8", os.fspath(path))["rows"]
    assert [(r["shape"], r["dtype"], r["mode"]) for r in rows] == [([32, 64], "uint8", "weight-only")]


def test_bad_files_say_what_to_do(tmp_path, capsys):
    path = tmp_path / "q.safetensors"
    mq.save(mq.quantize(nn.Linear(16, 8), dtype="int8"), path)
    assert main(["bench", os.fspath(path), "--shape", "8x8"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["bench", os.fspath(path), "--weight-only"]) == 1
    assert "read from FILE" in capsys.readouterr().err
    float_file = tmp_path / "float.safetensors"
    save_file(nn.Linear(4, 4).state_dict(), os.fspath(float_file))
    assert main(["bench", os.fspath(float_file)]) == 1
    assert "no quantized layers" in capsys.readouterr().err
    conv_only = tmp_path / "conv.safetensors"
    mq.save(mq.quantize(nn.Conv2d(3, 8, 3), dtype="int8"), conv_only)
    assert main(["bench", os.fspath(conv_only)]) == 1
    assert "no quantized Linear layer" in capsys.readouterr().err
    assert main(["bench", os.fspath(tmp_path / "missing.safetensors")]) == 1


def test_parse_shape_and_run_bench_api():
    assert parse_shape(" 4096 x 11008 ") == (4096, 11008)
    rows = run_bench([BenchCase(8, 4, "int8")], batches=[1], repeats=1, warmup=0)
    assert len(rows) == 1 and rows[0]["shape"] == [8, 4]
    with pytest.raises(ValueError, match="repeats"):
        run_bench([BenchCase(8, 4, "int8")], repeats=0)


def test_a_files_layers_are_timed_in_their_own_modes(tmp_path):
    """bench read activations / reduce_range from the file's config alone: a weight-only model saved
    with mq.save(model) (no config) was timed dynamic, and a mixed-precision model's layers all in the
    last call's mode."""
    from mono_quant.bench import cases_from_file
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    partly = mq.quantize(model, "int8", activations=None, include=["0"]).model
    mixed = mq.quantize(partly, "int8", reduce_range=True, include=["2"])
    mq.save(mixed, tmp_path / "mixed.safetensors")
    modes = {c.names: dict(c.options) for c in cases_from_file(tmp_path / "mixed.safetensors")[0]}
    assert modes[("0",)]["activations"] is None and not modes[("0",)]["reduce_range"]
    assert modes[("2",)]["activations"] == "dynamic" and modes[("2",)]["reduce_range"]


def test_a_static_file_says_bench_does_not_time_it(tmp_path, capsys):
    """It said "holds no quantized layers (a float checkpoint?)"."""
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(model, "int8", activations="static", calibration=torch.randn(16, 3, 8, 8))
    path = mq.save(result, tmp_path / "static.safetensors")
    assert main(["bench", str(path)]) == 1
    assert "a static int8 model (activations='static'): bench times" in capsys.readouterr().err


def test_a_state_dict_files_2d_tensors_are_said_to_be_timed_as_linear(tmp_path):
    """A state_dict-kind file does not say which 2-D tensors were embedding tables: bench timed a
    50k x 64 table as a Linear without a word."""
    from mono_quant.bench import cases_from_file
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 8))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "float.safetensors"))
    mq.quantize_checkpoint(tmp_path / "float.safetensors", tmp_path / "q.safetensors", dtype="int8")
    cases, notes = cases_from_file(tmp_path / "q.safetensors")
    assert {c.names for c in cases} == {("0",), ("1",)}
    assert notes == ["2 2-D tensors (0, 1) timed as Linear: a state_dict file does not say which are embedding "
                     "tables (an embedding's lookup is not a matmul; quantize the model itself to tell them apart)"]
    mq.save(mq.quantize(model, "int8"), tmp_path / "model.safetensors")  # a model file knows its Linear
    assert cases_from_file(tmp_path / "model.safetensors")[1] == []
