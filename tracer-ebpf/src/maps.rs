//! Every map the programs share, with the small accessors used on hot paths.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use tracer_common::{
    Config, ConnState, DEFAULT_MAX_CONNECTIONS, DataEvent, DataEventHeader, MAX_AGENT_CONNECTIONS,
    MAX_CANDIDATE_SYSCALLS, MAX_CAPTURE, MAX_FILTER_PIDS, MAX_FILTER_PORTS, MAX_INFLIGHT_SYSCALLS,
    MAX_PROCESS_CHANGES, MAX_PROCESS_GENERATIONS, counter,
};

/// Agent configuration (one entry, written by userspace before attaching).
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Loss and volume counters, indexed by `tracer_common::counter::*`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Records to userspace. Userspace may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// The size of `EVENTS` in bytes, set by userspace at load time (with the map's size), so that
/// each record costs one `bpf_ringbuf_query` instead of two.
#[unsafe(no_mangle)]
static EVENTS_RING_BYTES: u64 = 16 * 1024 * 1024;

/// Non-zero: HTTP/2 directions are walked frame by frame (the data programs tail-call
/// `h2_walk`). Set by userspace at load time; with 0 the verifier drops the tail call from the
/// data programs, which kernels before 5.10 (and JITs without tail calls from programs with
/// BPF-to-BPF calls) require.
#[unsafe(no_mangle)]
static H2_WALK: u8 = 0;

/// Where the running kernel keeps a socket's and a thread's network namespace, set by userspace
/// at load time from the kernel's BTF; nothing known by default.
#[unsafe(no_mangle)]
static NETNS_OFFSETS: tracer_common::NetnsOffsets = tracer_common::NetnsOffsets {
    sock_net: 0,
    net_inum: 0,
    task_nsproxy: 0,
    nsproxy_net: 0,
    known: 0,
};

/// The load-time `NETNS_OFFSETS`.
#[inline(always)]
pub fn netns_offsets() -> tracer_common::NetnsOffsets {
    // SAFETY: a plain read of a read-only global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(&NETNS_OFFSETS) }
}

/// Where the running kernel keeps what leads from an fd to its socket's endpoints, set by
/// userspace at load time from the kernel's BTF; nothing known by default.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: tracer_common::SockOffsets = tracer_common::SockOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_file: 0,
    socket_sk: 0,
    skc_family: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_rcv_saddr: 0,
    skc_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_v6_daddr: 0,
    known: 0,
};

/// One field of the load-time `SOCK_OFFSETS` (`field` picks it), read where it is used: a copy
/// of the whole struct cost its reader's frame 60 bytes, which accept's exit has not to spare.
#[inline(always)]
pub fn sock_offset(field: fn(&tracer_common::SockOffsets) -> &u32) -> u32 {
    // SAFETY: a plain read of a read-only global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(field(&SOCK_OFFSETS)) }
}

/// Whether the HTTP/2 frame walker is on (`H2_WALK`).
#[inline(always)]
pub fn h2_walk_enabled() -> bool {
    // SAFETY: a plain read of a read-only global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(&H2_WALK) != 0 }
}

/// Flags for every `EVENTS.output` of a `len`-byte record: submit without waking the reader (it
/// polls on an adaptive interval), except when this record fills the ring past one of its
/// eighths, then wake it at once so a burst cannot fill the ring while
/// the reader sleeps. Wake-ups stay bounded: at most seven per fill, never one per record. Each
/// forced wake-up costs the writing process an interrupt (a self-IPI, a VM exit in a guest):
/// waking on every record while the ring is more than an eighth full made every record of a
/// lagging reader pay one, when the reader, already awake, needs none.
///
/// `wake_if_caught_up` (connection opens): let the kernel wake the reader when it has read
/// everything before this record (the ring's default). The agent looks a new connection's
/// process up in /proc at once; a short-lived client (`curl`) may be gone after one poll
/// interval. Under load the reader is never caught up, so this adds no wake-ups there; by the
/// same token an open behind unread records wakes nobody, and its lookup waits for the next poll
/// (up to the idle interval, 64 ms).
#[inline(always)]
pub fn events_output_flags(wake_if_caught_up: bool, len: u64) -> u64 {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    /// The ring's own header before every record.
    const RECORD_HEADER: u64 = 8;
    let held = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    // SAFETY: a plain read of a read-only global; volatile so the load-time value is used.
    let size = unsafe { core::ptr::read_volatile(&EVENTS_RING_BYTES) };
    let eighth = size / 8;
    if eighth != 0 && (held + len + RECORD_HEADER) / eighth > held / eighth {
        BPF_RB_FORCE_WAKEUP as u64
    } else if wake_if_caught_up {
        0
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Tracked connections, keyed by `conn_key(tgid, fd)`. LRU: an fd closed without a close
/// syscall (process exit, exec, close_range) leaves its entry behind, never used again; a full
/// table evicts those first instead of refusing new connections.
#[map]
pub static CONNS: LruHashMap<u64, ConnState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);

/// Arguments of in-flight syscalls on tracked connections, keyed by pid_tgid, from sys_enter to
/// sys_exit. One entry per thread, rewritten in place by each syscall and marked taken at its exit
/// (`conn::take_args`), removed when the thread exits: no insert and delete per syscall. Once a
/// thread has one, its other kept syscalls (candidates) go there too (`conn::save_candidate`).
/// When full, a new thread's connection is marked as having lost records (counted).
#[map]
pub static INFLIGHT: HashMap<u64, SyscallArgs> =
    HashMap::with_max_entries(MAX_INFLIGHT_SYSCALLS, 0);

/// Per process (tgid): its threads' entries in `INFLIGHT` (at most `MAX_INFLIGHT_PER_PROCESS`). LRU: a
/// forgotten count restarts at 0 (more lenient, never blocking). Signed: a decrement whose
/// increment was forgotten only makes it lenient too.
#[map]
pub static INFLIGHT_PER_PROCESS: LruHashMap<u32, i64> =
    LruHashMap::with_max_entries(MAX_PROCESS_GENERATIONS, 0);

/// Arguments of in-flight syscalls that may not concern a connection: accept, connect, and
/// reads/writes on untracked fds kept for sniffing (pipes and files among them), of threads
/// without an `INFLIGHT` entry. LRU, so threads
/// blocked for long (16k readers of a pipe) are evicted by newer syscalls instead of filling it.
#[map]
pub static CANDIDATES: LruHashMap<u64, SyscallArgs> =
    LruHashMap::with_max_entries(MAX_CANDIDATE_SYSCALLS, 0);

/// Per process (tgid): CLOCK_MONOTONIC ns since which its fds are what the connection table
/// says (set when a process is born, and at exec). Older entries are stale: pid reuse, or fds
/// closed by exec. LRU: an entry whose process has no generation here is treated as stale
/// (fail closed, counted), so an evicted generation costs missed connections, never wrong ones.
#[map]
pub static GENERATIONS: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(MAX_PROCESS_GENERATIONS, 0);

/// Bumped (atomically) whenever `GENERATIONS` changes: a connection entry found live at the
/// current epoch is still live (see `ConnState::generation_checked`, `conn::live_conn`).
#[map]
pub static GENERATION_EPOCH: Array<i64> = Array::with_max_entries(1, 0);

/// Per-CPU scratch for data records (too large for the 512-byte stack).
#[map]
pub static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for connection-open records: built on the stack, one took the programs that
/// inline it (accept's exit) over the 512-byte combined stack of older verifiers (5.10).
#[map]
pub static OPEN_SCRATCH: PerCpuArray<tracer_common::ConnOpenEvent> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch of the HTTP/2 frame-aware capture (see `h2`): the record being assembled
/// from the kept byte runs of one syscall, and the walk's record state.
#[map]
pub static H2_SCRATCH: PerCpuArray<H2Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Copies into an assembled record start below this offset (a record already holding this
/// many bytes is sent first), so that the verifier can prove a copy of up to `MAX_CAPTURE`
/// bytes stays inside `H2Scratch::data` (a per-CPU value is at most 32 KiB).
pub const H2_COPY_OFFSET_LIMIT: usize = MAX_CAPTURE / 2;

/// A data record assembled from several byte runs.
#[repr(C)]
pub struct H2Scratch {
    /// Sent as is, with `captured_len` bytes of `data`.
    pub meta: DataEventHeader,
    pub data: [u8; H2_COPY_OFFSET_LIMIT + MAX_CAPTURE],
    /// Bytes of `data` filled.
    pub cap: u64,
    /// Stream bytes after them not copied (the record's gap).
    pub gap: u64,
    /// sys_enter time of the syscall, for `syscall_ns`.
    pub enter_ns: u64,
    /// The connection's key, for its loss flag.
    pub key: u64,
    /// Payload bytes elided as DATA during this walk.
    pub elided: u64,
    /// Non-zero: the next kept bytes start a new record.
    pub split: u64,
    /// The connection's loss flag as the records sent so far leave it, and as it was.
    pub lost: u64,
    pub lost_initial: u64,
    /// Counters of this walk, added to `COUNTERS` once at its end.
    pub records: u64,
    pub ring_full: u64,
    pub sent_cap: u64,
    pub sent_gap: u64,
    pub truncated: u64,
    pub read_failed: u64,
    pub walk: Walk,
}

/// Where a frame walk is (see `h2::walk`): the cursor being advanced, and the buffer walked.
#[repr(C)]
pub struct Walk {
    /// Payload bytes left in the current frame; `elide` non-zero: sent as a gap.
    pub left: u64,
    pub elide: u64,
    /// A frame header's first bytes seen so far, and how many.
    pub head: u64,
    pub head_len: u64,
    /// Next iovec index; the current buffer, its length, the position in it and the start of
    /// the kept run not copied yet.
    pub seg_i: u64,
    pub base: u64,
    pub seg_len: u64,
    pub pos: u64,
    pub run: u64,
    /// Bytes of the transfer before the current buffer, and the transfer's length.
    pub done: u64,
    pub total: u64,
    /// The iovec array and its length; `single` non-zero: one buffer at `ptr`.
    pub iov: u64,
    pub nseg: u64,
    pub single: u64,
    pub ptr: u64,
    /// Non-zero once the whole transfer was walked.
    pub finished: u64,
    /// The connection, direction and HTTP/2 flags to store with the advanced cursor.
    pub conn_id: u64,
    pub dir: u64,
    pub flags: u64,
    /// Set by the data program before its tail call, cleared by the walker.
    pub armed: u64,
    /// What a step deferred to the next: copy `p_len` bytes at `p_src`, then a gap of `p_gap`
    /// elided bytes; `p_split` non-zero: the record is closed after the copy.
    pub p_src: u64,
    pub p_len: u64,
    pub p_gap: u64,
    pub p_split: u64,
    /// Runs of the walker after the first (tail calls of itself).
    pub rounds: u64,
    /// `ConnState::h2_holes` when the syscall began (stored as seen with the cursor).
    pub holes: u64,
    /// Non-zero: the direction was framed by this syscall (counted once the walker runs).
    pub newly_framed: u64,
    /// Non-zero: the walk stopped at a frame header that is not a plausible frame.
    pub implausible: u64,
}

/// The HTTP/2 frame walker (`h2_walk`) at index 0, tail-called by the data programs; filled
/// by userspace at load time.
#[map]
pub static H2_WALKER: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per-CPU connection id sequence.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Processes that exec'd or mapped an executable file since userspace drained the table
/// (`tracer_common::map_name::PROCESS_CHANGES`): tgid -> `process_change` bits.
#[map]
pub static PROCESS_CHANGES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROCESS_CHANGES, 0);

/// Traced process ids when pid filtering is on.
#[map]
pub static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FILTER_PIDS, 0);

/// Traced process ids as the agent names them when it runs in a child pid namespace (pids of
/// its namespace): a task of that namespace found here joins `FILTER_PIDS` by its host tgid.
#[map]
pub static NS_FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FILTER_PIDS, 0);

/// Host tgid -> tgid in the agent's pid namespace, for tasks of that namespace, filled only when
/// the agent runs in a child pid namespace: its /proc names processes by the latter. A missing
/// entry (evicted, or a process outside the namespace) means no /proc lookups for that process.
#[map]
pub static NS_PIDS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Traced ports when port filtering is on.
#[map]
pub static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_FILTER_PORTS, 0);

/// Socket being set up by `connect`, keyed by pid_tgid (written by the `inet_sock_set_state`
/// SYN_SENT transition in the connecting thread, read at connect's exit). Only TCP gets here.
#[map]
pub static CONNECTING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Both endpoints of established TCP sockets, keyed by socket address (the ephemeral port of a
/// client is only chosen after SYN_SENT, so it is read here at ESTABLISHED).
#[map]
pub static SOCK_ENDPOINTS: LruHashMap<u64, Endpoints> = LruHashMap::with_max_entries(16384, 0);

/// Local endpoint of server-side sockets that just became established, keyed by the peer
/// endpoint (read at accept's exit, which knows only the peer).
#[map]
pub static ACCEPTED: LruHashMap<PeerKey, Endpoints> = LruHashMap::with_max_entries(16384, 0);

/// The agent's own TCP sockets by socket address: an unknown (zero) endpoint from `connect`
/// (SYN_SENT, in the agent's context) until ESTABLISHED fills in its local endpoint; removed at
/// TCP_CLOSE. A plain hash map: an evicted socket would orphan its endpoint below, excluding an
/// unrelated connection later; a full table is counted (`AGENT_TABLE_FULL`).
#[map]
pub static AGENT_SOCKS: HashMap<u64, PeerKey> = HashMap::with_max_entries(MAX_AGENT_CONNECTIONS, 0);

/// The agent's own established TCP connections by local endpoint (the value holds both ends).
/// A connection accepted on this host whose peer is one of them is the other end of the agent's
/// export or API watch (see `filter::mirrors_agent`). Removed at TCP_CLOSE; full is counted.
#[map]
pub static AGENT_ENDPOINTS: HashMap<PeerKey, Endpoints> =
    HashMap::with_max_entries(MAX_AGENT_CONNECTIONS, 0);

/// What sys_enter saw, for sys_exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    /// The fd the syscall operates on (the listening fd for accept).
    pub fd: i64,
    /// Buffer, iovec array, msghdr or sockaddr pointer, depending on the syscall.
    pub ptr: u64,
    /// iovec count for readv/writev.
    pub count: u64,
    /// bpf_ktime_get_ns at sys_enter.
    pub enter_ns: u64,
    /// `tracer_common::syscall::*`, or one of the `ARG_*` lifecycle kinds.
    pub kind: u8,
    /// Non-zero: the bytes are not in the buffer (`MSG_TRUNC` on a stream socket discards
    /// them; splice moves them in the kernel): report the length as a gap.
    pub gap_only: u8,
    /// For splice: the tracked fd is the destination (egress) rather than the source.
    pub egress: u8,
    pub _pad: [u8; 5],
    /// The connection the fd was at sys_enter (0: untracked, kept for sniffing). The exit
    /// reports bytes only when the fd is still that connection: another thread may close the
    /// fd and get the number back from accept/connect while this syscall blocks.
    pub conn_id: u64,
}

/// Both endpoints of a TCP connection, as the tracepoint reports them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Endpoints {
    pub family: u16,
    pub local_port: u16,
    pub peer_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
}

impl Endpoints {
    /// Nothing known (family 0).
    pub const UNKNOWN: Endpoints = Endpoints {
        family: 0,
        local_port: 0,
        peer_port: 0,
        _pad: 0,
        local_addr: [0; 16],
        peer_addr: [0; 16],
    };
}

/// Peer endpoint as a hash key.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

#[inline(always)]
pub fn count(index: u32, by: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs do not preempt each other on one CPU.
        unsafe { *slot += by };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(tracer_common::CONFIG_KEY)
}

/// A new connection id: the CPU number in the top byte, a per-CPU sequence below.
#[inline(always)]
pub fn next_conn_id() -> u64 {
    // SAFETY: plain helper call.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } as u64;
    match CONN_SEQ.get_ptr_mut(0) {
        Some(seq) => {
            // SAFETY: per-CPU slot.
            unsafe {
                *seq += 1;
                (cpu << 56) | *seq
            }
        }
        None => cpu << 56,
    }
}
