"""A quantized model on a CUDA device: does each format still run there, and give the CPU's numbers?

The C kernels are CPU code; on a CUDA tensor every quantized layer takes its pure-torch twin
(kernels/reference.py).  This script checks what a user does with a GPU, format by format:
quantize on the CPU then ``.to("cuda")``, quantize a model that already lives on the GPU, autograd to
the input, ``.weight``, half inputs, save -> load across devices, ``load_state_dict``,
``torch.compile`` and ``torch.export`` on the GPU, a Hugging Face BERT, and static int8.  Each check
compares with the CPU's result and prints one line; ``--json`` writes them all.  Then a few timings
(Linear 4096 x 4096 on the GPU against fp32), for information: the GPU path is not a speed target.

Not part of the test run (no GPU in CI).  Run it where a GPU is, after installing the package:

    python benchmarks/cuda_check.py --json cuda_check.json

``--device cpu`` runs the same checks CPU against CPU (a dry run of the script itself).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import traceback

import torch
from torch import nn
import torch.nn.functional as F

import mono_quant as mq

RESULTS = []


def record(name, ok, detail=""):
    RESULTS.append({"check": name, "ok": bool(ok), "detail": str(detail)})
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)


def run(name, fn):
    try:
        fn()
    except Exception as exc:  # a check that raises is a failure with its message, the others go on
        record(name, False, f"raised {type(exc).__name__}: {str(exc)[:400]}")
        traceback.print_exc(limit=4)


def rel(a, b):
    """max |a - b| / max |b| (float64, on the CPU)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def sqnr(test, ref):
    test, ref = test.detach().double().cpu(), ref.detach().double().cpu()
    return float(10 * torch.log10(ref.pow(2).sum() / (test - ref).pow(2).sum().clamp_min(1e-300)))


class TokenMLP(nn.Module):
    """Embedding -> Linear -> GELU -> Linear, with a Conv1d over the sequence."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(300, 128)
        self.up = nn.Linear(128, 512)
        self.down = nn.Linear(512, 128)
        self.mix = nn.Conv1d(128, 128, 3, padding=1)
        self.head = nn.Linear(128, 96, bias=False)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.down(F.gelu(self.up(h)))
        h = h + self.mix(h.transpose(1, 2)).transpose(1, 2)
        return self.head(h)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1, groups=4)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = F.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


# (label, quantize() keyword arguments, the tolerance of a GPU result against the CPU's: max diff / max).
# On a GPU every integer layer computes in float on its dequantized weight; on the CPU int8 dynamic (and int4
# past a row count) quantize the activations too and weight-only int8 may round them to bf16 (AMX): hence
# the looser tolerances, and a second condition: the GPU's SQNR against the float model is not lower.
FORMATS = [
    ("int8-dynamic", dict(dtype="int8"), 3e-2),
    ("int8-dynamic-reduce_range", dict(dtype="int8", reduce_range=True), 3e-2),
    ("int8-weight-only", dict(dtype="int8", activations=None), 2e-3),
    ("uint8-weight-only", dict(dtype="uint8"), 2e-3),
    ("int8-embeddings", dict(dtype="int8", embeddings=True), 3e-2),
    ("int4-g128", dict(dtype="int4"), 2e-2),
    ("int4-per-channel", dict(dtype="int4", group_size=None), 2e-2),
    ("fp16", dict(dtype="fp16"), 2e-3),
    ("bf16", dict(dtype="bf16"), 1e-2),
]


def inputs(dev):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (4, 33), generator=g)
    img = torch.randn(2, 3, 20, 20, generator=g)
    return ids.to(dev), img.to(dev)


def check_format(label, kwargs, tol, dev):
    torch.manual_seed(0)
    models = {"tokens": TokenMLP().eval(), "cnn": SmallCNN().eval()}
    ids, img = inputs("cpu")
    for kind, model in models.items():
        x = ids if kind == "tokens" else img
        name = f"{label}/{kind}"
        with torch.no_grad():
            want_float = model(x)
        q, skipped = mq.quantize(model, **kwargs)
        with torch.no_grad():
            ref = q(x)
        # 1. quantized on the CPU, moved to the GPU
        qd = copy.deepcopy(q).to(dev)
        with torch.no_grad():
            out = qd(x.to(dev))
        e = rel(out, ref)
        not_worse = sqnr(out, want_float) >= sqnr(ref, want_float) - 1.0
        record(f"{name}: .to({dev}) forward", out.device.type == torch.device(dev).type and e <= tol and not_worse,
               f"rel diff vs CPU {e:.2e} (tol {tol:.0e}); SQNR vs float: cpu {sqnr(ref, want_float):.1f} dB, "
               f"{dev} {sqnr(out, want_float):.1f} dB; skipped {len(skipped)}")
        # 2. quantized where it lives: a model on the GPU; the caller's model untouched, the codes the CPU's
        md = copy.deepcopy(model).to(dev)
        before = {k: v.clone() for k, v in md.state_dict().items()}
        qg, skipped_g = mq.quantize(md, **kwargs)
        untouched = all(torch.equal(before[k], v) for k, v in md.state_dict().items())
        sd_cpu, sd_dev = q.state_dict(), qg.state_dict()
        same_keys = sorted(sd_cpu) == sorted(sd_dev)
        diffs = []
        for k in sd_cpu:
            if k in sd_dev and torch.is_tensor(sd_cpu[k]):
                a, b = sd_cpu[k], sd_dev[k].cpu()
                if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
                    diffs.append(k)
        devs = {t.device.type for t in qg.state_dict().values() if torch.is_tensor(t)}
        with torch.no_grad():
            outg = qg(x.to(dev))
        eg = rel(outg, ref)
        record(f"{name}: quantize() of a model on {dev}",
               untouched and same_keys and not diffs and eg <= tol and len(skipped_g) == len(skipped),
               f"caller untouched {untouched}; state_dict keys same {same_keys}; tensors differing from the "
               f"CPU's {diffs[:4]}{'...' if len(diffs) > 4 else ''} ({len(diffs)}); devices {sorted(devs)}; "
               f"rel diff {eg:.2e}")
        # 3. autograd to the input on the GPU (the weights are frozen codes; the input gets a gradient)
        # (the token model's input is indices: its gradient is to the first layer's output, through a hook)
        grads = []
        for m, xx in ((q, x), (qd, x.to(dev))):
            if kind == "cnn":
                leaf = xx.clone().requires_grad_(True)
                m(leaf).square().sum().backward()
            else:
                held = []
                handle = m.up.register_forward_pre_hook(
                    lambda mod, a: (held.append(a[0].detach().requires_grad_(True)) or (held[-1],)))
                m(xx).square().sum().backward()
                handle.remove()
                leaf = held[0]
            grads.append(leaf.grad)
        eg2 = rel(grads[1], grads[0]) if grads[1] is not None else float("inf")
        record(f"{name}: autograd to the input on {dev}", eg2 <= max(tol, 1e-3) * 10,
               f"grad rel diff vs CPU {eg2:.2e}")
        # 4. .weight of each quantized layer on the GPU equals the CPU's dequantized weight
        bad = []
        for (n, mc), (_, mg) in zip(q.named_modules(), qd.named_modules()):
            if isinstance(mc, mq.QuantizedModule):
                wc, wg = mc.weight, mg.weight
                if wg.device.type != torch.device(dev).type or wc.shape != wg.shape or rel(wg, wc) > 1e-6:
                    bad.append(n)
        record(f"{name}: .weight on {dev}", not bad, f"layers differing {bad}")
        # 5. half inputs on the GPU (the model cast with .half(), as users do for inference on a GPU)
        if dev != "cpu":
            qh = copy.deepcopy(q).to(dev).half()
            xh = x.to(dev) if kind == "tokens" else img.to(dev).half()
            with torch.no_grad():
                oh = qh(xh)
            eh = rel(oh, ref)
            record(f"{name}: .half() on {dev}", oh.dtype == torch.float16 and eh < max(tol, 1e-2) * 5,
                   f"dtype {oh.dtype}, rel diff vs CPU float32 {eh:.2e}")
        # 6. save from the GPU model, load on the CPU (and into a skeleton), load_state_dict on the GPU
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "q.safetensors")
            mq.save(qd, path)
            loaded = mq.load(path, model=copy.deepcopy(model))
            with torch.no_grad():
                ol = loaded(x)
            el = rel(ol, ref)
            loaded_dev = loaded.to(dev)
            with torch.no_grad():
                old = loaded_dev(x.to(dev))
            eld = rel(old, ref)
        record(f"{name}: save on {dev} -> load on cpu -> {dev}", el == 0.0 and eld <= tol,
               f"cpu rel diff {el:.2e}, {dev} {eld:.2e}")
        fresh, _ = mq.quantize(model, **kwargs)
        fresh = fresh.to(dev)
        fresh.load_state_dict({k: v.to(dev) if torch.is_tensor(v) else v for k, v in qd.state_dict().items()})
        with torch.no_grad():
            of = fresh(x.to(dev))
        record(f"{name}: load_state_dict on {dev}", rel(of, out) == 0.0, f"rel diff {rel(of, out):.2e}")


def check_compile_export(dev):
    torch.manual_seed(0)
    cnn = SmallCNN().eval()
    _, img = inputs(dev)
    for label, kwargs in (("int8-dynamic", dict(dtype="int8")), ("int4-g128", dict(dtype="int4")),
                          ("uint8-weight-only", dict(dtype="uint8"))):
        def exported_cnn():
            q = mq.quantize(cnn, **kwargs).model.to(dev)
            ep = torch.export.export(q, (img,))
            img2 = torch.randn_like(img)
            with torch.no_grad():
                out, want = ep.module()(img2), q(img2)
            e = rel(out, want)
            record(f"{label}/cnn: torch.export on {dev}", e <= 1e-5, f"rel diff vs eager on a new input {e:.2e}")
        run(f"{label}/cnn: torch.export on {dev}", exported_cnn)
    model = TokenMLP().eval()
    ids, _ = inputs(dev)
    # int8 dynamic's tolerance: the compiled graph fuses the float ops between layers (GELU, the residual
    # add), whose last bit can differ from eager's; an activation now and then lands one int8 step away
    for label, kwargs, tol in (("int8-dynamic", dict(dtype="int8"), 2e-2), ("int4-g128", dict(dtype="int4"), 1e-3),
                               ("fp16", dict(dtype="fp16"), 1e-3)):
        q, _ = mq.quantize(model, **kwargs)
        q = q.to(dev)
        with torch.no_grad():
            eager = q(ids)
        def compiled():
            c = torch.compile(q)
            with torch.no_grad():
                out = c(ids)
                ids2 = torch.randint(0, 300, ids.shape, device=ids.device)
                out2, want2 = c(ids2), q(ids2)
            e, e2 = rel(out, eager), rel(out2, want2)
            record(f"{label}: torch.compile on {dev}", e <= tol and e2 <= tol,
                   f"rel diff vs eager {e:.2e}; on other input {e2:.2e}")
        run(f"{label}: torch.compile on {dev}", compiled)

        def exported():
            ep = torch.export.export(q, (ids,))
            ids2 = torch.randint(0, 300, ids.shape, device=ids.device)
            with torch.no_grad():
                out, want2 = ep.module()(ids2), q(ids2)
            e = rel(out, want2)
            record(f"{label}: torch.export on {dev}", e <= tol, f"rel diff vs eager on a new input {e:.2e}")
        run(f"{label}: torch.export on {dev}", exported)


def check_static(dev):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    calib = [torch.randn(2, 3, 20, 20) for _ in range(4)]
    q, skipped = mq.quantize(model, dtype="int8", activations="static", calibration=calib)
    x = torch.randn(2, 3, 20, 20)
    if dev == "cpu":
        return
    # static int8 is CPU-only (its program runs the C kernels): .to(a GPU) must refuse, saying what to do
    try:
        q.to(dev)
        outcome = "moved without an error"
    except TypeError as exc:
        outcome = str(exc)
    record(f"int8-static/cnn: .to({dev}) refused with a clear error", "dynamic" in outcome and "cast" in outcome,
           outcome[:200])


def check_hf(dev):
    try:
        from transformers import BertConfig, BertModel
    except ImportError as exc:
        record("hf: transformers", False, f"not importable: {exc}")
        return
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                     vocab_size=1000)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 1000, (2, 24))
    for label, kwargs in (("int8-dynamic", dict(dtype="int8")), ("int4", dict(dtype="int4")),
                          ("fp16", dict(dtype="fp16"))):
        q, skipped = mq.quantize(model, **kwargs)
        with torch.no_grad():
            ref = q(input_ids=ids).last_hidden_state
            out = copy.deepcopy(q).to(dev)(input_ids=ids.to(dev)).last_hidden_state
        e = rel(out, ref)
        record(f"hf bert {label}: .to({dev}) forward", e <= 2e-2, f"rel diff vs CPU {e:.2e}; skipped {len(skipped)}")
    q, _ = mq.quantize(model, dtype="int8")
    with tempfile.TemporaryDirectory() as d:
        q.save_pretrained(d)
        try:
            BertModel.from_pretrained(d, device_map=dev)
            placed = "loaded"
        except Exception as exc:
            placed = f"{type(exc).__name__}: {str(exc)[:300]}"
        back = BertModel.from_pretrained(d).to(dev)
        with torch.no_grad():
            e = rel(back(input_ids=ids.to(dev)).last_hidden_state, q(input_ids=ids).last_hidden_state)
        record(f"hf bert: save_pretrained -> from_pretrained -> .to({dev})", e <= 2e-2,
               f"rel diff {e:.2e}; from_pretrained(device_map={dev!r}): {placed}")


class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.rnn = getattr(nn, kind)(16, 32, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(64, 8)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


class Branchy(nn.Module):
    """Control flow on values: fx can't trace it, so static int8 takes its per-layer path."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 64)
        self.b = nn.Linear(64, 16)

    def forward(self, x):
        h = F.relu(self.a(x))
        if h.sum() > 0:
            h = h * 2
        return self.b(h)


def _compare(name, model, args, dev, tol, **kwargs):
    """quantize on the CPU, run there and on ``dev``; and quantize the model where it lives on ``dev``."""
    q, skipped = mq.quantize(model, **kwargs)
    with torch.no_grad():
        ref = q(*args)
        ref = ref[0] if isinstance(ref, tuple) else getattr(ref, "logits", ref)
        qd = copy.deepcopy(q).to(dev)
        out = qd(*(a.to(dev) for a in args))
        out = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
        qg = mq.quantize(copy.deepcopy(model).to(dev), **kwargs).model
        outg = qg(*(a.to(dev) for a in args))
        outg = outg[0] if isinstance(outg, tuple) else getattr(outg, "logits", outg)
        back = qd.cpu()(*args)
        back = back[0] if isinstance(back, tuple) else getattr(back, "logits", back)
    e, eg = rel(out, ref), rel(outg, ref)
    record(f"{name}: {dev} vs cpu", e <= tol and eg <= tol and torch.equal(back, ref),
           f"moved {e:.2e}, quantized on {dev} {eg:.2e} (tol {tol:.0e}); back on the cpu equal "
           f"{torch.equal(back, ref)}; quantized {len(list(m for m in q.modules() if isinstance(m, mq.QuantizedModule)))}"
           f", skipped {len(skipped)}")


def check_more_layers(dev):
    torch.manual_seed(0)
    seq = torch.randn(3, 11, 16)
    for kind in ("LSTM", "GRU", "RNN"):
        for label, kwargs, tol in (("int8", dict(dtype="int8"), 3e-2), ("int4", dict(dtype="int4"), 3e-2),
                                   ("fp16", dict(dtype="fp16"), 2e-3)):
            run(f"{kind} {label}", lambda: _compare(f"{kind} {label}", Recurrent(kind).eval(), (seq,), dev, tol,
                                                    **kwargs))
    tokens = torch.randn(2, 9, 64)
    enc = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0).eval()
    for label, kwargs, tol in (("int8", dict(dtype="int8"), 3e-2), ("int4", dict(dtype="int4"), 3e-2)):
        run(f"TransformerEncoderLayer {label}",
            lambda: _compare(f"TransformerEncoderLayer {label}", enc, (tokens,), dev, tol, **kwargs))
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]
    run("MultiheadAttention int8", lambda: _compare("MultiheadAttention int8", SelfAttention().eval(), (tokens,), dev,
                                                     3e-2, dtype="int8"))
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
        gpt = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=120, n_positions=32)).eval()
        ids = torch.randint(0, 120, (2, 12))
        run("gpt2 int8", lambda: _compare("hf gpt2 int8", gpt, (ids,), dev, 3e-2, dtype="int8"))
        run("gpt2 int4", lambda: _compare("hf gpt2 int4", gpt, (ids,), dev, 3e-2, dtype="int4"))
    except ImportError as exc:
        record("hf gpt2", False, f"transformers: {exc}")

    def per_layer_static():
        model = Branchy().eval()
        calib = [torch.randn(4, 32) for _ in range(4)]
        q, _ = mq.quantize(model, dtype="int8", activations="static", calibration=calib)
        try:
            q.to(dev)
            x = torch.randn(4, 32)
            with torch.no_grad():
                out = q(x.to(dev))
            outcome = f"ran: output on {out.device}"
            ok = dev == "cpu" or out.device.type == torch.device(dev).type
        except (TypeError, RuntimeError, ValueError, NotImplementedError) as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:200]}"
            ok = "dynamic" in str(exc) or "CPU" in str(exc)
        devices = sorted({t.device.type for t in q.state_dict().values() if torch.is_tensor(t)})
        record(f"per-layer static int8: .to({dev})", ok, f"{outcome}; tensors now on {devices}")
    run("per-layer static", per_layer_static)

    def autocast_bf16():
        if dev == "cpu":
            return
        model = TokenMLP().eval()
        q = mq.quantize(model, dtype="int8").model.to(dev)
        ids, _ = inputs(dev)
        with torch.no_grad():
            want = q(ids)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                got = q(ids)
        e = rel(got, want)
        record(f"int8 under torch.autocast(cuda, bf16)", e <= 2e-2, f"dtype {got.dtype}, rel diff vs no autocast {e:.2e}")
    run("autocast", autocast_bf16)

    def onnx_from_gpu():
        model = TokenMLP().eval()
        q = mq.quantize(model, dtype="int8").model
        ids, _ = inputs("cpu")
        with torch.no_grad():
            want = q(ids)
        qd = copy.deepcopy(q).to(dev)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.onnx")
            try:
                mq.export_onnx(qd, (ids.to(dev),), path)
            except Exception as exc:  # a clear refusal is acceptable, a crash deep in torch is not
                record(f"export_onnx of a model on {dev}", "cpu" in str(exc).lower() or "device" in str(exc).lower(),
                       f"{type(exc).__name__}: {str(exc)[:300]}")
                return
            import onnxruntime as ort
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: ids.numpy()})[0]
        e = rel(torch.from_numpy(got), want)
        record(f"export_onnx of a model on {dev} (run on ORT's CPU)", e <= 3e-2, f"rel diff vs CPU eager {e:.2e}")
    run("onnx", onnx_from_gpu)


def timings(dev, repeat=50):
    """Linear 4096 x 4096 on the device: each format's time over fp32 F.linear's (information only)."""
    sync = torch.cuda.synchronize if dev != "cpu" else (lambda: None)
    torch.manual_seed(0)
    lin = nn.Linear(4096, 4096).to(dev)
    for batch in ((1, 32, 512) if dev != "cpu" else (1,)):
        x = torch.randn(batch, 4096, device=dev)
        rows = []
        layers = {"fp32": lin}
        for label, kwargs in (("int8-dynamic", dict(dtype="int8")), ("int8-weight-only", dict(dtype="int8", activations=None)),
                              ("int4-g128", dict(dtype="int4")), ("fp16", dict(dtype="fp16")),
                              ("bf16", dict(dtype="bf16"))):
            layers[label] = mq.quantize(nn.Sequential(lin), **kwargs).model[0]
        times = {k: [] for k in layers}
        with torch.no_grad():
            for _ in range(3):
                for k, m in layers.items():
                    m(x)
            sync()
            for _ in range(5):  # interleaved rounds, the median of each
                for k, m in layers.items():
                    t0 = time.perf_counter()
                    for _ in range(repeat):
                        m(x)
                    sync()
                    times[k].append((time.perf_counter() - t0) / repeat * 1e6)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        for k, v in med.items():
            rows.append(f"{k} {v:.0f} us (x{med['fp32'] / v:.2f})")
        record(f"timing {dev} Linear 4096x4096 batch {batch}", True, "; ".join(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    dev = args.device
    if dev != "cpu" and not torch.cuda.is_available():
        sys.exit(f"no CUDA device (torch {torch.__version__}); --device cpu for a dry run")
    info = {"torch": torch.__version__, "python": platform.python_version(), "mono_quant": mq.__version__,
            "device": torch.cuda.get_device_name() if dev != "cpu" else "cpu", "cpu": mq.cpu_info()}
    print(json.dumps(info, default=str), flush=True)
    for label, kwargs, tol in FORMATS:
        run(f"{label}: format checks", lambda: check_format(label, kwargs, tol, dev))
    run("int8-static", lambda: check_static(dev))
    run("hf", lambda: check_hf(dev))
    check_more_layers(dev)
    if not args.skip_compile:
        check_compile_export(dev)
    run("timings", lambda: timings(dev))
    failed = [r for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": RESULTS}, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
