"""Every entry point once, small: the run that CI repeats on emulated CPUs.

    python tests/isa_smoke.py run OUT.npz [LEVEL]  # results of this process's ISA level
                                                   # (LEVEL: the level the run must be at)
    python tests/isa_smoke.py compare A.npz B.npz  # exit 1 when two runs disagree

`make test-isa` runs it natively (capped with MONO_QUANT_ISA) and under
`qemu-x86_64 -cpu <model>` (a CPU that really lacks the host's
instructions), then compares the two.  Quantized buffers and the integer
paths (int8 dynamic Linear/Conv2d, embeddings) must match bit for bit; float
outputs (weight-only sums, torch's own kernels, which also dispatch on the
CPU) must match to fp32 rounding.  Keys say which: "exact/..." or "close/...".
Not collected by pytest (no test_ prefix); tests/kernels/test_isa_smoke.py runs it
in-process at every level the host has.
"""
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant as mq

__all__ = ["run_all", "compare", "main"]


class SmokeNet(nn.Module):
    """Embedding, Conv2d and Linear layers: one of each quantized module type."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 48)
        self.conv = nn.Conv2d(3, 20, 3, padding=1)
        self.conv_dw = nn.Conv2d(20, 20, 3, groups=4)
        self.fc1 = nn.Linear(48 + 20 * 36, 96)
        self.fc2 = nn.Linear(96, 10)

    def forward(self, image, tokens):
        a = torch.relu(self.conv_dw(torch.relu(self.conv(image)))).flatten(1)
        b = self.embed(tokens).mean(1)
        return self.fc2(torch.relu(self.fc1(torch.cat([a, b], 1))))


def _exact_random(rng: np.random.Generator, shape, scale: float) -> torch.Tensor:
    """Random values that are the same bits on every CPU: integers times a
    power of two.  (torch's own init and randn take ISA-dependent float paths:
    an emulated pre-AVX2 CPU drew a different model.)"""
    return torch.from_numpy(rng.integers(-(2 ** 15), 2 ** 15, size=shape).astype(np.float32) * scale)


def _inputs():
    rng = np.random.default_rng(1)
    tokens = torch.from_numpy(rng.integers(0, 40, size=(3, 5)))
    return _exact_random(rng, (3, 3, 8, 8), 2.0 ** -14), tokens


def _model():
    model = SmokeNet().eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(_exact_random(rng, tuple(p.shape), 2.0 ** -15 / max(1, int(fan_in ** 0.5))))
    return model


def _state(prefix: str, model: nn.Module) -> Dict[str, np.ndarray]:
    out = {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        out[f"exact/{prefix}/state/{k}"] = t.numpy().copy()
    return out


# (name, quantize() options, whether the Linear layers run integer arithmetic (int8 activations))
CASES = [
    ("int8_dynamic", dict(dtype="int8", activations="dynamic", embeddings=True), True),
    ("int8_dynamic_reduce_range", dict(dtype="int8", embeddings=True, reduce_range=True), True),  # 7-bit activations
    ("int8_weight_only", dict(dtype="int8", activations=None, embeddings=True), False),
    ("int4", dict(dtype="int4", group_size=32, embeddings=True), False),
    ("int4_rtn_sym", dict(dtype="int4", group_size=32, method="rtn", symmetric=True), False),
    ("fp16", dict(dtype="fp16"), False),
    ("bf16", dict(dtype="bf16"), False),
]


def run_all() -> Dict[str, np.ndarray]:
    """Results of every entry point at the current kernel level."""
    results: Dict[str, np.ndarray] = {}
    model, (image, tokens) = _model(), _inputs()
    with torch.no_grad():
        for name, options, integer in CASES:
            qmodel, skipped = mq.quantize(model, **options)
            # The whole forward is compared to fp32 rounding: its convs (K = 27, depthwise)
            # take torch's float conv on the dequantized weight, which dispatches on the CPU.
            # The Linear layers' integer path is compared bit for bit on exact inputs.
            kind = "close"
            y = qmodel(image, tokens)
            results[f"{kind}/{name}/forward"] = y.numpy().copy()
            if integer:
                fc_in = _exact_random(np.random.default_rng(2), (3, qmodel.fc1.in_features), 2.0 ** -12)
                results[f"exact/{name}/linear_chain"] = qmodel.fc2(torch.relu(qmodel.fc1(fc_in))).numpy().copy()
            results[f"exact/{name}/skipped"] = np.array(sorted(s.name for s in skipped), dtype=str)
            results.update(_state(name, qmodel))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "m.safetensors"
                mq.save(qmodel, path)
                loaded = mq.load(path, model=_model())
                results[f"{kind}/{name}/forward_after_load"] = loaded(image, tokens).numpy().copy()
                if integer:
                    results[f"exact/{name}/linear_chain_after_load"] = \
                        loaded.fc2(torch.relu(loaded.fc1(fc_in))).numpy().copy()
        w = model.fc1.weight.detach()
        for dtype in ("int8", "uint8"):
            qw = mq.quantize_weight(w, dtype)
            results[f"exact/quantize_weight/{dtype}/qdata"] = qw.qdata.numpy().copy()
            results[f"exact/quantize_weight/{dtype}/scale"] = qw.scale.numpy().copy()
            results[f"exact/quantize_weight/{dtype}/dequantize"] = qw.dequantize().numpy().copy()
        qw = mq.quantize_weight(w.to(torch.bfloat16), "int8", axis=None)
        results["exact/quantize_weight/bf16_per_tensor/qdata"] = qw.qdata.numpy().copy()
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.safetensors", Path(tmp) / "out.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src))
            for dtype, options in (("int8", {}), ("int4", {"group_size": 32})):
                # (embeddings stay float: the checkpoint path quantizes tables as Linear, issue 11)
                mq.quantize_checkpoint(src, dst, dtype, overwrite=True, exclude=["embed*"], **options)
                loaded = mq.load(dst)
                for k in sorted(loaded):
                    t = loaded[k]
                    results[f"exact/checkpoint/{dtype}/{k}"] = (
                        t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().copy()
                qmodel = mq.load(dst, model=_model())
                results[f"close/checkpoint/{dtype}/forward"] = qmodel(image, tokens).numpy().copy()
    return results


def compare(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> List[str]:
    """Differences between two runs, one line each (empty when they agree)."""
    problems = [f"{k}: missing in one run" for k in sorted(set(a) ^ set(b))]
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            problems.append(f"{k}: shape/dtype {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
        elif k.startswith("exact/"):
            if not np.array_equal(x, y):
                problems.append(f"{k}: differs in {int((x != y).sum())} of {x.size} elements")
        elif not np.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True):
            problems.append(f"{k}: max |diff| {float(np.abs(x.astype(np.float64) - y).max()):.3g}")
    return problems


def main(argv: List[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "run":
        active = mq.cpu_info()["active_isa"]
        if len(argv) == 3 and active != argv[2]:
            print(f"isa_smoke: running at level {active}, expected {argv[2]}")
            return 1
        results = run_all()
        np.savez(argv[1], **results)
        print(f"isa_smoke: {len(results)} results at level {mq.cpu_info()['active_isa']} -> {argv[1]}")
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        with np.load(argv[1]) as fa, np.load(argv[2]) as fb:
            problems = compare(dict(fa), dict(fb))
            count = len(fa.files)
        for line in problems:
            print("isa_smoke: MISMATCH", line)
        print(f"isa_smoke: {count} results compared, {len(problems)} mismatches")
        return 1 if problems else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
