"""csrc/embedding.c: 8-bit embedding tables (int8 / uint8 codes, a scale and zero-point per row or
one for the table, or none) - the lookup's rows and the bags' sums / means / maxima read straight
from the codes.  Every level (the scalar reference, AVX2's twin) gives the same bits, which are
torch's F.embedding_bag's on the dequantized table where torch runs its fused kernel (no
padding_idx), on odd widths (tails of 8), empty and all-padding bags, both threads; bad ids and
offsets are clear errors, never a bad read."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest
import torch
import torch.nn.functional as F

from mono_quant import _C

from conftest import SUPPORTED, at_isa

MODES = {"sum": 0, "mean": 1, "max": 2}


def _table(num, dim, signed, per_row, zero, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.integers(-128 if signed else 0, 128 if signed else 256, (num, dim)).astype(np.int8 if signed else np.uint8)
    q[0] = -128 if signed else 255  # an extreme row
    n = num if per_row else 1
    scale = (rng.random(n) * 0.1 + 1e-3).astype(np.float32)
    zp = None if zero == "none" else (rng.integers(-20, 20, n) if signed else rng.integers(0, 256, n)).astype(np.int32)
    return q, scale, zp


def _dequantized(q, scale, zp):
    s = torch.from_numpy(scale)[:, None] if len(scale) > 1 else torch.from_numpy(scale).reshape(1, 1)
    z = torch.zeros_like(s) if zp is None else torch.from_numpy(zp).float().reshape(s.shape)
    return (torch.from_numpy(q).float() - z) * s


def _bags(num, seed=1):
    """ids and offsets: bags of 0-9 ids, repeats, the table's ends, an empty bag first and last."""
    rng = np.random.default_rng(seed)
    sizes = [0] + list(rng.integers(0, 10, 30)) + [0]
    ids = rng.integers(0, num, int(sum(sizes))).astype(np.int64)
    ids[:3] = [0, num - 1, 0]
    return ids, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


@pytest.mark.parametrize("dim", [1, 7, 8, 9, 64, 65, 200])
@pytest.mark.parametrize("signed, per_row, zero", [(True, True, "zp"), (False, True, "zp"), (True, False, "zp"),
                                                   (True, True, "none"), (False, False, "zp"), (False, True, "none")],
                         ids=["int8-rows", "uint8-rows", "int8-table", "int8-no-zp", "uint8-table", "uint8-no-zp"])
def test_every_level_gives_torchs_bits_on_the_dequantized_table(dim, signed, per_row, zero):
    q, scale, zp = _table(50, dim, signed, per_row, zero)
    table = _dequantized(q, scale, zp)
    ids, offsets = _bags(50)
    psw = np.linspace(-2, 3, len(ids)).astype(np.float32)
    for mode, m in MODES.items():
        for weights in ([None, psw] if mode == "sum" else [None]):
            want = F.embedding_bag(torch.from_numpy(ids), table, torch.from_numpy(offsets), mode=mode,
                                   per_sample_weights=None if weights is None else torch.from_numpy(weights))
            for isa in SUPPORTED:
                for threads in (1, 2):
                    with at_isa(isa):
                        got = _C.embedding_bag(q, scale, zp, ids, offsets, weights, mode=m, nthreads=threads)
                    assert np.array_equal(got, want.numpy()), (mode, isa, threads, weights is None)
    for isa in SUPPORTED:
        with at_isa(isa):
            rows = _C.embedding_rows(q, scale, zp, ids, nthreads=2)
        assert np.array_equal(rows, table[torch.from_numpy(ids)].numpy())


@pytest.mark.parametrize("mode", list(MODES))
def test_padding_and_last_offset_match_across_levels_and_torch(mode):
    q, scale, zp = _table(40, 33, True, True, "zp")
    table = _dequantized(q, scale, zp)
    ids, offsets = _bags(40, seed=3)
    ids[::4] = 5  # padding ids, some bags all padding
    bounds = np.append(offsets[:-1], len(ids))  # include_last_offset: the end of the last bag
    psw = np.linspace(0.5, 1.5, len(ids)).astype(np.float32) if mode == "sum" else None
    results = []
    for isa in SUPPORTED:
        with at_isa(isa):
            results.append(_C.embedding_bag(q, scale, zp, ids, bounds, psw, mode=MODES[mode], padding_idx=5,
                                            include_last_offset=True))
    assert all(np.array_equal(r, results[0]) for r in results)
    want = F.embedding_bag(torch.from_numpy(ids), table, torch.from_numpy(bounds), mode=mode, padding_idx=5,
                           include_last_offset=True, per_sample_weights=None if psw is None else torch.from_numpy(psw))
    # torch's padding_idx path rounds a weight's product before the add (ours fuses it): within an ulp a step
    np.testing.assert_allclose(results[0], want.numpy(), rtol=1e-6, atol=1e-6)
    assert results[0].shape == (len(offsets) - 1, 33)


def test_a_last_offset_short_of_the_ids_is_refused():
    """torch's modes disagree there (sum stops at the last offset, mean divides by the ids to the end,
    max reads them): refused, as torch's docs say the last offset is the number of ids."""
    q, scale, zp = _table(6, 8, True, True, "zp")
    ids = np.arange(5, dtype=np.int64)
    with pytest.raises(RuntimeError, match="last offset must be the number of ids"):
        _C.embedding_bag(q, scale, zp, ids, np.array([0, 2, 3], np.int64), include_last_offset=True)
    with pytest.raises(RuntimeError, match="not a bag start"):  # (past the ids: any bag)
        _C.embedding_bag(q, scale, zp, ids, np.array([0, 2, 6], np.int64), include_last_offset=True)
    ok = _C.embedding_bag(q, scale, zp, ids, np.array([0, 2, 5], np.int64), include_last_offset=True)
    assert ok.shape == (2, 8)


def test_a_table_that_does_not_start_on_a_line_and_non_contiguous_inputs():
    q, scale, zp = _table(30, 24, False, True, "zp")
    raw = np.zeros(q.size + 5, np.uint8)
    shifted = raw[5:].reshape(q.shape)  # 5 bytes past a line: rows straddle two lines
    shifted[...] = q
    ids, offsets = _bags(30)
    want = _C.embedding_bag(q, scale, zp, ids, offsets, mode=1)
    assert np.array_equal(_C.embedding_bag(shifted, scale, zp, ids, offsets, mode=1), want)
    strided = np.repeat(ids, 2)[::2]  # a view with stride 16
    assert np.array_equal(_C.embedding_bag(q[:, :], scale, zp, strided, offsets, mode=1), want)


def test_bad_arguments_are_clear_errors():
    q, scale, zp = _table(10, 8, True, True, "zp")
    ids, offsets = np.array([1, 2, 3], np.int64), np.array([0, 2], np.int64)
    bag = _C.embedding_bag
    with pytest.raises(IndexError, match="index 10 .*position 1.* 10 rows"):
        bag(q, scale, zp, np.array([1, 10], np.int64), offsets)
    with pytest.raises(IndexError, match="index -1"):
        _C.embedding_rows(q, scale, zp, np.array([-1], np.int64))
    for bad in ([1, 2], [0, 3, 2], [0, 4]):
        with pytest.raises(RuntimeError, match="not a bag start"):
            bag(q, scale, zp, ids, np.array(bad, np.int64))
    with pytest.raises(RuntimeError, match="include_last_offset: the last offset"):
        bag(q, scale, zp, ids, np.zeros(0, np.int64), include_last_offset=True)
    with pytest.raises(ValueError, match="mode must be"):
        bag(q, scale, zp, ids, offsets, mode=3)
    with pytest.raises(ValueError, match="padding_idx"):
        bag(q, scale, zp, ids, offsets, padding_idx=-2)
    with pytest.raises(ValueError, match="mode 0"):
        bag(q, scale, zp, ids, offsets, np.ones(3, np.float32), mode=1)
    with pytest.raises(ValueError, match="per_sample_weights has 2 entries"):
        bag(q, scale, zp, ids, offsets, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="length 1 or 10"):
        bag(q, scale[:3], zp[:3], ids, offsets)
    with pytest.raises(TypeError):
        bag(q.astype(np.int16), scale, zp, ids, offsets)
    with pytest.raises(TypeError):
        bag(q, scale, zp, ids.astype(np.int32), offsets)
    with pytest.raises(TypeError):
        bag(q, scale, zp.astype(np.int64), ids, offsets)
    empty = bag(q, scale, zp, np.zeros(0, np.int64), np.zeros(3, np.int64))
    assert empty.shape == (3, 8) and not empty.any()


# (multiples of 32 columns: the AVX2 bag's accumulators in registers, 64 columns a pass, a last pass of 32)
@pytest.mark.parametrize("cols, group", [(1, 32), (31, 32), (33, 32), (100, 64), (64, None), (200, 96), (32, 32),
                                         (96, 32), (128, 64), (192, 96)])
def test_int4_tables_give_torchs_bits_on_their_dequantized_rows(cols, group):
    from mono_quant.formats.int4_weight import effective_group, quantize_int4_rows
    torch.manual_seed(0)
    weight = torch.randn(40, cols)
    packed, scale, zero, _, _ = quantize_int4_rows(weight, group, False, "rtn", False)
    g = effective_group(cols, group)
    q, s, z = packed.numpy(), scale.numpy(), zero.numpy()
    table = torch.from_numpy(_C.q4_dequantize(q, s, z, cols, g))  # the layer's dequantized table
    ids, offsets = _bags(40, seed=5)
    psw = np.linspace(-1, 2, len(ids)).astype(np.float32)
    for mode, m in MODES.items():
        for weights in ([None, psw] if mode == "sum" else [None]):
            want = F.embedding_bag(torch.from_numpy(ids), table, torch.from_numpy(offsets), mode=mode,
                                   per_sample_weights=None if weights is None else torch.from_numpy(weights))
            for isa in SUPPORTED:
                with at_isa(isa):
                    got = _C.embedding_bag(q, s, z, ids, offsets, weights, mode=m, group=g, cols=cols, nthreads=2)
                assert np.array_equal(got, want.numpy()), (mode, isa, weights is None)
    for isa in SUPPORTED:
        with at_isa(isa):
            assert np.array_equal(_C.embedding_rows(q, s, z, ids, group=g, cols=cols), table[torch.from_numpy(ids)].numpy())


def test_int4_arguments_are_checked():
    from mono_quant.formats.int4_weight import quantize_int4_rows
    packed, scale, zero, _, _ = quantize_int4_rows(torch.randn(4, 40), 32, False, "rtn", False)
    q, s, z = packed.numpy(), scale.numpy(), zero.numpy()
    ids, offsets = np.array([0, 3], np.int64), np.array([0], np.int64)
    with pytest.raises(ValueError, match="cols must be in 33..64"):
        _C.embedding_bag(q, s, z, ids, offsets, group=32, cols=32)
    with pytest.raises(ValueError, match="group must be a positive multiple of 32"):
        _C.embedding_bag(q, s, z, ids, offsets, group=48, cols=40)
    with pytest.raises(ValueError, match="group must be 0"):
        _C.embedding_bag(q, s, z, ids, offsets, group=-32, cols=40)
    for huge in (2 ** 63 - 32, 2 ** 31):  # (the groups' count overflowed to 0: [rows, 0] arrays were taken)
        for call in (lambda: _C.embedding_bag(q, s[:, :0], z[:, :0], ids, offsets, group=huge, cols=40),
                     lambda: _C.embedding_rows(q, s[:, :0], z[:, :0], ids, group=huge, cols=40)):
            with pytest.raises(ValueError, match="group must be a positive multiple of 32"):
                call()
    with pytest.raises(ValueError, match=r"scale must be \[4, 2\]"):
        _C.embedding_bag(q, s[:, :1], z, ids, offsets, group=32, cols=40)
    with pytest.raises(ValueError, match=r"zero_point must be \[4, 2\]"):
        _C.embedding_bag(q, s, z[:, :1], ids, offsets, group=32, cols=40)
    with pytest.raises(TypeError):
        _C.embedding_bag(q.astype(np.int8), s, z, ids, offsets, group=32, cols=40)


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(0, 20), st.integers(0, 40), st.integers(0, 30), st.data())
def test_property_any_ids_and_offsets_give_torchs_numbers_or_a_clear_error(num, dim, count, data):
    """Random tables (0 rows, 0 columns included), ids (out of range too) and offsets (not bag starts
    too): a valid call equals F.embedding_bag on the dequantized table, an invalid one raises."""
    signed = data.draw(st.booleans())
    q = np.asarray(data.draw(st.lists(st.integers(-128 if signed else 0, 127 if signed else 255),
                                      min_size=num * dim, max_size=num * dim)),
                   dtype=np.int8 if signed else np.uint8).reshape(num, dim)
    scale = np.full(max(num, 1) if data.draw(st.booleans()) else 1, 0.5, np.float32)
    zp = np.zeros_like(scale, dtype=np.int32) + 3
    if len(scale) != num and len(scale) != 1:
        scale, zp = scale[:1], zp[:1]
    ids = np.asarray(data.draw(st.lists(st.integers(-2, num + 1), min_size=count, max_size=count)), np.int64)
    offsets = np.asarray(sorted(data.draw(st.lists(st.integers(0, count), max_size=6))), np.int64)
    if data.draw(st.booleans()) and len(offsets):
        offsets[0] = 0
    mode = data.draw(st.sampled_from(list(MODES)))
    valid = (ids >= 0).all() and (ids < num).all() and (len(offsets) == 0 or offsets[0] == 0)
    call = lambda: _C.embedding_bag(q, scale, zp, ids, offsets, mode=MODES[mode], nthreads=data.draw(st.integers(1, 3)))  # noqa: E731
    if not valid or (len(scale) != 1 and len(scale) != num):
        with pytest.raises((IndexError, RuntimeError, ValueError)):
            call()
        return
    got = call()
    table = _dequantized(q, scale, zp) if num else torch.zeros(0, dim)
    want = F.embedding_bag(torch.from_numpy(ids), table, torch.from_numpy(offsets), mode=mode)
    assert np.array_equal(got, want.numpy())
