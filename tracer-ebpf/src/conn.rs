//! Connection lifecycle: accept/accept4 (SERVER), connect (CLIENT), close, and the TCP state
//! tracepoint that supplies each connection's local and peer endpoints.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::bpf_get_current_task,
    },
    programs::TracePointContext,
};
use tracer_common::{
    CONN_OPEN_LEN, ConnCloseEvent, ConnOpenEvent, ConnState, EventHeader, MAX_INFLIGHT_PER_PROCESS,
    conn_key, counter, kind, netns_known, role, sock_known,
};

use crate::filter::{mirrors_agent, pid_traced, ports_traced};
use crate::maps::{
    ACCEPTED, CANDIDATES, CONNECTING, CONNS, EVENTS, Endpoints, GENERATION_EPOCH, GENERATIONS,
    INFLIGHT, INFLIGHT_PER_PROCESS, OPEN_SCRATCH, PeerKey, SOCK_ENDPOINTS, SyscallArgs, count,
    events_output_flags, next_conn_id, sock_offset,
};

const AF_INET: u16 = tracer_common::family::INET;
const AF_INET6: u16 = tracer_common::family::INET6;
const EINPROGRESS: i64 = 115;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// Argument kinds of the lifecycle syscalls in the argument tables (beside the data syscalls').
pub const ARG_ACCEPT: u8 = tracer_common::syscall::ACCEPT;
pub const ARG_CONNECT: u8 = tracer_common::syscall::CONNECT;

/// Offsets in the syscall tracepoint records (stable ABI: args start after id).
pub const SYS_ARG0: usize = 16;
pub const SYS_RET: usize = 16;

#[inline(always)]
pub fn sys_arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall enter records hold six u64 arguments from offset 16.
    unsafe { ctx.read_at::<u64>(SYS_ARG0 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
pub fn sys_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: syscall exit records hold the i64 return value at offset 16.
    unsafe { ctx.read_at::<i64>(SYS_RET) }.unwrap_or(-1)
}

/// IPv4 addresses are kept in the first 4 bytes; a v4-mapped IPv6 address becomes IPv4.
#[inline(always)]
fn normalize(family: u16, v4: [u8; 4], v6: [u8; 16]) -> (u16, [u8; 16]) {
    let mut out = [0u8; 16];
    if family == AF_INET {
        out[..4].copy_from_slice(&v4);
        return (AF_INET, out);
    }
    let mapped = v6[..10].iter().all(|b| *b == 0) && v6[10] == 0xff && v6[11] == 0xff;
    if mapped {
        out[..4].copy_from_slice(&v6[12..16]);
        return (AF_INET, out);
    }
    (AF_INET6, v6)
}

/// Reads a user sockaddr: (family, address, port in host order). Family 0 when unreadable.
#[inline(always)]
fn read_sockaddr(ptr: u64) -> (u16, [u8; 16], u16) {
    if ptr == 0 {
        return (0, [0; 16], 0);
    }
    // SAFETY: probe-read of user memory; failure is handled.
    let Ok(raw) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 24]) }) else {
        // A sockaddr_in is only 16 bytes and may sit at the end of a mapping.
        // SAFETY: as above.
        let Ok(short) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }) else {
            return (0, [0; 16], 0);
        };
        let family = u16::from_ne_bytes([short[0], short[1]]);
        if family != AF_INET {
            return (0, [0; 16], 0);
        }
        let port = u16::from_be_bytes([short[2], short[3]]);
        let (fam, addr) = normalize(AF_INET, [short[4], short[5], short[6], short[7]], [0; 16]);
        return (fam, addr, port);
    };
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    if family == AF_INET {
        let (fam, addr) = normalize(AF_INET, [raw[4], raw[5], raw[6], raw[7]], [0; 16]);
        return (fam, addr, port);
    }
    if family == AF_INET6 {
        let mut v6 = [0u8; 16];
        v6.copy_from_slice(&raw[8..24]);
        let (fam, addr) = normalize(AF_INET6, [0; 4], v6);
        return (fam, addr, port);
    }
    (family, [0; 16], 0)
}

#[inline(always)]
pub fn header(kind_: u8, tgid: u32, tid: u32, fd: i32, conn_id: u64) -> EventHeader {
    EventHeader {
        kind: kind_,
        _pad: [0; 3],
        tgid,
        tid,
        fd,
        conn_id,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Reads the kernel value at `offset` in the object at `base`; None when `base` is null or the
/// read fails.
#[inline(always)]
fn kernel_read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: probe-read of kernel memory; failure is handled.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The inode of the network namespace of socket `sk` (a `struct sock *`, 0 when unknown), else
/// of the current thread (process context); 0 when the kernel's BTF did not say where it is.
/// The socket's is the connection's even if the thread has since moved (setns).
/// Not inlined: its temporaries in the data programs' own frames took readv's, writev's and
/// recvmsg's exits over 5.10's 512-byte combined stack; a call has a frame of its own.
#[inline(never)]
pub fn netns_of(sk: u64) -> u32 {
    let off = crate::maps::netns_offsets();
    if sk != 0
        && off.known & netns_known::SOCK != 0
        && let Some(net) = kernel_read::<u64>(sk, off.sock_net)
        && let Some(inum) = kernel_read::<u32>(net, off.net_inum)
        && inum != 0
    {
        return inum;
    }
    if off.known & netns_known::TASK == 0 {
        return 0;
    }
    // SAFETY: plain helper call (process context: the current task is the opening thread).
    let task = unsafe { bpf_get_current_task() };
    kernel_read::<u64>(task, off.task_nsproxy)
        .and_then(|nsproxy| kernel_read::<u64>(nsproxy, off.nsproxy_net))
        .and_then(|net| kernel_read::<u32>(net, off.net_inum))
        .unwrap_or(0)
}

/// Sends a connection-open record for `state`, built on the stack (the data programs: a
/// per-CPU slot's null check there multiplied the states their verification explores).
#[inline(always)]
pub fn announce(tgid: u32, tid: u32, fd: i32, ts_ns: u64, state: &ConnState, ep: &Endpoints) {
    let mut hdr = header(kind::CONN_OPEN, tgid, tid, fd, state.conn_id);
    if ts_ns != 0 {
        hdr.ts_ns = ts_ns;
    }
    let mut ev = ConnOpenEvent {
        header: hdr,
        role: state.role,
        _pad: 0,
        family: ep.family,
        local_port: ep.local_port,
        peer_port: ep.peer_port,
        local_addr: ep.local_addr,
        peer_addr: ep.peer_addr,
        comm: [0; 16],
        // 0 (userspace reads /proc): this is the data programs' path (a connection first seen
        // by its bytes, or the second announcement of one whose open record, with its
        // namespace, came from accept or connect). The namespace read is a call, and its frame
        // on top of theirs passed 6.1's 512-byte combined stack (sys_enter_write: 496 + 32).
        netns: 0,
        _pad2: 0,
    };
    // Always process context (accept, connect, a data syscall): the opening thread. Written in
    // place: a copy through a temporary took the data programs' frames past 6.1's combined
    // stack limit (512 bytes with the call to `memset` the compiler emits).
    // SAFETY: the helper writes at most 16 bytes into the 16-byte field.
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(ev.comm.as_mut_ptr() as *mut _, 16);
    }
    const _: () = assert!(CONN_OPEN_LEN == core::mem::size_of::<ConnOpenEvent>());
    submit_open(&ev);
}

/// [`announce`], the record built in per-CPU scratch (`OPEN_SCRATCH`): for accept's and
/// connect's exits, which on the stack went over the 512-byte combined stack limit of older
/// verifiers (5.10: "combined stack size of 3 calls is 544").
#[inline(always)]
fn announce_from_scratch(tgid: u32, tid: u32, fd: i32, state: &ConnState, ep: &Endpoints) {
    let Some(ev) = OPEN_SCRATCH.get_ptr_mut(0) else {
        count(counter::SCRATCH_UNAVAILABLE, 1);
        return;
    };
    let hdr = header(kind::CONN_OPEN, tgid, tid, fd, state.conn_id);
    // SAFETY: `ev` is this CPU's scratch slot; every field is written before it is sent.
    unsafe {
        (*ev).header = hdr;
        (*ev).role = state.role;
        (*ev)._pad = 0;
        (*ev).family = ep.family;
        (*ev).local_port = ep.local_port;
        (*ev).peer_port = ep.peer_port;
        (*ev).local_addr = ep.local_addr;
        (*ev).peer_addr = ep.peer_addr;
        (*ev).comm = aya_ebpf::helpers::bpf_get_current_comm().unwrap_or_default();
        (*ev).netns = netns_of(state.sk);
        (*ev)._pad2 = 0;
        submit_open(&*ev);
    }
}

#[inline(always)]
fn submit_open(ev: &ConnOpenEvent) {
    match EVENTS.output::<ConnOpenEvent>(ev, events_output_flags(true, CONN_OPEN_LEN as u64)) {
        Ok(()) => count(counter::EVENTS_SUBMITTED, 1),
        Err(_) => count(counter::RINGBUF_FULL, 1),
    }
}

/// Inserts a connection entry, counting new keys (an existing key is an fd reused without a
/// close the kernel saw; it is overwritten). False when the table refused it.
#[inline(always)]
fn insert_conn(key: u64, state: &ConnState) -> bool {
    const BPF_NOEXIST: u64 = 1;
    if CONNS.insert(&key, state, BPF_NOEXIST).is_ok() {
        count(counter::CONNS_INSERTED, 1);
        return true;
    }
    if CONNS.insert(&key, state, 0).is_ok() {
        return true;
    }
    count(counter::CONN_TABLE_FULL, 1);
    false
}

/// Removes a connection entry, counting it when it was there.
#[inline(always)]
pub fn remove_conn(key: u64) {
    if CONNS.remove(&key).is_ok() {
        count(counter::CONNS_REMOVED, 1);
    }
}

/// The connection entry of `fd` in `tgid`, unless it is stale: made before the process's
/// current generation (the pid now belongs to a newer process, or the process exec'd and the
/// fd was closed on exec), or the process has no generation any more (evicted: nothing says
/// the entry is still the process's; fail closed). A stale entry is removed (counted) and
/// reported as absent.
///
/// An entry found live is tagged with the generation epoch; while the epoch stays the same (no
/// process born or exec'd, no generation evicted anywhere) it is live without the lookup.
/// Every generation change bumps the epoch before the process it concerns makes a syscall (the
/// birth's and the exec's tracepoints run first), so a stale entry is never taken as live.
#[inline(always)]
pub fn live_conn(tgid: u32, fd: u32) -> Option<ConnState> {
    let key = conn_key(tgid, fd);
    let slot = CONNS.get_ptr_mut(&key)?;
    // SAFETY: value copied out.
    let state = unsafe { *slot };
    let epoch = generation_epoch();
    if epoch != 0 && state.generation_checked == epoch {
        return Some(state);
    }
    // SAFETY: value copied out.
    let generation = unsafe { GENERATIONS.get(&tgid) }.copied();
    if generation.is_none() {
        count(counter::GENERATIONS_MISSING, 1);
    }
    if generation.is_none_or(|g| state.opened_ns < g) {
        remove_conn(key);
        count(counter::CONNS_STALE, 1);
        return None;
    }
    if epoch != 0 {
        // SAFETY: the slot is a connection entry; only the tag changes. Should the entry have
        // been replaced meanwhile, its replacement was made now, live at this epoch too.
        unsafe { (*slot).generation_checked = epoch };
    }
    Some(state)
}

/// The current generation epoch as `ConnState::generation_checked` holds it (plus one, so 0
/// never matches); 0 when unreadable.
#[inline(always)]
fn generation_epoch() -> u32 {
    GENERATION_EPOCH
        .get(0)
        .map(|e| (*e as u32).wrapping_add(1))
        .unwrap_or(0)
}

/// A generation changed: entries found live before must be checked again.
#[inline(always)]
fn bump_generation_epoch() {
    if let Some(e) = GENERATION_EPOCH.get_ptr_mut(0) {
        add_inflight(e, 1);
    }
}

/// A new generation of process `tgid` (born, or exec'd): its older connection entries are stale.
/// When the new value cannot be stored the old one is removed, so the entries still read as
/// stale (fail closed, counted).
#[inline(always)]
pub fn renew_generation(tgid: u32) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if GENERATIONS.insert(&tgid, &now, 0).is_err() {
        let _ = GENERATIONS.remove(&tgid);
        count(counter::GENERATIONS_MISSING, 1);
    }
    bump_generation_epoch();
}

/// The opening time of an entry made now for process `tgid`, making sure the process has a
/// generation not newer than it (a process born before the probes attached, or whose
/// generation was evicted, gets one now: its older entries become stale, never live again).
#[inline(always)]
fn opening_now(tgid: u32) -> u64 {
    const BPF_NOEXIST: u64 = 1;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: read-only lookup.
    if unsafe { GENERATIONS.get(&tgid) }.is_none() {
        // An insert may evict another process's generation (LRU).
        bump_generation_epoch();
        if GENERATIONS.insert(&tgid, &now, BPF_NOEXIST).is_err()
            // SAFETY: read-only lookup.
            && unsafe { GENERATIONS.get(&tgid) }.is_none()
        {
            count(counter::GENERATIONS_MISSING, 1);
        }
    }
    now
}

/// sched_process_exec: fds were closed on exec; what the table knew of this process is stale.
pub fn on_exec(ctx: &TracePointContext) {
    renew_generation(ctx.tgid());
}

/// Marks a tracked connection as having lost records: its next data record says so, and
/// userspace does not pair across the hole.
#[inline(always)]
pub fn mark_lost(tgid: u32, fd: u32) {
    mark_lost_as(tgid, fd, 1);
}

/// Sets the loss flag of a tracked connection to `how` (1: the next record says so;
/// `LOST_UNTIL_CLOSE`: every record does); never lowers it.
#[inline(always)]
pub fn mark_lost_as(tgid: u32, fd: u32, how: u8) {
    if let Some(slot) = CONNS.get_ptr_mut(&conn_key(tgid, fd)) {
        // SAFETY: the slot is this connection's entry; only the flag changes.
        unsafe {
            if (*slot).lost < how {
                (*slot).lost = how;
            }
            // Bytes went by unseen: where HTTP/2 frames start is unknown until a resync. The
            // flags belong to the directions' own syscalls: a hole is a new count, which each
            // framed direction notices (and counts) on its next syscall.
            let framed = tracer_common::h2::FRAMED;
            if ((*slot).h2_flags[0] | (*slot).h2_flags[1]) & framed != 0 {
                (*slot).h2_holes = (*slot).h2_holes.wrapping_add(1);
            }
        }
    }
}

/// Starts tracking `fd` of `tgid` as a connection with `role_`; reports it to userspace (the
/// record built in per-CPU scratch when `from_scratch`, see [`announce_from_scratch`]).
#[inline(always)]
pub fn track(
    tgid: u32,
    tid: u32,
    fd: i32,
    role_: u8,
    sk: u64,
    ep: &Endpoints,
    from_scratch: bool,
) -> Option<ConnState> {
    let state = ConnState {
        conn_id: next_conn_id(),
        sk,
        role: role_,
        endpoints_sent: u8::from(ep.local_port != 0 && ep.peer_port != 0),
        lost: 0,
        tls: 0,
        generation_checked: 0,
        opened_ns: opening_now(tgid),
        h2: [tracer_common::H2Cursor::default(); 2],
        h2_flags: [0; 2],
        h2_holes: 0,
        h2_holes_seen: [0; 2],
        _pad2: [0; 3],
    };
    if !insert_conn(conn_key(tgid, fd as u32), &state) {
        return None;
    }
    crate::prop::on_track(tgid, fd, &state, ep);
    if from_scratch {
        announce_from_scratch(tgid, tid, fd, &state, ep);
    } else {
        announce(tgid, tid, fd, 0, &state, ep);
    }
    Some(state)
}

/// Remembers a connection the port filter excludes, so sniffing never adopts it.
#[inline(always)]
fn ignore(tgid: u32, fd: i32) {
    let state = ConnState {
        conn_id: 0,
        sk: 0,
        role: role::IGNORED,
        endpoints_sent: 1,
        lost: 0,
        tls: 0,
        generation_checked: 0,
        opened_ns: opening_now(tgid),
        h2: [tracer_common::H2Cursor::default(); 2],
        h2_flags: [0; 2],
        h2_holes: 0,
        h2_holes_seen: [0; 2],
        _pad2: [0; 3],
    };
    insert_conn(conn_key(tgid, fd as u32), &state);
}

/// Keeps the arguments of a data syscall on a tracked connection for its exit. A thread's entry
/// stays from its first such syscall until the thread exits (`on_task_exit`) and is rewritten in
/// place: one lookup per syscall, not an insert and a delete. A new thread's entry is refused when
/// the table is full, or when its process already holds its quota of entries: the connection's
/// stream then gets a hole (marked lost, the miss counted).
#[inline(always)]
pub fn save_args(ctx: &TracePointContext, args: &SyscallArgs) {
    let id = ctx.pid_tgid_raw();
    if let Some(slot) = INFLIGHT.get_ptr_mut(&id) {
        // SAFETY: this thread's own entry: only this thread writes it (and its exit removes it).
        unsafe { *slot = *args };
        return;
    }
    let tgid = ctx.tgid();
    let Some(held) = process_inflight(tgid) else {
        count(counter::ARGS_PROCESS_QUOTA, 1);
        mark_lost(tgid, args.fd as u32);
        return;
    };
    // SAFETY: `held` points at this process's count (an LRU slot: at worst a recycled one,
    // which only makes the quota lenient).
    if unsafe { *held } >= MAX_INFLIGHT_PER_PROCESS {
        count(counter::ARGS_PROCESS_QUOTA, 1);
        mark_lost(tgid, args.fd as u32);
        return;
    }
    const BPF_NOEXIST: u64 = 1;
    if INFLIGHT.insert(&id, args, BPF_NOEXIST).is_ok() {
        add_inflight(held, 1);
    } else {
        count(counter::ARGS_TABLE_FULL, 1);
        mark_lost(tgid, args.fd as u32);
    }
}

/// sched_process_exit (every task): the thread's entry in `INFLIGHT` goes with it.
#[inline(always)]
pub fn on_task_exit(ctx: &TracePointContext) {
    let id = ctx.pid_tgid_raw();
    if INFLIGHT.remove(&id).is_ok()
        && let Some(held) = INFLIGHT_PER_PROCESS.get_ptr_mut(&((id >> 32) as u32))
        // SAFETY: as in `save_args`.
        && unsafe { *held } > 0
    {
        add_inflight(held, -1);
    }
}

/// The count of `tgid`'s tracked in-flight syscalls (made when missing); None when the count
/// cannot be stored (the quota then refuses: fail closed, counted by the caller).
#[inline(always)]
fn process_inflight(tgid: u32) -> Option<*mut i64> {
    const BPF_NOEXIST: u64 = 1;
    if let Some(held) = INFLIGHT_PER_PROCESS.get_ptr_mut(&tgid) {
        return Some(held);
    }
    let _ = INFLIGHT_PER_PROCESS.insert(&tgid, &0, BPF_NOEXIST);
    INFLIGHT_PER_PROCESS.get_ptr_mut(&tgid)
}

/// Atomically adds `by` to a per-process count: BPF_ATOMIC add without fetch (BPF_XADD), which
/// every kernel's verifier accepts (core has no atomic read-modify-write for this target).
#[inline(always)]
fn add_inflight(held: *mut i64, by: i64) {
    // SAFETY: `held` is a valid, aligned map value slot for as long as this program runs; the
    // instruction only adds to it.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) held,
            v = in(reg) by,
            options(nostack),
        );
    }
}

/// Keeps the arguments of a syscall that may not concern a connection (accept, connect, a read
/// or write on an untracked fd): in the thread's `INFLIGHT` entry when it has one (rewritten in
/// place, as `save_args` does), else in the LRU candidate table. `args.enter_ns` must not be 0
/// (0 marks an entry taken).
#[inline(always)]
pub fn save_candidate(ctx: &TracePointContext, args: &SyscallArgs) {
    let id = ctx.pid_tgid_raw();
    if let Some(slot) = INFLIGHT.get_ptr_mut(&id) {
        // SAFETY: this thread's own entry: only this thread writes it (and its exit removes it).
        unsafe { *slot = *args };
        return;
    }
    let _ = CANDIDATES.insert(&id, args, 0);
}

/// Takes the arguments sys_enter stored for this thread's syscall, once; `kind` `ARG_NONE`
/// when none were. A thread with an entry in `INFLIGHT` has there whatever its sys_enter kept
/// (`save_args`, `save_candidate`), and a taken entry means nothing was kept: one lookup. Only a
/// thread without one looks in the candidate table, and only when `candidates`.
///
/// Not an `Option`: every field is written on every path (with an `Option`, LLVM read the
/// absent value's undefined `kind` on the `None` path, which the verifier refuses).
#[inline(always)]
pub fn take_args(id: u64, candidates: bool) -> SyscallArgs {
    if let Some(slot) = INFLIGHT.get_ptr_mut(&id) {
        // SAFETY: this thread's own entry, copied out before it is marked.
        unsafe {
            let args = *slot;
            if args.enter_ns == 0 {
                return NO_ARGS;
            }
            (*slot).enter_ns = 0;
            return args;
        }
    }
    if candidates {
        take_candidate_args(id).unwrap_or(NO_ARGS)
    } else {
        NO_ARGS
    }
}

/// `take_args` found nothing.
pub const ARG_NONE: u8 = 0;
const NO_ARGS: SyscallArgs = SyscallArgs {
    fd: -1,
    ptr: 0,
    count: 0,
    enter_ns: 0,
    kind: ARG_NONE,
    gap_only: 0,
    egress: 0,
    _pad: [0; 5],
    conn_id: 0,
};

/// Takes (and removes) the arguments sys_enter stored for this thread in the candidate table.
#[inline(always)]
fn take_candidate_args(id: u64) -> Option<SyscallArgs> {
    // SAFETY: the value is copied out before removal.
    let args = unsafe { CANDIDATES.get(&id) }.copied()?;
    let _ = CANDIDATES.remove(&id);
    Some(args)
}

pub trait PidTgid {
    fn pid_tgid_raw(&self) -> u64;
}

impl PidTgid for TracePointContext {
    #[inline(always)]
    fn pid_tgid_raw(&self) -> u64 {
        aya_ebpf::helpers::bpf_get_current_pid_tgid()
    }
}

/// sys_enter of accept/accept4 (`ARG_ACCEPT`) and connect (`ARG_CONNECT`): both keep the fd and
/// the sockaddr pointer for the exit.
pub fn enter_lifecycle(ctx: &TracePointContext, kind: u8) {
    if !pid_traced(ctx.tgid()) {
        return;
    }
    let args = SyscallArgs {
        fd: sys_arg(ctx, 0) as i64,
        ptr: sys_arg(ctx, 1),
        count: 0,
        // SAFETY: plain helper call. Non-zero: an entry not taken yet (see `take_args`).
        enter_ns: unsafe { bpf_ktime_get_ns() },
        kind,
        gap_only: 0,
        egress: 0,
        _pad: [0; 5],
        conn_id: 0,
    };
    save_candidate(ctx, &args);
}

pub fn exit_accept(ctx: &TracePointContext) {
    let fd = sys_ret(ctx);
    let args = take_args(ctx.pid_tgid_raw(), true);
    if fd < 0 {
        return;
    }
    if args.kind != ARG_ACCEPT {
        // A thread already blocked in accept() when the probes attached: no saved arguments,
        // so no peer address.
        if !pid_traced(ctx.tgid()) {
            return;
        }
        count(counter::LIFECYCLE_ARGS_MISSING, 1);
        aya_log_ebpf::debug!(
            ctx,
            "accept of fd {} in pid {} without its arguments: endpoints read from its socket",
            fd,
            ctx.tgid()
        );
    }
    if args.kind != ARG_ACCEPT || args.ptr == 0 {
        // Also accept4(fd, NULL, NULL, flags), as libuv (Node.js) calls it. One call site:
        // inlined twice, its tracking doubled this function's code.
        accept_without_address(ctx.tgid(), ctx.pid(), fd as i32);
        return;
    }
    let (family, peer_addr, peer_port) = read_sockaddr(args.ptr);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let mut ep = Endpoints {
        family,
        local_port: 0,
        peer_port,
        _pad: 0,
        local_addr: [0; 16],
        peer_addr,
    };
    let key = PeerKey {
        addr: peer_addr,
        port: peer_port,
        _pad: [0; 6],
    };
    // SAFETY: value copied out before removal.
    if let Some(known) = unsafe { ACCEPTED.get(&key) }.copied() {
        ep.local_port = known.local_port;
        ep.local_addr = known.local_addr;
        let _ = ACCEPTED.remove(&key);
    }
    // The other end of the agent's own export or API watch is never traced.
    if !ports_traced(ep.local_port, ep.peer_port) || mirrors_agent(&ep) {
        ignore(ctx.tgid(), fd as i32);
        return;
    }
    track(ctx.tgid(), ctx.pid(), fd as i32, role::SERVER, 0, &ep, true);
}

/// A connection accepted on `fd` without the peer's address (`accept4(fd, NULL, NULL)`, or an
/// accept whose arguments were not saved): its endpoints are read from the new socket, and it is
/// then filtered and tracked as an accept with an address is. When they cannot be read it is
/// tracked with unknown endpoints (counted): userspace reads them from `/proc` and applies the
/// port filter there. A socket of another family (unix) is not tracked.
#[inline(always)]
fn accept_without_address(tgid: u32, tid: u32, fd: i32) {
    let mut ep = Endpoints::UNKNOWN;
    let sk = accepted_sock(fd as u32, &mut ep);
    if sk == 0 {
        count(counter::ACCEPT_ENDPOINTS_UNKNOWN, 1);
        let unknown = Endpoints::UNKNOWN;
        track(tgid, tid, fd, role::SERVER, 0, &unknown, true);
        return;
    }
    if ep.family != AF_INET && ep.family != AF_INET6 {
        return;
    }
    // What the handshake's tracepoint kept for an accept with an address is not needed.
    let key = PeerKey {
        addr: ep.peer_addr,
        port: ep.peer_port,
        _pad: [0; 6],
    };
    let _ = ACCEPTED.remove(&key);
    // The other end of the agent's own export or API watch is never traced.
    if !ports_traced(ep.local_port, ep.peer_port) || mirrors_agent(&ep) {
        ignore(tgid, fd);
        return;
    }
    track(tgid, tid, fd, role::SERVER, sk, &ep, true);
}

/// The `struct sock *` behind `fd` of the current process (process context: the accepting
/// thread), its endpoints written to `ep`, which must be [`Endpoints::UNKNOWN`] on entry
/// (addresses as [`normalize`] keeps them); 0 when the kernel's BTF did not say where they are,
/// a read failed, or the fd is not a socket's (`ep` then partly written: not to be used). A
/// socket of another family than IPv4 and IPv6 gets only `ep.family`.
///
/// The walk: `task_struct.files` -> `files_struct.fdt` -> `fdtable.fd[fd]` (bounded by
/// `max_fds`) -> `file.private_data` (a `struct socket *`, taken only when its `file` points
/// back) -> `socket.sk` -> its `sock_common`. Not inlined, and its frame kept small: the offsets
/// are read one by one where used and the addresses copied straight into `ep` (a copy of
/// `SOCK_OFFSETS` and of the addresses took this frame to 176 bytes, and accept's exit past 6.1's
/// 512-byte combined stack: "combined stack size of 3 calls is 640").
#[inline(never)]
fn accepted_sock(fd: u32, ep: &mut Endpoints) -> u64 {
    let known = sock_offset(|o| &o.known);
    if known & sock_known::FD == 0 || known & sock_known::INET == 0 {
        return 0;
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let Some(fdt) = kernel_read::<u64>(task, sock_offset(|o| &o.task_files))
        .and_then(|files| kernel_read::<u64>(files, sock_offset(|o| &o.files_fdt)))
    else {
        return 0;
    };
    // The fd array may be replaced by a larger one at any time: its size is read from the same
    // table as the array, and a stale pair is still a valid (older) table.
    let Some(max_fds) = kernel_read::<u32>(fdt, sock_offset(|o| &o.fdt_max_fds)) else {
        return 0;
    };
    if fd >= max_fds {
        return 0;
    }
    let Some(file) = kernel_read::<u64>(fdt, sock_offset(|o| &o.fdt_fd))
        .filter(|array| *array != 0)
        .and_then(|array| kernel_read::<u64>(array + u64::from(fd) * 8, 0))
    else {
        return 0;
    };
    let Some(socket) = kernel_read::<u64>(file, sock_offset(|o| &o.file_private_data)) else {
        return 0;
    };
    // Another thread may have closed the fd and opened something else on it since accept
    // returned: only a socket's file is its socket's `file`.
    if kernel_read::<u64>(socket, sock_offset(|o| &o.socket_file)) != Some(file) {
        return 0;
    }
    let Some(sk) = kernel_read::<u64>(socket, sock_offset(|o| &o.socket_sk)).filter(|sk| *sk != 0)
    else {
        return 0;
    };
    let Some(family) = kernel_read::<u16>(sk, sock_offset(|o| &o.skc_family)) else {
        return 0;
    };
    ep.family = family;
    if family != AF_INET && family != AF_INET6 {
        return sk;
    }
    let (Some(local_port), Some(peer_port)) = (
        kernel_read::<u16>(sk, sock_offset(|o| &o.skc_num)),
        kernel_read::<u16>(sk, sock_offset(|o| &o.skc_dport)),
    ) else {
        return 0;
    };
    ep.local_port = local_port;
    // skc_dport is kept in network byte order, skc_num in host order.
    ep.peer_port = u16::from_be(peer_port);
    let read = if family == AF_INET {
        kernel_read_into(
            sk,
            sock_offset(|o| &o.skc_rcv_saddr),
            &mut ep.local_addr[..4],
        ) && kernel_read_into(sk, sock_offset(|o| &o.skc_daddr), &mut ep.peer_addr[..4])
    } else {
        known & sock_known::INET6 != 0
            && kernel_read_into(sk, sock_offset(|o| &o.skc_v6_rcv_saddr), &mut ep.local_addr)
            && kernel_read_into(sk, sock_offset(|o| &o.skc_v6_daddr), &mut ep.peer_addr)
    };
    if !read {
        return 0;
    }
    if family == AF_INET6 && unmap_v4(&mut ep.local_addr) {
        ep.family = AF_INET;
    }
    unmap_v4(&mut ep.peer_addr);
    sk
}

/// A v4-mapped IPv6 address (`::ffff:a.b.c.d`) rewritten in place as [`normalize`] keeps IPv4
/// (the first 4 bytes, the rest zero); true when it was one.
#[inline(always)]
fn unmap_v4(addr: &mut [u8; 16]) -> bool {
    let mapped = addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff;
    if mapped {
        addr.copy_within(12..16, 0);
        addr[4..].fill(0);
    }
    mapped
}

/// Copies kernel memory at `offset` in the object at `base` into `dst`; false when `base` is
/// null or the read fails. Straight into the destination: no temporary on the stack.
#[inline(always)]
fn kernel_read_into(base: u64, offset: u32, dst: &mut [u8]) -> bool {
    if base == 0 {
        return false;
    }
    // SAFETY: probe-read of kernel memory into `dst`, bounded by its length; failure handled.
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel_buf((base + u64::from(offset)) as *const u8, dst)
    }
    .is_ok()
}

pub fn exit_connect(ctx: &TracePointContext) {
    let id = ctx.pid_tgid_raw();
    let args = take_args(id, true);
    if args.kind == ARG_NONE {
        let ret = sys_ret(ctx);
        if (ret == 0 || ret == -EINPROGRESS) && pid_traced(ctx.tgid()) {
            // Evicted from the candidate table: this connection is not tracked (sniffing may
            // still adopt it when HTTP bytes flow).
            count(counter::LIFECYCLE_ARGS_MISSING, 1);
            aya_log_ebpf::debug!(
                ctx,
                "connect in pid {} without its arguments: not tracked",
                ctx.tgid()
            );
        }
        let _ = CONNECTING.remove(&id);
        return;
    }
    if args.kind != ARG_CONNECT {
        return;
    }
    // Only TCP connects pass through SYN_SENT: UDP "connections" (DNS) have no entry here.
    // SAFETY: value copied out before removal.
    let Some(sk) = (unsafe { CONNECTING.get(&id) }).copied() else {
        return;
    };
    let _ = CONNECTING.remove(&id);
    let ret = sys_ret(ctx);
    if ret != 0 && ret != -EINPROGRESS {
        return;
    }
    // A blocking connect returns established: both endpoints are known. A non-blocking one
    // returns before the ephemeral port exists; the first data record sends them instead.
    // SAFETY: value copied out.
    let ep = match unsafe { SOCK_ENDPOINTS.get(&sk) }.copied() {
        Some(ep) => ep,
        None => {
            let (family, peer_addr, peer_port) = read_sockaddr(args.ptr);
            Endpoints {
                family,
                local_port: 0,
                peer_port,
                _pad: 0,
                local_addr: [0; 16],
                peer_addr,
            }
        }
    };
    let fd = args.fd as i32;
    if !ports_traced(ep.local_port, ep.peer_port) {
        ignore(ctx.tgid(), fd);
        return;
    }
    track(ctx.tgid(), ctx.pid(), fd, role::CLIENT, sk, &ep, true);
}

/// Sends the endpoints of a client connection whose connect returned before they were known;
/// called when it starts its first write (and again, if they were not known yet then, on its
/// first data record), dated just before the data so it is handled first.
#[inline(always)]
pub fn announce_endpoints(tgid: u32, tid: u32, fd: i32, state: &mut ConnState, ts_ns: u64) {
    if state.endpoints_sent != 0 || state.sk == 0 {
        return;
    }
    // SAFETY: value copied out.
    let Some(ep) = (unsafe { SOCK_ENDPOINTS.get(&state.sk) }).copied() else {
        return;
    };
    state.endpoints_sent = 1;
    if let Some(slot) = CONNS.get_ptr_mut(&conn_key(tgid, fd as u32)) {
        // SAFETY: the slot is this connection's entry; only this flag changes.
        unsafe { (*slot).endpoints_sent = 1 };
    }
    announce(tgid, tid, fd, ts_ns, state, &ep);
}

pub fn enter_close(ctx: &TracePointContext) {
    close_fd(ctx, sys_arg(ctx, 0) as i32);
}

/// sys_enter of dup2/dup3: `newfd` is closed first when it was open (no close syscall).
pub fn enter_dup2(ctx: &TracePointContext) {
    let (old, new) = (sys_arg(ctx, 0) as i32, sys_arg(ctx, 1) as i32);
    if old != new {
        close_fd(ctx, new);
    }
}

/// Widest close_range(2) whose fds are closed one by one; a wider one renews the process's
/// generation instead (every entry of the process becomes stale: some are lost, none is wrong).
const CLOSE_RANGE_EACH: u32 = 16;
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// sys_enter of close_range(first, last, flags): closes without a close syscall per fd.
pub fn enter_close_range(ctx: &TracePointContext) {
    let (first, last, flags) = (
        sys_arg(ctx, 0) as u32,
        sys_arg(ctx, 1) as u32,
        sys_arg(ctx, 2),
    );
    if flags & CLOSE_RANGE_CLOEXEC != 0 || last < first {
        // Only marked close-on-exec: the exec renews the generation.
        return;
    }
    if last - first >= CLOSE_RANGE_EACH {
        renew_generation(ctx.tgid());
        return;
    }
    for i in 0..CLOSE_RANGE_EACH {
        let fd = first + i;
        if fd > last {
            break;
        }
        close_fd(ctx, fd as i32);
    }
}

/// The traced process closes `fd` (close, or dup2 over it): forget it and tell userspace.
#[inline(always)]
fn close_fd(ctx: &TracePointContext, fd: i32) {
    let tgid = ctx.tgid();
    if fd < 0 {
        return;
    }
    let key = conn_key(tgid, fd as u32);
    let Some(state) = live_conn(tgid, fd as u32) else {
        return;
    };
    remove_conn(key);
    if state.role == role::IGNORED {
        return;
    }
    let ev = ConnCloseEvent {
        header: header(kind::CONN_CLOSE, tgid, ctx.pid(), fd, state.conn_id),
    };
    match EVENTS.output::<ConnCloseEvent>(
        &ev,
        events_output_flags(false, core::mem::size_of::<ConnCloseEvent>() as u64),
    ) {
        Ok(()) => count(counter::EVENTS_SUBMITTED, 1),
        Err(_) => {
            count(counter::RINGBUF_FULL, 1);
            aya_log_ebpf::debug!(
                ctx,
                "ring buffer full: the close of fd {} in pid {} is lost",
                fd,
                tgid
            );
        }
    }
}

/// The fixed part of `sock:inet_sock_set_state` after the common header.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockStateRecord {
    skaddr: u64,
    oldstate: i32,
    newstate: i32,
    sport: u16,
    dport: u16,
    family: u16,
    protocol: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
    saddr_v6: [u8; 16],
    daddr_v6: [u8; 16],
}

const IPPROTO_TCP: u16 = 6;

pub fn sock_set_state(ctx: &TracePointContext) {
    // SAFETY: the record layout is fixed by the tracepoint's format (offset 8 onwards).
    let Ok(rec) = (unsafe { ctx.read_at::<SockStateRecord>(8) }) else {
        return;
    };
    if rec.protocol != IPPROTO_TCP {
        return;
    }
    if rec.newstate == TCP_SYN_SENT {
        // A socket address is reused by later sockets: forget what an earlier connection on it
        // established, or a connect that returns before ESTABLISHED would read its endpoints.
        let _ = SOCK_ENDPOINTS.remove(&rec.skaddr);
        // Process context of the connecting thread; the local port is not chosen yet.
        crate::filter::on_connecting(ctx.tgid(), rec.skaddr);
        if pid_traced(ctx.tgid()) {
            let _ = CONNECTING.insert(&ctx.pid_tgid_raw(), &rec.skaddr, 0);
        }
        return;
    }
    if rec.newstate == TCP_CLOSE {
        let _ = SOCK_ENDPOINTS.remove(&rec.skaddr);
        crate::filter::on_closed(rec.skaddr);
        return;
    }
    if rec.newstate != TCP_ESTABLISHED {
        return;
    }
    let (family, local_addr) = normalize(rec.family, rec.saddr, rec.saddr_v6);
    let (_, peer_addr) = normalize(rec.family, rec.daddr, rec.daddr_v6);
    let ep = Endpoints {
        family,
        local_port: rec.sport,
        peer_port: rec.dport,
        _pad: 0,
        local_addr,
        peer_addr,
    };
    if rec.oldstate == TCP_SYN_RECV {
        // Server side, often in softirq context: key by the peer, which accept() will report.
        let key = PeerKey {
            addr: peer_addr,
            port: rec.dport,
            _pad: [0; 6],
        };
        let _ = ACCEPTED.insert(&key, &ep, 0);
    } else {
        let _ = SOCK_ENDPOINTS.insert(&rec.skaddr, &ep, 0);
        crate::filter::on_established(rec.skaddr, &ep);
    }
}
