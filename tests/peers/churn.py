#!/usr/bin/env python3
"""Short-lived clients that never close: each forked child connects to 127.0.0.1:PORT, sends one
GET, reads the answer and leaves with os._exit (the kernel closes its socket at exit; no close
syscall). Prints `done N` with the number of children that got an answer.

Usage: churn.py --port PORT --count N [--parallel K] [--budget-s S]
"""

import argparse
import os
import socket
import sys
import time


def child(port, index):
    code = 1
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /ok?churn=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % index)
        if s.recv(4096).startswith(b"HTTP/1.1 "):
            code = 0
    except OSError:
        pass
    os._exit(code)  # no close, no flush: what a crash or a fast exit does


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=120.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s
    running, started, answered = set(), 0, 0
    while (started < args.count or running) and time.monotonic() < deadline:
        while started < args.count and len(running) < args.parallel:
            pid = os.fork()
            if pid == 0:
                child(args.port, started)
            running.add(pid)
            started += 1
        pid, status = os.wait()
        running.discard(pid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            answered += 1
    for pid in running:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    print("done %d" % answered, flush=True)
    sys.exit(0 if answered == args.count else 1)


if __name__ == "__main__":
    main()
