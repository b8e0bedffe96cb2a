"""Static int8 concatenation (shared output scale) and broadcasting adds: the modules against
independent oracles, their capture / conversion in quantize(), save / load, ISA bit-identity."""
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.static import StaticAdd, StaticBroadcastAdd, StaticCat, StaticConv2d
from mono_quant.static.graph import FusedAddFloat
from mono_quant.static.modules_eltwise import nhwc_dim, quantize_constant, requantize_codes
from mono_quant.static.reference import add_ref
from static_file_edits import StaticFileEdits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def np_requantize(q, s_in, z_in, s_out, z_out):
    """The epilogue's arithmetic in NumPy float32, element by element semantics."""
    v = (q.astype(np.float32) - np.float32(z_in)) * np.float32(s_in)
    s = v * (np.float32(1.0) / np.float32(s_out))
    s = np.clip(s, np.float32(-127 - z_out), np.float32(127 - z_out))
    return (np.rint(s).astype(np.int32) + z_out).astype(np.int8)


@pytest.mark.parametrize("s_in,z_in,s_out,z_out", [(0.02, -127, 0.03, -127), (0.05, 0, 0.01, -127),
                                                   (0.013, -127, 0.021, 0), (1e-3, 5, 7e-2, 3)])
def test_requantize_codes_matches_the_numpy_float32_oracle(s_in, z_in, s_out, z_out):
    q = torch.arange(-127, 128, dtype=torch.int8).repeat(7)[torch.randperm(255 * 7, generator=torch.Generator()
                                                                          .manual_seed(0))]
    got = requantize_codes(q, s_in, z_in, s_out, z_out)
    assert got.dtype == torch.int8 and int(got.min()) >= -127
    assert np.array_equal(got.numpy(), np_requantize(q.numpy(), s_in, z_in, s_out, z_out))


def test_nhwc_dim_maps_nchw_dims():
    assert [nhwc_dim(d, 4) for d in (0, 1, 2, 3, -1, -3)] == [0, 3, 1, 2, 2, 3]
    assert [nhwc_dim(d, 2) for d in (0, 1, -1)] == [0, 1, 1]
    with pytest.raises(ValueError, match="rank"):
        nhwc_dim(4, 4)


def codes(*shape, seed=0):
    return torch.randint(-127, 128, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(seed))


def test_static_cat_copies_shared_inputs_and_requantizes_the_rest():
    a, b, c = codes(2, 3, 5, 4, seed=1), codes(2, 3, 5, 6, seed=2), codes(2, 3, 5, 3, seed=3)
    cat = StaticCat([0.02, 0.05, 0.02], [-127, 0, -127], 0.02, -127, dim=3, rank=4)
    assert cat.requantized_inputs() == [1]
    out = cat(a, b, c)
    assert out.dtype == torch.int8 and out.shape == (2, 3, 5, 13)
    assert torch.equal(out[..., :4], a) and torch.equal(out[..., 10:], c)
    assert np.array_equal(out[..., 4:10].numpy(), np_requantize(b.numpy(), 0.05, 0, 0.02, -127))
    # float output: each input dequantized, NCHW
    f = StaticCat([0.02, 0.05], [-127, 0], None, 0, dim=3, rank=4)(a, b)
    want = torch.cat([(a.float() + 127) * torch.tensor(0.02), b.float() * torch.tensor(0.05)], 3).permute(0, 3, 1, 2)
    assert f.dtype == torch.float32 and torch.equal(f, want)
    with pytest.raises(ValueError, match="int8"):
        cat(a.float(), b, c)
    with pytest.raises(ValueError, match="built for 3"):
        cat(a, b)
    with pytest.raises(ValueError, match="in_scales"):
        StaticCat([0.0], [0], 1.0)


@pytest.mark.parametrize("shape_a,shape_b", [((2, 1, 1, 8), (2, 5, 4, 8)), ((2, 5, 4, 8), (1, 1, 1, 8)),
                                             ((2, 5, 1, 8), (2, 1, 4, 8)), ((6, 7), (1, 7))])
def test_broadcast_add_equals_the_reference_on_expanded_operands(shape_a, shape_b):
    a, b = codes(*shape_a, seed=4), codes(*shape_b, seed=5)
    m = StaticBroadcastAdd("relu", 0.03, 0.07, 0.05, -127, 0, -127)
    got = m(a, b)
    ea, eb = torch.broadcast_tensors(a, b)
    want = add_ref(ea, 0.03, eb, 0.07, (0.0, float("inf")), float(np.float32(1) / np.float32(0.05)), -127, 0, -127)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="broadcast"):
        m(codes(2, 3, 3, 8), codes(2, 4, 4, 8))


def test_broadcast_add_with_a_constant():
    const = torch.randn(1, 8, 1, 1, generator=torch.Generator().manual_seed(6))
    c, scale = quantize_constant(const, 4)
    assert c.shape == (1, 1, 1, 8) and scale == pytest.approx(float(const.abs().max()) / 127, rel=1e-6)
    m = StaticBroadcastAdd.with_constant(const, 4, None, 0.04, 0.06, 0, 0)
    a = codes(3, 4, 5, 8, seed=7)
    want = add_ref(a, 0.04, c.expand(3, 4, 5, 8), scale, inv_out_scale=float(np.float32(1) / np.float32(0.06)))
    assert torch.equal(m(a), want)
    with pytest.raises(ValueError, match="exactly when"):
        m(a, a)
    with pytest.raises(ValueError, match="NaN"):
        quantize_constant(torch.tensor([float("nan")]), 2)


class DenseNetLike(nn.Module):
    """A dense block (nested channel concatenations), the block input also concatenated with a
    signed branch (a producer shared by two concatenations of different qparams), a residual
    add, a squeeze-like broadcast add, a per-channel constant and a scalar added."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 4, 3, padding=1)
        self.c2 = nn.Conv2d(12, 4, 3, padding=1)
        self.side = nn.Conv2d(8, 8, 1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.mix2 = nn.Conv2d(16, 16, 1)
        self.se = nn.Conv2d(16, 16, 1)
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, 16).reshape(1, 16, 1, 1))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x1 = torch.cat([x, torch.relu(self.c1(x))], 1)
        x2 = torch.cat((x1, torch.relu(self.c2(x1))), dim=1)
        s = torch.cat([x, self.side(x)], 1)
        both = self.mix(x2) + self.mix2(s)
        z = both + self.se(F.adaptive_avg_pool2d(both, 1))   # (N,C,1,1) + (N,C,H,W)
        z = torch.relu(z + self.shift) + 0.25
        return self.head(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


@pytest.fixture(scope="module")
def data():
    return torch.randn(128, 3, 10, 10, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def dense(data):
    torch.manual_seed(3)
    model = DenseNetLike().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.running_mean.normal_(0, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return model, mq.quantize(model, "int8", activations="static", calibration=data)


def test_concatenations_and_broadcast_adds_run_in_int8(dense, data):
    model, result = dense
    layers = result.model.layers
    cats = [n for n, m in layers.items() if isinstance(m, StaticCat)]
    assert cats == ["cat", "cat_1", "cat_2"]
    assert all(layers[n].out_scale is not None for n in cats)
    # shared scales: producers output at their concatenation's (scale, zero-point): copied as they are
    assert layers["c1"].out_scale == layers["cat"].out_scale == layers["cat_1"].out_scale == layers["c2"].out_scale
    assert layers["cat_1"].requantized_inputs() == [] and layers["cat_2"].requantized_inputs() == []
    # the stem feeds two concatenations: the later one (signed: side has no ReLU) sets its codes,
    # the first requantizes it
    assert (layers["stem"].out_scale, layers["stem"].out_zp) == (layers["cat_2"].out_scale, 0)
    assert layers["cat"].out_zp == -127 and layers["cat"].requantized_inputs() == [0]
    adds = {n: m for n, m in layers.items() if isinstance(m, StaticAdd)}
    assert set(adds) == {"add", "add_1", "add_2", "add_3"} and type(adds["add"]) is StaticAdd
    assert all(isinstance(adds[n], StaticBroadcastAdd) for n in ("add_1", "add_2", "add_3"))
    assert adds["add_1"].const_shape is None and adds["add_2"].const_shape == [1, 1, 1, 16]
    assert adds["add_3"].const_shape == [1, 1, 1, 1]
    assert all(m.out_scale is not None for m in adds.values())
    report = result.report
    assert {r.kind for r in report.layers} >= {"cat", "add"}
    assert not [n for n, _ in report.not_fused if n.startswith(("cat", "add", "shift"))]
    assert not report.skipped
    x = data[:16]
    with torch.no_grad():
        ref, got = model(x), result.model(x)
    assert 10 * torch.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()) > 25


def test_a_float_input_keeps_the_concatenation_in_float(data):
    class CatInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.out = nn.Conv2d(7, 2, 1)

        def forward(self, x):
            return self.out(torch.cat([x, self.conv(x)], 1) + 1.0)

    model = CatInput().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(model, "int8", activations="static", calibration=data)
    assert not any(isinstance(m, StaticCat) for m in result.model.layers.values())
    assert isinstance(result.model.layers["add"], FusedAddFloat)
    assert {s.name for s in result.report.skipped} >= {"cat", "add"}
    x = data[:4]
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=0.1)


@pytest.fixture(scope="module")
def dense_expected(dense, data):
    return data[:5], dense[1].model(data[:5])  # at the best level this CPU has


def test_outputs_are_bit_identical_across_isa_levels(isa, dense, dense_expected):
    x, expected = dense_expected
    assert torch.equal(dense[1].model(x), expected)


def test_save_and_load_are_bit_exact(tmp_path, dense, data):
    _, result = dense
    loaded = mq.load(mq.save(result, tmp_path / "dense.safetensors"))
    assert list(loaded.layers) == list(result.model.layers)
    for name, m in result.model.layers.items():
        assert type(loaded.layers[name]) is type(m)
        if hasattr(m, "init_kwargs"):
            assert loaded.layers[name].init_kwargs() == m.init_kwargs()
    x = data[:5]
    assert torch.equal(loaded(x), result.model(x))


def test_damaged_constant_codes_are_refused(tmp_path, dense):
    _, result = dense
    edits = StaticFileEdits(mq.save(result, tmp_path / "d.safetensors"), "mono_quant.static", tmp_path)
    wrong = dict(edits.tensors)
    wrong["layers.add_2.b_codes"] = wrong["layers.add_2.b_codes"].reshape(1, 1, 16, 1)
    with pytest.raises(mq.CheckpointError, match="b_codes"):
        mq.load(edits.write("shape.safetensors", tensors=wrong))
    m128 = dict(edits.tensors)
    m128["layers.add_2.b_codes"] = torch.full_like(m128["layers.add_2.b_codes"], -128)
    with pytest.raises(mq.CheckpointError, match="-128"):
        mq.load(edits.write("m128.safetensors", tensors=m128))
    missing = {k: v for k, v in edits.tensors.items() if k != "layers.add_2.b_codes"}
    with pytest.raises(mq.CheckpointError, match="b_codes"):
        mq.load(edits.write("missing.safetensors", tensors=missing))
    bad = edits.manifest_copy()
    bad["layers"]["cat"]["init_kwargs"]["$dict"]["in_scales"] = [0.1]
    with pytest.raises(mq.CheckpointError, match="one scale"):
        mq.load(edits.write("scales.safetensors", bad))
    # a manifest's const_shape is checked against the file's codes before a buffer of that size is made
    huge = edits.manifest_copy()
    huge["layers"]["add_2"]["init_kwargs"]["$dict"]["const_shape"] = [1 << 20, 1 << 20, 1 << 10, 1]
    with pytest.raises(mq.CheckpointError, match="const_shape"):
        mq.load(edits.write("huge.safetensors", huge))
    for field, value in [("const_shape", [True, 2.9]), ("const_shape", "1234")]:
        odd = edits.manifest_copy()
        odd["layers"]["add_2"]["init_kwargs"]["$dict"][field] = value
        with pytest.raises(mq.CheckpointError, match="add_2"):
            mq.load(edits.write("odd.safetensors", odd))
    for value in [1.5, True, "1", -1, 4]:
        odd = edits.manifest_copy()
        odd["layers"]["cat"]["init_kwargs"]["$dict"]["dim"] = value
        with pytest.raises(mq.CheckpointError, match="layer 'cat'.*dim"):
            mq.load(edits.write("dim.safetensors", odd))


@pytest.mark.parametrize("kwargs", [dict(dim=1.5), dict(dim=True), dict(rank=4.0), dict(dim=4),
                                    dict(rank=2, channels_last=True)])
def test_concatenation_arguments_are_ints_in_range(kwargs):
    with pytest.raises(ValueError, match="StaticCat"):
        StaticCat([0.02], [0], 0.02, **kwargs)


@pytest.mark.parametrize("shape", [[True, 2], [2.9, 3], [1, 0], [1, 2, 3], (4,), "12"])
def test_a_constant_shape_is_two_or_four_positive_ints(shape):
    with pytest.raises(ValueError, match="const_shape"):
        StaticBroadcastAdd(None, 0.1, 0.1, 0.1, const_shape=shape)


def test_float_adds_and_pools_load_and_files_of_the_earlier_form_too(tmp_path, data):
    class FloatTail(nn.Module):
        def forward(self, x):
            y = torch.sigmoid(x)
            return torch.flatten(F.adaptive_avg_pool2d(y + y, 1), 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(FloatTail(), "int8", activations="static", calibration=data)
    path = mq.save(result, tmp_path / "f.safetensors")
    x = data[:3]
    assert torch.equal(mq.load(path)(x), result.model(x))
    # the earlier writer stored these two layers' arguments unencoded
    edits = StaticFileEdits(path, "mono_quant.static", tmp_path)
    old = edits.manifest_copy()
    for entry in old["layers"].values():
        if entry["class"] in ("FusedAddFloat", "FusedGapFloat"):
            entry["init_kwargs"] = entry["init_kwargs"]["$dict"]
    assert json.dumps(old) != json.dumps(edits.manifest)
    assert torch.equal(mq.load(edits.write("old.safetensors", old))(x), result.model(x))


def test_plain_adds_keep_the_plain_add(data):
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.out(torch.relu(self.a(x) + self.b(x)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(Residual().eval(), "int8", activations="static", calibration=data)
    assert type(result.model.layers["add"]) is StaticAdd
    assert isinstance(result.model.layers["out"], StaticConv2d) and result.model.layers["out"].int8_input


def test_concatenating_linear_outputs_of_sequences(data):
    """Linear layers on [batch, tokens, features] keep the float layout: the features are the
    last dim of the int8 codes too, so cat(dim=-1) concatenates there."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(6, 4), nn.Linear(6, 5), nn.Linear(9, 3)

        def forward(self, x):
            return self.out(torch.cat([self.a(x), torch.relu(self.b(x))], -1))

    x = torch.randn(64, 7, 6, generator=torch.Generator().manual_seed(8))
    model = TwoHeads().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(model, "int8", activations="static", calibration=x)
    cat = result.model.layers["cat"]
    assert isinstance(cat, StaticCat) and not cat.channels_last and (cat.rank, cat.dim) == (3, 2)
    assert cat.out_scale is not None and cat.requantized_inputs() == []
    with torch.no_grad():
        ref, got = model(x[:8]), result.model(x[:8])
    assert 10 * torch.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()) > 25
