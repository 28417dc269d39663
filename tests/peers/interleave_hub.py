#!/usr/bin/env python3
"""One thread serving a cleartext and a TLS request at once, and its client (stdlib only).

  interleave_hub.py serve --port P --tls-port Q --backend-port B --cert C --key K
      Listens on 127.0.0.1:P (cleartext) and 127.0.0.1:Q (TLS); ONE thread serves everything,
      one request per connection (answered with `Connection: close`):
      - GET /fanout?id=ID on P: calls http://127.0.0.1:B/ok?id=ID (a new connection), answers.
      - GET /hold?id=ID on P: reads the request and, before answering it, accepts one TLS
        connection on Q, reads its request (GET /tls?id=ID2), calls the backend with id=ID2,
        answers the TLS request, then the held one. The backend call belongs to the TLS
        request, while the cleartext request read before it is still unanswered on the thread.
      - GET /exec on P: answers, then exec()s itself with the same arguments (same pid, a new
        program image), which listens again.
      Prints `listening` once both sockets listen.

  interleave_hub.py drive --port P --tls-port Q --warm-up N
      N sequential GET /fanout?id=100.. (the thread serving one request at a time), then
      GET /hold?id=1 and, while it is held, GET /tls?id=2 over TLS. Exits 1 if a status is
      not 200.

  interleave_hub.py get --port P --path PATH
      One GET PATH on P; exits 1 unless the status is 200.
"""

import argparse
import http.client
import os
import socket
import ssl
import sys

TIMEOUT_S = 20
MAX_HEAD = 16 * 1024


def read_head(conn):
    """The request head (bytes up to the blank line), bounded."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_HEAD:
            break
    return data


def target_of(head):
    """(path, id) of a request head."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) < 2:
        return "", ""
    path, _, query = parts[1].partition("?")
    ident = ""
    for kv in query.split("&"):
        if kv.startswith("id="):
            ident = kv[3:]
    return path, ident


def call_backend(port, ident):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/ok?id=%s" % ident)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def answer(conn, status, body):
    data = body.encode()
    conn.sendall(
        b"HTTP/1.1 %d OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, len(data), data)
    )


def serve(args):
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    plain.bind(("127.0.0.1", args.port))
    plain.listen(16)
    raw_tls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw_tls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw_tls.bind(("127.0.0.1", args.tls_port))
    raw_tls.listen(16)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    print("listening", flush=True)
    while True:
        conn, _ = plain.accept()
        conn.settimeout(TIMEOUT_S)
        try:
            path, ident = target_of(read_head(conn))
            if path == "/fanout":
                status = call_backend(args.backend_port, ident)
                answer(conn, 200 if status == 200 else 502, "fanout id=%s" % ident)
            elif path == "/hold":
                tls_conn, _ = raw_tls.accept()
                tls_conn.settimeout(TIMEOUT_S)
                tls = context.wrap_socket(tls_conn, server_side=True)
                try:
                    _, tls_ident = target_of(read_head(tls))
                    status = call_backend(args.backend_port, tls_ident)
                    answer(tls, 200 if status == 200 else 502, "tls id=%s" % tls_ident)
                finally:
                    tls.close()
                answer(conn, 200, "held id=%s" % ident)
            elif path == "/exec":
                answer(conn, 200, "exec")
                conn.close()
                plain.close()
                raw_tls.close()
                sys.stdout.flush()
                argv = [sys.executable, "-u", os.path.abspath(__file__)] + sys.argv[1:]
                os.execv(sys.executable, argv)
            else:
                answer(conn, 404, "not found")
        except OSError as err:
            print("serve error: %s" % err, file=sys.stderr, flush=True)
        finally:
            conn.close()


def read_all(conn):
    data = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk


def status_of(response):
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def drive(args):
    failed = []
    for i in range(args.warm_up):
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=TIMEOUT_S)
        conn.request("GET", "/fanout?id=%d" % (100 + i))
        response = conn.getresponse()
        response.read()
        conn.close()
        if response.status != 200:
            failed.append("fanout %d: %d" % (100 + i, response.status))
    held = socket.create_connection(("127.0.0.1", args.port), timeout=TIMEOUT_S)
    held.sendall(b"GET /hold?id=1 HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", args.tls_port), timeout=TIMEOUT_S)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /tls?id=2 HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        tls_status = status_of(read_all(tls))
    held_status = status_of(read_all(held))
    held.close()
    if tls_status != 200 or held_status != 200:
        failed.append("tls %d, held %d" % (tls_status, held_status))
    if failed:
        print("failed: %s" % ", ".join(failed), flush=True)
        sys.exit(1)
    print("done", flush=True)


def get(args):
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=TIMEOUT_S)
    conn.request("GET", args.path)
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        print("status %d" % response.status, flush=True)
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--tls-port", type=int, required=True)
    s.add_argument("--backend-port", type=int, required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--tls-port", type=int, required=True)
    d.add_argument("--warm-up", type=int, default=0)
    g = sub.add_parser("get")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--path", required=True)
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args)
    elif args.mode == "get":
        get(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
