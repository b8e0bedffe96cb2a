"""The fused quantize-into-packed-layout kernel (csrc/quantize_pack.c):
bit-identical, on every ISA, to quantize_rows_fused followed by pack_int8,
and so to quantize_weight + pack_int8_linear, on odd shapes and values."""
import numpy as np
import pytest
import torch

import mono_quant as mq
from mono_quant import _C, kernels
from mono_quant.packing import pack_int8_linear, packed_sizes, quantize_and_pack_int8
from mono_quant import quantize_weight


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _two_step(x, qmin, qmax, symmetric):
    q, s, z, bad, sx, se = kernels.quantize_rows_fused(x, qmin, qmax, symmetric, True)
    packed, w_sum, m128 = kernels.pack_int8(q.view(torch.int8))
    return packed, w_sum, s, z, m128, sx, se


def _weights(rows, cols, dtype, seed):
    w = torch.randn(rows, cols, generator=_gen(seed)) * 0.05
    if rows > 2:
        w[1] = 0.0  # an all-zero row: scale 1
        w[2, :] = 3.0e38 * (torch.rand(cols, generator=_gen(seed + 1)) - 0.5)  # extremes near fp32 max
    if rows > 3:
        w[3] = -torch.rand(cols, generator=_gen(seed + 2))  # all negative: -128 in the asymmetric range
    return w.to(dtype)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 300), (16, 4), (17, 5), (33, 7), (50, 129), (64, 1), (3, 4100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fused_equals_quantize_then_pack(isa, rows, cols, dtype, symmetric):
    w = _weights(rows, cols, dtype, rows * 1000 + cols)
    if dtype == torch.float16:
        w = w.float().clamp(-6e4, 6e4).half()
    qmin = -127 if symmetric else -128
    packed, w_sum, s, z, m128, bad, sx, se = kernels.quantize_pack_int8(w, qmin, 127, symmetric, True)
    e_packed, e_sum, e_s, e_z, e_m128, e_sx, e_se = _two_step(w, qmin, 127, symmetric)
    assert bad == -1
    assert torch.equal(packed, e_packed) and torch.equal(w_sum, e_sum)
    assert torch.equal(s, e_s) and torch.equal(z, e_z) and m128 == e_m128
    assert torch.equal(sx, e_sx) and torch.equal(se, e_se)  # the same row kernels: the same sums
    assert (packed.numel(), w_sum.numel()) == packed_sizes(rows, cols)


def test_fused_matches_torch_and_module_path(isa):
    """Through quantize_and_pack_int8: the buffers QuantizedLinear keeps, scales as torch's."""
    w = torch.randn(40, 72, generator=_gen(5)) * 0.1
    for symmetric in (True, False):
        qmin = -127 if symmetric else -128
        scale, zp, buffers, sx, se = quantize_and_pack_int8(w, qmin, 127, symmetric, True)
        qw = quantize_weight(w, "int8", symmetric=symmetric)
        assert torch.equal(scale, qw.scale) and torch.equal(zp, qw.zero_point)
        for name, tensor in pack_int8_linear(qw).items():
            assert torch.equal(buffers[name], tensor), name
        err = (qw.dequantize() - w).double().pow(2).sum()
        assert abs(se - float(err)) <= 1e-4 * float(err) and abs(sx - float(w.double().pow(2).sum())) < 1e-3


def test_non_contiguous_input_and_threads(isa):
    base = torch.randn(70, 90, generator=_gen(6))
    w = base.t()[:, 3:60]  # strided view
    expected = kernels.quantize_pack_int8(w.contiguous(), -127, 127, True)
    got = kernels.quantize_pack_int8(w, -127, 127, True)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    big = torch.randn(300, 2048, generator=_gen(7))  # several panels per thread
    one = _C.quantize_pack_int8(big.numpy(), -127, 127, True, nthreads=1)
    two = _C.quantize_pack_int8(big.numpy(), -127, 127, True, nthreads=2)
    assert all(np.array_equal(a, b) for a, b in zip(one[:4], two[:4]))


def test_out_buffers_are_filled_and_returned():
    w = torch.randn(20, 10, generator=_gen(8))
    size, np_ = packed_sizes(20, 10)
    out = (torch.full((size,), 99, dtype=torch.int8), torch.zeros(np_, dtype=torch.int32))
    packed, w_sum, *_ = kernels.quantize_pack_int8(w, -127, 127, True, out=out)
    assert packed is out[0] and w_sum is out[1]
    assert torch.equal(packed, kernels.quantize_pack_int8(w, -127, 127, True)[0])
    with pytest.raises(ValueError, match="out must be"):
        kernels.quantize_pack_int8(w, -127, 127, True, out=(out[0][1:], out[1]))
    with pytest.raises(TypeError, match="tuple"):
        _C.quantize_pack_int8(w.numpy(), -127, 127, True, out=[out[0].numpy(), out[1].numpy()])


def test_nonfinite_rows_reported(isa):
    w = torch.randn(40, 33, generator=_gen(9))
    w[37, 5] = float("inf")
    w[21, 0] = float("nan")
    *_, bad, _, _ = kernels.quantize_pack_int8(w, -127, 127, True)
    assert bad == 21
    with pytest.raises(mq.NonFiniteWeightError, match="channel 21"):
        quantize_and_pack_int8(w, -127, 127, True, False)


@pytest.mark.parametrize("qmin,qmax", [(0, 255), (-127, 128), (5, 10), (-128, -128), (-127, -1)])
def test_rejects_non_int8_ranges(qmin, qmax):
    with pytest.raises(ValueError, match="signed int8 range"):
        _C.quantize_pack_int8(np.zeros((2, 2), np.float32), qmin, qmax, True)


def test_a_symmetric_range_needs_positive_codes():
    """[-128, 0] holds 0, so asymmetric codes may use it; symmetric ones put the zero-point at 0 and
    would cut every positive weight to it (it was accepted, silently)."""
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="symmetric range needs qmax > 0"):
        _C.quantize_pack_int8(w, -128, 0, True)
    with pytest.raises(ValueError, match="symmetric range needs qmax > 0"):
        _C.quantize_rows_fused(w, -128, 0, True)
    q, s, z = _C.quantize_rows_fused(w, -128, 0, False)[:3]
    err = np.abs((q.astype(np.float32) - z[:, None]) * s[:, None] - w).max(axis=1)
    assert (err <= s * 0.5 + 1e-6).all()  # asymmetric in [-128, 0]: every weight within half a step


def test_rejects_bad_arrays():
    with pytest.raises(ValueError, match="at least one row"):
        _C.quantize_pack_int8(np.zeros((0, 4), np.float32), -127, 127, True)
    with pytest.raises(ValueError, match="2-D"):
        _C.quantize_pack_int8(np.zeros(4, np.float32), -127, 127, True)
    with pytest.raises(TypeError, match="dtype"):
        _C.quantize_pack_int8(np.zeros((2, 2), np.float64), -127, 127, True)
    with pytest.raises(TypeError, match="byte order"):
        _C.quantize_pack_int8(np.zeros((2, 2), ">f4"), -127, 127, True)


def _pack_oracle(w):
    """The packed layout in plain torch: [np/16][kp/4][16][4], zero padded."""
    n, k = w.shape
    np_, kp = -(-n // 16) * 16, -(-k // 4) * 4
    padded = torch.zeros(np_, kp, dtype=torch.int8)
    padded[:n, :k] = w
    packed = padded.reshape(np_ // 16, 16, kp // 4, 4).permute(0, 2, 1, 3).reshape(-1)
    w_sum = torch.zeros(np_, dtype=torch.int32)
    w_sum[:n] = w.int().sum(1)
    return packed, w_sum, bool((w == -128).any())


@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("k", [1, 3, 4, 31, 32, 33, 63, 64, 65, 127, 128, 200])
def test_pack_panel_every_isa_against_torch(isa, n, k):
    g = _gen(n * 1000 + k)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    for case in ("random", "extremes", "no_m128"):
        if case == "extremes":  # alternating -128 / 127: the row sums' worst case
            w = torch.where(torch.arange(k) % 2 == 0, -128, 127).to(torch.int8).expand(n, k).contiguous()
        elif case == "no_m128":
            w = w.clamp(min=-127)
        packed, w_sum, m128 = kernels.pack_int8(w)
        e_packed, e_sum, e_m128 = _pack_oracle(w)
        assert torch.equal(packed, e_packed) and torch.equal(w_sum, e_sum) and m128 == e_m128, case


def test_pack_int8_non_contiguous(isa):
    base = torch.randint(-128, 128, (70, 90), generator=_gen(11), dtype=torch.int8)
    w = base.t()[5:40]
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
               for a, b in zip(kernels.pack_int8(w), _pack_oracle(w.contiguous())))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_builds_linear_layers_straight_from_the_fused_kernel(symmetric, dtype):
    """quantize() packs Linear weights with the fused kernel: the same buffers, in the same
    order, as from_float on quantize_weight's result (the plain int8 copy never made)."""
    from torch import nn

    from mono_quant.modules import QuantizedLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(70, 33), nn.ReLU(), nn.Linear(33, 5, bias=False)).to(dtype).eval()
    # (named exactly: a 5-output bf16 layer is narrow, narrow.py, and would stay float)
    qmodel, _ = mq.quantize(model, symmetric=symmetric, activations=None, include=["0", "2"])
    for index in (0, 2):
        layer = model[index]
        expected = QuantizedLinear.from_float(layer, quantize_weight(layer.weight, "int8", symmetric=symmetric))
        expected.set_activations(None)
        got = qmodel[index]
        assert list(got.state_dict()) == list(expected.state_dict())
        for name, tensor in expected.state_dict().items():
            assert torch.equal(got.state_dict()[name], tensor), name
        assert got.activations is None and got.weight_symmetric == symmetric and got.orig_dtype == dtype
        assert got.get_state_attrs() == expected.get_state_attrs()


@pytest.mark.parametrize("n,k", [(1, 1), (16, 4), (17, 5), (40, 129), (33, 64)])
def test_check_packed_int8_accepts_packed_and_names_each_corruption(isa, n, k):
    from mono_quant.packing import check_packed_int8

    w = torch.randint(-128, 128, (n, k), generator=_gen(n + k), dtype=torch.int8)
    packed, colsum, has_m128 = kernels.pack_int8(w)
    info = torch.tensor([1, n, k, int(has_m128), 1], dtype=torch.int32)
    assert check_packed_int8(packed, colsum, info, (n, k)) is None
    bad = colsum.clone()
    bad[n - 1] += 1
    assert "colsum" in check_packed_int8(packed, bad, info, (n, k))
    flipped = info.clone()
    flipped[3] = 1 - flipped[3]
    assert "-128 flag" in check_packed_int8(packed, colsum, flipped, (n, k))
    assert "does not describe" in check_packed_int8(packed, colsum, torch.tensor([1, n, k + 1, 0, 1],
                                                                                dtype=torch.int32), (n, k))
    assert "weight_packed must be" in check_packed_int8(packed[1:], colsum, info, (n, k))
    view = packed.clone().view(-1, -(-k // 4), 16, 4)
    if k % 4:
        view[0, -1, 0, 3] = 1  # past the last column
        assert "padding" in check_packed_int8(view.reshape(-1), colsum, info, (n, k))
        view[0, -1, 0, 3] = 0
    if n % 16:
        view[-1, 0, 15, 0] = 1  # a padding channel
        assert "padding" in check_packed_int8(view.reshape(-1), colsum, info, (n, k))


def test_load_uses_the_files_packed_buffers_and_refuses_inconsistent_ones(tmp_path):
    """A state_dict-kind file's packed Linear weights become the module's buffers as they are
    (no unpack and repack), checked first: a corrupted column sum is a CheckpointError."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 7)).eval()
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    mq.quantize_checkpoint(tmp_path / "m.safetensors", tmp_path / "q.safetensors")
    loaded = mq.load(tmp_path / "q.safetensors", model=model)
    expected, _ = mq.quantize(model)
    x = torch.randn(3, 40)
    assert torch.equal(loaded(x), expected(x))
    qsd = mq.load(tmp_path / "q.safetensors")
    again = qsd.load_into(model)
    assert again[0].weight_packed is qsd["0.weight_packed"]  # the file's tensor itself, not a repacked copy
    with safe_open(str(tmp_path / "q.safetensors"), "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = f.metadata()
    tensors["2.weight_colsum"][0] += 1
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(mq.io.CheckpointError, match="layer '2'.*weight_colsum does not match"):
        mq.load(tmp_path / "bad.safetensors", model=model)


def test_load_checks_packed_buffers_of_saved_models(tmp_path):
    """A saved model's packed buffers (Linear, grouped Conv2d) are checked once on load."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    qmodel, _ = mq.quantize(model)
    mq.save(qmodel, tmp_path / "q.safetensors")
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(mq.load(tmp_path / "q.safetensors", model=model)(x), qmodel(x))
    with safe_open(str(tmp_path / "q.safetensors"), "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = f.metadata()
    for key in ("0.weight_colsum", "2.weight_colsum"):
        broken = dict(tensors)
        broken[key] = tensors[key].clone()
        broken[key][-1] += 3  # the second group's (conv) / a padding channel's (linear) sum
        save_file(broken, str(tmp_path / "bad.safetensors"), metadata=metadata)
        with pytest.raises(mq.io.CheckpointError, match=f"layer '{key[0]}': bad packed int8 weight"):
            mq.load(tmp_path / "bad.safetensors", model=model)


def test_packed_buffers_must_fit_the_module_they_run_in():
    """Second-review findings: packed buffers consistent among themselves but not with the
    module (a hand-edited file) are refused; a saved format alias is stored canonically;
    an empty packed layer is not taken as it is."""
    from torch import nn

    from mono_quant.io.rebuild import packed_int8_layer as _packed_int8_layer
    from mono_quant.modules import QuantizedLinear
    from mono_quant.packing import check_packed_module

    q = mq.quantize(nn.Linear(7, 16, bias=False), min_weight_numel=1).model
    tensors = dict(q.state_dict())
    attrs = {**q.get_state_attrs(), "activations": q.activations}
    assert check_packed_module(q) is None
    wrong = QuantizedLinear.from_saved({"in_features": 7, "out_features": 32, "weight_format": "int8"}, attrs, tensors)
    assert "the module a [32, 7] weight" in check_packed_module(wrong)
    short = QuantizedLinear.from_saved(q.init_kwargs(), attrs, {**tensors, "weight_scale": tensors["weight_scale"][:3]})
    assert "weight_scale has 3 entries" in check_packed_module(short)
    alias = QuantizedLinear.from_saved(q.init_kwargs(), {**attrs, "weight_format": "INT8"}, tensors)
    assert alias.weight_format == "int8"
    x = torch.randn(2, 7)
    assert torch.equal(alias(x), q(x))
    assert not _packed_int8_layer({"dtype": "int8", "axis": 0, "shape": [0, 7]},
                                  {"weight_packed": 1, "weight_colsum": 1, "weight_packed_info": 1})


def test_compare_rescales_finite_float64_beyond_squares():
    from mono_quant.io import compare as compare_module

    a = torch.tensor([1e200, -3e199, 5e199], dtype=torch.float64)
    b = a * (1 + 1e-3)
    got = compare_module._sqnr(a, b)
    assert got is not None and abs(got - 60.0) < 1e-6
