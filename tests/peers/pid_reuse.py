#!/usr/bin/env python3
"""A child process connects to --port, sends a request and exits without closing (no close(2):
its connection entry stays in the kernel's table). Then a new process is forked with the same
pid (through /proc/sys/kernel/ns_last_pid) and reads a file that starts like an HTTP response
(`500`) on the same fd number: the entry left behind must be stale for it, so the file's bytes
never answer the dead process's request.

Prints `reused pid <pid> fd <fd>` when the new process read the file.

Usage: pid_reuse.py --port PORT --file PATH
"""

import argparse
import os
import socket
import sys

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
ATTEMPTS = 50


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True)
    args = parser.parse_args()

    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        os.close(r)
        s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        s.sendall(b"GET /ok?stale=old HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        fd = s.detach()
        os.write(w, b"%d\n" % fd)
        os._exit(0)  # the socket is closed by the exit, not by close(2)
    os.close(w)
    fd = int(os.read(r, 64).decode().strip())
    os.close(r)
    os.waitpid(first, 0)

    # Other processes on the machine fork too: retry until the pid comes back.
    for _ in range(ATTEMPTS):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(first - 1))
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(r)
            if os.getpid() != first:
                os._exit(3)
            f = os.open(args.file, os.O_RDONLY)
            if f != fd:
                os.dup2(f, fd)
                os.close(f)
            data = os.read(fd, 4096)
            os.write(w, data[:12])
            os._exit(0)
        os.close(w)
        got = os.read(r, 64)
        os.close(r)
        _, status = os.waitpid(child, 0)
        if child == first:
            if os.WEXITSTATUS(status) != 0 or not got.startswith(b"HTTP/1.1 500"):
                sys.exit("the reused pid did not read the file: %r" % got)
            print("reused pid %d fd %d" % (child, fd), flush=True)
            return
    sys.exit("pid %d never came back in %d forks" % (first, ATTEMPTS))


if __name__ == "__main__":
    main()
