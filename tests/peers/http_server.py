#!/usr/bin/env python3
"""Uninstrumented HTTP/1.1 server for the tracer's end-to-end tests (Python stdlib only).

Routes (GET, HEAD and POST; a POST body is always read first so keep-alive stays in sync):
  /ok                      200, small body
  /slow?ms=N               sleeps N ms, then 200
  /chunked?parts=N&ms=M    200 with a chunked body written in N writes, M ms apart
  /status/NNN              that status (no body for 204 and 304)
  /bytes?n=N               200 with an N-byte body
  /echo                    200 echoing the request body (Content-Length or chunked)
  /set-cookie              200 with `Set-Cookie: <the request's X-Test-Set-Cookie value>`
anything else              404

Keep-alive and `Expect: 100-continue` come from http.server with protocol_version HTTP/1.1.
"""

import argparse
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 64 * 1024 * 1024
MAX_SLEEP_MS = 60_000


def query_int(query, name, default, low, high):
    try:
        value = int(query.get(name, [str(default)])[0])
    except ValueError:
        value = default
    return max(low, min(high, value))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tracer-test-peer/1.0"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def do_GET(self):
        self.route(b"", send_body=True)

    def do_HEAD(self):
        self.route(b"", send_body=False)

    def do_POST(self):
        body = self.read_body()
        if body is None:
            self.reply(400, b"bad body\n", True)
            self.close_connection = True
            return
        self.route(body, send_body=True)

    do_PUT = do_POST

    def read_body(self):
        """The request body by Content-Length or chunked framing; None if malformed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked_body()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def read_chunked_body(self):
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                break
            if len(body) + size > MAX_BODY:
                return None
            body += self.rfile.read(size)
            self.rfile.readline(16)  # the CRLF after the chunk data
        while True:  # trailers, up to the empty line
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
        return bytes(body)

    def route(self, body, send_body):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        if path == "/ok":
            self.reply(200, b"ok\n", send_body)
        elif path == "/slow":
            time.sleep(query_int(query, "ms", 100, 0, MAX_SLEEP_MS) / 1000.0)
            self.reply(200, b"slow\n", send_body)
        elif path == "/chunked":
            parts = query_int(query, "parts", 3, 1, 1000)
            delay_ms = query_int(query, "ms", 100, 0, MAX_SLEEP_MS)
            self.reply_chunked(parts, delay_ms, send_body)
        elif path.startswith("/status/"):
            try:
                code = int(path[len("/status/"):])
            except ValueError:
                code = 400
            if code < 200 or code > 599:
                code = 400
            self.reply(code, b"status %d\n" % code, send_body)
        elif path == "/bytes":
            size = query_int(query, "n", 0, 0, MAX_BODY)
            self.reply(200, b"x" * size, send_body)
        elif path == "/echo":
            self.reply(200, body, send_body)
        elif path == "/set-cookie":
            cookie = self.headers.get("X-Test-Set-Cookie", "empty=1")
            self.reply(200, b"cookie set\n", send_body, [("Set-Cookie", cookie)])
        else:
            self.reply(404, b"not found\n", send_body)

    def reply(self, code, body, send_body, headers=()):
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        if code in (204, 304):
            self.end_headers()
            return
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def reply_chunked(self, parts, delay_ms, send_body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if not send_body:
            return
        for index in range(parts):
            if index:
                time.sleep(delay_ms / 1000.0)
            data = b"part %d\n" % index
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        time.sleep(delay_ms / 1000.0)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    server = Server((args.host, args.port), Handler)
    print("listening on %s:%d" % (args.host, args.port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
