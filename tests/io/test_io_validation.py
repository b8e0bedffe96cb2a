"""Files that lie: every buffer a kernel trusts and every manifest field is checked at load,
and a bad one is a CheckpointError naming the layer (issue 14, findings 2 and 3)."""
import json
import struct

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError
from mono_quant.io.manifest import METADATA_KEY
from safetensors_bytes import split_file, write_file


class _Net(nn.Module):
    """Linear + Conv2d + Embedding, so every quantized module type is in the file."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 16)
        self.conv = nn.Conv2d(4, 6, 3)
        self.embed = nn.Embedding(10, 32)


def _saved(tmp_path, dtype="int8", name="m.safetensors"):
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(_Net(), dtype=dtype, embeddings=True, group_size=32) if dtype == "int4" else \
        mq.quantize(_Net(), dtype=dtype, embeddings=True)
    return mq.save(qmodel, tmp_path / name), qmodel


_split, _write = split_file, write_file


def _edit_manifest(path, edit):
    header, data = _split(path)
    manifest = json.loads(header["__metadata__"][METADATA_KEY])
    edit(manifest)
    header["__metadata__"][METADATA_KEY] = json.dumps(manifest)
    _write(path, header, data)


def _layer(manifest, name):
    return next(layer for layer in manifest["layers"] if layer["name"] == name)


def _edit_tensor(path, key, edit):
    """Change a stored tensor's values in place (same dtype and shape)."""
    header, data = _split(path)
    entry = header[key]
    begin, end = entry["data_offsets"]
    dtype = {"F32": torch.float32, "F16": torch.float16, "I32": torch.int32, "I8": torch.int8,
             "U8": torch.uint8, "BF16": torch.bfloat16}[entry["dtype"]]
    t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).clone()
    edit(t)
    data = data[:begin] + t.numpy().tobytes() + data[end:]
    _write(path, header, data)


def _expect_error(path, layer, match=None):
    with pytest.raises(CheckpointError) as info:
        mq.load(path, model=_Net())
    assert repr(layer) in str(info.value), str(info.value)
    if match:
        assert any(m in str(info.value) for m in match.split("|")), str(info.value)
    with pytest.raises(CheckpointError):
        mq.load(path).dequantize()


# ---- finding 2: buffers ------------------------------------------------------------------------

BAD_VALUES = {
    "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "zero": 0.0, "negative": -0.5,
}


@pytest.mark.parametrize("layer", ["fc", "conv", "embed"])
@pytest.mark.parametrize("bad", BAD_VALUES, ids=BAD_VALUES.keys())
def test_bad_int8_scale_is_refused(tmp_path, layer, bad):
    path, _ = _saved(tmp_path)
    _edit_tensor(path, f"{layer}.weight_scale", lambda t: t.__setitem__(1, BAD_VALUES[bad]))
    _expect_error(path, layer, "scale")


@pytest.mark.parametrize("layer", ["fc", "embed"])
@pytest.mark.parametrize("bad", BAD_VALUES, ids=BAD_VALUES.keys())
def test_bad_int4_scale_is_refused(tmp_path, layer, bad):
    path, _ = _saved(tmp_path, "int4")
    _edit_tensor(path, f"{layer}.weight_scale", lambda t: t.reshape(-1).__setitem__(0, BAD_VALUES[bad]))
    _expect_error(path, layer, "scale")


@pytest.mark.parametrize("value", [128, -129, 1 << 20, -(1 << 30)])
@pytest.mark.parametrize("layer", ["fc", "conv", "embed"])
def test_int8_zero_point_out_of_range_is_refused(tmp_path, layer, value):
    path, _ = _saved(tmp_path)
    _edit_tensor(path, f"{layer}.weight_zero_point", lambda t: t.__setitem__(0, value))
    _expect_error(path, layer, "zero_point|zero-point")


def test_symmetric_zero_point_must_be_the_symmetric_one(tmp_path):
    path, _ = _saved(tmp_path)  # int8 defaults to symmetric: zero-point 0
    _edit_tensor(path, "fc.weight_zero_point", lambda t: t.__setitem__(0, 3))
    _expect_error(path, "fc", "zero_point|zero-point")
    path, _ = _saved(tmp_path, "int4", "b.safetensors")
    _manifest_symmetric = []
    _edit_manifest(path, lambda m: _manifest_symmetric.append(_layer(m, "fc")["scheme"]))
    if _manifest_symmetric[0] == "symmetric":
        _edit_tensor(path, "fc.weight_zero_point", lambda t: t.reshape(-1).__setitem__(0, 7))
        _expect_error(path, "fc", "zero_point|zero-point")


def _replace_tensor(path, key, code, shape, raw):
    """Store ``raw`` bytes as ``key`` with another dtype code / shape (manifest updated to agree)."""
    header, data = _split(path)
    meta = header.pop("__metadata__")
    blobs = {k: (e["dtype"], e["shape"], data[e["data_offsets"][0]:e["data_offsets"][1]]) for k, e in header.items()}
    blobs[key] = (code, shape, raw)
    out, position = {"__metadata__": meta}, 0
    for k, (c, s, b) in blobs.items():
        out[k] = {"dtype": c, "shape": s, "data_offsets": [position, position + len(b)]}
        position += len(b)
    _write(path, out, b"".join(b for _, _, b in blobs.values()))
    names = {"F32": "float32", "F16": "float16", "I32": "int32", "I8": "int8", "U8": "uint8"}
    layer, local = key.split(".", 1)
    _edit_manifest(path, lambda m: _layer(m, layer)["tensors"][local].update(dtype=names[code], shape=shape))


@pytest.mark.parametrize("layer", ["fc", "conv", "embed"])
def test_scale_with_the_wrong_count_is_refused(tmp_path, layer):
    # file and manifest agree; the layer's shape does not
    path, qmodel = _saved(tmp_path)
    scale = getattr(qmodel, layer).weight_scale
    _replace_tensor(path, f"{layer}.weight_scale", "F32", [scale.numel() - 1], scale[1:].numpy().tobytes())
    _expect_error(path, layer, "scale")


@pytest.mark.parametrize("layer", ["fc", "conv", "embed"])
def test_zero_point_with_the_wrong_dtype_is_refused(tmp_path, layer):
    path, qmodel = _saved(tmp_path)
    zp = getattr(qmodel, layer).weight_zero_point
    _replace_tensor(path, f"{layer}.weight_zero_point", "F32", list(zp.shape), zp.float().numpy().tobytes())
    _expect_error(path, layer, "zero_point")


def test_embedding_qdata_with_the_wrong_shape_is_refused(tmp_path):
    path, qmodel = _saved(tmp_path)
    q = qmodel.embed.weight_qdata
    _replace_tensor(path, "embed.weight_qdata", "I8", [q.shape[0], q.shape[1] - 1], q[:, 1:].numpy().tobytes())
    _expect_error(path, "embed", "weight_qdata|shape")


def test_int4_qdata_with_the_wrong_shape_is_refused(tmp_path):
    path, qmodel = _saved(tmp_path, "int4")
    q = qmodel.fc.weight_qdata
    _replace_tensor(path, "fc.weight_qdata", "U8", [q.shape[0] - 1, q.shape[1]], q[1:].numpy().tobytes())
    _expect_error(path, "fc", "weight_qdata|shape")


def test_fp16_weight_with_the_wrong_shape_or_dtype_is_refused(tmp_path):
    path, qmodel = _saved(tmp_path, "fp16")
    w = qmodel.fc.state_dict()["weight"]  # the stored fp16 tensor (.weight is the float32 view)
    _replace_tensor(path, "fc.weight", "F16", [w.shape[0] - 1, w.shape[1]], w[1:].numpy().tobytes())
    _expect_error(path, "fc", "weight|shape")
    path, qmodel = _saved(tmp_path, "fp16", "b.safetensors")
    _replace_tensor(path, "fc.weight", "F32", [w.shape[0], w.shape[1] // 2], w.numpy().tobytes())
    _expect_error(path, "fc", "weight|dtype")


def test_conv_packed_scale_count_must_match(tmp_path):
    path, _ = _saved(tmp_path)
    header, data = _split(path)
    header["conv.weight_scale"]["dtype"] = "I32"  # same bytes, wrong dtype (file and manifest agree)
    _write(path, header, data)
    _edit_manifest(path, lambda m: _layer(m, "conv")["tensors"]["weight_scale"].update(dtype="int32"))
    _expect_error(path, "conv", "weight_scale")


def test_nan_scale_in_a_state_dict_file(tmp_path):
    sd = {"fc.weight": torch.randn(16, 64), "fc.bias": torch.randn(16),
          "conv.weight": torch.randn(6, 4, 3, 3), "conv.bias": torch.randn(6)}
    model = nn.Module()
    model.fc, model.conv = nn.Linear(64, 16), nn.Conv2d(4, 6, 3)
    for dtype in ("int8", "uint8", "int4"):
        for key in ("fc.weight_scale", "conv.weight_scale"):
            if dtype == "int4" and key.startswith("conv"):
                continue
            path = tmp_path / f"{dtype}-{key}.safetensors"
            mq.save(mq.quantize(sd, dtype=dtype, **({"group_size": 32} if dtype == "int4" else {})), path)
            _edit_tensor(path, key, lambda t: t.reshape(-1).__setitem__(0, float("nan")))
            layer = key.split(".")[0]
            with pytest.raises(CheckpointError, match=f"'{layer}'.*scale"):
                mq.load(path, model=model)
            with pytest.raises(CheckpointError, match=f"'{layer}'.*scale"):
                mq.load(path).dequantize()


def test_state_dict_file_zero_point_out_of_range(tmp_path):
    sd = {"fc.weight": torch.randn(16, 64), "fc.bias": torch.randn(16)}
    model = nn.Module()
    model.fc = nn.Linear(64, 16)
    path = tmp_path / "q.safetensors"
    mq.save(mq.quantize(sd, dtype="uint8"), path)
    _edit_tensor(path, "fc.weight_zero_point", lambda t: t.__setitem__(0, 300))
    with pytest.raises(CheckpointError, match="'fc'.*zero"):
        mq.load(path, model=model)


def test_valid_files_still_load_bit_identically(tmp_path):
    x = torch.randn(3, 64)
    for dtype in ("int8", "uint8", "int4", "fp16", "bf16"):
        path, qmodel = _saved(tmp_path, dtype, f"{dtype}.safetensors")
        loaded = mq.load(path, model=_Net())
        assert torch.equal(loaded.fc(x), qmodel.fc(x))
        idx = torch.tensor([[1, 9], [0, 3]])
        assert torch.equal(loaded.embed(idx), qmodel.embed(idx))
        img = torch.randn(2, 4, 7, 7)
        assert torch.equal(loaded.conv(img), qmodel.conv(img))


# ---- finding 3: manifest fields ----------------------------------------------------------------

ORIG_DTYPES_MESSAGE = "orig_dtype 'float8_e4m3fn' is not one of ['float32', 'float16', 'bfloat16', 'float64']|" \
                      "orig_dtype 'float8_e5m2' is not one of ['float32', 'float16', 'bfloat16', 'float64']"

MODEL_EDITS = {
    # attrs
    "activations-bogus": ("fc", lambda l: l["attrs"].update(activations="bogus"), "activations"),
    "conv-activations-bogus": ("conv", lambda l: l["attrs"].update(activations="static"), "activations"),
    "format-int4-on-int8": ("fc", lambda l: l["attrs"].update(weight_format="int4"), "int4|weight_format"),
    "format-fp16-on-int8": ("fc", lambda l: l["attrs"].update(weight_format="fp16"), "fp16|weight_format"),
    "format-uint8-on-int8": ("embed", lambda l: l["attrs"].update(weight_format="uint8"), "uint8|weight_format"),
    "format-unknown": ("fc", lambda l: l["attrs"].update(weight_format="int3"), "int3"),
    "axis-1": ("fc", lambda l: l["attrs"].update(weight_axis=1), "axis"),
    "axis-7": ("embed", lambda l: l["attrs"].update(weight_axis=7), "axis"),
    "axis-string": ("fc", lambda l: l["attrs"].update(weight_axis="0"), "axis"),
    "symmetric-string": ("fc", lambda l: l["attrs"].update(weight_symmetric="yes"), "symmetric"),
    "symmetric-flipped": ("fc", lambda l: l["attrs"].update(weight_symmetric=False), "symmetric|scheme"),
    "orig-dtype-int": ("fc", lambda l: l["attrs"].update(orig_dtype="int64"), "orig_dtype"),
    "orig-dtype-disagrees": ("fc", lambda l: l["attrs"].update(orig_dtype="float16"), "orig_dtype"),
    # float8 is a storage dtype: no quantized weight stands for it (its .weight would report float8)
    "orig-dtype-float8": ("fc", lambda l: (l["attrs"].update(orig_dtype="float8_e4m3fn"),
                                           l.update(orig_dtype="float8_e4m3fn")), ORIG_DTYPES_MESSAGE),
    "orig-dtype-float8-attrs": ("embed", lambda l: (l["attrs"].update(orig_dtype="float8_e5m2"), l.pop("orig_dtype")),
                                ORIG_DTYPES_MESSAGE),
    "group-size-on-int8": ("fc", lambda l: l["attrs"].update(weight_group_size=32), "group"),
    "padding-list": ("conv", lambda l: l["attrs"].update(_reversed_padding_repeated_twice=[0, 0, 0, -1]),
                     "padding"),
    "padding-wrong-length": ("conv", lambda l: l["attrs"].update(_reversed_padding_repeated_twice=[0]), "padding"),
    # init_kwargs
    "in-features-string": ("fc", lambda l: l["init_kwargs"].update(in_features="64"), "in_features"),
    "in-features-disagree": ("fc", lambda l: l["init_kwargs"].update(in_features=65), "shape|in_features"),
    "kwargs-format-disagrees": ("fc", lambda l: l["init_kwargs"].update(weight_format="uint8"), "format"),
    "conv-padding-mode": ("conv", lambda l: l["init_kwargs"].update(padding_mode="mirror"), "padding_mode"),
    "conv-groups-zero": ("conv", lambda l: l["init_kwargs"].update(groups=0), "groups"),
    "conv-stride-zero": ("conv", lambda l: l["init_kwargs"].update(stride=[0, 1]), "stride"),
    "embed-padding-idx": ("embed", lambda l: l["init_kwargs"].update(padding_idx=10), "padding_idx"),
    "linear-unknown-kwarg": ("fc", lambda l: l["init_kwargs"].update(bogus=1), "unknown init_kwargs key 'bogus'"),
    "conv-unknown-kwarg": ("conv", lambda l: l["init_kwargs"].update(in_channel=3), "unknown init_kwargs key"),
    "embed-unknown-kwarg": ("embed", lambda l: l["init_kwargs"].update(sparse2=True), "unknown init_kwargs key"),
    # top-level layer fields against attrs and buffers
    "dtype-disagrees": ("fc", lambda l: l.update(dtype="uint8"), "dtype"),
    "scheme-disagrees": ("fc", lambda l: l.update(scheme="asymmetric"), "scheme|symmetric"),
    "scheme-cast-on-int8": ("fc", lambda l: l.update(scheme="cast"), "scheme"),
    "axis-disagrees": ("fc", lambda l: l.update(axis=None), "axis"),
    "group-size-disagrees": ("embed", lambda l: l.update(group_size=64), "group"),
    "shape-disagrees": ("fc", lambda l: l.update(shape=[16, 63]), "shape"),
    "orig-dtype-bogus": ("fc", lambda l: l.update(orig_dtype="floaty"), "orig_dtype|dtype"),
    "type-disagrees": ("fc", lambda l: l.update(type="Conv2d"), "type"),
}


@pytest.mark.parametrize("layer,edit,match", MODEL_EDITS.values(), ids=MODEL_EDITS.keys())
def test_bad_manifest_field_is_refused(tmp_path, layer, edit, match):
    path, _ = _saved(tmp_path)
    _edit_manifest(path, lambda m: edit(_layer(m, layer)))
    _expect_error(path, layer, match)


INT4_EDITS = {
    "group-size-not-32": ("fc", lambda l: (l["attrs"].update(weight_group_size=48), l.update(group_size=48)), "group"),
    "group-size-string": ("fc", lambda l: (l["attrs"].update(weight_group_size="32"), l.update(group_size="32")),
                          "group"),
    "group-size-other": ("fc", lambda l: (l["attrs"].update(weight_group_size=64), l.update(group_size=64)),
                         "weight_scale|group"),
    "format-int8-on-int4": ("fc", lambda l: l["attrs"].update(weight_format="int8"), "int8|weight_format"),
    "axis-on-int4": ("fc", lambda l: (l["attrs"].update(weight_axis=1), l.update(axis=1)), "axis"),
}


@pytest.mark.parametrize("layer,edit,match", INT4_EDITS.values(), ids=INT4_EDITS.keys())
def test_bad_int4_manifest_field_is_refused(tmp_path, layer, edit, match):
    path, _ = _saved(tmp_path, "int4")
    _edit_manifest(path, lambda m: edit(_layer(m, layer)))
    _expect_error(path, layer, match)


def test_fp16_layer_with_int8_attrs_is_refused(tmp_path):
    path, _ = _saved(tmp_path, "fp16")
    _edit_manifest(path, lambda m: _layer(m, "fc")["attrs"].update(weight_format="int8"))
    _expect_error(path, "fc", "int8|weight_format")
    path, _ = _saved(tmp_path, "fp16", "b.safetensors")
    _edit_manifest(path, lambda m: _layer(m, "fc").update(dtype="bf16"))
    _expect_error(path, "fc", "bf16|dtype")


STATE_DICT_EDITS = {
    "dtype-int4-on-int8": (lambda l: l.update(dtype="int4"), "int4"),
    "dtype-unknown": (lambda l: l.update(dtype="int3"), "int3"),
    "scheme-cast": (lambda l: l.update(scheme="cast"), "scheme"),
    "axis-5": (lambda l: l.update(axis=5), "axis"),
    "group-size-string": (lambda l: l.update(group_size="32"), "group"),
    "type-unknown": (lambda l: l.update(type="LSTM"), "type"),
    "orig-dtype-bogus": (lambda l: l.update(orig_dtype="floaty"), "orig_dtype|dtype"),
    "orig-dtype-float8": (lambda l: l.update(orig_dtype="float8_e4m3fn"), ORIG_DTYPES_MESSAGE),
}


@pytest.mark.parametrize("edit,match", STATE_DICT_EDITS.values(), ids=STATE_DICT_EDITS.keys())
def test_bad_state_dict_manifest_field_is_refused(tmp_path, edit, match):
    sd = {"fc.weight": torch.randn(16, 64), "fc.bias": torch.randn(16)}
    model = nn.Module()
    model.fc = nn.Linear(64, 16)
    path = tmp_path / "q.safetensors"
    mq.save(mq.quantize(sd), path)
    _edit_manifest(path, lambda m: edit(m["layers"][0]))
    with pytest.raises(CheckpointError) as info:
        mq.load(path, model=model)
    assert "'fc'" in str(info.value) and any(s in str(info.value) for s in match.split("|")), str(info.value)
    with pytest.raises(CheckpointError):
        mq.load(path).dequantize()


def test_top_level_manifest_fields(tmp_path):
    for i, (edit, match) in enumerate(((lambda m: m.update(skipped="all"), "skipped"),
                        (lambda m: m.update(config=[1]), "config"),
                        (lambda m: m.update(mono_quant_version=7), "mono_quant_version"))):
        path, _ = _saved(tmp_path, name=f"t{i}.safetensors")
        _edit_manifest(path, edit)
        with pytest.raises(CheckpointError, match=match):
            mq.load(path)


def test_file_tensor_of_another_dtype_than_a_real_model(tmp_path):
    # e.g. a file whose manifest was lost reads as a plain state_dict: its fp16 weights must not
    # become the parameters of a float32 model (a module that fails at forward)
    from safetensors.torch import save_file

    net = nn.Linear(8, 4)
    save_file({k: v.detach().half() for k, v in net.state_dict().items()}, str(tmp_path / "h.safetensors"))
    with pytest.raises(CheckpointError, match="dtype mismatches.*weight: float16 in the file, float32 in the model"):
        mq.load(tmp_path / "h.safetensors", model=nn.Linear(8, 4))
    loaded = mq.load(tmp_path / "h.safetensors", model=nn.Linear(8, 4, device="meta"))  # a skeleton takes them
    assert loaded.weight.dtype == torch.float16
    assert mq.load(tmp_path / "h.safetensors", model=nn.Linear(8, 4, dtype=torch.float16)).weight.dtype == torch.float16


# ---- the adversarial audit: dtypes of one element size, and tensors at odd addresses ------------

_SAME_SIZE = {"F32": "I32", "I32": "F32", "F16": "BF16", "BF16": "F16", "I8": "U8", "U8": "I8"}
_DTYPE_NAMES = {"F32": "float32", "I32": "int32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8"}


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int4", "fp16", "bf16"])
def test_a_tensor_read_as_another_dtype_of_its_size_is_refused(tmp_path, dtype):
    # the same bytes under another dtype of the same element size, file and manifest agreeing:
    # every buffer the kernels read is typed, so each such swap must be refused, never run
    path, _ = _saved(tmp_path, dtype)
    original = path.read_bytes()
    header, _ = _split(path)
    keys = [k for k in header if k != "__metadata__" and header[k]["dtype"] in _SAME_SIZE]
    assert keys
    for key in keys:
        path.write_bytes(original)
        header, data = _split(path)
        code = _SAME_SIZE[header[key]["dtype"]]
        header[key]["dtype"] = code
        _write(path, header, data)
        layer, local = key.split(".", 1)
        _edit_manifest(path, lambda m: _layer(m, layer)["tensors"][local].update(dtype=_DTYPE_NAMES[code]))
        with pytest.raises(CheckpointError):
            mq.load(path, model=_Net())


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_tensors_at_odd_addresses_load_aligned_and_identical(tmp_path, dtype):
    # a valid file whose header length is odd (another writer, a hand-edited manifest): its
    # int32 / float32 tensors start at odd addresses; loaded, they are copied aligned
    path, qmodel = _saved(tmp_path, dtype)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8:8 + n].rstrip(b" ") + b" "
    if (8 + len(text)) % 2 == 0:
        text += b" "
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    loaded = mq.load(path, model=_Net())
    for name, t in list(loaded.state_dict().items()):
        assert t.data_ptr() % t.element_size() == 0, name
    x, img, idx = torch.randn(3, 64), torch.randn(2, 4, 7, 7), torch.tensor([[1, 9], [0, 3]])
    assert torch.equal(loaded.fc(x), qmodel.fc(x)) and torch.equal(loaded.conv(img), qmodel.conv(img))
    assert torch.equal(loaded.embed(idx), qmodel.embed(idx))
