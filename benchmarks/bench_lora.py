"""LoRA training (PEFT, mono_quant.integrations.peft) on a quantized base against
the same LoRA on the fp32 base: time per training step, the loss after a few steps,
the base's weight bytes.

Model: a LLaMA-style ``LlamaForCausalLM`` from a config with random weights
(hidden 512, MLP 1376, 4 layers, 8 heads, vocab 1000); LoRA r=8 on every
projection (q, k, v, o, gate, up, down); batch 4 x 64 tokens, causal-LM loss,
Adam lr 1e-3.  A step is forward + backward + optimizer step; its figure is a
ratio of medians timed interleaved in one run (common.interleaved).

    python benchmarks/bench_lora.py [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine_info, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.integrations.peft import get_peft_model, lora_config  # noqa: E402

BASES = [("fp32", None, {}), ("int8 dyn", "int8", {"activations": "dynamic"}),
         ("int8 w-only", "int8", {"activations": None}), ("int4", "int4", {"group_size": 128})]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _float_model(layers: int):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1376,
                                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                                      max_position_embeddings=128)
    return transformers.LlamaForCausalLM(config)


def _weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for n, t in model.state_dict().items()
               if any(p in n for p in TARGETS) and "lora_" not in n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, fewer repeats")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")  # transformers' deprecation, via peft
    layers, repeats = (2, 5) if args.quick else (4, 11)
    ids = torch.randint(0, 1000, (4, 64), generator=torch.Generator().manual_seed(1))

    runs = {}
    for name, dtype, kw in BASES:
        base = _float_model(layers)
        if dtype is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base = mq.quantize(base, dtype=dtype, **kw).model
        model = get_peft_model(base, lora_config(r=8, lora_alpha=16, target_modules=TARGETS))
        model.train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        runs[name] = (model, opt, [])

    def step(name):
        model, opt, losses = runs[name]
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    times = interleaved({name: (lambda n=name: step(n)) for name in runs}, repeats=repeats, warmup=2)
    fp32 = statistics.median(times["fp32"])
    rows = []
    print(f"LoRA r=8 on {layers}-layer LLaMA-style (d=512), batch 4 x 64, {torch.get_num_threads()} threads")
    print(f"{'base':<12} {'step ms':>8} {'vs fp32':>8} {'loss first':>10} {'loss last':>10} {'base MB':>8}")
    for name, (model, _, losses) in runs.items():
        med = statistics.median(times[name])
        row = {"base": name, "step_ms": med * 1e3, "speed_vs_fp32": fp32 / med, "loss_first": losses[0],
               "loss_last": losses[-1], "steps": len(losses), "base_weight_mb": _weight_bytes(model) / 2**20}
        rows.append(row)
        print(f"{name:<12} {row['step_ms']:>8.1f} {row['speed_vs_fp32']:>7.2f}x {row['loss_first']:>10.4f} "
              f"{row['loss_last']:>10.4f} {row['base_weight_mb']:>8.2f}")
    path = write_results("bench_lora", {"machine": machine_info(), "layers": layers, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
