"""The kernels' threads (csrc/parallel.c): safe across fork() for every
backend, the same bits whatever the backend and thread count, and usable
from several Python threads at once."""
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C
from mono_quant.kernels import THREADING_BACKENDS

from fork_scripts import WAIT_FOR_CHILD

# Issue 14, finding 1: after a quantized forward in the parent, a parallel
# torch op in a forked child (a DataLoader worker) never returned, because the
# kernels ran on torch's OpenMP team, which libgomp cannot rebuild in a child.
# A hang must fail the test, not the suite: the child is waited for with a
# deadline, and the whole script runs under a subprocess timeout.
FORK_SCRIPT = WAIT_FOR_CHILD + textwrap.dedent("""
    import os, sys, threading, time
    import torch
    from torch import nn
    import mono_quant as mq

    torch.set_num_threads(2)
    torch.manual_seed(0)
    layer = mq.quantize(nn.Linear(512, 384)).model
    x = torch.randn(200, 512)
    with torch.no_grad():
        expected = layer(x)

    # A second Python thread keeps calling the kernels while we fork: the
    # child must not inherit a half-run job or a taken pool.
    stop = threading.Event()
    def busy():
        with torch.no_grad():
            while not stop.is_set():
                layer(x)
    if "--busy" in sys.argv:
        worker = threading.Thread(target=busy)
        worker.start()
        time.sleep(0.05)

    pid = os.fork()
    if pid == 0:
        try:
            a, b = torch.randn(256, 512), torch.randn(512, 512)
            ok = torch.allclose(a @ b, (a.double() @ b.double()).float(), atol=1e-3)
            with torch.no_grad():
                ok = ok and torch.equal(layer(x), expected)  # the kernels' threads work in the child too
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    stop.set()
    status = wait_for_child(pid, float(sys.argv[1]))
    with torch.no_grad():
        assert torch.equal(layer(x), expected)  # and still in the parent
    sys.exit(os.waitstatus_to_exitcode(status))
""")


@pytest.mark.parametrize("busy", [False, True], ids=["idle-parent", "kernels-running-at-fork"])
@pytest.mark.parametrize("backend", THREADING_BACKENDS)
def test_fork_after_quantized_forward_child_runs_parallel_ops(backend, busy):
    env = dict(os.environ, MONO_QUANT_THREADS=backend, OMP_NUM_THREADS="2")
    args = [sys.executable, "-c", FORK_SCRIPT, "60"] + (["--busy"] if busy else [])
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{backend}: the forking script hung")
    assert proc.returncode == 0, f"{backend}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_backend_from_environment_and_unknown_names():
    code = "from mono_quant import kernels; print(kernels.linear_kernels()['threads'])"
    for name in THREADING_BACKENDS:
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, MONO_QUANT_THREADS=name),
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == name, out.stderr
    out = subprocess.run([sys.executable, "-W", "always", "-c", code],
                         env=dict(os.environ, MONO_QUANT_THREADS="openmp"), capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "omp-team" and "MONO_QUANT_THREADS" in out.stderr
    with pytest.raises(ValueError, match="pool"):
        _C.set_threading_backend("gomp")
    with pytest.raises(TypeError):
        _C.set_threading_backend(None)


@pytest.fixture
def backend_and_threads():
    """Restores torch's thread count and the default backend after a test that changes them."""
    threads, backend = torch.get_num_threads(), _C.set_threading_backend("pool")
    _C.set_threading_backend(backend)
    yield
    torch.set_num_threads(threads)
    _C.set_threading_backend(backend)


def _layers():
    """Quantized layers with enough work to be split over threads (int8 Linear: 2^24 multiply-adds
    or more, csrc/linear.c), and an input each."""
    torch.manual_seed(0)
    lin = nn.Linear(1000, 777)  # tails: 777 outputs = 48 panels of 16 + 9
    conv = nn.Conv2d(32, 48, 3, padding=1)
    return [
        (mq.quantize(lin, activations="dynamic").model, torch.randn(37, 1000)),
        (mq.quantize(lin, activations="dynamic").model, torch.randn(1, 1000)),
        (mq.quantize(lin, activations=None).model, torch.randn(23, 1000)),  # > 2^24 multiply-adds: split
        (mq.quantize(nn.Sequential(lin), dtype="int4").model, torch.randn(1, 1000)),
        (mq.quantize(nn.Sequential(lin), dtype="int4").model, torch.randn(64, 1000)),
        (mq.quantize(conv).model, torch.randn(2, 32, 20, 20)),
    ]


def test_same_bits_for_every_backend_and_thread_count(backend_and_threads):
    layers = _layers()
    torch.set_num_threads(2)
    with torch.no_grad():
        expected = [layer(x) for layer, x in layers]
        for backend in THREADING_BACKENDS:
            _C.set_threading_backend(backend)
            for threads in (2, 3, 7):
                torch.set_num_threads(threads)
                for (layer, x), want in zip(layers, expected):
                    assert torch.equal(layer(x), want), (backend, threads, layer)


def test_pool_shared_by_several_python_threads(backend_and_threads):
    """Callers that find the pool in use run alone; every result stays exact."""
    layers = _layers()
    torch.set_num_threads(2)
    with torch.no_grad():
        expected = [layer(x) for layer, x in layers]
    errors = []

    def call_many():
        with torch.no_grad():
            for _ in range(20):
                for (layer, x), want in zip(layers, expected):
                    if not torch.equal(layer(x), want):
                        errors.append(layer)

    callers = [threading.Thread(target=call_many) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not errors


def _kernel_families():
    """One call per kernel family that splits work with mq_parallel_for (parallel.c), each big
    enough to split (and, for some, to be offered to torch's team: 0.2 ms of one thread or more),
    as (name, call returning a list of tensors)."""
    torch.manual_seed(1)
    w = torch.randn(3000, 1000)
    lin = nn.Linear(1000, 1500)
    conv = nn.Conv2d(256, 256, 3, padding=1)
    half_conv = mq.quantize(nn.Sequential(conv), dtype="fp16").model  # 196 rows x K 2304: its C route
    fp16 = mq.quantize(nn.Sequential(lin), dtype="fp16").model
    bf16 = mq.quantize(nn.Sequential(lin), dtype="bf16").model
    static = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        static = mq.quantize(static, "int8", activations="static", calibration=torch.randn(8, 16, 32, 32)).model
    x, image, small = torch.randn(200, 1000), torch.randn(1, 256, 14, 14), torch.randn(4, 16, 32, 32)

    def weight(dtype, **kw):
        q = mq.quantize_weight(w, dtype, **kw)
        return [q.qdata, q.scale, q.zero_point, q.dequantize()]

    return [
        ("rows int8", lambda: weight("int8")),
        ("rows int4", lambda: weight("int4", group_size=128)),
        ("int8 quantize+pack", lambda: list(mq.quantize(lin).model.state_dict().values())),
        ("fp16 linear", lambda: [fp16(x)]),
        ("bf16 linear", lambda: [bf16(x)]),
        ("fp16 conv", lambda: [half_conv(image)]),
        ("static int8", lambda: [static(small)]),
    ]


def test_same_bits_for_every_kernel_family_backend_and_thread_count(backend_and_threads):
    families = _kernel_families()
    _C.set_threading_backend("pool")
    torch.set_num_threads(1)
    with torch.no_grad():
        expected = {name: call() for name, call in families}
        team_calls = _C.linear_kernels()["omp_team_calls"]
        for backend in THREADING_BACKENDS:
            _C.set_threading_backend(backend)
            for threads in (2, 3):
                torch.set_num_threads(threads)
                for name, call in families:
                    for _ in range(3):  # a job is offered to the team after one like it took 0.2 ms
                        got = call()
                        assert all(torch.equal(a, b) for a, b in zip(got, expected[name], strict=True)), \
                            (name, backend, threads)
    if _C.linear_kernels()["omp_team_calls"] == team_calls and any("libgomp" in line for line in
                                                                   open("/proc/self/maps")):
        pytest.fail("no job ran on torch's team: the omp-team backend was not exercised")


# DataLoader workers doing quantized forwards, for each start method: a forked worker
# inherits a process whose kernels ran on torch's team (it runs on our pool, at torch's
# 1 thread or at 2 set in worker_init_fn); a spawned one starts afresh.
DATALOADER_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    import mono_quant as mq

    torch.manual_seed(0)
    layer = mq.quantize(nn.Linear(1024, 1024)).model
    x = torch.randn(512, 1024)


    class Forwards(Dataset):
        def __init__(self, expected):
            self.expected = expected

        def __len__(self):
            return 6

        def __getitem__(self, i):
            with torch.no_grad():
                return torch.tensor(torch.equal(layer(x), self.expected))


    def two_threads(worker_id):
        if worker_id == 0:
            torch.set_num_threads(2)


    if __name__ == "__main__":
        torch.set_num_threads(2)
        with torch.no_grad():
            expected = layer(x)
            for _ in range(10):
                layer(x)
        loader = DataLoader(Forwards(expected), batch_size=1, num_workers=2, multiprocessing_context=sys.argv[1],
                            worker_init_fn=two_threads, timeout=120)
        assert all(bool(b) for b in loader)
        with torch.no_grad():
            assert torch.equal(layer(x), expected)
""")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_workers_run_quantized_forwards(tmp_path, method):
    script = tmp_path / "loader.py"
    script.write_text(DATALOADER_SCRIPT)
    env = dict(os.environ, MONO_QUANT_THREADS="omp-team", OMP_NUM_THREADS="2")
    try:
        proc = subprocess.run([sys.executable, str(script), method], env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{method}: the DataLoader hung")
    assert proc.returncode == 0, f"{method}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


# The interpreter exits while daemon threads are inside our kernels (GIL released, helpers or
# torch's team at work) and an atexit function calls one: a clean exit.  Only our kernels are
# called on numpy arrays: daemon threads inside torch's own ops abort torch at exit (its
# static destructors; "terminate called without an active exception") with or without us.
SHUTDOWN_SCRIPT = textwrap.dedent("""
    import atexit, threading, time
    import numpy as np
    import torch
    from mono_quant import _C

    torch.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((8192, 1024)).astype(np.float32)
    expected = _C.rows_minmax(x, nthreads=1)

    def loop():
        while True:
            _C.rows_minmax(x, nthreads=2)

    def at_exit():
        got = _C.rows_minmax(x, nthreads=2)
        print("atexit", all(np.array_equal(a, b) for a, b in zip(got, expected)), flush=True)

    atexit.register(at_exit)
    for _ in range(2):
        threading.Thread(target=loop, daemon=True).start()
    time.sleep(0.3)
""")


@pytest.mark.parametrize("backend", THREADING_BACKENDS)
def test_interpreter_exit_with_daemon_threads_in_kernels(backend):
    env = dict(os.environ, MONO_QUANT_THREADS=backend, OMP_NUM_THREADS="2")
    for _ in range(2):
        try:
            proc = subprocess.run([sys.executable, "-c", SHUTDOWN_SCRIPT], env=env, capture_output=True, text=True,
                                  timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{backend}: the interpreter hung at exit")
        assert proc.returncode == 0 and "atexit True" in proc.stdout, \
            f"{backend}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_more_threads_than_the_bindings_take_are_capped():
    # torch accepts set_num_threads(1025); every kernel call raised "nthreads must be in 1..1024"
    from mono_quant.kernels import SETTINGS
    previous = torch.get_num_threads()
    torch.manual_seed(0)
    layer = mq.quantize(torch.nn.Sequential(torch.nn.Linear(64, 64)), "int8").model
    x = torch.randn(4, 64)
    expected = layer(x)
    try:
        torch.set_num_threads(1025)
        assert SETTINGS.num_threads() == 1024
        assert torch.equal(layer(x), expected)
    finally:
        torch.set_num_threads(previous)
