#!/usr/bin/env python3
"""Threads blocked in recv(2) on the process's own loopback TCP connections (tracked by the
agent when --port is traced): forks a server on --port that accepts and never answers (its own
process: each side holds N fds), then N threads that each connect to it and block reading. Prints `blocked N` once every thread has
connected (the test then waits until they are in the syscall). Runs until killed.

Usage: socket_blockers.py --threads N --port PORT
"""

import argparse
import os
import resource
import socket
import threading
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    want = args.threads + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        if hard < want:
            raise SystemExit("RLIMIT_NOFILE hard limit %d < %d fds needed" % (hard, want))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen(4096)
    alive_r, alive_w = os.pipe()
    if os.fork() == 0:
        os.close(alive_w)
        accepted = []
        while len(accepted) < args.threads:
            conn, _ = server.accept()
            accepted.append(conn)
        os.read(alive_r, 1)  # returns when the blockers' process is gone
        os._exit(0)
    os.close(alive_r)
    server.close()
    threading.stack_size(64 * 1024)
    connected = threading.Semaphore(0)

    def block():
        c = socket.create_connection(("127.0.0.1", args.port))
        connected.release()
        c.recv(1)

    for _ in range(args.threads):
        threading.Thread(target=block, daemon=True).start()
    for _ in range(args.threads):
        connected.acquire()
    print("blocked %d" % args.threads, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
