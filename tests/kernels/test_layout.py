"""_C.LAYOUT (csrc/layout.h): the stored layouts' constants, exported once from C,
agree with what the Python side assumes and with what the kernels write."""
import numpy as np
import pytest

from mono_quant import _C, packing
from mono_quant.kernels import layout

LAYOUT_KEYS = {"packed_layout_version", "int8_panel_rows", "int8_k_group", "int4_block", "int4_block_bytes",
               "int4_int8_chunk", "int4_int8_max_group"}


def test_layout_is_a_dict_of_ints():
    assert isinstance(_C.LAYOUT, dict)
    assert set(_C.LAYOUT) == LAYOUT_KEYS
    assert all(type(v) is int and v > 0 for v in _C.LAYOUT.values())


def test_python_constants_match_the_c_layout():
    # kernels/layout.py reads _C.LAYOUT; the rest of the package imports from it
    assert packing.PACKED_LAYOUT_VERSION == layout.PACKED_LAYOUT_VERSION == _C.LAYOUT["packed_layout_version"]
    assert layout.INT8_PANEL_ROWS == _C.LAYOUT["int8_panel_rows"]
    assert layout.INT8_K_GROUP == _C.LAYOUT["int8_k_group"]
    assert layout.INT4_BLOCK == _C.LAYOUT["int4_block"]
    assert layout.INT4_BLOCK_BYTES == _C.LAYOUT["int4_block_bytes"]
    assert _C.LAYOUT["int4_block"] == 2 * _C.LAYOUT["int4_block_bytes"]  # two codes per byte


@pytest.mark.parametrize("n, k", [(1, 1), (15, 3), (16, 4), (17, 5), (33, 130)])
def test_int8_packed_sizes_follow_the_layout(n, k):
    panel, kgroup = _C.LAYOUT["int8_panel_rows"], _C.LAYOUT["int8_k_group"]
    n_pad, k_pad = -(-n // panel) * panel, -(-k // kgroup) * kgroup
    packed, w_sum, _ = _C.pack_int8(np.ones((n, k), dtype=np.int8))
    assert packed.size == n_pad * k_pad and w_sum.size == n_pad
    assert packing.packed_sizes(n, k) == (n_pad * k_pad, n_pad)
    # one panel's first K-group: channel c's k-values 0..kgroup-1 side by side
    w = np.arange(n * k, dtype=np.int64).reshape(n, k) % 100
    packed, _, _ = _C.pack_int8(w.astype(np.int8))
    first = packed[: panel * kgroup].reshape(panel, kgroup)
    rows = min(n, panel)
    cols = min(k, kgroup)
    assert (first[:rows, :cols] == w[:rows, :cols]).all()
    assert (first[rows:] == 0).all() and (first[:, cols:] == 0).all()


@pytest.mark.parametrize("cols", [1, 31, 32, 33, 100])
def test_int4_packed_rows_follow_the_block(cols):
    block, block_bytes = _C.LAYOUT["int4_block"], _C.LAYOUT["int4_block_bytes"]
    x = np.linspace(-1, 1, 3 * cols, dtype=np.float32).reshape(3, cols)
    packed, scale, _, bad, _, _ = _C.q4_quantize(x, block, True, 0)
    kpad = -(-cols // block) * block
    assert bad == -1
    assert packed.shape == (3, kpad // block * block_bytes)
    assert scale.shape == (3, kpad // block)


def test_int8_activation_limits_follow_the_layout():
    chunk, max_group = _C.LAYOUT["int4_int8_chunk"], _C.LAYOUT["int4_int8_max_group"]
    w = np.zeros((2, 2 * max_group), dtype=np.float32)
    x = np.ones((1, 2 * max_group), dtype=np.float32)
    for group, ok in [(chunk, True), (max_group, True), (chunk // 2, False), (2 * max_group, False)]:
        packed, scale, zero, _, _, _ = _C.q4_quantize(w, group, True, 0)
        if ok:
            assert _C.q4_linear(x, packed, scale, zero, group, int8_activations=1).shape == (1, 2)
        else:
            with pytest.raises(ValueError, match="a multiple of 128, at most 4096"):
                _C.q4_linear(x, packed, scale, zero, group, int8_activations=1)
