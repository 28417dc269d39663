#!/usr/bin/env python3
"""The test HTTP/1.1 server (http_server.py's routes) over TLS with Python's ssl module (OpenSSL).

Usage: tls_server.py --port P --cert CERT --key KEY
"""

import argparse
import os
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import http_server  # noqa: E402 (the peer next to this one)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server = http_server.Server((args.host, args.port), http_server.Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("listening on %s:%d (TLS)" % (args.host, args.port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
