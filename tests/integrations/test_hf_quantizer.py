"""MonoQuantConfig through transformers' from_pretrained / save_pretrained (tiny
models from configs with random weights, saved to tmp folders: no downloads)."""
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402

def _cases():
    for kind in ("bert", "gpt2", "llama"):
        for dtype in ("int8", "int4", "fp16"):
            yield pytest.param(kind, dtype, id=f"{kind}-{dtype}")


@pytest.fixture(scope="module")
def float_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in ("bert", "gpt2", "llama"):
        model = hf_models.build(kind)
        model.save_pretrained(root / kind)
        out[kind] = (model, root / kind)
    return out


@pytest.mark.parametrize("kind,dtype", list(_cases()))
def test_quantize_while_loading_then_save_and_reload(float_folders, tmp_path, kind, dtype):
    model, folder = float_folders[kind]
    cls = hf_models.model_class(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = cls.from_pretrained(folder, quantization_config=mq.MonoQuantConfig(dtype=dtype))
        expected = hf_models.forward(mq.quantize(model, dtype=dtype).model, kind)
    assert torch.equal(hf_models.forward(loaded, kind), expected)  # what quantize(model) gives
    loaded.save_pretrained(tmp_path / "q")
    config = loaded.config.quantization_config.to_dict()
    assert config["quant_method"].startswith("mono_quant (run `import mono_quant.integrations.transformers`")
    assert config["layers"]
    again = cls.from_pretrained(tmp_path / "q")
    assert torch.equal(hf_models.forward(again, kind), expected)  # bit-identical after the round trip
    assert sum(t.numel() * t.element_size() for t in again.state_dict().values()) < \
        sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_config_options_are_validated_and_serialized():
    with pytest.raises(mq.ConfigError):
        mq.MonoQuantConfig(dtype="int3")
    with pytest.raises(TypeError, match="globs"):
        mq.MonoQuantConfig(exclude=[torch.nn.Linear])
    cfg = mq.MonoQuantConfig(dtype="int4", group_size=64, exclude=["lm_head"], activations=None)
    again = type(cfg).from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict() and again.quantize_options()["group_size"] == 64


def test_reduce_range_reaches_the_layers_and_survives_the_round_trip(float_folders, tmp_path):
    model, folder = float_folders["bert"]
    cls = hf_models.model_class("bert")
    with pytest.raises(mq.ConfigError, match="reduce_range"):
        mq.MonoQuantConfig(dtype="int4", reduce_range=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = cls.from_pretrained(folder, quantization_config=mq.MonoQuantConfig(reduce_range=True))
        expected = hf_models.forward(mq.quantize(model, dtype="int8", reduce_range=True).model, "bert")
    assert torch.equal(hf_models.forward(loaded, "bert"), expected)
    loaded.save_pretrained(tmp_path / "q")
    again = cls.from_pretrained(tmp_path / "q")
    flags = {m.reduce_range for m in again.modules() if isinstance(m, mq.QuantizedLinear)}
    assert flags == {True}
    assert torch.equal(hf_models.forward(again, "bert"), expected)


def test_loading_a_non_mono_quant_config_fails_clearly():
    from mono_quant.integrations.transformers import MonoQuantHfQuantizer

    with pytest.raises(mq.CheckpointError, match="lists no quantized layers"):
        MonoQuantHfQuantizer(mq.MonoQuantConfig(), pre_quantized=True)


def test_package_imports_without_transformers():
    import subprocess
    import sys

    code = ("import sys; sys.modules['transformers'] = None\n"
            "import mono_quant, torch\n"
            "mono_quant.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)))\n"
            "assert 'transformers' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "assert not hasattr(mono_quant, 'MonoQuantConfig')\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_embeddings_with_tied_head_is_refused_clearly(float_folders, tmp_path):
    _, folder = float_folders["gpt2"]
    with pytest.raises(ValueError, match="tied"):
        hf_models.model_class("gpt2").from_pretrained(folder, quantization_config=mq.MonoQuantConfig(embeddings=True))


def test_embeddings_quantized_while_loading_untied(float_folders, tmp_path):
    model, folder = float_folders["llama"]
    cls = hf_models.model_class("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = cls.from_pretrained(folder, quantization_config=mq.MonoQuantConfig(dtype="int8", embeddings=True))
        expected = hf_models.forward(mq.quantize(model, embeddings=True).model, "llama")
    assert type(loaded.model.embed_tokens).__name__ == "QuantizedEmbedding"
    loaded.save_pretrained(tmp_path / "e")
    assert torch.equal(hf_models.forward(cls.from_pretrained(tmp_path / "e"), "llama"), expected)


def test_saved_folder_missing_a_quantized_tensor_is_refused(float_folders, tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = float_folders["llama"]
    cls = hf_models.model_class("llama")
    cls.from_pretrained(folder, quantization_config=mq.MonoQuantConfig(dtype="int4")).save_pretrained(tmp_path / "q")
    tensors = load_file(str(tmp_path / "q" / "model.safetensors"))
    del tensors["model.layers.0.mlp.up_proj.weight_scale"]
    save_file(tensors, str(tmp_path / "q" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(mq.CheckpointError, match="up_proj.weight_scale is missing"):
        cls.from_pretrained(tmp_path / "q")


def _saved_gpt2_int8(float_folders, tmp_path):
    _, folder = float_folders["gpt2"]
    cls = hf_models.model_class("gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = cls.from_pretrained(folder, quantization_config=mq.MonoQuantConfig(dtype="int8"))
    loaded.save_pretrained(tmp_path / "q")
    return cls, loaded, tmp_path / "q"


def test_without_the_import_transformers_warning_says_what_to_do(float_folders, tmp_path):
    # transformers 5.24 has no hook to load a quantizer by itself: it skips the unknown method with
    # a warning printing the saved quant_method, which names the import to add
    import subprocess
    import sys

    _, _, folder = _saved_gpt2_int8(float_folders, tmp_path)
    code = ("import sys, transformers\n"
            f"m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
            "assert 'mono_quant' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Unknown quantization type, got mono_quant (run `import mono_quant.integrations.transformers` " \
           "before from_pretrained; pip install mono-quant)" in run.stdout + run.stderr


def test_folder_saved_with_the_plain_method_name_still_loads(float_folders, tmp_path):
    import json

    cls, loaded, folder = _saved_gpt2_int8(float_folders, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["quant_method"] = "mono_quant"  # what folders saved before carry
    (folder / "config.json").write_text(json.dumps(config))
    again = cls.from_pretrained(folder)
    assert type(again.transformer.h[0].attn.c_attn).__name__ == "QuantizedGPT2Conv1D"
    assert torch.equal(hf_models.forward(again, "gpt2"), hf_models.forward(loaded, "gpt2"))
