#!/usr/bin/env python3
"""An HTTP/1.1 keep-alive connection whose body carries bytes that look like HTTP/2 frames
(Python stdlib only), for the kernel's HTTP/2 adoption tests.

`serve --port P --go FILE`: a keep-alive server. GET /first answers a body written in two parts:
"part one " at once, then (once FILE exists) 26 bytes that parse as two HTTP/2 frames (a PING
and an empty SETTINGS), in their own write. GET /next answers 4000 bytes of 'x'.

`client --port P`: opens one connection, sends GET /first, reads the first part and prints
"got part1", reads the rest, then sends GET /next on the same connection, reads it and prints
"done".
"""

import argparse
import http.client
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PART1 = b"part one "
# PING (length 8, type 6, flags 0, stream 0) then SETTINGS (length 0, type 4, stream 0).
FRAMES = bytes([0, 0, 8, 6, 0, 0, 0, 0, 0]) + b"12345678" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
NEXT_BYTES = 4000
WAIT_S = 60


def serve(port, go):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/first":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PART1) + len(FRAMES)))
                self.end_headers()
                self.wfile.write(PART1)
                print("part1 sent", flush=True)
                deadline = time.monotonic() + WAIT_S
                while not os.path.exists(go):
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.02)
                self.wfile.write(FRAMES)
            else:
                body = b"x" * NEXT_BYTES
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


def client(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    conn.request("GET", "/first")
    resp = conn.getresponse()
    first = resp.read(len(PART1))
    if first != PART1:
        sys.exit(f"unexpected first part {first!r}")
    print("got part1", flush=True)
    rest = resp.read()
    if rest != FRAMES:
        sys.exit(f"unexpected second part {rest!r}")
    conn.request("GET", "/next")
    body = conn.getresponse().read()
    if len(body) != NEXT_BYTES:
        sys.exit(f"unexpected /next body of {len(body)} bytes")
    print("done", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve", "client"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--go")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.port, args.go)
    else:
        client(args.port)


if __name__ == "__main__":
    main()
