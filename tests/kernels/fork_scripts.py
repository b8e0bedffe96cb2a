"""Source text shared by the fork tests' child-process scripts (they run with ``python -c``)."""
import textwrap

__all__ = ["WAIT_FOR_CHILD"]

# wait_for_child(pid, seconds): the forked child's exit status; a child still running at the
# deadline is killed and the script exits 2 with "child hung after fork" (a hang fails the
# test, not the suite).
WAIT_FOR_CHILD = textwrap.dedent("""
    import os, sys, time

    def wait_for_child(pid, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(0.02)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("child hung after fork", flush=True)
        sys.exit(2)
""")
