"""The format registry (one object per format, asked instead of format names), the
pure-torch twins of the packing entry points against C, and the runtime settings."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import kernels
from mono_quant.formats import FORMATS, WeightFormat, get_format
from mono_quant.kernels import SETTINGS, reference


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_has_an_object_and_a_qtype(name):
    fmt = get_format(name)
    assert isinstance(fmt, WeightFormat) and fmt.name == name and mq.get_qtype(name) is fmt.qtype
    assert get_format(fmt.qtype) is fmt and get_format(fmt) is fmt


def test_aliases_and_torch_dtypes_resolve_to_the_format():
    assert get_format("qint8") is FORMATS["int8"] and get_format(torch.bfloat16) is FORMATS["bf16"]
    with pytest.raises(ValueError, match="unknown dtype"):
        get_format("int3")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_modules_ask_their_format(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    q = mq.quantize(model, dtype=name, min_weight_numel=1).model
    layer = q[0]
    assert layer.format is FORMATS[name]
    w = layer.dequantized_weight()
    assert w.shape == (32, 64) and w.dtype == torch.float32
    assert layer.weight_nbytes() == FORMATS[name].weight_nbytes(layer) > 0
    x = torch.randn(3, 64)
    assert q(x).shape == (3, 8)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (16, 4), (17, 33), (40, 130)])
def test_pack_twins_match_the_c_kernels(shape):
    torch.manual_seed(1)
    q = torch.randint(-128, 128, shape, dtype=torch.int8)
    c_packed, c_sums, c_m128 = kernels.pack_int8(q)
    r_packed, r_sums, r_m128 = reference.pack_int8(q)
    assert torch.equal(c_packed, r_packed) and torch.equal(c_sums, r_sums) and c_m128 == r_m128
    c_check = kernels.packed_check(c_packed, *shape)
    r_check = reference.packed_check(c_packed, *shape)
    assert torch.equal(c_check[0], r_check[0]) and c_check[1:] == r_check[1:] == (c_m128, False)
    x = torch.randn(shape)
    c = kernels.quantize_pack_int8(x, -127, 127, True, with_error=True)
    r = reference.quantize_pack_int8(x, -127, 127, True, with_error=True)
    for a, b in zip(c[:4], r[:4]):
        assert torch.equal(a, b)
    assert c[4:6] == r[4:6]


def test_packed_check_twin_sees_nonzero_padding():
    packed, _, _ = kernels.pack_int8(torch.ones(3, 5, dtype=torch.int8))
    packed[-1] = 1  # a byte of a padding row
    assert reference.packed_check(packed, 3, 5)[2] and kernels.packed_check(packed, 3, 5)[2]


def test_q4_twins_match_the_c_kernels():
    torch.manual_seed(2)
    w = torch.randn(24, 100)
    qw = mq.quantize_weight(w, "int4", group_size=32)
    c = kernels.int4.q4_dequantize(qw.qdata, qw.scale, qw.zero_point, 100, 32)
    assert torch.equal(c, reference.q4_dequantize(qw.qdata, qw.scale, qw.zero_point, 100, 32))
    x = torch.randn(3, 100)
    with SETTINGS.for_tests(int4_int8_activations=False):
        y = kernels.int4.q4_linear(x, qw.qdata, qw.scale, qw.zero_point, 32, None)
    assert torch.allclose(y, reference.q4_linear(x, qw.qdata, qw.scale, qw.zero_point, 32), rtol=1e-4, atol=1e-4)


def test_settings_context_restores_on_exit_and_on_error():
    before = (SETTINGS.isa, SETTINGS.int4_int8_activations)
    with pytest.raises(RuntimeError):
        with SETTINGS.for_tests(isa="scalar", int4_int8_activations=False):
            assert SETTINGS.isa == "scalar" and kernels.get_isa() == "scalar"
            assert not SETTINGS.int4_int8_activations
            raise RuntimeError("inside")
    assert (SETTINGS.isa, SETTINGS.int4_int8_activations) == before
    assert mq.int4.set_int8_activations(before[1]) == before[1]  # the old alias reads the same setting


def test_layout_constants_describe_the_packed_sizes():
    from mono_quant.kernels import layout
    from mono_quant.packing import packed_sizes

    assert packed_sizes(17, 5) == layout.int8_packed_sizes(17, 5) == (32 * 8, 32)
    assert layout.int4_padded_cols(33) == 2 * layout.INT4_BLOCK == 4 * layout.INT4_BLOCK_BYTES
