#!/usr/bin/env python3
"""Threads blocked in read(2) on pipes, as an unprivileged process can make them: drops to the
`nobody` user when started as root, starts N threads that each block reading an empty pipe, and
prints `blocked N` once all of them are (or are about to be) in read. Runs until killed.

Usage: pipe_blockers.py --threads N
"""

import argparse
import os
import threading
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    if os.getuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    threading.stack_size(64 * 1024)
    read_end, write_end = os.pipe()  # never written: every read blocks
    started = threading.Semaphore(0)

    def block():
        started.release()
        os.read(read_end, 1)

    for _ in range(args.threads):
        threading.Thread(target=block, daemon=True).start()
    for _ in range(args.threads):
        started.acquire()
    print("blocked %d" % args.threads, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
