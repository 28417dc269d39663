#!/usr/bin/env python3
"""HTTP/1.1 over TCP connections signed with the TCP MD5 option (RFC 2385), stdlib only.

The MD5 option takes 18 of the 40 TCP option bytes (20 with padding) and timestamps 12 more:
no segment of such a connection has room for the 28-byte trace-context option, which is how a
test makes "no option space" happen on every request (SACK blocks would, but not on demand).

  md5_pair.py serve --host H --md5-port P1 --plain-port P2 --peer ADDR
      Serves keep-alive GET requests on H:P1 (connections from ADDR signed with the MD5 key) and
      on H:P2 (plain), answering 200 with the body `ok <target>`. Prints "listening" when ready.
  md5_pair.py drive --host H --md5-port P1 --plain-port P2 --requests N [--wait-file F]
      Waits (up to 10 minutes) until file F exists (so that an agent can be told this pid first),
      serves itself 5 warm-up requests (GET /warm over loopback, a thread reading and answering
      each: the kernel decides CLIENT identities only in processes it saw serve that way), then
      one MD5-signed connection to H:P1 with N sequential GET /ok?id=0..N-1, then one plain
      connection to H:P2 with GET /ok?id=N..2N-1. Exits 1 if a response is not 200.
"""

import argparse
import os
import socket
import struct
import sys
import threading
import time

TCP_MD5SIG = 14
KEY = b"tracer-test-key"


def md5sig(addr):
    """A struct tcp_md5sig for IPv4 peer `addr` and KEY."""
    storage = struct.pack("<H", socket.AF_INET) + b"\0\0" + socket.inet_aton(addr)
    storage += b"\0" * (128 - len(storage))
    return storage + struct.pack("<BBHi", 0, 0, len(KEY), 0) + KEY + b"\0" * (80 - len(KEY))


def read_head(conn, buffered):
    while b"\r\n\r\n" not in buffered:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffered += chunk
    head, _, rest = buffered.partition(b"\r\n\r\n")
    return head, rest


def serve_on(listener):
    # accept() only once a connection waits (the timeout polls first): a thread blocked in
    # accept() since before a tracer started would hand it a connection it never saw accepted.
    listener.settimeout(0.2)
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        buffered = b""
        with conn:
            while True:
                head, buffered = read_head(conn, buffered)
                if head is None:
                    break
                target = head.split(b"\r\n", 1)[0].split(b" ")[1]
                body = b"ok " + target + b"\n"
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )


def serve(args):
    listeners = []
    for port, signed in ((args.md5_port, True), (args.plain_port, False)):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if signed:
            listener.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(args.peer))
        listener.bind((args.host, port))
        listener.listen(16)
        listeners.append(listener)
    threads = [threading.Thread(target=serve_on, args=(l,), daemon=True) for l in listeners]
    for thread in threads:
        thread.start()
    print("listening", flush=True)
    for thread in threads:
        thread.join()


def requests_on(host, port, signed, first_id, count):
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if signed:
        conn.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(host))
    conn.settimeout(20)
    conn.connect((host, port))
    buffered = b""
    for request_id in range(first_id, first_id + count):
        conn.sendall(
            b"GET /ok?id=%d HTTP/1.1\r\nHost: leaf\r\nAccept: */*\r\n\r\n" % request_id
        )
        head, buffered = read_head(conn, buffered)
        if head is None or not head.startswith(b"HTTP/1.1 200"):
            sys.stderr.write("request %d failed: %r\n" % (request_id, head))
            sys.exit(1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buffered) < length:
            buffered += conn.recv(65536)
        buffered = buffered[length:]
    conn.close()


# Requests this process serves itself (one thread reads and answers each) before the measured
# ones: the kernel decides a CLIENT request's identity, and sends its option, only in a process it
# has seen serve requests one per thread.
WARM_UP = 5


def warm_up(count):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(count)
    port = listener.getsockname()[1]

    def serve_warm():
        for _ in range(count):
            conn, _ = listener.accept()
            with conn:
                head, _ = read_head(conn, b"")
                if head is not None:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    server = threading.Thread(target=serve_warm, daemon=True)
    server.start()
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=20)
        conn.sendall(b"GET /warm HTTP/1.1\r\nHost: warm\r\n\r\n")
        while conn.recv(65536):
            pass
        conn.close()
    server.join(20)
    listener.close()


def drive(args):
    if args.wait_file:
        deadline = time.monotonic() + 600
        while not os.path.exists(args.wait_file):
            if time.monotonic() > deadline:
                sys.stderr.write("%s never appeared\n" % args.wait_file)
                sys.exit(1)
            time.sleep(0.05)
    warm_up(WARM_UP)
    requests_on(args.host, args.md5_port, True, 0, args.requests)
    requests_on(args.host, args.plain_port, False, args.requests, args.requests)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", required=True)
    s.add_argument("--md5-port", type=int, required=True)
    s.add_argument("--plain-port", type=int, required=True)
    s.add_argument("--peer", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--host", required=True)
    d.add_argument("--md5-port", type=int, required=True)
    d.add_argument("--plain-port", type=int, required=True)
    d.add_argument("--requests", type=int, required=True)
    d.add_argument("--wait-file")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
