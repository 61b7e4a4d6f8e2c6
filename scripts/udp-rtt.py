#!/usr/bin/env python3
"""UDP round-trip probes for the labs (latlab.sh, netem's tests).

  udp-rtt.py serve PORT IDLE_SECS     echo every datagram back; exit after
                                      IDLE_SECS without one
  udp-rtt.py ping ADDR PORT COUNT     COUNT echoes, 1 s timeout each, 20 ms
                                      apart; prints each RTT in ms ("lost"
                                      for a timeout) on one line, then the
                                      median of those answered ("lost" if
                                      none) on the next
"""
import socket
import sys
import time


def serve(port, idle):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(idle)
    try:
        while True:
            d, a = s.recvfrom(2048)
            s.sendto(d, a)
    except socket.timeout:
        pass


def ping(addr, port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    out = []
    for i in range(count):
        tag = b"%d" % i
        t = time.monotonic()
        s.sendto(tag, (addr, port))
        try:
            while s.recvfrom(64)[0] != tag:
                pass
            out.append((time.monotonic() - t) * 1000)
        except socket.timeout:
            out.append(None)
        time.sleep(0.02)
    print(" ".join("lost" if r is None else "%.2f" % r for r in out))
    got = sorted(r for r in out if r is not None)
    print("%.1f" % got[len(got) // 2] if got else "lost")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), float(sys.argv[3]))
    elif len(sys.argv) == 5 and sys.argv[1] == "ping":
        ping(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
