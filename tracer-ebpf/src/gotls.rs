//! Go crypto/tls plaintext capture: uprobes at the entry and at every return instruction of
//! `crypto/tls.(*Conn).Read` and `.Write` (uretprobes would corrupt Go's movable stacks).
//! Register ABI (Go >= 1.17, amd64): receiver in RAX, the `[]byte` as RBX (ptr) and RCX (len);
//! results `n` in RAX. Entry state is keyed by goroutine (`g` in R14): a Read blocks and
//! resumes on another OS thread. The receiver is followed to its fd with the binary's layout
//! (`GO_TLS_BINARIES`, slot = attach cookie); the plaintext is sent as ordinary data records of
//! the tracked connection with `DATA_FLAG_TLS`, and `ConnState::tls` tells the syscall programs
//! to drop the connection's ciphertext.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::ProbeContext,
};
use tracer_common::{
    ConnState, DATA_FLAG_LOSS_BEFORE, DATA_FLAG_TLS, DATA_HEADER_LEN, DataEvent, DataEventHeader,
    GoTlsBinary, GoTlsCall, GoTlsCallKey, MAX_CAPTURE, MAX_GO_TLS_BINARIES, MAX_GO_TLS_CALLS,
    conn_key, counter, direction, kind, role, syscall, tls,
};

use crate::conn::{header, live_conn, mark_lost};
use crate::filter::pid_traced;
use crate::maps::{CONNS, EVENTS, config, count, events_output_flags};

/// Layouts of the Go binaries the uprobes are attached to, indexed by the attach cookie.
#[map]
pub static GO_TLS_BINARIES: Array<GoTlsBinary> = Array::with_max_entries(MAX_GO_TLS_BINARIES, 0);

/// Calls in flight, from entry to return, per goroutine. A plain hash map: an evicted entry
/// would leave a hole nobody counts; a full table is counted and marks the connection lost.
/// Entries of processes that exited mid-call are swept by userspace.
#[map]
pub static GO_TLS_CALLS: HashMap<GoTlsCallKey, GoTlsCall> =
    HashMap::with_max_entries(MAX_GO_TLS_CALLS, 0);

/// Per-CPU scratch for plaintext records (apart from the syscall programs' one).
#[map]
pub static GO_TLS_SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn regs(ctx: &ProbeContext) -> (u64, u64, u64, u64) {
    // SAFETY: a uprobe's context is the task's pt_regs, readable directly.
    unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx, r.r14)
    }
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    if addr == 0 {
        return None;
    }
    // SAFETY: probe-read of user memory; failure handled.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The fd behind a `*tls.Conn`, when its `net.Conn` is a `*net.TCPConn`.
#[inline(always)]
fn socket_fd(layout: &GoTlsBinary, tls_conn: u64) -> Option<i64> {
    let iface = tls_conn.wrapping_add(layout.tls_conn_conn);
    let Some(itab) = read_u64(iface) else {
        count(counter::GO_TLS_UNREADABLE, 1);
        return None;
    };
    // itab: inter, _type, hash (u32 at +16).
    // SAFETY: probe-read of user memory; failure handled.
    let hash = if itab == 0 {
        None
    } else {
        unsafe { bpf_probe_read_user((itab + 16) as *const u32) }.ok()
    };
    match hash {
        None => {
            count(counter::GO_TLS_UNREADABLE, 1);
            return None;
        }
        Some(h) if h != layout.tcp_conn_hash => {
            count(counter::GO_TLS_NOT_TCP, 1);
            return None;
        }
        Some(_) => {}
    }
    let fd = read_u64(iface + 8)
        .and_then(|tcp| read_u64(tcp.wrapping_add(layout.tcp_conn_fd)))
        .and_then(|netfd| read_u64(netfd.wrapping_add(layout.netfd_sysfd)));
    match fd {
        Some(fd) if (fd as i64) >= 0 && (fd as i64) < i32::MAX as i64 => Some(fd as i64),
        // -1: the socket is closed already (the call fails without moving bytes).
        Some(fd) if fd as i64 == -1 => None,
        _ => {
            count(counter::GO_TLS_UNREADABLE, 1);
            None
        }
    }
}

/// The tracked connection behind the receiver (RAX) of a crypto/tls method, when the process
/// is traced and the binary's layout is known.
#[inline(always)]
fn receiver_conn(ctx: &ProbeContext, tgid: u32) -> Option<(i64, ConnState)> {
    if !pid_traced(tgid) {
        return None;
    }
    // SAFETY: plain helper call on the program's context.
    let slot = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(layout) = GO_TLS_BINARIES.get(slot).copied().filter(|l| l.valid != 0) else {
        count(counter::GO_TLS_NO_LAYOUT, 1);
        return None;
    };
    let (rax, _, _, _) = regs(ctx);
    let fd = socket_fd(&layout, rax)?;
    let Some(state) = live_conn(tgid, fd as u32).filter(|s| s.role != role::IGNORED) else {
        count(counter::GO_TLS_UNTRACKED, 1);
        return None;
    };
    // From now on the connection's plaintext comes from here: the syscall programs drop its
    // ciphertext (the syscalls of this very call come after this point).
    if state.tls != tls::GO
        && let Some(s) = CONNS.get_ptr_mut(&conn_key(tgid, fd as u32))
    {
        // SAFETY: this connection's entry; one byte changes.
        unsafe { (*s).tls = tls::GO };
    }
    Some((fd, state))
}

/// Entry of `(*Conn).handshakeContext`: the connection is TLS from its first byte; its
/// handshake's ciphertext is not sent (the plaintext follows from Read and Write).
#[inline(always)]
pub fn handshake(ctx: &ProbeContext) {
    let _ = receiver_conn(ctx, ctx.tgid());
}

/// Entry of `(*Conn).Read` / `.Write`: remember the buffer and the connection by goroutine.
#[inline(always)]
pub fn entry(ctx: &ProbeContext, op: u8) {
    let tgid = ctx.tgid();
    let Some((fd, state)) = receiver_conn(ctx, tgid) else {
        return;
    };
    let (_, rbx, rcx, g) = regs(ctx);
    let key = GoTlsCallKey {
        g,
        tgid,
        op: op as u32,
    };
    let call = GoTlsCall {
        buf: rbx,
        len: rcx,
        conn_id: state.conn_id,
        // SAFETY: plain helper call.
        enter_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        fd: fd as i32,
        role: state.role,
        _pad: [0; 3],
    };
    if GO_TLS_CALLS.insert(&key, &call, 0).is_err() {
        count(counter::GO_TLS_CALLS_FULL, 1);
        mark_lost(tgid, fd as u32);
    }
}

/// A return instruction of `(*Conn).Read` / `.Write`: send the `n` bytes moved.
#[inline(always)]
pub fn ret(ctx: &ProbeContext, op: u8) {
    let tgid = ctx.tgid();
    let (rax, _, _, g) = regs(ctx);
    let key = GoTlsCallKey {
        g,
        tgid,
        op: op as u32,
    };
    // SAFETY: the value is copied out before removal.
    // No entry: not followed (counted there), or begun before the probes attached.
    let Some(call) = (unsafe { GO_TLS_CALLS.get(&key) }).copied() else {
        return;
    };
    let _ = GO_TLS_CALLS.remove(&key);
    let n = rax as i64;
    if n <= 0 {
        return;
    }
    let mut n = n as u64;
    if n > call.len {
        n = call.len;
    }
    // The bytes are the connection's the receiver was at entry, even when another goroutine
    // closed it between the last syscall and this return (a peer closing right after the
    // response): the record keeps that connection's id, and its causal time (the call's start
    // for a Write) puts it before the close in userspace's reorder window.
    let dir = if op == syscall::GO_TLS_WRITE {
        direction::EGRESS
    } else {
        direction::INGRESS
    };
    emit(ctx, &call, dir, op, n);
}

/// Sends one plaintext record of `len` bytes at `src`, copying at most the capture size (the
/// rest is the record's gap, so userspace keeps its place in the stream).
#[inline(always)]
fn emit(ctx: &ProbeContext, call: &GoTlsCall, dir: u8, sys: u8, len: u64) {
    let (fd, src, enter_ns) = (call.fd, call.buf, call.enter_ns);
    let Some(ev) = GO_TLS_SCRATCH.get_ptr_mut(0) else {
        count(counter::SCRATCH_UNAVAILABLE, 1);
        return;
    };
    let budget = config().map(|c| c.capture_bytes).unwrap_or(0) as u64;
    let mut n = if len < budget { len } else { budget };
    if n > MAX_CAPTURE as u64 {
        n = MAX_CAPTURE as u64;
    }
    // SAFETY: `ev` is this CPU's scratch record; `n` is at most MAX_CAPTURE, its data size.
    unsafe {
        if n > 0 {
            let dst = core::slice::from_raw_parts_mut((*ev).data.as_mut_ptr(), n as usize);
            if bpf_probe_read_user_buf(src as *const u8, dst).is_err() {
                count(counter::READ_USER_FAILED, 1);
                n = 0;
            }
        }
        let hdr = header(kind::DATA, ctx.tgid(), ctx.pid(), fd, call.conn_id);
        let took = hdr.ts_ns.saturating_sub(enter_ns);
        let key = conn_key(hdr.tgid, fd as u32);
        // The loss flag only while the fd is still this connection.
        let slot = CONNS
            .get_ptr_mut(&key)
            .filter(|s| (**s).conn_id == call.conn_id);
        let lost_before = slot.is_some_and(|s| (*s).lost != 0);
        (*ev).meta = DataEventHeader {
            header: hdr,
            direction: dir,
            syscall: sys,
            role: call.role,
            flags: DATA_FLAG_TLS
                | if lost_before {
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
                if let Some(s) = slot
                    && (*s).lost == 1
                {
                    (*s).lost = 0;
                }
                count(counter::EVENTS_SUBMITTED, 1);
                count(counter::BYTES_CAPTURED, n);
                if len > n {
                    count(counter::BYTES_SKIPPED, len - n);
                }
            }
            Err(_) => {
                if let Some(s) = slot
                    && (*s).lost == 0
                {
                    (*s).lost = 1;
                }
                count(counter::RINGBUF_FULL, 1)
            }
        }
    }
}
