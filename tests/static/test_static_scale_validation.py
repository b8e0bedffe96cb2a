"""Static int8 files whose scales or widths lie: a scale calibration never writes (zero,
subnormal, negative, NaN / Inf, huge), an output scale that makes every output the zero-point,
and a layer whose stored width disagrees with its packed weight are each a CheckpointError at
load naming the layer (and, for a width, both widths) - never a model answering one constant."""
import json
import warnings

import pytest
import torch

import mono_quant as mq
from safetensors_bytes import edited_metadata, split_file, write_file
from static_helpers import Chain

KEY = "mono_quant.static"


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(Chain().eval(), "int8", activations="static",
                             calibration=torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(2)))
    path = mq.save(result, tmp_path_factory.mktemp("static") / "m.safetensors")
    kwargs = _kwargs(json.loads(split_file(path)[0]["__metadata__"][KEY]), "conv1")
    assert kwargs["out_scale"] is not None  # the case under test: int8 codes out of conv1
    return path


def _kwargs(manifest, layer):
    kw = manifest["layers"][layer]["init_kwargs"]
    return kw["$dict"] if "$dict" in kw else kw


def _edited(path, tmp_path, edit):
    return edited_metadata(path, tmp_path / "edited.safetensors", KEY, edit)


def test_the_saved_file_loads_and_runs(saved):
    with torch.no_grad():
        assert torch.isfinite(mq.load(saved)(X)).all()


BAD_SCALES = {"zero": 0.0, "negative": -0.5, "subnormal": 1e-40, "nan": {"$float": "nan"},
              "inf": {"$float": "inf"}, "huge": 1e37}


@pytest.mark.parametrize("attr", ["in_scale", "out_scale"])
@pytest.mark.parametrize("value", BAD_SCALES.values(), ids=BAD_SCALES.keys())
def test_an_activation_scale_calibration_never_writes_is_refused(saved, tmp_path, attr, value):
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, "conv1").update({attr: value}))
    with pytest.raises(mq.CheckpointError, match="layer 'conv1'"):
        mq.load(path)


@pytest.mark.parametrize("value", [1e20, 1e6])
def test_an_output_scale_that_makes_every_output_constant_is_refused(saved, tmp_path, value):
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, "conv1").update({"out_scale": value}))
    with pytest.raises(mq.CheckpointError, match=r"layer 'conv1': out_scale .* every output would be the zero-point"):
        mq.load(path)


@pytest.mark.parametrize("value", [0.0, -1.0, 1e-40, float("nan"), float("inf"), 1e37],
                         ids=["zero", "negative", "subnormal", "nan", "inf", "huge"])
def test_a_weight_scale_out_of_range_is_refused(saved, tmp_path, value):
    header, data = split_file(saved)
    begin, end = header["layers.fc.weight_scale"]["data_offsets"]
    scale = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.float32).clone()
    scale[1] = value
    data = data[:begin] + scale.numpy().tobytes() + data[end:]
    path = tmp_path / "scale.safetensors"
    write_file(path, header, data)
    with pytest.raises(mq.CheckpointError, match=r"layer 'fc'.*weight_scale\[1\]"):
        mq.load(path)


def test_a_stored_width_that_disagrees_with_the_weight_names_both(saved, tmp_path):
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, "fc").update({"in_features": 16}))
    with pytest.raises(mq.CheckpointError, match=r"layer 'fc': in_features is 16 .* its weight has 8 inputs"):
        mq.load(path)
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, "fc").update({"out_features": 5}))
    with pytest.raises(mq.CheckpointError, match=r"layer 'fc': out_features is 5 .* its weight has 4 outputs"):
        mq.load(path)


def test_a_conv_width_that_disagrees_with_the_weight_names_both(saved, tmp_path):
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, "conv2").update({"out_channels": 16}))
    with pytest.raises(mq.CheckpointError, match=r"layer 'conv2': out_channels is 16 .* its weight has 8 outputs"):
        mq.load(path)


NOT_FLAGS = {"text-false": "false", "zero": 0, "one": 1, "null": None}


@pytest.mark.parametrize("value", NOT_FLAGS.values(), ids=NOT_FLAGS.keys())
def test_a_flag_that_is_not_true_or_false_is_refused(saved, tmp_path, value):
    # (bool("false") is True: read loosely, conv1 would take its float input for int8 codes)
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, "conv1").update({"int8_input": value}))
    with pytest.raises(mq.CheckpointError, match=r"layer 'conv1'.*int8_input must be True or False"):
        mq.load(path)


@pytest.mark.parametrize("value", ["0.5", True], ids=["text", "bool"])
def test_a_scale_that_is_not_a_number_is_refused(saved, tmp_path, value):
    path = _edited(saved, tmp_path, lambda m: _kwargs(m, "conv1").update({"in_scale": value}))
    with pytest.raises(mq.CheckpointError, match=r"layer 'conv1'.*in_scale must be a finite positive float"):
        mq.load(path)


def test_check_scale_takes_real_numbers_only():
    import numpy as np
    from mono_quant.static.modules import check_scale
    for bad in (10 ** 400, np.True_, True, "1", None, float("nan"), 0.0, -1):
        with pytest.raises(ValueError, match="must be a finite positive float"):
            check_scale("s", bad)
    assert check_scale("s", np.float32(0.5)) == 0.5 and check_scale("s", 2) == 2.0
