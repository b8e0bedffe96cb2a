"""A saved Hugging Face folder's config.json ``quantization_config.layers`` is untrusted as a
file's manifest is: an entry (or a field of one) of the wrong JSON type is a CheckpointError
naming the entry and the field at from_pretrained, never a TypeError / KeyError from deep inside
the quantizer; and the same check, on its own, accepts the list a quantized model writes."""
import copy
import json
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.integrations.hf_layer_list import check_config_layers  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model = hf_models.build("gpt2")
    model.save_pretrained(root / "float")
    cls = hf_models.model_class("gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = cls.from_pretrained(root / "float", quantization_config=mq.MonoQuantConfig(dtype="int8"))
    loaded.save_pretrained(root / "q")
    return cls, root / "q", json.loads((root / "q" / "config.json").read_text())


def _with_layers(saved, tmp_path, edit):
    cls, folder, config = saved
    out = tmp_path / "edited"
    out.mkdir()
    for f in folder.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    config = copy.deepcopy(config)
    edit(config["quantization_config"])
    (out / "config.json").write_text(json.dumps(config))
    return cls, out


def _set(field, value, index=0):
    def edit(qc):
        qc["layers"][index][field] = value
    return edit


def _set_tensor_spec(value):
    def edit(qc):
        tensors = qc["layers"][0]["tensors"]
        tensors[next(iter(tensors))] = value
    return edit


EDITS = {
    "layers-a-string": (lambda qc: qc.update(layers="fc"), "layers must be a list"),
    "layers-a-dict": (lambda qc: qc.update(layers={"a": 1}), "layers must be a list"),
    "entry-a-number": (lambda qc: qc["layers"].__setitem__(0, 7), "is not an object"),
    "entry-a-list": (lambda qc: qc["layers"].__setitem__(0, ["name"]), "is not an object"),
    "name-a-number": (_set("name", 3), "name must be a string"),
    "name-missing": (lambda qc: qc["layers"][0].pop("name"), "name must be a string"),
    "dtype-a-number": (_set("dtype", 8), "dtype must be a string"),
    "dtype-a-list": (_set("dtype", ["int8"]), "dtype must be a string"),
    "dtype-unknown": (_set("dtype", "int7"), "dtype 'int7' is not one of"),
    "shape-a-string": (_set("shape", "4x4"), "shape must be a list"),
    "tensors-a-list": (_set("tensors", ["weight_qdata"]), "tensors must be a non-empty object"),
    "tensor-spec-a-number": (_set_tensor_spec(5), "needs a dtype"),
    "tensor-dtype-a-list": (_set_tensor_spec({"dtype": ["int8"], "shape": [4]}), "needs a dtype"),
    "class-a-number": (_set("class", 1), "class must be a string"),
    "class-unknown": (_set("class", "os.system"), "unknown quantized module class"),
    "init_kwargs-a-list": (_set("init_kwargs", []), "init_kwargs must be an object"),
    "init_kwargs-wrong-width": (lambda qc: qc["layers"][0]["init_kwargs"].update(in_features="8"),
                                "in_features '8' is not an int"),
    "attrs-a-string": (_set("attrs", "x"), "attrs must be an object"),
    "aliases-a-number": (_set("aliases", 1), "aliases must be a list of names"),
    "axis-a-string": (_set("axis", "0"), "axis must be an int or null"),
    "scheme-a-number": (_set("scheme", 1), "scheme must be one of"),
    "duplicate-name": (lambda qc: qc["layers"].append(copy.deepcopy(qc["layers"][0])), "is listed twice"),
}


@pytest.mark.parametrize("edit,message", EDITS.values(), ids=EDITS.keys())
def test_a_layer_entry_of_the_wrong_type_is_a_clear_error(saved, tmp_path, edit, message):
    cls, folder = _with_layers(saved, tmp_path, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(mq.CheckpointError, match="quantization_config.layers") as info:
            cls.from_pretrained(folder)
    assert message in str(info.value)


def test_the_list_a_quantized_model_writes_passes_the_check(saved):
    cls, folder, config = saved
    layers = config["quantization_config"]["layers"]
    check_config_layers(copy.deepcopy(layers))
    again = cls.from_pretrained(folder)
    assert torch.isfinite(hf_models.forward(again, "gpt2")).all()


def _drop_bias(qc):
    entry = next(e for e in qc["layers"] if "bias" in e["tensors"])
    del entry["tensors"]["bias"]


UNLISTED = {
    "entry-removed": lambda qc: qc["layers"].pop(1),
    "bias-unlisted": _drop_bias,
}


@pytest.mark.parametrize("edit", UNLISTED.values(), ids=UNLISTED.keys())
def test_a_quantized_tensor_the_list_does_not_account_for_is_refused(saved, tmp_path, edit):
    """transformers would leave such a layer float and randomly initialized, or without its
    bias, and only warn: the quantizer refuses the folder instead."""
    cls, folder = _with_layers(saved, tmp_path, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(mq.CheckpointError, match="is in the file but no quantization_config.layers entry lists it"):
            cls.from_pretrained(folder)
