"""_C.transpose_f32: each float32 [r, c] image of a batch transposed to [c, r] (the layout transposes'
8 x 8 tiles, csrc/x86/avx2/transpose.c, and their reference), used for the weight-only 1x1 convs'
NCHW <-> rows.  Every level and thread count gives NumPy's transpose bit for bit (NaN payloads,
-0.0, Inf) on odd shapes: one row, one column, sizes past a multiple of eight, empty batches; bad
arguments are clear errors."""
import numpy as np
import pytest

from mono_quant import _C
from mono_quant.kernels.layout import transposed_planes

from conftest import SUPPORTED, at_isa


def _specials(x):
    flat = x.reshape(-1)
    bits = flat.view(np.uint32)
    if flat.size >= 4:
        bits[0] = 0x7FC01234  # a NaN with a payload
        flat[1], flat[2], flat[3] = -0.0, np.inf, -np.inf
    return x


@pytest.mark.parametrize("batch, rows, cols", [
    (1, 1, 1), (1, 1, 17), (1, 17, 1), (2, 8, 8), (1, 16, 24), (3, 9, 13), (1, 208, 64), (2, 64, 440),
    (1, 7, 33), (0, 5, 6), (1, 0, 4), (2, 3, 0),
])
def test_every_level_and_thread_count_is_numpys_transpose(batch, rows, cols):
    rng = np.random.default_rng(batch * 1000 + rows * 10 + cols)
    x = _specials(rng.standard_normal((batch, rows, cols)).astype(np.float32))
    want = np.ascontiguousarray(x.transpose(0, 2, 1))
    for level in SUPPORTED:
        with at_isa(level):
            for nthreads in (1, 2):
                out = np.full((batch, cols, rows), 7.0, dtype=np.float32)
                _C.transpose_f32(x, out, nthreads)
                assert np.array_equal(out.view(np.uint32), want.view(np.uint32)), (level, nthreads)


def test_transposed_planes_takes_a_strided_view():
    x = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12)[:, ::2, 1:]
    assert np.array_equal(transposed_planes(x, 2), np.ascontiguousarray(x.transpose(0, 2, 1)))


@pytest.mark.parametrize("make, error, message", [
    (lambda: (np.zeros((1, 2, 3), np.float64), np.zeros((1, 3, 2), np.float32)), TypeError, "x must have dtype"),
    (lambda: (np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.float32)), ValueError, "out"),
    (lambda: (np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32)), ValueError, "x must have 3"),
    (lambda: (np.zeros((1, 4, 6), np.float32)[:, :, ::2], np.zeros((1, 3, 4), np.float32)), TypeError,
     "C-contiguous"),
    (lambda: (np.zeros((1, 2, 3), np.float32), np.zeros((1, 3, 2), np.int32)), TypeError, "out must have dtype"),
])
def test_bad_arguments_are_clear_errors(make, error, message):
    x, out = make()
    with pytest.raises(error, match=message):
        _C.transpose_f32(x, out, 1)


def test_out_overlapping_x_or_read_only_is_refused():
    x = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        _C.transpose_f32(x, x, 1)
    out = np.zeros((1, 4, 4), np.float32)
    out.flags.writeable = False
    with pytest.raises(TypeError, match="writable"):
        _C.transpose_f32(np.zeros((1, 4, 4), np.float32), out, 1)
    with pytest.raises(ValueError, match="nthreads"):
        _C.transpose_f32(np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32), 0)
