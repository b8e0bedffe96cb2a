"""Jobs with a lot of work are cut for two threads, whatever the shape of the work, and the
cut never changes a bit.  ``_C.linear_kernels()["split_calls"]`` counts mq_parallel_for calls
cut for more than one thread (csrc/parallel.c): a chunk rule that sizes its chunks by one
dimension (output columns, items) leaves such a job on one thread and the count unchanged.

The shapes: narrow layers at many rows (a token-classification head, Linear(768, 2..16) at
4096 rows; a Linear(4096, 8)), where the output columns alone are one or two work units."""
import math

import numpy as np
import pytest
import torch

from mono_quant import _C
from mono_quant.packing import pack_int8_linear
from mono_quant.static import reference as static_ref
from mono_quant.tensor import QuantizedWeight


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _splits():
    return int(_C.linear_kernels()["split_calls"])


def _one_and_two(call):
    """call(nthreads) at 1 thread, then at 2; returns both and whether the 2-thread call split."""
    one = call(1)
    before = _splits()
    two = call(2)
    return one, two, _splits() > before


def _int8_args(m, n, k, x_dtype=torch.float32, zero_points=False):
    w = torch.randint(-127, 128, (n, k), generator=_gen(1), dtype=torch.int8)
    zp = torch.randint(-3, 4, (n,), generator=_gen(2), dtype=torch.int32) if zero_points else torch.zeros(n, dtype=torch.int32)
    qw = QuantizedWeight(w, torch.rand(n, generator=_gen(3)) * 1e-2 + 1e-3, zp, 0, "int8", not zero_points,
                         torch.float32)
    p = pack_int8_linear(qw)
    x = torch.randn(m, k, generator=_gen(4)).to(x_dtype)
    xa = x.view(torch.int16).numpy() if x_dtype == torch.bfloat16 else x.numpy()
    return (xa, p["weight_packed"].numpy(), p["weight_colsum"].numpy(), qw.scale.numpy(), qw.zero_point.numpy(),
            torch.randn(n, generator=_gen(5)).numpy(), n, bool(int(p["weight_packed_info"][3])))


# ---- int8 Linear, dynamic: the call's work counted in whole panels and the activation pass ------


@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("m,n,k", [(4096, 2, 768), (2048, 9, 768)])
def test_dynamic_narrow_layer_at_many_rows_is_split(isa, m, n, k, reduce_range):
    """Linear(768, 2) at 4096 rows: 6.3 M multiply-adds counted by its two outputs, but a whole
    16-column panel and the quantization of 3 M activations to do: the threshold once judged
    it by n alone and kept it on one thread."""
    args = _int8_args(m, n, k)
    one, two, split = _one_and_two(lambda t: _C.linear_int8(*args, nthreads=t, reduce_range=reduce_range))
    assert split
    np.testing.assert_array_equal(two, one)


@pytest.mark.parametrize("m,n,k", [(32, 384, 384), (32, 1024, 256)])
def test_dynamic_small_call_stays_on_one_thread(m, n, k):
    """Under 2^24 multiply-adds (the demo model's 2^23 layers at batch 32: ~40 us on one thread at
    AVX-512; split, the demo model lost 13%)."""
    args = _int8_args(m, n, k)
    one, two, split = _one_and_two(lambda t: _C.linear_int8(*args, nthreads=t))
    assert not split
    np.testing.assert_array_equal(two, one)


# ---- int8 Linear, weight-only: row blocks for a few panels, the fp32 copy threaded ----------------


@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("m,n,k", [(4096, 16, 768), (4096, 2, 768), (1024, 8, 4096), (1001, 20, 531)])
def test_weight_only_narrow_layer_is_cut_over_rows(isa, m, n, k, zero_points):
    """One or two panels of output columns at many rows: cut over rows too (each tile sums a
    row's products in the same order whatever rows it shares a call with)."""
    args = _int8_args(m, n, k, zero_points=zero_points)
    one, two, split = _one_and_two(lambda t: _C.linear_int8(*args, mode="weight_only", nthreads=t))
    assert split
    np.testing.assert_array_equal(two, one)
    three = _C.linear_int8(*args, mode="weight_only", nthreads=3)
    np.testing.assert_array_equal(three, one)


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16])
def test_weight_only_half_activations_copied_by_both_threads(isa, x_dtype):
    """16-bit activations are widened to fp32 rows first: that copy is cut too (the GEMM's
    own split adds one call, the copy's a second)."""
    args = _int8_args(2048, 384, 768, x_dtype=x_dtype)
    one = _C.linear_int8(*args, mode="weight_only", nthreads=1)
    before = _splits()
    two = _C.linear_int8(*args, mode="weight_only", nthreads=2)
    assert _splits() - before >= 2
    np.testing.assert_array_equal(two, one)
    want = _C.linear_int8(args[0].astype(np.float32) if x_dtype == torch.float16 else
                          torch.from_numpy(args[0]).view(torch.bfloat16).float().numpy(), *args[1:],
                          mode="weight_only", nthreads=1)
    np.testing.assert_array_equal(one, want)


# ---- fp16 / bf16 Linear: groups of whole row blocks for a few column units ------------------------


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("m,n,k", [(4096, 4, 1536), (1024, 8, 4096), (4096, 16, 768), (1000, 23, 1100)])
def test_half_linear_narrow_layer_is_cut_over_rows(isa, bf16, m, n, k):
    """A few 12-column units at many rows: whole 64-row blocks go to different threads (the
    same tiles and K blocks as one thread), so two threads give one thread's bits."""
    w = torch.randn(n, k, generator=_gen(1))
    wa = w.to(torch.bfloat16).view(torch.int16).numpy() if bf16 else w.half().numpy()
    x, b = torch.randn(m, k, generator=_gen(2)).numpy(), torch.randn(n, generator=_gen(3)).numpy()
    one, two, split = _one_and_two(lambda t: _C.h16_linear(x, wa, bf16, bias=b, nthreads=t))
    assert split
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(_C.h16_linear(x, wa, bf16, bias=b, nthreads=3), one)
    want = x.astype(np.float64) @ (torch.from_numpy(wa).view(torch.bfloat16) if bf16 else torch.from_numpy(wa)) \
        .double().numpy().T + b
    np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-3 * math.sqrt(k))


@pytest.mark.parametrize("m,n,k", [(1, 384, 384), (64, 64, 64), (1024, 2, 256)])
def test_half_linear_small_call_stays_on_one_thread(m, n, k):
    """Under 2^21 multiply-adds (the widening counted as 8 rows more) a helper costs more than it saves."""
    x, w = torch.randn(m, k).numpy(), torch.randn(n, k).half().numpy()
    one, two, split = _one_and_two(lambda t: _C.h16_linear(x, w, False, nthreads=t))
    assert not split
    np.testing.assert_array_equal(two, one)


# ---- middling weight-only calls (2^23 up to 2^24) and fp16 ones (from 2^21): split on a quiet host ----
# (the tests run with the back-off off, conftest.py: on a busy host these calls stay on one thread
# after one of them waited for a descheduled helper)


@pytest.mark.parametrize("m,n,k", [(4096, 4, 768), (32, 1024, 256), (32, 256, 1024), (16, 440, 440), (4, 768, 768)])
def test_half_linear_middling_call_is_split(isa, m, n, k):
    """4096 x 4 x 768, the demo model's layers at batch 32, a 1x1 conv's 16 pixels (RegNet's 440 channels on
    4x4) and a 4-token sequence: on one thread those two ran 0.66-0.70x fp32's speed at 2 threads."""
    x, w = torch.randn(m, k, generator=_gen(1)).numpy(), torch.randn(n, k, generator=_gen(2)).half().numpy()
    one, two, split = _one_and_two(lambda t: _C.h16_linear(x, w, False, nthreads=t))
    assert split
    np.testing.assert_array_equal(two, one)


def test_weight_only_small_call_stays_on_one_thread():
    """The demo model's layers at batch 8 (2^21): split, they gained nothing on a quiet host and
    made the model 5x slower beside two busy processes (a helper displaced torch's worker)."""
    args = _int8_args(8, 1024, 256)
    one, two, split = _one_and_two(lambda t: _C.linear_int8(*args, mode="weight_only", nthreads=t))
    assert not split
    np.testing.assert_array_equal(two, one)


@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("m,n,k", [(32, 1024, 256), (32, 256, 1024), (16, 768, 768)])
def test_weight_only_middling_call_is_split(isa, m, n, k, zero_points):
    """The demo model's layers at batch 32 (2^23 multiply-adds, ~0.1 ms on one thread at
    AVX-512): on one thread for good, the weight-only model was only at parity with fp32."""
    args = _int8_args(m, n, k, zero_points=zero_points)
    one, two, split = _one_and_two(lambda t: _C.linear_int8(*args, mode="weight_only", nthreads=t))
    assert split
    np.testing.assert_array_equal(two, one)


# ---- static int8: many tiny items (a Linear head as one-pixel images) ----------------------------


@pytest.mark.parametrize("out_int8", [True, False])
@pytest.mark.parametrize("m,n,k", [(4096, 16, 768), (4096, 2, 768)])
def test_static_linear_head_at_many_rows_is_split(isa, m, n, k, out_int8):
    """A Linear as 4096 one-pixel images of 768 x 16 multiply-adds each: every item under the
    per-item threshold, the whole 50 M multiply-adds once on one thread."""
    xq = torch.randint(-127, 128, (m, k), generator=_gen(1), dtype=torch.int8)
    wq = torch.randint(-127, 128, (n, k), generator=_gen(2), dtype=torch.int8)
    qw = QuantizedWeight(wq, torch.ones(n), torch.zeros(n, dtype=torch.int32), 0, "int8", True, torch.float32)
    p = pack_int8_linear(qw)
    x_w_scale = torch.full((n,), 1e-3)
    inv_out = 4.0 if out_int8 else None
    expected = static_ref.linear_ref(xq, wq, x_w_scale, None, (-math.inf, math.inf), inv_out)

    def call(t):
        out = torch.empty(m, 1, 1, n, dtype=expected.dtype)
        _C.conv2d_static(xq.view(m, 1, 1, k).numpy(), p["weight_packed"].numpy(), p["weight_colsum"].numpy(),
                         x_w_scale.numpy(), None, None, out.numpy(), bool(int(p["weight_packed_info"][3])), (1, 1),
                         (1, 1), (0, 0), (1, 1), 1, -math.inf, math.inf, inv_out or 1.0, t)
        return out.view(m, n)

    one, two, split = _one_and_two(call)
    assert split
    assert torch.equal(one, expected) and torch.equal(two, expected)


def test_static_tiny_linear_stays_on_one_thread():
    xq = torch.randint(-127, 128, (64, 1, 1, 32), generator=_gen(1), dtype=torch.int8)
    wq = torch.randint(-127, 128, (8, 32), generator=_gen(2), dtype=torch.int8)
    qw = QuantizedWeight(wq, torch.ones(8), torch.zeros(8, dtype=torch.int32), 0, "int8", True, torch.float32)
    p = pack_int8_linear(qw)
    out = np.empty((64, 1, 1, 8), np.float32)
    before = _splits()
    _C.conv2d_static(xq.numpy(), p["weight_packed"].numpy(), p["weight_colsum"].numpy(), np.ones(8, np.float32),
                     None, None, out, bool(int(p["weight_packed_info"][3])), (1, 1), (1, 1), (0, 0), (1, 1), 1,
                     -math.inf, math.inf, 1.0, 2)
    assert _splits() == before


# ---- the back-off: middling calls stay on one thread where the cores are shared ------------------

ONE_CORE_SCRIPT = r"""
import os, sys
import numpy as np, torch
from mono_quant import _C
sys.path.insert(0, sys.argv[1])
from test_thread_split import _int8_args
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # the process gets one core
args = _int8_args(32, 1024, 256)
before = int(_C.linear_kernels()["split_calls"])
for _ in range(200):
    _C.linear_int8(*args, mode="weight_only", nthreads=2)
print(int(_C.linear_kernels()["split_calls"]) - before)
"""


def test_middling_calls_back_off_on_one_core():
    """A process given one core (taskset, a cgroup) but asked for 2 threads: a split call's
    helper runs on the caller's core and the caller is off it for a good part of the call, so
    after such a call the middling ones stay on one thread for a while (csrc/parallel.c)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity here")
    out = subprocess.run([sys.executable, "-c", ONE_CORE_SCRIPT, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 100  # of 200 calls: without the back-off, all 200 split
