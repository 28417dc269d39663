#!/usr/bin/env python3
"""Uninstrumented thread-per-request fan-out hub, and a concurrent load client for it (stdlib only).

  hub.py serve --port P --backend URL [--backend URL ...] [--keep-alive] [--source-port S]
      ThreadingHTTPServer. GET /fanout?id=ID calls every backend in turn from the handler thread
      (http.client, one connection per call, no trace headers), at URL with `id=ID` added to its
      query, then answers 200 (502 if a backend failed) with the body
      `fanout id=ID backends=S1,S2,...` (the backends' statuses): the id the hub RECEIVED, so a
      test can check that no request got mixed with another. Anything else: 404.
      --keep-alive: backend connections are kept open and reused (a pool per backend, one
      connection per concurrent call), so one connection carries many requests.
      --source-port: backend connections are made from this local port (one at a time: with
      --keep-alive and one call at a time, one connection), so that two hubs in two network
      namespaces with the same addresses make connections with the same 4-tuple.

  hub.py drive --port P --requests N --threads T [--first-id F] [--path /fanout]
               [--header 'Name: value']
      Sends GET PATH?id=F .. PATH?id=F+N-1 to 127.0.0.1:P from T threads at once, one connection
      per request, and prints one JSON object: {"pid", "results": [{"id", "status", "body"}]}.
      Exits 1 if any request failed or a body names another id.
"""

import argparse
import http.client
import json
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TIMEOUT_S = 20
MAX_ID_CHARS = 64


def add_query(path_and_query, name, value):
    separator = "&" if "?" in path_and_query else "?"
    return "%s%s%s=%s" % (path_and_query, separator, name, value)


# --keep-alive: idle backend connections per URL (None: one connection per call).
POOLS = None
POOLS_LOCK = threading.Lock()
# --source-port: the local port of backend connections (None: an ephemeral one).
SOURCE_PORT = None


def call_backend(url, request_id):
    """GET url with id=request_id added; the status, or 0 when the call failed."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    connection = None
    if POOLS is not None:
        with POOLS_LOCK:
            idle = POOLS.setdefault(url, [])
            connection = idle.pop() if idle else None
    if connection is None:
        source = ("", SOURCE_PORT) if SOURCE_PORT is not None else None
        connection = http.client.HTTPConnection(
            parts.hostname, parts.port or 80, timeout=TIMEOUT_S, source_address=source
        )
    keep = False
    try:
        connection.request("GET", add_query(target, "id", request_id))
        response = connection.getresponse()
        response.read()
        keep = POOLS is not None and not response.will_close
        return response.status
    except (OSError, http.client.HTTPException) as error:
        sys.stderr.write("backend %s failed: %s\n" % (url, error))
        return 0
    finally:
        if keep:
            with POOLS_LOCK:
                POOLS.setdefault(url, []).append(connection)
        else:
            connection.close()


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tracer-test-hub/1.0"
    sys_version = ""
    backends = []

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path != "/fanout":
            self.reply(404, b"not found\n")
            return
        request_id = parse_qs(url.query).get("id", ["none"])[0][:MAX_ID_CHARS]
        statuses = [call_backend(backend, request_id) for backend in self.backends]
        code = 200 if all(200 <= s < 400 for s in statuses) else 502
        body = "fanout id=%s backends=%s\n" % (request_id, ",".join(str(s) for s in statuses))
        self.reply(code, body.encode("utf-8", "replace"))

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(args):
    global POOLS, SOURCE_PORT
    HubHandler.backends = list(args.backend)
    SOURCE_PORT = args.source_port
    if args.keep_alive:
        POOLS = {}
    server = HubServer((args.host, args.port), HubHandler)
    print("listening on %s:%d" % (args.host, args.port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def fetch(port, path, request_id, headers):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", add_query(path, "id", request_id), headers=headers)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        return {"id": request_id, "status": response.status, "body": body.strip()}
    except (OSError, http.client.HTTPException) as error:
        return {"id": request_id, "status": 0, "body": "error: %s" % error}
    finally:
        connection.close()


def drive(args):
    headers = {}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    pending = queue.Queue()
    for request_id in range(args.first_id, args.first_id + args.requests):
        pending.put(str(request_id))
    results = []
    lock = threading.Lock()

    def worker():
        while True:
            try:
                request_id = pending.get_nowait()
            except queue.Empty:
                return
            result = fetch(args.port, args.path, request_id, headers)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.threads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.sort(key=lambda r: int(r["id"]))
    json.dump({"pid": os.getpid(), "results": results}, sys.stdout)
    sys.stdout.write("\n")
    ok = all(
        r["status"] == 200 and r["body"].startswith("fanout id=%s " % r["id"]) for r in results
    )
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the hub")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--backend", action="append", required=True, metavar="URL")
    serve_parser.add_argument("--keep-alive", action="store_true")
    serve_parser.add_argument("--source-port", type=int, default=None)
    drive_parser = commands.add_parser("drive", help="send concurrent requests to a hub")
    drive_parser.add_argument("--port", type=int, required=True)
    drive_parser.add_argument("--requests", type=int, required=True)
    drive_parser.add_argument("--threads", type=int, default=1)
    drive_parser.add_argument("--first-id", type=int, default=0)
    drive_parser.add_argument("--path", default="/fanout")
    drive_parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
