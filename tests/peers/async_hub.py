#!/usr/bin/env python3
"""Uninstrumented single-threaded asyncio fan-out hub on raw asyncio streams (stdlib only).

  async_hub.py --port P --backend URL [--backend URL ...]

One thread, one event loop serving every connection at once. GET /fanout?id=ID calls all backends
CONCURRENTLY (one connection per call, no trace headers), at URL with `id=ID` added to its query,
then answers 200 (502 if a backend failed) with the body `fanout id=ID backends=S1,S2,...`, the id
the hub received. Anything else: 404. Keep-alive unless the client asks to close.

This is the case where thread-based parent linking must give up: many requests are open on the
one thread at the same time.
"""

import argparse
import asyncio
import sys
import threading
from urllib.parse import parse_qs, urlsplit

TIMEOUT_S = 20
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_ID_CHARS = 64


def add_query(path_and_query, name, value):
    separator = "&" if "?" in path_and_query else "?"
    return "%s%s%s=%s" % (path_and_query, separator, name, value)


def parse_head(head):
    """(method, target, version, headers with lower-cased names) of a request or response head."""
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    while len(first) < 3:
        first.append("")
    return first[0], first[1], first[2], headers


async def read_response_status(reader):
    """Status of the response on `reader`, its body read and discarded."""
    head = await reader.readuntil(b"\r\n\r\n")
    version, status, _, headers = parse_head(head[:-4])
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif "content-length" in headers:
        await reader.readexactly(min(int(headers["content-length"]), MAX_BODY_BYTES))
    else:
        await reader.read(MAX_BODY_BYTES)
    return int(status)


async def call_backend(url, request_id):
    """GET url with id=request_id added; the status, or 0 when the call failed."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 80, limit=MAX_HEAD_BYTES),
            TIMEOUT_S,
        )
        request = (
            "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: async-hub/1.0\r\nConnection: close\r\n\r\n"
            % (add_query(target, "id", request_id), parts.netloc)
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        return await asyncio.wait_for(read_response_status(reader), TIMEOUT_S)
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            asyncio.TimeoutError) as error:
        sys.stderr.write("backend %s failed: %r\n" % (url, error))
        return 0
    finally:
        if writer is not None:
            writer.close()


class AsyncHub:
    def __init__(self, backends):
        self.backends = backends

    async def handle(self, reader, writer):
        try:
            while await self.serve_one(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def serve_one(self, reader, writer):
        """Serves one request; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        method, target, version, headers = parse_head(head[:-4])
        length = int(headers.get("content-length", "0") or "0")
        if length:
            await reader.readexactly(min(length, MAX_BODY_BYTES))
        url = urlsplit(target)
        if method == "GET" and url.path == "/fanout":
            request_id = parse_qs(url.query).get("id", ["none"])[0][:MAX_ID_CHARS]
            statuses = await asyncio.gather(
                *(call_backend(backend, request_id) for backend in self.backends)
            )
            code = 200 if all(200 <= s < 400 for s in statuses) else 502
            body = "fanout id=%s backends=%s\n" % (
                request_id,
                ",".join(str(s) for s in statuses),
            )
        else:
            code, body = 404, "not found\n"
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        payload = body.encode("utf-8", "replace")
        reason = {200: "OK", 404: "Not Found", 502: "Bad Gateway"}[code]
        response = (
            "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n"
            % (code, reason, len(payload), "" if keep_alive else "Connection: close\r\n")
        ).encode("latin-1") + payload
        writer.write(response)
        await writer.drain()
        return keep_alive


async def serve(args):
    hub = AsyncHub(list(args.backend))
    server = await asyncio.start_server(
        hub.handle, args.host, args.port, limit=MAX_HEAD_BYTES, reuse_address=True, backlog=256
    )
    print(
        "listening on %s:%d (threads: %d)" % (args.host, args.port, threading.active_count()),
        flush=True,
    )
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--backend", action="append", required=True, metavar="URL")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
