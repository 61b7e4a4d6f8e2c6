#!/usr/bin/env python3
"""UDP probes for `scripts/natlab.sh selftest` (needs root and a running lab).

One single-threaded process opens every socket it needs inside the lab's
namespaces (setns(2) on /run/netns/nl-*; a socket stays in the namespace it
was created in), so senders and receivers share one clock and one select
loop. Every wait is bounded. Each subcommand prints one line of
space-separated key=value pairs (values contain no spaces) and exits 0; a
lab error (missing namespace, bind failure) exits 2.

  classify HOST_NS HOST_IP PUB_IP   mapping and filtering behaviour of the
                                    NAT in front of HOST_NS (RFC 4787 terms)
  lan                               host-a <-> host-a2 on LAN A, no NAT
  punch [--prflx]                   simultaneous hole punch host-a <-> host-b
                                    to the ip:port srv1 observed for each;
                                    --prflx: also answer any source a probe
                                    comes from (peer-reflexive, as in ICE)
"""
import ctypes
import os
import select
import socket
import sys
import time

CLONE_NEWNET = 0x40000000
SRV1, SRV2 = "10.200.0.11", "10.200.0.12"
HOST_A, HOST_A2, HOST_B = "10.200.1.10", "10.200.1.11", "10.200.2.10"

_libc = ctypes.CDLL(None, use_errno=True)


def enter(ns):
    fd = os.open("/run/netns/" + ns, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns %s: %s" % (ns, os.strerror(err)))
    finally:
        os.close(fd)


def usock(ns, ip, port=0):
    enter(ns)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    s.setblocking(False)
    return s


def fmt(addr):
    return "-" if addr is None else "%s:%d" % addr


class Pump:
    """Select loop over all sockets; servers answer b"map" with b"obs ip:port"."""

    def __init__(self):
        self.socks = []
        self.servers = set()
        self.log = []  # (sock, data, addr)

    def add(self, s, server=False):
        self.socks.append(s)
        if server:
            self.servers.add(s)
        return s

    def run(self, seconds):
        end = time.monotonic() + seconds
        new = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(self.socks, [], [], left)
            for s in ready:
                while True:
                    try:
                        data, addr = s.recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # ICMP error queued on the socket
                        continue
                    new.append((s, data, addr))
                    if s in self.servers and data == b"map":
                        s.sendto(b"obs " + fmt(addr).encode(), addr)
        self.log.extend(new)
        return new


def learn(pump, client, server, tries=40, gap=0.05):
    """Send b"map" from client to server until the server sees it and the
    client gets the answer; returns the address the server observed."""
    dst = server.getsockname()
    seen = None
    answered = False
    for _ in range(tries):
        client.sendto(b"map", dst)
        for s, data, addr in pump.run(gap):
            if s is server and data == b"map":
                seen = addr
            if s is client and addr == dst and data.startswith(b"obs "):
                answered = True
        if seen and answered:
            break
    return seen, answered


def attempt(pump, src, dst_sock, dst_addr, count=8, gap=0.025, tail=0.3):
    """Send `count` unsolicited packets from src to dst_addr; True if
    dst_sock received any of them."""
    want = src.getsockname()
    got = False
    for _ in range(count):
        src.sendto(b"intrude", dst_addr)
        for s, data, addr in pump.run(gap):
            got |= s is dst_sock and addr == want and data == b"intrude"
    for s, data, addr in pump.run(tail):
        got |= s is dst_sock and addr == want and data == b"intrude"
    return got


def servers(pump):
    return (pump.add(usock("nl-srv1", SRV1), True),  # srv1, port 1
            pump.add(usock("nl-srv1", SRV1), True),  # srv1, another port
            pump.add(usock("nl-srv2", SRV2), True))  # srv2


def classify(host_ns, host_ip, pub_ip):
    pump = Pump()
    s1, s1b, s2 = servers(pump)
    out = {}
    # Mapping: one socket, two servers; compare the observed source.
    m = pump.add(usock(host_ns, host_ip))
    o1, _ = learn(pump, m, s1)
    o2, _ = learn(pump, m, s2)
    if not o1 or not o2:
        out["mapping"] = "broken"
    elif o1 == o2:
        out["mapping"] = "endpoint-independent"
    else:
        out["mapping"] = "endpoint-dependent"
    out["obs_srv1"], out["obs_srv2"] = fmt(o1), fmt(o2)
    out["public_ip_ok"] = "yes" if o1 and o1[0] == pub_ip else "no"
    # Filtering: a fresh socket contacts srv1 (port 1) only, then srv2 and
    # srv1's other port try to reach the mapping unsolicited.
    t = pump.add(usock(host_ns, host_ip))
    ot, answered = learn(pump, t, s1)
    out["obs_filter"] = fmt(ot)
    out["control_srv1_reply"] = "yes" if answered else "no"
    if not ot or not answered:
        out["filtering"] = "broken"
    else:
        from_srv2 = attempt(pump, s2, t, ot)
        from_srv1_other = attempt(pump, s1b, t, ot)
        out["srv2_reaches"] = "yes" if from_srv2 else "no"
        out["srv1_other_port_reaches"] = "yes" if from_srv1_other else "no"
        if from_srv2 and from_srv1_other:
            out["filtering"] = "endpoint-independent"
        elif from_srv1_other:
            out["filtering"] = "address-dependent"
        elif not from_srv2:
            out["filtering"] = "address-and-port-dependent"
        else:
            out["filtering"] = "inconsistent"
    return out


def lan():
    pump = Pump()
    a = pump.add(usock("nl-host-a", HOST_A))
    a2 = pump.add(usock("nl-host-a2", HOST_A2))
    got_a = got_a2 = None
    for _ in range(40):
        a.sendto(b"lan", a2.getsockname())
        a2.sendto(b"lan", a.getsockname())
        for s, data, addr in pump.run(0.05):
            if s is a and data == b"lan":
                got_a = addr
            if s is a2 and data == b"lan":
                got_a2 = addr
        if got_a and got_a2:
            break
    ok = got_a == a2.getsockname() and got_a2 == a.getsockname()
    return {"lan": "ok" if ok else "fail", "a_from": fmt(got_a), "a2_from": fmt(got_a2)}


def punch(prflx, seconds=3.0, gap=0.02):
    pump = Pump()
    s1, _, _ = servers(pump)
    a = pump.add(usock("nl-host-a", HOST_A))
    b = pump.add(usock("nl-host-b", HOST_B))
    oa, _ = learn(pump, a, s1)
    ob, _ = learn(pump, b, s1)
    out = {"obs_a": fmt(oa), "obs_b": fmt(ob)}
    if not oa or not ob:
        out["punch"] = "broken"
        return out
    targets = {a: [ob], b: [oa]}
    got = {a: None, b: None}
    probes = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds and not (got[a] and got[b]):
        for s in (a, b):
            for dst in targets[s]:
                s.sendto(b"punch", dst)
                probes += 1
        for s, data, addr in pump.run(gap):
            if s in got and data == b"punch":
                got[s] = got[s] or addr
                if prflx and addr not in targets[s]:
                    targets[s].append(addr)
    out["punch"] = "ok" if got[a] and got[b] else "fail"
    out["a_got_from"], out["b_got_from"] = fmt(got[a]), fmt(got[b])
    out["probes"] = str(probes)
    out["ms"] = str(int((time.monotonic() - start) * 1000))
    return out


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    try:
        if argv[0] == "classify" and len(argv) == 4:
            out = classify(*argv[1:])
        elif argv[0] == "lan" and len(argv) == 1:
            out = lan()
        elif argv[0] == "punch" and argv[1:] in ([], ["--prflx"]):
            out = punch(argv[1:] == ["--prflx"])
        else:
            print("natlab-probe.py: bad arguments; see --help", file=sys.stderr)
            return 2
    except OSError as e:
        print("natlab-probe.py: %s" % e, file=sys.stderr)
        return 2
    print(" ".join("%s=%s" % kv for kv in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
