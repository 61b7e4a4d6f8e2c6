"""The NAT lab's servers, shared by punch-lab.py and room-lab.py: bringing
the lab (scripts/natlab.sh) up and down, and two real `chatd serve` in
nl-srv1 and nl-srv2, stopped by PID."""

import json
import os
import subprocess
import sys
import time

import labproc

NATLAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "natlab.sh")
SRV = {"srv1": "10.200.0.11:7000", "srv2": "10.200.0.12:7000"}


def natlab(*args):
    subprocess.run([NATLAB, *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=120)


class Servers:
    """Two chatd servers in nl-srv1 and nl-srv2, stopped by PID on exit."""

    def __init__(self, binary, work):
        self.procs = []
        self.addrs = {}
        for name in ("srv1", "srv2"):
            key = os.path.join(work, f"{name}.key")
            out = subprocess.run([binary, "keygen", "--out", key], check=True,
                                 capture_output=True, text=True, timeout=30)
            self.addrs[name] = f"{out.stdout.split()[-1]}@{SRV[name]}"
        for name in ("srv1", "srv2"):
            args = ["ip", "netns", "exec", f"nl-{name}", binary, "serve",
                    "--listen", SRV[name], "--admin", "127.0.0.1:9100",
                    "--data-dir", work, "--key", os.path.join(work, f"{name}.key"),
                    "--preset", "local"]
            for other in ("srv1", "srv2"):
                args += ["--allow", self.addrs[other].split("@")[0]]
            if name == "srv2":
                args += ["--bootstrap", self.addrs["srv1"]]
            log = open(os.path.join(work, f"{name}.log"), "w")
            self.procs.append(subprocess.Popen(args, stdout=log, stderr=log))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(self.live(binary, ns) == 2 for ns in ("srv1", "srv2")):
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("the two servers did not see each other within 20 s")

    @staticmethod
    def live(binary, ns):
        try:
            out = subprocess.run(["ip", "netns", "exec", f"nl-{ns}", binary, "status",
                                  "--json", "--admin", "127.0.0.1:9100"],
                                 capture_output=True, text=True, timeout=5)
            return len(json.loads(out.stdout).get("servers", []))
        except (ValueError, subprocess.TimeoutExpired):
            return 0

    def stop(self):
        labproc.stop(self.procs)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chatd_binary(given):
    """`given` made absolute, or a release build of chatd when empty."""
    if not given:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "chatd"], cwd=ROOT,
                       check=True)
        given = os.path.join(ROOT, "target", "release", "chatd")
    return os.path.abspath(given)


def lab_up(script, *args):
    """Brings the NAT lab up (natlab.sh up ARGS), or exits saying why."""
    try:
        natlab("up", *args)
    except subprocess.CalledProcessError as e:
        sys.exit(f"{script}: the NAT lab did not come up (is it up already? then "
                 f"`scripts/natlab.sh down`):\n{e.stderr.decode(errors='replace')}")
