#!/usr/bin/env python3
"""Uninstrumented HTTP/1.1 client for the tracer's end-to-end tests (Python stdlib only).

Sends every REQUEST on ONE TCP connection, either one after the other waiting for each response
(--mode keepalive) or all written at once before reading any response (--mode pipeline).

REQUEST is METHOD:PATH or METHOD:PATH:BODY:N where BODY is
  length   N-byte body with Content-Length
  chunked  N-byte body sent with Transfer-Encoding: chunked (in several chunks)
  expect   N-byte body with Content-Length and `Expect: 100-continue`: the body is sent only
           after the interim 100 response (keepalive mode only)

Prints one JSON object: {"pid", "local_port", "responses": [{"status", "body_len", "interim"}]}.
"""

import argparse
import json
import os
import socket
import sys

TIMEOUT_S = 20
MAX_LINE = 65536


class Request:
    def __init__(self, spec):
        parts = spec.split(":")
        if len(parts) not in (2, 4):
            raise SystemExit("bad request spec %r" % spec)
        self.method = parts[0].upper()
        self.path = parts[1]
        self.body_mode = parts[2] if len(parts) == 4 else None
        self.body_len = int(parts[3]) if len(parts) == 4 else 0
        if self.body_mode not in (None, "length", "chunked", "expect"):
            raise SystemExit("bad body mode in %r" % spec)

    def head(self, host, extra_headers):
        lines = [
            "%s %s HTTP/1.1" % (self.method, self.path),
            "Host: %s" % host,
            "User-Agent: tracer-e2e-client/1.0",
            "Accept: */*",
        ]
        lines.extend(extra_headers)
        if self.body_mode in ("length", "expect"):
            lines.append("Content-Length: %d" % self.body_len)
        if self.body_mode == "expect":
            lines.append("Expect: 100-continue")
        if self.body_mode == "chunked":
            lines.append("Transfer-Encoding: chunked")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def body(self):
        data = bytes(b"abcdefghij"[i % 10] for i in range(self.body_len))
        if self.body_mode != "chunked":
            return data
        out = bytearray()
        step = max(1, len(data) // 3)
        for start in range(0, len(data), step):
            piece = data[start:start + step]
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
        out += b"0\r\n\r\n"
        return bytes(out)


def read_head(reader):
    """Status code and lower-cased headers of the next response head."""
    status_line = reader.readline(MAX_LINE)
    if not status_line:
        raise SystemExit("connection closed before a response")
    fields = status_line.split()
    if len(fields) < 2:
        raise SystemExit("bad status line %r" % status_line)
    status = int(fields[1])
    headers = {}
    while True:
        line = reader.readline(MAX_LINE)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def read_body(reader, method, status, headers):
    if method == "HEAD" or status in (204, 304):
        return 0
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while True:
            size = int(reader.readline(MAX_LINE).split(b";")[0].strip(), 16)
            if size == 0:
                while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass
                return total
            total += len(reader.read(size))
            reader.readline(MAX_LINE)
    if "content-length" in headers:
        return len(reader.read(int(headers["content-length"])))
    return len(reader.read())


def read_response(reader, method):
    """The final response, skipping (and counting) interim 1xx responses."""
    interim = 0
    while True:
        status, headers = read_head(reader)
        if 100 <= status < 200:
            interim += 1
            continue
        body_len = read_body(reader, method, status, headers)
        return {"status": status, "body_len": body_len, "interim": interim}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mode", choices=("keepalive", "pipeline"), default="keepalive")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value' header")
    parser.add_argument("requests", nargs="+", metavar="REQUEST")
    args = parser.parse_args()
    requests = [Request(spec) for spec in args.requests]
    host = "%s:%d" % (args.host, args.port)

    sock = socket.create_connection((args.host, args.port), timeout=TIMEOUT_S)
    reader = sock.makefile("rb")
    responses = []
    if args.mode == "pipeline":
        if any(r.body_mode == "expect" for r in requests):
            raise SystemExit("expect bodies cannot be pipelined")
        sock.sendall(b"".join(r.head(host, args.header) + r.body() for r in requests))
        for request in requests:
            responses.append(read_response(reader, request.method))
    else:
        for request in requests:
            sock.sendall(request.head(host, args.header))
            if request.body_mode == "expect":
                status, headers = read_head(reader)
                if status != 100:
                    raise SystemExit("expected 100 Continue, got %d" % status)
                sock.sendall(request.body())
                response = read_response(reader, request.method)
                response["interim"] += 1
            else:
                body = request.body()
                if body:
                    sock.sendall(body)
                response = read_response(reader, request.method)
            responses.append(response)
    local_port = sock.getsockname()[1]
    reader.close()
    sock.close()
    json.dump({"pid": os.getpid(), "local_port": local_port, "responses": responses}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
