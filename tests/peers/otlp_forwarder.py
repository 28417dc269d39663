#!/usr/bin/env python3
"""A forwarding OTLP/HTTP collector for the tracer's end-to-end tests (Python stdlib only).

Receives OTLP over HTTP (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`, any body encoding) and
re-exports each request unchanged to the same path on --upstream, answering with the upstream's
status and body: what a collector with an OTLP receiver and an OTLP/HTTP exporter does, minus
batching. Every forward is logged on stderr ("forwarded PATH -> STATUS").
"""

import argparse
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 16 * 1024 * 1024
FORWARDED_HEADERS = ("Content-Type", "Content-Encoding")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "otlp-forwarder/1.0"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.answer(413, b"", "text/plain")
            return
        body = self.rfile.read(length)
        request = urllib.request.Request(
            self.server.upstream + self.path, data=body, method="POST"
        )
        for name in FORWARDED_HEADERS:
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, reply = response.status, response.read()
                content_type = response.headers.get("Content-Type", "application/x-protobuf")
        except urllib.error.HTTPError as error:
            status, reply = error.code, error.read()
            content_type = error.headers.get("Content-Type", "text/plain")
        except OSError as error:
            sys.stderr.write("forward failed: %s\n" % error)
            self.answer(502, b"", "text/plain")
            return
        sys.stderr.write("forwarded %s -> %d\n" % (self.path, status))
        self.answer(status, reply, content_type)

    def answer(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:4318")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.upstream = args.upstream.rstrip("/")
    sys.stderr.write("forwarding 127.0.0.1:%d -> %s\n" % (args.port, server.upstream))
    server.serve_forever()


if __name__ == "__main__":
    main()
