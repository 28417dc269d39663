"""A gRPC (grpcio, C-core) server and client with generic handlers and identity serializers (no
generated code): `/helloworld.Greeter/SayHello` answers with a message of `--size` bytes, so the
response's DATA frames are far larger than the agent's capture size and its trailers (a HEADERS
frame) follow them on the wire.

  serve --port P --size N         serve until killed; prints "listening P"
  call --port P --calls K         K unary calls on one channel; prints "ok <bytes>" per call
  burst --port P --calls K       K concurrent unary calls on one channel (their frames share
                                  writes); prints "ok <bytes>" per call
  hold --port P --calls K --go F  one call on a new channel, prints "first ok", waits until file F
                                  exists, then K more calls on the same connection ("ok <bytes>")
"""

import argparse
import os
import sys
import time
from concurrent import futures

import grpc

METHOD = "/helloworld.Greeter/SayHello"


def identity(b):
    return b


def serve(port, size):
    body = bytes((i * 7) & 0xFF for i in range(size))

    def say_hello(request, context):
        return body

    handler = grpc.method_handlers_generic_handler(
        "helloworld.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(
                say_hello, request_deserializer=identity, response_serializer=identity
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


def channel(port):
    return grpc.insecure_channel(f"127.0.0.1:{port}")


def call_once(stub):
    reply = stub(b"hello from h2_capture", timeout=20)
    return len(reply)


def call(port, calls):
    with channel(port) as ch:
        stub = ch.unary_unary(METHOD, request_serializer=identity, response_deserializer=identity)
        for _ in range(calls):
            print(f"ok {call_once(stub)}", flush=True)


def burst(port, calls):
    with channel(port) as ch:
        stub = ch.unary_unary(METHOD, request_serializer=identity, response_deserializer=identity)
        pending = [stub.future(b"burst", timeout=30) for _ in range(calls)]
        for f in pending:
            print(f"ok {len(f.result())}", flush=True)


def hold(port, calls, go):
    with channel(port) as ch:
        stub = ch.unary_unary(METHOD, request_serializer=identity, response_deserializer=identity)
        call_once(stub)
        print("first ok", flush=True)
        deadline = time.monotonic() + 120
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                sys.exit("no go file")
            time.sleep(0.05)
        for _ in range(calls):
            print(f"ok {call_once(stub)}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve", "call", "burst", "hold"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=100 * 1024)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--go", default="")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.port, args.size)
    elif args.mode == "call":
        call(args.port, args.calls)
    elif args.mode == "burst":
        burst(args.port, args.calls)
    else:
        hold(args.port, args.calls, args.go)


if __name__ == "__main__":
    main()
