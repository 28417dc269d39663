#!/usr/bin/env python3
"""A client whose request write returns long after the server read the request head (Python
stdlib only), for the tracer's header-less pairing tests.

The kernel records a write when the syscall returns. Here the client sends head and body in ONE
blocking send() on a socket with a small send buffer, to a server whose socket has a small
receive buffer and which reads the head, waits --hold-ms, and only then reads the body: the
client's send() returns only after that wait, so the server's read of the head is recorded
--hold-ms before the client's write of it (the same order a preempted client gives on a busy
machine, made deterministic).

  late_writer.py serve --port P --hold-ms N   one connection at a time, answers 200 per request
  late_writer.py send --port P --body N       one POST of an N-byte body; prints a JSON report
"""

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

TIMEOUT_S = 20
SMALL_BUFFER = 4096


def serve(port, hold_ms):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted sockets: the client's bytes back up after a few KiB.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    print("listening on 127.0.0.1:%d" % port, flush=True)
    while True:
        # Wait for a connection first, as servers built on selectors do: accept() itself then
        # starts after the agent attached (an accept already blocked when the probes attach is
        # another path, endpoints from /proc, not what this peer is for).
        select.select([listener], [], [])
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT_S)
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(SMALL_BUFFER)
                if not chunk:
                    break
                data += chunk
            if b"\r\n\r\n" not in data:
                continue
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            # The client is still inside its send(): its write is not recorded yet.
            time.sleep(hold_ms / 1000.0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%d\n"
                % (len(str(len(body))) + 1, len(body))
            )


def send(port, body_len, hold_open):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    # A blocking socket (Python's own timeout would make it non-blocking, and sendall a loop of
    # short sends), bounded by the kernel's send and receive timeouts instead.
    timeval = struct.pack("ll", TIMEOUT_S, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.connect(("127.0.0.1", port))
    body = b"x" * body_len
    head = (
        "POST /upload HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n\r\n"
        % (port, body_len)
    ).encode("latin-1")
    started = time.monotonic()
    sock.sendall(head + body)
    send_ms = (time.monotonic() - started) * 1000.0
    response = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        response += chunk
    sock.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0
    json.dump({"pid": os.getpid(), "status": status, "send_ms": send_ms}, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if hold_open:
        # Stay alive until the test has its spans (it then kills us by pid): an agent starved of
        # CPU (an emulated VM) reads a client's /proc late, and a process gone by then has no
        # known network namespace, so its loopback connection is never paired (by design).
        while True:
            time.sleep(3600)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("serve", "send"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hold-ms", type=int, default=300)
    parser.add_argument("--body", type=int, default=65536)
    parser.add_argument("--hold-open", action="store_true", help="stay alive until killed")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.port, max(0, min(args.hold_ms, 10_000)))
    else:
        send(args.port, max(0, min(args.body, 64 << 20)), args.hold_open)


if __name__ == "__main__":
    main()
