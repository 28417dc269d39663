#!/usr/bin/env python3
"""A thread blocks in read() on a client connection (to --old-port); meanwhile another thread
closes that fd number and connects a new client connection (to --new-port) on it. The old
server then answers `418`: the blocked read returns the old connection's bytes on an fd number
that is now the new connection. They must never answer the new connection's request, which its
own server answers `200` afterwards.

Prints `done` when both answers were read.

Usage: fd_swap.py --old-port PORT --new-port PORT
"""

import argparse
import os
import socket
import threading
import time

OLD_ANSWER = b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n"
NEW_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4)
    return s


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise SystemExit("request cut short")
        data += chunk
    return data


def wait_in_read(tid, deadline_s=20):
    """Waits until thread `tid` of this process is blocked in read(2) (syscall 0 on x86_64)."""
    deadline = time.monotonic() + deadline_s
    path = "/proc/self/task/%d/syscall" % tid
    while time.monotonic() < deadline:
        with open(path) as f:
            if f.read().split(" ", 1)[0] == "0":
                return
        time.sleep(0.01)
    raise SystemExit("the reader never blocked in read()")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-port", type=int, required=True)
    parser.add_argument("--new-port", type=int, required=True)
    args = parser.parse_args()
    old_srv, new_srv = listen(args.old_port), listen(args.new_port)

    old = socket.create_connection(("127.0.0.1", args.old_port), timeout=10)
    old.sendall(b"GET /old?swap=old HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    old_served, _ = old_srv.accept()
    read_request(old_served)
    old.setblocking(True)
    fd = old.detach()

    got = {}
    tid = {}
    started = threading.Event()

    def reader():
        tid["tid"] = threading.get_native_id()
        started.set()
        got["old"] = os.read(fd, 4096)

    t = threading.Thread(target=reader)
    t.start()
    started.wait(10)
    wait_in_read(tid["tid"])

    # The blocked read keeps the old socket alive; its fd number now names a new connection.
    os.close(fd)
    fresh = socket.socket()
    if fresh.fileno() != fd:
        os.dup2(fresh.fileno(), fd)
        fresh.close()
        fresh = socket.socket(fileno=fd)
    fresh.settimeout(10)
    fresh.connect(("127.0.0.1", args.new_port))
    fresh.sendall(b"GET /new?swap=new HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    new_served, _ = new_srv.accept()
    read_request(new_served)

    old_served.sendall(OLD_ANSWER)
    t.join(10)
    if got.get("old", b"")[:12] != OLD_ANSWER[:12]:
        raise SystemExit("the blocked read did not get the old answer: %r" % got.get("old"))
    new_served.sendall(NEW_ANSWER)
    answer = fresh.recv(4096)
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit("unexpected new answer %r" % answer)
    print("done", flush=True)
    for s in (fresh, old_served, new_served, old_srv, new_srv):
        s.close()


if __name__ == "__main__":
    main()
