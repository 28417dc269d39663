//! Cross-node context propagation (`--context-propagation tcp-options`): span identities of
//! HTTP/1 requests decided in the kernel at the moment their bytes move (a SERVER request at the
//! exit of the read returning its first bytes, a CLIENT request at the entry of the write
//! carrying its first bytes), and the `sock_ops` program that writes a CLIENT request's context
//! as a TCP header option on the segment starting with its first byte and, on the receiving
//! host, stores a received context under its stream offset for the SERVER side. The layout and
//! counters are in `tracer_common::propagation`. Everything here is dead code for the verifier
//! unless userspace sets `PROPAGATION` at load: with propagation off no program writes to any
//! packet and the data programs behave as before.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_load_hdr_opt, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_reserve_hdr_opt, bpf_store_hdr_opt,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{SockOpsContext, TracePointContext},
};
use tracer_common::{
    ConnState, IdentityEvent, conn_key, direction, kind,
    propagation::{
        DEDICATED_CANDIDATE, DEDICATED_VERIFIED, EXID_SAMPLED, IDENTITY_CLIENT,
        IDENTITY_FROM_OPTION, IDENTITY_HAS_PARENT, MAX_DEDICATED, MAX_FLOWS, MAX_PENDING,
        MAX_RECEIVED, OPTION_KIND, OPTION_LEN, counter,
    },
    role, syscall,
};

use crate::data::{msg_iov, read_iovec};
use crate::maps::{EVENTS, Endpoints, SOCK_ENDPOINTS};

/// Non-zero: propagation is on (set by userspace at load time; read-only, so the verifier
/// removes every path below when it is 0).
#[unsafe(no_mangle)]
static PROPAGATION: u8 = 0;

#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain read of a read-only global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(&PROPAGATION) != 0 }
}

/// A TCP connection as both the syscall side and `sock_ops` name it: its socket's own
/// addresses (a DNAT rewrite does not change them), IPv4 in the first 4 bytes, and its network
/// namespace: two namespaces on one host may hold connections with the same 4-tuple
/// (overlapping pod networks), and a context stored by one must never be found by the other.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowKey {
    pub local: [u8; 16],
    pub peer: [u8; 16],
    pub local_port: u16,
    pub peer_port: u16,
    /// Inode of the socket's network namespace (0: the kernel's BTF did not say where it is;
    /// both sides then read 0).
    pub netns: u32,
}

/// A context: trace id and span id.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Context {
    pub trace: [u8; 16],
    pub span: [u8; 8],
}

/// Stream positions of a traced connection (keyed by `conn_key`), counted from its start.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stream {
    pub conn_id: u64,
    pub sk: u64,
    pub flow: FlowKey,
    /// Bytes the process wrote / read on the connection so far.
    pub tx: u64,
    pub rx: u64,
    pub flow_known: u8,
    pub role: u8,
    /// Non-zero once bytes moved on the connection unseen (`on_unseen_bytes`): `tx`/`rx` are
    /// no longer its stream offsets.
    pub offsets_unknown: u8,
    pub _pad: u8,
    /// The thread that read the connection's unanswered HTTP/1 request (0: none): the
    /// request a thread serves is kept per connection, so a response written by another thread
    /// is seen as such.
    pub open_tid: u32,
}

/// A CLIENT request's context waiting for the segment that starts with its first byte.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub ctx: Context,
    /// Stream offset of the request's first byte.
    pub offset: u64,
}

/// The stream baselines of a connection (initial sequence + 1 of each direction), and the
/// span id of the last context received on it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Baseline {
    pub snd: u32,
    pub rcv: u32,
    /// The span id of the last option received (0: none): TSO/GSO copies the option of a
    /// request's first segment onto every segment cut from it, and only the first one starts
    /// the request.
    pub last_span: [u8; 8],
    /// The absolute sequence number that context was stored under.
    pub last_seq: u32,
    pub _pad: u32,
}

/// A received context's connection and the absolute sequence number of the segment that
/// carried it (not its offset: a later connection with the same 4-tuple starts from another
/// initial sequence, so what an earlier one left behind is never found).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReceivedKey {
    pub flow: FlowKey,
    pub seq: u64,
}

/// What a thread does on server-side connections: the SERVER request it serves, and the
/// server-side connection (SERVER, or UNKNOWN: seen first by its bytes; TLS and HTTP/2
/// included) of its last data syscall, which tells whether it left a request unanswered to
/// serve another connection.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Serving {
    pub ctx: Context,
    /// The connection of the cleartext HTTP/1 request it serves (`ctx`).
    pub conn_id: u64,
    /// The server-side connection of its last data syscall (0: none yet).
    pub last_conn: u64,
    pub last_fd: i32,
    /// Non-zero while the request on `conn_id` is unanswered.
    pub open: u8,
    /// Direction of the last data syscall on `last_conn`.
    pub last_dir: u8,
    pub _pad: [u8; 2],
}

#[map]
static PROP_STREAMS: LruHashMap<u64, Stream> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static PROP_PENDING: LruHashMap<FlowKey, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);
#[map]
static PROP_BASELINES: LruHashMap<FlowKey, Baseline> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static PROP_RECEIVED: LruHashMap<ReceivedKey, Context> =
    LruHashMap::with_max_entries(MAX_RECEIVED, 0);
#[map]
static PROP_SERVING: LruHashMap<u32, Serving> = LruHashMap::with_max_entries(16384, 0);
/// `tracer_common::propagation::DEDICATED_THREADS_MAP`.
#[map]
static PROP_DEDICATED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_DEDICATED, 0);
/// `tracer_common::propagation::COUNTERS_MAP`.
#[map]
static PROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// `BPF_WRITE_HDR_TCP_CURRENT_MSS`: the length callback runs for the MSS computation, not for
/// a segment.
const WRITE_HDR_TCP_CURRENT_MSS: u32 = 1;

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = PROP_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn random_u64() -> u64 {
    // SAFETY: plain helper calls.
    unsafe { ((bpf_get_prandom_u32() as u64) << 32) | bpf_get_prandom_u32() as u64 }
}

/// A random span id that is neither zero nor `avoid`.
#[inline(always)]
fn new_span(avoid: u64) -> u64 {
    let mut id = random_u64();
    if id == 0 || id == avoid {
        id = random_u64() | 1;
    }
    if id == avoid {
        id ^= 2;
    }
    id
}

#[inline(always)]
fn flow_of(ep: &Endpoints, netns: u32) -> FlowKey {
    FlowKey {
        local: ep.local_addr,
        peer: ep.peer_addr,
        local_port: ep.local_port,
        peer_port: ep.peer_port,
        netns,
    }
}

/// The network namespace a connection's flow key names (see `sock_netns`, its `sock_ops`
/// side): 0 where the socket's cannot be read there either.
#[inline(always)]
fn flow_netns(sk: u64) -> u32 {
    if crate::maps::netns_offsets().known & tracer_common::netns_known::SOCK == 0 {
        return 0;
    }
    crate::conn::netns_of(sk)
}

/// A new traced connection (accept or connect): its stream positions start at 0.
#[inline(always)]
pub fn on_track(tgid: u32, fd: i32, state: &ConnState, ep: &Endpoints) {
    if !enabled() || (state.role != role::SERVER && state.role != role::CLIENT) {
        return;
    }
    let stream = Stream {
        conn_id: state.conn_id,
        sk: state.sk,
        // The socket's namespace, else (an accepted socket, whose `sk` the syscall side does
        // not know) the accepting thread's: the one the socket was created in.
        flow: flow_of(ep, flow_netns(state.sk)),
        tx: 0,
        rx: 0,
        flow_known: u8::from(ep.family != 0 && ep.local_port != 0 && ep.peer_port != 0),
        role: state.role,
        offsets_unknown: 0,
        _pad: 0,
        open_tid: 0,
    };
    let _ = PROP_STREAMS.insert(&conn_key(tgid, fd as u32), &stream, 0);
}

/// sched_process_exit (every task): a thread's serving request ends with it, and a process's
/// one-request-per-thread mark with its first thread (a reused id is another program).
#[inline(always)]
pub fn on_task_exit(ctx: &TracePointContext) {
    if !enabled() {
        return;
    }
    let tid = ctx.pid();
    let _ = PROP_SERVING.remove(&tid);
    if tid == ctx.tgid() {
        let _ = PROP_DEDICATED.remove(&tid);
    }
}

/// sched_process_exec: the process is another program now; what was verified of the old one
/// (its one-request-per-thread mark, or its revocation) and what its thread served are gone.
/// Userspace classifies the new program before marking it again.
#[inline(always)]
pub fn on_exec(ctx: &TracePointContext) {
    if !enabled() {
        return;
    }
    let _ = PROP_SERVING.remove(&ctx.pid());
    let _ = PROP_DEDICATED.remove(&ctx.tgid());
}

/// The process's threads were seen not to serve one request at a time: no CLIENT parent from
/// the kernel for it any more (a candidate or not yet marked: userspace cannot mark it later).
#[inline(always)]
fn revoke(tgid: u32) {
    use tracer_common::propagation::DEDICATED_REVOKED;
    match PROP_DEDICATED.get_ptr_mut(&tgid) {
        Some(mark) => {
            // SAFETY: this process's entry.
            unsafe {
                if *mark != DEDICATED_REVOKED {
                    *mark = DEDICATED_REVOKED;
                    bump(counter::PROCESSES_REVOKED);
                }
            }
        }
        None => {
            if PROP_DEDICATED.insert(&tgid, &DEDICATED_REVOKED, 0).is_ok() {
                bump(counter::PROCESSES_REVOKED);
            }
        }
    }
}

/// A data syscall of thread `tid` on connection `conn` (any protocol, TLS and HTTP/2
/// included): on a server-side connection (SERVER, or UNKNOWN: a connection first seen by its
/// bytes may be either end), it revokes the process when the thread leaves a request for
/// another connection: its last server-side syscall was a read on another connection that is
/// still open, or the cleartext request it serves is unanswered. A thread-per-request server
/// answers (writes) before it reads another connection; an event loop, or a worker also serving
/// a connection the kernel cannot parse (TLS, HTTP/2, older than the agent), does not.
#[inline(always)]
pub fn touch(tgid: u32, tid: u32, fd: i32, conn: &ConnState, dir: u8) {
    if !enabled() || (conn.role != role::SERVER && conn.role != role::UNKNOWN) {
        return;
    }
    let Some(sv) = PROP_SERVING.get_ptr_mut(&tid) else {
        let Some(scratch) = PROP_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's scratch, written field by field before it is copied in.
        unsafe {
            let sv = &mut (*scratch).serving;
            sv.ctx = Context {
                trace: [0; 16],
                span: [0; 8],
            };
            sv.conn_id = 0;
            sv.last_conn = conn.conn_id;
            sv.last_fd = fd;
            sv.open = 0;
            sv.last_dir = dir;
            sv._pad = [0; 2];
            let _ = PROP_SERVING.insert(&tid, &*sv, 0);
        }
        return;
    };
    // SAFETY: this thread's entry.
    unsafe {
        if (*sv).last_conn != conn.conn_id {
            let left_unanswered = (*sv).open != 0 && (*sv).conn_id != conn.conn_id;
            let left_a_read = (*sv).last_conn != 0
                && (*sv).last_dir == direction::INGRESS
                && crate::maps::CONNS
                    .get(&conn_key(tgid, (*sv).last_fd as u32))
                    .is_some_and(|c| c.conn_id == (*sv).last_conn);
            if left_unanswered || left_a_read {
                revoke(tgid);
            }
            (*sv).last_conn = conn.conn_id;
            (*sv).last_fd = fd;
        }
        (*sv).last_dir = dir;
    }
}

/// Whether 8 bytes start an HTTP/1.x request line.
#[inline(always)]
fn request_start(b: &[u8; 8]) -> bool {
    matches!(
        b,
        [b'G', b'E', b'T', b' ', ..]
            | [b'P', b'O', b'S', b'T', b' ', ..]
            | [b'P', b'U', b'T', b' ', ..]
            | [b'H', b'E', b'A', b'D', b' ', ..]
            | [b'D', b'E', b'L', b'E', b'T', b'E', b' ', ..]
            | [b'P', b'A', b'T', b'C', b'H', b' ', ..]
            | [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' ']
    )
}

#[inline(always)]
fn first_bytes(ptr: u64) -> Option<[u8; 8]> {
    if ptr == 0 {
        return None;
    }
    // SAFETY: probe-read of user memory; failure handled.
    unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }.ok()
}

/// The first buffer of a write-family syscall at its entry.
#[inline(always)]
fn first_write_buffer(ctx: &TracePointContext, sys: u8) -> u64 {
    let arg1 = crate::conn::sys_arg(ctx, 1);
    match sys {
        syscall::WRITE | syscall::SENDTO => arg1,
        syscall::WRITEV => read_iovec(arg1, 0).map(|v| v.base).unwrap_or(0),
        syscall::SENDMSG => msg_iov(arg1)
            .and_then(|(iov, n)| if n > 0 { read_iovec(iov, 0) } else { None })
            .map(|v| v.base)
            .unwrap_or(0),
        _ => 0,
    }
}

/// Per-CPU room for the keys and values of the syscall side (the data programs' stack is
/// nearly full).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub key: ReceivedKey,
    pub serving: Serving,
    pub pending: Pending,
}

#[map]
static PROP_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Sends the identity the kernel gave a request (`IdentityEvent`), written in place in the
/// ring buffer. `ts_ns` 0: now.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn report(
    tgid: u32,
    tid: u32,
    fd: i32,
    conn_id: u64,
    ts_ns: u64,
    dir: u8,
    flags: u8,
    offset: u64,
    ctx: &Context,
    parent: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<IdentityEvent>(0) else {
        crate::maps::count(tracer_common::counter::RINGBUF_FULL, 1);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record, written field by field before it is submitted.
    unsafe {
        (*ev).header.kind = kind::IDENTITY;
        (*ev).header._pad = [0; 3];
        (*ev).header.tgid = tgid;
        (*ev).header.tid = tid;
        (*ev).header.fd = fd;
        (*ev).header.conn_id = conn_id;
        (*ev).header.ts_ns = if ts_ns != 0 {
            ts_ns
        } else {
            bpf_ktime_get_ns()
        };
        (*ev).direction = dir;
        (*ev).flags = flags;
        (*ev)._pad = [0; 6];
        (*ev).offset = offset;
        (*ev).trace_id = ctx.trace;
        (*ev).span_id = ctx.span;
        (*ev).parent_span_id = parent.to_be_bytes();
    }
    entry.submit(0);
    crate::maps::count(tracer_common::counter::EVENTS_SUBMITTED, 1);
}

/// sys_exit of a write-family syscall that sent nothing (an error, EAGAIN): a context waiting
/// for the segment of the request's first byte at the current position is dropped (a retry
/// decides again; a later connection on the same 4-tuple must not carry it).
#[inline(always)]
pub fn on_failed_send(tgid: u32, fd: i32, conn_id: u64) {
    if !enabled() || conn_id == 0 {
        return;
    }
    // SAFETY: values copied out.
    let Some(st) = (unsafe { PROP_STREAMS.get(&conn_key(tgid, fd as u32)) }).copied() else {
        return;
    };
    if st.conn_id != conn_id || st.flow_known == 0 {
        return;
    }
    // SAFETY: as above.
    if unsafe { PROP_PENDING.get(&st.flow) }.is_some_and(|p| p.offset == st.tx) {
        let _ = PROP_PENDING.remove(&st.flow);
    }
}

/// Whether a peer address (IPv4 in the first 4 bytes, v4-mapped already named as IPv4) is
/// loopback: such connections get no option (see `flow_of_sock`).
#[inline(always)]
fn loopback_peer(peer: *const [u8; 16]) -> bool {
    // SAFETY: `peer` points into a map value; unaligned reads of plain bytes.
    unsafe {
        let first = (*peer)[0];
        let hi = core::ptr::read_unaligned(peer as *const u64);
        let lo = core::ptr::read_unaligned((peer as *const u8).add(8) as *const u64);
        let v4_tail_zero = lo == 0 && (hi >> 32) == 0;
        (first == 127 && v4_tail_zero)
            || (hi == 0 && lo == u64::from_ne_bytes([0, 0, 0, 0, 0, 0, 0, 1]))
    }
}

/// sys_enter of a write-family syscall on a tracked CLIENT connection: when its bytes start an
/// HTTP/1 request, the request gets its identity here: a child of the SERVER request its thread
/// serves when that is exactly one (in a process whose threads serve one request at a time),
/// else a new trace. Its context waits for the segment starting with its first byte.
#[inline(always)]
pub fn client_send(ctx: &TracePointContext, sys: u8, fd: i32, conn: &ConnState, enter_ns: u64) {
    if !enabled() || conn.role != role::CLIENT || conn.tls != 0 {
        return;
    }
    let tgid = ctx.tgid();
    let Some(st) = PROP_STREAMS.get_ptr_mut(&conn_key(tgid, fd as u32)) else {
        return;
    };
    let Some(scratch) = PROP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `st` is this connection's entry (checked by id), `scratch` this CPU's.
    unsafe {
        if (*st).conn_id != conn.conn_id {
            return;
        }
        let Some(b) = first_bytes(first_write_buffer(ctx, sys)) else {
            return;
        };
        if !request_start(&b) {
            return;
        }
        if (*st).flow_known == 0 {
            // A non-blocking connect returned before its local port existed.
            let Some(ep) = SOCK_ENDPOINTS.get(&(*st).sk) else {
                return;
            };
            (*st).flow = flow_of(ep, (*st).flow.netns);
            (*st).flow_known = 1;
        }
        let tid = ctx.pid();
        if PROP_DEDICATED.get(&tgid).copied() != Some(DEDICATED_VERIFIED) {
            // A process not (yet) verified to serve one request per thread (not classified,
            // still warming up, a multiplexing runtime such as Go or Node, or revoked): no
            // decision here, userspace links it as it can.
            bump(counter::CLIENT_UNDECIDED);
            return;
        }
        let p = &mut (*scratch).pending;
        let mut parent = 0;
        let mut flags = IDENTITY_CLIENT;
        match PROP_SERVING.get(&tid) {
            Some(sv) if sv.open != 0 && sv.last_conn == sv.conn_id => {
                parent = u64::from_be_bytes(sv.ctx.span);
                p.ctx.trace = sv.ctx.trace;
                flags |= IDENTITY_HAS_PARENT;
                bump(counter::CLIENT_CONTEXTS);
            }
            _ => {
                // No request served by this thread: the request starts a trace (as userspace
                // would decide), and the receiving host links to it.
                p.ctx.trace[..8].copy_from_slice(&random_u64().to_be_bytes());
                p.ctx.trace[8..].copy_from_slice(&(random_u64() | 1).to_be_bytes());
                bump(counter::CLIENT_UNLINKED);
            }
        }
        p.ctx.span = new_span(parent).to_be_bytes();
        p.offset = (*st).tx;
        if (*st).offsets_unknown != 0 {
            // Which segment starts the request is unknown: no option (a wrong segment could
            // start another request).
            bump(counter::OFFSETS_UNKNOWN);
        } else if !loopback_peer(&(*st).flow.peer) {
            // Loopback connections carry no option (`flow_of_sock`): nothing to wait for.
            let _ = PROP_PENDING.insert(&(*st).flow, &*p, 0);
        }
        // Dated before the data record, whose causal time is the syscall's start.
        report(
            tgid,
            tid,
            fd,
            conn.conn_id,
            enter_ns.saturating_sub(1),
            direction::EGRESS,
            flags,
            p.offset,
            &p.ctx,
            parent,
        );
    }
}

/// sys_exit of a data syscall on a tracked connection, before its records: what the
/// propagation needs of the transfer (its first buffer by the syscall known at compile time,
/// each program keeping only its own path) waits in this CPU's buffer for the propagation
/// program (`prop_scan`), tail-called after the records (`after_records`): the stream
/// positions, the request's identity and its head's scan are decided there, so that their
/// branches and loops are verified once, not inside every data program.
#[inline(always)]
pub fn prepare_records<const SYS: u8>(
    args: &crate::maps::SyscallArgs,
    tgid: u32,
    tid: u32,
    conn_id: u64,
    dir: u8,
    total: u64,
) {
    if !enabled() {
        return;
    }
    let first = if args.gap_only != 0 {
        0
    } else {
        match SYS {
            syscall::READ | syscall::RECVFROM | syscall::WRITE | syscall::SENDTO => args.ptr,
            // A read's first buffer only when it holds all its bytes: the request's head is
            // scanned there (`prop_scan`), and past its end is other memory.
            syscall::READV | syscall::WRITEV => read_iovec(args.ptr, 0)
                .filter(|v| SYS == syscall::WRITEV || v.len >= total)
                .map(|v| v.base)
                .unwrap_or(0),
            syscall::RECVMSG | syscall::SENDMSG => msg_iov(args.ptr)
                .and_then(|(iov, n)| if n > 0 { read_iovec(iov, 0) } else { None })
                .filter(|v| SYS == syscall::SENDMSG || v.len >= total)
                .map(|v| v.base)
                .unwrap_or(0),
            _ => 0,
        }
    };
    crate::prop_scan::arm(
        tgid,
        tid,
        args.fd as i32,
        conn_id,
        dir,
        first,
        total,
        args.enter_ns,
    );
}

/// sys_exit of a data syscall, after its records (and the end of the HTTP/2 walker, which
/// sends them instead): the propagation program takes over.
#[inline(always)]
pub fn after_records(ctx: &TracePointContext) {
    if enabled() {
        crate::prop_scan::run(ctx);
    }
}

/// A transfer whose propagation work never ran (the propagation program was not in its
/// array, or its armed transfer was overwritten): the connection's stream positions are
/// unknown from now on.
#[inline(always)]
pub fn positions_lost(tgid: u32, fd: i32, conn_id: u64) {
    if let Some(st) = PROP_STREAMS.get_ptr_mut(&conn_key(tgid, fd as u32)) {
        // SAFETY: this connection's entry (checked by id); one flag set.
        unsafe {
            if (*st).conn_id == conn_id {
                (*st).offsets_unknown = 1;
            }
        }
    }
}

/// Bytes moved on `fd` of `tgid` by a transfer the kernel does not see (io_uring,
/// recvmmsg/sendmmsg): its stream offsets are unknown from now on, for the connection's life.
#[inline(always)]
pub fn on_unseen_bytes(tgid: u32, fd: u32) {
    if !enabled() {
        return;
    }
    if let Some(st) = PROP_STREAMS.get_ptr_mut(&conn_key(tgid, fd)) {
        // SAFETY: this connection's entry; one flag set.
        unsafe { (*st).offsets_unknown = 1 };
    }
}

/// The propagation program's work for the transfer armed by `prepare_records`: the
/// connection's state as the data program saw it, then `on_transfer`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn armed_transfer(
    tgid: u32,
    tid: u32,
    fd: i32,
    conn_id: u64,
    dir: u8,
    first: u64,
    total: u64,
    enter_ns: u64,
) {
    // SAFETY: value copied out.
    let Some(conn) = (unsafe { crate::maps::CONNS.get(&conn_key(tgid, fd as u32)) }).copied()
    else {
        return;
    };
    if conn.conn_id != conn_id {
        return;
    }
    on_transfer(tgid, tid, fd, &conn, dir, first, total, enter_ns);
}

/// sys_exit of a data syscall on a tracked connection (`total` bytes moved, `first` is the
/// first buffer): advances the stream position; a read starting an HTTP/1 request on a SERVER
/// connection gets its identity here (the context received for its offset, else a new trace)
/// and becomes the thread's serving request; a SERVER write starting a response ends it.
/// Runs in the propagation program, after the transfer's records: the identity is dated at
/// the read's start (`enter_ns`), before the read's data record.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn on_transfer(
    tgid: u32,
    tid: u32,
    fd: i32,
    conn: &ConnState,
    dir: u8,
    first: u64,
    total: u64,
    enter_ns: u64,
) {
    if !enabled() {
        return;
    }
    touch(tgid, tid, fd, conn, dir);
    let Some(st) = PROP_STREAMS.get_ptr_mut(&conn_key(tgid, fd as u32)) else {
        return;
    };
    // SAFETY: `st` is this connection's entry (checked by id); the serving entry is this
    // thread's; `scratch` is this CPU's.
    unsafe {
        if (*st).conn_id != conn.conn_id {
            return;
        }
        if dir == direction::EGRESS {
            (*st).tx += total;
            if (*st).role == role::SERVER
                && let Some(b) = first_bytes(first)
                && b[..7] == *b"HTTP/1."
            {
                answered(tgid, tid, st);
            }
            return;
        }
        let offset = (*st).rx;
        (*st).rx = offset + total;
        if (*st).role != role::SERVER || conn.tls != 0 {
            return;
        }
        let Some(b) = first_bytes(first) else {
            return;
        };
        if !request_start(&b) {
            return;
        }
        let Some(scratch) = PROP_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        let key = &mut (*scratch).key;
        key.flow = (*st).flow;
        // Received contexts are keyed by the absolute sequence number of their segment.
        if (*st).offsets_unknown != 0 {
            // The request's offset is unknown: a context stored under a guessed one could be
            // another request's (a hole, then a request whose own option was lost).
            bump(counter::OFFSETS_UNKNOWN);
        }
        let rcv_base = if (*st).flow_known != 0 && (*st).offsets_unknown == 0 {
            PROP_BASELINES.get(&(*st).flow).map(|b| b.rcv)
        } else {
            None
        };
        key.seq = rcv_base.map_or(0, |b| b.wrapping_add(offset as u32)) as u64;
        let sv = &mut (*scratch).serving;
        let mut flags = 0;
        let mut parent = 0;
        if (*st).open_tid != 0 {
            // A request read before the last one on this connection was answered (pipelined,
            // or read by two threads): which one a CLIENT request is for cannot be told.
            revoke(tgid);
        }
        (*st).open_tid = tid;
        match if rcv_base.is_some() {
            PROP_RECEIVED.get(&*key)
        } else {
            None
        } {
            Some(c) => {
                sv.ctx.trace = c.trace;
                parent = u64::from_be_bytes(c.span);
                flags = IDENTITY_HAS_PARENT | IDENTITY_FROM_OPTION;
                let _ = PROP_RECEIVED.remove(&*key);
                bump(counter::CONTEXTS_ADOPTED);
            }
            None => {
                sv.ctx.trace[..8].copy_from_slice(&random_u64().to_be_bytes());
                sv.ctx.trace[8..].copy_from_slice(&(random_u64() | 1).to_be_bytes());
            }
        }
        crate::prop_scan::adopt(first, total, &mut flags, &mut parent, &mut sv.ctx);
        finish_server(
            tgid,
            tid,
            fd,
            conn.conn_id,
            offset,
            enter_ns,
            flags,
            parent,
            &mut sv.ctx,
        );
    }
}

/// The end of a SERVER request's identity decision (its trace and parent in `ctx`, `flags`,
/// `parent`): a new span id, the thread's serving request, and the identity record (dated
/// `ts_ns`: the read's start, before the read's data record, which is sent first).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn finish_server(
    tgid: u32,
    tid: u32,
    fd: i32,
    conn_id: u64,
    offset: u64,
    ts_ns: u64,
    flags: u8,
    parent: u64,
    ctx: *mut Context,
) {
    // SAFETY: `ctx` is in this CPU's scratch; the serving entry is this thread's.
    unsafe {
        (*ctx).span = new_span(parent).to_be_bytes();
        // `touch` made the thread's entry (and revoked the process if it left a request).
        if let Some(cur) = PROP_SERVING.get_ptr_mut(&tid) {
            (*cur).ctx = *ctx;
            (*cur).conn_id = conn_id;
            (*cur).open = 1;
        }
        report(
            tgid,
            tid,
            fd,
            conn_id,
            ts_ns,
            direction::INGRESS,
            flags,
            offset,
            &*ctx,
            parent,
        );
    }
}

/// A response starts on SERVER connection `st`, written by `tid`: the connection's request is
/// answered. Written by the thread that read it: one more request the process served on one
/// thread (a candidate is verified after enough of them); by another thread: the process
/// answers on other threads than the reading one, and is revoked.
#[inline(always)]
unsafe fn answered(tgid: u32, tid: u32, st: *mut Stream) {
    // SAFETY: the caller's stream entry.
    let reader = unsafe { (*st).open_tid };
    if reader == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*st).open_tid = 0 };
    if reader != tid {
        revoke(tgid);
        return;
    }
    if let Some(sv) = PROP_SERVING.get_ptr_mut(&tid) {
        // SAFETY: this thread's entry.
        unsafe {
            if (*sv).conn_id == (*st).conn_id {
                (*sv).open = 0;
            }
        }
    }
    if let Some(mark) = PROP_DEDICATED.get_ptr_mut(&tgid) {
        // SAFETY: this process's entry.
        unsafe {
            if *mark >= DEDICATED_CANDIDATE && *mark < DEDICATED_VERIFIED {
                *mark += 1;
            }
        }
    }
}

/// The connection of a `sock_ops` callback, named as the syscall side names it.
#[inline(always)]
fn flow_of_sock(ctx: &SockOpsContext) -> Option<FlowKey> {
    let mut key = FlowKey {
        local: [0; 16],
        peer: [0; 16],
        local_port: ctx.local_port() as u16,
        peer_port: 0,
        netns: sock_netns(ctx),
    };
    let rp = ctx.remote_port();
    // Network byte order; the upper half on kernels that shift it there.
    let raw = if rp > 0xffff {
        (rp >> 16) as u16
    } else {
        rp as u16
    };
    key.peer_port = u16::from_be(raw);
    // Loopback connections never cross hosts (same-host pairing links them), and their
    // 4-tuples repeat across network namespaces (two pods' sidecars on 127.0.0.1): a context
    // stored under one could be adopted in another namespace. None: no option, no baseline.
    let loopback_v4 = |addr_be: u32| u32::from_be(addr_be) >> 24 == 127;
    match ctx.family() {
        2 => {
            if loopback_v4(ctx.remote_ip4()) {
                return None;
            }
            key.local[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
            key.peer[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
        }
        10 => {
            let (l, r) = (ctx.local_ip6(), ctx.remote_ip6());
            // A v4-mapped address is named as IPv4 (as `conn::normalize` does).
            let mapped = |a: &[u32; 4]| a[0] == 0 && a[1] == 0 && u32::from_be(a[2]) == 0xffff;
            let loopback_v6 = r[0] == 0 && r[1] == 0 && r[2] == 0 && u32::from_be(r[3]) == 1;
            if loopback_v6 || (mapped(&r) && loopback_v4(r[3])) {
                return None;
            }
            if mapped(&l) && mapped(&r) {
                key.local[..4].copy_from_slice(&l[3].to_ne_bytes());
                key.peer[..4].copy_from_slice(&r[3].to_ne_bytes());
            } else {
                for i in 0..4 {
                    key.local[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
                    key.peer[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
                }
            }
        }
        _ => return None,
    }
    Some(key)
}

/// The inode of the network namespace of a `sock_ops` callback's socket (0 when the kernel's
/// BTF did not say where it is, as on the syscall side). The socket's address is the first
/// field of the kernel's context (`struct bpf_sock_ops_kern`, `sk` first since 4.13): read as a
/// number, since `ctx->sk` is a pointer the verifier allows no arithmetic on.
#[inline(always)]
fn sock_netns(ctx: &SockOpsContext) -> u32 {
    let off = crate::maps::netns_offsets();
    if off.known & tracer_common::netns_known::SOCK == 0 {
        return 0;
    }
    // SAFETY: probe-reads of kernel memory; failures handled.
    unsafe {
        let Ok(sk) = bpf_probe_read_kernel(ctx.ops as *const u64) else {
            return 0;
        };
        if sk == 0 {
            return 0;
        }
        let Ok(net) = bpf_probe_read_kernel((sk + u64::from(off.sock_net)) as *const u64) else {
            return 0;
        };
        bpf_probe_read_kernel((net + u64::from(off.net_inum)) as *const u32).unwrap_or(0)
    }
}

/// The sequence number of the segment in `skb_data` (header-option callbacks only).
#[inline(always)]
fn segment_seq(ctx: &SockOpsContext) -> Option<u32> {
    // SAFETY: ctx fields the kernel fills for header-option callbacks; packet access is
    // bounds-checked against skb_data_end.
    unsafe {
        let data = (*ctx.ops).__bindgen_anon_3.skb_data as usize;
        let end = (*ctx.ops).__bindgen_anon_4.skb_data_end as usize;
        if data + 8 > end {
            return None;
        }
        Some(u32::from_be(*((data + 4) as *const u32)))
    }
}

/// The `sock_ops` program (cgroup v2): stream baselines at establishment, then the option on
/// the segment starting with a pending CLIENT request, and received options stored by offset.
#[inline(always)]
pub fn sock_ops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        let Some(flow) = flow_of_sock(ctx) else {
            return;
        };
        // SAFETY: plain ctx reads.
        let base = unsafe {
            Baseline {
                snd: (*ctx.ops).snd_nxt,
                rcv: (*ctx.ops).rcv_nxt,
                last_span: [0; 8],
                last_seq: 0,
                _pad: 0,
            }
        };
        let _ = PROP_BASELINES.insert(&flow, &base, 0);
        // A context an earlier connection of this 4-tuple left waiting (its request never went
        // out) is not this connection's.
        let _ = PROP_PENDING.remove(&flow);
        let flags = ctx.cb_flags()
            | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG
            | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
        return;
    }
    if op == BPF_SOCK_OPS_HDR_OPT_LEN_CB {
        let Some(flow) = flow_of_sock(ctx) else {
            return;
        };
        // SAFETY: value only tested.
        if unsafe { PROP_PENDING.get(&flow) }.is_none() {
            return;
        }
        // SAFETY: helper on this program's context.
        let err = unsafe { bpf_reserve_hdr_opt(ctx.ops, OPTION_LEN as u32, 0) };
        if err != 0 && ctx.arg(0) & WRITE_HDR_TCP_CURRENT_MSS == 0 {
            bump(counter::NO_SPACE);
        }
        return;
    }
    if op == BPF_SOCK_OPS_WRITE_HDR_OPT_CB {
        let Some(flow) = flow_of_sock(ctx) else {
            return;
        };
        // SAFETY: values copied out.
        let Some(p) = (unsafe { PROP_PENDING.get(&flow) }).copied() else {
            return;
        };
        let Some(base) = (unsafe { PROP_BASELINES.get(&flow) }).copied() else {
            return;
        };
        let Some(seq) = segment_seq(ctx) else {
            return;
        };
        let offset = seq.wrapping_sub(base.snd);
        let want = p.offset as u32;
        if offset == want {
            let mut opt = [0u8; OPTION_LEN as usize];
            opt[0] = OPTION_KIND;
            opt[1] = OPTION_LEN;
            opt[2..4].copy_from_slice(&EXID_SAMPLED.to_be_bytes());
            opt[4..20].copy_from_slice(&p.ctx.trace);
            opt[20..28].copy_from_slice(&p.ctx.span);
            // SAFETY: helper on this program's context with a stack buffer of its length.
            let err = unsafe {
                bpf_store_hdr_opt(ctx.ops, opt.as_ptr() as *const _, OPTION_LEN as u32, 0)
            };
            if err == 0 {
                bump(counter::OPTIONS_WRITTEN);
            } else {
                bump(counter::NO_SPACE);
            }
            let _ = PROP_PENDING.remove(&flow);
        } else if (offset.wrapping_sub(want) as i32) > 0 {
            // A segment past the request's first byte: that byte went out without the option.
            bump(counter::SEGMENT_MISSED);
            let _ = PROP_PENDING.remove(&flow);
        }
        return;
    }
    if op == BPF_SOCK_OPS_PARSE_HDR_OPT_CB {
        let mut opt = [0u8; OPTION_LEN as usize];
        opt[0] = OPTION_KIND;
        // Search by kind and 2-byte ExID (the kind-length covers kind, length and ExID).
        opt[1] = 4;
        opt[2..4].copy_from_slice(&EXID_SAMPLED.to_be_bytes());
        // SAFETY: helper on this program's context with a stack buffer of its length.
        let n =
            unsafe { bpf_load_hdr_opt(ctx.ops, opt.as_mut_ptr() as *mut _, OPTION_LEN as u32, 0) };
        if n < 0 {
            // Not ours (ENOMSG) or longer than ours (ENOSPC): ignored.
            if n != -42 {
                bump(counter::MALFORMED);
            }
            return;
        }
        let mut trace = [0u8; 16];
        trace.copy_from_slice(&opt[4..20]);
        let mut span = [0u8; 8];
        span.copy_from_slice(&opt[20..28]);
        if n != OPTION_LEN as i64 || opt[1] != OPTION_LEN || trace == [0; 16] || span == [0; 8] {
            bump(counter::MALFORMED);
            return;
        }
        let Some(flow) = flow_of_sock(ctx) else {
            return;
        };
        let Some(base) = PROP_BASELINES.get_ptr_mut(&flow) else {
            return;
        };
        let Some(seq) = segment_seq(ctx) else {
            return;
        };
        let mut key = ReceivedKey { flow, seq: 0 };
        // SAFETY: this connection's entry.
        unsafe {
            if (*base).last_span == span {
                // A copy of the option on a later segment of the same request (TSO/GSO), or a
                // retransmission: the first one is stored already.
                return;
            }
            if (*base).last_span != [0; 8] {
                // The previous request's context, if still unclaimed, is stale now (its request
                // came before this one): it must not wait for a request whose offset the
                // syscall side may miscount after a hole in what it saw of the stream.
                key.seq = (*base).last_seq as u64;
                let _ = PROP_RECEIVED.remove(&key);
            }
            (*base).last_span = span;
            (*base).last_seq = seq;
        }
        key.seq = seq as u64;
        let _ = PROP_RECEIVED.insert(&key, &Context { trace, span }, 0);
        bump(counter::OPTIONS_RECEIVED);
    }
}
