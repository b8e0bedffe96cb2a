"""The pool's helper threads block the signals meant for the interpreter, but not the ones their own
fault raises: blocked, a helper's SIGSEGV killed the process without faulthandler's traceback."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, torch
    from torch import nn
    import mono_quant as mq
    from mono_quant import _C
    _C.set_threading_backend("pool")
    torch.set_num_threads(2)
    layer = mq.quantize(nn.Linear(1000, 777), activations="dynamic").model
    with torch.no_grad():
        layer(torch.randn(64, 1000))
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        print(fields["SigBlk"].strip())
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc/<pid>/task")
def test_helpers_block_interpreter_signals_but_not_their_own_faults():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    masks = [int(line, 16) for line in out.stdout.split()]
    bit = lambda signum: 1 << (signum - 1)  # noqa: E731
    helpers = [m for m in masks if m & bit(signal.SIGINT)]  # the interpreter's threads leave SIGINT open
    assert helpers, f"no pool helper found among the threads' masks {[hex(m) for m in masks]}"
    for mask in helpers:
        for fault in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL):
            assert not mask & bit(fault), f"a helper blocks {fault.name}: mask {mask:#x}"
        assert mask & bit(signal.SIGTERM) and mask & bit(signal.SIGCHLD)
