#!/usr/bin/env python3
"""A client that sends a request, never reads the answer, closes the socket without close(2) and
reads a file that starts like an HTTP response (`500`) on the same fd number: the file's bytes
must never become the connection's response.

--via dup2              dup2(file, socket_fd)
--via close_range       close_range(fd, fd, 0), then open the file (it gets the lowest fd)
--via close_range_all   close_range(fd, ~0, 0), then open the file

Prints `reused <fd>` once the file was read on the socket's fd number.

Usage: fd_reuse.py --port PORT --via MODE --file PATH
"""

import argparse
import ctypes
import os
import socket

SYS_CLOSE_RANGE = 436  # x86_64 and aarch64


def close_range(first, last):
    """close_range(2) itself: CPython's os.closerange may close fds one by one instead."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0)) != 0:
        raise OSError(ctypes.get_errno(), "close_range")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--via", choices=["dup2", "close_range", "close_range_all"], required=True)
    parser.add_argument("--file", required=True)
    args = parser.parse_args()
    s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    s.sendall(b"GET /ok?reuse=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % args.via.encode())
    fd = s.detach()
    if args.via == "dup2":
        f = os.open(args.file, os.O_RDONLY)
        os.dup2(f, fd)
        os.close(f)
    else:
        close_range(fd, fd if args.via == "close_range" else 2**32 - 1)
        f = os.open(args.file, os.O_RDONLY)
        assert f == fd, (f, fd)
    data = os.read(fd, 4096)
    assert data.startswith(b"HTTP/1.1 500"), data
    print("reused %d" % fd, flush=True)


if __name__ == "__main__":
    main()
