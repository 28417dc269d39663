#!/usr/bin/env python3
"""Uninstrumented keep-alive HTTP/1.1 leaf that reads one request of each connection with
recvmmsg(2) (through ctypes), a transfer the tracer's kernel programs do not hook: a hole in what
the agent sees of the stream (stdlib only).

  hole_leaf.py --host H --port P --mmsg-request N
      Every connection: its Nth request (1-based) is read with recvmmsg, every other one with
      recv. Each GET (no body) is answered `200` with a 3-byte body. Prints "listening on H:P".
"""

import argparse
import ctypes
import socket
import sys
import threading

LIBC = ctypes.CDLL(None, use_errno=True)
MAX_HEAD = 64 * 1024


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def recv_mmsg(sock, size):
    buf = ctypes.create_string_buffer(size)
    iov = IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
    msg = MMsgHdr()
    msg.hdr.iov = ctypes.pointer(iov)
    msg.hdr.iovlen = 1
    n = LIBC.recvmmsg(sock.fileno(), ctypes.byref(msg), 1, 0, None)
    if n < 0:
        raise OSError(ctypes.get_errno(), "recvmmsg")
    return buf.raw[: msg.len]


def serve_connection(conn, mmsg_request):
    buf = b""
    count = 0
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                if len(buf) > MAX_HEAD:
                    return
                if not buf and count + 1 == mmsg_request:
                    data = recv_mmsg(conn, MAX_HEAD)
                else:
                    data = conn.recv(MAX_HEAD)
                if not data:
                    return
                buf += data
            _, _, buf = buf.partition(b"\r\n\r\n")
            count += 1
            body = b"ok\n"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
    except OSError as error:
        sys.stderr.write("connection failed: %s\n" % error)
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mmsg-request", type=int, required=True)
    args = parser.parse_args()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((args.host, args.port))
    server.listen(64)
    # accept() only once a connection is waiting (a timeout polls first): an accept() already
    # blocked when an agent attaches is one the agent cannot see the arguments of.
    server.settimeout(0.5)
    print("listening on %s:%d" % (args.host, args.port), flush=True)
    while True:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        threading.Thread(
            target=serve_connection, args=(conn, args.mmsg_request), daemon=True
        ).start()


if __name__ == "__main__":
    main()
