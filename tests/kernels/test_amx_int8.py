"""The AVX-512 level's dynamic int8 matmul on AMX tiles (x86/amx/linear.c): whole 16-row tiles
on tdpbusd, the K-groups past whole 64-byte tiles and the rows past whole 16-row tiles on
vpdpbusd, one epilogue with the VNNI kernel.  Integer sums are exact in any order, so every
case must give the VNNI kernel's bits and the reference's exact accumulators: rows around
the 16- and 32-row tiles and across the kernel's row chunks, K with and without a tail, a
last panel alone, weights at -128 / 127, zero-points, 7-bit activations, two threads, conv,
and a fork after an AMX call.  Skipped where the CPU (or the OS) has no AMX."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mono_quant import _C, kernels
from mono_quant.kernels import reference
from mono_quant.kernels.settings import SETTINGS
from conftest import AMX, at_isa
from fork_scripts import WAIT_FOR_CHILD

needs_amx = pytest.mark.skipif(not AMX, reason="the CPU or the OS has no AMX-INT8")

# 1-15 rows: the VNNI kernel alone; 16-257: whole tiles, 2-tile blocks and the rows left over
ROWS = [1, 7, 15, 16, 17, 31, 32, 33, 47, 48, 100, 257]
# under one 64-byte tile (60-63: the VNNI kernel), a tile and a tail, whole tiles, long K
KS = [60, 61, 63, 64, 68, 131, 200, 1024, 1030]
OUTS = [1, 16, 17, 40, 130]


def _weight(n, k, g):
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    w[::3, ::5] = -128
    w[1::5, 1::2] = 127
    return w


def _both(fn):
    """fn() on AMX and on the VNNI kernel, at the AVX-512 level."""
    with at_isa("avx512"):
        with SETTINGS.for_tests(amx=True):
            assert _C.linear_kernels()["dynamic"] == "amx_int8"
            on = fn()
        with SETTINGS.for_tests(amx=False):
            assert _C.linear_kernels()["dynamic"] == "avx512_vnni"
            off = fn()
    return on, off


@needs_amx
@pytest.mark.parametrize("k", KS)
def test_exact_accumulators_every_tile_edge(k):
    g = torch.Generator().manual_seed(k)
    for n in OUTS:
        w = _weight(n, k, g)
        p, w_sum, has_m128 = kernels.pack_int8(w)
        for rows in ROWS:
            x = torch.randint(-127, 128, (rows, k), generator=g, dtype=torch.int8)
            x[::2, ::2] = torch.where(x[::2, ::2] < 0, -127, 127).to(torch.int8)  # the largest sums
            zp = torch.randint(-128, 128, (n,), generator=g, dtype=torch.int32) if rows % 2 else torch.zeros(
                n, dtype=torch.int32)
            want = reference.linear_int8(x, w, torch.ones(n), zp, mode="int8_acc")
            on, off = _both(lambda: kernels.linear_int8(x, p, w_sum, torch.ones(n), zp, None, n, has_m128,
                                                        mode="int8_acc"))
            assert torch.equal(on, want), (rows, n, k, int(torch.ne(on, want).sum()))
            assert torch.equal(off, want), (rows, n, k)


@needs_amx
@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("rows, n, k", [(16, 64, 200), (48, 77, 96), (130, 130, 515), (600, 48, 1024),
                                        (1030, 40, 64), (64, 208, 4096)])
def test_float_outputs_same_bits_as_vnni_and_the_twin(rows, n, k, reduce_range):
    # 600 and 1030 rows pass several of the kernel's row chunks (about 256 KiB of activations)
    g = torch.Generator().manual_seed(rows + n)
    w = _weight(n, k, g)
    zp = torch.randint(-10, 11, (n,), generator=g, dtype=torch.int32)
    scale, bias = torch.rand(n, generator=g) * 0.01 + 1e-4, torch.randn(n, generator=g)
    x = torch.randn(rows, k, generator=g) * 2 + 0.3
    x[rows // 2] = 0.0  # an all-zero row
    p, w_sum, has_m128 = kernels.pack_int8(w)
    on, off = _both(lambda: kernels.linear_int8(x, p, w_sum, scale, zp, bias, n, has_m128,
                                                reduce_range=reduce_range))
    assert torch.equal(on, off)
    assert torch.equal(on, reference.linear_int8(x, w, scale, zp, bias, reduce_range=reduce_range))


@needs_amx
@pytest.mark.parametrize("rows, n, k", [(1000, 40, 2048), (600, 130, 1030), (2048, 768, 768), (200, 1000, 576)])
def test_two_threads_same_bits_as_one(rows, n, k):
    # split for real (the call's split counter moves): a narrow layer over row blocks (whole
    # 32-row blocks and a few VNNI rows), a wide one over panels (threads' first panels anywhere)
    g = torch.Generator().manual_seed(rows)
    w = _weight(n, k, g)
    p, w_sum, has_m128 = kernels.pack_int8(w)
    zp = torch.randint(-5, 6, (n,), generator=g, dtype=torch.int32).numpy()
    args = (torch.randn(rows, k, generator=g).numpy(), p.numpy(), w_sum.numpy(),
            (torch.rand(n, generator=g) * 1e-2).numpy(), zp, torch.randn(n, generator=g).numpy(), n, has_m128)
    with at_isa("avx512"):
        one = _C.linear_int8(*args, nthreads=1)
        before = int(_C.linear_kernels()["split_calls"])
        np.testing.assert_array_equal(_C.linear_int8(*args, nthreads=2), one)
        assert int(_C.linear_kernels()["split_calls"]) > before
        with SETTINGS.for_tests(amx=False):
            np.testing.assert_array_equal(_C.linear_int8(*args, nthreads=2), one)


@needs_amx
def test_conv2d_same_bits_as_vnni():
    import mono_quant as mq
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 24, 3, stride=2, groups=2), torch.nn.Flatten(),
                                torch.nn.LazyLinear(70))
    x = torch.randn(3, 16, 14, 14)
    model(x)
    qmodel, _ = mq.quantize(model, dtype="int8")
    with torch.no_grad():
        on, off = _both(lambda: qmodel(x))
    assert torch.equal(on, off)


@needs_amx
def test_setting_reports_and_restores():
    assert SETTINGS.amx is True
    assert SETTINGS.set_amx(False) is True
    try:
        assert SETTINGS.amx is False
        with at_isa("avx512"):
            assert _C.linear_kernels()["dynamic"] == "avx512_vnni"
    finally:
        SETTINGS.set_amx(True)
    assert SETTINGS.amx is True


@needs_amx
def test_a_forked_child_runs_amx():
    # (the int8 matmul and int4 with int8 activations) the OS grant of the tile data is per process, inherited by fork(): a DataLoader worker
    # forked after an AMX call runs AMX too (without the grant, SIGILL)
    code = WAIT_FOR_CHILD + (
        "import os, numpy as np, torch\n"
        "from mono_quant import _C, kernels\n"
        "w = torch.randint(-127, 128, (64, 256), dtype=torch.int8)\n"
        "p, s, m = kernels.pack_int8(w)\n"
        "x = torch.randn(64, 256)\n"
        "f = lambda: kernels.linear_int8(x, p, s, torch.ones(64), torch.zeros(64, dtype=torch.int32), None, 64, m)\n"
        "from mono_quant.int4 import quantize_int4\n"
        "q = quantize_int4(torch.randn(40, 256), group_size=128)[0]\n"
        "f4 = lambda: _C.q4_linear(x.numpy(), q.qdata.numpy(), q.scale.numpy(), q.zero_point.numpy(), 128)\n"
        "assert _C.linear_kernels()['dynamic'] == _C.linear_kernels()['int4_int8'] == 'amx_int8'\n"
        "want, want4 = f(), f4()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if torch.equal(f(), want) and np.array_equal(f4(), want4) else 3)\n"
        "status = wait_for_child(pid, 60)\n"
        "print('child', os.waitstatus_to_exitcode(status), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, MONO_QUANT_ISA="avx512"))
    assert out.returncode == 0, out.stderr
    assert "child 0" in out.stdout, out.stdout + out.stderr


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MONO_QUANT_ISA="avx512", **env))


@needs_amx
@pytest.mark.parametrize("value", ["0", "off", "FALSE", "No"])
def test_environment_turns_amx_off(value):
    # MONO_QUANT_AMX off: the tile data is never asked for, the VNNI kernel runs, and asking
    # for AMX says where to look
    code = ("from mono_quant import _C\n"
            "assert _C.use_amx(None) is False\n"
            "assert _C.cpu_info()['amx'] == 'off: MONO_QUANT_AMX', _C.cpu_info()['amx']\n"
            "assert _C.linear_kernels()['dynamic'] == 'avx512_vnni'\n"
            "try:\n"
            "    _C.use_amx(True)\n"
            "except RuntimeError as e:\n"
            "    assert \"cpu_info()['amx']\" in str(e)\n"
            "else:\n"
            "    raise AssertionError('AMX switched on')\n"
            "print('ok')\n")
    out = _run(code, MONO_QUANT_AMX=value)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr


@needs_amx
def test_refused_tile_data_falls_back_and_says_why():
    # Linux refuses the tile data when a thread's alternate signal stack is too small for it:
    # the VNNI kernel then runs (the same bits) and cpu_info says why
    code = ("import ctypes, numpy as np\n"
            "class Stack(ctypes.Structure):\n"
            "    _fields_ = [('sp', ctypes.c_void_p), ('flags', ctypes.c_int), ('size', ctypes.c_size_t)]\n"
            "buf = ctypes.create_string_buffer(8192)\n"
            "st = Stack(ctypes.cast(buf, ctypes.c_void_p), 0, 8192)\n"
            "assert ctypes.CDLL(None, use_errno=True).sigaltstack(ctypes.byref(st), None) == 0\n"
            "import torch\n"
            "from mono_quant import _C, kernels\n"
            "status = _C.cpu_info()['amx']\n"
            "assert status.startswith('off: Linux refused'), status\n"
            "assert _C.linear_kernels()['dynamic'] == 'avx512_vnni'\n"
            "w = torch.randint(-127, 128, (64, 256), dtype=torch.int8)\n"
            "p, s, m = kernels.pack_int8(w)\n"
            "x = torch.randint(-127, 128, (64, 256), dtype=torch.int8)\n"
            "got = kernels.linear_int8(x, p, s, torch.ones(64), torch.zeros(64, dtype=torch.int32), None, 64, m,\n"
            "                          mode='int8_acc')\n"
            "assert torch.equal(got, (x.double() @ w.double().T).to(torch.int32))\n"
            "print('ok')\n")
    out = _run(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr


def test_amx_is_on_where_the_cpu_has_it():
    # not a skip: a CPU with AMX-INT8 whose OS grants the tile data must run the AMX kernel,
    # or the tests above would silently stop testing it
    info = _C.cpu_info()
    if not (info["amx_int8"] and info["avx512_vnni"] and info["best_isa"] == "avx512"):
        assert info["amx"].startswith("no AMX") and not _C.use_amx(None)
        return
    if os.environ.get("MONO_QUANT_AMX", "").lower() in ("0", "false", "off", "no"):
        assert info["amx"] == "off: MONO_QUANT_AMX"
        return
    assert info["amx"] == "on", info["amx"]
    assert AMX
