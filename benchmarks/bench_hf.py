"""Hugging Face models quantized: logits SQNR against fp32, model size against fp32,
forward speed against fp32 (eager, and torch.compile where it compiles).

Models from configs with random weights (no downloads), the architectures of
tests/hf_models.py made big enough for timings to mean something: hidden 256, 4 layers,
4 heads (LLaMA: 2 KV heads), MLP 1024, vocabulary 2048; one sequence of 128 tokens (T5:
128 encoder and 32 decoder tokens).  BERT's output is its last hidden state.  Dtypes:
int8 dynamic, int8 weight-only, int4 (group 128), fp16; embeddings stay float (the default).
Speeds are ratios of medians timed interleaved in one run (common.interleaved), fp32
eager = 1.00x; compiled models are timed against the same fp32 eager model.

    python benchmarks/bench_hf.py [--threads 1] [--repeats 15] [--no-compile] [--models bert,gpt2]
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

DTYPES = [("int8 dyn", "int8", {"activations": "dynamic"}), ("int8 w-only", "int8", {"activations": None}),
          ("int4", "int4", {"group_size": 128}), ("fp16", "fp16", {})]
VOCAB, HIDDEN, LAYERS, HEADS, MLP, SEQ = 2048, 256, 4, 4, 1024, 128


def _model(kind: str):
    import transformers as t

    if kind == "bert":
        config = t.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=SEQ)
        cls = t.BertModel
    elif kind == "gpt2":
        config = t.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=MLP,
                              n_positions=SEQ, bos_token_id=0, eos_token_id=0)
        cls = t.GPT2LMHeadModel
    elif kind == "llama":
        config = t.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                               num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=SEQ)
        cls = t.LlamaForCausalLM
    elif kind == "t5":
        config = t.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=MLP, num_layers=LAYERS,
                            num_heads=HEADS, decoder_start_token_id=0)
        cls = t.T5ForConditionalGeneration
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    return cls(config).eval()


def _inputs(kind: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=g)
    return {"input_ids": ids, "decoder_input_ids": ids[:, :32]} if kind == "t5" else {"input_ids": ids}


def _logits(out) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def _sqnr(ref, y) -> float:
    ref, y = ref.double(), y.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum().clamp_min(1e-30)))


def _bytes(model) -> int:
    """Every tensor of the model's state_dict, tied ones once."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _compiled(model, kind, inputs):
    """(compiled model, "fullgraph" or "graph breaks") or (None, why it failed)."""
    for fullgraph in (True, False):
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=fullgraph)
        try:
            with torch.no_grad():
                compiled(**inputs)
            return compiled, "fullgraph" if fullgraph else "graph breaks"
        except Exception as exc:  # noqa: BLE001 (a benchmark reports what failed)
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return None, error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--models", default="bert,gpt2,llama,t5")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    print("| model | dtype | logits SQNR | size vs fp32 | eager speed | compile speed |")
    print("|---|---|---|---|---|---|")
    for kind in args.models.split(","):
        model, inputs = _model(kind), _inputs(kind)
        with torch.no_grad():
            ref = _logits(model(**inputs))
        fp32_bytes = _bytes(model)
        contenders = {"fp32": model}
        cells = {"fp32": {"sqnr": None, "size": 1.0}}
        for label, dtype, kw in DTYPES:
            qmodel = mq.quantize(model, dtype=dtype, **kw).model
            with torch.no_grad():
                y = _logits(qmodel(**inputs))
            contenders[label] = qmodel
            cells[label] = {"sqnr": _sqnr(ref, y), "size": _bytes(qmodel) / fp32_bytes}
        if not args.no_compile:
            for label in list(contenders):
                compiled, how = _compiled(contenders[label], kind, inputs)
                cells[label]["compile"] = how
                if compiled is not None:
                    contenders[label + " compiled"] = compiled
        calls = {name: (lambda m=m: m(**inputs)) for name, m in contenders.items()}
        with torch.no_grad():
            times = interleaved(calls, repeats=args.repeats, warmup=2)
        base = statistics.median(times["fp32"])
        for label in cells:
            cell = cells[label]
            cell["eager_speed"] = base / statistics.median(times[label])
            if label + " compiled" in times:
                cell["compile_speed"] = base / statistics.median(times[label + " compiled"])
            sqnr = "-" if cell["sqnr"] is None else f"{cell['sqnr']:.1f} dB"
            compiled = (f"{cell['compile_speed']:.2f}x ({cell['compile']})" if "compile_speed" in cell
                        else cell.get("compile", "not run"))
            print(f"| {kind} | {label} | {sqnr} | {cell['size']:.2f}x | {cell['eager_speed']:.2f}x | {compiled} |",
                  flush=True)
            rows.append({"model": kind, "dtype": label, **cell})
    path = write_results("bench_hf", {"machine": machine_info(), "threads": args.threads, "repeats": args.repeats,
                                      "config": {"vocab": VOCAB, "hidden": HIDDEN, "layers": LAYERS, "heads": HEADS,
                                                 "mlp": MLP, "seq": SEQ}, "rows": rows})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
