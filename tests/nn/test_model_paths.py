"""The shape rules that pick a layer's execution path (issue 9, 4b): each alternative
path against the one it replaces, and the choice made by shape alone."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.kernels import row_rules
from mono_quant import _C, int4
from mono_quant.modules import conv as conv_module
from mono_quant.formats import packed_linear as packed_linear_module
from mono_quant.kernels import dynamic_conv
from mono_quant.modules import linear as linear_module
from mono_quant.modules.linear import dequantized_packed, kernel_args
from mono_quant.packing import unpack_int8_rows
from mono_quant.kernels import SETTINGS
from conftest import AMX, SUPPORTED, at_isa



def _close(a, b, rel=1e-5):
    return torch.allclose(a.double(), b.double(), rtol=rel, atol=rel * float(b.abs().max()))


@pytest.fixture
def blas_tables():
    """Restore the path thresholds after a test forces them."""
    saved = (dict(linear_module.BLAS_MIN_ROWS), dict(int4.BLAS_MIN_ROWS), dict(int4.BLAS_MAX_OUT_FEATURES),
             dict(linear_module.BLAS_MIN_IN_FEATURES))
    for isa in int4.BLAS_MAX_OUT_FEATURES:  # the tests set the row rules alone
        int4.BLAS_MAX_OUT_FEATURES[isa] = 1 << 62
        linear_module.BLAS_MIN_IN_FEATURES[isa] = 0
    yield linear_module.BLAS_MIN_ROWS, int4.BLAS_MIN_ROWS
    linear_module.BLAS_MIN_ROWS.update(saved[0])
    int4.BLAS_MIN_ROWS.update(saved[1])
    int4.BLAS_MAX_OUT_FEATURES.update(saved[2])
    linear_module.BLAS_MIN_IN_FEATURES.update(saved[3])


@pytest.mark.parametrize("shape", [(1, 5), (16, 4), (37, 70), (48, 33)])
@pytest.mark.parametrize("groups", [1, 3])
def test_unpack_int8_rows_word_transpose_matches_byte_permute(shape, groups):
    out_g, k = shape
    n_pad, k_pad = -(-out_g // 16) * 16, -(-k // 4) * 4
    packed = torch.randint(-128, 128, (groups * n_pad * k_pad,), dtype=torch.int8)
    byte_wise = packed.reshape(groups, n_pad // 16, k_pad // 4, 16, 4).permute(0, 1, 3, 2, 4)
    expected = byte_wise.reshape(groups, n_pad, k_pad)[:, :out_g, :k]
    assert torch.equal(unpack_int8_rows(packed, groups, out_g, k), expected)
    # a slice at an offset that is not a whole int32 takes the byte-wise path, same bytes
    shifted = torch.cat([torch.zeros(1, dtype=torch.int8), packed])[1:]
    assert torch.equal(unpack_int8_rows(shifted, groups, out_g, k), expected)


@pytest.mark.parametrize("symmetric", [False, True])
def test_dequantized_packed_is_dequantized_weight(symmetric):
    torch.manual_seed(0)
    layer = mq.quantize(nn.Linear(70, 37), activations=None, symmetric=symmetric).model
    assert torch.equal(dequantized_packed(layer, kernel_args(layer)[0]), layer.dequantized_weight())
    conv = mq.quantize(nn.Conv2d(6, 9, 3, groups=3), activations=None, symmetric=symmetric).model
    assert torch.equal(conv._dequantized_packed(kernel_args(conv)[0]), conv.dequantized_weight())


def _packed_and_blas(layer, x, isa, crossover_rows):
    """The layer's output on the packed kernel and on the dequantize + BLAS path, at kernel level isa
    (the shape rule's row threshold for that level set out of reach, then to 1)."""
    with at_isa(isa), torch.no_grad():
        crossover_rows[isa] = 1 << 62
        packed = layer(x)
        crossover_rows[isa] = 1
        return packed, layer(x)


@pytest.mark.parametrize("rows", [1, 7, 70])
def test_weight_only_int8_blas_path_matches_packed_kernel(isa, rows, blas_tables):
    int8_rows, _ = blas_tables
    torch.manual_seed(1)
    layer = mq.quantize(nn.Linear(96, 40), activations=None).model
    x = torch.randn(2, rows, 96)
    packed, blas = _packed_and_blas(layer, x, isa, int8_rows)
    ref = F.linear(x.double(), layer.dequantized_weight().double(), layer.bias.double())
    assert blas.shape == packed.shape == ref.shape
    assert _close(blas, ref) and _close(packed, ref)


@pytest.mark.parametrize("isa", SUPPORTED)
def test_int4_blas_path_matches_packed_kernel(isa, blas_tables):
    _, int4_rows = blas_tables
    torch.manual_seed(2)
    layer = mq.quantize(nn.Linear(256, 48), dtype="int4").model
    x = torch.randn(33, 256)
    with SETTINGS.for_tests(amx=False if AMX else None):  # on AMX int8 activations never take the BLAS
        packed, blas = _packed_and_blas(layer, x, isa, int4_rows)
    exact = F.linear(x.double(), layer.dequantized_weight().double(), layer.bias.double())
    assert _close(blas, exact)  # fp32 activations: the dequantized weight's product
    # the packed kernels may quantize activations to int8 (int4.set_int8_activations): ~0.5% noise
    assert (packed.double() - exact).norm() / exact.norm() < 2e-2


@pytest.mark.skipif(not AMX, reason="the AVX-512 level runs no AMX here")
@pytest.mark.parametrize("int8_activations", [True, False])
def test_int4_on_amx_keeps_its_int8_kernel_past_the_blas_rows(blas_tables, int8_activations):
    """On AMX the int4 x int8 tiles beat the BLAS at every row count: past the rule's rows an
    int4 layer with int8 activations keeps them, each row the bits it has in a short batch;
    with int8 activations off the BLAS rule holds."""
    _, int4_rows = blas_tables
    int4_rows["avx512"] = 40
    torch.manual_seed(4)
    layer = mq.quantize(nn.Linear(256, 48), dtype="int4").model
    x = torch.randn(64, 256)
    with at_isa("avx512"), SETTINGS.for_tests(int4_int8_activations=int8_activations), torch.no_grad():
        many, few = layer(x), layer(x[:8])
    assert torch.equal(many[:8], few) == int8_activations
    exact = F.linear(x.double(), layer.dequantized_weight().double(), layer.bias.double())
    assert int8_activations or _close(many, exact)


def test_path_choice_is_a_rule_on_rows(blas_tables):
    int8_rows, _ = blas_tables
    isa = _C.get_isa()
    int8_rows[isa] = 8
    torch.manual_seed(3)
    layer = mq.quantize(nn.Linear(32, 48), activations=None).model  # (AMX from 32 outputs)
    calls = []
    original = packed_linear_module.packed_linear

    def spy(*args, **kwargs):
        calls.append((args[1].shape[0], bool(args[3]) if len(args) > 3 else False))
        return original(*args, **kwargs)

    packed_linear_module.packed_linear = spy
    # (the general path's rule: the kept common call, packed_linear.weight_only_linear, set aside;
    # tests/nn/test_linear_call_memo.py has it give the general path's bits)
    kept_call = packed_linear_module.weight_only_linear
    packed_linear_module.weight_only_linear = lambda module, x: None
    try:
        with torch.no_grad():
            with SETTINGS.for_tests(amx=False if AMX else None):
                for rows in (1, 7, 8, 64, 7):
                    layer(torch.randn(rows, 32))
            assert calls == [(1, False), (7, False), (7, False)]
            if AMX and _C.cpu_info()["amx_bf16"] and isa == "avx512":  # AMX-BF16 takes 16 rows and more
                calls.clear()
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(row_rules, "INT8_WEIGHT_ONLY_AMX_MIN_MACS", 0)  # (32 -> 16 is below the floor)
                    for rows in (1, 8, 16, 64, 7):
                        layer(torch.randn(rows, 32))
                assert calls == [(1, False), (16, True), (64, True), (7, False)]
                calls.clear()
                for rows in (16, 64):  # below INT8_WEIGHT_ONLY_AMX_MIN_MACS: not AMX (BLAS from 8 rows here)
                    layer(torch.randn(rows, 32))
                assert calls == []
    finally:
        packed_linear_module.packed_linear = original
        packed_linear_module.weight_only_linear = kept_call


def test_dynamic_conv_in_chunks_is_bit_identical(monkeypatch):
    torch.manual_seed(4)
    conv = mq.quantize(nn.Conv2d(16, 24, 3, padding=1, stride=2)).model
    x = torch.randn(5, 16, 9, 11)
    x[2] = 0
    packed = kernel_args(conv)
    with torch.no_grad():
        whole = conv._packed_conv(x, *packed)
        for nthreads, direct in ((1, True), (2, True), (1, False), (2, False)):  # (the direct route never chunks)
            previous, previous_direct = torch.get_num_threads(), dynamic_conv.set_direct(direct)
            torch.set_num_threads(nthreads)
            try:
                for chunk in (1, 16 * 5 * 6 * 2):  # one image, then two, per call
                    monkeypatch.setattr(conv_module, "DYNAMIC_CHUNK_BYTES", chunk)
                    assert torch.equal(conv._packed_conv(x, *packed), whole)
            finally:
                torch.set_num_threads(previous)
                dynamic_conv.set_direct(previous_direct)
                monkeypatch.setattr(conv_module, "DYNAMIC_CHUNK_BYTES", 1 << 20)


def test_small_dynamic_conv_runs_fp32_on_the_dequantized_weight():
    torch.manual_seed(5)
    # asymmetric weights: the im2col route's rules (test_dynamic_conv_direct.py has the direct route's,
    # which takes symmetric ones at any size); K = 27 < DYNAMIC_MIN_K
    first = mq.quantize(nn.Conv2d(3, 16, 3, padding=1), symmetric=False).model
    # K = 144
    deeper = mq.quantize(nn.Conv2d(16, 16, 3, padding=1), symmetric=False).model
    assert deeper.weight_zero_point.any()
    x, y = torch.randn(2, 3, 16, 16), torch.randn(2, 16, 16, 16)  # 590k multiply-adds per image
    small = torch.randn(64, 16, 8, 8)  # 147k per image: too few, whatever the batch
    assert not first._packed_pays(x) and deeper._packed_pays(y)
    assert not deeper._packed_pays(small) and not deeper._packed_pays(small[:1])
    with torch.no_grad():
        ref = F.conv2d(x, first.dequantized_weight(), first.bias, padding=1)
        assert _close(first(x), ref)
        assert torch.equal(deeper(y), deeper._packed_conv(y, *kernel_args(deeper)))
        assert _close(deeper(small), F.conv2d(small, deeper.dequantized_weight(), deeper.bias, padding=1))


def test_quantize_and_run_under_inference_mode():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(16, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = mq.quantize(model).model(x)
    with torch.inference_mode():
        qmodel = mq.quantize(model).model
        assert torch.equal(qmodel(x), expected)


def test_small_weight_kept_for_the_float_paths_follows_its_buffers():
    torch.manual_seed(7)
    # K = 27, asymmetric (the direct route would take a symmetric one): F.conv2d on the dequantized weight
    conv = mq.quantize(nn.Conv2d(3, 8, 3, padding=1), symmetric=False).model
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        first = conv(x)
        assert torch.equal(conv(x), first)
        conv.weight_scale.mul_(2)  # in place: the kept float weight must follow
        doubled = conv(x)
        ref = F.conv2d(x, conv.dequantized_weight(), conv.bias, padding=1)
    assert _close(doubled, ref) and not torch.equal(doubled, first)
    int4_conv = mq.quantize(nn.Conv2d(4, 8, 3), dtype="int4").model
    with torch.no_grad():
        before = int4_conv(torch.ones(1, 4, 5, 5))
        int4_conv.weight_scale.zero_()
        assert not torch.equal(int4_conv(torch.ones(1, 4, 5, 5)), before)


def test_int4_switch_looks_at_rows_and_outputs(blas_tables):
    _, int4_rows = blas_tables
    isa = _C.get_isa()
    int4_rows[isa], int4.BLAS_MAX_OUT_FEATURES[isa] = 16, 40
    torch.manual_seed(8)
    narrow, wide = (mq.quantize(nn.Linear(128, n), dtype="int4").model for n in (40, 48))
    x = torch.randn(16, 128)
    with torch.no_grad(), SETTINGS.for_tests(amx=False if AMX else None):  # (AMX: no BLAS, test above)
        for layer, blas in ((narrow, True), (wide, False)):
            exact = F.linear(x.double(), layer.dequantized_weight().double(), layer.bias.double())
            y = layer(x)
            assert _close(y, exact) if blas else not _close(y, exact, 1e-9)
