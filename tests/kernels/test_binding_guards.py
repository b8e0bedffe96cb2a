"""The C bindings refuse what their kernels cannot run right, instead of crashing, hanging or
writing wrong numbers: an out= that overlaps an input, a depthwise kernel whose int32 sums could
overflow, a node list changed by user code while it is read, empty arrays whose other dimensions
are huge, and names with a NUL inside (found by fuzzing the bindings)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mono_quant import _C

RNG = np.random.default_rng(0)
SCALES = np.full(16, 0.01, np.float32)


def test_static_program_survives_user_code_that_empties_the_node_list():
    """Parsing a node's numbers runs __index__: it emptied the list whose borrowed items were being
    read (a segfault).  Run in a child, so a crash is a failure here, not the end of the run."""
    code = textwrap.dedent("""
        from mono_quant import _C
        class Evil:
            def __index__(self):
                nodes.clear()
                return 0
        ints = (1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, Evil())
        floats = (0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
        nodes = [(0, -1, -1, 0, ints, floats, ()), (0, -1, -1, 0, ints, floats, ())]
        try:
            _C.static_program(nodes)
        except (TypeError, ValueError) as e:
            print("refused:", e)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused" in done.stdout


@pytest.mark.parametrize("call", ["dequantize", "quantize", "depthwise", "add", "avgpool", "conv2d"])
def test_static_out_overlapping_an_input_is_refused(call):
    if call == "dequantize":
        out = np.zeros((4, 64), np.float32)
        q = out.view(np.int8).reshape(-1)[:256].reshape(4, 64)
        run = lambda: _C.dequantize_static(q, 0.1, out)
    elif call == "quantize":
        x = RNG.standard_normal((4, 64)).astype(np.float32)
        out = x.view(np.int8).reshape(-1)[-256:].reshape(4, 64)
        run = lambda: _C.quantize_static(x, 10.0, out)
    elif call == "depthwise":
        x = RNG.integers(-127, 128, (1, 8, 8, 16)).astype(np.int8)
        w = RNG.integers(-127, 128, (3, 3, 16)).astype(np.int8)
        run = lambda: _C.depthwise_static(x, w, None, SCALES, None, x, (1, 1), (1, 1), (1, 1), -np.inf, np.inf, 1.0)
    elif call == "add":
        a = RNG.integers(-127, 128, (1024,)).astype(np.int8)
        b = RNG.integers(-127, 128, (256,)).astype(np.int8)
        out = a.view(np.float32)  # 256 floats over a's bytes
        run = lambda: _C.add_static(a[:256], 0.1, b, 0.1, out, -np.inf, np.inf, 1.0)
    elif call == "avgpool":
        x = RNG.integers(-127, 128, (2, 4, 4, 16)).astype(np.int8)
        out = x.reshape(-1)[:32].reshape(2, 16)
        run = lambda: _C.avgpool_static(x, 0.1, out, -np.inf, np.inf, 1.0)
    else:
        w = RNG.integers(-127, 128, (16, 16)).astype(np.int8)
        packed, w_sum, has_m128 = _C.pack_int8(w)
        x = RNG.integers(-127, 128, (1, 4, 4, 16)).astype(np.int8)
        out = x  # [1, 4, 4, 16] int8: the shape a 1x1 conv of 16 outputs writes
        run = lambda: _C.conv2d_static(x, packed, w_sum, SCALES, None, None, out, has_m128, (1, 1), (1, 1), (0, 0),
                                       (1, 1), 1, -np.inf, np.inf, 1.0)
    with pytest.raises(ValueError, match="out overlaps an input"):
        run()


def test_static_out_apart_from_its_inputs_still_runs():
    q = RNG.integers(-127, 128, (4, 64)).astype(np.int8)
    out = np.zeros((4, 64), np.float32)
    _C.dequantize_static(q, 0.1, out)
    np.testing.assert_array_equal(out, q.astype(np.float32) * np.float32(0.1))


def test_depthwise_kernel_area_past_int32_sums_is_refused():
    taps = 400  # 400 x 400 taps of 127 * 127: 2.58e9, past int32 (it came out as -1.7e9)
    x = np.full((1, taps, taps, 1), 127, np.int8)
    w = np.full((taps, taps, 1), 127, np.int8)
    out = np.empty((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="kernel area"):
        _C.depthwise_static(x, w, None, np.ones(1, np.float32), None, out, (1, 1), (0, 0), (1, 1), -np.inf, np.inf, 1.0)


def test_static_program_depthwise_kernel_area_is_capped():
    big = 200  # 200 x 200 taps
    quantize = (0, -1, -1, 0, (1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), (-np.inf, np.inf, 1.0, 0.0, 0.0, 0.0), ())
    ints = (1, 1, big, big, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0)
    arrays = (np.zeros(big * big, np.int8), None, np.ones(1, np.float32), None)
    depthwise = (2, 0, -1, 1, ints, (-np.inf, np.inf, 1.0, 0.0, 0.0, 0.0), arrays)
    with pytest.raises(ValueError, match="depthwise kernel area"):
        _C.static_program([quantize, depthwise])


@pytest.mark.parametrize("call", ["pack_int8", "quantize_pack_int8"])
def test_pack_out_overlapping_the_input_or_itself_is_refused(call):
    w = (np.arange(2048) % 251 - 125).astype(np.int8).reshape(32, 64)
    packed, w_sum, _ = _C.pack_int8(w)
    if call == "pack_int8":
        source = w.copy()
        pack = lambda out: _C.pack_int8(source, out=out)
    else:
        source = RNG.standard_normal((32, 64)).astype(np.float32)
        pack = lambda out: _C.quantize_pack_int8(source, -127, 127, True, out=out)
    with pytest.raises(ValueError, match="must not overlap"):
        pack((source.view(np.int8).reshape(-1)[:packed.size], np.empty_like(w_sum)))
    shared = np.zeros(packed.size, np.int8)
    with pytest.raises(ValueError, match="must not overlap"):
        pack((shared, shared[:w_sum.nbytes].view(np.int32)))
    mine = (np.empty_like(packed), np.empty_like(w_sum))
    result = pack(mine)
    assert result[0] is mine[0] and result[1] is mine[1]


@pytest.mark.parametrize("call", ["avgpool", "quantize", "dequantize", "obs_minmax"])
def test_empty_arrays_with_huge_dimensions_return_at_once(call):
    """Zero bytes, but a leading dimension near 2^60: the kernels used to loop over it (a hang)."""
    if call == "avgpool":
        _C.avgpool_static(np.zeros((2**61, 1, 1, 0), np.int8), 1.0, np.zeros((2**61, 0), np.int8), -np.inf, np.inf, 1.0)
    elif call == "quantize":
        _C.quantize_static(np.zeros((2**60, 0), np.float32), 1.0, np.zeros((2**60, 0), np.int8))
    elif call == "dequantize":
        _C.dequantize_static(np.zeros((2**60, 0), np.int8), 1.0, np.zeros((2**60, 0), np.float32))
    else:
        lo = np.full(2, np.inf, np.float32)
        hi = -lo
        assert _C.obs_minmax(np.zeros((2**58, 2, 0), np.float32), lo, hi) == 0
        assert np.isposinf(lo).all() and np.isneginf(hi).all()


@pytest.mark.parametrize("setter", ["set_isa", "set_threading_backend"])
def test_names_with_a_nul_inside_are_refused(setter):
    fn = getattr(_C, setter)
    with pytest.raises(ValueError, match="null character"):
        fn("avx2\x00junk" if setter == "set_isa" else "pool\x00junk")


def test_observer_statistics_sharing_memory_are_refused():
    x = np.array([[[1.0, 2.0, 3.0]], [[-5.0, 0.0, 9.0]]], np.float32)
    both = np.full(1, np.inf, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        _C.obs_minmax(x, both, both)
    flat = np.array([1.0, 2.0, np.inf, -np.inf], np.float32)  # min / max inside x itself
    with pytest.raises(ValueError, match="share memory"):
        _C.obs_minmax(flat[:3].reshape(1, 1, 3), flat[2:3], flat[3:4])
    mn, mx = np.full(1, np.inf, np.float32), np.full(1, -np.inf, np.float32)
    assert _C.obs_minmax(x, mn, mx) == 0 and (mn[0], mx[0]) == (-5.0, 9.0)


def test_a_range_whose_min_exceeds_its_max_is_refused():
    with pytest.raises(ValueError, match=r"min\[0\] > max\[0\]"):
        _C.choose_qparams(np.array([5], np.float32), np.array([-5], np.float32), -128, 127, False)


def test_a_static_add_names_the_operand_of_the_wrong_shape():
    a, b, out = np.zeros((2, 6), np.int8), np.zeros((3, 4), np.int8), np.zeros((2, 6), np.float32)
    with pytest.raises(ValueError, match=r"b \(the shape of a\) must have shape \[2, 6\]"):
        _C.add_static(a, 0.1, b, 0.2, out, -np.inf, np.inf, 1.0)
