#!/usr/bin/env python3
"""A real grpcio server and client (no protobuf codegen: generic handlers, bytes in and out).

Service `helloworld.Greeter`:
  SayHello        unary-unary: b"Hello " + request; the request b"missing" answers NOT_FOUND.
  SayHelloStream  unary-stream: three replies.
  Chat            stream-stream: one echo per request message.
  Slow            unary-unary: waits until the call is cancelled (at most 10 s), then answers.
  Large           unary-unary: a 100 KiB reply (DATA frames, then the trailers).
  <Method>_<id>   any method above under a per-call name (`SayHello_007`, `Slow_deadline`), so
                  every span says which call it belongs to.

  grpc_peer.py serve [--port 0]
      Listens on 127.0.0.1 and prints `listening PORT` once it accepts calls.
  grpc_peer.py client --port P CALL...
      Runs the calls in order on ONE channel (one HTTP/2 connection) and prints one JSON line per
      call: {"call", "method", "code", "replies", "bytes"}, then {"pid", "done": true}. Calls:
        unary:METHOD:NAME        one unary call
        stream:METHOD:NAME       unary-stream call, all replies read
        chat:METHOD:N            stream-stream call with N request messages
        deadline:METHOD:MS       unary call with a deadline of MS milliseconds
        cancel:METHOD            unary call cancelled by the client once the server runs it
        concurrent:PREFIX:N      N unary calls at once, methods PREFIX_000 .. PREFIX_<N-1>
        mark:TEXT                prints {"mark": TEXT} (a point the test can wait on)
        pause                    prints {"paused": true} and waits for SIGUSR1 (at most 60 s)
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "helloworld.Greeter"
LARGE_REPLY = b"x" * (100 * 1024)
STREAM_REPLIES = 3
SLOW_LIMIT_S = 10.0
# Slow calls the server has started (the client's `cancel:` polls it through `SlowStarted`).
SLOW_STARTED = [0]
SLOW_LOCK = threading.Lock()


def emit(obj):
    print(json.dumps(obj), flush=True)


def say_hello(request, context):
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such name")
    return b"Hello " + request


def say_hello_stream(request, context):
    for i in range(STREAM_REPLIES):
        yield b"Hello %d " % i + request


def chat(request_iterator, context):
    for message in request_iterator:
        yield b"echo " + message


def slow(request, context):
    with SLOW_LOCK:
        SLOW_STARTED[0] += 1
    deadline = time.monotonic() + SLOW_LIMIT_S
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(0.01)
    return b"late"


def slow_started(request, context):
    with SLOW_LOCK:
        return b"%d" % SLOW_STARTED[0]


def large(request, context):
    return LARGE_REPLY


class Greeter(grpc.GenericRpcHandler):
    """Every method of the service, and `<Method>_<anything>` as <Method>."""

    UNARY = {
        "SayHello": say_hello,
        "Slow": slow,
        "SlowStarted": slow_started,
        "Large": large,
    }

    def service(self, handler_call_details):
        prefix = "/" + SERVICE + "/"
        path = handler_call_details.method
        if not path.startswith(prefix):
            return None
        method = path[len(prefix):].split("_", 1)[0]
        if method in self.UNARY:
            return grpc.unary_unary_rpc_method_handler(self.UNARY[method])
        if method == "SayHelloStream":
            return grpc.unary_stream_rpc_method_handler(say_hello_stream)
        if method == "Chat":
            return grpc.stream_stream_rpc_method_handler(chat)
        return None


def serve(args):
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        handlers=[Greeter()],
        options=[("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port("127.0.0.1:%d" % args.port)
    if port == 0:
        print("cannot bind 127.0.0.1:%d" % args.port, file=sys.stderr, flush=True)
        return 1
    server.start()
    print("listening %d" % port, flush=True)
    wait_for_signal((signal.SIGTERM, signal.SIGINT), None)
    server.stop(grace=1).wait()
    return 0


def code_name(code):
    return code.name if code is not None else None


def path(method):
    return "/%s/%s" % (SERVICE, method)


def run_unary(channel, method, request, timeout=None):
    call = channel.unary_unary(path(method))
    try:
        reply = call(request, timeout=timeout)
        return {"code": "OK", "replies": 1, "bytes": len(reply)}
    except grpc.RpcError as e:
        return {"code": code_name(e.code()), "replies": 0, "bytes": 0}


def run_stream(channel, method, request):
    call = channel.unary_stream(path(method))
    replies = 0
    size = 0
    try:
        for reply in call(request):
            replies += 1
            size += len(reply)
        return {"code": "OK", "replies": replies, "bytes": size}
    except grpc.RpcError as e:
        return {"code": code_name(e.code()), "replies": replies, "bytes": size}


def run_chat(channel, method, count):
    call = channel.stream_stream(path(method))
    messages = (b"message %d" % i for i in range(count))
    replies = 0
    size = 0
    try:
        for reply in call(messages):
            replies += 1
            size += len(reply)
        return {"code": "OK", "replies": replies, "bytes": size}
    except grpc.RpcError as e:
        return {"code": code_name(e.code()), "replies": replies, "bytes": size}


def run_cancel(channel, method):
    """Starts `method` (Slow), waits until the server runs it, then cancels: RST_STREAM(CANCEL)."""
    probe = channel.unary_unary(path("SlowStarted"))
    before = int(probe(b""))
    future = channel.unary_unary(path(method)).future(b"cancel me")
    deadline = time.monotonic() + 10
    while int(probe(b"")) <= before:
        if time.monotonic() > deadline:
            return {"code": "SLOW_NEVER_STARTED", "replies": 0, "bytes": 0}
        time.sleep(0.01)
    future.cancel()
    try:
        future.result()
        return {"code": "OK", "replies": 1, "bytes": 0}
    except grpc.FutureCancelledError:
        return {"code": "CANCELLED", "replies": 0, "bytes": 0}
    except grpc.RpcError as e:
        return {"code": code_name(e.code()), "replies": 0, "bytes": 0}


def run_concurrent(channel, prefix, count):
    calls = [
        channel.unary_unary(path("%s_%03d" % (prefix, i))).future(b"call %03d" % i)
        for i in range(count)
    ]
    codes = {}
    for future in calls:
        try:
            future.result(timeout=60)
            code = "OK"
        except grpc.RpcError as e:
            code = code_name(e.code())
        codes[code] = codes.get(code, 0) + 1
    return {"code": "OK" if codes == {"OK": count} else json.dumps(codes), "replies": count, "bytes": 0}


def wait_for_signal(signums, timeout, on_ready=None):
    """Waits until one of `signums` arrives (at most `timeout` s; None: no limit); False on timeout.

    The handler only sets a flag: a handler that takes a lock (threading.Event.set) deadlocks when
    the signal lands while the main thread holds that lock on its way into Event.wait."""
    got = []
    for signum in signums:
        signal.signal(signum, lambda *_: got.append(True))
    if on_ready is not None:
        on_ready()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not got:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def wait_for_sigusr1():
    if not wait_for_signal((signal.SIGUSR1,), 60, lambda: emit({"paused": True})):
        raise SystemExit("pause: no SIGUSR1 within 60 s")


def client(args):
    # The handler must be in place before the test can signal; install it early.
    channel = grpc.insecure_channel(
        "127.0.0.1:%d" % args.port,
        options=[("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)],
    )
    grpc.channel_ready_future(channel).result(timeout=20)
    for spec in args.calls:
        kind, _, rest = spec.partition(":")
        if kind == "mark":
            emit({"mark": rest})
            continue
        if kind == "pause":
            wait_for_sigusr1()
            continue
        method, _, arg = rest.partition(":")
        if kind == "unary":
            result = run_unary(channel, method, arg.encode())
        elif kind == "stream":
            result = run_stream(channel, method, arg.encode())
        elif kind == "chat":
            result = run_chat(channel, method, int(arg))
        elif kind == "deadline":
            result = run_unary(channel, method, b"deadline", timeout=int(arg) / 1000.0)
        elif kind == "cancel":
            result = run_cancel(channel, method)
        elif kind == "concurrent":
            result = run_concurrent(channel, method, int(arg))
        else:
            raise SystemExit("unknown call %r" % spec)
        result["call"] = spec
        result["method"] = method
        emit(result)
    channel.close()
    emit({"pid": os.getpid(), "done": True})
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=0)
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("calls", nargs="+")
    args = parser.parse_args()
    return serve(args) if args.command == "serve" else client(args)


if __name__ == "__main__":
    sys.exit(main())
