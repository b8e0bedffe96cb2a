"""Size arithmetic on caller-controlled sizes (issue 14, finding 6): a product of
shapes, paddings or feature counts that passes 64 bits raises OverflowError
naming the entry point, instead of wrapping to a small (or negative) size.

The arrays here are cheap: a huge dimension next to a zero one, or a few
megabytes whose padding makes the conv output astronomically large."""
import numpy as np
import pytest

from mono_quant import _C

I8, I32, F32 = np.int8, np.int32, np.float32


def _conv(x, kernel, padding, out_channels=1, groups=1, stride=(1, 1), dilation=(1, 1)):
    k = x.shape[1] // groups * kernel[0] * kernel[1]
    kp = -(-k // 4) * 4
    np_ = groups * (-(-(out_channels // groups) // 16) * 16)
    return _C.conv2d_int8(x, np.zeros(np_ * kp, I8), np.zeros(np_, I32), np.ones(out_channels, F32),
                          np.zeros(out_channels, I32), None, out_channels, False, kernel, stride, padding, dilation,
                          groups)


def test_conv_rows_that_pass_2_64_raise_instead_of_wrapping():
    # 2^22 images of (2^21 x 2^21) output pixels: 2^64 rows, which wrapped to 0
    x = np.zeros((2**22, 1, 1, 1), F32)
    with pytest.raises(OverflowError, match="conv2d_int8.*reduce the batch or the padding"):
        _conv(x, (2, 2), (2**20, 2**20))


@pytest.mark.parametrize("batch,pad", [(2**21, 2**20), (2**23, 2**20 - 1), (1, 2**20)])
def test_conv_huge_but_representable_outputs_are_a_clear_error(batch, pad):
    x = np.zeros((batch, 1, 1, 1), F32)
    with pytest.raises((OverflowError, MemoryError, ValueError)):
        _conv(x, (2, 2), (pad, pad))


def test_pack_int8_rows_near_2_63_raise():
    w = np.empty((2**63 - 1, 0), I8)  # zero bytes, but round_up(rows, 16) passes int64
    with pytest.raises(OverflowError, match="pack_int8"):
        _C.pack_int8(w)


def test_quantize_pack_rejects_empty_and_never_wraps():
    with pytest.raises(ValueError, match="at least one row"):
        _C.quantize_pack_int8(np.empty((2**62 - 1, 0), np.int16), -128, 127, True)


@pytest.mark.parametrize("out_features", [2**63 - 1, 2**63 - 8, 2**62 + 1])
def test_linear_out_features_near_2_63_raise(out_features):
    x = np.zeros((1, 4), F32)
    with pytest.raises(OverflowError, match="out_features"):
        _C.linear_int8(x, np.zeros(64, I8), np.zeros(16, I32), np.ones(1, F32), np.zeros(1, I32), None,
                       out_features, False)


def test_conv_out_channels_near_2_63_raise():
    # an empty batch of 2^61 channels (bf16 bits) in 2^61 groups: 2 outputs per group, each
    # group's block padded to 16 channels, 2^65 in all
    x = np.empty((0, 2**61, 1, 1), np.int16)
    with pytest.raises(OverflowError, match="out_features"):
        _C.conv2d_int8(x, np.zeros(64, I8), np.zeros(16, I32), np.ones(1, F32), np.zeros(1, I32), None,
                       2**62, False, (1, 1), (1, 1), (0, 0), (1, 1), 2**61)


def test_linear_broadcast_rows_past_2_63_raise():
    # a broadcast view: 2^62 rows that cost nothing, but the int8 copy would need 2^64 bytes
    x = np.broadcast_to(np.zeros((1, 1), I8), (2**62, 1))
    with pytest.raises(OverflowError, match="linear_int8"):
        _C.linear_int8(x, np.zeros(64, I8), np.zeros(16, I32), np.ones(1, F32), np.zeros(1, I32), None, 1, False,
                       mode="int8_acc")


@pytest.mark.parametrize("width", [2**63 - 1, 2**63 - 16, 2**62])
def test_int4_packed_width_near_2_63_raises(width):
    # a zero-row uint8 array may be that wide; twice its width (the row's codes) wraps
    packed = np.empty((0, width), np.uint8)
    scale, zero = np.empty((0, 1), np.float16), np.empty((0, 1), np.uint8)
    with pytest.raises(OverflowError, match="int4 weight"):
        _C.q4_dequantize(packed, scale, zero, 32, 32)
    with pytest.raises(OverflowError, match="int4 weight"):
        _C.q4_linear(np.zeros((1, 32), F32), packed, scale, zero, 32)


def test_int4_negative_cols_raise():
    packed, scale, zero = np.empty((1, 0), np.uint8), np.empty((1, 0), np.float16), np.empty((1, 0), np.uint8)
    with pytest.raises(ValueError, match="cols = -5"):
        _C.q4_dequantize(packed, scale, zero, -5, 32)


@pytest.mark.parametrize("n,k", [(2**31, 2**31), (2**32, 1), (1, 2**32), (-1, 4), (4, 0)])
def test_packed_check_size_limits(n, k):
    with pytest.raises(ValueError, match="2\\^31"):
        _C.packed_check(np.zeros(64, I8), n, k)


@pytest.mark.parametrize("rows,cols,offset", [(2**31 - 1, 2**31 - 1, 2**62), (1, 1, 2**63 - 2), (2**31, 1, 0),
                                              (1, 1, -1), (0, 1, 0)])
def test_file_weight_sizes_never_wrap(tmp_path, rows, cols, offset):
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(64))
    with open(path, "rb") as f:
        with pytest.raises(ValueError):
            _C.quantize_pack_int8_file(f.fileno(), offset, rows, cols, "float32", -128, 127, True)


@pytest.mark.parametrize("rows", [2**46, 2**61 - 1])
def test_empty_arrays_with_huge_row_counts_return_at_once(rows):
    # no columns: nothing to compute, and visiting 2^46 empty rows one by one took hours
    x, q = np.empty((rows, 0), F32), np.empty((rows, 0), I8)
    one, zero = np.ones(1, F32), np.zeros(1, I32)
    assert _C.quantize_rows(x, one, zero, -128, 127).shape == (rows, 0)
    assert _C.dequantize_rows(q, one, zero).shape == (rows, 0)


def test_pack_int8_of_zero_rows_of_huge_width():
    # nothing to pack; the driver's chunk size (16 * k bytes per panel) overflowed int64 (UBSan)
    packed, w_sum, has_m128 = _C.pack_int8(np.empty((0, 2**61 - 1), I8))
    assert packed.shape == (0,) and w_sum.shape == (0,) and not has_m128


@pytest.mark.parametrize("mode", ["weight_only", "dynamic"])
def test_linear_int8_copies_misaligned_half_rows(mode):
    # a C-contiguous float16 x one byte off its alignment was passed on as it was (GETCONTIGUOUS
    # copies only non-contiguous arrays): misaligned uint16 loads, a UBSan report under `make sanitize`
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float16)
    buffer = np.empty(x.nbytes + 2, np.uint8)
    misaligned = buffer[1:1 + x.nbytes].view(np.float16).reshape(x.shape)
    misaligned[...] = x
    assert not misaligned.flags.aligned and misaligned.flags.c_contiguous
    packed, w_sum, has_m128 = _C.pack_int8(np.ones((2, 8), I8))
    args = (packed, w_sum, np.ones(2, F32), np.zeros(2, I32), None, 2, has_m128)
    np.testing.assert_array_equal(_C.linear_int8(misaligned, *args, mode=mode), _C.linear_int8(x, *args, mode=mode))


def test_empty_batch_with_a_width_near_2_60_never_divides_by_a_wrapped_zero():
    """The direct route's im2col block size divided 2^15 by out_w x kp before its early return
    for an empty batch: out_w = 2^60 and kp = 16 wrapped to 0 (SIGFPE, the interpreter died)."""
    x = np.empty((0, 1, 1, 2**60), np.float16)
    assert _C.conv2d_int8_direct_applies(1, 1, 16, 1, 8, 0, 1, 1, False)
    y = _C.conv2d_int8(x, np.zeros(256, np.int8), np.zeros(16, I32), np.ones(1, F32), np.zeros(1, I32), None, 1,
                       False, (16, 1), (1, 1), (8, 0), (1, 1), 1)
    assert y.shape[0] == 0
