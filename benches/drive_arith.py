#!/usr/bin/env python3
"""Drives Arith.Mul MsgPack {A:10,B:20} at an rpcx server: N requests in batches of B pipelined
calls on one connection, checking every reply's length. A deterministic, dependency-free load for
benches/instructions.sh (the server runs under callgrind, so the driver's own speed is irrelevant).

usage: drive_arith.py HOST PORT N BATCH [REPLY_LEN [PAUSE]]

REPLY_LEN is the length of one reply: 45 for Arith.Mul's reply {C:200} (the default), 47 for the
null server, which echoes the request back. It must be right: a driver that expects fewer bytes
than the server sends drifts ahead of the replies and ends up pipelining.

PAUSE (seconds, default 0) is slept after each batch's replies, before the next batch is sent.
Without it, whether the next batch arrives while the server's reactor still spins or after it
went to sleep is a race, and the reactor's share of a call moves by 20% from run to run; with a
pause longer than the server's turn-around, every batch finds the server asleep, the same way.
"""
import socket
import sys
import time

host, port, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resp_len = int(sys.argv[5]) if len(sys.argv) > 5 else 45
pause = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
# The Go client's bytes for Arith.Mul {A:10, B:20}, MsgPack, seq 1 (tests/data/rpcx-go-frames.json).
req = bytes.fromhex("0800003000000000000000010000001f000000054172697468000000034d756c000000000000000782a1410aa14214")
for _ in range(150):
    try:
        s = socket.create_connection((host, port))
        break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit(f"cannot connect to {host}:{port}")
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(60)
out = req * batch
for _ in range(n // batch):
    s.sendall(out)
    need = resp_len * batch
    while need:
        d = s.recv(need)
        if not d:
            raise SystemExit("server closed the connection")
        need -= len(d)
    if pause:
        time.sleep(pause)
# Nothing may be left over: extra bytes mean REPLY_LEN is wrong and the run was pipelined.
s.settimeout(0.3)
try:
    extra = s.recv(1 << 16)
except socket.timeout:
    extra = b""
if extra:
    raise SystemExit(f"the server sent {len(extra)} bytes more than {n} replies of {resp_len}: wrong REPLY_LEN")
