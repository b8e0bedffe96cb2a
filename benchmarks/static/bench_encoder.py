"""Static int8 on a BERT-style encoder's Linear layers: output SQNR against fp32 and dynamic int8,
and what SmoothQuant-style smoothing buys.

    .venv/bin/python benchmarks/static/bench_encoder.py [--layers 4] [--hidden 256] [--alpha 0.5]

Model: ``transformers.BertModel`` from a ``BertConfig`` (no pretrained weights offline: random
init, seed 0).  A random-init BERT has none of the per-channel activation outliers trained BERTs
show (a few hidden dimensions 10-100x larger than the rest, carried by LayerNorm's gamma), so the
run is repeated with ``--outlier-gain`` applied to four fixed channels of every LayerNorm's weight:
the structure SmoothQuant was written for, made explicit.
Data: random token ids, ``--calib`` sequences of ``--seq`` tokens for calibration, another
``--probe`` sequences for the SQNR.
Contenders, every Linear of the encoder quantized (the embeddings stay float):
- dynamic:  ``mq.quantize(model, "int8")`` (per-row dynamic activation scales)
- static:   ``mq.quantize(model, "int8", activations="static", observer=...)``: BertModel is not
            fx-traceable, so this is the per-layer static path (fixed per-tensor input scale, int8
            GEMM, float output) -- exactly "static int8 on the Linear layers"
- static + smooth (LN-fed): SmoothQuant on the layers whose input is a LayerNorm output (Q, K, V,
            FFN-in: where 1/s folds into the LayerNorm for free), then static
- static + smooth (all):   smoothing on every Linear (attention-out and FFN-out need a runtime
            multiply by 1/s: nothing upstream to fold it into)
Smoothing factor per input channel j: s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha), X's per-channel
ranges from the calibration statistics (``ActivationStats(per_channel=True)``, the Calibrator's
observer) on the same calibration data; W' = W * s, X' = X / s (a float multiply in front of the
layer here, the same arithmetic as folding it into the LayerNorm's gamma and beta).
SQNR is each layer's output against the fp32 model's, errors of earlier layers included.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import machine_info, write_results  # noqa: E402

import mono_quant as mq  # noqa: E402
from mono_quant.calibration.stats import ActivationStats  # noqa: E402

OUTLIER_CHANNELS = (7, 100, 181, 222)


def build_model(args, outlier_gain: float) -> nn.Module:
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
                        max_position_embeddings=max(128, args.seq), attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=False).eval()
    if outlier_gain != 1.0:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    idx = torch.tensor([c % args.hidden for c in OUTLIER_CHANNELS])
                    m.weight[idx] *= outlier_gain
    return model


def linear_names(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def layer_outputs(model: nn.Module, names: List[str], batches) -> Dict[str, torch.Tensor]:
    outs: Dict[str, List[torch.Tensor]] = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: outs[n].append(o.detach().float())) for n in names]
    outs["<last_hidden_state>"] = []
    try:
        with torch.no_grad():
            for b in batches:
                outs["<last_hidden_state>"].append(model(**b).last_hidden_state.float())
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in outs.items()}


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double().reshape(-1), got.double().reshape(-1)
    noise = float(((ref - got) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref ** 2).sum()) / noise)


class SmoothedLinear(nn.Module):
    """x / s, then the Linear with W * s: the same product, channels' ranges evened out."""

    def __init__(self, linear: nn.Linear, s: torch.Tensor):
        super().__init__()
        self.register_buffer("inv_s", (1.0 / s).float())
        self.linear = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(linear.weight * s)
            if linear.bias is not None:
                self.linear.bias.copy_(linear.bias)

    def forward(self, x):
        return self.linear(x * self.inv_s)


def channel_absmax(model: nn.Module, names: List[str], batches) -> Dict[str, torch.Tensor]:
    """Per input channel max|x| of each Linear, from the calibration statistics (min/max per channel)."""
    stats = {n: ActivationStats(bins=None, per_channel=True) for n in names}
    def hook(name):
        def observe(module, args):
            stats[name].update(args[0].detach().reshape(-1, args[0].shape[-1]))  # [tokens, features]
        return observe
    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for b in batches:
                model(**b)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.maximum(torch.from_numpy(s.channel_max).abs(), torch.from_numpy(s.channel_min).abs())
            for n, s in stats.items()}


def smoothed(model: nn.Module, names: List[str], absmax: Dict[str, torch.Tensor], alpha: float) -> nn.Module:
    import copy
    out = copy.deepcopy(model)
    for n in names:
        lin = out.get_submodule(n)
        w = lin.weight.detach().abs().amax(dim=0).clamp_min(1e-5)
        s = (absmax[n].clamp_min(1e-5) ** alpha / w ** (1 - alpha)).clamp_min(1e-5)
        parent, _, child = n.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, SmoothedLinear(lin, s))
    return out


def static(model, calib, observer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report is what is read here
        return mq.quantize(model, "int8", activations="static", calibration=calib, observer=observer)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--probe", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--outlier-gains", default="8,30", help="LayerNorm gains on the outlier channels (comma list)")
    p.add_argument("--observers", default="minmax,percentile")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, (args.calib + args.probe, args.seq), generator=g)
    calib = [{"input_ids": b} for b in ids[:args.calib].split(args.batch)]
    probe = [{"input_ids": b} for b in ids[args.calib:].split(args.batch)]
    payload = {"machine": machine_info(), "args": vars(args), "runs": {}}
    for gain in [1.0] + [float(v) for v in args.outlier_gains.split(",") if v]:
        label = "random init" if gain == 1.0 else f"outlier channels x{gain:g}"
        model = build_model(args, gain)
        names = linear_names(model)
        ln_fed = [n for n in names if n.endswith(("query", "key", "value", "intermediate.dense"))]
        ref = layer_outputs(model, names, probe)
        rows: Dict[str, Dict[str, float]] = {}
        dyn = mq.quantize(model, "int8").model
        rows["dynamic int8"] = {n: sqnr_db(ref[n], o) for n, o in layer_outputs(dyn, names, probe).items()}
        absmax = channel_absmax(model, names, calib)
        spread = {n: float(a.max() / a.median().clamp_min(1e-12)) for n, a in absmax.items()}
        for observer in args.observers.split(","):
            res = static(model, calib, observer)
            capture = res.report.capture
            rows[f"static {observer}"] = {n: sqnr_db(ref[n], o)
                                          for n, o in layer_outputs(res.model, names, probe).items()}
            for tag, which in (("LN-fed", ln_fed), ("all", names)):
                sm = static(smoothed(model, which, absmax, args.alpha), calib, observer)
                rows[f"static {observer} + smooth ({tag})"] = {
                    n: sqnr_db(ref[n], o) for n, o in layer_outputs(sm.model, names, probe).items()}
        payload["runs"][label] = {"capture": capture, "sqnr_db": rows, "absmax_over_median": spread}
        print(f"\n== {label}: BertModel {args.layers} layers, hidden {args.hidden}, seq {args.seq}; "
              f"static capture: {capture}; {args.calib} calibration / {args.probe} probe sequences")
        kinds = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]

        def kind_of(n):
            return next((k for k in kinds if n.endswith(k) and not (k == "output.dense" and "attention" in n)), n)
        head = f"{'contender':36s}" + "".join(f"{k.split('.')[0][:12]:>13s}" for k in kinds) + f"{'last hidden':>13s}"
        print("mean output SQNR (dB) over the layers of each kind; max|x_j| / median: "
              + ", ".join(f"{k.split('.')[0]} {max(spread[n] for n in names if kind_of(n) == k):.0f}" for k in kinds))
        print(head)
        for contender, per in rows.items():
            cells = []
            for k in kinds:
                vals = [per[n] for n in names if kind_of(n) == k]
                cells.append(f"{sum(vals) / len(vals):13.1f}")
            print(f"{contender:36s}" + "".join(cells) + f"{per['<last_hidden_state>']:13.1f}")
    path = write_results("bench_encoder", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
