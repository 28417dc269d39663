#!/usr/bin/env python3
"""Loopback stand-in for the Kubernetes API server (Python stdlib only), for the tracer's
end-to-end tests of pod metadata.

Serves, over plain HTTP, what the agent asks of the API:
  GET /api/v1/pods?fieldSelector=spec.nodeName%3DNODE            PodList of that node's pods
  GET /api/v1/pods?watch=true&resourceVersion=RV&...              a watch stream (chunked, one
      JSON event per line) that sends nothing new and ends after timeoutSeconds, as the API does
  GET /apis/batch/v1/namespaces/NS/jobs/NAME                      a Job from --jobs, else 404
anything else: a 404 Status.

Pods and Jobs come from JSON files (each a list of objects). Every request is logged on stdout as
`LIST ...`, `WATCH ...`, `GET ...` (ending with ` user-agent=...`) so a test can wait until the
agent has listed and is watching.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

RESOURCE_VERSION = "1000"
MAX_WATCH_SECONDS = 600


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, pods, jobs):
        super().__init__(address, Handler)
        self.pods = pods
        self.jobs = jobs
        self.stopping = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-api/1.0"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        sys.stderr.write("%s\n" % (format % args))

    def announce(self, what):
        user_agent = self.headers.get("User-Agent", "-")
        sys.stdout.write("%s %s user-agent=%s\n" % (what, self.path, user_agent))
        sys.stdout.flush()

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (the base class's name)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/api/v1/pods":
            selector = query.get("fieldSelector", [""])[0]
            node = selector[len("spec.nodeName="):] if selector.startswith("spec.nodeName=") else None
            pods = [p for p in self.server.pods
                    if node is None or p.get("spec", {}).get("nodeName") == node]
            if query.get("watch", [""])[0] in ("true", "1"):
                self.announce("WATCH")
                self.watch(query)
            else:
                self.announce("LIST")
                self.send_json(200, {"kind": "PodList", "apiVersion": "v1",
                                     "metadata": {"resourceVersion": RESOURCE_VERSION},
                                     "items": pods})
            return
        parts = url.path.strip("/").split("/")
        if len(parts) == 7 and parts[:4] == ["apis", "batch", "v1", "namespaces"] \
                and parts[5] == "jobs":
            self.announce("GET")
            job = self.server.jobs.get((parts[4], parts[6]))
            if job is None:
                self.send_json(404, status(404, "NotFound", "job not found"))
            else:
                self.send_json(200, job)
            return
        self.announce("UNKNOWN")
        self.send_json(404, status(404, "NotFound", "no such path"))

    def watch(self, query):
        try:
            seconds = int(query.get("timeoutSeconds", ["290"])[0])
        except ValueError:
            seconds = 290
        seconds = max(1, min(MAX_WATCH_SECONDS, seconds))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            time.sleep(0.2)
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pods", required=True, help="JSON file: a list of Pod objects")
    parser.add_argument("--jobs", help="JSON file: a list of Job objects")
    args = parser.parse_args()
    with open(args.pods, encoding="utf-8") as f:
        pods = json.load(f)
    for pod in pods:
        pod.setdefault("metadata", {}).setdefault("resourceVersion", RESOURCE_VERSION)
    jobs = {}
    if args.jobs:
        with open(args.jobs, encoding="utf-8") as f:
            for job in json.load(f):
                meta = job.get("metadata", {})
                jobs[(meta.get("namespace", ""), meta.get("name", ""))] = job
    server = FakeApi(("127.0.0.1", args.port), pods, jobs)
    sys.stdout.write("listening on 127.0.0.1:%d\n" % args.port)
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()


if __name__ == "__main__":
    main()
