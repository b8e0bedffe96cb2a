"""nn.EmbeddingBag (recommendation models keep most of their bytes in these tables) is quantized with
embeddings=True, as nn.Embedding is; it was listed as "unsupported type".  A call is
nn.EmbeddingBag's on the dequantized table in every mode and argument form: bit for bit where torch
runs its fused kernel (no padding_idx), within an ulp a step where it does not (torch then rounds a
per-sample weight's product before the add; csrc/embedding.c always fuses it); the table saves and
loads, compiles and exports; bad calls fail as torch's do."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.io import CheckpointError
from mono_quant.io.manifest import METADATA_KEY
from mono_quant.modules import QuantizedEmbeddingBag
from safetensors_bytes import split_file, write_file

FORMATS = [("int8", {}), ("uint8", {}), ("int4", {"group_size": 32}), ("fp16", {}), ("bf16", {})]


def _bag(mode="sum", padding_idx=None, include_last_offset=False, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.EmbeddingBag(60, 64, mode=mode, padding_idx=padding_idx,
                           include_last_offset=include_last_offset).to(dtype).eval()


def _quantized(bag, dtype="int8", **kw):
    qmodel, skipped = mq.quantize(nn.Sequential(bag), dtype=dtype, embeddings=True, **kw)
    assert skipped == []
    assert isinstance(qmodel[0], QuantizedEmbeddingBag) and qmodel[0].weight_format == dtype
    return qmodel[0]


def _calls(include_last_offset):
    """(input, offsets, per_sample_weights or None): bags of several sizes, an empty one, ids at the
    table's ends and repeated, int64 and int32, fixed-size bags of a 2-D input."""
    idx = torch.tensor([1, 0, 59, 7, 7, 30, 2, 3, 58])
    offsets = torch.tensor([0, 3, 3, 6] + ([9] if include_last_offset else []))
    psw = torch.linspace(-1.5, 2.0, len(idx))
    calls = [(idx, offsets, None), (idx.int(), offsets.int(), None), (idx, offsets, psw)]
    if not include_last_offset:
        calls += [(idx[:8].reshape(2, 4), None, None), (idx[:8].reshape(4, 2), None, psw[:8].reshape(4, 2))]
    return calls


@pytest.mark.parametrize("dtype, kw", FORMATS, ids=[f[0] for f in FORMATS])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx, include_last_offset", [(None, False), (7, False), (0, True)],
                         ids=["plain", "padding-7", "padding-0-last-offset"])
def test_a_call_is_embedding_bag_on_the_dequantized_table(dtype, kw, mode, padding_idx, include_last_offset):
    bag = _bag(mode, padding_idx, include_last_offset)
    q = _quantized(bag, dtype, **kw)
    table = q.dequantized_weight()
    for idx, offsets, psw in _calls(include_last_offset):
        if psw is not None and mode != "sum":
            continue  # (torch: per_sample_weights in mode 'sum' only; refused below)
        want = F.embedding_bag(idx, table, offsets, mode=mode, per_sample_weights=psw,
                               include_last_offset=include_last_offset, padding_idx=padding_idx)
        got = q(idx, offsets, psw)
        assert got.dtype == torch.float32
        if psw is not None and padding_idx is not None:  # (torch's unfused path)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(got, want)
        err = (got - bag(idx, offsets, psw)).abs().max()
        assert err < (0.5 if dtype == "int4" else 0.05)


def test_off_by_default_and_max_norm_stays_float_with_the_reason():
    bag = _bag()
    qmodel, skipped = mq.quantize(nn.Sequential(bag), dtype="int8")
    assert type(qmodel[0]) is nn.EmbeddingBag
    assert [(s.name, s.reason) for s in skipped] == [("0", "embedding tables are quantized only with embeddings=True")]
    normed = nn.EmbeddingBag(10, 8, max_norm=1.0)
    qmodel, skipped = mq.quantize(nn.Sequential(normed), dtype="int8", embeddings=True)
    assert type(qmodel[0]) is nn.EmbeddingBag and "max_norm" in skipped[0].reason


def test_the_callers_table_is_untouched_and_bf16_tables_return_bf16():
    bag = _bag(dtype=torch.bfloat16)
    before = bag.weight.detach().clone()
    q = _quantized(bag, "int8")
    assert torch.equal(bag.weight, before) and type(bag.weight) is nn.Parameter
    idx, offsets = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1])
    got = q(idx, offsets)
    assert got.dtype == torch.bfloat16  # (summed in float32, then rounded once)
    want = F.embedding_bag(idx, q.dequantized_weight().float(), offsets, mode="sum").bfloat16()
    assert torch.equal(got, want)
    with pytest.raises(RuntimeError):  # torch's rule: per_sample_weights of the table's dtype
        q(idx, offsets, torch.ones(4))


def test_gradients_reach_the_per_sample_weights():
    q = _quantized(_bag("sum"), "int8")
    idx, offsets = torch.tensor([4, 9, 9, 20, 33]), torch.tensor([0, 2])
    psw = torch.rand(5, requires_grad=True)
    q(idx, offsets, psw).square().sum().backward()
    ref = psw.detach().clone().requires_grad_()
    F.embedding_bag(idx, q.dequantized_weight(), offsets, mode="sum", per_sample_weights=ref).square().sum().backward()
    torch.testing.assert_close(psw.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_bad_calls_fail_as_torchs_do():
    q, bag = _quantized(_bag("mean"), "int8"), _bag("mean")
    for call, error in [
        (lambda m: m(torch.tensor([1, 60]), torch.tensor([0])), RuntimeError),      # an id past the table
        (lambda m: m(torch.tensor([1, -1]), torch.tensor([0])), RuntimeError),      # a negative id
        (lambda m: m(torch.tensor([1.0, 2.0]), torch.tensor([0])), RuntimeError),   # float ids
        (lambda m: m(torch.tensor([[1, 2]]), torch.tensor([0])), ValueError),       # 2-D with offsets
        (lambda m: m(torch.tensor([1, 2])), ValueError),                            # 1-D without offsets
        (lambda m: m(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2)), NotImplementedError),  # psw, mean
        (lambda m: m(torch.tensor([1, 2, 3]), torch.tensor([0.0, 1.7])), RuntimeError),  # float offsets
        (lambda m: m(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(3)), ValueError),  # psw's shape, mean
        (lambda m: m(torch.zeros(3, 0, dtype=torch.long)), RuntimeError),  # 2-D bags of no ids
    ]:
        with pytest.raises(error):
            call(bag)
        with pytest.raises(error):
            call(q)


def test_save_load_and_state_dict_keep_the_bits(tmp_path):
    bag = _bag("mean", padding_idx=5, include_last_offset=True)
    qmodel, _ = mq.quantize(nn.Sequential(bag, nn.Linear(64, 3)), dtype="int4", embeddings=True, group_size=32)
    idx, offsets = torch.tensor([5, 1, 2, 5, 40]), torch.tensor([0, 2, 5])
    want = qmodel[1](qmodel[0](idx, offsets))
    skeleton = nn.Sequential(nn.EmbeddingBag(60, 64, mode="mean", padding_idx=5, include_last_offset=True),
                             nn.Linear(64, 3))
    loaded = mq.load(mq.save(qmodel, tmp_path / "bag.safetensors"), model=skeleton)
    assert isinstance(loaded[0], QuantizedEmbeddingBag)
    assert (loaded[0].mode, loaded[0].padding_idx, loaded[0].include_last_offset) == ("mean", 5, True)
    assert torch.equal(loaded[1](loaded[0](idx, offsets)), want)
    fresh, _ = mq.quantize(nn.Sequential(_bag("mean", 5, True), nn.Linear(64, 3)), dtype="int4", embeddings=True,
                           group_size=32)
    fresh.load_state_dict(qmodel.state_dict())
    assert torch.equal(fresh[1](fresh[0](idx, offsets)), want)


@pytest.mark.parametrize("edit, message", [
    (lambda kw: kw.update(mode="median"), "mode 'median'"),
    (lambda kw: kw.update(include_last_offset="yes"), "include_last_offset"),
    (lambda kw: kw.update(padding_idx=60), "padding_idx"),
    (lambda kw: kw.update(num_embeddings=61), "shape"),
])
def test_a_file_that_lies_about_the_bag_is_refused(tmp_path, edit, message):
    path = mq.save(nn.Sequential(_quantized(_bag(), "int8")), tmp_path / "bag.safetensors")
    header, data = split_file(path)
    manifest = json.loads(header["__metadata__"][METADATA_KEY])
    edit(next(layer for layer in manifest["layers"] if layer["name"] == "0")["init_kwargs"])
    header["__metadata__"][METADATA_KEY] = json.dumps(manifest)
    write_file(path, header, data)
    with pytest.raises(CheckpointError, match=message):
        mq.load(path)
    with pytest.raises(CheckpointError, match=message):
        mq.load(path, model=nn.Sequential(_bag()))


@pytest.mark.parametrize("dtype, kw", [("int8", {}), ("int4", {"group_size": 32}), ("fp16", {})],
                         ids=["int8", "int4", "fp16"])
def test_compiled_and_exported_graphs_give_eager_bits_on_new_ids(dtype, kw):
    q = _quantized(_bag("sum", padding_idx=3), dtype, **kw)
    idx, offsets = torch.tensor([1, 3, 5, 7, 9, 11]), torch.tensor([0, 2, 3])
    other, other_offsets = torch.tensor([50, 3, 3, 2, 8, 0]), torch.tensor([0, 1, 4])
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(idx, offsets), q(idx, offsets))
    assert torch.equal(compiled(other, other_offsets), q(other, other_offsets))
    exported = torch.export.export(q, (idx, offsets)).module()
    assert torch.equal(exported(other, other_offsets), q(other, other_offsets))


@pytest.mark.parametrize("skeleton, message", [
    (nn.EmbeddingBag(60, 64, mode="sum"), "mode"),
    (nn.EmbeddingBag(60, 64, mode="mean", padding_idx=2), "padding_idx"),
    (nn.EmbeddingBag(60, 64, mode="mean", include_last_offset=True), "include_last_offset"),
    (nn.EmbeddingBag(61, 64, mode="mean"), "num_embeddings|shape"),
])
def test_a_model_of_another_bag_is_refused_at_load(tmp_path, skeleton, message):
    path = mq.save(nn.Sequential(_quantized(_bag("mean"), "int8")), tmp_path / "bag.safetensors")
    with pytest.raises(CheckpointError, match=message):
        mq.load(path, model=nn.Sequential(skeleton))


def test_a_table_loaded_over_the_layer_is_the_one_read_next():
    """The C kernel's views of the buffers are kept per layer: a load_state_dict (copied in place) or a
    replaced buffer must be what the next call reads."""
    q, other = _quantized(_bag("sum"), "int8"), _quantized(nn.EmbeddingBag(60, 64, mode="sum"), "int8")
    idx, offsets = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])
    before = q(idx, offsets)
    q.load_state_dict(other.state_dict())
    assert torch.equal(q(idx, offsets), other(idx, offsets)) and not torch.equal(q(idx, offsets), before)
    q.weight_scale = q.weight_scale * 2  # (a new tensor)
    assert torch.equal(q(idx, offsets), other(idx, offsets) * 2)


@pytest.mark.parametrize("dtype, kw", FORMATS, ids=[f[0] for f in FORMATS])
def test_a_last_offset_short_of_the_ids_is_refused_in_every_format(dtype, kw):
    """torch's own modes read it three ways (sum stops there, mean divides by the ids to the end, max
    reads them): refused, whatever the format (the C kernel and torch's path alike)."""
    q = _quantized(_bag("mean", include_last_offset=True), dtype, **kw)
    with pytest.raises(RuntimeError, match="last offset must be the number of ids"):
        q(torch.tensor([1, 3, 2, 5, 7, 9]), torch.tensor([0, 2, 4]))
    assert q(torch.tensor([1, 3, 2, 5, 7, 9]), torch.tensor([0, 2, 6])).shape == (2, 64)


def test_symmetric_tables_skip_their_zero_points_and_an_edit_brings_them_back():
    """A symmetric int8 table's zero-points are all 0 and the kernel skips reading them (kept per layer);
    an asymmetric table's, or zero-points written in place later, are read."""
    from mono_quant.formats.embedding_table import kept_table
    idx, offsets = torch.tensor([1, 2, 3, 4, 59]), torch.tensor([0, 2])
    sym = _quantized(_bag("sum"), "int8")
    assert kept_table(sym)[0][2] is None
    asym = mq.quantize(nn.Sequential(_bag("sum")), dtype="int8", embeddings=True, symmetric=False).model[0]
    assert asym.weight_zero_point.any() and kept_table(asym)[0][2] is not None
    for q in (sym, asym):
        assert torch.equal(q(idx, offsets), F.embedding_bag(idx, q.dequantized_weight(), offsets, mode="sum"))
    with torch.no_grad():
        sym.weight_zero_point[2] = 5  # in place
    assert kept_table(sym)[0][2] is not None
    assert torch.equal(sym(idx, offsets), F.embedding_bag(idx, sym.dequantized_weight(), offsets, mode="sum"))
