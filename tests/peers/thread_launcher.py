#!/usr/bin/env python3
"""A process that first grows many threads, then starts a child HTTP server: with `--pid` on this
process, its threads must not fill the tracer's pid set, so the child is still followed.

Waits for SIGUSR1 (sent once the tracer runs), starts N threads that wait on an event, starts
`http_server.py --port PORT` as a child and prints `child <pid>`. SIGTERM stops the child too.

Usage: thread_launcher.py --threads N --port PORT --server PATH
"""

import argparse
import signal
import subprocess
import sys
import threading


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", required=True)
    args = parser.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("waiting", flush=True)
    signal.sigwait({signal.SIGUSR1})
    threading.stack_size(64 * 1024)
    gate = threading.Event()
    for _ in range(args.threads):
        threading.Thread(target=gate.wait, daemon=True).start()
    print("threads %d" % threading.active_count(), flush=True)
    child = subprocess.Popen(
        [sys.executable, "-u", args.server, "--port", str(args.port)],
        env={"OTEL_SERVICE_NAME": "launched-child"},
    )

    def stop(_signum, _frame):
        child.terminate()
        child.wait()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("child %d" % child.pid, flush=True)
    child.wait()


if __name__ == "__main__":
    main()
