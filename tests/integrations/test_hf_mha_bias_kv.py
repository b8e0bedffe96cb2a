"""MonoQuantConfig on a transformers model holding an nn.MultiheadAttention(add_bias_kv=True):
quantized while loading as quantize(model) does, its float bias_k / bias_v saved and reloaded
bit-identical, and a folder with a damaged or missing bias refused."""
import warnings

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import mono_quant as mq  # noqa: E402
from mono_quant.modules import QuantizedMultiheadAttention  # noqa: E402


class TinyConfig(transformers.PretrainedConfig):
    model_type = "mq_tiny_attention_bias_kv"

    def __init__(self, hidden=32, **kw):
        self.hidden = hidden
        super().__init__(**kw)


class TinyModel(transformers.PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.attn = nn.MultiheadAttention(config.hidden, 4, batch_first=True, add_bias_kv=True)
        self.head = nn.Linear(config.hidden, config.hidden)
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(float folder, quantized folder, the quantized model's output, the input)."""
    root = tmp_path_factory.mktemp("hf_bias_kv")
    torch.manual_seed(0)
    model = TinyModel(TinyConfig()).eval()
    with torch.no_grad():
        model.attn.bias_k.normal_()
        model.attn.bias_v.normal_()
    model.save_pretrained(root / "float")
    x = torch.randn(2, 5, 32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        expected = mq.quantize(model, dtype="int8").model(x)
        loaded = TinyModel.from_pretrained(root / "float", quantization_config=mq.MonoQuantConfig(dtype="int8"))
        assert isinstance(loaded.attn, QuantizedMultiheadAttention)
        assert torch.equal(loaded.attn.bias_k, model.attn.bias_k)
        assert torch.equal(loaded.eval()(x), expected)
        loaded.save_pretrained(root / "q")
    return root / "float", root / "q", expected, x


def test_round_trip_bit_identical(folders):
    _, saved, expected, x = folders
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        again = TinyModel.from_pretrained(saved).eval()
    assert isinstance(again.attn, QuantizedMultiheadAttention) and again.attn.bias_k is not None
    assert torch.equal(again(x), expected)
    # frozen as quantize() and mono_quant.load leave them (transformers' loader makes what it fills trainable)
    assert [n for n, p in again.named_parameters() if p.requires_grad] == []


@pytest.mark.parametrize("damage,message", [(lambda t: t["attn.bias_k"].fill_(float("inf")), "NaN or Inf"),
                                            (lambda t: t.pop("attn.bias_v"), "attn.bias_v is missing")],
                         ids=["inf", "missing"])
def test_damaged_folder_refused(tmp_path, folders, damage, message):
    import shutil

    _, saved, _, _ = folders
    folder = tmp_path / "q"
    shutil.copytree(saved, folder)
    weights = folder / "model.safetensors"
    with safetensors.safe_open(weights, "pt") as f:
        metadata = f.metadata()
    tensors = safetensors.torch.load_file(weights)
    damage(tensors)
    safetensors.torch.save_file(tensors, weights, metadata=metadata)
    with warnings.catch_warnings(), pytest.raises(mq.CheckpointError, match=message):
        warnings.simplefilter("ignore")
        TinyModel.from_pretrained(folder)
