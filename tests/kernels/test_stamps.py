"""kernels/stamps.py: ``_C.tensors_unchanged`` against its Python twin on every change a
layer's cached kernel arguments must notice, and its errors on a malformed stamp."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mono_quant as mq
from mono_quant.formats.layer_cache import KERNEL_ARG_SOURCES
from mono_quant.kernels.stamps import make_stamp, tensors_unchanged, tensors_unchanged_py

SOURCES = KERNEL_ARG_SOURCES + ((None, "activations"),)


def _layer(bias=True):
    torch.manual_seed(0)
    return mq.quantize(nn.Sequential(nn.Linear(24, 20, bias=bias)), "int8").model[0]


def _holds(module, stamp) -> bool:
    c, py = tensors_unchanged(module.__dict__, stamp), tensors_unchanged_py(module.__dict__, stamp)
    assert c == py, "the C check and its Python twin disagree"
    return c


def _in_place(q):
    with torch.no_grad():
        q.weight_scale.mul_(2.0)


def _data_swap(q):
    q.weight_packed.data = q.weight_packed.data.clone()


def _shared_memory(q):
    q.weight_zero_point.share_memory_()


def _buffer_replaced(q):
    q.register_buffer("weight_colsum", q.weight_colsum.clone())


def _bias_replaced(q):
    q.bias = nn.Parameter(q.bias.detach().clone(), requires_grad=False)


def _bias_in_place(q):
    with torch.no_grad():
        q.bias.add_(1.0)


def _bias_removed(q):
    q.bias = None


def _attribute_set(q):
    q.set_activations(None)


def _moved_dtype(q):
    q.to(torch.float64)  # the bias becomes float64: a new tensor


CHANGES = [_in_place, _data_swap, _shared_memory, _buffer_replaced, _bias_replaced, _bias_in_place, _bias_removed,
           _attribute_set, _moved_dtype]


def test_an_unchanged_layer_holds():
    q = _layer()
    stamp = make_stamp(q, SOURCES)
    assert _holds(q, stamp)
    with torch.no_grad():
        q(torch.randn(3, 24))  # a forward changes nothing it depends on
    assert _holds(q, stamp)


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_every_change_is_seen(change):
    q = _layer()
    stamp = make_stamp(q, SOURCES)
    change(q)
    assert not _holds(q, stamp)


def test_a_plain_tensor_bias_assigned_later_is_seen():
    q = _layer(bias=False)
    stamp = make_stamp(q, SOURCES)
    assert _holds(q, stamp)
    q.bias = torch.ones(20)  # a plain attribute in __dict__ (no bias Parameter was registered)
    assert not _holds(q, stamp)
    stamp = make_stamp(q, SOURCES)
    q.bias.add_(1.0)
    assert not _holds(q, stamp)


def test_globals_and_missing_containers():
    namespace = {"_buffers": {}}
    module_globals = {"LIMIT": 1 << 20}

    class Holder:
        pass

    holder = Holder()
    holder.__dict__.update(namespace)
    stamp = make_stamp(holder, [(module_globals, "LIMIT"), ("_buffers", "absent"), ("_missing", "x")])
    assert _holds(holder, stamp)
    module_globals["LIMIT"] = 0
    assert not _holds(holder, stamp)


def test_inference_tensors_have_no_version_but_replacing_them_is_seen():
    q = _layer()
    with torch.inference_mode():
        scale = q.weight_scale.clone()
    q.register_buffer("weight_scale", scale)
    stamp = make_stamp(q, SOURCES)
    assert _holds(q, stamp)
    q.weight_scale.data = q.weight_scale.data.clone()
    assert not _holds(q, stamp)


@pytest.mark.parametrize("args", [
    (), ({},), ([], ()), ({}, []), ({}, ((None, "a"),)), ({}, ((None, "a", None, 1, None),)),
    ({}, ((None, "a", None, "1", 2),)),
])
def test_malformed_stamps_raise_type_error(args):
    with pytest.raises(TypeError):
        tensors_unchanged(*args)


_NAMES = ["a", "b", "c"]
_TENSORS = [torch.zeros(3), torch.ones(2), torch.arange(4)]
_VALUES = st.one_of(st.none(), st.sampled_from(_TENSORS), st.integers(-3, 3), st.sampled_from(["x", (1, 2)]))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(namespace=st.dictionaries(st.sampled_from(_NAMES + ["_buffers"]),
                                 st.one_of(_VALUES, st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=3)),
                                 max_size=4),
       entries=st.lists(st.tuples(st.sampled_from([None, "_buffers", "a"]), st.sampled_from(_NAMES), _VALUES,
                                  st.one_of(st.none(), st.integers(-1, 2)), st.integers(0, 2)), max_size=4),
       bump=st.booleans())
def test_property_agrees_with_the_python_twin(namespace, entries, bump):
    """Any namespace, any stamp of well-formed entries (tensor entries with made-up versions
    and pointers too): the C check and its twin agree, before and after a tensor is written."""
    stamp = tuple((w, n, v, ver if isinstance(v, torch.Tensor) else None, p if isinstance(v, torch.Tensor) else None)
                  for w, n, v, ver, p in entries)
    assert tensors_unchanged(namespace, stamp) == tensors_unchanged_py(namespace, stamp)
    real = tuple((w, n, v, v._version, v.data_ptr()) if isinstance(v, torch.Tensor) else (w, n, v, None, None)
                 for w, n, v, _, _ in stamp)
    assert tensors_unchanged(namespace, real) == tensors_unchanged_py(namespace, real)
    if bump:
        _TENSORS[0].add_(0)  # an in-place write: its version moves
        assert tensors_unchanged(namespace, real) == tensors_unchanged_py(namespace, real)
