"""mq.load(path, model=meta_skeleton) of tiny Hugging Face models (random weights,
no downloads) gives outputs bit-identical to the saved model's, with and without
embeddings: non-persistent buffers (rotary inv_freq, BERT position_ids) are
materialized from the model's own init, never left as placeholders."""
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
import hf_models  # noqa: E402  (needs transformers)

import mono_quant as mq  # noqa: E402
from mono_quant.io.skeleton import parameters_on_meta  # noqa: E402

def _cases():
    for kind in hf_models.KINDS:
        for dtype in ("int8", "int4", "fp16"):
            yield pytest.param(kind, dtype, id=f"{kind}-{dtype}")


@pytest.fixture(scope="module")
def models():
    return {kind: hf_models.build(kind) for kind in hf_models.KINDS}


@pytest.mark.parametrize("embeddings", [False, True], ids=["", "emb"])
@pytest.mark.parametrize("kind,dtype", list(_cases()))
def test_meta_skeleton_load_is_bit_identical(models, tmp_path, kind, dtype, embeddings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mq.quantize(models[kind], dtype=dtype, embeddings=embeddings)
    expected = hf_models.forward(result.model, kind)
    mq.save(result, tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "still on the meta device" warning either
        loaded = mq.load(tmp_path / "m.safetensors", model=hf_models.build(kind, device="meta"))
    assert not [n for n, b in loaded.named_buffers() if b.device.type == "meta"]
    assert torch.equal(hf_models.forward(loaded, kind), expected)


def test_quantized_hf_models_follow_the_float_model(models):
    for kind in ("bert", "gpt2", "llama"):
        ref = hf_models.forward(models[kind], kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = hf_models.forward(mq.quantize(models[kind]).model, kind)
        assert float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())) > 25, kind


def test_gpt2_blocks_are_quantized_and_model_is_smaller(models):
    with pytest.warns(UserWarning, match="tied"):
        result = mq.quantize(models["gpt2"])
    kinds = {layer.type for layer in result.report.layers}
    assert kinds == {"Conv1D"} and len(result.report.layers) == 8  # c_attn, c_proj, c_fc, mlp.c_proj x 2
    assert result.report.model_bytes_after < 0.5 * result.report.model_bytes_before


class _WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("offset", torch.arange(8.0), persistent=False)

    def forward(self, x):
        return self.lin(x) + self.offset


def test_plain_module_meta_buffer_is_an_error_naming_it(tmp_path):
    model = _WithBuffer()
    mq.save(mq.quantize(model), tmp_path / "b.safetensors")
    with torch.device("meta"):
        skeleton = _WithBuffer()
    with pytest.raises(mq.CheckpointError, match=r"\['offset'\].*parameters_on_meta"):
        mq.load(tmp_path / "b.safetensors", model=skeleton)
    with parameters_on_meta():
        skeleton = _WithBuffer()
    assert skeleton.lin.weight.device.type == "meta" and skeleton.offset.device.type == "cpu"
    loaded = mq.load(tmp_path / "b.safetensors", model=skeleton)
    x = torch.randn(2, 8)
    assert torch.equal(loaded(x), mq.quantize(model).model(x))
