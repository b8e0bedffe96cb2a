"""load_state_dict into a quantized model checks the weight tensors as mq.load checks a file's
(the formats' check_tensors, and the packed int8 buffers' check): a state_dict is untrusted
input too.  A bad scale or zero-point used to be taken silently (NaN or inf outputs, or wrong
numbers from a column sum that disagrees with the packed weight)."""
import math

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.errors import CheckpointError


def _qmodel(dtype, symmetric=True, conv=False):
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1))
    else:
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    scheme = {} if dtype == "fp16" else {"symmetric": symmetric}
    return mq.quantize(model, dtype=dtype, **scheme).model


def _state(qmodel):
    return {k: v.clone() for k, v in qmodel.state_dict().items()}


def _poke(t, index, value):
    t.view(-1)[index] = value
    return t


BAD_SCALES = [0.0, -1.0, math.nan, math.inf, 1e-45, 3e38]


@pytest.mark.parametrize("value", BAD_SCALES)
def test_int8_bad_scale_is_refused_and_the_layer_kept(value):
    qmodel = _qmodel("int8")
    sd = _state(qmodel)
    _poke(sd["2.weight_scale"], 5, value)
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"load_state_dict: layer '2' \(keys '2\.weight_\*'\): "
                                              r"weight_scale\[5\] = .*scales must be finite, > 0.*state_dict"):
        qmodel.load_state_dict(sd)
    for k, v in qmodel.state_dict().items():
        if k.startswith("2."):
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, 1e-8, 1e5])
def test_int4_bad_fp16_scale_is_refused(value):
    qmodel = _qmodel("int4")
    sd = _state(qmodel)
    _poke(sd["0.weight_scale"], 3, value)
    with pytest.raises(CheckpointError, match=r"layer '0'.*weight_scale\[3\] = .*scales must be finite"):
        qmodel.load_state_dict(sd)


def test_int4_float32_scale_is_checked_as_the_float16_it_becomes():
    """copy_ casts into the float16 buffer: 1e5 would be stored as inf."""
    qmodel = _qmodel("int4")
    sd = _state(qmodel)
    sd["0.weight_scale"] = _poke(sd["0.weight_scale"].float(), 0, 1e5)
    with pytest.raises(CheckpointError, match=r"weight_scale\[0\] = inf"):
        qmodel.load_state_dict(sd)


def test_int4_symmetric_zero_point_is_checked():
    qmodel = _qmodel("int4")
    sd = _state(qmodel)
    _poke(sd["2.weight_zero_point"], 1, 7)
    with pytest.raises(CheckpointError, match=r"layer '2'.*weight_zero_point\[1\] = 7: a symmetric int4 zero-point"):
        qmodel.load_state_dict(sd)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int8_zero_point_is_checked(symmetric):
    qmodel = _qmodel("int8", symmetric=symmetric)
    sd = _state(qmodel)
    _poke(sd["0.weight_zero_point"], 2, 1000)
    with pytest.raises(CheckpointError, match=r"layer '0'.*weight_zero_point\[2\] = 1000"):
        qmodel.load_state_dict(sd)


@pytest.mark.parametrize("conv", [False, True])
def test_int8_colsum_must_match_the_packed_weight(conv):
    qmodel = _qmodel("int8", conv=conv)
    sd = _state(qmodel)
    sd["0.weight_colsum"][0] += 1
    with pytest.raises(CheckpointError, match=r"layer '0'.*bad packed int8 weight: weight_colsum does not match"):
        qmodel.load_state_dict(sd)


def test_packed_bytes_changed_without_their_sums_are_refused():
    qmodel = _qmodel("int8")
    sd = _state(qmodel)
    sd["2.weight_packed"][0] += 1
    with pytest.raises(CheckpointError, match=r"layer '2'.*weight_colsum does not match"):
        qmodel.load_state_dict(sd)


def test_a_partial_load_is_checked_with_the_layer_it_lands_in():
    qmodel = _qmodel("int8")
    with pytest.raises(CheckpointError, match=r"weight_scale\[0\] = nan"):
        qmodel.load_state_dict({"0.weight_scale": torch.full((32,), math.nan)}, strict=False)
    qmodel.load_state_dict({"0.weight_scale": torch.full((32,), 0.5)}, strict=False)
    assert torch.equal(qmodel[0].weight_scale, torch.full((32,), 0.5))


def test_assign_keeps_the_checks():
    qmodel = _qmodel("int8")
    sd = _state(qmodel)
    _poke(sd["0.weight_scale"], 0, -2.0)
    with pytest.raises(CheckpointError, match=r"weight_scale\[0\] = -2"):
        qmodel.load_state_dict(sd, assign=True)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int4", "fp16"])
def test_valid_state_dicts_still_load(dtype):
    source, target = _qmodel(dtype), _qmodel(dtype)
    torch.manual_seed(1)
    x = torch.randn(3, 64)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1)
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_a_size_mismatch_is_refused_before_torch_copies_the_rest():
    qmodel = _qmodel("int8")
    sd = _state(qmodel)
    sd["0.weight_scale"] = torch.ones(7)
    with pytest.raises(CheckpointError, match=r"'0.weight_scale' has shape \[7\] in the state_dict, the layer holds "
                                              r"\[32\]"):
        qmodel.load_state_dict(sd)


# ---- all or nothing: a bad layer anywhere leaves every layer as it was -------------------------

def _deep_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16)))


def _perturbed(qmodel):
    """A valid state_dict of other weights (another seed), as a second checkpoint would be."""
    torch.manual_seed(7)
    other = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 16)))
    return _state(mq.quantize(other, dtype="int8").model)


@pytest.mark.parametrize("source", ["quantize", "load"])
def test_a_bad_last_layer_leaves_the_earlier_layers_unloaded(source, tmp_path):
    qmodel = mq.quantize(_deep_model(), dtype="int8").model
    if source == "load":
        mq.save(qmodel, tmp_path / "q.safetensors")
        qmodel = mq.load(tmp_path / "q.safetensors", _deep_model())
    sd = _perturbed(qmodel)
    _poke(sd["2.1.weight_scale"], 0, math.nan)  # the last layer bad, the first two good (and different)
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"layer '2\.1'"):
        qmodel.load_state_dict(sd)
    for k, v in qmodel.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was overwritten by a load that failed"
    qmodel.load_state_dict(_perturbed(qmodel))  # the valid state_dict loads, and changes the layers
    assert not torch.equal(qmodel.state_dict()["0.weight_scale"], before["0.weight_scale"])


def test_a_nested_load_checks_with_the_prefix_of_each_layer():
    qmodel = mq.quantize(_deep_model(), dtype="int8").model
    outer = nn.ModuleDict({"enc": qmodel})
    sd = {"enc." + k: v for k, v in _perturbed(qmodel).items()}
    _poke(sd["enc.2.0.weight_scale"], 1, -1.0)
    before = {k: v.clone() for k, v in outer.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"layer 'enc\.2\.0'"):
        outer.load_state_dict(sd)
    for k, v in outer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_each_layer_is_checked_once_per_load(monkeypatch):
    from mono_quant.modules import load_checks, whole_load
    qmodel = mq.quantize(_deep_model(), dtype="int8").model
    calls = []
    real = load_checks.check_loaded_weight

    def counting(module, state_dict, prefix, assign):
        calls.append(prefix)
        return real(module, state_dict, prefix, assign)

    monkeypatch.setattr(whole_load, "check_loaded_weight", counting)
    import mono_quant.modules.registry as registry
    monkeypatch.setattr(registry, "check_loaded_weight", counting)
    qmodel.load_state_dict(_perturbed(qmodel))
    assert sorted(calls) == ["0.", "2.0.", "2.1."]
    calls.clear()
    qmodel[2][1].load_state_dict({k[4:]: v for k, v in _perturbed(qmodel).items() if k.startswith("2.1.")})
    assert calls == [""]  # a load into one layer still checks it


def test_the_guard_survives_deepcopy_and_torch_save(tmp_path):
    import copy
    qmodel = copy.deepcopy(mq.quantize(_deep_model(), dtype="int8").model)
    sd = _perturbed(qmodel)
    _poke(sd["2.1.weight_scale"], 0, 0.0)
    before = qmodel.state_dict()["0.weight_scale"].clone()
    with pytest.raises(CheckpointError):
        qmodel.load_state_dict(sd)
    assert torch.equal(qmodel.state_dict()["0.weight_scale"], before)
    torch.save(qmodel, tmp_path / "m.pt")  # the hook pickles by reference (a module-level function)


def test_a_layer_under_two_names_is_checked_at_each_visit():
    """The second visit's tensors are judged with what the first visit loaded (a pre-check
    against the buffers before the load would pass a combination the layer then refuses)."""
    from mono_quant import kernels
    from mono_quant.kernels.layout import unpack_int8_rows
    torch.manual_seed(0)
    qm = mq.quantize(nn.Sequential(nn.Linear(32, 16)), dtype="int8").model
    qm.add_module("b", qm[0])
    layer = qm[0]
    w = unpack_int8_rows(layer.weight_packed, 1, 16, 32)[0].to(torch.int32)
    moved = int(w[0, 0]) + 128  # a -128 in channel 0, the column sum kept by raising others
    w[0, 0] = -128
    for j in range(1, 32):
        step = min(127 - int(w[0, j]), moved)
        w[0, j] += step
        moved -= step
    assert moved == 0
    packed, colsum, has_m128 = kernels.pack_int8(w.to(torch.int8))
    assert has_m128 and torch.equal(colsum, layer.weight_colsum)
    flagged, unflagged = layer.weight_packed_info.clone(), layer.weight_packed_info.clone()
    flagged[3] = 1
    sd = {"0.weight_packed": packed, "0.weight_packed_info": flagged, "b.weight_packed_info": unflagged}
    with pytest.raises(CheckpointError, match=r"layer 'b'"):
        qm.load_state_dict(sd, strict=False)


def test_a_load_that_raises_part_way_keeps_no_checkpoint_tensor_alive():
    import gc
    import weakref
    qmodel = mq.quantize(_deep_model(), dtype="int8").model

    def refuse(*_args):
        raise RuntimeError("a later pre-hook failed")

    qmodel[2][1].register_load_state_dict_pre_hook(refuse) if hasattr(nn.Module, "register_load_state_dict_pre_hook") \
        else qmodel[2][1]._register_load_state_dict_pre_hook(refuse)
    sd = _perturbed(qmodel)
    probe = weakref.ref(sd["0.weight_packed"])
    with pytest.raises(RuntimeError, match="later pre-hook"):
        qmodel.load_state_dict(sd)
    del sd
    gc.collect()
    assert probe() is None


@pytest.mark.parametrize("other", [dict(dtype="int4", group_size=64), dict(dtype="int8"),
                                   dict(dtype="int4", group_size=128, width=128)],
                         ids=["group-size", "format", "width"])
def test_a_state_dict_of_other_shapes_is_refused_before_any_copy(other):
    """torch copied every entry of the right shape and raised only after the whole load: codes of one
    group size with the scales of another (the error caught: 4x the error against float)."""
    other = dict(other)
    width = other.pop("width", 256)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64)).eval()
    torch.manual_seed(1)
    source = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, 64)).eval()
    qmodel = mq.quantize(model, "int4", group_size=128).model
    x = torch.randn(2, 256)
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    with torch.no_grad():
        y = qmodel(x)
    state = mq.quantize(source, **other).model.state_dict()
    with pytest.raises(CheckpointError, match=r"load_state_dict: layer '0'.*nothing was loaded"):
        qmodel.load_state_dict(state)
    assert all(torch.equal(v, before[k]) for k, v in qmodel.state_dict().items())
    with torch.no_grad():
        assert torch.equal(qmodel(x), y)
    with pytest.raises(CheckpointError, match="has shape"):  # (a single layer: its own shape check)
        qmodel[0].load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("0.")})


def test_a_non_strict_load_of_a_float_state_dict_leaves_the_quantized_layers():
    """(Other names, not other shapes: torch's strict=False reports them, as before.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 8)).eval()
    qmodel = mq.quantize(model, "int8", exclude=["2"]).model
    result = qmodel.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys and "0.weight" in result.unexpected_keys
