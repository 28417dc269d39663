//! Data capture on read/write/readv/writev/recvfrom/sendto/recvmsg/sendmsg/sendfile: copies the
//! bytes actually transferred (the exit return value), up to the configured capture size, into
//! variable-length ring-buffer records. What is not copied is still reported as a length so
//! userspace keeps its place in the stream.
//!
//! What each syscall costs here (hash lookups are the expensive map operations; array reads
//! are inlined by the JIT). A read or write on a tracked socket: at sys_enter `CONNS` and
//! `INFLIGHT` (`GENERATIONS` only after a process was born or exec'd somewhere, see
//! `conn::live_conn`; the TLS per-thread tables only in processes marked in `TLS_ACTIVE`); at
//! sys_exit `INFLIGHT` and `CONNS` (again only when the loss flag changes), a 3-byte read of an
//! ingress buffer (`tls::note_transfer`), then per record one copy of at most the capture size
//! and a ring-buffer record of 48 bytes of header plus the bytes copied (plus the ring's own
//! 8). A write on an untracked fd (a log file): `CONNS` at sys_enter and a 9-byte read of its
//! buffer (`write_may_sniff`), `INFLIGHT` at sys_exit. nginx serving a 612-byte file to wrk,
//! both traced: 4.7 records and about 1.7 KB copied per request, 5.4 us of these programs;
//! a 16 KB file: 22 KB copied, 10.4 us (copies are then half of the time: Content-Length
//! bodies are what a skip would save).

use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_user, programs::TracePointContext};
use tracer_common::{
    ConnState, DATA_FLAG_LOSS_BEFORE, DATA_HEADER_LEN, DataEventHeader, LOST_UNTIL_CLOSE,
    MAX_CAPTURE, MAX_IOVECS, conn_key, counter, direction, kind, role, syscall,
};

use crate::conn::{
    PidTgid, announce_endpoints, header, live_conn, mark_lost_as, save_args, save_candidate,
    sys_arg, sys_ret, take_args, track,
};
use crate::filter::pid_traced;
use crate::h2;
use crate::maps::{
    CONNS, EVENTS, Endpoints, SCRATCH, SyscallArgs, config, count, events_output_flags,
};

/// A user-space `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoVec {
    pub base: u64,
    pub len: u64,
}

/// Offsets in a user-space `struct msghdr`.
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;

/// recv flags: look at the data without consuming it (captured when really read).
const MSG_PEEK: u64 = 0x2;
/// recv flag: on a stream socket the data is discarded, not copied (a gap of its length).
const MSG_TRUNC: u64 = 0x20;

/// The flags argument of a receive syscall, 0 for the others.
#[inline(always)]
fn recv_flags(ctx: &TracePointContext, sys: u8) -> u64 {
    match sys {
        syscall::RECVFROM => sys_arg(ctx, 3),
        syscall::RECVMSG => sys_arg(ctx, 2),
        _ => 0,
    }
}

#[inline(always)]
fn direction_of(sys: u8) -> u8 {
    match sys {
        syscall::WRITE
        | syscall::WRITEV
        | syscall::SENDTO
        | syscall::SENDMSG
        | syscall::SENDFILE => direction::EGRESS,
        _ => direction::INGRESS,
    }
}

/// sys_enter for every data syscall: remember the arguments when the fd is (or may become) traced.
#[inline(always)]
pub fn enter(ctx: &TracePointContext, sys: u8) {
    let tgid = ctx.tgid();
    if !pid_traced(tgid) {
        return;
    }
    let fd = sys_arg(ctx, 0) as i64;
    // Memory-BIO TLS (Node.js): this syscall ends what the thread's last OpenSSL call or read
    // left to bind; when it is a held SSL_write's ciphertext, that plaintext replaces it.
    if crate::tls::on_data_syscall(ctx, sys, fd) {
        return;
    }
    if fd < 0 {
        return;
    }
    let state = live_conn(tgid, fd as u32);
    if state.is_some_and(|s| s.role == role::IGNORED) {
        return;
    }
    if let Some(s) = state {
        // Inside an OpenSSL call this is its socket; a TLS connection's ciphertext is not sent.
        crate::tls::note_syscall_fd(ctx.pid_tgid_raw(), fd as i32);
        if s.tls != 0 {
            // Not captured, but a thread serving it serves no other request meanwhile.
            crate::prop::touch(tgid, ctx.pid(), fd as i32, &s, direction_of(sys));
            return;
        }
    }
    if state.is_none() {
        let sniff = config().map(|c| c.sniff_untracked != 0).unwrap_or(false);
        // sendfile's destination cannot be sniffed (its bytes come from a file).
        if !sniff || sys == syscall::SENDFILE {
            return;
        }
        // A write's bytes are in user memory already: unless they could start HTTP/1 or
        // HTTP/2, the sniff at its exit cannot adopt the fd, so it needs no candidate entry
        // (host-wide, nearly every untracked syscall is a file or pipe write or read).
        if direction_of(sys) == direction::EGRESS && !write_may_sniff(ctx, sys) {
            return;
        }
    }
    let flags = recv_flags(ctx, sys);
    if flags & MSG_PEEK != 0 {
        // The same bytes come again with the read that consumes them: capturing both would
        // duplicate the request (inspectors peek before they read).
        if state.is_some() {
            count(counter::PEEKS_SKIPPED, 1);
        }
        return;
    }
    // SAFETY: plain helper call.
    let enter_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if let Some(mut conn) = state
        && direction_of(sys) == direction::EGRESS
    {
        // A client's endpoints (non-blocking connect) go out before its first bytes do, not
        // when the write returns: the write may return long after the server read them (a
        // preempted client, a large body), and the agent holds the server's request for the
        // client's only when it knows the client's tuple (see `Pipeline::awaits_client_request`).
        announce_endpoints(
            tgid,
            ctx.pid(),
            fd as i32,
            &mut conn,
            enter_ns.saturating_sub(1),
        );
        crate::prop::client_send(ctx, sys, fd as i32, &conn, enter_ns);
    }
    let args = SyscallArgs {
        fd,
        ptr: sys_arg(ctx, 1),
        count: sys_arg(ctx, 2),
        enter_ns,
        kind: sys,
        gap_only: u8::from(flags & MSG_TRUNC != 0),
        egress: 0,
        _pad: [0; 5],
        conn_id: state.map(|s| s.conn_id).unwrap_or(0),
    };
    if state.is_some() {
        save_args(ctx, &args);
    } else {
        save_candidate(ctx, &args);
    }
}

/// sys_enter of splice: when either end is a tracked connection its bytes move inside the
/// kernel; the exit reports their length as a gap so userspace keeps its place in the stream.
#[inline(always)]
pub fn enter_splice(ctx: &TracePointContext) {
    let tgid = ctx.tgid();
    if !pid_traced(tgid) {
        return;
    }
    let (fd_in, fd_out) = (sys_arg(ctx, 0) as i64, sys_arg(ctx, 2) as i64);
    let tracked = |fd: i64| {
        if fd < 0 {
            return None;
        }
        live_conn(tgid, fd as u32).filter(|s| s.role != role::IGNORED)
    };
    let (fd, egress, conn) = if let Some(c) = tracked(fd_out) {
        (fd_out, 1, c)
    } else if let Some(c) = tracked(fd_in) {
        (fd_in, 0, c)
    } else {
        return;
    };
    let args = SyscallArgs {
        fd,
        ptr: 0,
        count: 0,
        // SAFETY: plain helper call.
        enter_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        kind: syscall::SPLICE,
        gap_only: 1,
        egress,
        _pad: [0; 5],
        conn_id: conn.conn_id,
    };
    save_args(ctx, &args);
}

/// sys_enter of sendmmsg/recvmmsg: several messages per call, not captured: a hole in the
/// stream of a tracked connection.
#[inline(always)]
pub fn enter_unhooked(ctx: &TracePointContext) {
    hole_if_tracked(ctx, sys_arg(ctx, 0) as i64, 1);
}

/// io_uring:io_uring_file_get: an io_uring request on `fd` moves bytes without a syscall on it;
/// a hole in the stream of a tracked connection.
#[inline(always)]
pub fn on_io_uring_file(ctx: &TracePointContext) {
    let Some(offset) = config().map(|c| c.io_uring_fd_offset) else {
        return;
    };
    if offset == 0 {
        return;
    }
    // SAFETY: the offset comes from the tracepoint's format file; the read is bounds-checked.
    if let Ok(fd) = unsafe { ctx.read_at::<i32>(offset as usize) } {
        // One request may transfer many times (multishot receive): lost until closed.
        hole_if_tracked(ctx, fd as i64, LOST_UNTIL_CLOSE);
    }
}

/// When `fd` of the current process is a tracked connection, marks a hole in its stream: the
/// connection is flagged lost and a zero-length record carrying the flag is sent at once, so
/// userspace drops what was pending (never pairs across bytes it did not see). Counted. `how`
/// is the loss flag to set (`LOST_UNTIL_CLOSE`: every later record carries it too).
#[inline(always)]
fn hole_if_tracked(ctx: &TracePointContext, fd: i64, how: u8) {
    let tgid = ctx.tgid();
    if fd < 0 || !pid_traced(tgid) {
        return;
    }
    let Some(mut conn) = live_conn(tgid, fd as u32).filter(|s| s.role != role::IGNORED) else {
        return;
    };
    mark_lost_as(tgid, fd as u32, how);
    if conn.lost < how {
        conn.lost = how;
    }
    crate::prop::on_unseen_bytes(tgid, fd as u32);
    count(counter::UNHOOKED_TRANSFERS, 1);
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    emit(
        ctx,
        &mut conn,
        fd as i32,
        direction::INGRESS,
        syscall::UNHOOKED,
        0,
        0,
        0,
        now,
    );
}

/// Whether the first bytes look like an HTTP/1.x request or response start line.
#[inline(always)]
fn looks_like_http(ptr: u64, len: i64) -> bool {
    if ptr == 0 || len < 16 {
        return false;
    }
    // SAFETY: probe-read of user memory; failure handled.
    let Ok(b) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }) else {
        return false;
    };
    http1_start(&b)
}

/// Whether 8 bytes start an HTTP/1.x request or response start line.
#[inline(always)]
fn http1_start(b: &[u8; 8]) -> bool {
    matches!(
        b,
        [b'G', b'E', b'T', b' ', ..]
            | [b'P', b'O', b'S', b'T', b' ', ..]
            | [b'P', b'U', b'T', b' ', ..]
            | [b'H', b'E', b'A', b'D', b' ', ..]
            | [b'D', b'E', b'L', b'E', b'T', b'E', b' ', ..]
            | [b'P', b'A', b'T', b'C', b'H', b' ', ..]
            | [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' ']
            | [b'H', b'T', b'T', b'P', b'/', b'1', b'.', ..]
    )
}

/// At sys_enter of a write-family syscall on an untracked fd: whether its first bytes could pass
/// the sniff its exit runs (`looks_like_http`, `h2::sniff_user`: both look at the first buffer,
/// and the transfer is at most what was asked). A superset of the exit's checks; an unreadable
/// buffer says yes (the exit decides).
#[inline(always)]
fn write_may_sniff(ctx: &TracePointContext, sys: u8) -> bool {
    let (base, asked) = match sys {
        syscall::WRITEV => (read_iovec(sys_arg(ctx, 1), 0).map(|v| v.base), u64::MAX),
        syscall::SENDMSG => (
            msg_iov(sys_arg(ctx, 1))
                .and_then(|(iov, n)| if n > 0 { read_iovec(iov, 0) } else { None })
                .map(|v| v.base),
            u64::MAX,
        ),
        _ => (Some(sys_arg(ctx, 1)), sys_arg(ctx, 2)),
    };
    let Some(base) = base else {
        return true;
    };
    // Both sniffs need at least a frame header (HTTP/1 needs 16 bytes).
    if base == 0 || asked < tracer_common::h2::FRAME_HEADER_LEN {
        return false;
    }
    // SAFETY: probe-read of user memory; failure handled.
    let Ok(h) = (unsafe { bpf_probe_read_user(base as *const [u8; 9]) }) else {
        return true;
    };
    let b = [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]];
    http1_start(&b)
        || h == [b'P', b'R', b'I', b' ', b'*', b' ', b'H', b'T', b'T']
        || tracer_common::h2::sniff_step(&h, 0).is_some()
}

/// First buffer of the transfer, for sniffing.
#[inline(always)]
fn first_buffer(args: &SyscallArgs) -> u64 {
    match args.kind {
        syscall::READV | syscall::WRITEV => read_iovec(args.ptr, 0).map(|v| v.base).unwrap_or(0),
        syscall::RECVMSG | syscall::SENDMSG => msg_iov(args.ptr)
            .and_then(|(iov, n)| if n > 0 { read_iovec(iov, 0) } else { None })
            .map(|v| v.base)
            .unwrap_or(0),
        syscall::SENDFILE => 0,
        _ => args.ptr,
    }
}

#[inline(always)]
pub fn read_iovec(iov: u64, index: u32) -> Option<IoVec> {
    if iov == 0 {
        return None;
    }
    // SAFETY: probe-read of user memory; failure handled.
    unsafe { bpf_probe_read_user((iov + index as u64 * 16) as *const IoVec) }.ok()
}

#[inline(always)]
pub fn msg_iov(msg: u64) -> Option<(u64, u64)> {
    if msg == 0 {
        return None;
    }
    // SAFETY: probe-reads of user memory; failure handled.
    let iov = unsafe { bpf_probe_read_user((msg + MSGHDR_IOV) as *const u64) }.ok()?;
    let n = unsafe { bpf_probe_read_user((msg + MSGHDR_IOVLEN) as *const u64) }.ok()?;
    Some((iov, n))
}

/// sys_exit for every data syscall; `SYS` is the syscall, known at compile time so each program
/// carries only its own path (the verifier's budget is per program).
#[inline(always)]
pub fn exit<const SYS: u8>(ctx: &TracePointContext) {
    let id = ctx.pid_tgid_raw();
    // Only syscalls on untracked fds, kept for sniffing, are in the candidate table: look there
    // only when sniffing is on (splice is saved for tracked connections only).
    let args = take_args(
        id,
        SYS != syscall::SPLICE && config().is_some_and(|c| c.sniff_untracked != 0),
    );
    if args.kind != SYS {
        return;
    }
    let ret = sys_ret(ctx);
    if ret <= 0 {
        if direction_of(SYS) == direction::EGRESS && SYS != syscall::SENDFILE {
            // A request whose first bytes were not sent: its context must not wait for them.
            crate::prop::on_failed_send(ctx.tgid(), args.fd as i32, args.conn_id);
        }
        return;
    }
    let tgid = ctx.tgid();
    let tid = ctx.pid();
    let fd = args.fd as i32;
    // SAFETY: value copied out.
    // The fd must still be what it was at sys_enter: the same connection, or (for sniffing)
    // still untracked. Otherwise another thread closed it and got the number back for another
    // connection while this syscall ran: these bytes are not the new connection's.
    let mut conn = match unsafe { CONNS.get(&conn_key(tgid, fd as u32)) }.copied() {
        Some(c) if c.role == role::IGNORED => return,
        Some(c) if c.conn_id != args.conn_id => {
            count(counter::FD_REUSED_IN_SYSCALL, 1);
            return;
        }
        Some(mut c) => {
            announce_endpoints(tgid, tid, fd, &mut c, args.enter_ns.saturating_sub(1));
            c
        }
        None if args.conn_id != 0 => {
            // Closed during the syscall (its close record is already sent).
            return;
        }
        None => {
            // MSG_TRUNC: the buffer holds nothing the kernel wrote; never sniff it.
            if args.gap_only != 0 {
                return;
            }
            let http1 = looks_like_http(first_buffer(&args), ret);
            let http2 = !http1 && {
                let (first, first_len) = h2::first_segment::<SYS>(&args, ret as u64);
                h2::sniff_user(first, first_len, ret as u64) != h2::Sniffed::No
            };
            if !http1 && !http2 {
                return;
            }
            let ep = Endpoints::UNKNOWN;
            count(counter::CONNS_SNIFFED, 1);
            if http2 {
                count(counter::CONNS_SNIFFED_H2, 1);
            }
            match track(tgid, tid, fd, role::UNKNOWN, 0, &ep, false) {
                Some(mut c) => {
                    if http2 {
                        // Frame-aware capture below sniffs these bytes again and frames the
                        // direction; the other one is framed when its bytes look like frames.
                        c.h2_flags = [tracer_common::h2::CONN; 2];
                    }
                    c
                }
                None => return,
            }
        }
    };
    if SYS != syscall::SPLICE && args.gap_only == 0 && conn.tls == 0 {
        // Whether these bytes are TLS records: the OpenSSL call this syscall may run inside
        // takes this socket only then, and after a read the SSL_read that may follow on this
        // thread decrypts them (memory BIOs).
        crate::tls::note_transfer(
            id,
            fd,
            conn.conn_id,
            first_buffer(&args),
            ret as u64,
            direction_of(SYS) == direction::INGRESS,
        );
    }
    let budget = config().map(|c| c.capture_bytes).unwrap_or(0) as u64;
    let dir = if SYS == syscall::SPLICE {
        if args.egress != 0 {
            direction::EGRESS
        } else {
            direction::INGRESS
        }
    } else {
        direction_of(SYS)
    };
    let total = ret as u64;
    crate::prop::prepare_records::<SYS>(&args, tgid, tid, conn.conn_id, dir, total);
    if args.gap_only != 0 {
        // Bytes transferred but not in user memory (MSG_TRUNC, splice): their length only.
        h2::unknown_bytes(tgid, fd, &conn, dir);
        emit(ctx, &mut conn, fd, dir, SYS, 0, total, 0, args.enter_ns);
        crate::prop::after_records(ctx);
        return;
    }
    if SYS == syscall::SENDFILE {
        h2::unknown_bytes(tgid, fd, &conn, dir);
    } else if h2::capture::<SYS>(ctx, tgid, tid, fd, &conn, dir, &args, total) {
        return;
    }
    match SYS {
        syscall::READV | syscall::WRITEV => emit_iovecs(
            ctx,
            &mut conn,
            fd,
            dir,
            SYS,
            args.ptr,
            args.count,
            total,
            budget,
            args.enter_ns,
        ),
        syscall::RECVMSG | syscall::SENDMSG => {
            if let Some((iov, n)) = msg_iov(args.ptr) {
                emit_iovecs(
                    ctx,
                    &mut conn,
                    fd,
                    dir,
                    SYS,
                    iov,
                    n,
                    total,
                    budget,
                    args.enter_ns,
                );
            } else {
                emit(ctx, &mut conn, fd, dir, SYS, 0, total, 0, args.enter_ns);
            }
        }
        // sendfile's bytes come from a file: report the length only.
        syscall::SENDFILE => {
            emit(ctx, &mut conn, fd, dir, SYS, 0, total, 0, args.enter_ns);
        }
        _ => {
            emit(
                ctx,
                &mut conn,
                fd,
                dir,
                SYS,
                args.ptr,
                total,
                budget,
                args.enter_ns,
            );
        }
    }
    crate::prop::after_records(ctx);
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit_iovecs(
    ctx: &TracePointContext,
    conn: &mut ConnState,
    fd: i32,
    dir: u8,
    sys: u8,
    iov: u64,
    iovcnt: u64,
    total: u64,
    budget: u64,
    enter_ns: u64,
) {
    // Each segment is capped at the capture size on its own: carrying a shared budget across
    // iterations multiplies the verifier's states past its limit.
    let mut remaining = total;
    for i in 0..MAX_IOVECS {
        if remaining == 0 || i as u64 >= iovcnt {
            break;
        }
        let Some(v) = read_iovec(iov, i) else { break };
        let seg = if v.len < remaining { v.len } else { remaining };
        emit(ctx, conn, fd, dir, sys, v.base, seg, budget, enter_ns);
        remaining -= seg;
    }
    if remaining > 0 {
        // Beyond the iovecs walked: a gap of known length.
        emit(ctx, conn, fd, dir, sys, 0, remaining, 0, enter_ns);
    }
}

/// Sends one data record for `len` transferred bytes at user address `src`, copying at most
/// `budget` of them. Returns the number of bytes copied.
///
/// `conn` is the caller's copy of the connection's entry: its loss flag says whether a hole
/// precedes this record, and follows what the records sent leave it (the entry in `CONNS` is
/// looked up only when the flag changes: a record after a hole, or one the ring refused). A
/// hole another thread marks meanwhile goes with the connection's next record.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    ctx: &TracePointContext,
    conn: &mut ConnState,
    fd: i32,
    dir: u8,
    sys: u8,
    src: u64,
    len: u64,
    budget: u64,
    enter_ns: u64,
) -> u64 {
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        count(counter::SCRATCH_UNAVAILABLE, 1);
        return 0;
    };
    let mut n = if len < budget { len } else { budget };
    if n > MAX_CAPTURE as u64 {
        n = MAX_CAPTURE as u64;
    }
    if src == 0 {
        n = 0;
    }
    // SAFETY: `ev` points at this CPU's scratch record; `n` is at most MAX_CAPTURE, the size of
    // its data array.
    unsafe {
        if n > 0 {
            let dst = core::slice::from_raw_parts_mut((*ev).data.as_mut_ptr(), n as usize);
            if aya_ebpf::helpers::bpf_probe_read_user_buf(src as *const u8, dst).is_err() {
                count(counter::READ_USER_FAILED, 1);
                n = 0;
            }
        }
        let hdr = header(kind::DATA, ctx.tgid(), ctx.pid(), fd, conn.conn_id);
        let took = hdr.ts_ns.saturating_sub(enter_ns);
        let lost_before = conn.lost != 0;
        (*ev).meta = DataEventHeader {
            header: hdr,
            direction: dir,
            syscall: sys,
            role: conn.role,
            flags: if lost_before {
                DATA_FLAG_LOSS_BEFORE
            } else {
                0
            },
            true_len: if len > u32::MAX as u64 {
                u32::MAX
            } else {
                len as u32
            },
            captured_len: n as u32,
            syscall_ns: if took > u32::MAX as u64 {
                u32::MAX
            } else {
                took as u32
            },
        };
        let size = DATA_HEADER_LEN + (n as usize & (MAX_CAPTURE * 2 - 1));
        let record = core::slice::from_raw_parts(ev as *const u8, size);
        match EVENTS.output::<[u8]>(record, events_output_flags(false, size as u64)) {
            Ok(()) => {
                if conn.lost == 1 {
                    conn.lost = 0;
                    set_lost(hdr.tgid, fd, conn.conn_id, 1, 0);
                }
                count(counter::EVENTS_SUBMITTED, 1);
                count(counter::BYTES_CAPTURED, n);
                if len > n {
                    count(counter::BYTES_SKIPPED, len - n);
                }
            }
            Err(_) => {
                // The connection's stream now has a hole: its next record says so.
                if conn.lost == 0 {
                    conn.lost = 1;
                    set_lost(hdr.tgid, fd, conn.conn_id, 0, 1);
                }
                count(counter::RINGBUF_FULL, 1)
            }
        }
    }
    n
}

/// Sets the loss flag of connection `conn_id` (`fd` of `tgid`) from `from` to `to`, when the
/// entry is still that connection's and its flag is still `from`.
#[inline(always)]
fn set_lost(tgid: u32, fd: i32, conn_id: u64, from: u8, to: u8) {
    if let Some(s) = CONNS.get_ptr_mut(&conn_key(tgid, fd as u32)) {
        // SAFETY: the slot is a connection's entry; only its flag changes, and only when it is
        // this connection's.
        unsafe {
            if (*s).conn_id == conn_id && (*s).lost == from {
                (*s).lost = to;
            }
        }
    }
}
