"""A quantized Whisper runs: its encoder checks the input length with conv.stride[0], so
QuantizedConv1d must show nn.Conv1d's own 1-D geometry."""
import pytest
import torch

pytest.importorskip("transformers")
from transformers import WhisperConfig, WhisperModel  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.modules import QuantizedConv1d  # noqa: E402


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_whisper_runs_close_to_float(dtype):
    cfg = WhisperConfig(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                        max_source_positions=50, vocab_size=100, max_target_positions=20, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    model = WhisperModel(cfg).eval()
    qmodel = mq.quantize(model, dtype).model
    assert isinstance(qmodel.encoder.conv2, QuantizedConv1d) and qmodel.encoder.conv2.stride == (2,)
    features, tokens = torch.randn(1, 16, 100), torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        ref = model(input_features=features, decoder_input_ids=tokens).last_hidden_state
        out = qmodel(input_features=features, decoder_input_ids=tokens).last_hidden_state
    assert ((out - ref).norm() / ref.norm()).item() < (0.05 if dtype == "int8" else 0.3)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_save_pretrained_reloads_bit_for_bit(tmp_path, dtype):
    # a 16-bit Conv1d's weight is stored [out, in, 1, k] where .weight reads [out, in, k]: transformers'
    # loader took it for a shape mismatch, and an fp16 / bf16 Whisper folder did not reload
    import warnings

    cfg = WhisperConfig(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                        max_source_positions=50, vocab_size=100, max_target_positions=20, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperModel(cfg).save_pretrained(tmp_path / "float")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = WhisperModel.from_pretrained(tmp_path / "float", quantization_config=mq.MonoQuantConfig(dtype=dtype))
        qmodel.save_pretrained(tmp_path / "q")
        again = WhisperModel.from_pretrained(tmp_path / "q").eval()
    assert isinstance(again.encoder.conv1, QuantizedConv1d)
    features, tokens = torch.randn(1, 16, 100), torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(again(input_features=features, decoder_input_ids=tokens).last_hidden_state,
                           qmodel.eval()(input_features=features, decoder_input_ids=tokens).last_hidden_state)
