//! OpenSSL uprobes: `SSL_read`/`SSL_write` and their `_ex` variants. The entry saves the call's
//! buffer, size and `SSL*` per thread; the return sends the plaintext actually transferred as a
//! `DATA_FLAG_TLS` record of the connection the `SSL*` writes to. That connection is found
//! without OpenSSL struct offsets: the data programs' sys_enter notes the fd of a tracked
//! connection read or written inside the call (`note_syscall_fd`), and the `SSL*` -> fd pair is
//! remembered (LRU) for calls served from OpenSSL's buffers with no syscall. Once a connection
//! has plaintext, `ConnState::tls` is set and the data programs send none of its ciphertext.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    DATA_FLAG_LOSS_BEFORE, DATA_FLAG_TLS, DATA_HEADER_LEN, DataEventHeader, MAX_CAPTURE,
    MAX_SSL_CALLS, MAX_SSL_FDS, conn_key, counter, direction, kind, role, syscall, tls,
};

use crate::conn::{header, live_conn};
use crate::filter::pid_traced;
use crate::maps::{CONNS, EVENTS, SCRATCH, config, count, events_output_flags};

/// One OpenSSL call in flight on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    ssl: u64,
    buf: u64,
    /// `_ex`: where the function writes the size it transferred (0 for the int variants).
    out_len: u64,
    enter_ns: u64,
    /// The tracked connection read or written inside the call, -1 until one is.
    fd: i32,
    /// `syscall::SSL_READ` or `syscall::SSL_WRITE`.
    kind: u8,
    /// Two different tracked connections were touched inside the call.
    ambiguous: u8,
    _pad: [u8; 2],
}

/// `SslCall::kind` of `SSL_do_handshake` (also under `SSL_accept`/`SSL_connect`): it sends no
/// record, it only learns the `SSL*`'s socket before any data moves (OpenSSL may serve the first
/// `SSL_read` from bytes the handshake already read, with no syscall).
const HANDSHAKE: u8 = 0;

/// Value of `SSL_FDS`: the socket and the connection it was when learnt (a reused `SSL*`
/// address or fd number never sends plaintext to another connection).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslSocket {
    conn_id: u64,
    fd: i32,
    _pad: u32,
}

/// Key of `SSL_FDS`: the `SSL*` in its process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    ssl: u64,
    tgid: u32,
    _pad: u32,
}

/// OpenSSL calls in flight, by pid_tgid. LRU: an entry whose return never fired (a thread
/// killed inside the call) is evicted by newer calls instead of filling the table.
#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(MAX_SSL_CALLS, 0);

/// The socket of each `SSL*` seen in a call that made a syscall.
#[map]
pub static SSL_FDS: LruHashMap<SslKey, SslSocket> = LruHashMap::with_max_entries(MAX_SSL_FDS, 0);

/// Entry of `SSL_read(ssl, buf, num)` / `SSL_write` (`ex` false) or `SSL_read_ex(ssl, buf, num,
/// size_t *readbytes)` / `SSL_write_ex` (`ex` true).
#[inline(always)]
pub fn enter(ctx: &ProbeContext, kind_: u8, ex: bool) {
    if !pid_traced(ctx.tgid()) {
        return;
    }
    let call = SslCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        out_len: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        // SAFETY: plain helper call.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        kind: kind_,
        ambiguous: 0,
        _pad: [0; 2],
    };
    if call.ssl == 0 || call.buf == 0 || (ex && call.out_len == 0) {
        return;
    }
    if SSL_CALLS
        .insert(&bpf_get_current_pid_tgid(), &call, 0)
        .is_err()
    {
        count(counter::TLS_CALLS_TABLE_FULL, 1);
    }
}

/// Entry of `SSL_do_handshake(ssl)`.
#[inline(always)]
pub fn enter_handshake(ctx: &ProbeContext) {
    if !pid_traced(ctx.tgid()) {
        return;
    }
    let call = SslCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: 0,
        out_len: 0,
        // SAFETY: plain helper call.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        kind: HANDSHAKE,
        ambiguous: 0,
        _pad: [0; 2],
    };
    if call.ssl != 0
        && SSL_CALLS
            .insert(&bpf_get_current_pid_tgid(), &call, 0)
            .is_err()
    {
        count(counter::TLS_CALLS_TABLE_FULL, 1);
    }
}

/// From the data programs' sys_enter, for a syscall on tracked connection `fd`: when the thread
/// is inside an OpenSSL call, that call's socket is `fd`.
#[inline(always)]
pub fn note_syscall_fd(pid_tgid: u64, fd: i32) {
    let Some(call) = SSL_CALLS.get_ptr_mut(&pid_tgid) else {
        return;
    };
    // SAFETY: a pointer into this thread's own entry (only this thread writes it).
    unsafe {
        if (*call).fd < 0 {
            (*call).fd = fd;
        } else if (*call).fd != fd {
            (*call).ambiguous = 1;
        }
    }
}

/// Return of any of the probed functions.
#[inline(always)]
pub fn exit(ctx: &RetProbeContext) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: value copied out.
    let Some(call) = (unsafe { SSL_CALLS.get(&id) }).copied() else {
        return;
    };
    let _ = SSL_CALLS.remove(&id);
    let tgid = (id >> 32) as u32;
    let key = SslKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    // The socket: the one read or written inside this call, else the one remembered for this
    // SSL* if it is still the same connection.
    let (fd, conn) = if call.ambiguous != 0 {
        let _ = SSL_FDS.remove(&key);
        count(counter::TLS_AMBIGUOUS_FD, 1);
        return;
    } else if call.fd >= 0 {
        let conn = live_conn(tgid, call.fd as u32);
        if let Some(c) = conn {
            let socket = SslSocket {
                conn_id: c.conn_id,
                fd: call.fd,
                _pad: 0,
            };
            let _ = SSL_FDS.insert(&key, &socket, 0);
        }
        (call.fd, conn)
    } else {
        // SAFETY: value copied out.
        let Some(socket) = (unsafe { SSL_FDS.get(&key) }).copied() else {
            if call.kind != HANDSHAKE {
                count(counter::TLS_NO_SOCKET, 1);
            }
            return;
        };
        let conn = live_conn(tgid, socket.fd as u32).filter(|c| c.conn_id == socket.conn_id);
        if conn.is_none() {
            let _ = SSL_FDS.remove(&key);
            if call.kind != HANDSHAKE {
                count(counter::TLS_NO_SOCKET, 1);
            }
            return;
        }
        (socket.fd, conn)
    };
    if call.kind == HANDSHAKE {
        return;
    }
    let ret = ctx.ret::<u64>() as u32 as i32;
    let len: u64 = if call.out_len != 0 {
        if ret != 1 {
            return;
        }
        // SAFETY: probe-read of user memory; failure handled.
        match unsafe { bpf_probe_read_user(call.out_len as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                count(counter::TLS_SIZE_UNREADABLE, 1);
                return;
            }
        }
    } else {
        if ret <= 0 {
            return;
        }
        ret as u64
    };
    if len == 0 {
        return;
    }
    let Some(conn) = conn.filter(|c| c.role != role::IGNORED) else {
        count(counter::TLS_UNTRACKED, 1);
        return;
    };
    let dir = if call.kind == syscall::SSL_WRITE {
        direction::EGRESS
    } else {
        direction::INGRESS
    };
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        count(counter::SCRATCH_UNAVAILABLE, 1);
        return;
    };
    let budget = config().map(|c| c.capture_bytes).unwrap_or(0) as u64;
    let mut n = if len < budget { len } else { budget };
    if n > MAX_CAPTURE as u64 {
        n = MAX_CAPTURE as u64;
    }
    // SAFETY: `ev` points at this CPU's scratch record; `n` is at most MAX_CAPTURE, the size of
    // its data array; `slot` points into the connection table (checked non-null by the map).
    unsafe {
        if n > 0 {
            let dst = core::slice::from_raw_parts_mut((*ev).data.as_mut_ptr(), n as usize);
            if aya_ebpf::helpers::bpf_probe_read_user_buf(call.buf as *const u8, dst).is_err() {
                count(counter::READ_USER_FAILED, 1);
                n = 0;
            }
        }
        let hdr = header(kind::DATA, tgid, ctx.pid(), fd, conn.conn_id);
        let took = hdr.ts_ns.saturating_sub(call.enter_ns);
        let slot = CONNS.get_ptr_mut(&conn_key(tgid, fd as u32));
        let lost_before = slot.is_some_and(|s| (*s).lost != 0);
        (*ev).meta = DataEventHeader {
            header: hdr,
            direction: dir,
            syscall: call.kind,
            role: conn.role,
            flags: if lost_before {
                DATA_FLAG_TLS | DATA_FLAG_LOSS_BEFORE
            } else {
                DATA_FLAG_TLS
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
                if let Some(s) = slot {
                    // From now on the data programs send none of this connection's ciphertext.
                    (*s).tls = tls::OPENSSL;
                    if (*s).lost == 1 {
                        (*s).lost = 0;
                    }
                }
                count(counter::EVENTS_SUBMITTED, 1);
                count(counter::TLS_RECORDS, 1);
                count(counter::BYTES_CAPTURED, n);
                if len > n {
                    count(counter::BYTES_SKIPPED, len - n);
                }
            }
            Err(_) => {
                if let Some(s) = slot {
                    (*s).tls = tls::OPENSSL;
                    if (*s).lost == 0 {
                        (*s).lost = 1;
                    }
                }
                count(counter::RINGBUF_FULL, 1)
            }
        }
    }
}
