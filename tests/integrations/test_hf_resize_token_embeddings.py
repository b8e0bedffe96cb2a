"""resize_token_embeddings of a quantized Hugging Face model: transformers grew the input embeddings,
then failed on the quantized head (its TypeError), leaving embeddings and head disagreeing on the
vocabulary.  Refused now before anything changes, naming the layer; a float head resizes as before."""
import copy
import io
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import hf_models  # noqa: E402

import mono_quant as mq  # noqa: E402


def _state(model):
    return model.get_input_embeddings().weight.shape, model.config.vocab_size, model.lm_head.out_features


def test_a_quantized_head_is_refused_and_nothing_changes():
    model = hf_models.build("llama")
    qmodel, _ = mq.quantize(model, "int8")
    before, logits = _state(qmodel), hf_models.forward(qmodel, "llama")
    with pytest.raises(TypeError, match=r"output head 'lm_head' \(QuantizedLinear\) is quantized.*nothing was "
                                        r"changed.*Resize the float model, then quantize it"):
        qmodel.resize_token_embeddings(140)
    assert _state(qmodel) == before
    assert torch.equal(hf_models.forward(qmodel, "llama"), logits)
    assert qmodel.resize_token_embeddings() is qmodel.get_input_embeddings()  # (no size: nothing to resize)
    assert model.resize_token_embeddings(140).weight.shape == (140, 64)  # (the caller's float model: no guard)


def test_a_float_head_resizes_as_transformers_does():
    qmodel, _ = mq.quantize(hf_models.build("llama"), "int8", exclude=["lm_head"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel.resize_token_embeddings(140)
    assert _state(qmodel) == ((140, 64), 140, 140)
    assert hf_models.forward(qmodel, "llama").shape[-1] == 140
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tied, _ = mq.quantize(hf_models.build("gpt2"), "int8")  # (GPT-2's head is tied to its float embeddings)
        tied.resize_token_embeddings(136)
    assert hf_models.forward(tied, "gpt2").shape[-1] == 136


def test_copies_and_loaded_models_are_guarded_themselves(tmp_path):
    qmodel, _ = mq.quantize(hf_models.build("llama"), "int8", exclude=["lm_head"])
    duplicate = copy.deepcopy(qmodel)
    buffer = io.BytesIO()
    torch.save(qmodel, buffer)
    buffer.seek(0)
    unpickled = torch.load(buffer, weights_only=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for other in (duplicate, unpickled):
            other.resize_token_embeddings(136)  # the copy's own embeddings, not the original's
            assert _state(other)[0] == (136, 64)
    assert _state(qmodel)[0] == (128, 64)
    loaded = hf_models.loaded_quantized("llama", tmp_path / "float", dtype="int8")
    with pytest.raises(TypeError, match="output head 'lm_head'"):
        loaded.resize_token_embeddings(140)
    qmodel, _ = mq.quantize(hf_models.build("llama"), "int8")
    qmodel.save_pretrained(tmp_path / "quantized")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = hf_models.model_class("llama").from_pretrained(tmp_path / "quantized")
    with pytest.raises(TypeError, match="output head 'lm_head'"):
        reloaded.resize_token_embeddings(140)
    assert _state(reloaded)[0] == (128, 64)


def test_a_model_loaded_with_mq_load_is_guarded_and_freed_on_del(tmp_path):
    """mq.load(path, model=skeleton) gave a model without the guard; and the guard (a partial holding
    the model) made a reference cycle: a quantized model outlived `del` until a full collection."""
    import gc
    import weakref

    qmodel, _ = mq.quantize(hf_models.build("llama"), "int8")
    path = mq.save(qmodel, tmp_path / "q.safetensors")
    loaded = mq.load(path, model=hf_models.build("llama", device="meta"))
    with pytest.raises(TypeError, match="output head 'lm_head'"):
        loaded.resize_token_embeddings(140)
    assert _state(loaded)[0] == (128, 64)
    gc.disable()
    try:
        refs = [weakref.ref(m) for m in (qmodel, loaded)]
        del qmodel, loaded
        assert all(r() is None for r in refs)
    finally:
        gc.enable()
