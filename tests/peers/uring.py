"""A minimal io_uring (raw syscalls through ctypes, no liburing) that sends a buffer on a socket
with IORING_OP_SEND, so the bytes move without a send/write syscall on that socket."""

import ctypes
import mmap
import struct

SYS_IO_URING_SETUP = 425  # x86_64
SYS_IO_URING_ENTER = 426
IORING_OP_SEND = 26
IORING_ENTER_GETEVENTS = 1
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(*args):
    ret = _libc.syscall(*[ctypes.c_long(a) for a in args])
    if ret < 0:
        raise OSError(ctypes.get_errno(), "io_uring syscall failed")
    return ret


class Uring:
    def __init__(self, entries=4):
        params = ctypes.create_string_buffer(120)
        self.fd = _syscall(SYS_IO_URING_SETUP, entries, ctypes.addressof(params))
        raw = params.raw
        self.sq_entries, self.cq_entries = struct.unpack_from("II", raw, 0)
        # struct io_sqring_offsets at 40, io_cqring_offsets at 80 (u32 fields first).
        sq = struct.unpack_from("IIIIIIII", raw, 40)
        cq = struct.unpack_from("IIIIIIII", raw, 80)
        self.sq_head, self.sq_tail, self.sq_mask, _, _, _, self.sq_array, _ = sq
        self.cq_head, self.cq_tail, self.cq_mask, _, _, self.cq_cqes, _, _ = cq
        self.sq_ring = mmap.mmap(self.fd, self.sq_array + self.sq_entries * 4,
                                 offset=IORING_OFF_SQ_RING)
        self.cq_ring = mmap.mmap(self.fd, self.cq_cqes + self.cq_entries * 16,
                                 offset=IORING_OFF_CQ_RING)
        self.sqes = mmap.mmap(self.fd, self.sq_entries * 64, offset=IORING_OFF_SQES)

    def _u32(self, ring, off, value=None):
        if value is None:
            return struct.unpack_from("I", ring, off)[0]
        struct.pack_into("I", ring, off, value)
        return value

    def send(self, sock_fd, data):
        """Sends `data` on `sock_fd` through the ring; returns the bytes sent."""
        buf = ctypes.create_string_buffer(data, len(data))
        tail = self._u32(self.sq_ring, self.sq_tail)
        index = tail & self.sq_mask
        sqe = struct.pack("BBHiQQIIQ", IORING_OP_SEND, 0, 0, sock_fd, 0,
                          ctypes.addressof(buf), len(data), 0, 1)
        self.sqes[index * 64:index * 64 + 64] = sqe.ljust(64, b"\0")
        self._u32(self.sq_ring, self.sq_array + 4 * index, index)
        self._u32(self.sq_ring, self.sq_tail, (tail + 1) & 0xFFFFFFFF)
        _syscall(SYS_IO_URING_ENTER, self.fd, 1, 1, IORING_ENTER_GETEVENTS, 0, 0)
        head = self._u32(self.cq_ring, self.cq_head)
        _, res, _ = struct.unpack_from("QiI", self.cq_ring, self.cq_cqes + 16 * (head & self.cq_mask))
        self._u32(self.cq_ring, self.cq_head, (head + 1) & 0xFFFFFFFF)
        if res < 0:
            raise OSError(-res, "IORING_OP_SEND failed")
        return res
