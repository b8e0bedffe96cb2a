"""The dynamic int8 Linear's activation rows (act_rows: min/max, qparams, codes, row sum
and encoding in one call per block of rows): every level against the scalar twin and
the scalar twin against the pure-torch formula, bit for bit, on odd row lengths and
extreme rows, fp32 / fp16 / bf16, symmetric int8 and reduce_range's 7-bit codes."""
import numpy as np
import pytest
import torch

from mono_quant import _C
from mono_quant.kernels import reference
from conftest import SUPPORTED, at_isa

LENGTHS = [1, 7, 15, 17, 63, 65, 384, 3072]
MODES = [(False, 0), (False, 1), (True, 0), (True, 1), (True, 2)]  # (reduce_range, encoding)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _rows(k: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(k)
    big = 6e4 if dtype == torch.float16 else 1e30  # fp16's largest finite values
    rows = [torch.randn(k, generator=g) * 3 + 0.7, torch.zeros(k), torch.full((k,), 2.5), torch.full((k,), -3.0),
            torch.rand(k, generator=g) * 5, torch.randn(k, generator=g) * big, torch.randn(k, generator=g) * 1e-3,
            torch.linspace(-1, 1, k), torch.randn(k, generator=g)]
    x = torch.stack(rows)
    nan_row, inf_row = torch.randn(k, generator=g), torch.randn(k, generator=g)
    nan_row[k // 2] = float("nan")
    inf_row[-1] = -float("inf")
    return torch.cat([x, nan_row[None], inf_row[None]]).to(dtype)


def _np(x: torch.Tensor) -> np.ndarray:
    return (x.view(torch.int16) if x.dtype == torch.bfloat16 else x).numpy()


def _kp(k: int) -> int:
    return (k + 31) // 32 * 32


def _quantize(x, reduce_range, encoding):
    q, scale, zp, s = _C.quantize_activations(_np(x), reduce_range, encoding, _kp(x.shape[1]))
    return torch.from_numpy(q), torch.from_numpy(scale), None if zp is None else torch.from_numpy(zp), torch.from_numpy(s)


def _expected(x, reduce_range, encoding):
    """The pure-torch formula: torch's MinMax qparams per row, the codes, the encoding."""
    k = x.shape[1]
    qmin, qmax = (0, 127) if reduce_range else (-127, 127)
    q, scale, zp, _, _, _ = reference.quantize_rows_fused(x.float(), qmin, qmax, symmetric=not reduce_range)
    bad = torch.isnan(scale)
    zp = torch.where(bad, 0, zp.to(torch.int32)) if reduce_range else torch.zeros_like(zp, dtype=torch.int32)
    xq = q.to(torch.int32) - zp[:, None]
    xq[bad] = 0
    xq = torch.cat([xq, torch.zeros(x.shape[0], _kp(k) - k, dtype=torch.int32)], dim=1)
    codes = xq + zp[:, None] if encoding == 2 else xq + 128 if encoding == 1 else xq
    return codes.to(torch.uint8), scale, zp if reduce_range else None, xq.sum(dim=1).to(torch.int32)


def _same(a, b):
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1]) or torch.allclose(a[1], b[1], equal_nan=True, rtol=0, atol=0)
    assert (a[2] is None and b[2] is None) or torch.equal(a[2], b[2])
    assert torch.equal(a[3], b[3])


@pytest.mark.parametrize("k", LENGTHS)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"rr{int(m[0])}_enc{m[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_act_rows_levels_match_scalar_and_torch(k, mode, dtype):
    x = _rows(k, dtype)
    with at_isa("scalar"):
        want = _quantize(x, *mode)
    _same(want, _expected(x, *mode))
    for level in SUPPORTED[1:]:
        with at_isa(level):
            _same(_quantize(x, *mode), want)


def test_act_rows_rejects_bad_arguments():
    x = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="encoding"):
        _C.quantize_activations(x, False, 2)
    with pytest.raises(ValueError, match="kp"):
        _C.quantize_activations(x, True, 0, 3)
