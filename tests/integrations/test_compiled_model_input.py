"""A model wrapped by torch.compile goes in as the model it wraps: include / exclude, the skipped
list and a saved file name its layers as that model does (not ``_orig_mod.0``), the file loads into
the plain model or a compiled one, and quantize() / load() give the quantized model back compiled
with the wrapper's settings. The caller's compiled model is not modified."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant.strictness import NothingQuantizedWarning


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).eval()


X = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def compiled_result():
    wrapper = torch.compile(_net(), backend="eager")  # (eager backend: dynamo's capture, no codegen)
    return wrapper, mq.quantize(wrapper, "int8", exclude=["2"])


def test_layers_are_named_as_in_the_wrapped_model(compiled_result):
    wrapper, result = compiled_result
    assert [s.name for s in result.skipped] == ["2"]
    assert type(result.model._orig_mod[0]).__name__ == "QuantizedLinear"
    assert type(wrapper._orig_mod[0]) is nn.Linear  # the caller's model untouched


def test_the_result_is_compiled_with_the_wrappers_settings(compiled_result):
    wrapper, result = compiled_result
    assert type(result.model) is type(wrapper) and result.model.dynamo_ctx is wrapper.dynamo_ctx
    with torch.no_grad():
        assert torch.equal(result.model(X), result.model._orig_mod(X))


@pytest.mark.parametrize("what", ["result", "model"])
def test_a_saved_file_has_the_plain_names_and_loads_into_either(compiled_result, tmp_path, what):
    wrapper, result = compiled_result
    path = mq.save(result if what == "result" else result.model, tmp_path / "q.safetensors")
    assert not any(key.startswith("_orig_mod") for key in mq.load(path))
    expected = result.model._orig_mod(X)
    plain = mq.load(path, model=_net())
    compiled = mq.load(path, model=torch.compile(_net(), backend="eager"))
    assert type(plain) is nn.Sequential and type(compiled) is type(wrapper)
    with torch.no_grad():
        assert torch.equal(plain(X), expected) and torch.equal(compiled(X), expected)


def test_static_int8_of_a_compiled_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    wrapper = torch.compile(model, backend="eager")
    result = mq.quantize(wrapper, "int8", activations="static", calibration=torch.randn(128, 1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    assert type(result.model) is type(wrapper)
    with torch.no_grad():
        assert torch.equal(result.model(x), result.model._orig_mod(x))


def test_a_state_dict_of_a_compiled_model_with_the_compiled_model():
    wrapper = torch.compile(_net(), backend="eager")
    result = mq.quantize(wrapper.state_dict(), "int8", model=wrapper)  # keys under _orig_mod.
    assert type(result.model) is type(wrapper)
    with torch.no_grad():
        assert torch.equal(result.model._orig_mod(X), mq.quantize(_net(), "int8").model(X))


def test_patterns_written_with_the_wrappers_prefix_still_select():
    # (before, they had to be: include=["_orig_mod.0"]; a config file's stale one must not go unmatched)
    result = mq.quantize(torch.compile(_net(), backend="eager"), "int8", exclude=["_orig_mod.2"])
    assert [s.name for s in result.skipped] == ["2"]


def test_warnings_name_the_callers_line():
    with pytest.warns(NothingQuantizedWarning) as record:
        mq.quantize(torch.compile(nn.Sequential(nn.ReLU()), backend="eager"), "int8")
    assert {w.filename for w in record} == {__file__}


def test_a_file_saved_from_a_compiled_model_by_an_older_version_loads_into_one(tmp_path):
    # older versions saved the wrapper's names (_orig_mod.0, ...): such a file loads into a compiled skeleton
    wrapper = torch.compile(_net(), backend="eager")
    qmodel = mq.quantize(_net(), "int8").model
    old_style = torch.compile(qmodel, backend="eager")
    path = tmp_path / "old.safetensors"
    mq.save(nn.ModuleDict({"_orig_mod": qmodel}), path)  # (what they wrote: the wrapper's names)
    assert all(key.startswith("_orig_mod.") for key in mq.load(path))
    loaded = mq.load(path, model=wrapper)
    with torch.no_grad():
        assert torch.equal(loaded(X), old_style._orig_mod(X))
