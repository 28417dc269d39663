#!/usr/bin/env python3
"""HTTP/1.1 keep-alive server that inspects before it reads, as Envoy's and Istio's listener
inspectors do: every chunk is first peeked (recv with MSG_PEEK, then recvmsg with MSG_PEEK) and
only then consumed with recv. Answers every request `200` with body `peeked <path>`; with
`--splice` the head is sent with send and the body moves from a pipe to the socket with splice(2)
(as proxies forward bodies), so the body's bytes never pass through user memory; `--no-peek`
leaves the peeks out; `--uring` sends whole responses through io_uring (IORING_OP_SEND),
`--uring-first` only the first one on each connection.

Usage: peek_server.py --port PORT [--splice] [--no-peek] [--uring | --uring-first]
"""

import argparse
import os
import socket
import threading


def send_body(conn, body, splice):
    if not splice:
        conn.sendall(body)
        return
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, body)
        left = len(body)
        while left:
            left -= os.splice(read_end, conn.fileno(), left)
    finally:
        os.close(read_end)
        os.close(write_end)


def serve(conn, splice, peek, uring, uring_first):
    ring = None
    if uring or uring_first:
        from uring import Uring  # noqa: PLC0415 (only this mode needs it)

        ring = Uring()
    pending = b""
    with conn:
        while True:
            if peek:
                if not conn.recv(65536, socket.MSG_PEEK):
                    return
                conn.recvmsg(65536, 0, socket.MSG_PEEK)
            data = conn.recv(65536)
            if not data:
                return
            pending += data
            while b"\r\n\r\n" in pending:
                head, pending = pending.split(b"\r\n\r\n", 1)
                parts = head.split(b" ")
                path = parts[1] if len(parts) > 1 else b"/"
                body = b"peeked " + path
                if ring is not None:
                    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (
                        len(body),
                        body,
                    )
                    while response:
                        response = response[ring.send(conn.fileno(), response):]
                    if uring_first:
                        ring = None
                    continue
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n"
                    % len(body)
                )
                send_body(conn, body, splice)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--splice", action="store_true")
    parser.add_argument("--no-peek", action="store_true")
    parser.add_argument("--uring", action="store_true")
    parser.add_argument("--uring-first", action="store_true")
    args = parser.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, args.splice, not args.no_peek, args.uring, args.uring_first), daemon=True).start()


if __name__ == "__main__":
    main()
