"""SIGTERM (a cancelled CI job, `timeout`) during a command: exit 143 and the hidden temporary
output deleted, as Ctrl-C does (the default action left it behind in the destination folder)."""
import os
import subprocess
import sys

SCRIPT = r"""
import os, signal, sys, time
from mono_quant import cli
from mono_quant.io.atomic import atomic_output

def write_then_terminated(args):
    with atomic_output(os.path.join(sys.argv[1], "out.safetensors")) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"x" * 4096)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises before this ends
    return 0

cli._cmd_demo = write_then_terminated
sys.exit(cli.main(["demo"]))
"""


def test_sigterm_deletes_the_temporary_output(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert "terminated" in done.stderr
    assert os.listdir(tmp_path) == []
