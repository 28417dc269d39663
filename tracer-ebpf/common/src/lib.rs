//! The ABI shared by the eBPF programs and the userspace agent: event records written to the ring
//! buffer, the configuration and counter maps' layouts, and the limits both sides agree on.
//!
//! Every struct is `#[repr(C)]` with explicit padding so that the kernel and userspace see the same
//! bytes. Userspace never trusts a record: it checks lengths before reading (see `tracer::capture::decode`).
#![cfg_attr(not(test), no_std)]

/// Largest number of payload bytes one data record can carry (the capture limit's ceiling).
pub const MAX_CAPTURE: usize = 16384;
/// Default capture per syscall: large enough that a `traceparent` placed after a 6 KB `Cookie`
/// header is still inside the captured prefix.
pub const DEFAULT_CAPTURE: u32 = 8192;
/// How many iovecs of one readv/writev/recvmsg/sendmsg are walked; the rest of the transfer is
/// reported as a gap (length only) so userspace stays in sync with the stream.
pub const MAX_IOVECS: u32 = 8;
/// Entries of the per-thread syscall argument table (syscalls on tracked connections).
pub const MAX_INFLIGHT_SYSCALLS: u32 = 16384;
/// Entries of the LRU argument table for syscalls that may not concern a connection (accept,
/// connect, and reads/writes on untracked fds kept for sniffing): when full, the oldest entries
/// (threads blocked longest) are evicted, so blocked threads cannot blind the tracer.
pub const MAX_CANDIDATE_SYSCALLS: u32 = 16384;
/// Entries of the process generation table (pid -> when its fds were last renewed: birth or exec).
pub const MAX_PROCESS_GENERATIONS: u32 = 32768;
/// Entries one process may hold in the tracked table (one per thread that made a syscall on a
/// tracked connection, kept until the thread exits): a process with thousands of threads on its
/// own connections cannot fill it for all.
pub const MAX_INFLIGHT_PER_PROCESS: i64 = (MAX_INFLIGHT_SYSCALLS / 4) as i64;
/// Default number of tracked connections in the kernel table.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65536;
/// Entries of the pid filter set.
pub const MAX_FILTER_PIDS: u32 = 4096;
/// Entries of the port filter set.
pub const MAX_FILTER_PORTS: u32 = 256;
/// Entries of the tables of the agent's own TCP sockets and their local endpoints (exports, API
/// watches).
pub const MAX_AGENT_CONNECTIONS: u32 = 4096;

/// Declares a `#[repr(u8)]` enum of wire values with `TryFrom<u8>` (unknown values are an error
/// the caller counts: a raw byte from the kernel is never transmuted into an enum).
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr,)+ }) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl TryFrom<u8> for $name {
            /// The unknown value.
            type Error = u8;
            fn try_from(value: u8) -> Result<Self, u8> {
                match value {
                    $($value => Ok($name::$variant),)+
                    other => Err(other),
                }
            }
        }
    };
}

wire_enum! {
    /// Record kinds, the first byte of every ring-buffer record.
    RecordKind {
        ConnOpen = 1,
        Data = 2,
        ConnClose = 3,
        /// A span identity the kernel decided (`IdentityEvent`, `--context-propagation`).
        Identity = 8,
    }
}

wire_enum! {
    /// Which side of the connection the traced process is on.
    ConnRole {
        /// Found by sniffing bytes on an fd opened before the agent started.
        Unknown = 0,
        /// The process accepted the connection.
        Server = 1,
        /// The process connected.
        Client = 2,
        /// Kernel table only: a connection excluded by the port filter (never sniffed, never sent).
        Ignored = 3,
    }
}

wire_enum! {
    /// Data direction from the traced process's point of view.
    DataDirection {
        /// Bytes the process read from the socket.
        Ingress = 0,
        /// Bytes the process wrote to the socket.
        Egress = 1,
    }
}

wire_enum! {
    /// Address family of the endpoints in a connection record (the kernel's `AF_*` values).
    AddressFamily {
        /// Not known (sniffed connections).
        Unspecified = 0,
        Unix = 1,
        Inet = 2,
        Inet6 = 10,
    }
}

/// Record kinds as raw bytes, for the eBPF programs (see [`RecordKind`]).
pub mod kind {
    use super::RecordKind;
    pub const CONN_OPEN: u8 = RecordKind::ConnOpen as u8;
    pub const DATA: u8 = RecordKind::Data as u8;
    pub const CONN_CLOSE: u8 = RecordKind::ConnClose as u8;
    pub const IDENTITY: u8 = RecordKind::Identity as u8;
}

/// Roles as raw bytes, for the eBPF programs (see [`ConnRole`]).
pub mod role {
    use super::ConnRole;
    pub const UNKNOWN: u8 = ConnRole::Unknown as u8;
    pub const SERVER: u8 = ConnRole::Server as u8;
    pub const CLIENT: u8 = ConnRole::Client as u8;
    pub const IGNORED: u8 = ConnRole::Ignored as u8;
}

/// Directions as raw bytes, for the eBPF programs (see [`DataDirection`]).
pub mod direction {
    use super::DataDirection;
    pub const INGRESS: u8 = DataDirection::Ingress as u8;
    pub const EGRESS: u8 = DataDirection::Egress as u8;
}

/// Address families as raw values, for the eBPF programs (see [`AddressFamily`]).
pub mod family {
    use super::AddressFamily;
    pub const UNIX: u16 = AddressFamily::Unix as u16;
    pub const INET: u16 = AddressFamily::Inet as u16;
    pub const INET6: u16 = AddressFamily::Inet6 as u16;
}

/// The syscall that produced a data record (diagnostics only), or whose arguments the kernel
/// keeps from sys_enter to sys_exit.
pub mod syscall {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const READV: u8 = 3;
    pub const WRITEV: u8 = 4;
    pub const RECVFROM: u8 = 5;
    pub const SENDTO: u8 = 6;
    pub const RECVMSG: u8 = 7;
    pub const SENDMSG: u8 = 8;
    pub const SENDFILE: u8 = 9;
    /// splice(2): bytes move between a pipe and the socket inside the kernel; reported as a gap.
    pub const SPLICE: u8 = 10;
    /// A zero-length record marking a hole: bytes moved through an uncaptured path (sendmmsg,
    /// recvmmsg, io_uring). It carries `DATA_FLAG_LOSS_BEFORE`.
    pub const UNHOOKED: u8 = 11;
    /// accept/accept4: only in the kernel's argument tables (sys_enter to sys_exit), never in
    /// a record.
    pub const ACCEPT: u8 = 12;
    /// connect: only in the kernel's argument tables, never in a record.
    pub const CONNECT: u8 = 13;
    /// Plaintext OpenSSL's `SSL_read`/`SSL_read_ex` returned (a uprobe record, `DATA_FLAG_TLS`).
    pub const SSL_READ: u8 = 14;
    /// Plaintext given to OpenSSL's `SSL_write`/`SSL_write_ex` (a uprobe record, `DATA_FLAG_TLS`).
    pub const SSL_WRITE: u8 = 15;
    /// Plaintext Go's `crypto/tls.(*Conn).Read` returned (a uprobe record, `DATA_FLAG_TLS`).
    pub const GO_TLS_READ: u8 = 16;
    /// Plaintext given to Go's `crypto/tls.(*Conn).Write` (a uprobe record, `DATA_FLAG_TLS`).
    pub const GO_TLS_WRITE: u8 = 17;
}

/// Which TLS library's uprobes captured a connection's plaintext (`ConnState::tls`).
pub mod tls {
    /// Not a TLS connection as far as the kernel knows (its bytes are captured from syscalls).
    pub const NONE: u8 = 0;
    /// OpenSSL (libssl.so.3 / 1.1, or a binary linking it statically with its symbols).
    pub const OPENSSL: u8 = 1;
    /// Go's crypto/tls.
    pub const GO: u8 = 2;
}

/// `ConnState::lost` of a connection an io_uring request touched: a multishot receive fires
/// the tracepoint once for many transfers, so every later record carries the loss flag and
/// nothing on it is paired again (missed, never wrong).
pub const LOST_UNTIL_CLOSE: u8 = 2;

/// Indices into the per-CPU counter array. Every way an event can be lost has one.
pub mod counter {
    /// Records written to the ring buffer.
    pub const EVENTS_SUBMITTED: u32 = 0;
    /// Records lost because the ring buffer was full (reserve/output failed).
    pub const RINGBUF_FULL: u32 = 1;
    /// Connections not tracked because the connection table was full.
    pub const CONN_TABLE_FULL: u32 = 2;
    /// Syscalls not followed because the in-flight argument table was full.
    pub const ARGS_TABLE_FULL: u32 = 3;
    /// Records lost because the per-CPU scratch buffer could not be looked up.
    pub const SCRATCH_UNAVAILABLE: u32 = 4;
    /// Payload bytes copied into records.
    pub const BYTES_CAPTURED: u32 = 5;
    /// Payload bytes seen but not copied (beyond the capture size or the iovec limit).
    pub const BYTES_SKIPPED: u32 = 6;
    /// Copies from user memory that failed (the bytes are reported as a gap).
    pub const READ_USER_FAILED: u32 = 7;
    /// Connections found by sniffing HTTP bytes on an untracked fd.
    pub const CONNS_SNIFFED: u32 = 8;
    /// Children of traced processes not followed because the pid filter set was full.
    pub const FILTER_TABLE_FULL: u32 = 9;
    /// New keys inserted into the connection table (with `CONNS_REMOVED` and the table's
    /// occupancy, userspace derives how many entries the LRU table evicted).
    pub const CONNS_INSERTED: u32 = 10;
    /// Keys the kernel removed from the connection table (close, dup2 over the fd, stale).
    pub const CONNS_REMOVED: u32 = 11;
    /// Connection entries found stale (their pid was reused by a new process, or the process
    /// exec'd since they were opened) and removed on lookup instead of being used.
    pub const CONNS_STALE: u32 = 12;
    /// Transfers on tracked connections through paths whose bytes are not captured
    /// (sendmmsg/recvmmsg, io_uring): a hole is marked in the connection's stream.
    pub const UNHOOKED_TRANSFERS: u32 = 13;
    /// `MSG_PEEK` reads not captured (the bytes are captured when they are really read).
    pub const PEEKS_SKIPPED: u32 = 14;
    /// accept/connect exits whose arguments were no longer in the candidate table (evicted by
    /// newer syscalls, or the syscall began before the probes attached).
    pub const LIFECYCLE_ARGS_MISSING: u32 = 15;
    /// Connections on this host not tracked because their other end is one of the agent's own
    /// sockets (the collector's side of our export, an API server's side of our watch).
    pub const AGENT_MIRRORS_IGNORED: u32 = 16;
    /// Connection entries whose process generation was missing (evicted from its LRU table, or
    /// never stored because the insert failed): treated as stale, never used (missed, not wrong).
    pub const GENERATIONS_MISSING: u32 = 17;
    /// Data syscalls whose fd was closed and reused by another connection (or file) between
    /// sys_enter and sys_exit: their bytes are not reported under the new connection.
    pub const FD_REUSED_IN_SYSCALL: u32 = 18;
    /// Data syscalls on tracked connections not followed because their process's threads already
    /// held `MAX_INFLIGHT_PER_PROCESS` entries of the tracked table: that connection is marked lost.
    pub const ARGS_PROCESS_QUOTA: u32 = 19;
    /// The agent's own sockets not remembered because their table was full (their other end
    /// may then be captured; the `User-Agent` mark still drops the exchanges).
    pub const AGENT_TABLE_FULL: u32 = 20;
    /// Connections adopted by sniffing HTTP/2 bytes (client preface or a run of valid frames) on
    /// an untracked fd (also counted in `CONNS_SNIFFED`).
    pub const CONNS_SNIFFED_H2: u32 = 21;
    /// Directions of connections whose HTTP/2 frames the kernel started following (preface,
    /// first bytes, adoption or a resync).
    pub const H2_FRAMED: u32 = 22;
    /// HTTP/2 syscalls the walk could not finish (more frames or iovecs than one walk covers,
    /// an unreadable frame header or iovec): the rest is reported as a gap and the direction
    /// loses its frame cursor until a later syscall resyncs it.
    pub const H2_WALK_LIMIT: u32 = 23;
    /// HTTP/2 frames kept (not DATA payload) that were larger than a record: their tail is a gap.
    pub const H2_KEPT_TRUNCATED: u32 = 24;
    /// Directions of HTTP/2 connections that lost their frame cursor (a hole in the stream, a
    /// walk limit, an unreadable frame header).
    pub const H2_CURSOR_LOST: u32 = 25;
    /// HTTP/2 DATA payload bytes sent as length-only gaps (included in `BYTES_SKIPPED`).
    pub const H2_DATA_ELIDED_BYTES: u32 = 26;
    /// Frame headers of a framed HTTP/2 direction that are not plausible frames (an HTTP/1
    /// connection adopted on a binary body, or a lost place): the direction is no longer taken
    /// for HTTP/2 (the syscall's bytes from there on are captured as usual, or sent as a gap).
    pub const H2_IMPLAUSIBLE_FRAME: u32 = 27;
    /// Plaintext records the OpenSSL uprobes sent (`DATA_FLAG_TLS`).
    pub const TLS_RECORDS: u32 = 28;
    /// OpenSSL calls that moved plaintext for an `SSL*` whose socket is unknown (no read/write
    /// syscall on a tracked connection inside any of its calls yet, or a memory BIO as Node.js
    /// uses): the plaintext is lost.
    pub const TLS_NO_SOCKET: u32 = 29;
    /// OpenSSL calls whose socket is not a tracked connection (opened before the agent, filtered).
    pub const TLS_UNTRACKED: u32 = 30;
    /// OpenSSL calls that touched two tracked connections (no fd is guessed: plaintext lost).
    pub const TLS_AMBIGUOUS_FD: u32 = 31;
    /// OpenSSL calls not followed because the per-thread call table was full.
    pub const TLS_CALLS_TABLE_FULL: u32 = 32;
    /// `SSL_read_ex`/`SSL_write_ex` whose size out-pointer could not be read (plaintext lost).
    pub const TLS_SIZE_UNREADABLE: u32 = 33;
    /// Go crypto/tls calls on a `tls.Conn` whose `net.Conn` is not a `*net.TCPConn` (wrapped
    /// or custom connections): their plaintext is not captured.
    pub const GO_TLS_NOT_TCP: u32 = 34;
    /// Go crypto/tls calls whose receiver could not be followed to its socket (`tls.Conn` ->
    /// `net.Conn` -> `netFD` -> `Sysfd` unreadable): not captured.
    pub const GO_TLS_UNREADABLE: u32 = 35;
    /// Go crypto/tls calls on a socket the connection table does not track (port filter, or
    /// opened before the agent and never adopted): not captured.
    pub const GO_TLS_UNTRACKED: u32 = 36;
    /// Go crypto/tls calls not followed because the per-goroutine call table was full: the
    /// connection is marked lost.
    pub const GO_TLS_CALLS_FULL: u32 = 37;
    /// Go crypto/tls uprobes that fired without a layout for their binary (attach cookie).
    pub const GO_TLS_NO_LAYOUT: u32 = 38;
    /// Memory-BIO `SSL*`s (Node.js) bound to their socket by the ciphertext write that
    /// followed an `SSL_write` on the same thread (see `tracer-ebpf/src/tls.rs`, "Memory BIOs").
    pub const TLS_BOUND_BY_WRITE: u32 = 39;
    /// Memory-BIO `SSL*`s bound to their socket by the ciphertext read that preceded an
    /// `SSL_read` on the same thread.
    pub const TLS_BOUND_BY_READ: u32 = 40;
    /// Plaintext records of memory-BIO `SSL*`s dropped because the observed order did not
    /// prove their socket (another syscall, another `SSL*`, a write that is no TLS record of
    /// the plaintext's size, a socket already bound to another `SSL*`): never guessed.
    pub const TLS_BINDING_REFUSED: u32 = 41;
    /// Held `SSL_write` plaintext (waiting for its ciphertext write) evicted from the table
    /// before its socket was known: lost.
    pub const TLS_HELD_EVICTED: u32 = 42;
    /// OpenSSL calls inside which a syscall on a tracked connection was not taken as the
    /// `SSL*`'s socket (a callback of the application inside the call: the connection is bound
    /// to another `SSL*`, or carries another library's plaintext, or the bytes moved were no TLS
    /// record): the call is attributed as if it made no syscall, never to that connection.
    pub const TLS_NESTED_REFUSED: u32 = 43;
    /// Processes that exec'd or mapped an executable file while `PROCESS_CHANGES` was full:
    /// userspace cannot tell which, and its discovery reads every process again.
    pub const PROCESS_CHANGES_FULL: u32 = 44;
    /// Accepts without a peer address (`accept4(fd, NULL, NULL)`, as Node.js calls it, or an
    /// accept already blocked when the probes attached) whose endpoints the kernel could not
    /// read from the new socket (the kernel's BTF lacked an offset of [`SockOffsets`], a read
    /// failed, the fd was no socket): tracked with unknown endpoints, which userspace reads from
    /// `/proc` (and drops the exchanges when the fd is gone by then).
    pub const ACCEPT_ENDPOINTS_UNKNOWN: u32 = 45;
    /// Number of counters.
    pub const COUNT: u32 = 46;
}

/// A tracepoint program of the eBPF object: its name in the object (the function's name in
/// `tracer-ebpf/src/main.rs`) and the tracepoint userspace attaches it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointProgram {
    pub name: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// Attached when the kernel has the tracepoint; a missing one is logged and counted, not
    /// fatal.
    pub optional: bool,
}

macro_rules! tracepoints {
    ($($category:literal : $name:ident $(optional $optional:tt)?),+ $(,)?) => {
        &[$(TracepointProgram {
            name: stringify!($name),
            category: $category,
            tracepoint: stringify!($name),
            optional: tracepoints!(@optional $($optional)?),
        }),+]
    };
    (@optional) => { false };
    (@optional $flag:tt) => { true };
}

/// Every program of the eBPF object, the one list both sides follow: userspace attaches exactly
/// these and refuses an object whose programs differ (a program added on one side only). The
/// function in `tracer-ebpf/src/main.rs` has the tracepoint's name.
pub const TRACEPOINT_PROGRAMS: &[TracepointProgram] = tracepoints![
    "syscalls": sys_enter_accept,
    "syscalls": sys_exit_accept,
    "syscalls": sys_enter_accept4,
    "syscalls": sys_exit_accept4,
    "syscalls": sys_enter_connect,
    "syscalls": sys_exit_connect,
    "syscalls": sys_enter_close,
    "syscalls": sys_enter_read,
    "syscalls": sys_exit_read,
    "syscalls": sys_enter_write,
    "syscalls": sys_exit_write,
    "syscalls": sys_enter_readv,
    "syscalls": sys_exit_readv,
    "syscalls": sys_enter_writev,
    "syscalls": sys_exit_writev,
    "syscalls": sys_enter_recvfrom,
    "syscalls": sys_exit_recvfrom,
    "syscalls": sys_enter_sendto,
    "syscalls": sys_exit_sendto,
    "syscalls": sys_enter_recvmsg,
    "syscalls": sys_exit_recvmsg,
    "syscalls": sys_enter_sendmsg,
    "syscalls": sys_exit_sendmsg,
    "syscalls": sys_enter_sendfile64,
    "syscalls": sys_exit_sendfile64,
    "sock": inet_sock_set_state,
    "task": task_newtask,
    "sched": sched_process_exit,
    "sched": sched_process_exec,
    "syscalls": sys_enter_mmap,
    "syscalls": sys_enter_dup2,
    "syscalls": sys_enter_dup3,
    "syscalls": sys_enter_splice,
    "syscalls": sys_exit_splice,
    "syscalls": sys_enter_sendmmsg,
    "syscalls": sys_enter_recvmmsg,
    // A kernel without io_uring has no io_uring:io_uring_file_get; close_range exists since 5.9.
    "io_uring": io_uring_file_get optional!,
    "syscalls": sys_enter_close_range optional!,
];

/// A uprobe program on a TLS library function: the function's name in `tracer-ebpf/src/main.rs`,
/// the symbol it attaches to, and whether it runs at the function's return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UprobeProgram {
    pub name: &'static str,
    pub symbol: &'static str,
    pub ret: bool,
}

/// The OpenSSL uprobes (libssl.so.3 / .so.1.1, or a binary exporting the symbols): an entry
/// program per function, and one return program attached to all of them. `SSL_do_handshake`
/// sends nothing: it learns the `SSL*`'s socket before the first data call.
pub const OPENSSL_UPROBE_PROGRAMS: &[UprobeProgram] = &[
    UprobeProgram {
        name: "ssl_write_enter",
        symbol: "SSL_write",
        ret: false,
    },
    UprobeProgram {
        name: "ssl_write_ex_enter",
        symbol: "SSL_write_ex",
        ret: false,
    },
    UprobeProgram {
        name: "ssl_read_enter",
        symbol: "SSL_read",
        ret: false,
    },
    UprobeProgram {
        name: "ssl_read_ex_enter",
        symbol: "SSL_read_ex",
        ret: false,
    },
    UprobeProgram {
        name: "ssl_return",
        symbol: "SSL_write",
        ret: true,
    },
    UprobeProgram {
        name: "ssl_return",
        symbol: "SSL_write_ex",
        ret: true,
    },
    UprobeProgram {
        name: "ssl_return",
        symbol: "SSL_read",
        ret: true,
    },
    UprobeProgram {
        name: "ssl_return",
        symbol: "SSL_read_ex",
        ret: true,
    },
    UprobeProgram {
        name: "ssl_handshake_enter",
        symbol: "SSL_do_handshake",
        ret: false,
    },
    UprobeProgram {
        name: "ssl_free_enter",
        symbol: "SSL_free",
        ret: false,
    },
    UprobeProgram {
        name: "ssl_return",
        symbol: "SSL_do_handshake",
        ret: true,
    },
    // Where OpenSSL links in (Node.js): the AEAD tag of each record an `SSL_write` writes into
    // its BIO, to bind a memory BIO's ciphertext write by content. Optional: a libssl imports
    // them from libcrypto (and memory-BIO `SSL_write`s there are never bound by write).
    UprobeProgram {
        name: "bio_write_enter",
        symbol: "BIO_write",
        ret: false,
    },
    UprobeProgram {
        name: "bio_write_enter",
        symbol: "BIO_write_ex",
        ret: false,
    },
];

/// Whether a failure to attach `p` leaves the OpenSSL copy covered (older OpenSSL lacks the
/// `_ex` variants; a libssl imports `BIO_write` from libcrypto).
pub fn openssl_uprobe_optional(p: &UprobeProgram) -> bool {
    p.symbol.ends_with("_ex") || p.symbol == "SSL_do_handshake" || p.symbol.starts_with("BIO_")
}

/// OpenSSL calls in flight at once (one per thread inside `SSL_read`/`SSL_write`).
pub const MAX_SSL_CALLS: u32 = 16384;
/// `SSL*` -> socket fd remembered (LRU) for calls that make no syscall.
pub const MAX_SSL_FDS: u32 = 65536;
/// `SSL_write` plaintext held (LRU) until the ciphertext write that binds its memory-BIO `SSL*`
/// to a socket (one per thread at most).
pub const MAX_TLS_HELD: u32 = 512;
/// Bytes of one held `SSL_write` plaintext captured at most (request heads fit).
pub const TLS_HELD_CAPTURE: usize = 4096;

/// Names of the eBPF object's maps that userspace opens (the `static` names in
/// `tracer-ebpf/src/maps.rs`).
pub mod map_name {
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const CONNS: &str = "CONNS";
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    pub const NS_FILTER_PIDS: &str = "NS_FILTER_PIDS";
    pub const NS_PIDS: &str = "NS_PIDS";
    pub const FILTER_PORTS: &str = "FILTER_PORTS";
    pub const AGENT_SOCKS: &str = "AGENT_SOCKS";
    pub const AGENT_ENDPOINTS: &str = "AGENT_ENDPOINTS";
    /// The program array holding the HTTP/2 frame walker (`H2_WALKER_PROGRAM`).
    pub const H2_WALKER: &str = "H2_WALKER";
    /// Processes (host tgids) that exec'd or mapped an executable file since userspace last
    /// drained it ([`process_change`]): the TLS discovery reads only those again.
    pub const PROCESS_CHANGES: &str = "PROCESS_CHANGES";
}

/// Entries of `PROCESS_CHANGES` (distinct processes changed between two drains by userspace,
/// every 500 ms): beyond, a change is counted (`counter::PROCESS_CHANGES_FULL`) and userspace
/// reads every process again.
pub const MAX_PROCESS_CHANGES: u32 = 4096;

/// What a `PROCESS_CHANGES` value says of its process (bits).
pub mod process_change {
    /// It exec'd (a new executable).
    pub const EXEC: u32 = 1;
    /// It mapped a file executable (a library loaded at start-up or by `dlopen`).
    pub const EXEC_MAPPING: u32 = 2;
}

/// The one program of the object that is not a tracepoint attachment: the HTTP/2 frame walker,
/// loaded into `map_name::H2_WALKER` and tail-called by the data programs (the function of that
/// name in `tracer-ebpf/src/main.rs`).
pub const H2_WALKER_PROGRAM: &str = "h2_walk";

/// The Go crypto/tls uprobe programs (functions of these names in `tracer-ebpf/src/main.rs`,
/// in `tracer-ebpf/src/gotls.rs`): attached by userspace to Go binaries it finds
/// (`capture::gotls`), at the entry and at every return instruction of
/// `crypto/tls.(*Conn).Read` and `.Write` (and the entry of `handshakeContext`, so that the
/// handshake's ciphertext is not sent either), with the binary's `GO_TLS_BINARIES` slot as the
/// attach cookie.
pub mod go_tls_program {
    pub const READ_ENTRY: &str = "go_tls_read_entry";
    pub const READ_RETURN: &str = "go_tls_read_return";
    pub const WRITE_ENTRY: &str = "go_tls_write_entry";
    pub const WRITE_RETURN: &str = "go_tls_write_return";
    pub const HANDSHAKE_ENTRY: &str = "go_tls_handshake_entry";
    pub const ALL: &[&str] = &[
        READ_ENTRY,
        READ_RETURN,
        WRITE_ENTRY,
        WRITE_RETURN,
        HANDSHAKE_ENTRY,
    ];
}

/// Name of the table of Go binaries' layouts (`GoTlsBinary`, indexed by attach cookie).
pub const GO_TLS_BINARIES_MAP: &str = "GO_TLS_BINARIES";
/// Name of the table of Go crypto/tls calls in flight (per goroutine), swept by userspace.
pub const GO_TLS_CALLS_MAP: &str = "GO_TLS_CALLS";
/// Slots of `GO_TLS_BINARIES`: distinct Go binaries (device, inode) the agent attaches to.
pub const MAX_GO_TLS_BINARIES: u32 = 256;
/// Entries of the per-goroutine table of Go crypto/tls calls in flight.
pub const MAX_GO_TLS_CALLS: u32 = 16384;

/// What the Go crypto/tls uprobes need of one binary to go from a `*tls.Conn` to its fd
/// (offsets from the binary's Go release, see `capture::gotls::layout`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsBinary {
    /// Non-zero once userspace filled the slot.
    pub valid: u32,
    /// The type hash of `*net.TCPConn` (`runtime._type.hash`, copied into every itab at +16):
    /// a `net.Conn` whose itab carries another hash is not followed.
    pub tcp_conn_hash: u32,
    /// Offset of `conn net.Conn` (an interface: itab, data) in `crypto/tls.Conn`.
    pub tls_conn_conn: u64,
    /// Offset of `fd *netFD` in `net.TCPConn` (its embedded `net.conn`).
    pub tcp_conn_fd: u64,
    /// Offset of `pfd.Sysfd` in `net.netFD`.
    pub netfd_sysfd: u64,
}

/// Key of a Go crypto/tls call in flight: the goroutine (its `g` pointer, R14 on amd64), as a
/// blocked Read resumes on another OS thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsCallKey {
    pub g: u64,
    pub tgid: u32,
    /// `syscall::GO_TLS_READ` or `GO_TLS_WRITE`.
    pub op: u32,
}

/// A Go crypto/tls call in flight, from its entry to its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsCall {
    /// The `[]byte` argument.
    pub buf: u64,
    pub len: u64,
    pub conn_id: u64,
    pub enter_ns: u64,
    pub fd: i32,
    /// The connection's `role::*` at entry.
    pub role: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<GoTlsBinary>() == 32);
const _: () = assert!(core::mem::size_of::<GoTlsCallKey>() == 16);
const _: () = assert!(core::mem::size_of::<GoTlsCall>() == 40);

/// Index of the single configuration entry.
pub const CONFIG_KEY: u32 = 0;

/// Agent configuration read by every program (an array map with one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The agent's own process id as the kernel sees it (host pid namespace): never traced (its
    /// OTLP traffic must not become spans). 0 until known (see `agent_ns_tgid`).
    pub agent_tgid: u32,
    /// Payload bytes copied per syscall, at most `MAX_CAPTURE`.
    pub capture_bytes: u32,
    /// Non-zero: only processes in the pid filter set are traced.
    pub filter_pids: u8,
    /// Non-zero: only connections whose local or peer port is in the port set are traced.
    pub filter_ports: u8,
    /// Non-zero: children forked by a traced pid join the pid filter set.
    pub follow_forks: u8,
    /// Non-zero: untracked fds whose first bytes look like HTTP are adopted.
    pub sniff_untracked: u8,
    /// Offset of the new task's `pid` in the `task:task_newtask` record (read from tracefs).
    pub fork_child_pid_offset: u32,
    /// Offset of `clone_flags` in the `task:task_newtask` record (read from tracefs): a new
    /// thread (`CLONE_THREAD`) never joins the pid filter set, only new processes do.
    pub fork_clone_flags_offset: u32,
    /// Offset of `fd` in the `io_uring:io_uring_file_get` record (read from tracefs); 0 when the
    /// tracepoint is missing (a kernel without io_uring).
    pub io_uring_fd_offset: u32,
    /// The agent's pid in its own pid namespace, when that is not the host's (a container
    /// without hostPID): the kernel learns `agent_tgid` (a host tgid) from the first task of
    /// that namespace whose namespaced tgid this is, and translates `NS_FILTER_PIDS` through the
    /// same namespace. 0 when the agent runs in the host's pid namespace.
    pub agent_ns_tgid: u32,
    pub _pad: u32,
    /// Device (kernel encoding) and inode of the agent's pid namespace (`/proc/self/ns/pid`).
    pub agent_pidns_dev: u64,
    pub agent_pidns_ino: u64,
}

/// The header every ring-buffer record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of `kind::*`.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The file descriptor of the connection in `tgid`.
    pub fd: i32,
    /// Unique per connection: survives fd reuse (a new connection on the same fd gets a new id).
    pub conn_id: u64,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) at syscall exit.
    pub ts_ns: u64,
}

/// A connection became tracked: accepted, connected, or adopted by sniffing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnOpenEvent {
    pub header: EventHeader,
    /// One of `role::*`.
    pub role: u8,
    pub _pad: u8,
    /// One of [`AddressFamily`] (0 when unknown).
    pub family: u16,
    /// Host byte order; 0 when unknown.
    pub local_port: u16,
    /// Host byte order; 0 when unknown.
    pub peer_port: u16,
    /// IPv4 in the first 4 bytes when family is AF_INET; IPv6 otherwise; zero when unknown.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    /// The opening thread's name (`comm`, NUL-padded): names the process when it exits before
    /// the agent reads its `/proc` (a short-lived client on a busy machine).
    pub comm: [u8; 16],
    /// Inode of the connection's network namespace (what `/proc/<pid>/ns/net` names): the
    /// socket's own when the kernel knows it, else the opening thread's; 0 when unknown (the
    /// kernel's BTF lacked a field of [`NetnsOffsets`]): userspace then reads `/proc`.
    pub netns: u32,
    pub _pad2: u32,
}

/// Where the running kernel keeps a socket's and a task's network namespace inode, in bytes,
/// read from its BTF at load time (the tracepoint programs have no CO-RE relocations) and given
/// to the programs as the global `NETNS_OFFSETS`. A path whose bit is not in `known` is not read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsOffsets {
    /// `struct sock` to `__sk_common.skc_net.net` (a `struct net *`).
    pub sock_net: u32,
    /// `struct net` to `ns.inum` (a u32).
    pub net_inum: u32,
    /// `struct task_struct` to `nsproxy` (a `struct nsproxy *`).
    pub task_nsproxy: u32,
    /// `struct nsproxy` to `net_ns` (a `struct net *`).
    pub nsproxy_net: u32,
    /// `netns_known::*` bits.
    pub known: u32,
}

/// Bits of [`NetnsOffsets::known`].
pub mod netns_known {
    /// `sock_net` and `net_inum` are valid: a socket's namespace can be read.
    pub const SOCK: u32 = 1;
    /// `task_nsproxy`, `nsproxy_net` and `net_inum` are valid: a thread's namespace can be read.
    pub const TASK: u32 = 2;
}

/// Where the running kernel keeps what leads from a file descriptor of the current task to its
/// socket's endpoints, in bytes, read from its BTF at load time and given to the programs as the
/// global `SOCK_OFFSETS` (as [`NetnsOffsets`]). An accept without a peer address finds its new
/// socket this way. A path whose bit is not in `known` is not read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `struct task_struct` to `files` (a `struct files_struct *`).
    pub task_files: u32,
    /// `struct files_struct` to `fdt` (a `struct fdtable *`).
    pub files_fdt: u32,
    /// `struct fdtable` to `max_fds` (a u32).
    pub fdt_max_fds: u32,
    /// `struct fdtable` to `fd` (a `struct file **`).
    pub fdt_fd: u32,
    /// `struct file` to `private_data` (a `struct socket *` for a socket's file).
    pub file_private_data: u32,
    /// `struct socket` to `file` (back to its `struct file *`: proves the file is a socket's).
    pub socket_file: u32,
    /// `struct socket` to `sk` (a `struct sock *`).
    pub socket_sk: u32,
    /// `struct sock` to `__sk_common.skc_family` (a u16).
    pub skc_family: u32,
    /// `struct sock` to `__sk_common.skc_num` (the local port, a u16 in host order).
    pub skc_num: u32,
    /// `struct sock` to `__sk_common.skc_dport` (the peer port, a u16 in network order).
    pub skc_dport: u32,
    /// `struct sock` to `__sk_common.skc_rcv_saddr` (the local IPv4 address, 4 bytes).
    pub skc_rcv_saddr: u32,
    /// `struct sock` to `__sk_common.skc_daddr` (the peer IPv4 address, 4 bytes).
    pub skc_daddr: u32,
    /// `struct sock` to `__sk_common.skc_v6_rcv_saddr` (the local IPv6 address, 16 bytes).
    pub skc_v6_rcv_saddr: u32,
    /// `struct sock` to `__sk_common.skc_v6_daddr` (the peer IPv6 address, 16 bytes).
    pub skc_v6_daddr: u32,
    /// `sock_known::*` bits.
    pub known: u32,
}

/// Bits of [`SockOffsets::known`].
pub mod sock_known {
    /// The fd path (`task_files` to `socket_sk`) is valid: an fd's `struct sock` can be found.
    pub const FD: u32 = 1;
    /// `skc_family`, the ports and the IPv4 addresses are valid.
    pub const INET: u32 = 2;
    /// The IPv6 addresses are valid (a kernel without IPv6 has none: its sockets are IPv4).
    pub const INET6: u32 = 4;
}

/// Fixed part of a data record; `captured_len` payload bytes follow it in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataEventHeader {
    pub header: EventHeader,
    /// One of `direction::*`.
    pub direction: u8,
    /// One of `syscall::*`.
    pub syscall: u8,
    /// One of `role::*`, as the kernel knows it.
    pub role: u8,
    /// `DATA_FLAG_*` bits.
    pub flags: u8,
    /// Bytes this record stands for in the stream (what the syscall transferred for this segment).
    pub true_len: u32,
    /// Bytes copied after this header (a prefix of the segment); `true_len - captured_len` is a gap.
    pub captured_len: u32,
    /// Nanoseconds from syscall enter to exit (saturating): `ts_ns - syscall_ns` is when the
    /// syscall started, the causal time of bytes written.
    pub syscall_ns: u32,
}

/// A data record as built in per-CPU scratch memory; only `captured_len` bytes of `data` are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub meta: DataEventHeader,
    pub data: [u8; MAX_CAPTURE],
}

/// The connection was closed by the traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCloseEvent {
    pub header: EventHeader,
}

/// Per-connection state in the kernel's connection table, keyed by `conn_key(tgid, fd)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    pub conn_id: u64,
    /// Kernel socket address (`struct sock *`) of a connected socket, 0 when unknown.
    pub sk: u64,
    pub role: u8,
    /// Non-zero once userspace has been sent both endpoints of this connection.
    pub endpoints_sent: u8,
    /// Non-zero when a record of this connection was lost since the last one sent
    /// (`LOST_UNTIL_CLOSE`: every record says so, for good).
    pub lost: u8,
    /// Non-zero (a `tls::*` library) once a TLS library uprobe captured plaintext of this
    /// connection: the data programs send none of its ciphertext from then on (userspace frames
    /// the plaintext records instead, see `DATA_FLAG_TLS`).
    pub tls: u8,
    /// The generation epoch (kernel side's `GENERATION_EPOCH`, plus one) at which the entry was
    /// last found live; 0: never. While the epoch is unchanged no generation changed anywhere,
    /// so the entry is still live without looking its process's generation up again.
    pub generation_checked: u32,
    /// CLOCK_MONOTONIC nanoseconds when the entry was made: an entry older than its process's
    /// generation (the process was born or exec'd later: pid reuse, CLOEXEC) is stale.
    pub opened_ns: u64,
    /// HTTP/2 frame cursor per direction (indexed by `direction::*`), valid while the
    /// direction's `h2::FRAMED` bit is set and `h2_holes_seen` of it equals `h2_holes`.
    pub h2: [H2Cursor; 2],
    /// `h2::*` bits per direction (indexed by `direction::*`). Each byte is written only by
    /// syscalls of its own direction: the two directions may be walked on two CPUs at once.
    pub h2_flags: [u8; 2],
    /// Holes in the stream (bytes moved unseen), bumped by whoever finds one (any thread).
    pub h2_holes: u8,
    /// `h2_holes` when each direction last walked its frames: a different value now means a
    /// hole came since and that direction's cursor is lost.
    pub h2_holes_seen: [u8; 2],
    pub _pad2: [u8; 3],
}

/// Where the last syscall of one direction left the HTTP/2 frame stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Cursor {
    /// Payload bytes left in the current frame (`h2::LEFT_ELIDE` set: a DATA payload that is
    /// sent as a gap).
    pub left: u32,
    /// The first bytes of a frame header cut by the end of a syscall (big-endian, the latest
    /// byte lowest), `head_len` of them (0: the next byte starts a frame).
    pub head: u32,
    pub head_len: u8,
    pub _pad: [u8; 3],
}

/// HTTP/2 (RFC 9113) facts the kernel's adoption sniff and frame-aware capture share. The
/// checks are pure functions so that they are unit-tested here and run unchanged in the kernel.
pub mod h2 {
    /// The client connection preface.
    pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const FRAME_HEADER_LEN: u64 = 9;
    /// `ConnState::h2_flags[d]`: the connection speaks HTTP/2 (preface or adopted by its
    /// frames) as far as direction d knows (either direction's bit says so).
    pub const CONN: u8 = 1;
    /// `ConnState::h2_flags[d]`: the cursor of direction d is valid.
    pub const FRAMED: u8 = 2;
    /// `ConnState::h2_flags[d]`: direction d has carried bytes.
    pub const STARTED: u8 = 8;
    /// `H2Cursor::left` bit: the rest of the frame is a DATA payload sent as a gap.
    pub const LEFT_ELIDE: u32 = 1 << 31;
    /// DATA payloads of at least this many bytes are sent as gaps (smaller ones are kept: a gap
    /// record would cost more than the bytes).
    pub const ELIDE_MIN: u32 = 256;
    /// Frames the adoption sniff checks at most.
    pub const SNIFF_FRAMES: u32 = 4;

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;

    /// Payload length and type from the first 4 bytes of a frame header.
    #[inline(always)]
    pub const fn length_and_type(head4: u32) -> (u32, u8) {
        (head4 >> 8, head4 as u8)
    }

    /// The payload length of a frame whose 9-byte header is `h`, when the header is one a
    /// conforming peer sends (known type, flags that type defines, reserved bit clear, the
    /// stream-id and fixed-length rules); None otherwise. Strict on purpose: it decides whether
    /// unknown bytes are HTTP/2 at all.
    #[inline(always)]
    pub fn plausible_frame(h: &[u8; 9]) -> Option<u32> {
        let len = ((h[0] as u32) << 16) | ((h[1] as u32) << 8) | h[2] as u32;
        let (ty, flags) = (h[3], h[4]);
        if h[5] & 0x80 != 0 {
            return None;
        }
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        // Bytes the PADDED flag's pad length and HEADERS' PRIORITY fields take in the payload.
        let pad = (flags >> 3) as u32 & 1;
        let priority = if flags & 0x20 != 0 { 5 } else { 0 };
        let ok = match ty {
            DATA => stream != 0 && flags & !0x09 == 0 && len >= pad,
            HEADERS => stream != 0 && flags & !0x2d == 0 && len >= pad + priority,
            PRIORITY => stream != 0 && len == 5 && flags == 0,
            RST_STREAM => stream != 0 && len == 4 && flags == 0,
            SETTINGS => {
                stream == 0 && len.is_multiple_of(6) && (flags == 0 || (flags == 1 && len == 0))
            }
            PUSH_PROMISE => stream != 0 && len >= pad + 4 && flags & !0x0c == 0,
            PING => stream == 0 && len == 8 && flags & !0x01 == 0,
            GOAWAY => stream == 0 && len >= 8 && flags == 0,
            WINDOW_UPDATE => len == 4 && flags == 0,
            CONTINUATION => stream != 0 && flags & !0x04 == 0,
            _ => false,
        };
        if ok { Some(len) } else { None }
    }

    /// Whether `h` starts like a TLS record (content type 20-24, version 3.x): never HTTP/2.
    #[inline(always)]
    pub fn looks_like_tls(h: &[u8; 9]) -> bool {
        (0x14..=0x18).contains(&h[0]) && h[1] == 0x03 && h[2] <= 0x04
    }

    /// One step of the adoption sniff: the frame header `h` found `offset` bytes into a transfer.
    /// Returns where the frame ends (possibly past the transfer: a read often ends inside a
    /// frame), or None when `h` is not a plausible frame header.
    #[inline(always)]
    pub fn sniff_step(h: &[u8; 9], offset: u64) -> Option<u64> {
        if offset == 0 && looks_like_tls(h) {
            return None;
        }
        let len = plausible_frame(h)? as u64;
        Some(offset + FRAME_HEADER_LEN + len)
    }

    /// The sniff's verdict after `frames` plausible frame headers, the last frame ending at `end`
    /// of `total` bytes: at least two in a row (the last one may reach past the transfer), or
    /// exactly one that is the whole transfer.
    #[inline(always)]
    pub const fn sniff_verdict(frames: u32, end: u64, total: u64) -> bool {
        frames >= 2 || (frames == 1 && end == total)
    }

    /// The adoption sniff over a contiguous buffer (the kernel runs the same steps on user
    /// memory; this form is for tests and userspace).
    pub fn sniff(bytes: &[u8], total: u64) -> bool {
        if bytes.len() >= PREFACE.len() && bytes[..PREFACE.len()] == PREFACE[..] {
            return true;
        }
        let (mut offset, mut frames) = (0u64, 0u32);
        while frames < SNIFF_FRAMES && offset < total {
            let start = offset as usize;
            let Some(h) = bytes.get(start..start + 9) else {
                break;
            };
            let mut head = [0u8; 9];
            head.copy_from_slice(h);
            match sniff_step(&head, offset) {
                Some(end) => {
                    offset = end;
                    frames += 1;
                }
                None => return false,
            }
        }
        sniff_verdict(frames, offset, total)
    }
}

/// Data record flag: records of this connection were lost before this one (ring buffer full);
/// userspace must not pair across the hole.
pub const DATA_FLAG_LOSS_BEFORE: u8 = 1;
/// Data record flag: the payload is plaintext read at a TLS library's boundary by a uprobe (the
/// record's `syscall` says which library call), in the same stream positions the application
/// saw. Userspace frames these records and drops the connection's ciphertext records.
pub const DATA_FLAG_TLS: u8 = 2;

/// Key of the connection table: process id in the high half, fd in the low half.
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

pub const IDENTITY_LEN: usize = core::mem::size_of::<IdentityEvent>();
const _: () = assert!(IDENTITY_LEN == 80);

/// The identity the kernel gave a request when `--context-propagation tcp-options` is on: sent
/// just before the data record of the syscall that carries the request's first byte. Userspace
/// matches it to the request whose first byte is at `offset` of that direction of the
/// connection (never by request order) and exports the span with exactly these ids, the ones
/// the TCP option carried (CLIENT) or that children were given (SERVER).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityEvent {
    pub header: EventHeader,
    /// One of `direction::*`: ingress for a SERVER request, egress for a CLIENT request.
    pub direction: u8,
    /// `propagation::IDENTITY_*` bits.
    pub flags: u8,
    pub _pad: [u8; 6],
    /// Stream offset of the request's first byte in that direction (bytes the traced process
    /// moved on the connection before it, counted from the connection's start).
    pub offset: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Valid when `propagation::IDENTITY_HAS_PARENT` is set.
    pub parent_span_id: [u8; 8],
}

/// Cross-node context propagation in TCP header options (`--context-propagation tcp-options`):
/// the option's layout, the kernel tables' names and the counters of the `sock_ops` program.
///
/// The option is an RFC 6994 experimental option, 28 bytes (all that is left of the 40 option
/// bytes once timestamps take 12):
///
/// ```text
/// kind=253 | len=28 | ExID (2 bytes, big-endian) | trace id (16 bytes) | span id (8 bytes)
/// ```
///
/// The ExID says whether the context is sampled (`EXID_SAMPLED` / `EXID_NOT_SAMPLED`): there is
/// no room for a flags byte. It rides on the segment whose sequence range starts with the
/// request's first byte; the receiver keys it by that byte's stream offset (segment sequence
/// minus the connection's initial sequence + 1).
/// The kernel's bounded `traceparent` scan of a SERVER request's head (propagation on).
pub mod traceparent_scan;

pub mod propagation {
    /// RFC 6994 experimental option kind.
    pub const OPTION_KIND: u8 = 253;
    /// Bytes of the whole option (kind, length, ExID, trace id, span id).
    pub const OPTION_LEN: u8 = 28;
    /// ExID of a sampled context.
    pub const EXID_SAMPLED: u16 = 0x7c54;
    /// ExID of a context that is not sampled.
    pub const EXID_NOT_SAMPLED: u16 = 0x7c55;
    /// `IdentityEvent::flags`: the span has a parent (`parent_span_id`).
    pub const IDENTITY_HAS_PARENT: u8 = 1;
    /// `IdentityEvent::flags`: the parent came in a TCP option (a SERVER request).
    pub const IDENTITY_FROM_OPTION: u8 = 2;
    /// `IdentityEvent::flags`: the request is a CLIENT request (egress).
    pub const IDENTITY_CLIENT: u8 = 4;

    /// The `sock_ops` program (a function of this name in `tracer-ebpf/src/main.rs`), loaded
    /// and attached to the cgroup v2 root only with propagation on.
    pub const SOCK_OPS_PROGRAM: &str = "tcp_context_options";
    /// Processes whose threads serve one request at a time (userspace fills it from
    /// `correlate::runtime`): only their threads give a CLIENT request a parent in the kernel.
    pub const DEDICATED_THREADS_MAP: &str = "PROP_DEDICATED";
    /// The per-CPU counters below.
    pub const COUNTERS_MAP: &str = "PROP_COUNTERS";
    /// Entries of the table of contexts received and not yet claimed (LRU).
    pub const MAX_RECEIVED: u32 = 16384;
    /// Entries of the table of contexts waiting for their segment (LRU).
    pub const MAX_PENDING: u32 = 16384;
    /// Entries of the tables of connections (stream baselines, stream positions; LRU).
    pub const MAX_FLOWS: u32 = 65536;
    /// Entries of `DEDICATED_THREADS_MAP`.
    pub const MAX_DEDICATED: u32 = 4096;
    /// `DEDICATED_THREADS_MAP` values. Userspace inserts `DEDICATED_CANDIDATE` (only where no
    /// entry exists) for a process whose runtime is not known to multiplex; the kernel counts
    /// its requests answered by the thread that read them, with no thread touching another
    /// server-side connection meanwhile, up to `DEDICATED_VERIFIED`, from which on (only) its
    /// threads give CLIENT requests a parent. The first violation seen (a thread leaving a
    /// request unanswered for another server-side connection, a request answered on another
    /// thread, a pipelined request) sets `DEDICATED_REVOKED` for the process's lifetime.
    pub const DEDICATED_CANDIDATE: u8 = 1;
    pub const DEDICATED_VERIFIED: u8 = 5;
    pub const DEDICATED_REVOKED: u8 = 0xff;

    /// Indices of `COUNTERS_MAP`.
    pub mod counter {
        /// Options written on an outgoing segment.
        pub const OPTIONS_WRITTEN: u32 = 0;
        /// Valid options received (stored for the SERVER request at their offset).
        pub const OPTIONS_RECEIVED: u32 = 1;
        /// SERVER requests whose identity came from a received option.
        pub const CONTEXTS_ADOPTED: u32 = 2;
        /// Segments that should have carried an option but had no room (sent without it).
        pub const NO_SPACE: u32 = 3;
        /// Options of our kind and ExID with a bad length or zero ids (ignored).
        pub const MALFORMED: u32 = 4;
        /// Pending contexts dropped because a segment past the request's first byte went out
        /// without the option (the request did not start a segment).
        pub const SEGMENT_MISSED: u32 = 5;
        /// CLIENT requests the kernel gave a parent (the thread's one SERVER request).
        pub const CLIENT_CONTEXTS: u32 = 6;
        /// CLIENT requests sent as a new trace: the thread served none or several at once.
        pub const CLIENT_UNLINKED: u32 = 7;
        /// CLIENT requests the kernel left to userspace: their thread serves one request but
        /// the process is not known to serve one per thread (not yet classified, or a
        /// multiplexing runtime such as Go or Node): no identity, no option.
        pub const CLIENT_UNDECIDED: u32 = 8;
        /// Processes whose threads were seen not to serve one request at a time (see
        /// `DEDICATED_REVOKED`): the kernel decides no CLIENT parent for them any more.
        pub const PROCESSES_REVOKED: u32 = 9;
        /// Requests on a connection whose stream positions the kernel no longer knows (bytes
        /// moved by a transfer it does not see: io_uring, recvmmsg/sendmmsg): a SERVER request
        /// adopts no received context, a CLIENT request sends no option.
        pub const OFFSETS_UNKNOWN: u32 = 10;
        pub const COUNT: u32 = 11;
    }
}

pub const EVENT_HEADER_LEN: usize = core::mem::size_of::<EventHeader>();
pub const CONN_OPEN_LEN: usize = core::mem::size_of::<ConnOpenEvent>();
pub const DATA_HEADER_LEN: usize = core::mem::size_of::<DataEventHeader>();
pub const CONN_CLOSE_LEN: usize = core::mem::size_of::<ConnCloseEvent>();

// The layouts are part of the ABI: a change here must be a deliberate one.
const _: () = assert!(EVENT_HEADER_LEN == 32);
const _: () = assert!(CONN_OPEN_LEN == 96);
const _: () = assert!(DATA_HEADER_LEN == 48);
const _: () = assert!(CONN_CLOSE_LEN == 32);
const _: () = assert!(MAX_CAPTURE.is_power_of_two());
const _: () = assert!(core::mem::size_of::<Config>() == 48);
const _: () = assert!(core::mem::size_of::<ConnState>() == 64);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) plain data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::GoTlsBinary {}
    unsafe impl aya::Pod for super::GoTlsCallKey {}
    unsafe impl aya::Pod for super::GoTlsCall {}
    unsafe impl aya::Pod for super::NetnsOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::IdentityEvent {}
}

#[cfg(test)]
mod tests {
    use super::h2;

    fn frame(len: u32, ty: u8, flags: u8, stream: u32) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0x41u8, len as usize));
        f
    }

    fn sniff(bytes: &[u8]) -> bool {
        h2::sniff(bytes, bytes.len() as u64)
    }

    #[test]
    fn the_preface_and_runs_of_frames_are_http2() {
        let mut preface = h2::PREFACE.to_vec();
        preface.extend(frame(18, h2::SETTINGS, 0, 0));
        assert!(sniff(&preface));
        // A server's first write: SETTINGS then WINDOW_UPDATE.
        let mut server = frame(12, h2::SETTINGS, 0, 0);
        server.extend(frame(4, h2::WINDOW_UPDATE, 0, 0));
        assert!(sniff(&server));
        // HEADERS + DATA of a gRPC call, then the same read ending inside the DATA payload.
        let mut call = frame(40, h2::HEADERS, 0x04, 1);
        call.extend(frame(300, h2::DATA, 0x01, 1));
        assert!(sniff(&call));
        assert!(h2::sniff(&call[..100], 100));
        // One frame that is the whole transfer (a SETTINGS ACK, a PING).
        assert!(sniff(&frame(0, h2::SETTINGS, 1, 0)));
        assert!(sniff(&frame(8, h2::PING, 0, 0)));
        // The second header cut off by the end of the buffer: one frame, not the whole.
        let mut cut = frame(8, h2::PING, 1, 0);
        cut.extend_from_slice(&[0, 0, 4]);
        assert!(!h2::sniff(&cut, cut.len() as u64));
    }

    #[test]
    fn frames_breaking_the_rules_are_rejected() {
        let bad = [
            frame(7, h2::SETTINGS, 0, 0),             // not a multiple of 6
            frame(6, h2::SETTINGS, 0, 1),             // on a stream
            frame(6, h2::SETTINGS, 1, 0),             // ACK with a payload
            frame(7, h2::PING, 0, 0),                 // PING is 8
            frame(3, h2::RST_STREAM, 0, 1),           // RST_STREAM is 4
            frame(4, h2::RST_STREAM, 0, 0),           // on stream 0
            frame(4, h2::PRIORITY, 0, 1),             // PRIORITY is 5
            frame(5, h2::WINDOW_UPDATE, 0, 1),        // WINDOW_UPDATE is 4
            frame(4, h2::DATA, 0, 0),                 // DATA on stream 0
            frame(4, h2::DATA, 0x02, 1),              // undefined flag
            frame(4, 10, 0, 1),                       // unknown type
            frame(4, h2::HEADERS, 0x04, 0x8000_0001), // reserved bit
        ];
        for f in bad {
            assert!(!sniff(&f), "{f:02x?}");
        }
        // A frame claiming more bytes than the transfer holds.
        let mut long = frame(100, h2::HEADERS, 0x04, 1);
        long.truncate(50);
        assert!(!sniff(&long));
    }

    #[test]
    fn tls_http1_and_text_are_not_http2() {
        // TLS application data (17 03 03) with a small length reads as a DATA-typed frame of
        // 0x170303 bytes; a handshake record (16 03 01) likewise: both rejected.
        let mut tls = vec![0x17, 0x03, 0x03, 0x00, 0x08, 0, 0, 0, 1];
        tls.extend(std::iter::repeat_n(7u8, 0x17_0303 + 64));
        assert!(!sniff(&tls));
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        hello.extend(std::iter::repeat_n(0u8, 0x16_0301 + 64));
        assert!(!sniff(&hello));
        assert!(!sniff(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!sniff(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!sniff(b"{\"resourceSpans\":[]}"));
    }

    #[test]
    fn random_bytes_are_not_http2() {
        // xorshift: deterministic random buffers of many sizes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut passed = 0;
        for i in 0..50_000u32 {
            let len = 9 + (next() % 4096) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 {
                // Small first length bytes, the likeliest way for noise to pass.
                buf[0] = 0;
                buf[1] = 0;
            }
            passed += u32::from(sniff(&buf));
        }
        assert!(passed == 0, "{passed} random buffers taken for HTTP/2");
    }
}
