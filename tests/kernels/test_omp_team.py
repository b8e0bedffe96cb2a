"""The "omp-team" backend's use of torch's OpenMP team (csrc/omp_team.c): the same
bits as our own helpers, no hang in a child forked after the team ran our
work, and libgomp never loaded by us."""
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C

from fork_scripts import WAIT_FOR_CHILD

# The team path is taken only for jobs whose previous run of the same shape
# took 15 us of one thread's time or more (or, for a middling call, none seen
# yet), and not right after a call that waited for a descheduled worker (then
# it pauses): so call until it ran.
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
    _run_script(FORK_BEFORE_TEAM, "60", timeout=180)



# torch's own ops in a forked child, and in its child, after the parent ran torch's
# OpenMP team and none of our jobs (plain torch hangs here: libgomp's team cannot be
# used in a child).  Importing us releases the forking thread's team before each fork,
# whatever the backend and in every generation.
TORCH_OPS_AFTER_FORK = WAIT_FOR_CHILD + textwrap.dedent("""
    import os, sys
    import torch
    from torch import nn
    import mono_quant as mq

    torch.set_num_threads(2)
    torch.manual_seed(0)
    conv, x = nn.Conv2d(32, 32, 3, padding=1), torch.randn(1, 32, 40, 40)
    linear, rows = nn.Linear(512, 512), torch.randn(64, 512)
    with torch.no_grad():
        expected = conv(x), linear(rows)
        torch.randn(1_000_000).sum()

    def torch_ops_match():
        with torch.no_grad():
            return torch.equal(conv(x), expected[0]) and torch.equal(linear(rows), expected[1])

    def fork_and_check(generation):
        pid = os.fork()
        if pid == 0:
            ok = torch_ops_match()
            if ok and generation < 2:
                ok = os.waitstatus_to_exitcode(fork_and_check(generation + 1)) == 0
            os._exit(0 if ok else 3)
        return wait_for_child(pid, float(sys.argv[1]))

    status = fork_and_check(1)
    assert torch_ops_match()  # the parent's torch starts its team again
    sys.exit(os.waitstatus_to_exitcode(status))
""")


@pytest.mark.parametrize("backend", ["omp-team", "pool", "pthreads"])
def test_torch_ops_in_forked_children(backend):
    _run_script(TORCH_OPS_AFTER_FORK, "60", env_extra={"MONO_QUANT_THREADS": backend}, timeout=180)


def _run_script(code, *args, env_extra=None, timeout=240):
    """Runs `code` with `python -c` (omp-team, torch's default wait policy); fails on a hang or a non-zero exit."""
    env = dict(os.environ, MONO_QUANT_THREADS="omp-team", OMP_NUM_THREADS="2")
    env.pop("OMP_WAIT_POLICY", None)
    env.update(env_extra or {})
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("the script hung")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# A heavy layer, its pool result, and the process's thread ids (torch's team, our helpers).
HEAVY_LAYER = textwrap.dedent("""
    import os
    import torch
    from torch import nn
    import mono_quant as mq

    torch.manual_seed(0)
    layer = mq.quantize(nn.Linear(1024, 1024)).model
    x = torch.randn(512, 1024)  # a job of a few ms on one thread: offered to the team
    big = torch.randn(4_000_000)

    def forward():
        with torch.no_grad():
            return layer(x)

    def expected_on_pool():
        previous = _C.set_threading_backend("pool")
        try:
            return forward()
        finally:
            _C.set_threading_backend(previous)

    def thread_ids():
        '''The process's threads once none has started or ended for 0.1 s (workers that
        libgomp let go when a team shrank end on their own time).'''
        import time
        ids, end = set(os.listdir("/proc/self/task")), time.monotonic() + 5.0
        while time.monotonic() < end:
            time.sleep(0.1)
            now = set(os.listdir("/proc/self/task"))
            if now == ids:
                break
            ids = now
        return ids
""")


# The thread that found the team is the only one that may use it.  A thread started after it
# exited often gets its pthread_t back (glibc reuses the stack): it must not take the team as
# its own (it would start a second OpenMP team).  The finder here is a thread started before
# the package was imported, so its thread-local state comes to it after the fact.
FINDER_EXITS = textwrap.dedent("""
    import threading, time
    go, done = threading.Event(), threading.Event()
    results = {}
    def finder():
        go.wait()
        results["finder"] = threading.get_ident()
        results["team"] = torch.equal(run_on_team(forward), expected)
        done.set()
    early = threading.Thread(target=finder)
    early.start()  # before mono_quant is imported
""") + RUN_ON_TEAM + HEAVY_LAYER + textwrap.dedent("""
    torch.set_num_threads(2)
    expected = expected_on_pool()
    go.set(); done.wait(); early.join()
    assert results["team"]
    time.sleep(0.1)  # the finder's stack back in glibc's cache
    before, reused = _C.linear_kernels()["omp_team_calls"], 0
    def later():
        global reused
        reused += threading.get_ident() == results["finder"]
        for _ in range(10):
            assert torch.equal(forward(), expected)
    for _ in range(6):
        t = threading.Thread(target=later)
        t.start(); t.join(); time.sleep(0.05)
    for _ in range(10):  # nor the main thread: it did not find the team
        assert torch.equal(forward(), expected)
    assert _C.linear_kernels()["omp_team_calls"] == before, "a thread that did not find the team used it"
    print("reused", reused)
""")


def test_only_the_finder_thread_runs_on_the_team():
    _run_script(FINDER_EXITS)


# Another package's vendored libgomp (scikit-learn, xgboost and lightgbm wheels ship one under
# their own soname), loaded before torch: the team must be torch's, not a second team of
# that libgomp's (which starts threads of its own and reads its own thread count).
OTHER_LIBGOMP_FIRST = textwrap.dedent("""
    import ctypes, os, sys, sysconfig
    src = os.path.join(sysconfig.get_paths()["purelib"], "torch", "lib", "libgomp.so.1")
    data = open(src, "rb").read()
    assert data.count(b"libgomp.so.1\\0") == 1
    with open(sys.argv[1], "wb") as f:  # the same code under another soname, as auditwheel renames it
        f.write(data.replace(b"libgomp.so.1\\0", b"libgomp.so.9\\0"))
    other = ctypes.CDLL(sys.argv[1], mode=os.RTLD_LOCAL)
    from mono_quant import _C
""") + RUN_ON_TEAM + HEAVY_LAYER + textwrap.dedent("""
    for threads in (2, 3):  # 3: more than this host's cores, the other libgomp's default
        torch.set_num_threads(threads)
        expected = expected_on_pool()
        big.add_(1.0)
        before = thread_ids()
        assert torch.equal(run_on_team(forward), expected)
        big.add_(1.0)
        assert thread_ids() == before, f"{threads} threads: new threads {thread_ids() - before}"
""")


def test_the_team_is_torchs_when_another_libgomp_was_loaded_first(tmp_path):
    if not os.path.exists(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")):
        pytest.skip("this torch has no libgomp of its own")
    _run_script(OTHER_LIBGOMP_FIRST, str(tmp_path / "libgomp-vendored.so.1"))


# Our kernels called from inside an OpenMP region of torch's libgomp (a ctypes GOMP_parallel,
# as a C extension's "#pragma omp parallel" would): never a nested team (libgomp starts new
# threads for each nested region), also in a region of one thread, where omp_in_parallel()
# says 0; the same bits; the team still ours after the region.
INSIDE_REGION = RUN_ON_TEAM + textwrap.dedent("""
    import ctypes, sys, threading
    from mono_quant import _C
""") + HEAVY_LAYER + textwrap.dedent("""
    torch.set_num_threads(2)
    expected = expected_on_pool()
    run_on_team(forward)
    path = next(line.split()[-1] for line in open("/proc/self/maps") if "/libgomp" in line)
    gomp = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    seen, lock = [], threading.Lock()
    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def body(_):
        same = all(torch.equal(forward(), expected) for _ in range(int(sys.argv[2])))
        with lock:
            seen.append((gomp.omp_get_level(), same))
    before = _C.linear_kernels()["omp_team_calls"]
    region = int(sys.argv[1])
    gomp.GOMP_parallel(body, None, region, 0)
    assert sorted(seen) == [(1, True)] * region, seen
    assert _C.linear_kernels()["omp_team_calls"] == before, "a job ran on a team nested in a region"
    assert torch.equal(run_on_team(forward), expected)
""")


@pytest.mark.parametrize("region_threads,calls", [(1, 60), (2, 10)], ids=["one-thread-region", "two-thread-region"])
def test_called_inside_an_openmp_region(region_threads, calls):
    _run_script(INSIDE_REGION, str(region_threads), str(calls))


# torch.set_num_threads between calls, up and down and to 1: every count's jobs run on the
# team at that count (libgomp's team is resized by torch's regions and ours alike), give the
# pool's bits, and ours never end or start torch's workers: after a team job the threads are
# those torch's own op left.
THREAD_COUNTS = RUN_ON_TEAM + HEAVY_LAYER + textwrap.dedent("""
    from mono_quant import _C
    for threads in (2, 3, 1, 2, 4, 2):
        torch.set_num_threads(threads)
        expected = expected_on_pool()
        big.add_(1.0)
        if threads == 1:
            before = _C.linear_kernels()["omp_team_calls"]
            assert all(torch.equal(forward(), expected) for _ in range(5))
            assert _C.linear_kernels()["omp_team_calls"] == before
            continue
        assert torch.equal(run_on_team(forward), expected)
        big.add_(1.0)
        ids = thread_ids()
        assert torch.equal(run_on_team(forward), expected)
        assert thread_ids() == ids, (threads, thread_ids() ^ ids)
        big.add_(1.0)
        assert thread_ids() == ids, (threads, thread_ids() ^ ids)
""")


def test_thread_count_changed_between_calls():
    _run_script(THREAD_COUNTS)


# libgomp's settings: the bits of the pool whatever they are, and a forked child still runs
# torch's parallel ops and ours.  OMP_NUM_THREADS=1 with torch.set_num_threads(2) after it;
# a thread limit of 1 or OMP_DYNAMIC give regions smaller than asked for (the caller then
# takes every piece).
OMP_SETTINGS = RUN_ON_TEAM + WAIT_FOR_CHILD + HEAVY_LAYER + textwrap.dedent("""
    from mono_quant import _C
    torch.set_num_threads(2)
    expected = expected_on_pool()
    assert torch.equal(run_on_team(forward), expected)  # (without a team job, torch's own op hangs a child)
    for _ in range(10):
        assert torch.equal(forward(), expected)
    big.add_(1.0)
    pid = os.fork()
    if pid == 0:
        try:
            big.add_(1.0)
            os._exit(0 if all(torch.equal(forward(), expected) for _ in range(3)) else 3)
        except BaseException:
            os._exit(4)
    sys.exit(os.waitstatus_to_exitcode(wait_for_child(pid, 60.0)))
""")


@pytest.mark.parametrize("setting", ["OMP_NUM_THREADS=1", "OMP_WAIT_POLICY=PASSIVE", "OMP_WAIT_POLICY=ACTIVE",
                                     "OMP_DYNAMIC=true", "OMP_THREAD_LIMIT=1", "GOMP_SPINCOUNT=0"])
def test_openmp_environment_settings(setting):
    name, value = setting.split("=")
    _run_script(OMP_SETTINGS, env_extra={name: value})


# fork() while the finder thread runs team jobs in a loop, several times, and a fork of the
# child: our kernels run in every process (the grandchild's torch ops are not checked: after
# torch's own parallel op in the child, libgomp's team hangs a grandchild without us too).
FORK_DURING_TEAM_JOBS = RUN_ON_TEAM + WAIT_FOR_CHILD + textwrap.dedent("""
    import threading
    import numpy as np
    from mono_quant import _C
""") + HEAVY_LAYER + textwrap.dedent("""
    torch.set_num_threads(2)
    expected = expected_on_pool()
    stop, found, same = threading.Event(), threading.Event(), []
    def finder():
        run_on_team(forward)
        found.set()
        while not stop.is_set():
            same.append(torch.equal(forward(), expected))
    worker = threading.Thread(target=finder)
    worker.start()
    found.wait()
    big.add_(1.0)  # the forking thread's own team too
    def ours_match():
        return all(np.array_equal(forward().numpy(), expected.numpy()) for _ in range(3))
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                big.add_(1.0)
                ok = ours_match()
                grandchild = os.fork()
                if grandchild == 0:
                    os._exit(0 if ours_match() else 3)
                ok = ok and os.waitstatus_to_exitcode(wait_for_child(grandchild, 60.0)) == 0
                os._exit(0 if ok else 3)
            except BaseException:
                os._exit(4)
        assert os.waitstatus_to_exitcode(wait_for_child(pid, 90.0)) == 0
    stop.set()
    worker.join()
    assert same and all(same)
""")


def test_fork_while_another_thread_runs_team_jobs():
    _run_script(FORK_DURING_TEAM_JOBS, timeout=400)


# Python threads calling at once, with the finder among them: callers that find the pool or
# the team in use run alone; every result exact.
THREADS_AT_ONCE = RUN_ON_TEAM + HEAVY_LAYER + textwrap.dedent("""
    from concurrent.futures import ThreadPoolExecutor
    from mono_quant import _C
    torch.set_num_threads(2)
    expected = expected_on_pool()
    run_on_team(forward)
    def calls(_):
        return all(torch.equal(forward(), expected) for _ in range(8))
    with ThreadPoolExecutor(4) as executor:
        futures = [executor.submit(calls, i) for i in range(8)]
        assert calls(0)  # the finder, at the same time
        assert all(f.result(timeout=200) for f in futures)
""")


def test_python_threads_at_once_with_the_team():
    _run_script(THREADS_AT_ONCE)


# torch on another OpenMP runtime (Intel's libiomp5 or LLVM's libomp also export GOMP_parallel):
# simulated by torch's libgomp under the file name libiomp5.so, loaded first into the global scope
# (torch's libraries then bind to it: same soname).  Not libgomp: the pool alone, the same bits.
OTHER_OPENMP = textwrap.dedent("""
    import ctypes, os, shutil, sys, sysconfig
    shutil.copy(os.path.join(sysconfig.get_paths()["purelib"], "torch", "lib", "libgomp.so.1"), sys.argv[1])
    ctypes.CDLL(sys.argv[1], mode=os.RTLD_GLOBAL)
    from mono_quant import _C
""") + HEAVY_LAYER + textwrap.dedent("""
    assert not any(line.rstrip().endswith("/libgomp.so.1") for line in open("/proc/self/maps"))
    torch.set_num_threads(2)
    expected = expected_on_pool()
    assert all(torch.equal(forward(), expected) for _ in range(10))
    assert _C.linear_kernels()["omp_team_calls"] == 0
""")


def test_no_team_on_another_openmp_runtime(tmp_path):
    if not os.path.exists(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")):
        pytest.skip("this torch has no libgomp of its own")
    _run_script(OTHER_OPENMP, str(tmp_path / "libiomp5.so"))


def test_a_model_of_many_layers_keeps_every_layer_on_the_team(two_threads_team):
    """What a job cost is remembered per (kernel, size): a model has more of those than a
    small direct-mapped table holds, and two that evict each other would stay on the pool."""
    torch.manual_seed(0)
    layers = [(mq.quantize(nn.Linear(512, 16 * k), activations=None).model, torch.randn(160, 512))
              for k in range(40, 140)]  # 100 distinct sizes of one kernel, each a job of 0.3 ms or more
    deadline = time.monotonic() + 90
    with torch.inference_mode():
        while True:
            missed = 0
            for layer, x in layers:
                before = _C.linear_kernels()["omp_team_calls"]
                layer(x)
                missed += _C.linear_kernels()["omp_team_calls"] == before
            if missed == 0:
                return
            assert time.monotonic() < deadline, f"{missed} of {len(layers)} layers never ran on the team"


def test_a_middling_call_of_a_new_size_starts_on_the_team(two_threads_team):
    """A middling call (weight-only, 8-16 M multiply-adds: mq_threads_for_work) of a size not
    seen yet goes to the team at once: on our pool, just after a torch op, its helper waited for
    the core torch's spinning worker held, and the back-off that followed kept the rest of the
    run on one thread (csrc/parallel.c, TEAM_MIN_WORK_NS)."""
    torch.manual_seed(0)
    warm, wx = _heavy_layers()[1]
    with torch.inference_mode():
        run_on_team(lambda: warm(wx))  # torch's team found and in use
        for out in (1000, 1008, 1016):  # 4 x 1024 x out: a new size each, under 2^24 with its weights'
            # conversion (mq.h's MQ_WO_CONVERT_ROWS)
            layer = mq.quantize(nn.Linear(1024, out), activations=None).model
            x = torch.randn(4, 1024)
            torch.nn.functional.gelu(x)  # a torch op just before, as in a model
            before = _C.linear_kernels()["omp_team_calls"]
            y = layer(x)
            assert _C.linear_kernels()["omp_team_calls"] == before + 1, out
            torch.set_num_threads(1)
            torch.testing.assert_close(layer(x), y, rtol=0, atol=0)  # one thread: the same bits
            torch.set_num_threads(2)


def test_the_teams_least_job_is_a_knob(two_threads_team):
    """team_min_work_for_tests: benchmarks compare thresholds in one process.  Past every job's work
    nothing runs on the team; back at the default the heavy layer does again (the same bits)."""
    assert _C.team_min_work_for_tests(-1) == 15000
    layer, x = _heavy_layers()[0]
    with torch.inference_mode():
        expected = run_on_team(lambda: layer(x))
        previous = _C.team_min_work_for_tests(1 << 50)
        try:
            assert previous == 15000 and _C.team_min_work_for_tests(-1) == 1 << 50
            before = _C.linear_kernels()["omp_team_calls"]
            assert torch.equal(layer(x), expected)
            assert _C.linear_kernels()["omp_team_calls"] == before
        finally:
            _C.team_min_work_for_tests(previous)
        assert torch.equal(run_on_team(lambda: layer(x)), expected)
    with pytest.raises(TypeError):
        _C.team_min_work_for_tests("60 us")
    with pytest.raises(OverflowError):
        _C.team_min_work_for_tests(1 << 70)
    assert _C.team_min_work_for_tests(-1) == 15000
