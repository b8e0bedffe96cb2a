"""A call finishes on the kernel level it started on, whatever another thread sets meanwhile
(set_isa is a run-time knob): the int4 matmul took its activation step and its columns from
whichever level was active when each piece ran, so a call during a switch returned outputs
equal to neither level's (134 of 340 calls with a switch every millisecond)."""
import threading
import time

import pytest
import torch

import mono_quant as mq
from mono_quant import _C
from conftest import SUPPORTED, at_isa


@pytest.mark.skipif(len(SUPPORTED) < 2, reason="one kernel level on this CPU: nothing to switch")
def test_each_int4_call_runs_on_one_level():
    torch.manual_seed(0)
    q = mq.quantize(torch.nn.Linear(1024, 1024), dtype="int4").model
    x = torch.randn(48, 1024)
    levels = ("scalar", SUPPORTED[-1])
    want = {}
    for level in levels:
        with at_isa(level), torch.no_grad():
            want[level] = q(x)
    assert not torch.equal(want[levels[0]], want[levels[1]])  # (else the test could not see a mix)
    stop, mixed, calls = threading.Event(), [], [0]

    def run():
        with torch.no_grad():
            while not stop.is_set():
                y = q(x)
                calls[0] += 1
                if not any(torch.equal(y, w) for w in want.values()):
                    mixed.append(calls[0])

    previous = _C.get_isa()
    worker = threading.Thread(target=run)
    worker.start()
    try:
        start, i = time.monotonic(), 0
        while time.monotonic() - start < 1.5:
            _C.set_isa(levels[i % 2])
            i += 1
            time.sleep(0.0005)
    finally:
        stop.set()
        worker.join()
        _C.set_isa(previous)
    assert calls[0] > 0 and not mixed, f"{len(mixed)} of {calls[0]} calls mixed two levels"
