"""quantize_checkpoint / `mono-quant quantize` of a Hugging Face folder quantizes
what quantize(model) would (no embeddings, GPT-2 Conv1D along its output
features, tied weights kept tied and reported), so the file loads back into the
HF class bit-identical to quantize(model).  Tiny models, random weights."""
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.cli import main  # noqa: E402

KINDS = ("bert", "gpt2", "llama")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-ckpt")
    out = {}
    for kind in KINDS + ("t5",):
        model = hf_models.build(kind)
        model.save_pretrained(root / kind)
        out[kind] = (model, root / kind)
    return out


def _cases():
    for kind in KINDS + ("t5",):
        for dtype in ("int8", "int4", "fp16"):
            yield pytest.param(kind, dtype, id=f"{kind}-{dtype}")


@pytest.mark.parametrize("kind,dtype", list(_cases()))
def test_checkpoint_of_hf_folder_is_what_quantize_model_gives(folders, tmp_path, kind, dtype):
    model, folder = folders[kind]
    result = mq.quantize_checkpoint(folder, tmp_path / "q.safetensors", dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = mq.quantize(model, dtype=dtype)
    names = sorted(layer.name for layer in result.report.layers)
    assert names == sorted(layer.name for layer in expected.report.layers)
    assert {layer.type for layer in result.report.layers} == {layer.type for layer in expected.report.layers}
    skipped = {s.name for s in result.skipped} | {k[: -len(".weight")] for k in result.report.tied}
    assert skipped == {s.name for s in expected.skipped}
    loaded = mq.load(tmp_path / "q.safetensors", model=hf_models.build(kind, device="meta"))
    assert torch.equal(hf_models.forward(loaded, kind), hf_models.forward(expected.model, kind))


def test_gpt2_conv1d_axis_and_tied_head(folders, tmp_path):
    model, folder = folders["gpt2"]
    result = mq.quantize_checkpoint(folder, tmp_path / "g.safetensors")
    assert result.report.tied == {"lm_head.weight": "transformer.wte.weight"}
    qsd = mq.load(tmp_path / "g.safetensors")
    float_weight = model.transformer.h[0].attn.c_attn.weight  # [in 64, out 192]
    assert qsd["transformer.h.0.attn.c_attn.weight_scale"].shape == (192,)  # one scale per output feature
    assert torch.equal(qsd["transformer.h.0.attn.c_attn.weight_scale"], float_weight.detach().abs().amax(0) / 127)
    dequantized = qsd.dequantize()["transformer.h.0.attn.c_attn.weight"]
    assert dequantized.shape == float_weight.shape  # back in the HF layout
    assert "transformer.wte.weight" in qsd and "lm_head.weight" in qsd  # stored once, aliased
    assert qsd["lm_head.weight"] is qsd["transformer.wte.weight"]
    loaded = mq.load(tmp_path / "g.safetensors", model=hf_models.build("gpt2", device="meta"))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_cli_on_hf_folder(folders, tmp_path, capsys):
    _, folder = folders["gpt2"]
    assert main(["quantize", str(folder), "-o", str(tmp_path / "c.safetensors"), "--dtype", "int4"]) == 0
    out = capsys.readouterr().out
    assert "8 layers quantized" in out and "lm_head.weight = transformer.wte.weight" in out


def _whisper_folder(tmp_path, edit=None):
    """A tiny Whisper (two nn.Conv1d in its front end) saved as an HF folder, ``edit(model)`` first."""
    import transformers

    config = transformers.WhisperConfig(
        vocab_size=128, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, num_mel_bins=16, max_source_positions=16,
        max_target_positions=32, pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = transformers.WhisperModel(config).eval()
    if edit is not None:
        edit(model)
    model.save_pretrained(tmp_path / "whisper")
    return model, tmp_path / "whisper"


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_conv1d_of_hf_folder_is_quantized_as_quantize_model_does(tmp_path, dtype):
    """Whisper's nn.Conv1d front end: quantized by the checkpoint path too (it was copied
    float), stored as quantize(model) stores it, loaded back bit-identical."""
    import transformers

    model, folder = _whisper_folder(tmp_path)
    result = mq.quantize_checkpoint(folder, tmp_path / "w.safetensors", dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = mq.quantize(model, dtype=dtype)
    convs = {(layer.name, layer.type) for layer in result.report.layers if "conv" in layer.name}
    assert convs == {("encoder.conv1", "Conv1d"), ("encoder.conv2", "Conv1d")}
    assert sorted(layer.name for layer in result.report.layers) == sorted(layer.name for layer in expected.report.layers)
    with torch.device("meta"):
        skeleton = transformers.WhisperModel(model.config).eval()
    loaded = mq.load(tmp_path / "w.safetensors", model=skeleton)
    assert type(loaded.encoder.conv1).__name__ == "QuantizedConv1d"
    ours, theirs = loaded.state_dict(), expected.model.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encoder.conv2(loaded.encoder.conv1(x)),
                           expected.model.encoder.conv2(expected.model.encoder.conv1(x)))


def test_a_conv1d_left_float_gets_quantize_models_reason(tmp_path):
    """An excluded Conv1d of the folder's model is listed with the reason quantize(model) gives (the
    checkpoint said "a 3-D weight: quantize the model ..." although the model was used)."""
    model, folder = _whisper_folder(tmp_path)
    result = mq.quantize_checkpoint(folder, tmp_path / "w.safetensors", exclude=["encoder.conv1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = mq.quantize(model, exclude=["encoder.conv1"])
    reasons = {s.name: (s.type, s.reason) for s in result.skipped}
    assert reasons["encoder.conv1"] == next((s.type, s.reason) for s in expected.skipped if s.name == "encoder.conv1")


def test_a_conv1d_with_nan_is_treated_as_quantize_model_treats_it(tmp_path):
    """NaN in a Conv1d's weight: an error naming it (it was copied float without a word), or with
    nonfinite="skip" float with the reason."""
    def poison(model):
        with torch.no_grad():
            model.encoder.conv2.weight[5, 0, 1] = float("nan")

    _, folder = _whisper_folder(tmp_path, poison)
    with pytest.raises(mq.NonFiniteWeightError, match=r"'encoder.conv2.weight' has NaN or Inf \(output channel 5\)"):
        mq.quantize_checkpoint(folder, tmp_path / "w.safetensors")
    result = mq.quantize_checkpoint(folder, tmp_path / "w.safetensors", nonfinite="skip")
    skipped = {s.name: s.reason for s in result.skipped}
    assert skipped["encoder.conv2"] == "non-finite weights (NaN/Inf in channel 5)"


def test_hf_model_confirms_the_layer_types_inspect_prints(folders, tmp_path):
    """The folder's model says what each quantized weight is (embeddings stay float), so the file
    records "type_from": "module" and inspect names every layer (a GPT-2 Conv1D as one)."""
    from mono_quant.io.describe import describe

    for kind in ("bert", "gpt2"):
        mq.quantize_checkpoint(folders[kind][1], tmp_path / f"{kind}.safetensors")
        layers = describe(tmp_path / f"{kind}.safetensors")["layers"]
        assert layers and all(layer["type_from"] == "module" for layer in layers)
        assert all(layer["layer_kind"] == layer["type"] for layer in layers)
        assert ("Conv1D" in {layer["type"] for layer in layers}) is (kind == "gpt2")


def _edited_folder(folder, tmp_path, **changes):
    """A copy of the HF folder ``folder`` whose config.json has ``changes``."""
    import json
    import shutil
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("changes,message", [
    ({"n_layer": 20000}, "n_layer=20000"),  # built on meta, 20000 blocks took minutes
    ({"text_config": {"num_hidden_layers": 20000}}, "text_config.num_hidden_layers=20000"),  # a sub-config
    ({"architectures": ["AutoConfig"]}, "no model class"),  # an attribute of transformers, not a model
    ({"architectures": ["pipeline"]}, "no model class"),
])
def test_config_json_is_untrusted(folders, tmp_path, caplog, changes, message):
    """A config.json naming something that is not a model class, or more than MAX_LAYERS blocks in a
    stack, is not built: the folder is quantized by the plain state_dict rules."""
    import time
    _, folder = folders["gpt2"]
    edited = _edited_folder(folder, tmp_path, **changes)
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="mono_quant"):
        result = mq.quantize_checkpoint(edited, tmp_path / "q.safetensors")
    assert time.monotonic() - start < 30
    assert message in caplog.text and "plain state_dict" in caplog.text
    assert result.report.layers  # quantized all the same


def test_config_keys_that_count_no_blocks_are_not_limits(folders, tmp_path, caplog):
    """Qwen2's max_window_layers (28 by default, in tiny test models too) counts no blocks: the
    folder's model is still built and used (the tie found, GPT-2's Conv1D quantized along its outputs)."""
    _, folder = folders["gpt2"]
    edited = _edited_folder(folder, tmp_path, max_window_layers=100000, num_attention_layers=5000)
    with caplog.at_level("WARNING", logger="mono_quant"):
        result = mq.quantize_checkpoint(edited, tmp_path / "q.safetensors")
    assert "plain state_dict" not in caplog.text
    assert result.report.tied == {"lm_head.weight": "transformer.wte.weight"}


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_tied_bias_the_folder_stores_once(tmp_path, dtype):
    # BertForMaskedLM's decoder.bias is cls.predictions.bias (one Parameter): the folder stores the
    # latter only, and load() refused the output ("missing keys: ['cls.predictions.decoder.bias']")
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        vocab_size=100)
    model = BertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path / "mlm")
    result = mq.quantize_checkpoint(tmp_path / "mlm", tmp_path / "q.safetensors", dtype=dtype)
    assert result.report.tied["cls.predictions.decoder.bias"] == "cls.predictions.bias"
    loaded = mq.load(tmp_path / "q.safetensors", model=BertForMaskedLM(config).eval())
    assert loaded.cls.predictions.decoder.bias is loaded.cls.predictions.bias  # still one parameter
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, mq.quantize(model, dtype=dtype).model(input_ids=ids).logits)
