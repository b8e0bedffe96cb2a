"""What fuzzing the loaders found (benchmarks/fuzz_load.py mutates saved files), each now a
clear CheckpointError at load (or at describe) instead of a TypeError / KeyError from deep
inside, or a file that loaded with scales no quantizer writes:

- a dtype field of the wrong JSON type (a number, list, object or null) in the safetensors
  header or in the manifest;
- per-channel / per-tensor weight scales that are zero, negative, subnormal, NaN, Inf or huge
  (past what a float32 weight can quantize to), in files from save and quantize_checkpoint -
  while the extremes a real weight gives (largest and smallest normal scales) still load;
- describe() of a manifest layer without the optional axis / group_size, or with an
  orig_dtype that is a torch dtype but not a float a weight can have.
"""
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq
from mono_quant.formats.checks import MAX_SCALE, MIN_SCALE
from mono_quant.io.describe import describe
from safetensors_bytes import split_file, write_file


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


X = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path}: save() of per-channel and per-tensor int8, quantize_checkpoint's int8."""
    folder = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    out = {}
    for name, kwargs in {"per_channel": {}, "per_tensor": {"granularity": "per_tensor"}}.items():
        out[name] = mq.save(mq.quantize(Net(), dtype="int8", **kwargs), folder / f"{name}.safetensors")
    float_file = folder / "float.safetensors"
    save_file(Net().state_dict(), str(float_file))
    out["checkpoint"] = folder / "checkpoint.safetensors"
    mq.quantize_checkpoint(float_file, out["checkpoint"], dtype="int8")
    return out


def _manifest_edit(path, tmp_path, edit):
    header, data = split_file(path)
    manifest = json.loads(header["__metadata__"]["mono_quant"])
    edit(manifest)
    header["__metadata__"]["mono_quant"] = json.dumps(manifest)
    out = tmp_path / "edited.safetensors"
    write_file(out, header, data)
    return out


def _header_edit(path, tmp_path, edit):
    header, data = split_file(path)
    edit(header)
    out = tmp_path / "edited.safetensors"
    write_file(out, header, data)
    return out


WRONG_TYPES = {"number": 8, "list": ["int8"], "object": {"dtype": "int8"}, "null": None, "bool": True}


# ---- 1. dtype fields of the wrong JSON type -------------------------------------------------------------


@pytest.mark.parametrize("value", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_a_header_dtype_of_the_wrong_type_is_a_load_error(files, tmp_path, value):
    path = _header_edit(files["per_channel"], tmp_path, lambda h: h["fc1.weight_scale"].update(dtype=value))
    for read in (lambda p: mq.load(p, model=Net()), mq.load, describe):
        with pytest.raises(mq.CheckpointError, match=r"tensor 'fc1.weight_scale': (dtype .* is not a string|"
                                                     r"unsupported dtype None)"):
            read(path)


@pytest.mark.parametrize("value", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
@pytest.mark.parametrize("file", ["per_channel", "checkpoint"])
def test_a_manifest_layer_dtype_of_the_wrong_type_is_a_load_error(files, tmp_path, file, value):
    path = _manifest_edit(files[file], tmp_path, lambda m: m["layers"][0].update(dtype=value))
    for read in (lambda p: mq.load(p, model=Net()), describe):
        with pytest.raises(mq.CheckpointError, match=r"layer #0 \('fc1'\): bad manifest: dtype must be a string"):
            read(path)


@pytest.mark.parametrize("value", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_a_manifest_tensor_dtype_of_the_wrong_type_is_a_load_error(files, tmp_path, value):
    def edit(m):
        m["layers"][0]["tensors"]["weight_scale"]["dtype"] = value
    path = _manifest_edit(files["per_channel"], tmp_path, edit)
    with pytest.raises(mq.CheckpointError, match=r"tensor 'weight_scale' needs a dtype \(a string\)"):
        mq.load(path, model=Net())


@pytest.mark.parametrize("value", [8, ["float32"], {"a": 1}], ids=["number", "list", "object"])
def test_an_orig_dtype_of_the_wrong_type_is_a_load_error(files, tmp_path, value):
    path = _manifest_edit(files["per_channel"], tmp_path, lambda m: m["layers"][0].update(orig_dtype=value))
    for read in (lambda p: mq.load(p, model=Net()), describe):
        with pytest.raises(mq.CheckpointError, match="orig_dtype must be a string or null"):
            read(path)


# ---- 2. weight scales no quantizer writes --------------------------------------------------------------


def _with_scale(path, tmp_path, key, index, value):
    header, data = split_file(path)
    begin, end = header[key]["data_offsets"]
    scale = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.float32).clone()
    scale[index] = value
    out = tmp_path / "scaled.safetensors"
    write_file(out, header, data[:begin] + scale.numpy().tobytes() + data[end:])
    return out


BAD_SCALES = {"zero": 0.0, "negative-zero": -0.0, "negative": -0.25, "subnormal": 1e-40, "smallest-subnormal": 1e-45,
              "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e37, "float-max": 3.4e38}


@pytest.mark.parametrize("value", BAD_SCALES.values(), ids=BAD_SCALES.keys())
@pytest.mark.parametrize("file,index", [("per_channel", 5), ("per_tensor", 0), ("checkpoint", 5)])
def test_a_scale_no_quantizer_writes_is_refused_naming_the_layer(files, tmp_path, file, index, value):
    path = _with_scale(files[file], tmp_path, "fc1.weight_scale", index, value)
    for read in (lambda p: mq.load(p, model=Net()), mq.load):
        with pytest.raises(mq.CheckpointError, match=rf"layer 'fc1': weight_scale\[{index}\] = .*: scales must be "
                                                     r"finite, > 0 and in"):
            read(path)


def test_extreme_but_real_weights_still_load(tmp_path):
    """A weight near float32's largest values and one of its tiniest normal values quantize to
    scales inside the bounds (the tiny one: exactly MIN_SCALE): they save and load as they were."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0e38, 1.0, -1.0, 0.0],
                                            [1.1754944e-38, 0.0, 0.0, 0.0],
                                            [0.5, -0.25, 0.125, 0.0]]))
    result = mq.quantize(model, dtype="int8", activations=None, include=["0"])  # (named: a narrow layer)
    path = mq.save(result, tmp_path / "extremes.safetensors")
    loaded = mq.load(path, model=nn.Sequential(nn.Linear(4, 3, bias=False)))[0]
    scale = loaded.weight_scale
    assert MAX_SCALE / 2 < float(scale[0]) <= MAX_SCALE and float(scale[1]) == MIN_SCALE
    assert torch.equal(loaded.dequantized_weight(), result.model[0].dequantized_weight())
    assert bool(torch.isfinite(MAX_SCALE * torch.tensor(127.0)))  # the bound's 127 steps stay finite


# ---- 7. describe() on partial or odd manifests -----------------------------------------------------------


@pytest.mark.parametrize("field", ["axis", "group_size"])
def test_describe_reads_a_layer_without_an_optional_field_as_null(files, tmp_path, field):
    path = _manifest_edit(files["per_tensor"], tmp_path, lambda m: [layer.pop(field) for layer in m["layers"]])
    info = describe(path)
    assert [layer[field] for layer in info["layers"]] == [None, None]


@pytest.mark.parametrize("orig", ["qint8", "int8", "complex64", "float8_e4m3fn", "Tensor", ""])
def test_describe_refuses_an_orig_dtype_a_weight_cannot_have(files, tmp_path, orig):
    path = _manifest_edit(files["per_channel"], tmp_path, lambda m: m["layers"][0].update(orig_dtype=orig))
    with pytest.raises(mq.CheckpointError, match=r"layer 'fc1': orig_dtype .* is not one of"):
        describe(path)


def test_describe_of_a_truncated_file_is_a_load_error(files, tmp_path):
    raw = files["checkpoint"].read_bytes()
    for size in (0, 7, 8, 100, len(raw) // 2, len(raw) - 1):
        path = tmp_path / f"cut{size}.safetensors"
        path.write_bytes(raw[:size])
        with pytest.raises(mq.CheckpointError):
            describe(path)


@pytest.mark.parametrize("flag", [2, -1, 255])
@pytest.mark.parametrize("file", ["per_channel", "checkpoint"])
def test_a_minus_128_flag_other_than_0_or_1_is_refused(files, tmp_path, file, flag):
    """weight_packed_info[3] (the packed weight holds a -128) is 0 or 1 as packing writes it; 2 loaded.  (Without
    a model, load checks the packed buffers when a module is built from them: dequantize ignores the flag.)"""
    header, data = split_file(files[file])
    begin, end = header["fc1.weight_packed_info"]["data_offsets"]
    info = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.int32).clone()
    info[3] = flag
    out = tmp_path / "flag.safetensors"
    write_file(out, header, data[:begin] + info.numpy().tobytes() + data[end:])
    with pytest.raises(mq.CheckpointError, match=rf"layer 'fc1': bad packed int8 weight: weight_packed_info "
                                                 rf"\[1, 16, 32, {flag}, 1\] (is not|does not describe)"):
        mq.load(out, model=Net())
