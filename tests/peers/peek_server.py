#!/usr/bin/env python3
"""HTTP/1.1 keep-alive server that inspects before it reads, as Envoy's and Istio's listener
inspectors do: every chunk is first peeked (recv with MSG_PEEK, then recvmsg with MSG_PEEK) and
only then consumed with recv. Answers every request `200` with body `peeked <path>`.

Usage: peek_server.py --port PORT
"""

import argparse
import socket
import threading


def serve(conn):
    pending = b""
    with conn:
        while True:
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
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s"
                    % (len(body), body)
                )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
