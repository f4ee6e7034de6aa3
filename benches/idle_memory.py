#!/usr/bin/env python3
"""Idle memory per connection: opens N connections to a running server (each makes one
Arith.Mul call so its buffers exist, then stays open and idle) and reports the growth of the
server's resident set per connection.

usage: idle_memory.py PID HOST PORT [N=5000]
"""
import resource
import socket
import sys
import time

pid, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
n = int(sys.argv[4]) if len(sys.argv) > 4 else 5000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 100)), hard))
req = bytes.fromhex("0800003000000000000000010000001f000000054172697468000000034d756c000000000000000782a1410aa14214")


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


# Warm the server up with a few connections first so one-time costs are not counted.
warm = [socket.create_connection((host, port)) for _ in range(50)]
for s in warm:
    s.sendall(req)
    s.recv(100)
time.sleep(0.5)
before = rss_kib()
conns = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(req)
    got = b""
    while len(got) < 45:
        d = s.recv(100)
        if not d:
            raise SystemExit(f"connection {i} closed")
        got += d
    conns.append(s)
time.sleep(1.0)
after = rss_kib()
print(f"{n} idle connections: RSS {before} KiB -> {after} KiB, {(after - before) / n:.2f} KiB per connection")
