"""A reader that goes away (``mono-quant inspect FILE | head``): the command stops quietly with
the status of one that SIGPIPE ended (141), never "error: [Errno 32] Broken pipe"."""
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    save_file({f"layer{i}.weight": torch.zeros(4, 4) for i in range(200)}, os.fspath(tmp_path / "m.safetensors"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write fails
    try:
        done = subprocess.run([sys.executable, "-m", "mono_quant", "inspect", os.fspath(tmp_path / "m.safetensors"),
                               "--json"], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""
