"""Same inputs, same results on every platform: record, then compare.

    python tools/numerics_digest.py record OUT.npz     (with the package to test)
    python tools/numerics_digest.py compare A.npz B.npz

`record` runs the package's entry points on inputs made with NumPy's
platform-independent generator (no torch RNG): the fused int8 row kernel on
fp32/fp16/bf16 rows, and quantize() of a small model with Linear, Conv2d and
Embedding layers to int8 (dynamic and weight-only), int4 and fp16, then its
forward and a save -> load round trip.  It stores every tensor that save()
writes and every forward output.

`compare` fails unless everything quantized (what a checkpoint stores) is
bit-identical, and reports forward outputs: exact where the C kernels
compute them; where a torch op of the host (its BLAS) takes part, rounding
may differ, and the relative difference must stay under 1e-5.

tools/aarch64_test.sh records on the x86 host (scalar kernels) and under
qemu-aarch64, then compares: that a quantized checkpoint does not depend on
the machine it was made on is the property users rely on.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["record", "compare"]

FORWARD_RTOL = 1e-5


def _inputs():
    import torch

    rng = np.random.default_rng(20261129)

    def tensor(*shape, scale=1.0):
        return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))

    return rng, tensor


class _Tiny:
    """A model with each layer kind quantize() handles, weights from NumPy."""

    @staticmethod
    def build(tensor):
        import torch
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(40, 64)
                self.fc1 = nn.Linear(64, 96)
                self.fc2 = nn.Linear(96, 33)
                self.conv = nn.Conv2d(3, 16, 3, padding=1)
                self.head = nn.Linear(16 * 5 * 5, 17)

            def forward(self, ids, img):
                # only elementwise torch ops besides the layers: no reductions
                # whose order a platform's torch may choose differently
                h = torch.relu(self.fc1(self.emb(ids)))
                a = self.fc2(h)
                b = self.head(torch.relu(self.conv(img)).flatten(1))
                return a, b

        model = Tiny().eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(tensor(*p.shape, scale=0.2 if name.endswith("bias") else 1.0 / max(p.shape[-1], 1) ** 0.5))
        return model


def record(out: Path) -> None:
    """Run the entry points and write every result to ``out`` (.npz)."""
    import torch
    from safetensors.numpy import load_file

    import mono_quant as mq
    from mono_quant import kernels

    kernels.set_isa("scalar")  # the level every platform has; x86 SIMD levels are tested natively
    torch.set_num_threads(1)
    rng, tensor = _inputs()
    results: dict[str, np.ndarray] = {}

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for rows, cols in ((1, 1), (7, 33), (16, 257), (3, 4100)):
            x = tensor(rows, cols, scale=3.0).to(dtype)
            for symmetric in (False, True):
                q, scale, zero_point = kernels.quantize_rows_fused(x, -128, 127, symmetric)[:3]
                key = f"stored/rows/{str(dtype)[6:]}/{rows}x{cols}/{'sym' if symmetric else 'asym'}"
                results[key + "/q"] = q.numpy()
                results[key + "/scale"] = scale.numpy()
                results[key + "/zero_point"] = zero_point.numpy()

    model = _Tiny.build(tensor)
    ids = torch.from_numpy(rng.integers(0, 40, size=(2, 9)))
    img = tensor(2, 3, 5, 5)
    configs = {
        "int8_dynamic": dict(dtype="int8"),
        "int8_weight_only": dict(dtype="int8", activations=None),
        "int4_g32": dict(dtype="int4", group_size=32),
        "fp16": dict(dtype="fp16"),
    }
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, options in configs.items():
            qmodel, _ = mq.quantize(model, embeddings=True, **options)
            for i, out_tensor in enumerate(qmodel(ids, img)):
                results[f"forward/{name}/out{i}"] = out_tensor.numpy()
            path = Path(tmp) / f"{name}.safetensors"
            mq.save(qmodel, path)
            for key, value in load_file(str(path)).items():
                results[f"stored/{name}/{key}"] = value
            reloaded = mq.load(path, model=_Tiny.build(tensor))
            for i, out_tensor in enumerate(reloaded(ids, img)):
                results[f"forward/{name}/reloaded/out{i}"] = out_tensor.numpy()
    np.savez(out, **results)
    print(f"numerics_digest: recorded {len(results)} arrays to {out}")


def compare(a_path: Path, b_path: Path) -> int:
    """Compare two recordings; return the number of failures."""
    a, b = np.load(a_path), np.load(b_path)
    failures = 0
    if set(a.files) != set(b.files):
        print(f"numerics_digest: different entries: {sorted(set(a.files) ^ set(b.files))[:10]}")
        return 1
    exact_forward, worst = 0, (0.0, "")
    forward_keys = [k for k in a.files if k.startswith("forward/")]
    for key in sorted(a.files):
        x, y = a[key], b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            print(f"FAIL {key}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
            failures += 1
        elif key.startswith("stored/"):
            if x.tobytes() != y.tobytes():
                print(f"FAIL {key}: stored results differ ({np.count_nonzero(x != y)} of {x.size} elements)")
                failures += 1
        elif x.tobytes() == y.tobytes():
            exact_forward += 1
        else:
            rel = float(np.max(np.abs(x.astype(np.float64) - y)) / max(np.max(np.abs(x)), 1e-30))
            worst = max(worst, (rel, key))
            if rel > FORWARD_RTOL:
                print(f"FAIL {key}: forward outputs differ by {rel:.3g} (relative), over {FORWARD_RTOL}")
                failures += 1
    stored = len(a.files) - len(forward_keys)
    print(f"numerics_digest: {stored} stored arrays bit-identical: {stored - sum(1 for k in a.files if k.startswith('stored/') and a[k].tobytes() != b[k].tobytes())}; "
          f"forward outputs bit-identical: {exact_forward} of {len(forward_keys)}"
          + (f", largest difference {worst[0]:.3g} relative in {worst[1]}" if worst[1] else ""))
    return failures


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "record":
        record(Path(argv[2]))
        return 0
    if len(argv) == 4 and argv[1] == "compare":
        return 1 if compare(Path(argv[2]), Path(argv[3])) else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
