"""Process helpers shared by the lab scripts (punch-lab.py, latency-lab.py):
stopping the processes a script started, by PID, within a bound, and
reading their output lines with the time each arrived."""

import subprocess
import time


def stop(procs, grace=5):
    """SIGTERM every process still running, then wait up to `grace` s each
    and SIGKILL those that did not exit."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def reader(stream, sink):
    """Appends (monotonic time, line) for every line of `stream` to `sink`."""
    for raw in stream:
        sink.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))
