"""int4's float16 group scales at load: the int8 rule (checks.check_scales) in float16's terms.
Zero, negative, NaN and Inf are refused naming the layer, the entry and float16's range (the
message quoted float32's); float16 subnormals, which the int4 quantizer writes for small
weights and the kernels widen exactly, load and compute as saved."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.formats.checks import BadLayer, check_scales
from mono_quant.io import CheckpointError
from safetensors_bytes import split_file, write_file


def _saved(tmp_path, scale_factor=1.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16))
    with torch.no_grad():
        model[0].weight.mul_(scale_factor)
    qmodel, _ = mq.quantize(model, dtype="int4", group_size=32)
    return mq.save(qmodel, tmp_path / "m.safetensors"), qmodel


def _set_scale(path, value):
    header, data = split_file(path)
    begin, end = header["0.weight_scale"]["data_offsets"]
    t = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.float16).clone()
    t[1] = value
    write_file(path, header, data[:begin] + t.numpy().tobytes() + data[end:])


@pytest.mark.parametrize("bad", [0.0, -0.0, -0.5, -6e-8, float("nan"), float("inf"), float("-inf")])
def test_bad_fp16_scales_are_refused_naming_the_layer_and_fp16s_range(tmp_path, bad):
    path, _ = _saved(tmp_path)
    _set_scale(path, bad)
    for load in (lambda: mq.load(path, model=nn.Sequential(nn.Linear(64, 16))), lambda: mq.load(path)):
        with pytest.raises(CheckpointError, match=r"layer '0': weight_scale\[1\] = .*: scales must be finite, > 0 "
                                                  r"and in 5\.96e-08\.\.65504 \(float16 group scales"):
            load()


def test_subnormal_fp16_scales_the_quantizer_writes_load_and_compute(tmp_path):
    path, qmodel = _saved(tmp_path, scale_factor=1e-5)
    scale = qmodel[0].weight_scale
    assert bool((scale.float() < torch.finfo(torch.float16).tiny).all())  # every group scale subnormal
    loaded = mq.load(path, model=nn.Sequential(nn.Linear(64, 16)))
    x = torch.randn(3, 64)
    assert torch.equal(loaded(x), qmodel(x))
    assert torch.allclose(loaded(x), x @ loaded[0].weight.T + loaded[0].bias, atol=1e-9)
    _set_scale(path, 2.0 ** -24)  # the smallest: still a scale the quantizer may write
    mq.load(path)


def test_one_rule_per_storage_dtype():
    check_scales(torch.tensor([2.0 ** -24, 65504.0], dtype=torch.float16))
    with pytest.raises(BadLayer, match=r"scales must be finite, > 0 and in 1\.175e-38\.\.2\.679e\+36 \(float32"):
        check_scales(torch.tensor([1e-39], dtype=torch.float32))  # float32 subnormal: refused as before
