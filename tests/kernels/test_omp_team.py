"""The "omp-team" backend's use of torch's OpenMP team (csrc/omp_team.c): the same
bits as our own helpers, no hang in a child forked after the team ran our
work, and libgomp never loaded by us."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C

from fork_scripts import WAIT_FOR_CHILD

# The team path is taken only for jobs whose previous run of the same shape
# took 1 ms of one thread's time or more, and not right after a call that
# waited for a descheduled worker (then it pauses): so call until it ran.
RUN_ON_TEAM = textwrap.dedent("""
    import time
    from mono_quant import _C

    def run_on_team(call, deadline_s=60.0):
        '''call() until one of its jobs ran on torch's OpenMP team; its last result.'''
        before, end = _C.linear_kernels()["omp_team_calls"], time.monotonic() + deadline_s
        while True:
            out = call()
            if _C.linear_kernels()["omp_team_calls"] > before:
                return out
            if time.monotonic() > end:
                raise AssertionError("no job ran on torch's OpenMP team")
            time.sleep(0.01)
""")
exec(RUN_ON_TEAM)


@pytest.fixture
def two_threads_team():
    threads, backend = torch.get_num_threads(), _C.set_threading_backend("omp-team")
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
    _C.set_threading_backend(backend)


def _heavy_layers():
    """Quantized layers whose calls are jobs of a few ms on one thread, and an input each."""
    torch.manual_seed(0)
    lin = nn.Linear(1000, 777)  # tails: 777 outputs = 48 panels of 16 + 9
    return [
        (mq.quantize(lin, activations="dynamic").model, torch.randn(301, 1000)),
        (mq.quantize(lin, activations=None).model, torch.randn(150, 1000)),
        # int4 at many rows takes torch's matmul; at a few rows its own kernel (odd 4099 outputs)
        (mq.quantize(nn.Sequential(nn.Linear(4096, 4099)), dtype="int4").model, torch.randn(4, 4096)),
    ]


def test_team_gives_the_same_bits_as_our_helpers(two_threads_team):
    with torch.no_grad():
        for layer, x in _heavy_layers():
            _C.set_threading_backend("pool")
            expected = layer(x)
            _C.set_threading_backend("omp-team")
            assert torch.equal(run_on_team(lambda: layer(x)), expected), layer


@pytest.mark.parametrize("backend", ["pool", "pthreads"])
def test_other_backends_never_use_the_team(two_threads_team, backend):
    layer, x = _heavy_layers()[0]
    _C.set_threading_backend(backend)
    before = _C.linear_kernels()["omp_team_calls"]
    with torch.no_grad():
        for _ in range(5):
            layer(x)
    assert _C.linear_kernels()["omp_team_calls"] == before


# A child forked after our work ran on torch's team: libgomp's team is not
# usable there (its next region waits for workers that do not exist), so
# the team is released before fork; torch's own parallel ops and ours must
# both run in the child.  A hang fails the test, not the suite.
FORK_AFTER_TEAM = RUN_ON_TEAM + WAIT_FOR_CHILD + textwrap.dedent("""
    import os, sys, threading
    import torch
    from torch import nn
    import mono_quant as mq

    torch.set_num_threads(2)
    torch.manual_seed(0)
    layer = mq.quantize(nn.Linear(1024, 1024)).model
    x = torch.randn(256, 1024)
    big = torch.randn(4_000_000)
    with torch.no_grad():
        expected = layer(x)
        assert torch.equal(run_on_team(lambda: layer(x)), expected)
        big.add_(1.0)  # torch's own parallel op, on the same team
    if "--from-thread" in sys.argv:  # another Python thread: our pool, never a team of its own
        done, same = threading.Event(), []
        before = _C.linear_kernels()["omp_team_calls"]
        def work():
            with torch.no_grad():
                same.append(all(torch.equal(layer(x), expected) for _ in range(5)))
            done.set()
        threading.Thread(target=work).start()
        done.wait()
        assert same == [True] and _C.linear_kernels()["omp_team_calls"] == before
    team_calls = _C.linear_kernels()["omp_team_calls"]

    pid = os.fork()
    if pid == 0:
        try:
            big.add_(1.0)
            a, b = torch.randn(256, 512), torch.randn(512, 512)
            ok = torch.allclose(a @ b, (a.double() @ b.double()).float(), atol=1e-3)
            with torch.no_grad():
                for _ in range(3):
                    ok = ok and torch.equal(layer(x), expected)
            ok = ok and _C.linear_kernels()["omp_team_calls"] == team_calls  # the child runs on our pool
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    status = wait_for_child(pid, float(sys.argv[1]))
    with torch.no_grad():
        big.add_(1.0)
        assert torch.equal(run_on_team(lambda: layer(x)), expected)  # and the parent's team still works
    sys.exit(os.waitstatus_to_exitcode(status))
""")


@pytest.mark.parametrize("where", ["main-thread", "second-thread"])
def test_fork_after_forward_on_the_team(where):
    args = [sys.executable, "-c", FORK_AFTER_TEAM, "60"] + (["--from-thread"] if where == "second-thread" else [])
    env = dict(os.environ, MONO_QUANT_THREADS="omp-team", OMP_NUM_THREADS="2")
    env.pop("OMP_WAIT_POLICY", None)
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("the forking script hung")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_libgomp_never_loaded_by_us():
    """Without torch in the process, a parallel kernel runs on our helpers and no libgomp appears."""
    so = _C.__file__
    code = textwrap.dedent(f"""
        import importlib.util, sys
        import numpy as np
        spec = importlib.util.spec_from_file_location("mono_quant._C", {so!r})
        C = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(C)
        assert "torch" not in sys.modules
        x = np.random.default_rng(0).standard_normal((4096, 1024)).astype(np.float32)
        for _ in range(3):
            mn, mx, bad = C.rows_minmax(x, nthreads=2)
        assert np.array_equal(mn, x.min(1)) and np.array_equal(mx, x.max(1))
        maps = open("/proc/self/maps").read()
        assert "libgomp" not in maps, "libgomp was loaded"
        assert C.linear_kernels()["omp_team_calls"] == 0
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# A child forked before any of our work ran on the team (the team was found in
# no process yet, torch's own team running): the child must not find and use
# the team copied from its parent (it would wait for workers that are not there).
FORK_BEFORE_TEAM = WAIT_FOR_CHILD + textwrap.dedent("""
    import os, sys, time
    import torch
    from torch import nn
    import mono_quant as mq
    from mono_quant import _C

    torch.set_num_threads(2)
    torch.manual_seed(0)
    layer = mq.quantize(nn.Linear(1024, 1024)).model
    x = torch.randn(256, 1024)
    torch.randn(4_000_000).add_(1.0)  # torch's team started; none of our jobs on it yet
    assert _C.linear_kernels()["omp_team_calls"] == 0
    pid = os.fork()
    if pid == 0:
        with torch.no_grad():
            for _ in range(20):  # long enough jobs to be offered to the team
                layer(x)
        os._exit(0 if _C.linear_kernels()["omp_team_calls"] == 0 else 3)
    sys.exit(os.waitstatus_to_exitcode(wait_for_child(pid, float(sys.argv[1]))))
""")


def test_fork_before_any_team_job():
    env = dict(os.environ, MONO_QUANT_THREADS="omp-team", OMP_NUM_THREADS="2")
    env.pop("OMP_WAIT_POLICY", None)
    try:
        proc = subprocess.run([sys.executable, "-c", FORK_BEFORE_TEAM, "60"], env=env, capture_output=True,
                              text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("the forking script hung")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"

