"""The dynamic int8 Linear's quantized activation rows, when kp is a multiple of
1 KiB, lie kp + 64 bytes apart (csrc/mq.h mq_x_row_stride): every kernel level
and variant, each mode (dynamic, int8 input, reduce_range), every row tile's
size and their tails, one and two threads (panels split, and row blocks), bit
for bit against the pure-torch twin."""
import numpy as np
import pytest
import torch

from mono_quant import _C, kernels
from mono_quant.kernels import reference
from conftest import KERNELS, at_isa

ROWS = list(range(1, 14)) + [25]
SPLIT_ALWAYS_MACS = 1 << 24  # csrc/mq.h MQ_SPLIT_ALWAYS_MACS: from this much work a call takes every thread


def _out_features(m, kp, nthreads):
    """35 (a last panel of 3: its second half beyond n), or at 2 threads enough
    channels that the call splits whatever the host (linear.c threads_for_call)."""
    if nthreads == 1:
        return 35
    need = -(-SPLIT_ALWAYS_MACS // (m * kp)) - 16  # work = m * kp * (round_up(n, 16) + 16)
    return max(35, need // 16 * 16 + 16 + 3)


def _weight(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    q[::3, ::5] = -128
    zp = torch.randint(-20, 21, (n,), generator=g, dtype=torch.int32)  # x_sum matters
    scale = torch.rand(n, generator=g) * 0.1 + 1e-3
    return q, zp, scale


def _call(x, q, zp, scale, bias, mode, reduce_range, nthreads):
    packed, w_sum, has_m128 = kernels.pack_int8(q)
    y = _C.linear_int8(x.numpy(), packed.numpy(), w_sum.numpy(), scale.numpy(), zp.numpy(),
                       None if bias is None else bias.numpy(), q.shape[0], has_m128, mode=mode, nthreads=nthreads,
                       reduce_range=reduce_range)
    return torch.from_numpy(y)


def _inputs(mode, m, k, g):
    if mode != "int8_acc":
        x = torch.randn(m, k, generator=g) * torch.linspace(0.2, 4, k) + (0.5 if mode == "reduce_range" else 0.0)
        if m > 2:
            x[m // 2] = 0  # an all-zero row
        return [x]
    x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    x[:, -1] = 127
    if m == 1:
        return [x]
    x128 = x.clone()  # -128 in later rows only: linear.c sends the call to the reference
    x128[-1, k - 3] = -128
    x128[m // 2, 0] = -128
    return [x, x128]


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("k", [1024, 2048, 4096, 4093])
@pytest.mark.parametrize("mode", ["dynamic", "int8_acc", "reduce_range"])
def test_padded_rows_every_kernel_bit_exact(mode, k, nthreads):
    """k = 4093: kp = 4096, padded, with a K tail of zeros the kernels multiply."""
    g = torch.Generator().manual_seed(k + nthreads)
    kp = -(-k // 4) * 4
    for m in ROWS + ([260] if nthreads == 2 else []):  # 260 rows, 3 panels: row blocks of 72 over the threads
        n = 40 if m == 260 else _out_features(m, kp, nthreads)
        q, zp, scale = _weight(n, k, m)
        bias = None if mode == "int8_acc" else torch.randn(n, generator=g)
        for x in _inputs(mode, m, k, g):
            if mode == "int8_acc":
                want = reference.linear_int8(x, q, torch.ones(n), zp, mode="int8_acc")
            else:
                want = reference.linear_int8(x, q, scale, zp, bias, reduce_range=mode == "reduce_range")
            for kernel in KERNELS:
                with at_isa(kernel):
                    got = _call(x, q, zp, scale, bias, "dynamic" if mode == "reduce_range" else mode,
                                mode == "reduce_range", nthreads)
                assert torch.equal(got, want), (kernel, m, n, int(torch.ne(got, want).sum()))
