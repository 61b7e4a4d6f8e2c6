"""Process helpers shared by the lab scripts (punch-lab.py, latency-lab.py):
stopping the processes a script started, by PID, within a bound, and
reading their output lines with the time each arrived."""

import signal
import subprocess
import sys
import threading
import time


def exit_on_sigterm():
    """SIGTERM (a timeout, `kill PID`) exits like Ctrl-C does: through the
    script's `finally` blocks, which stop what it started and take its lab
    down."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


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


def wait_all(procs, timeout):
    """Waits for every process to exit, `timeout` s in all; SIGKILLs those
    still running then."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spawn_read(args):
    """Starts `args` with pipes; its stdout and stderr lines are gathered,
    timestamped, by two reader threads. Returns (process, out, err,
    threads)."""
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out, err, threads = [], [], []
    for stream, sink in ((p.stdout, out), (p.stderr, err)):
        t = threading.Thread(target=reader, args=(stream, sink), daemon=True)
        t.start()
        threads.append(t)
    return p, out, err, threads


def reader(stream, sink):
    """Appends (monotonic time, line) for every line of `stream` to `sink`."""
    for raw in stream:
        sink.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))
