#!/usr/bin/env python3
"""Sends HTTP/1.1 requests over hand-made TCP connections (a raw socket, stdlib only) whose
request segment carries a chosen TCP option: what a middlebox or another program using RFC 6994
experimental options could put on the wire, which no socket option can make the kernel send.

  raw_option.py --src A --dst B --port P --first-id N CASE [CASE ...]

For each CASE, one connection from A (a fresh port) to B:P: SYN, the SYN-ACK's sequence taken,
ACK, then one segment with the option and `GET /ok?id=<id> HTTP/1.1` (ids from N, one per case),
and the response waited for (not acknowledged: the connection is left to die). The kernel's own
RSTs to the unknown connection must be dropped by the caller (iptables). CASE is one of:
  foreign        kind 253, length 28, ExID 0x1234 (another user's experimental option)
  short          kind 253, length 20, the tracer's ExID 0x7c54, ids cut short
  zero-trace     kind 253, length 28, the tracer's ExID, an all-zero trace id
  valid:T:S      kind 253, length 28, the tracer's ExID, trace id T (32 hex), span id S (16 hex)
Prints one line per case: `<case> <id> <response status line>`. Exits 1 when a response does
not come.
"""

import argparse
import random
import socket
import struct
import sys
import time

EXID_SAMPLED = 0x7C54
KIND = 253


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def segment(src, dst, sport, dport, seq, ack, flags, options=b"", payload=b""):
    while len(options) % 4:
        options += b"\x01"  # NOP padding
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst)
    pseudo += struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header) + len(options) + len(payload))
    csum = checksum(pseudo + header + options + payload)
    header = header[:16] + struct.pack("!H", csum) + header[18:]
    return header + options + payload


def option(case):
    if case == "foreign":
        return struct.pack("!BBH", KIND, 28, 0x1234) + bytes(range(1, 25))
    if case == "short":
        return struct.pack("!BBH", KIND, 20, EXID_SAMPLED) + bytes(range(1, 17))
    if case == "zero-trace":
        return struct.pack("!BBH", KIND, 28, EXID_SAMPLED) + bytes(16) + bytes(range(1, 9))
    if case.startswith("valid:"):
        _, trace, span = case.split(":")
        return struct.pack("!BBH", KIND, 28, EXID_SAMPLED) + bytes.fromhex(trace + span)
    raise SystemExit("unknown case %r" % case)


def receive(raw, src, dst, sport, dport, want, deadline):
    """The next TCP segment from dst:dport to src:sport with all `want` flags."""
    while time.monotonic() < deadline:
        raw.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            packet = raw.recv(65535)
        except socket.timeout:
            break
        ihl = (packet[0] & 0x0F) * 4
        if socket.inet_ntoa(packet[12:16]) != dst or socket.inet_ntoa(packet[16:20]) != src:
            continue
        tcp = packet[ihl:]
        ps, pd, seq, ack, off, flags = struct.unpack("!HHIIBB", tcp[:14])
        if (ps, pd) != (dport, sport) or flags & want != want:
            continue
        return seq, ack, flags, tcp[(off >> 4) * 4 :]
    return None


def one(args, case, request_id):
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sport = random.randint(40000, 59999)
    isn = random.getrandbits(32)
    deadline = time.monotonic() + 10
    mss = struct.pack("!BBH", 2, 4, 1400)
    raw.sendto(segment(args.src, args.dst, sport, args.port, isn, 0, 0x02, mss), (args.dst, 0))
    got = receive(raw, args.src, args.dst, sport, args.port, 0x12, deadline)
    if got is None:
        return "no SYN-ACK"
    server_isn = got[0]
    seq, ack = (isn + 1) & 0xFFFFFFFF, (server_isn + 1) & 0xFFFFFFFF
    raw.sendto(segment(args.src, args.dst, sport, args.port, seq, ack, 0x10), (args.dst, 0))
    payload = b"GET /ok?id=%d HTTP/1.1\r\nHost: leaf\r\n\r\n" % request_id
    raw.sendto(
        segment(args.src, args.dst, sport, args.port, seq, ack, 0x18, option(case), payload),
        (args.dst, 0),
    )
    while time.monotonic() < deadline:
        got = receive(raw, args.src, args.dst, sport, args.port, 0x10, deadline)
        if got is None:
            break
        if got[3]:
            return got[3].split(b"\r\n", 1)[0].decode("latin-1")
    return "no response"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("cases", nargs="+")
    args = parser.parse_args()
    failed = False
    for index, case in enumerate(args.cases):
        status = one(args, case, args.first_id + index)
        print("%s %d %s" % (case, args.first_id + index, status), flush=True)
        failed |= not status.startswith("HTTP/1.")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
