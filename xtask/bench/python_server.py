#!/usr/bin/env python3
"""HTTP/1.1 keep-alive server for `cargo xtask bench` (Python stdlib only): every GET answers
200 with a small fixed body. No request logging, so the server's cost is its HTTP handling.
Responses are buffered and sent in one write (http.server flushes after each request): written
as head then body in two small writes, they meet the client's delayed ACK and stall ~40 ms."""

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"<html><body>tracer bench</body></html>\n" * 4


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bench-peer/1.0"
    sys_version = ""
    wbufsize = 64 * 1024

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
