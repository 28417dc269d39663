//! Loading, configuring and attaching the eBPF programs; access to their maps (counters, filters,
//! the connection table). Dropping [`Probes`] detaches every program.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::Ordering,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, ProgramArray},
    programs::TracePoint,
};
use tracer_common::{
    Config, ConnState, H2_WALKER_PROGRAM, MAX_CAPTURE, OPENSSL_UPROBE_PROGRAMS,
    TRACEPOINT_PROGRAMS, TracepointProgram, conn_key, counter, map_name, role,
};

use crate::capture::kernel_log::{KernelLog, KernelLogLevel, LOG_RING, LOG_RING_BYTES_WHEN_OFF};
use crate::capture::own::PidIdentity;

/// The eBPF object built by `build.rs` (empty when the eBPF toolchain was missing at build time).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// What can go wrong before the probes run; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this tracer binary was built without its eBPF programs (bpf-linker was missing at build \
         time); run `cargo xtask setup` and rebuild"
    )]
    StubObject,
    #[error("loading eBPF programs needs root (or CAP_BPF + CAP_PERFMON); run as root")]
    NotPrivileged,
    #[error(
        "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing); a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y is required"
    )]
    NoBtf,
    #[error("tracefs is not mounted and mounting it at {TRACEFS} failed: {0}")]
    Tracefs(io::Error),
    #[error("loading the eBPF object failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error(
        "eBPF program {name} ({category}:{tracepoint}) could not be loaded or attached: {source}"
    )]
    Program {
        name: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error(
        "eBPF program {0} is missing from the object: the object and this agent were built from \
         different sources; rebuild both with `cargo xtask build`"
    )]
    MissingProgram(&'static str),
    #[error(
        "the eBPF object has program {0}, which this agent does not attach: add it to \
         tracer_common::TRACEPOINT_PROGRAMS"
    )]
    UnlistedProgram(String),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("the HTTP/2 frame walker ({H2_WALKER_PROGRAM}) could not be loaded: {0}")]
    H2Walker(String),
    #[error("eBPF map {name}: {source}")]
    Ring {
        name: &'static str,
        #[source]
        source: crate::capture::ring::RingError,
    },
}

/// Options that shape what the kernel side captures.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Payload bytes copied per syscall (clamped to the kernel's ceiling).
    pub capture_bytes: u32,
    /// Processes in the pid filter from the start.
    pub pids: Vec<u32>,
    /// Trace only processes in the pid filter (and their children when `follow_forks`).
    pub pid_filter: bool,
    pub follow_forks: bool,
    /// Only connections with one of these local or peer ports; empty = all.
    pub ports: Vec<u16>,
    /// Adopt connections opened before the agent started when HTTP bytes flow on them.
    pub sniff_untracked: bool,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Kernel connection table size.
    pub max_connections: u32,
    /// What the eBPF programs log (fixed at load; off by default).
    pub kernel_log_level: KernelLogLevel,
    /// Capture TLS plaintext with the OpenSSL uprobes (on by default; `--no-tls` turns it off).
    pub tls: bool,
    /// `--context-propagation`: kernel-decided identities and the TCP option writer.
    pub context_propagation: crate::capture::propagation::ContextPropagation,
}

/// Kernel-side counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub events_submitted: u64,
    pub ringbuf_full: u64,
    pub conn_table_full: u64,
    pub args_table_full: u64,
    pub scratch_unavailable: u64,
    pub bytes_captured: u64,
    pub bytes_skipped: u64,
    pub read_user_failed: u64,
    pub conns_sniffed: u64,
    pub filter_table_full: u64,
    /// Connections whose other end is one of the agent's own sockets, never tracked.
    pub agent_mirrors_ignored: u64,
    /// New keys the kernel inserted into its connection table.
    pub conns_inserted: u64,
    /// Keys the kernel removed from its connection table (close, dup2, stale).
    pub conns_removed: u64,
    /// Stale entries (pid reused, or fds closed by exec) removed instead of used.
    pub conns_stale: u64,
    /// Entries the kernel's LRU connection table evicted to make room (derived from inserted,
    /// removed and the census's walk every `census::CENSUS_EVERY`; monotonic, never over).
    pub conns_evicted: u64,
    /// Gauge: entries in the kernel connection table at the last measurement.
    pub conn_table_entries: u64,
    pub unhooked_transfers: u64,
    pub peeks_skipped: u64,
    pub lifecycle_args_missing: u64,
    /// Accepts without a peer address whose endpoints the kernel could not read from the new
    /// socket (left to `/proc`).
    pub accept_endpoints_unknown: u64,
    /// The agent's own sockets not remembered because their table was full.
    pub agent_table_full: u64,
    /// Connection entries whose process generation was missing (treated as stale).
    pub generations_missing: u64,
    /// Data syscalls whose fd became another connection before they returned (not reported).
    pub fd_reused_in_syscall: u64,
    /// Tracked data syscalls refused because their process held its quota of the table.
    pub args_process_quota: u64,
    /// Gauge: 1 while the connection table census runs, 0 when it could not start.
    pub census_running: u64,
    /// Census walks dropped because reading the table failed part way.
    pub census_failed_walks: u64,
    /// Gauge: optional probes attached (of `optional_probes_total`).
    pub optional_probes_attached: u64,
    /// Gauge: optional probes this agent knows.
    pub optional_probes_total: u64,
    /// Connections adopted by sniffing HTTP/2 bytes (also in `conns_sniffed`).
    pub h2_conns_sniffed: u64,
    /// Connection directions whose HTTP/2 frames the kernel started following.
    pub h2_directions_framed: u64,
    /// HTTP/2 syscalls with more frames or iovecs than one walk covers (rest sent as a gap).
    pub h2_walk_limit: u64,
    /// Kept HTTP/2 frames larger than a record (their tail sent as a gap).
    pub h2_kept_truncated: u64,
    /// HTTP/2 directions that lost their frame cursor.
    pub h2_cursor_lost: u64,
    /// HTTP/2 DATA payload bytes sent as gaps (part of `bytes_skipped`).
    pub h2_data_elided_bytes: u64,
    /// Frame headers of framed HTTP/2 directions that were no plausible frame (not HTTP/2).
    pub h2_implausible_frame: u64,
    /// Gauge: 1 when the HTTP/2 frame walker is loaded, 0 when this kernel refused it.
    pub h2_walker_loaded: u64,
    /// Plaintext records the OpenSSL uprobes sent.
    pub tls_records: u64,
    /// OpenSSL calls whose socket was unknown (memory BIO, or no syscall seen yet): lost.
    pub tls_no_socket: u64,
    /// OpenSSL calls on a socket that is not a tracked connection.
    pub tls_untracked: u64,
    /// OpenSSL calls that touched two tracked connections (no fd guessed): lost.
    pub tls_ambiguous_fd: u64,
    /// OpenSSL calls not followed because the per-thread call table was full.
    pub tls_calls_table_full: u64,
    /// `_ex` calls whose size out-pointer was unreadable: lost.
    pub tls_size_unreadable: u64,
    /// Memory-BIO `SSL*`s (Node.js) bound to their socket by the ciphertext write after an
    /// `SSL_write`, and by the ciphertext read before an `SSL_read`.
    pub tls_bound_by_write: u64,
    pub tls_bound_by_read: u64,
    /// Memory-BIO plaintext records dropped: the observed order did not prove their socket.
    pub tls_binding_refused: u64,
    /// Held `SSL_write` plaintext evicted before its socket was known: lost.
    pub tls_held_evicted: u64,
    /// Syscalls on a tracked connection inside an OpenSSL call not taken as its socket.
    pub tls_nested_refused: u64,
    /// Gauge: OpenSSL copies (libraries or executables) the uprobes are attached to.
    pub tls_libraries_attached: u64,
    /// OpenSSL copies the uprobes could not be attached to.
    pub tls_attach_failed: u64,
    /// Scans of the processes for OpenSSL copies.
    pub tls_search_scans: u64,
    /// Start-up searches for OpenSSL copies stopped at their time budget.
    pub tls_search_cut_short: u64,
    /// Processes a rescan did not read again (unchanged, nothing to attach).
    pub tls_search_processes_unchanged: u64,
    /// Rescans for OpenSSL copies that read every process.
    pub tls_search_full_scans: u64,
    /// Process changes (exec, executable mappings) the kernel had no room to name.
    pub process_changes_full: u64,
    /// Gauge per `capture::tls::UNSUPPORTED` library: processes mapping it (not traced).
    pub tls_unsupported_processes: [u64; crate::capture::tls::UNSUPPORTED.len()],
}

impl KernelCounters {
    /// Events lost in the kernel, all reasons together.
    pub fn lost(&self) -> u64 {
        self.ringbuf_full
            + self.conn_table_full
            + self.args_table_full
            + self.scratch_unavailable
            + self.filter_table_full
    }
}

/// Key of `AGENT_ENDPOINTS` (the kernel's `maps::PeerKey`: address, IPv4 in the first 4
/// bytes, and port in host order). `HashMap::try_from` checks its size against the map's.
#[repr(C)]
#[derive(Clone, Copy)]
struct EndpointKey {
    addr: [u8; 16],
    port: u16,
    _pad: [u8; 6],
}

/// Value of `AGENT_ENDPOINTS` (the kernel's `maps::Endpoints`): both ends of an agent socket.
#[repr(C)]
#[derive(Clone, Copy)]
struct AgentEndpoints {
    family: u16,
    local_port: u16,
    peer_port: u16,
    _pad: u16,
    local_addr: [u8; 16],
    peer_addr: [u8; 16],
}

// SAFETY: plain `repr(C)` data without padding bytes left implicit, valid for any bit pattern.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AgentEndpoints {}

const _: () = assert!(std::mem::size_of::<EndpointKey>() == 24);
const _: () = assert!(std::mem::size_of::<AgentEndpoints>() == 40);

/// An address as the kernel programs store it: IPv4 (also v4-mapped IPv6) in the first 4 bytes.
fn kernel_addr(ip: std::net::IpAddr) -> (u16, [u8; 16]) {
    let mut out = [0u8; 16];
    match ip {
        std::net::IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (libc::AF_INET as u16, out)
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                out[..4].copy_from_slice(&v4.octets());
                (libc::AF_INET as u16, out)
            }
            None => (libc::AF_INET6 as u16, v6.octets()),
        },
    }
}

/// Whether an agent socket connected to an address of this host (loopback or its own source).
fn agent_destination_is_local(agent: &AgentEndpoints) -> bool {
    let loopback = if agent.family == libc::AF_INET as u16 {
        agent.peer_addr[0] == 127
    } else {
        agent.peer_addr == std::net::Ipv6Addr::LOCALHOST.octets()
    };
    loopback || agent.peer_addr == agent.local_addr
}

/// The loaded and attached programs. Dropping it detaches them.
pub struct Probes {
    ebpf: Ebpf,
    /// The agent runs in a child pid namespace: pids it is given are pids of that namespace.
    namespaced_pids: bool,
    /// Walks the kernel connection table in the background (none when it could not start).
    census: Option<crate::capture::census::Census>,
    /// Optional tracepoints that attached on this kernel.
    optional_attached: u64,
    /// The HTTP/2 frame walker is loaded and the data programs tail-call it (`H2_WALK`).
    h2_walker_loaded: bool,
    /// Forwards the programs' diagnostics when `--kernel-log-level` is not off.
    kernel_log: Option<KernelLog>,
    /// The OpenSSL copies found and attached (`None`: TLS capture off or not loadable).
    tls: Option<crate::capture::tls::TlsSearch>,
    /// Go crypto/tls: the uprobes and the discovery of Go binaries (none when they could not
    /// be loaded).
    go_tls: Option<crate::capture::gotls::GoTls>,
    /// `--context-propagation tcp-options` runs: the kernel decides identities and the
    /// `sock_ops` option writer is attached.
    propagation: bool,
    /// The data programs decide identities (`PROPAGATION` set at load).
    kernel_identities: bool,
}

/// Whether the embedded object is the real one.
pub fn object_is_real() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// Finds a mounted tracefs, mounting it at /sys/kernel/tracing when none is.
pub fn ensure_tracefs() -> Result<PathBuf, ProbeError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target =
        std::ffi::CString::new(TRACEFS).map_err(|e| ProbeError::Tracefs(io::Error::other(e)))?;
    let fstype = c"tracefs";
    let source = c"nodev";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs(io::Error::last_os_error()));
    }
    tracing::info!(path = TRACEFS, "mounted tracefs");
    Ok(PathBuf::from(TRACEFS))
}

/// Offsets of `pid` and `clone_flags` in the task_newtask record, from its format file.
fn new_task_offsets(tracefs: &Path) -> (u32, u32) {
    let path = tracefs.join("events/task/task_newtask/format");
    let text = fs::read_to_string(path).unwrap_or_default();
    (
        parse_field_offset(&text, "pid").unwrap_or(8),
        parse_field_offset(&text, "clone_flags").unwrap_or(32),
    )
}

/// Finds `offset:N;` of field `name` in a tracepoint format description.
pub fn parse_field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let field = line.trim().strip_prefix("field:")?;
        let (decl, rest) = field.split_once(';')?;
        let ident = decl.split_whitespace().last()?.trim_start_matches('*');
        if ident != name {
            return None;
        }
        let off = rest.trim().strip_prefix("offset:")?;
        off.split(';').next()?.trim().parse().ok()
    })
}

fn check_privileges() -> Result<(), ProbeError> {
    // SAFETY: plain libc call.
    if unsafe { libc::geteuid() } != 0 {
        // Capabilities may still allow it; the load error will tell. Root is the documented path.
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        const CAP_SYS_ADMIN: u64 = 1 << 21;
        const CAP_BPF: u64 = 1 << 39;
        if eff & (CAP_SYS_ADMIN | CAP_BPF) == 0 {
            return Err(ProbeError::NotPrivileged);
        }
    }
    Ok(())
}

/// A loader made ahead of time by [`make_loader_early`].
static EARLY_LOADER: std::sync::Mutex<Option<EbpfLoader<'static>>> = std::sync::Mutex::new(None);

/// Makes the eBPF loader now, first thing in `main`. aya's `EbpfLoader::new` parses the kernel's
/// whole BTF (about 19 MB of heap for a moment on a 6.x kernel), which this agent drops unused:
/// the object has no CO-RE relocations (field offsets come from `kernel_btf`). Made while little
/// else is resident, that moment no longer stacks on the code and heap of the rest of start-up,
/// where it set the agent's peak RSS.
pub fn make_loader_early() {
    let loader = new_loader();
    *EARLY_LOADER.lock().unwrap_or_else(|p| p.into_inner()) = Some(loader);
}

/// The loader made early, or a new one (a second load, or no early one).
fn take_loader() -> EbpfLoader<'static> {
    EARLY_LOADER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(new_loader)
}

/// A loader without the kernel's BTF (dropped at once: nothing here relocates against it).
fn new_loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader
}

impl Probes {
    /// Loads the programs, writes the configuration and filters, and attaches every tracepoint.
    ///
    /// First with the HTTP/2 frame walker on. When the walker, or a data program that
    /// tail-calls it, is refused (kernels before 5.10 refuse tail calls in programs with
    /// BPF-to-BPF calls; so do some JITs), everything is loaded again with the walker off
    /// (`H2_WALK` = 0: the verifier drops the tail call): HTTP/2 is then captured like any
    /// stream, a prefix per syscall. Warned once; `tracer_kernel_http2_walker_loaded` says which.
    ///
    /// `TRACER_H2_WALKER=off` in the environment loads without the walker from the start.
    pub fn load(opts: &ProbeOptions) -> Result<Probes, ProbeError> {
        let probes = Self::load_walker_or_not(opts);
        // Loaded: the object is not parsed again; its pages and the parse's buffers go back.
        crate::memory::release_start_up_memory(EBPF_OBJECT);
        probes
    }

    fn load_walker_or_not(opts: &ProbeOptions) -> Result<Probes, ProbeError> {
        if std::env::var_os("TRACER_H2_WALKER").is_some_and(|v| v == "off") {
            tracing::info!("TRACER_H2_WALKER=off: HTTP/2 is captured without frame awareness");
            return Self::load_with(opts, false);
        }
        match Self::load_with(opts, true) {
            Err(err @ (ProbeError::H2Walker(_) | ProbeError::Program { .. })) => {
                let probes = Self::load_with(opts, false)?;
                tracing::warn!(
                    %err,
                    "HTTP/2 frame walker refused by this kernel: loaded without it (HTTP/2 is \
                     captured without frame awareness)"
                );
                Ok(probes)
            }
            other => other,
        }
    }

    fn load_with(opts: &ProbeOptions, h2_walk: bool) -> Result<Probes, ProbeError> {
        if !object_is_real() {
            return Err(ProbeError::StubObject);
        }
        check_privileges()?;
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(ProbeError::NoBtf);
        }
        let tracefs = ensure_tracefs()?;
        bump_memlock_rlimit();
        let ring_bytes_global = u64::from(opts.ring_buffer_bytes);
        let h2_walk_global = u8::from(h2_walk);
        let log_level_global = opts.kernel_log_level.global_value();
        // Where the kernel keeps each connection's network namespace (loopback pairing), and how
        // an accept without an address finds its socket's endpoints.
        let (netns_offsets, sock_offsets) = crate::capture::kernel_btf::running_kernel_offsets();
        let propagation = opts.context_propagation
            == crate::capture::propagation::ContextPropagation::TcpOptions
            && match crate::capture::propagation::unsupported_reason() {
                None => true,
                Some(reason) => {
                    tracing::warn!(
                        "--context-propagation tcp-options cannot run here ({reason}): tracing \
                         without cross-host propagation"
                    );
                    false
                }
            };
        let propagation_global = u8::from(propagation);
        let mut loader = take_loader();
        loader
            .map_max_entries(map_name::EVENTS, opts.ring_buffer_bytes)
            .override_global("EVENTS_RING_BYTES", &ring_bytes_global, true)
            .override_global("H2_WALK", &h2_walk_global, true)
            .override_global("NETNS_OFFSETS", &netns_offsets, true)
            .override_global("SOCK_OFFSETS", &sock_offsets, true)
            .override_global("PROPAGATION", &propagation_global, true)
            .map_max_entries(map_name::CONNS, opts.max_connections)
            .override_global(aya_log::LEVEL, &log_level_global, true);
        if opts.kernel_log_level == KernelLogLevel::Off {
            // Never read: the smallest ring the kernel accepts.
            loader.map_max_entries(LOG_RING, LOG_RING_BYTES_WHEN_OFF);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;

        let identity = PidIdentity::of_self(Path::new("/proc"));
        let (agent_tgid, agent_ns_tgid, agent_pidns_dev, agent_pidns_ino) = match identity {
            PidIdentity::Host { tgid } => (tgid, 0, 0, 0),
            PidIdentity::Namespaced {
                ns_tgid,
                ns_dev,
                ns_ino,
            } => (0, ns_tgid, ns_dev, ns_ino),
        };
        let (fork_child_pid_offset, fork_clone_flags_offset) = new_task_offsets(&tracefs);
        let io_uring_fd_offset =
            fs::read_to_string(tracefs.join("events/io_uring/io_uring_file_get/format"))
                .ok()
                .and_then(|format| parse_field_offset(&format, "fd"))
                .unwrap_or(0);
        let cfg = Config {
            agent_tgid,
            agent_ns_tgid,
            _pad: 0,
            agent_pidns_dev,
            agent_pidns_ino,
            capture_bytes: opts.capture_bytes.min(MAX_CAPTURE as u32),
            filter_pids: u8::from(opts.pid_filter || !opts.pids.is_empty()),
            filter_ports: u8::from(!opts.ports.is_empty()),
            follow_forks: u8::from(opts.follow_forks),
            sniff_untracked: u8::from(opts.sniff_untracked),
            fork_child_pid_offset,
            fork_clone_flags_offset,
            io_uring_fd_offset,
        };
        {
            let map = ebpf
                .map_mut(map_name::CONFIG)
                .ok_or(ProbeError::MissingMap(map_name::CONFIG))?;
            let mut config: Array<&mut MapData, Config> =
                Array::try_from(map).map_err(|source| ProbeError::Map {
                    name: map_name::CONFIG,
                    source: Box::new(source),
                })?;
            config
                .set(tracer_common::CONFIG_KEY, cfg, 0)
                .map_err(|source| ProbeError::Map {
                    name: map_name::CONFIG,
                    source: Box::new(source),
                })?;
        }
        let mut probes = Probes {
            ebpf,
            namespaced_pids: matches!(identity, PidIdentity::Namespaced { .. }),
            census: None,
            optional_attached: 0,
            h2_walker_loaded: false,
            kernel_log: None,
            tls: None,
            go_tls: None,
            propagation: false,
            kernel_identities: propagation,
        };
        // A thread id given by mistake means its process: the filter holds processes (tgids).
        let roots: Vec<u32> = opts
            .pids
            .iter()
            .map(|pid| {
                crate::correlate::proctree::thread_group_of(Path::new("/proc"), *pid)
                    .unwrap_or(*pid)
            })
            .collect();
        for pid in &roots {
            probes.add_pid(*pid)?;
        }
        {
            let map = probes
                .ebpf
                .map_mut(map_name::FILTER_PORTS)
                .ok_or(ProbeError::MissingMap(map_name::FILTER_PORTS))?;
            let mut ports: HashMap<&mut MapData, u16, u8> =
                HashMap::try_from(map).map_err(|source| ProbeError::Map {
                    name: map_name::FILTER_PORTS,
                    source: Box::new(source),
                })?;
            for port in &opts.ports {
                ports.insert(port, 1, 0).map_err(|source| ProbeError::Map {
                    name: map_name::FILTER_PORTS,
                    source: Box::new(source),
                })?;
            }
        }
        // One list of programs on both sides: a program added to the object but not here (or
        // the reverse) is refused, never left unattached.
        if let Some((name, _)) = probes.ebpf.programs().find(|(name, _)| {
            !TRACEPOINT_PROGRAMS.iter().any(|p| p.name == *name)
                && !OPENSSL_UPROBE_PROGRAMS.iter().any(|p| p.name == *name)
                && !tracer_common::go_tls_program::ALL.contains(name)
                && *name != H2_WALKER_PROGRAM
                && *name != tracer_common::propagation::SOCK_OPS_PROGRAM
                && *name != tracer_common::traceparent_scan::SCAN_PROGRAM
        }) {
            return Err(ProbeError::UnlistedProgram(name.to_owned()));
        }
        if h2_walk {
            probes.load_h2_walker().map_err(ProbeError::H2Walker)?;
            probes.h2_walker_loaded = true;
        }
        if propagation && let Err(err) = probes.load_prop_scanner() {
            // The data programs' tail call then fails every time (counted as
            // `tracer_kernel_header_scans_total{outcome="not_run"}`): the kernel decides no
            // identity and sends no option; userspace links as without propagation.
            tracing::warn!(
                "the propagation program ({}) could not be loaded ({err}): \
                 --context-propagation tcp-options sends and adopts no context",
                tracer_common::traceparent_scan::SCAN_PROGRAM
            );
        }
        let program_error = |p: &TracepointProgram, source| ProbeError::Program {
            name: p.name,
            category: p.category,
            tracepoint: p.tracepoint,
            source: Box::new(source),
        };
        // Verify every required program before attaching any: attached programs produce
        // records at once, and nobody reads them until loading is over.
        for attach in [false, true] {
            for p in TRACEPOINT_PROGRAMS.iter().filter(|p| !p.optional) {
                let program = probes
                    .ebpf
                    .program_mut(p.name)
                    .ok_or(ProbeError::MissingProgram(p.name))?;
                let program: &mut TracePoint =
                    program.try_into().map_err(|e| program_error(p, e))?;
                if attach {
                    program
                        .attach(p.category, p.tracepoint)
                        .map_err(|e| program_error(p, e))?;
                } else {
                    program.load().map_err(|e| program_error(p, e))?;
                    if let Ok(info) = program.info() {
                        tracing::debug!(
                            program = p.name,
                            verified_insns = info.verified_instruction_count(),
                            "program loaded"
                        );
                    }
                }
            }
        }
        for p in TRACEPOINT_PROGRAMS.iter().filter(|p| p.optional) {
            let program = probes
                .ebpf
                .program_mut(p.name)
                .ok_or(ProbeError::MissingProgram(p.name))?;
            let attached = <&mut TracePoint>::try_from(program).and_then(|program| {
                program
                    .load()
                    .and_then(|()| program.attach(p.category, p.tracepoint).map(drop))
            });
            match attached {
                Ok(()) => probes.optional_attached += 1,
                Err(source) => {
                    let err = program_error(p, source);
                    tracing::warn!(%err, "optional probe not attached (this kernel lacks it): what it watches is not seen");
                }
            }
        }
        if propagation {
            // Loaded only with propagation on: off, no program can write to a packet.
            match crate::capture::propagation::attach(&mut probes.ebpf) {
                Ok(cgroup) => {
                    probes.propagation = true;
                    tracing::info!(
                        cgroup = %cgroup.display(),
                        "context propagation in TCP options attached"
                    );
                }
                Err(err) => tracing::warn!(
                    "--context-propagation tcp-options could not attach its sock_ops program \
                     ({err}): no options are written or read"
                ),
            }
        }
        // Which processes exec'd or mapped a file executable: the TLS discoveries read only those
        // (and new ones) at their rescans.
        let process_watch = match (
            probes.map_fd(map_name::PROCESS_CHANGES),
            probes.map_fd(map_name::COUNTERS),
        ) {
            (Some(table), Some(counters)) if opts.tls => {
                let host_pids = matches!(
                    crate::capture::own::PidIdentity::of_self(Path::new("/proc")),
                    crate::capture::own::PidIdentity::Host { .. }
                );
                crate::capture::procwatch::KernelChanges::new(table, counters, host_pids)
                    .map_err(|err| tracing::warn!(%err, "process changes not read: TLS discovery reads every process"))
                    .ok()
                    .map(|source| crate::capture::procwatch::ProcessWatch::new(Box::new(source)))
            }
            _ => None,
        };
        if opts.tls {
            match probes.load_tls_programs() {
                Ok(()) => {
                    // The libraries already mapped are attached before this returns.
                    probes.tls = Some(crate::capture::tls::TlsSearch::start(
                        PathBuf::from("/proc"),
                        monotonic_ns(),
                        process_watch.as_ref().map(|w| w.subscribe()),
                    ));
                    probes.rescan_tls();
                }
                Err(err) => tracing::warn!(
                    %err,
                    "OpenSSL uprobes not loaded by this kernel: TLS traffic is not seen"
                ),
            }
        }
        if opts.tls {
            probes.go_tls = crate::capture::gotls::GoTls::start(
                &mut probes.ebpf,
                opts,
                process_watch.as_ref().map(|w| w.subscribe()),
            );
        }
        // Second handles on the agent's own map fds (dup): opening maps by id would need
        // CAP_SYS_ADMIN, which the least-privilege deployment does not have.
        if opts.kernel_log_level != KernelLogLevel::Off {
            probes.kernel_log = KernelLog::start(&mut probes.ebpf);
        }
        probes.census = match (
            probes.map_fd(map_name::CONNS),
            probes.map_fd(map_name::COUNTERS),
        ) {
            (Some(conns), Some(counters)) => crate::capture::census::Census::start(conns, counters)
                .map_err(|err| tracing::warn!(%err, "kernel connection table census not started"))
                .ok(),
            _ => None,
        };
        // Processes the given pids had forked before the probes attached (an nginx master's
        // workers): the fork tracepoint follows children forked from now on, this walk those
        // already running. After attaching, so no child is forked unseen in between.
        if opts.follow_forks && !roots.is_empty() {
            let existing = crate::correlate::proctree::descendants(Path::new("/proc"), &roots);
            for pid in &existing {
                if let Err(err) = probes.add_pid(*pid) {
                    tracing::warn!(pid, %err, "could not follow an existing child");
                }
            }
            if !existing.is_empty() {
                tracing::info!(
                    children = existing.len(),
                    "following existing children of --pid"
                );
            }
        }
        match probes.identify_self() {
            Some(host_tgid) => tracing::info!(
                host_pid = host_tgid,
                pid = std::process::id(),
                ?identity,
                "the kernel programs recognise the agent"
            ),
            None => tracing::warn!(
                pid = std::process::id(),
                ?identity,
                "the kernel programs could not find the agent's host pid: its own sockets may \
                 be traced (its marked requests are still dropped)"
            ),
        }
        Ok(probes)
    }

    /// Whether the kernel decides identities and the option writer runs.
    pub fn propagation_active(&self) -> bool {
        self.propagation
    }

    /// Whether the kernel decides identities (set at load; the option writer may still have
    /// failed to attach, see `propagation_active`).
    pub fn kernel_identities(&self) -> bool {
        self.kernel_identities
    }

    /// `pid` serves one request per thread (see `propagation::mark_dedicated`).
    pub fn mark_dedicated(&mut self, pid: u32) {
        if self.kernel_identities {
            crate::capture::propagation::mark_dedicated(&mut self.ebpf, pid);
        }
    }

    /// The propagation programs' counters.
    pub fn propagation_counters(&self) -> crate::capture::propagation::PropagationCounters {
        let mut c = crate::capture::propagation::counters(&self.ebpf);
        c.active = u64::from(self.propagation);
        c
    }

    /// The agent's tgid as the kernel programs see it (the host's pid namespace). In a child pid
    /// namespace the programs learn it from the agent's next syscall: make two they watch (on an
    /// invalid fd, failing at once) and read the answer back.
    pub fn identify_self(&mut self) -> Option<u32> {
        // SAFETY: both calls get fd -1 and no buffer: they touch no memory, only enter the kernel.
        unsafe {
            libc::read(-1, std::ptr::null_mut(), 0);
            libc::connect(-1, std::ptr::null(), 0);
        }
        let map = self.ebpf.map(map_name::CONFIG)?;
        let config: Array<&MapData, Config> = Array::try_from(map).ok()?;
        let cfg = config.get(&tracer_common::CONFIG_KEY, 0).ok()?;
        (cfg.agent_tgid != 0).then_some(cfg.agent_tgid)
    }

    /// Adds a process to the pid filter (used by `tracer run` before the child execs). In a
    /// child pid namespace `pid` is a pid of that namespace: the kernel programs translate it
    /// when the process next makes a syscall.
    pub fn add_pid(&mut self, pid: u32) -> Result<(), ProbeError> {
        let name = if self.namespaced_pids {
            map_name::NS_FILTER_PIDS
        } else {
            map_name::FILTER_PIDS
        };
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        let mut pids: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map {
                name,
                source: Box::new(source),
            })?;
        pids.insert(pid, 1, 0).map_err(|source| ProbeError::Map {
            name,
            source: Box::new(source),
        })
    }

    /// Stops following an fd the kernel adopted by sniffing (not a socket, or outside the port
    /// filter): it stays in the table as IGNORED so sniffing does not adopt it again.
    pub fn ignore_connection(&mut self, pid: u32, fd: i32) {
        if let Some(map) = self.ebpf.map_mut(map_name::CONNS)
            && let Ok(mut conns) = HashMap::<&mut MapData, u64, ConnState>::try_from(map)
        {
            let ignored = ConnState {
                role: role::IGNORED,
                endpoints_sent: 1,
                // Not stale: made now (the kernel's clock is CLOCK_MONOTONIC too).
                opened_ns: monotonic_ns(),
                ..Default::default()
            };
            let _ = conns.insert(conn_key(pid, fd as u32), ignored, 0);
        }
    }

    /// How userspace names a process the kernel reports by host tgid in the agent's `/proc`:
    /// `None` when the agent runs in the host's pid namespace (the same number). In a child pid
    /// namespace, the kernel-filled `NS_PIDS` table; a process without an entry (outside the
    /// namespace) cannot be read from `/proc` at all.
    pub fn proc_pid_map(
        &mut self,
    ) -> Result<Option<crate::telemetry::resource::PidMap>, ProbeError> {
        if !self.namespaced_pids {
            return Ok(None);
        }
        let map = self
            .ebpf
            .take_map(map_name::NS_PIDS)
            .ok_or(ProbeError::MissingMap(map_name::NS_PIDS))?;
        let table: HashMap<MapData, u32, u32> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: map_name::NS_PIDS,
                source: Box::new(source),
            })?;
        Ok(Some(std::sync::Arc::new(move |host_tgid: u32| {
            table.get(&host_tgid, 0).ok()
        })))
    }

    /// Whether a connection accepted on this host with `local` and `peer` is the other end of
    /// one of the agent's own connections, by the kernel's `AGENT_ENDPOINTS` and the same rule
    /// as `filter::mirrors_agent`: for connections whose peer the kernel did not see at accept
    /// (`accept(fd, NULL, NULL)`, an accept already blocked when the probes attached).
    pub fn agent_mirror_check(&mut self) -> Result<crate::capture::own::MirrorCheck, ProbeError> {
        let map = self
            .ebpf
            .take_map(map_name::AGENT_ENDPOINTS)
            .ok_or(ProbeError::MissingMap(map_name::AGENT_ENDPOINTS))?;
        let table: HashMap<MapData, EndpointKey, AgentEndpoints> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: map_name::AGENT_ENDPOINTS,
                source: Box::new(source),
            })?;
        Ok(std::sync::Arc::new(move |local, peer| {
            let (_, addr) = kernel_addr(peer.ip());
            let key = EndpointKey {
                addr,
                port: peer.port(),
                _pad: [0; 6],
            };
            let Ok(agent) = table.get(&key, 0) else {
                return false;
            };
            let (_, local_addr) = kernel_addr(local.ip());
            let exact = local.port() == agent.peer_port && local_addr == agent.peer_addr;
            let to_this_host = agent_destination_is_local(&agent);
            exact || !to_this_host
        }))
    }

    /// Takes the ring buffer for the reader task.
    pub fn take_ring_buffer(&mut self) -> Result<crate::capture::ring::RingReader, ProbeError> {
        let map = self
            .ebpf
            .take_map(map_name::EVENTS)
            .ok_or(ProbeError::MissingMap(map_name::EVENTS))?;
        crate::capture::ring::RingReader::new(map).map_err(|source| ProbeError::Ring {
            name: map_name::EVENTS,
            source,
        })
    }

    /// Loads the HTTP/2 frame walker (tail-called by the data programs, never attached) into
    /// its program array. On failure `load` loads everything again with the walker off.
    fn load_h2_walker(&mut self) -> Result<(), String> {
        self.load_tail_call(H2_WALKER_PROGRAM, map_name::H2_WALKER)
    }

    /// Loads the propagation's `traceparent` scan program into its program array, where the
    /// data programs tail-call it (`tracer_common::traceparent_scan::SCAN_PROGRAM`).
    fn load_prop_scanner(&mut self) -> Result<(), String> {
        use tracer_common::traceparent_scan::{SCAN_PROGRAM, SCANNER_MAP};
        self.load_tail_call(SCAN_PROGRAM, SCANNER_MAP)
    }

    /// Loads a program that is never attached, only tail-called, into slot 0 of its program
    /// array.
    fn load_tail_call(&mut self, name: &'static str, array: &'static str) -> Result<(), String> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or("program missing from the object")?;
        let program: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
        program.load().map_err(|e| format!("{e}"))?;
        if let Ok(info) = program.info() {
            tracing::debug!(
                program = name,
                verified_insns = info.verified_instruction_count(),
                xlated_bytes = info.size_translated(),
                "tail-called program loaded"
            );
        }
        let fd = program
            .fd()
            .map_err(|e| format!("{e}"))?
            .try_clone()
            .map_err(|e| format!("{e}"))?;
        let map = self
            .ebpf
            .map_mut(array)
            .ok_or_else(|| format!("map {array} missing from the object"))?;
        let mut programs = ProgramArray::try_from(map).map_err(|e| format!("{e}"))?;
        programs.set(0, &fd, 0).map_err(|e| format!("{e}"))
    }

    /// Reads the kernel counters, summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        let mut out = KernelCounters::default();
        let Some(map) = self.ebpf.map(map_name::COUNTERS) else {
            return out;
        };
        let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return out;
        };
        let read = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        out.events_submitted = read(counter::EVENTS_SUBMITTED);
        out.ringbuf_full = read(counter::RINGBUF_FULL);
        out.conn_table_full = read(counter::CONN_TABLE_FULL);
        out.args_table_full = read(counter::ARGS_TABLE_FULL);
        out.scratch_unavailable = read(counter::SCRATCH_UNAVAILABLE);
        out.bytes_captured = read(counter::BYTES_CAPTURED);
        out.bytes_skipped = read(counter::BYTES_SKIPPED);
        out.read_user_failed = read(counter::READ_USER_FAILED);
        out.conns_sniffed = read(counter::CONNS_SNIFFED);
        out.filter_table_full = read(counter::FILTER_TABLE_FULL);
        out.agent_mirrors_ignored = read(counter::AGENT_MIRRORS_IGNORED);
        out.conns_inserted = read(counter::CONNS_INSERTED);
        out.conns_removed = read(counter::CONNS_REMOVED);
        out.conns_stale = read(counter::CONNS_STALE);
        out.unhooked_transfers = read(counter::UNHOOKED_TRANSFERS);
        out.peeks_skipped = read(counter::PEEKS_SKIPPED);
        out.lifecycle_args_missing = read(counter::LIFECYCLE_ARGS_MISSING);
        out.accept_endpoints_unknown = read(counter::ACCEPT_ENDPOINTS_UNKNOWN);
        out.generations_missing = read(counter::GENERATIONS_MISSING);
        out.fd_reused_in_syscall = read(counter::FD_REUSED_IN_SYSCALL);
        out.args_process_quota = read(counter::ARGS_PROCESS_QUOTA);
        out.optional_probes_attached = self.optional_attached;
        out.optional_probes_total =
            TRACEPOINT_PROGRAMS.iter().filter(|p| p.optional).count() as u64;
        if let Some(census) = &self.census {
            out.census_running = 1;
            out.conn_table_entries = census.results.entries.load(Ordering::Relaxed);
            out.conns_evicted = census.results.evicted.load(Ordering::Relaxed);
            out.census_failed_walks = census.results.failed_walks.load(Ordering::Relaxed);
        }
        out.agent_table_full = read(counter::AGENT_TABLE_FULL);
        out.h2_conns_sniffed = read(counter::CONNS_SNIFFED_H2);
        out.h2_directions_framed = read(counter::H2_FRAMED);
        out.h2_walk_limit = read(counter::H2_WALK_LIMIT);
        out.h2_kept_truncated = read(counter::H2_KEPT_TRUNCATED);
        out.h2_cursor_lost = read(counter::H2_CURSOR_LOST);
        out.h2_data_elided_bytes = read(counter::H2_DATA_ELIDED_BYTES);
        out.h2_implausible_frame = read(counter::H2_IMPLAUSIBLE_FRAME);
        out.h2_walker_loaded = u64::from(self.h2_walker_loaded);
        out.tls_records = read(counter::TLS_RECORDS);
        out.tls_no_socket = read(counter::TLS_NO_SOCKET);
        out.tls_untracked = read(counter::TLS_UNTRACKED);
        out.tls_ambiguous_fd = read(counter::TLS_AMBIGUOUS_FD);
        out.tls_calls_table_full = read(counter::TLS_CALLS_TABLE_FULL);
        out.tls_size_unreadable = read(counter::TLS_SIZE_UNREADABLE);
        out.tls_bound_by_write = read(counter::TLS_BOUND_BY_WRITE);
        out.tls_bound_by_read = read(counter::TLS_BOUND_BY_READ);
        out.tls_binding_refused = read(counter::TLS_BINDING_REFUSED);
        out.tls_held_evicted = read(counter::TLS_HELD_EVICTED);
        out.tls_nested_refused = read(counter::TLS_NESTED_REFUSED);
        out.process_changes_full = read(counter::PROCESS_CHANGES_FULL);
        if let Some(tls) = &self.tls {
            let stats = tls.stats();
            out.tls_libraries_attached = stats.libraries_attached;
            out.tls_attach_failed = stats.attach_failed;
            out.tls_search_scans = stats.scans;
            out.tls_search_cut_short = stats.scans_cut_short;
            out.tls_search_processes_unchanged = stats.processes_unchanged;
            out.tls_search_full_scans = stats.full_scans;
            out.tls_unsupported_processes = stats.unsupported_processes;
        }
        out
    }

    /// Attaches the OpenSSL uprobes to the copies the search thread found since the last call
    /// (`capture::tls`). Nothing when TLS capture is off.
    pub fn rescan_tls(&mut self) {
        let Some(search) = self.tls.take() else {
            return;
        };
        for target in search.take_pending() {
            if search.is_done(&target) {
                continue;
            }
            match self.attach_openssl(&target.path) {
                Ok(()) => {
                    tracing::info!(
                        pid = target.pid,
                        file = %target.shown,
                        kind = ?target.kind,
                        "OpenSSL uprobes attached"
                    );
                    search.attached(&target);
                }
                Err(err) if search.attach_failed(&target) => tracing::debug!(
                    pid = target.pid,
                    file = %target.shown,
                    %err,
                    "OpenSSL uprobes not attached yet (tried again at the next scan)"
                ),
                Err(err) => tracing::warn!(
                    pid = target.pid,
                    file = %target.shown,
                    %err,
                    "OpenSSL uprobes not attached: its TLS traffic is not seen"
                ),
            }
        }
        self.tls = Some(search);
    }

    /// Attaches every OpenSSL uprobe to the file at `path` (all processes mapping it; the kernel
    /// programs apply the pid filter and skip the agent). `SSL_read`/`SSL_write` are required,
    /// the `_ex` variants (OpenSSL before 1.1.1 lacks them) and `SSL_do_handshake` optional.
    fn attach_openssl(&mut self, path: &Path) -> Result<(), String> {
        use aya::programs::{UProbe, uprobe::UProbeScope};
        for p in OPENSSL_UPROBE_PROGRAMS {
            let program: &mut UProbe = self
                .ebpf
                .program_mut(p.name)
                .ok_or_else(|| format!("program {} missing", p.name))?
                .try_into()
                .map_err(|e| format!("{}: {e}", p.name))?;
            if let Err(err) = program.attach(p.symbol, path, UProbeScope::AllProcesses) {
                let mut e = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(inner) = source {
                    e.push_str(": ");
                    e.push_str(&inner.to_string());
                    source = inner.source();
                }
                if tracer_common::openssl_uprobe_optional(p) {
                    tracing::debug!(symbol = p.symbol, %e, "optional OpenSSL symbol not attached");
                    continue;
                }
                return Err(format!("{} at {}: {e}", p.name, p.symbol));
            }
        }
        Ok(())
    }

    /// Loads the OpenSSL uprobe programs (attached later, per library found).
    fn load_tls_programs(&mut self) -> Result<(), String> {
        use aya::programs::UProbe;
        let mut loaded: Vec<&str> = Vec::new();
        for p in OPENSSL_UPROBE_PROGRAMS {
            if loaded.contains(&p.name) {
                continue;
            }
            let program: &mut UProbe = self
                .ebpf
                .program_mut(p.name)
                .ok_or_else(|| format!("program {} missing", p.name))?
                .try_into()
                .map_err(|e| format!("{}: {e}", p.name))?;
            program.load().map_err(|e| format!("{}: {e}", p.name))?;
            loaded.push(p.name);
        }
        Ok(())
    }

    /// Attaches the Go crypto/tls uprobes to binaries discovery has analysed since the last
    /// call (cheap when there are none: the event loop calls it every cycle).
    pub fn go_tls_poll(&mut self) {
        if let Some(go_tls) = &mut self.go_tls {
            go_tls.poll(&mut self.ebpf);
        }
    }

    /// The Go crypto/tls counters (userspace discovery and the kernel's), for /metrics.
    pub fn go_tls_snapshot(&self) -> crate::capture::gotls::GoTlsSnapshot {
        let mut out = match &self.go_tls {
            Some(go_tls) => go_tls.snapshot(),
            None => crate::capture::gotls::GoTlsSnapshot::default(),
        };
        if let Some(map) = self.ebpf.map(map_name::COUNTERS)
            && let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map)
        {
            let read = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
            out.kernel_not_tcp = read(counter::GO_TLS_NOT_TCP);
            out.kernel_unreadable = read(counter::GO_TLS_UNREADABLE);
            out.kernel_untracked = read(counter::GO_TLS_UNTRACKED);
            out.kernel_calls_full = read(counter::GO_TLS_CALLS_FULL);
            out.kernel_no_layout = read(counter::GO_TLS_NO_LAYOUT);
        }
        out
    }

    /// A duplicate of the agent's fd of map `name` (for a second handle on it).
    fn map_fd(&self, name: &str) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        let data = match self.ebpf.map(name)? {
            Map::LruHashMap(data) | Map::HashMap(data) | Map::PerCpuArray(data) => data,
            _ => return None,
        };
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| tracing::warn!(%err, map = name, "could not duplicate a map fd"))
            .ok()
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the kernel's timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it (harmless on newer kernels).
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain libc call with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not lift RLIMIT_MEMLOCK; continuing");
    }
}

#[cfg(test)]
mod tests {
    use super::{
        AgentEndpoints, EBPF_OBJECT, TRACEPOINT_PROGRAMS, agent_destination_is_local, kernel_addr,
        map_name, parse_field_offset,
    };

    #[test]
    fn addresses_match_the_kernel_encoding_and_local_destinations_are_recognised() {
        let v4 = |s: &str| {
            s.parse::<std::net::IpAddr>()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (family, addr) = kernel_addr(v4("10.1.2.3"));
        assert_eq!(
            (family, &addr[..4], &addr[4..]),
            (2, &[10, 1, 2, 3][..], &[0; 12][..])
        );
        assert_eq!(
            kernel_addr(v4("::ffff:10.1.2.3")),
            kernel_addr(v4("10.1.2.3"))
        );
        assert_eq!(kernel_addr(v4("::1")).0, 10);
        let agent = |local: &str, peer: &str| {
            let (family, local_addr) = kernel_addr(v4(local));
            let (_, peer_addr) = kernel_addr(v4(peer));
            AgentEndpoints {
                family,
                local_port: 1,
                peer_port: 2,
                _pad: 0,
                local_addr,
                peer_addr,
            }
        };
        assert!(agent_destination_is_local(&agent("127.0.0.1", "127.0.0.2")));
        assert!(agent_destination_is_local(&agent("10.0.0.5", "10.0.0.5")));
        assert!(agent_destination_is_local(&agent("::1", "::1")));
        assert!(!agent_destination_is_local(&agent(
            "10.0.0.5",
            "10.96.0.10"
        )));
    }

    /// The tables of the agent's own sockets never evict: an evicted socket would orphan its
    /// local endpoint, excluding an unrelated application connection that reuses it later.
    #[test]
    fn agent_socket_tables_are_plain_hash_maps() {
        assert!(
            !EBPF_OBJECT.is_empty(),
            "the eBPF object is not embedded (built with AYA_BUILD_SKIP?): run `cargo xtask build`"
        );
        let object = aya_obj::Object::parse(EBPF_OBJECT)
            .unwrap_or_else(|e| panic!("parsing the embedded eBPF object: {e}"));
        for name in [map_name::AGENT_SOCKS, map_name::AGENT_ENDPOINTS] {
            let map = object
                .maps
                .get(name)
                .unwrap_or_else(|| panic!("no map {name} in the eBPF object"));
            assert_eq!(
                map.map_type(),
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32,
                "{name} must be a plain hash map (no silent eviction)"
            );
            assert_eq!(map.max_entries(), tracer_common::MAX_AGENT_CONNECTIONS);
        }
    }

    /// Tracepoints of syscalls newer than the oldest supported kernel (5.8, for the ring
    /// buffer): the agent must start without them.
    const NEWER_THAN_5_8: &[&str] = &[
        "sys_enter_close_range",
        "sys_exit_close_range",
        "sys_enter_epoll_pwait2",
        "sys_enter_process_madvise",
        "sys_enter_mount_setattr",
        "sys_enter_futex_waitv",
    ];

    #[test]
    fn required_tracepoints_exist_on_the_oldest_supported_kernel() {
        for p in TRACEPOINT_PROGRAMS.iter().filter(|p| !p.optional) {
            assert!(
                !NEWER_THAN_5_8.contains(&p.tracepoint),
                "{} is newer than 5.8: it must be optional in TRACEPOINT_PROGRAMS",
                p.tracepoint
            );
        }
        assert!(
            TRACEPOINT_PROGRAMS
                .iter()
                .any(|p| p.optional && p.tracepoint == "sys_enter_close_range")
        );
    }

    #[test]
    fn finds_field_offsets_in_both_fork_layouts() {
        let new = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                   \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(new, "child_pid"), Some(20));
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;\n\
                   \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
                   \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;\n\
                   \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(old, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(old, "nope"), None);
    }
}
