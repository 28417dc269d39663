#!/usr/bin/env python3
"""HTTPS client for the tracer's end-to-end tests (Python's ssl module: OpenSSL's _ex calls).

Opens CONNECTIONS keep-alive connections at once (one thread each) and sends REQUESTS requests
spread over them (GET /ok?n=I), certificate not verified (self-signed test certificate). Prints
one line `done OK FAILED` and exits 0 when every request got 200.

Usage: tls_client.py --port P --connections C --requests N
"""

import argparse
import http.client
import ssl
import sys
import threading


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--requests", type=int, default=1)
    args = parser.parse_args()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    results = []
    lock = threading.Lock()

    def worker(index):
        conn = http.client.HTTPSConnection(args.host, args.port, context=context, timeout=30)
        for n in range(index, args.requests, args.connections):
            try:
                conn.request("GET", "/ok?n=%d" % n)
                response = conn.getresponse()
                response.read()
                status = response.status
            except Exception as error:  # noqa: BLE001 (report any failure)
                sys.stderr.write("request %d failed: %r\n" % (n, error))
                status = 0
            with lock:
                results.append(status)
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = sum(1 for status in results if status == 200)
    print("done %d %d" % (ok, len(results) - ok), flush=True)
    sys.exit(0 if ok == args.requests else 1)


if __name__ == "__main__":
    main()
