"""A Hugging Face GPT-2 quantized to int8: while loading (MonoQuantConfig), saved, reloaded, from its folder.

The model is built from a config with random weights (no download); a real
checkpoint goes through the same calls with its own path.  Needs transformers
(`pip install transformers`); without it the script says so and exits 0.

    python examples/huggingface_gpt2.py [--small]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

import mono_quant as mq

try:
    import transformers
except ImportError:
    transformers = None


def sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (reference - other).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise)) if noise > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the test suite runs this)")
    args = parser.parse_args()
    if transformers is None:
        print("transformers is not installed: pip install transformers (nothing to show)")
        return
    torch.manual_seed(0)
    size = dict(n_embd=64, n_layer=2, n_head=4) if args.small else dict(n_embd=768, n_layer=12, n_head=12)
    config = transformers.GPT2Config(vocab_size=1000 if args.small else 50257, n_positions=128,
                                     bos_token_id=0, eos_token_id=0, **size)
    tokens = torch.randint(0, config.vocab_size, (1, 16))

    with tempfile.TemporaryDirectory() as tmp:
        float_dir, int8_dir = Path(tmp, "gpt2-float"), Path(tmp, "gpt2-int8")
        transformers.GPT2LMHeadModel(config).eval().save_pretrained(float_dir)  # stands in for a downloaded model
        model = transformers.GPT2LMHeadModel.from_pretrained(float_dir).eval()

        # 1. quantize while loading: GPT-2's Conv1D layers become QuantizedGPT2Conv1D
        qmodel = transformers.GPT2LMHeadModel.from_pretrained(
            float_dir, quantization_config=mq.MonoQuantConfig(dtype="int8")).eval()
        kinds = sorted({type(m).__name__ for m in qmodel.modules() if isinstance(m, mq.QuantizedModule)})
        print(f"quantized layer types: {kinds}")

        # 2. save_pretrained / from_pretrained: the quantized buffers and the layer list in config.json
        qmodel.save_pretrained(int8_dir)
        again = transformers.GPT2LMHeadModel.from_pretrained(int8_dir).eval()
        size_mb = {d.name: sum(f.stat().st_size for f in d.glob("*.safetensors")) / 1e6 for d in (float_dir, int8_dir)}

        # 3. the same model through quantize() and one mono-quant file, loaded into a meta skeleton
        result = mq.quantize(model, dtype="int8")
        path = mq.save(result, Path(tmp, "gpt2-int8.mq.safetensors"))
        with torch.device("meta"):
            skeleton = transformers.GPT2LMHeadModel(model.config)  # no memory
        loaded = mq.load(path, model=skeleton).eval()

        # 4. the folder on disk, never loaded in float (`mono-quant quantize gpt2-float -o ...` does the same)
        streamed = mq.quantize_checkpoint(float_dir, Path(tmp, "gpt2-folder-int8.safetensors"), "int8")
        with torch.device("meta"):
            skeleton = transformers.GPT2LMHeadModel(model.config)
        from_folder = mq.load(streamed.path, model=skeleton).eval()

        with torch.no_grad():
            ref, q, q_again, q_file, q_direct, q_folder = (m(tokens).logits for m in (model, qmodel, again, loaded,
                                                                             result.model, from_folder))
    print(f"safetensors size: float {size_mb['gpt2-float']:.2f} MB, int8 {size_mb['gpt2-int8']:.2f} MB "
          f"(wte stays float, the lm_head is tied to it: see result.skipped)")
    print(f"logits SQNR vs float: {sqnr_db(ref, q):.1f} dB; from_pretrained(int8 folder) identical: "
          f"{torch.equal(q, q_again)}; mq.load(meta skeleton) identical to quantize(): "
          f"{torch.equal(q_file, q_direct)}; quantize_checkpoint(folder) identical: {torch.equal(q_folder, q_direct)}")
    print(f"kept float: {[s.name for s in result.skipped]}")
    if not (torch.equal(q, q_again) and torch.equal(q_file, q_direct) and torch.equal(q_folder, q_direct)):
        sys.exit("a reloaded model differs from the saved one")


if __name__ == "__main__":
    main()
