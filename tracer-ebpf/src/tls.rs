//! OpenSSL uprobes: `SSL_read`/`SSL_write` and their `_ex` variants. The entry saves the call's
//! buffer, size and `SSL*` per thread; the return sends the plaintext actually transferred as a
//! `DATA_FLAG_TLS` record of the connection the `SSL*` writes to. That connection is found
//! without OpenSSL struct offsets: the data programs' sys_enter notes the fd of a tracked
//! connection read or written inside the call (`note_syscall_fd`), and the `SSL*` -> fd pair is
//! remembered (LRU) for calls served from OpenSSL's buffers with no syscall. Once a connection
//! has plaintext, `ConnState::tls` is set and the data programs send none of its ciphertext.
//!
//! A syscall inside the call is not always the call's own: an application's callback may run
//! inside it (Node.js emits 'secureConnect' inside the call that completes the handshake, and
//! the handler may write to any socket). Its connection is taken as the `SSL*`'s only when it
//! can be claimed (not bound to another `SSL*` in `CONN_SSL`, which every binding sets, and
//! not carrying another library's plaintext) and, when not bound to this `SSL*` yet, the bytes
//! that syscall moved started with a TLS record (`note_transfer`). Otherwise the call is
//! attributed as if it made no syscall, counted (`TLS_NESTED_REFUSED`).
//!
//! Memory BIOs (Node.js): OpenSSL encrypts into and decrypts from memory and the program moves
//! the ciphertext itself, so no syscall happens inside the call. Node's order is synchronous on
//! the thread: `SSL_write` then, before any other socket syscall, the write of its ciphertext
//! (TLSWrap::DoWrite -> EncOut -> uv_try_write); and the read of the ciphertext then, before any
//! other socket syscall, the `SSL_read`s that decrypt it (uv__read -> OnStreamRead -> ClearOut).
//! Such an `SSL*` is bound to a socket only when that order is observed ([`ThreadTls`]):
//! - write side: an `SSL_write` without a socket is held (`TLS_HELD`, not sent); the thread's
//!   next data syscall binds it when it is a write on a tracked connection made of whole TLS
//!   records, the last of which ends the write and is application data of exactly the
//!   plaintext's size plus an AEAD's overhead and ends with the very bytes the `SSL_write`'s
//!   last record ended with when OpenSSL wrote it into the memory BIO (its AEAD tag, 128
//!   unpredictable bits, taken by the `BIO_write`/`BIO_write_ex` uprobe: [`bio_write`]), no
//!   other `SSL*` made a call in between, and, when the `SSL_write` ran on a socket's read
//!   (Node's client writes its first request as the server's handshake flight is read), it is
//!   that socket. The held record is then sent, as that connection's. Without the tag (a
//!   libssl whose libcrypto is not probed) the write side is refused;
//! - read side: an `SSL_read` without a socket that returned plaintext is bound to the socket
//!   of the thread's last read before the call when that read's bytes started with a TLS
//!   record, could hold that plaintext, and no data syscall on another fd came between the two
//!   (Node's server writes its session tickets on the same socket between them). Syscalls
//!   inside the call are the callbacks' (Node runs JavaScript inside the `SSL_read` that
//!   completes a handshake): they do not change which read the call decrypts;
//! - both: a connection already bound to another `SSL*` (`CONN_SSL`), or already carrying
//!   another library's plaintext, is never bound again.
//! Any other order refuses the binding (`TLS_BINDING_REFUSED`): the plaintext is dropped,
//! counted, never guessed. `SSL_free` forgets the `SSL*`'s socket, and a binding is only used
//! while its connection id is the fd's (close and fd reuse end it).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::{Array, LruHashMap},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use tracer_common::{
    ConnState, DATA_FLAG_LOSS_BEFORE, DATA_FLAG_TLS, DATA_HEADER_LEN, DataEventHeader, MAX_CAPTURE,
    MAX_SSL_CALLS, MAX_SSL_FDS, MAX_TLS_HELD, TLS_HELD_CAPTURE, conn_key, counter, direction, kind,
    role, syscall, tls,
};

use crate::conn::{header, live_conn, sys_arg};
use crate::data::read_iovec;
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
    /// `SSL_write`: the last 16 bytes of the last record it wrote into its BIO (the AEAD tag),
    /// zero until [`bio_write`] saw one.
    tag: [u64; 2],
    /// `SSL_read`: the connection of the thread's last data syscall when the call began, if
    /// that was a read of TLS records (`READ_SEEN`): the ciphertext a memory-BIO `SSL_read`
    /// decrypts. Taken at entry, because the application's callbacks that OpenSSL runs inside
    /// the call (Node's handshake-done callback, and the JavaScript ticks after it) may make
    /// syscalls on other sockets before the call returns its plaintext.
    read_conn: u64,
    /// The bytes that read moved.
    read_len: u64,
    /// The fd of that read, -1 if the thread's last data syscall was no such read.
    read_fd: i32,
    /// The tracked connection read or written inside the call, -1 until one is.
    fd: i32,
    /// `syscall::SSL_READ` or `syscall::SSL_WRITE`.
    kind: u8,
    /// Two different tracked connections were touched inside the call.
    ambiguous: u8,
    /// The bytes a syscall on `fd` moved inside the call started with a TLS record.
    tls_bytes: u8,
    _pad: u8,
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

/// What the thread did last, for binding memory-BIO `SSL*`s by order (see the module doc).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadTls {
    /// `WRITE_HELD`/`POISONED`: the `SSL*` whose `SSL_write` is held.
    ssl: u64,
    /// `READ_SEEN`: the connection read; `WRITE_HELD`: the connection the thread had read just
    /// before the `SSL_write` (its ciphertext must go there), 0 if none.
    conn_id: u64,
    /// `WRITE_HELD`: the plaintext size of the held `SSL_write`; `READ_SEEN`: the bytes read.
    plain_len: u64,
    /// `READ_SEEN`: the fd read; `WRITE_HELD`: the fd read just before the `SSL_write`, -1 if
    /// none.
    fd: i32,
    state: u8,
    _pad: [u8; 3],
}

/// `ThreadTls::state`: the last data syscall was a read of a tracked connection whose bytes
/// start with a TLS record.
const READ_SEEN: u8 = 1;
/// An `SSL_write` without socket is held until the thread's next data syscall.
const WRITE_HELD: u8 = 2;
/// As `WRITE_HELD`, but another `SSL*` made a call (or one was freed) since: refused.
const POISONED: u8 = 3;

/// Largest plaintext of one TLS record.
const TLS_MAX_PLAINTEXT: u64 = 16384;
/// Bytes a TLS record adds to its plaintext with the AEAD ciphers Node negotiates: TLS 1.3
/// (tag and content type), TLS 1.2 ChaCha20-Poly1305 (tag), TLS 1.2 AES-GCM (explicit nonce and
/// tag). CBC suites (variable padding) are refused, counted.
const TLS13_OVERHEAD: u64 = 17;
const TLS12_CHACHA_OVERHEAD: u64 = 16;
const TLS12_GCM_OVERHEAD: u64 = 24;
/// A TLS record header.
const TLS_HEADER: u64 = 5;
/// TLS record headers of a ciphertext write looked at, at most, for the held `SSL_write`'s.
const TLS_FLUSH_RECORDS: u32 = 8;

/// Per-thread binding state, by pid_tgid (see [`ThreadTls`]).
#[map]
pub static TLS_THREADS: LruHashMap<u64, ThreadTls> = LruHashMap::with_max_entries(MAX_SSL_CALLS, 0);

/// A held `SSL_write` record: the same layout as the start of `DataEvent` (the tag after the
/// data is never sent).
#[repr(C)]
pub struct HeldRecord {
    meta: DataEventHeader,
    data: [u8; TLS_HELD_CAPTURE],
    /// The `SSL_write`'s `SslCall::tag`.
    tag: [u64; 2],
}

/// `SSL_write` plaintext held until its ciphertext write binds the `SSL*`, by pid_tgid.
#[map]
pub static TLS_HELD: LruHashMap<u64, HeldRecord> = LruHashMap::with_max_entries(MAX_TLS_HELD, 0);

/// The memory-BIO `SSL*` bound to a connection, by connection id: a connection is never bound
/// to a second `SSL*`.
#[map]
pub static CONN_SSL: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_SSL_FDS, 0);

/// Buckets of `TLS_ACTIVE`: process ids are hashed into this many (a power of two).
const TLS_ACTIVE_BUCKETS: u32 = 65536;
/// Buckets per entry of `TLS_ACTIVE`.
const TLS_ACTIVE_CHUNK: usize = 4096;

/// Processes that may hold per-thread TLS state (`SSL_CALLS`, `TLS_THREADS`), one byte per
/// bucket of tgids: set before such an entry is first written, never cleared (a reused pid or a
/// shared bucket only costs the lookups the bit saves). The data programs, which run on every
/// read and write of every traced process, look the per-thread tables up only for processes
/// marked here: an array read instead of a hash lookup per table for processes that never made
/// an OpenSSL call nor read a TLS record.
#[map]
pub static TLS_ACTIVE: Array<[u8; TLS_ACTIVE_CHUNK]> =
    Array::with_max_entries(TLS_ACTIVE_BUCKETS / TLS_ACTIVE_CHUNK as u32, 0);

/// Marks process `tgid` as having per-thread TLS state (before the state is written: the same
/// thread reads the mark after it, in program order).
#[inline(always)]
fn mark_tls_active(tgid: u32) {
    let bucket = tgid & (TLS_ACTIVE_BUCKETS - 1);
    if let Some(chunk) = TLS_ACTIVE.get_ptr_mut(bucket / TLS_ACTIVE_CHUNK as u32) {
        let i = (bucket as usize) & (TLS_ACTIVE_CHUNK - 1);
        // SAFETY: `i` is below the chunk's length; a byte store (no read-modify-write of bytes
        // other writers set).
        unsafe {
            if (*chunk)[i] == 0 {
                (*chunk)[i] = 1;
            }
        }
    }
}

/// Whether process `tgid` may hold per-thread TLS state (see `TLS_ACTIVE`). True when the mark
/// cannot be read (never skip state that may be there).
#[inline(always)]
pub fn tls_active(tgid: u32) -> bool {
    let bucket = tgid & (TLS_ACTIVE_BUCKETS - 1);
    match TLS_ACTIVE.get(bucket / TLS_ACTIVE_CHUNK as u32) {
        Some(chunk) => chunk[(bucket as usize) & (TLS_ACTIVE_CHUNK - 1)] != 0,
        None => true,
    }
}

/// An OpenSSL call of `ssl` starts on thread `id`: a held `SSL_write` of another `SSL*` can no
/// longer be bound by the thread's next syscall (which BIO it flushes is unknown).
#[inline(always)]
fn disturb(id: u64, ssl: u64, any: bool) {
    if let Some(t) = TLS_THREADS.get_ptr_mut(&id) {
        // SAFETY: this thread's own entry.
        unsafe {
            if (*t).state == WRITE_HELD && (any || (*t).ssl != ssl) {
                (*t).state = POISONED;
            }
        }
    }
}

/// Entry of `SSL_free(ssl)`: its socket is forgotten (the address may be reused).
#[inline(always)]
pub fn free(ctx: &ProbeContext) {
    if !pid_traced(ctx.tgid()) {
        return;
    }
    let ssl = ctx.arg::<u64>(0).unwrap_or(0);
    if ssl == 0 {
        return;
    }
    let key = SslKey {
        ssl,
        tgid: ctx.tgid(),
        _pad: 0,
    };
    // SAFETY: value copied out.
    if let Some(socket) = unsafe { SSL_FDS.get(&key) }.copied() {
        let _ = SSL_FDS.remove(&key);
        // SAFETY: value copied out.
        if unsafe { CONN_SSL.get(&socket.conn_id) }.copied() == Some(ssl) {
            let _ = CONN_SSL.remove(&socket.conn_id);
        }
    }
    disturb(bpf_get_current_pid_tgid(), ssl, true);
}

/// Whether `conn` may be bound to `ssl`: not bound to another `SSL*`, and not carrying
/// plaintext of another kind (a socket-BIO `SSL*`, Go).
#[inline(always)]
fn claimable(conn: &ConnState, ssl: u64) -> bool {
    // SAFETY: value copied out.
    match unsafe { CONN_SSL.get(&conn.conn_id) }.copied() {
        Some(bound) => bound == ssl,
        None => conn.tls == 0,
    }
}

/// Remembers that `ssl` of process `tgid` is connection `conn` at `fd`.
#[inline(always)]
fn bind(tgid: u32, ssl: u64, fd: i32, conn: &ConnState) {
    let key = SslKey { ssl, tgid, _pad: 0 };
    let socket = SslSocket {
        conn_id: conn.conn_id,
        fd,
        _pad: 0,
    };
    let _ = SSL_FDS.insert(&key, &socket, 0);
    let _ = CONN_SSL.insert(&conn.conn_id, &ssl, 0);
}

/// From the data programs' sys_exit of a transfer on tracked connection `fd` (not TLS
/// plaintext yet) that moved `bytes` at `buf`: when they start with a TLS record, an OpenSSL
/// call this syscall ran inside may take `fd` as its socket, and after a read the thread's next
/// `SSL_read` may be bound to it.
#[inline(always)]
pub fn note_transfer(id: u64, fd: i32, conn_id: u64, buf: u64, bytes: u64, ingress: bool) {
    let tgid = (id >> 32) as u32;
    let call = if tls_active(tgid) {
        SSL_CALLS.get_ptr_mut(&id)
    } else {
        None
    };
    // A write matters only inside an OpenSSL call.
    if buf == 0 || (!ingress && call.is_none()) {
        return;
    }
    // SAFETY: probe-read of user memory; failure handled.
    let Ok(h) = (unsafe { bpf_probe_read_user(buf as *const [u8; 3]) }) else {
        return;
    };
    // Content type 20..=23, version 3.0 to 3.4 (a ClientHello's record says 3.1).
    if !(0x14..=0x17).contains(&h[0]) || h[1] != 3 || h[2] > 4 {
        return;
    }
    if let Some(call) = call {
        // SAFETY: a pointer into this thread's own entry (only this thread writes it).
        unsafe {
            if (*call).fd == fd {
                (*call).tls_bytes = 1;
            }
        }
    }
    if !ingress {
        return;
    }
    let t = ThreadTls {
        ssl: 0,
        conn_id,
        plain_len: bytes,
        fd,
        state: READ_SEEN,
        _pad: [0; 3],
    };
    mark_tls_active(tgid);
    let _ = TLS_THREADS.insert(&id, &t, 0);
}

/// Outcome of the thread's next data syscall for a held `SSL_write`.
#[derive(PartialEq, Eq)]
enum Flush {
    Bound,
    Refused,
    HeldLost,
}

/// From the data programs' sys_enter, before anything else, for every data syscall `sys` on
/// `fd` of a traced thread: ends the thread's binding state. When an `SSL_write` was held and
/// this is its ciphertext write, binds the `SSL*` and sends the held record; returns true then
/// (the connection's ciphertext is no longer captured).
#[inline(always)]
pub fn on_data_syscall(ctx: &TracePointContext, sys: u8, fd: i64) -> bool {
    let id = bpf_get_current_pid_tgid();
    if !tls_active((id >> 32) as u32) {
        return false;
    }
    // SAFETY: value copied out.
    let Some(t) = (unsafe { TLS_THREADS.get(&id) }).copied() else {
        return false;
    };
    if t.state == READ_SEEN {
        // Node may write on the socket between its read and the SSL_read (the server's session
        // tickets): syscalls on that same fd keep the read's socket; any other ends it.
        if fd != t.fd as i64 {
            let _ = TLS_THREADS.remove(&id);
        }
        return false;
    }
    let _ = TLS_THREADS.remove(&id);
    let outcome = if t.state == WRITE_HELD {
        flush(ctx, id, sys, fd, &t)
    } else {
        Flush::Refused
    };
    let _ = TLS_HELD.remove(&id);
    match outcome {
        Flush::Bound => {
            count(counter::TLS_BOUND_BY_WRITE, 1);
            true
        }
        Flush::Refused => {
            count(counter::TLS_BINDING_REFUSED, 1);
            false
        }
        Flush::HeldLost => {
            count(counter::TLS_HELD_EVICTED, 1);
            false
        }
    }
}

/// Whether this syscall is the ciphertext write of the held `SSL_write` `t`; if so binds and
/// sends the held record.
#[inline(always)]
fn flush(ctx: &TracePointContext, id: u64, sys: u8, fd: i64, t: &ThreadTls) -> Flush {
    if fd < 0 {
        return Flush::Refused;
    }
    let tgid = (id >> 32) as u32;
    let Some(conn) = live_conn(tgid, fd as u32).filter(|c| c.role != role::IGNORED) else {
        return Flush::Refused;
    };
    if !claimable(&conn, t.ssl) {
        return Flush::Refused;
    }
    if t.fd >= 0 && (t.fd as i64 != fd || t.conn_id != conn.conn_id) {
        return Flush::Refused;
    }
    let (base, room) = match sys {
        syscall::WRITE | syscall::SENDTO => (sys_arg(ctx, 1), sys_arg(ctx, 2)),
        syscall::WRITEV => match read_iovec(sys_arg(ctx, 1), 0) {
            Some(v) => (v.base, v.len),
            None => return Flush::Refused,
        },
        _ => return Flush::Refused,
    };
    if base == 0 || room < 5 {
        return Flush::Refused;
    }
    if t.plain_len == 0 {
        return Flush::Refused;
    }
    // The plaintext of the SSL_write's last record.
    let plain = (t.plain_len - 1) % TLS_MAX_PLAINTEXT + 1;
    // The write is the SSL*'s output since its last flush: whole TLS records (the handshake's
    // last flight may come first, as Node's client sends its Finished with its first request),
    // the last of which ends the write and is application data of the plaintext's size plus an
    // AEAD's overhead. Anything else: refused.
    let mut offset: u64 = 0;
    let mut found = false;
    for _ in 0..TLS_FLUSH_RECORDS {
        if offset + TLS_HEADER > room {
            break;
        }
        // SAFETY: probe-read of user memory; failure handled.
        let Ok(h) = (unsafe { bpf_probe_read_user((base + offset) as *const [u8; 5]) }) else {
            return Flush::Refused;
        };
        // TLS 1.2 and 1.3 both say version 3.3 on the wire.
        if !(0x14..=0x17).contains(&h[0]) || h[1] != 3 || h[2] != 3 {
            return Flush::Refused;
        }
        let record = (h[3] as u64) << 8 | h[4] as u64;
        offset += TLS_HEADER + record;
        if offset >= room {
            found = offset == room
                && h[0] == 0x17
                && (record == plain + TLS13_OVERHEAD
                    || record == plain + TLS12_CHACHA_OVERHEAD
                    || record == plain + TLS12_GCM_OVERHEAD);
            break;
        }
    }
    if !found {
        return Flush::Refused;
    }
    let Some(held) = TLS_HELD.get_ptr_mut(&id) else {
        return Flush::HeldLost;
    };
    // And it ends with the bytes the SSL_write's last record ended with in the memory BIO (its
    // AEAD tag): another connection's record of the same size never does.
    // SAFETY: `held` points at this thread's held record; probe-read of user memory, failure
    // handled.
    unsafe {
        let tag = (*held).tag;
        if tag == [0, 0] {
            return Flush::Refused;
        }
        match bpf_probe_read_user((base + room - 16) as *const [u64; 2]) {
            Ok(tail) if tail == tag => {}
            _ => return Flush::Refused,
        }
    }
    bind(tgid, t.ssl, fd as i32, &conn);
    // SAFETY: `held` points at this thread's held record; `n` is bounded by its data array.
    unsafe {
        let n = (*held).meta.captured_len as usize;
        if n >= TLS_HELD_CAPTURE {
            return Flush::Refused;
        }
        let hdr = header(kind::DATA, tgid, ctx.pid(), fd as i32, conn.conn_id);
        let slot = CONNS.get_ptr_mut(&conn_key(tgid, fd as u32));
        let lost_before = slot.is_some_and(|s| (*s).lost != 0);
        (*held).meta.header = hdr;
        (*held).meta.role = conn.role;
        (*held).meta.flags = if lost_before {
            DATA_FLAG_TLS | DATA_FLAG_LOSS_BEFORE
        } else {
            DATA_FLAG_TLS
        };
        // The length loaded again and masked where it is used: the mask keeps it (below
        // TLS_HELD_CAPTURE, checked above and at capture) and gives the verifier its bound there
        // (6.1 loses the check above across a register spill).
        const _: () = assert!(TLS_HELD_CAPTURE.is_power_of_two());
        let fresh = core::ptr::read_volatile(&(*held).meta.captured_len) as usize;
        let size = DATA_HEADER_LEN + (fresh & (TLS_HELD_CAPTURE - 1));
        let record = core::slice::from_raw_parts(held as *const u8, size);
        let len = (*held).meta.true_len as u64;
        match EVENTS.output::<[u8]>(record, events_output_flags(false, size as u64)) {
            Ok(()) => {
                if let Some(s) = slot {
                    (*s).tls = tls::OPENSSL;
                    if (*s).lost == 1 {
                        (*s).lost = 0;
                    }
                }
                count(counter::EVENTS_SUBMITTED, 1);
                count(counter::TLS_RECORDS, 1);
                count(counter::BYTES_CAPTURED, n as u64);
                if len > n as u64 {
                    count(counter::BYTES_SKIPPED, len - n as u64);
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
    Flush::Bound
}

/// Plaintext bytes the returning call `call` transferred (`None`: none, or unreadable).
#[inline(always)]
fn transferred(ctx: &RetProbeContext, call: &SslCall) -> Option<u64> {
    let ret = ctx.ret::<u64>() as u32 as i32;
    let len: u64 = if call.out_len != 0 {
        if ret != 1 {
            return None;
        }
        // SAFETY: probe-read of user memory; failure handled.
        match unsafe { bpf_probe_read_user(call.out_len as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                count(counter::TLS_SIZE_UNREADABLE, 1);
                return None;
            }
        }
    } else {
        if ret <= 0 {
            return None;
        }
        ret as u64
    };
    if len == 0 { None } else { Some(len) }
}

/// A data call of `call.ssl` returned without a syscall and without a known socket (a memory
/// BIO, see the module doc). `SSL_read`: the socket if the thread's last data syscall proves
/// it. `SSL_write`: held until the thread's next data syscall (returns `None`).
#[inline(always)]
fn memory_bio(ctx: &RetProbeContext, id: u64, call: &SslCall) -> Option<(i32, ConnState)> {
    let len = transferred(ctx, call)?;
    let tgid = (id >> 32) as u32;
    if call.kind == syscall::SSL_READ {
        // The read the thread made last before the call (see `SslCall::read_fd`).
        if call.read_fd < 0 {
            count(counter::TLS_NO_SOCKET, 1);
            return None;
        }
        // One SSL_read returns one record's plaintext at most: it must fit in the bytes read
        // (a record header and an AEAD tag at least around it), else it came from elsewhere.
        if len + TLS_HEADER + TLS12_CHACHA_OVERHEAD > call.read_len {
            count(counter::TLS_BINDING_REFUSED, 1);
            return None;
        }
        let Some(conn) = live_conn(tgid, call.read_fd as u32)
            .filter(|c| c.conn_id == call.read_conn && c.role != role::IGNORED)
        else {
            count(counter::TLS_BINDING_REFUSED, 1);
            return None;
        };
        if !claimable(&conn, call.ssl) {
            count(counter::TLS_BINDING_REFUSED, 1);
            return None;
        }
        bind(tgid, call.ssl, call.read_fd, &conn);
        count(counter::TLS_BOUND_BY_READ, 1);
        return Some((call.read_fd, conn));
    }
    // SAFETY: value copied out.
    let t = unsafe { TLS_THREADS.get(&id) }.copied();
    if t.is_some_and(|t| t.state == WRITE_HELD || t.state == POISONED) {
        // Two SSL_writes before a ciphertext write: the second is not held (one per thread).
        count(counter::TLS_BINDING_REFUSED, 1);
        return None;
    }
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        count(counter::SCRATCH_UNAVAILABLE, 1);
        return None;
    };
    let budget = config().map(|c| c.capture_bytes).unwrap_or(0) as u64;
    let mut n = if len < budget { len } else { budget };
    // Below the held array's size, so that masking with `TLS_HELD_CAPTURE - 1` at output keeps
    // the value and gives older verifiers (6.1) the bound they lose across a stack spill.
    if n >= TLS_HELD_CAPTURE as u64 {
        n = TLS_HELD_CAPTURE as u64 - 1;
    }
    // SAFETY: `ev` points at this CPU's scratch record; `n` is less than TLS_HELD_CAPTURE, less
    // than its data array; the held record is the scratch record's first bytes.
    unsafe {
        if n > 0 {
            let dst = core::slice::from_raw_parts_mut((*ev).data.as_mut_ptr(), n as usize);
            if aya_ebpf::helpers::bpf_probe_read_user_buf(call.buf as *const u8, dst).is_err() {
                count(counter::READ_USER_FAILED, 1);
                n = 0;
            }
        }
        let hdr = header(kind::DATA, tgid, ctx.pid(), -1, 0);
        let took = hdr.ts_ns.saturating_sub(call.enter_ns);
        (*ev).meta = DataEventHeader {
            header: hdr,
            direction: direction::EGRESS,
            syscall: call.kind,
            role: role::UNKNOWN,
            flags: DATA_FLAG_TLS,
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
        (*(ev as *mut HeldRecord)).tag = call.tag;
        let held = &*(ev as *const HeldRecord);
        if TLS_HELD.insert(&id, held, 0).is_err() {
            count(counter::TLS_HELD_EVICTED, 1);
            return None;
        }
    }
    // An SSL_write made while the thread is on a socket's read (Node's client writes its first
    // request when the server's handshake flight is read) must flush to that socket.
    let (mut read_fd, mut read_conn) = (-1i32, 0u64);
    if let Some(p) = TLS_THREADS.get_ptr_mut(&id) {
        // SAFETY: this thread's own entry, fields copied out.
        unsafe {
            if (*p).state == READ_SEEN {
                read_fd = (*p).fd;
                read_conn = (*p).conn_id;
            }
        }
    }
    let t = ThreadTls {
        ssl: call.ssl,
        conn_id: read_conn,
        plain_len: len,
        fd: read_fd,
        state: WRITE_HELD,
        _pad: [0; 3],
    };
    mark_tls_active(tgid);
    let _ = TLS_THREADS.insert(&id, &t, 0);
    None
}

/// Entry of `SSL_read(ssl, buf, num)` / `SSL_write` (`ex` false) or `SSL_read_ex(ssl, buf, num,
/// size_t *readbytes)` / `SSL_write_ex` (`ex` true).
#[inline(always)]
pub fn enter(ctx: &ProbeContext, kind_: u8, ex: bool) {
    if !pid_traced(ctx.tgid()) {
        return;
    }
    let mut call = SslCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        out_len: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        // SAFETY: plain helper call.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        tag: [0, 0],
        read_conn: 0,
        read_len: 0,
        read_fd: -1,
        fd: -1,
        kind: kind_,
        ambiguous: 0,
        tls_bytes: 0,
        _pad: 0,
    };
    if call.ssl == 0 || call.buf == 0 || (ex && call.out_len == 0) {
        return;
    }
    if kind_ == syscall::SSL_READ && tls_active(ctx.tgid()) {
        // SAFETY: value copied out.
        if let Some(t) = unsafe { TLS_THREADS.get(&bpf_get_current_pid_tgid()) }.copied()
            && t.state == READ_SEEN
        {
            call.read_conn = t.conn_id;
            call.read_len = t.plain_len;
            call.read_fd = t.fd;
        }
    }
    mark_tls_active(ctx.tgid());
    disturb(bpf_get_current_pid_tgid(), call.ssl, false);
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
        tag: [0, 0],
        read_conn: 0,
        read_len: 0,
        read_fd: -1,
        fd: -1,
        kind: HANDSHAKE,
        ambiguous: 0,
        tls_bytes: 0,
        _pad: 0,
    };
    if call.ssl != 0 {
        mark_tls_active(ctx.tgid());
        disturb(bpf_get_current_pid_tgid(), call.ssl, false);
    }
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
    if !tls_active((pid_tgid >> 32) as u32) {
        return;
    }
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

/// Entry of `BIO_write(bio, data, dlen)` / `BIO_write_ex(bio, data, dlen, written)`: inside an
/// `SSL_write` OpenSSL writes each record it made into the `SSL*`'s BIO, the last one last;
/// the call keeps the last 16 bytes written (a record's AEAD tag). Any other call returns at
/// once (a lookup: BIO_write is hot in libcrypto users).
#[inline(always)]
pub fn bio_write(ctx: &ProbeContext) {
    let Some(call) = SSL_CALLS.get_ptr_mut(&bpf_get_current_pid_tgid()) else {
        return;
    };
    // SAFETY: a pointer into this thread's own entry (only this thread writes it).
    unsafe {
        if (*call).kind != syscall::SSL_WRITE {
            return;
        }
    }
    let data = ctx.arg::<u64>(1).unwrap_or(0);
    // An int for BIO_write, a size_t for BIO_write_ex: the low 32 bits, below 2 GiB.
    let len = ctx.arg::<u64>(2).unwrap_or(0) & 0xffff_ffff;
    if data == 0 || !(16..0x8000_0000).contains(&len) {
        return;
    }
    // SAFETY: probe-read of user memory, failure handled; this thread's own entry.
    unsafe {
        (*call).tag = bpf_probe_read_user((data + len - 16) as *const [u64; 2]).unwrap_or([0, 0]);
    }
}

/// Whether the tracked connection the call `call` of process `tgid` touched is its `SSL*`'s
/// socket (see the module doc): bound to it already, or claimable and the bytes moved were a
/// TLS record. Otherwise counted (`TLS_NESTED_REFUSED`).
#[inline(always)]
fn nested_socket(tgid: u32, call: &SslCall) -> Option<ConnState> {
    let conn = live_conn(tgid, call.fd as u32).filter(|c| c.role != role::IGNORED)?;
    // SAFETY: value copied out.
    let mine = match unsafe { CONN_SSL.get(&conn.conn_id) }.copied() {
        Some(bound) => bound == call.ssl,
        None => conn.tls == 0 && call.tls_bytes != 0,
    };
    if mine {
        Some(conn)
    } else {
        count(counter::TLS_NESTED_REFUSED, 1);
        None
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
    // The socket: the one read or written inside this call when it is this SSL*'s, else the one
    // remembered for this SSL* if it is still the same connection.
    if call.ambiguous != 0 {
        let _ = SSL_FDS.remove(&key);
        count(counter::TLS_AMBIGUOUS_FD, 1);
        return;
    }
    let nested = if call.fd >= 0 {
        nested_socket(tgid, &call)
    } else {
        None
    };
    let (fd, conn) = if let Some(c) = nested {
        bind(tgid, call.ssl, call.fd, &c);
        (call.fd, Some(c))
    } else {
        // SAFETY: value copied out.
        let socket = (unsafe { SSL_FDS.get(&key) }).copied();
        let conn = socket.and_then(|socket| {
            live_conn(tgid, socket.fd as u32).filter(|c| c.conn_id == socket.conn_id)
        });
        match (socket, conn) {
            (Some(socket), Some(conn)) => (socket.fd, Some(conn)),
            _ => {
                if socket.is_some() {
                    let _ = SSL_FDS.remove(&key);
                }
                if call.kind == HANDSHAKE {
                    return;
                }
                // No syscall and no socket known: a memory BIO, bound by order or not at all.
                match memory_bio(ctx, id, &call) {
                    Some((fd, conn)) => (fd, Some(conn)),
                    None => return,
                }
            }
        }
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
