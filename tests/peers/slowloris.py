#!/usr/bin/env python3
"""Slowloris pair for the tracer's byte-budget test (Python stdlib only, asyncio).

  slowloris.py serve --port P
      HTTP/1.1 server on 127.0.0.1:P holding any number of connections: a request whose head
      completes gets 200 "ok" (Connection: close); an unterminated head is held forever.
  slowloris.py attack --port P --connections N --head-bytes B [--piece-bytes K]
      opens N connections and sends each an unterminated request head of B bytes in K-byte
      writes, then prints {"pid": PID, "connected": N, "bytes": TOTAL} and holds them until killed.

Both raise their open-file limit to fit the connections (as root).
"""

import argparse
import asyncio
import json
import os
import resource
import sys

MAX_HEAD = 64 * 1024


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        sys.exit(f"the open-file hard limit {hard} is below the {want} this run needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


async def handle(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) <= MAX_HEAD:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port):
    server = await asyncio.start_server(
        handle, "127.0.0.1", port, backlog=4096, limit=MAX_HEAD
    )
    async with server:
        await server.serve_forever()


async def attack(port, connections, head_bytes, piece):
    filler = b"X-Pad: " + b"a" * (piece - 9) + b"\r\n"
    conns = []
    sent = 0
    batch = 256
    for start in range(0, connections, batch):
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(batch, connections - start)))
        )
        conns.extend(opened)
    for _, writer in conns:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: slowloris\r\n")
    written = [0] * len(conns)
    while True:
        progressed = False
        for i, (_, writer) in enumerate(conns):
            if written[i] + len(filler) <= head_bytes:
                writer.write(filler)
                written[i] += len(filler)
                sent += len(filler)
                progressed = True
        await asyncio.gather(*(w.drain() for _, w in conns))
        if not progressed:
            break
    print(json.dumps({"pid": os.getpid(), "connected": len(conns), "bytes": sent}), flush=True)
    await asyncio.Event().wait()


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    a = sub.add_parser("attack")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--connections", type=int, required=True)
    a.add_argument("--head-bytes", type=int, required=True)
    a.add_argument("--piece-bytes", type=int, default=1024)
    args = parser.parse_args()
    if args.mode == "serve":
        raise_fd_limit(12000)
        asyncio.run(serve(args.port))
    else:
        raise_fd_limit(args.connections)
        asyncio.run(attack(args.port, args.connections, args.head_bytes, args.piece_bytes))


if __name__ == "__main__":
    main()
