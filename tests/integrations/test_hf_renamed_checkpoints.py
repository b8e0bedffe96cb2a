"""Architectures whose checkpoint names are not the model's (transformers 5 renames them on
load and back on save: ViT, Dinov2, Swin, ...; a CLIPVisionModel of a full CLIP folder; a GPT-2
folder stored without ``transformer.``): a quantized model goes through save_pretrained /
from_pretrained, and a float folder through quantize_checkpoint / mq.load, as any other does.
A checkpoint whose tensors transformers merges / splits on load (a WeightConverter) is refused,
naming the conversion.  Tiny configs, random weights."""
import os
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402

_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
# model name -> its name in the checkpoint (what save_pretrained writes) of one quantized layer
ARCHS = {
    "vit": (lambda: transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=8, **_SMALL)),
            "layers.0.attention.q_proj", "encoder.layer.0.attention.attention.query"),
    "dinov2": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(image_size=16, patch_size=8, **_SMALL)),
               "encoder.layer.0.attention.q_proj", "encoder.layer.0.attention.attention.query"),
    "swin": (lambda: transformers.SwinModel(transformers.SwinConfig(image_size=16, patch_size=4, embed_dim=16,
                                                                    depths=[1, 1], num_heads=[2, 2], window_size=2)),
             "encoder.layers.0.blocks.0.attention.q_proj", "encoder.layers.0.blocks.0.attention.self.query"),
}
MODES = {"int8": dict(dtype="int8"), "int8-weight-only": dict(dtype="int8", activations=None),
         "int4": dict(dtype="int4")}


@pytest.fixture(autouse=True)
def _quiet():
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    hf_logging.set_verbosity(verbosity)


def _build(arch, seed=0):
    torch.manual_seed(seed)
    return ARCHS[arch][0]().eval()


def _pixels(batch=2, size=16):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _out(model, **inputs):
    with torch.no_grad():
        out = model(**(inputs or {"pixel_values": _pixels()}))
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _quantized(model):
    return {n: type(m).__name__ for n, m in model.named_modules() if type(m).__name__.startswith("Quantized")}


def _file_keys(folder):
    keys = set()
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as f:
                keys |= set(f.keys())
    return keys


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_quantize_save_pretrained_from_pretrained(tmp_path, arch, mode):
    qmodel, _ = mq.quantize(_build(arch), **MODES[mode])
    qmodel.save_pretrained(tmp_path)
    again = type(qmodel).from_pretrained(tmp_path).eval()
    assert _quantized(again) == _quantized(qmodel) and len(_quantized(qmodel)) > 5
    assert torch.equal(_out(again), _out(qmodel))
    _, model_name, checkpoint_name = ARCHS[arch]
    keys = _file_keys(tmp_path)  # the checkpoint's names, as transformers writes a float model's
    assert f"{checkpoint_name}.weight_scale" in keys
    assert not any(k.startswith(model_name + ".") for k in keys)


def test_from_pretrained_with_config_then_save_and_reload(tmp_path):
    model = _build("vit")
    model.save_pretrained(tmp_path / "float")
    loaded = transformers.ViTModel.from_pretrained(tmp_path / "float",
                                                   quantization_config=mq.MonoQuantConfig(dtype="int8")).eval()
    assert torch.equal(_out(loaded), _out(mq.quantize(model, dtype="int8").model))
    loaded.save_pretrained(tmp_path / "q")
    again = transformers.ViTModel.from_pretrained(tmp_path / "q").eval()
    assert _quantized(again) == _quantized(loaded)
    assert torch.equal(_out(again), _out(loaded))


def test_clip_vision_model_of_a_full_clip_folder(tmp_path):
    config = transformers.CLIPConfig(text_config=dict(vocab_size=64, **_SMALL), projection_dim=16,
                                     vision_config=dict(image_size=16, patch_size=8, **_SMALL))
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(tmp_path / "clip")
    vision = transformers.CLIPVisionModel.from_pretrained(tmp_path / "clip").eval()
    qmodel = mq.quantize(vision, dtype="int8").model
    qmodel.save_pretrained(tmp_path / "q")
    assert all(k.startswith("vision_model.") for k in _file_keys(tmp_path / "q"))  # the prefix is put back
    again = transformers.CLIPVisionModel.from_pretrained(tmp_path / "q").eval()
    assert _quantized(again) == _quantized(qmodel)
    assert torch.equal(_out(again), _out(qmodel))


def _saved_vit(folder, dtype="int8"):
    qmodel = mq.quantize(_build("vit"), dtype=dtype).model
    qmodel.save_pretrained(folder)
    return os.path.join(folder, "model.safetensors")


def test_a_missing_tensor_is_named_by_the_model(tmp_path):
    path = _saved_vit(tmp_path)
    tensors = load_file(path)
    del tensors["encoder.layer.0.attention.attention.query.weight_scale"]
    tensors["encoder.layer.0.attention.attention.key.weight_packed_x"] = \
        tensors.pop("encoder.layer.0.attention.attention.key.weight_packed")
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(mq.CheckpointError) as err:
        transformers.ViTModel.from_pretrained(tmp_path)
    assert "layers.0.attention.q_proj.weight_scale is missing" in str(err.value)
    assert "layers.0.attention.k_proj.weight_packed is missing" in str(err.value)
    assert "q_proj.bias" not in str(err.value)  # only what is missing


def test_an_unlisted_tensor_is_named_by_the_model(tmp_path):
    path = _saved_vit(tmp_path, dtype="int4")  # an int4 layer has no weight_packed
    tensors = load_file(path)
    assert "encoder.layer.0.attention.attention.query.weight_packed" not in tensors
    tensors["encoder.layer.0.attention.attention.query.weight_packed"] = torch.zeros(32 * 32, dtype=torch.int8)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(mq.CheckpointError, match=r"layers\.0\.attention\.q_proj\.weight_packed is in the file but "
                                                 r"no quantization_config\.layers entry lists it"):
        transformers.ViTModel.from_pretrained(tmp_path)


def test_two_tensors_of_the_file_for_one_of_the_model_are_refused(tmp_path):
    # the checkpoint name and the model's name of one tensor both in the file: which one would load?
    path = _saved_vit(tmp_path)
    tensors = load_file(path)
    scale = tensors["encoder.layer.0.attention.attention.query.weight_scale"]
    tensors["layers.0.attention.q_proj.weight_scale"] = scale.clone()
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(mq.CheckpointError, match=r"both the model's 'layers\.0\.attention\.q_proj\.weight_scale'"):
        transformers.ViTModel.from_pretrained(tmp_path)


def test_a_quantized_layer_transformers_would_merge_or_split_is_refused(tmp_path):
    # NomicBert stores q / k / v as one Wqkv tensor: transformers splits it on load, which
    # packed int8 / int4 buffers can't take
    config = transformers.NomicBertConfig(vocab_size=64, **_SMALL)
    torch.manual_seed(0)
    qmodel = mq.quantize(transformers.NomicBertModel(config).eval(), dtype="int8").model
    qmodel.save_pretrained(tmp_path)
    with pytest.raises(mq.CheckpointError, match=r"attn\.Wqkv.*weight conversion.*mono_quant\.save"):
        transformers.NomicBertModel.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit-float")
    model = _build("vit")
    model.save_pretrained(folder)
    return model, folder


def _count_autoconfig(monkeypatch):
    asked = []
    original = transformers.AutoConfig.from_pretrained

    def recording(*args, **kwargs):
        asked.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", recording)
    return asked


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantize_checkpoint_of_a_vit_folder(vit_folder, tmp_path, monkeypatch, dtype):
    model, folder = vit_folder
    asked = _count_autoconfig(monkeypatch)
    result = mq.quantize_checkpoint(folder, tmp_path / "q.safetensors", dtype=dtype)
    assert asked == [False]  # config.json read once, never running the folder's code
    expected = mq.quantize(model, dtype=dtype)
    assert sorted(layer.name for layer in result.report.layers) == sorted(_quantized(expected.model))
    with torch.device("meta"):
        skeleton = transformers.ViTModel(model.config)
    loaded = mq.load(tmp_path / "q.safetensors", model=skeleton).eval()
    assert _quantized(loaded) == _quantized(expected.model)
    assert torch.equal(_out(loaded), _out(expected.model))
    float_skeleton = transformers.ViTModel(model.config)  # a float model works as well
    assert torch.equal(_out(mq.load(tmp_path / "q.safetensors", model=float_skeleton).eval()), _out(expected.model))


def test_quantize_checkpoint_globs_are_the_model_names(vit_folder, tmp_path):
    model, folder = vit_folder
    result = mq.quantize_checkpoint(folder, tmp_path / "q.safetensors", exclude=["layers.0.*"])
    expected = mq.quantize(model, exclude=["layers.0.*"])
    assert sorted(layer.name for layer in result.report.layers) == sorted(_quantized(expected.model))
    assert not any(layer.name.startswith("layers.0.") for layer in result.report.layers)
    loaded = mq.load(tmp_path / "q.safetensors", model=transformers.ViTModel(model.config)).eval()
    assert torch.equal(_out(loaded), _out(expected.model))


def test_quantize_checkpoint_of_a_gpt2_folder_without_its_prefix(tmp_path):
    # the Hub's gpt2 stores h.0.attn.c_attn.weight, the model names it transformer.h.0.attn.c_attn.weight;
    # it also stores the causal masks h.0.attn.bias, which the model ignores on load (its
    # _keys_to_ignore_on_load_unexpected): they were written out, and load() refused the file
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "gpt2")
    path = tmp_path / "gpt2" / "model.safetensors"
    stored = {k.removeprefix("transformer."): v for k, v in load_file(path).items()}
    stored.update({f"h.{i}.attn.bias": torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32) for i in range(2)})
    save_file(stored, path, metadata={"format": "pt"})
    result = mq.quantize_checkpoint(tmp_path / "gpt2", tmp_path / "q.safetensors", dtype="int8")
    assert {layer.type for layer in result.report.layers} == {"Conv1D"}
    kept = {s.name: s.reason for s in result.report.skipped}
    assert set(kept) == {"transformer.wte", "transformer.wpe"} and all("embedding" in r for r in kept.values())
    assert result.report.tied == {"lm_head.weight": "transformer.wte.weight"}
    expected = mq.quantize(model, dtype="int8").model
    ids = {"input_ids": torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))}
    with torch.device("meta"):
        skeleton = transformers.GPT2LMHeadModel(config)
    loaded = mq.load(tmp_path / "q.safetensors", model=skeleton).eval()
    assert _quantized(loaded) == _quantized(expected)
    assert torch.equal(_out(loaded, **ids), _out(expected, **ids))


def test_quantize_checkpoint_refuses_a_folder_transformers_converts(tmp_path):
    # Mixtral's folder stores each expert's w1 / w3 / w2; the model holds them merged
    config = transformers.MixtralConfig(vocab_size=64, num_key_value_heads=1, num_local_experts=2,
                                        num_experts_per_tok=1, **_SMALL)
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / "mixtral")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(mq.CheckpointError, match=r"experts.*from_pretrained.*MonoQuantConfig"):
        mq.quantize_checkpoint(tmp_path / "mixtral", out / "q.safetensors")
    assert list(out.iterdir()) == []  # refused before anything is written


def test_architectures_without_renaming_keep_every_name(tmp_path):
    from mono_quant.integrations.hf_keys import model_key_map

    for kind in hf_models.KINDS:
        model = mq.quantize(hf_models.build(kind), dtype="int8").model
        model.save_pretrained(tmp_path / kind)
        keys = _file_keys(tmp_path / kind)
        assert {k: v for k, (v, _) in model_key_map(model, keys).items() if k != v} == {}
        assert all(converter is None for _, converter in model_key_map(model, keys).values())


def test_transformers_4_fallback(monkeypatch):
    from mono_quant.integrations.hf_keys import model_key_map

    # without transformers 5's conversion mapping: the model's _checkpoint_conversion_mapping
    # (first match wins) and its base_model_prefix, added or stripped
    monkeypatch.setitem(sys.modules, "transformers.conversion_mapping", None)  # ImportError on import
    with torch.device("meta"):
        gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    mapped = model_key_map(gpt2, ["h.0.attn.c_attn.weight", "transformer.wpe.weight", "lm_head.weight"])
    assert mapped == {"h.0.attn.c_attn.weight": ("transformer.h.0.attn.c_attn.weight", None),
                      "transformer.wpe.weight": ("transformer.wpe.weight", None),
                      "lm_head.weight": ("lm_head.weight", None)}
    gpt2._checkpoint_conversion_mapping = {r"^old\.": "transformer.", r"^transformer\.": "never."}
    assert model_key_map(gpt2, ["old.h.0.mlp.c_fc.weight"]) == {
        "old.h.0.mlp.c_fc.weight": ("transformer.h.0.mlp.c_fc.weight", None)}
    base = gpt2.transformer
    assert model_key_map(base, ["transformer.h.0.mlp.c_fc.weight"]) == {
        "transformer.h.0.mlp.c_fc.weight": ("h.0.mlp.c_fc.weight", None)}


def test_a_renamed_reader_reads_each_tensor_by_its_stored_name(tmp_path):
    from mono_quant.io.reader import CheckpointReader

    tensors = {"a.weight": torch.randn(4, 8), "b.weight": torch.randn(4, 8), "c.bias": torch.randn(4)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with CheckpointReader(tmp_path / "model.safetensors") as reader:
        reader.rename({"a.weight": "x.a.weight"})
        reader.rename({"b.weight": "x.b.weight"})  # a second rename keeps the first
        assert reader.keys() == ["x.a.weight", "x.b.weight", "c.bias"]
        assert reader.stored_name("x.a.weight") == "a.weight" and reader.stored_name("c.bias") == "c.bias"
        assert reader.spec("x.b.weight") == (torch.float32, (4, 8))
        assert {k: torch.equal(t, tensors[reader.stored_name(k)]) for k, t in reader.items()} == \
            dict.fromkeys(reader.keys(), True)
        with pytest.raises(mq.CheckpointError, match="would both be named 'c.bias'"):
            reader.rename({"x.a.weight": "c.bias"})
