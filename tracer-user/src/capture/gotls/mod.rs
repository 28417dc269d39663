//! Go crypto/tls plaintext capture, userspace side: finds Go executables among the traced
//! processes (a bounded periodic rescan of /proc, every [`RESCAN_EVERY`], on its own thread,
//! which also catches processes started or exec'd after the agent: a rescan looks at the
//! executables of the processes the kernel saw exec (`capture::procwatch`), and lists /proc and
//! looks at every process's only every [`FULL_SCAN_EVERY`]th), analyses each distinct
//! binary once (device, inode) and hands the result to the event thread, which attaches the
//! uprobes of `tracer-ebpf/src/gotls.rs` at the entry and every return instruction of
//! `crypto/tls.(*Conn).Read` and `.Write`, with the binary's layout slot as attach cookie.
//! Binaries that cannot be covered are counted per reason (`tracer_go_tls_binaries_skipped_total`).

pub mod elf;
pub mod layout;

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{Array, HashMap, Map, MapData};
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use tracer_common::{
    GO_TLS_BINARIES_MAP, GO_TLS_CALLS_MAP, GoTlsBinary, GoTlsCall, GoTlsCallKey,
    MAX_GO_TLS_BINARIES, go_tls_program, map_name,
};

use self::elf::{GoTlsBinaryInfo, Skip};
use crate::capture::probes::ProbeOptions;

/// How often /proc is scanned for new Go executables.
pub const RESCAN_EVERY: Duration = Duration::from_millis(500);
/// Every this many scans, /proc is listed and the executable of every process looked at again,
/// exec'd or not (a backstop: 30 s). Other scans look only at the processes the kernel saw exec:
/// a new executable runs only after an exec (a process forked without one runs its parent's).
pub const FULL_SCAN_EVERY: u64 = 60;
/// Processes one scan lists at most.
const MAX_PIDS_PER_SCAN: usize = 65536;
/// Executables larger than this are not read.
const MAX_EXE_BYTES: u64 = 256 << 20;
/// Distinct non-Go executables remembered (then forgotten all at once and read again).
const MAX_SEEN: usize = 8192;
/// Scans between two sweeps of the in-flight call table (entries of exited processes).
const SWEEP_EVERY_SCANS: u32 = 20;

/// Counters of the discovery (shared with the worker thread).
#[derive(Debug, Default)]
struct Stats {
    binaries_attached: AtomicU64,
    uprobes_attached: AtomicU64,
    skipped: [AtomicU64; SKIP_REASONS.len()],
    attach_failed: AtomicU64,
    table_full: AtomicU64,
    exe_unreadable: AtomicU64,
    calls_swept: AtomicU64,
    scans: AtomicU64,
    full_scans: AtomicU64,
    processes_considered: AtomicU64,
}

/// Reasons a binary is skipped, in the order of `Stats::skipped`.
const SKIP_REASONS: [Skip; 7] = [
    Skip::NotAmd64,
    Skip::StackAbi,
    Skip::UnknownLayout,
    Skip::NoSymbols,
    Skip::NoCryptoTls,
    Skip::NoTcpConnType,
    Skip::Disassembly,
];

/// What /metrics shows of Go crypto/tls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsSnapshot {
    /// 1 when the uprobe programs loaded.
    pub loaded: u64,
    pub binaries_attached: u64,
    pub uprobes_attached: u64,
    pub skipped_not_amd64: u64,
    pub skipped_stack_abi: u64,
    pub skipped_unknown_layout: u64,
    pub skipped_no_symbols: u64,
    pub skipped_no_crypto_tls: u64,
    pub skipped_no_tcp_conn_type: u64,
    pub skipped_disassembly: u64,
    pub skipped_attach_failed: u64,
    pub skipped_table_full: u64,
    pub skipped_exe_unreadable: u64,
    pub calls_swept: u64,
    /// Scans of /proc done (a test waits on it before asserting what was not attached).
    pub scans: u64,
    /// Scans that looked at every process's executable (not only exec'd ones).
    pub full_scans: u64,
    /// Processes whose executable a scan looked at (exec'd, or in a full scan).
    pub processes_considered: u64,
    pub kernel_not_tcp: u64,
    pub kernel_unreadable: u64,
    pub kernel_untracked: u64,
    pub kernel_calls_full: u64,
    pub kernel_no_layout: u64,
}

/// A binary analysed by the worker, to attach on the event thread.
struct Plan {
    /// The executable, open: attached through `/proc/self/fd/N` so the process may be gone.
    file: File,
    pid: u32,
    /// The executable's path as the process's /proc entry names it (for the log).
    exe: std::path::PathBuf,
    info: GoTlsBinaryInfo,
}

/// The running discovery and the attached binaries.
pub struct GoTls {
    stats: Arc<Stats>,
    plans: mpsc::Receiver<Plan>,
    next_slot: u32,
    /// Links of every attached binary (kept: dropping `Ebpf` detaches them).
    links: Vec<(&'static str, UProbeLinkId)>,
    _stop: mpsc::Sender<()>,
}

fn dup_map_fd(ebpf: &Ebpf, name: &str) -> Option<OwnedFd> {
    let data = match ebpf.map(name)? {
        Map::HashMap(data) | Map::LruHashMap(data) => data,
        _ => return None,
    };
    data.fd().as_fd().try_clone_to_owned().ok()
}

impl GoTls {
    /// Loads the uprobe programs and starts the discovery thread; None (warned) when the
    /// programs cannot load (Go TLS plaintext is then not captured; nothing else changes).
    pub fn start(
        ebpf: &mut Ebpf,
        opts: &ProbeOptions,
        changes: Option<crate::capture::procwatch::Subscriber>,
    ) -> Option<GoTls> {
        for name in go_tls_program::ALL {
            let loaded = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} missing from the object"))
                .and_then(|p| <&mut UProbe>::try_from(p).map_err(|e| e.to_string()))
                .and_then(|p| p.load().map_err(|e| e.to_string()));
            if let Err(err) = loaded {
                tracing::warn!(%err, program = name, "Go crypto/tls uprobes not loaded: Go TLS plaintext is not captured");
                return None;
            }
        }
        let filter = if opts.pid_filter || !opts.pids.is_empty() {
            dup_map_fd(ebpf, map_name::FILTER_PIDS)
                .and_then(|fd| MapData::from_fd(fd).ok())
                .and_then(|m| HashMap::<MapData, u32, u8>::try_from(Map::HashMap(m)).ok())
                .map(Some)
        } else {
            Some(None)
        };
        let Some(filter) = filter else {
            tracing::warn!(
                "Go crypto/tls discovery: the pid filter could not be read; not started"
            );
            return None;
        };
        let calls = dup_map_fd(ebpf, GO_TLS_CALLS_MAP)
            .and_then(|fd| MapData::from_fd(fd).ok())
            .and_then(|m| {
                HashMap::<MapData, GoTlsCallKey, GoTlsCall>::try_from(Map::HashMap(m)).ok()
            });
        let stats = Arc::new(Stats::default());
        let (plans_tx, plans) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let mut worker = Discovery {
            stats: Arc::clone(&stats),
            plans: plans_tx,
            filter,
            calls,
            seen: HashSet::new(),
            attached: HashSet::new(),
            own_pid: std::process::id(),
            own_exe: exe_id(Path::new("/proc/self/exe")),
            changes,
            sweeps: matches!(
                crate::capture::own::PidIdentity::of_self(Path::new("/proc")),
                crate::capture::own::PidIdentity::Host { .. }
            ),
        };
        let spawned = std::thread::Builder::new()
            .name("go-tls-discovery".into())
            .spawn(move || {
                let mut scans = 0u32;
                loop {
                    worker.scan();
                    scans = scans.wrapping_add(1);
                    if scans.is_multiple_of(SWEEP_EVERY_SCANS) {
                        worker.sweep_calls();
                    }
                    match stopped.recv_timeout(RESCAN_EVERY) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "Go crypto/tls discovery thread not started");
            return None;
        }
        Some(GoTls {
            stats,
            plans,
            next_slot: 0,
            links: Vec::new(),
            _stop: stop,
        })
    }

    /// Attaches the binaries the worker analysed since the last call.
    pub fn poll(&mut self, ebpf: &mut Ebpf) {
        while let Ok(plan) = self.plans.try_recv() {
            self.attach(ebpf, plan);
        }
    }

    fn attach(&mut self, ebpf: &mut Ebpf, plan: Plan) {
        let slot = self.next_slot;
        if slot >= MAX_GO_TLS_BINARIES {
            self.stats.table_full.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pid = plan.pid,
                "Go crypto/tls: binary table full, not attached"
            );
            return;
        }
        let layout = GoTlsBinary {
            valid: 1,
            tcp_conn_hash: plan.info.tcp_conn_hash,
            tls_conn_conn: plan.info.layout.tls_conn_conn,
            tcp_conn_fd: plan.info.layout.tcp_conn_fd,
            netfd_sysfd: plan.info.layout.netfd_sysfd,
        };
        let stored = ebpf
            .map_mut(GO_TLS_BINARIES_MAP)
            .ok_or_else(|| "map missing".to_string())
            .and_then(|m| {
                Array::<&mut MapData, GoTlsBinary>::try_from(m).map_err(|e| e.to_string())
            })
            .and_then(|mut a| a.set(slot, layout, 0).map_err(|e| e.to_string()));
        if let Err(err) = stored {
            self.stats.attach_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%err, "Go crypto/tls: layout not stored");
            return;
        }
        self.next_slot += 1;
        let target = format!("/proc/self/fd/{}", plan.file.as_raw_fd());
        let sites = [
            (go_tls_program::READ_ENTRY, vec![plan.info.read.entry]),
            (go_tls_program::READ_RETURN, plan.info.read.returns.clone()),
            (go_tls_program::WRITE_ENTRY, vec![plan.info.write.entry]),
            (
                go_tls_program::WRITE_RETURN,
                plan.info.write.returns.clone(),
            ),
            (
                go_tls_program::HANDSHAKE_ENTRY,
                plan.info.handshake.into_iter().collect(),
            ),
        ];
        let mut links: Vec<(&'static str, UProbeLinkId)> = Vec::new();
        let mut failure = None;
        'sites: for (name, offsets) in &sites {
            let Some(program) = ebpf
                .program_mut(name)
                .and_then(|p| <&mut UProbe>::try_from(p).ok())
            else {
                failure = Some(format!("program {name} missing"));
                break;
            };
            for offset in offsets {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(*offset),
                    cookie: Some(u64::from(slot)),
                };
                match program.attach(point, &target, UProbeScope::AllProcesses) {
                    Ok(link) => links.push((name, link)),
                    Err(err) => {
                        failure = Some(format!("{name} at {offset:#x}: {err}"));
                        break 'sites;
                    }
                }
            }
        }
        if let Some(err) = failure {
            for (name, link) in links {
                if let Some(p) = ebpf
                    .program_mut(name)
                    .and_then(|p| <&mut UProbe>::try_from(p).ok())
                {
                    let _ = p.detach(link);
                }
            }
            self.stats.attach_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%err, pid = plan.pid, "Go crypto/tls uprobes not attached");
            return;
        }
        self.stats
            .uprobes_attached
            .fetch_add(links.len() as u64, Ordering::Relaxed);
        self.stats.binaries_attached.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            pid = plan.pid,
            exe = %plan.exe.display(),
            go = %plan.info.version,
            uprobes = links.len(),
            "Go crypto/tls uprobes attached"
        );
        self.links.extend(links);
    }

    pub fn snapshot(&self) -> GoTlsSnapshot {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let skipped = |reason: Skip| {
            SKIP_REASONS
                .iter()
                .position(|r| *r == reason)
                .map(|i| get(&s.skipped[i]))
                .unwrap_or(0)
        };
        GoTlsSnapshot {
            loaded: 1,
            binaries_attached: get(&s.binaries_attached),
            uprobes_attached: get(&s.uprobes_attached),
            skipped_not_amd64: skipped(Skip::NotAmd64),
            skipped_stack_abi: skipped(Skip::StackAbi),
            skipped_unknown_layout: skipped(Skip::UnknownLayout),
            skipped_no_symbols: skipped(Skip::NoSymbols),
            skipped_no_crypto_tls: skipped(Skip::NoCryptoTls),
            skipped_no_tcp_conn_type: skipped(Skip::NoTcpConnType),
            skipped_disassembly: skipped(Skip::Disassembly),
            skipped_attach_failed: get(&s.attach_failed),
            skipped_table_full: get(&s.table_full),
            skipped_exe_unreadable: get(&s.exe_unreadable),
            calls_swept: get(&s.calls_swept),
            scans: get(&s.scans),
            full_scans: get(&s.full_scans),
            processes_considered: get(&s.processes_considered),
            ..Default::default()
        }
    }
}

/// (device, inode) of a file.
fn exe_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The discovery thread's state.
struct Discovery {
    stats: Arc<Stats>,
    plans: mpsc::Sender<Plan>,
    /// The kernel's pid filter when one is on (host tgids).
    filter: Option<HashMap<MapData, u32, u8>>,
    /// The kernel's in-flight call table, swept of exited processes.
    calls: Option<HashMap<MapData, GoTlsCallKey, GoTlsCall>>,
    /// Executables already looked at that are not attached (bounded).
    seen: HashSet<(u64, u64)>,
    /// Executables handed over for attaching (bounded by the binary table).
    attached: HashSet<(u64, u64)>,
    own_pid: u32,
    own_exe: Option<(u64, u64)>,
    /// Processes the kernel saw exec (None: not known, every scan is full).
    changes: Option<crate::capture::procwatch::Subscriber>,
    /// The agent's /proc numbers processes as the kernel does (host pid namespace).
    sweeps: bool,
}

impl Discovery {
    /// Looks at the executables of the processes the kernel saw exec since the last scan (of
    /// every process at the first and every [`FULL_SCAN_EVERY`]th scan, and when the kernel
    /// could not name them). A pid reused without an exec runs its parent's executable.
    fn scan(&mut self) {
        let changes = match &self.changes {
            Some(changes) => changes.take(),
            None => crate::capture::procwatch::Changes {
                everything: true,
                ..Default::default()
            },
        };
        let scans = self.stats.scans.load(Ordering::Relaxed);
        let full = changes.everything || scans.is_multiple_of(FULL_SCAN_EVERY);
        let considered: Vec<u32> = if full {
            // With a pid filter, the traced processes are the filter's (few) entries.
            match &self.filter {
                Some(filter) => filter
                    .keys()
                    .filter_map(Result::ok)
                    .take(MAX_PIDS_PER_SCAN)
                    .collect(),
                None => match std::fs::read_dir("/proc") {
                    Ok(dir) => dir
                        .flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                        .take(MAX_PIDS_PER_SCAN)
                        .collect(),
                    Err(_) => return,
                },
            }
        } else {
            let mut pids: Vec<u32> = changes.pids.into_iter().collect();
            if let Some(filter) = &self.filter {
                pids.retain(|pid| filter.get(pid, 0).is_ok());
            }
            pids
        };
        for pid in considered {
            if pid == self.own_pid {
                continue;
            }
            self.stats
                .processes_considered
                .fetch_add(1, Ordering::Relaxed);
            self.consider(pid);
        }
        if full {
            self.stats.full_scans.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.scans.fetch_add(1, Ordering::Relaxed);
    }

    fn consider(&mut self, pid: u32) {
        let exe = format!("/proc/{pid}/exe");
        // /proc/<pid>/exe names the executable whatever the process's mount namespace.
        let Some(id) = exe_id(Path::new(&exe)) else {
            return;
        };
        if Some(id) == self.own_exe || self.seen.contains(&id) || self.attached.contains(&id) {
            return;
        }
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        self.seen.insert(id);
        let Ok(file) = File::open(&exe) else {
            // Gone, or not ours to read: try again with its next process.
            self.seen.remove(&id);
            return;
        };
        // Most executables are not Go: tell from the ELF headers and one section before reading
        // the whole file.
        let opened = format!("/proc/self/fd/{}", file.as_raw_fd());
        if !crate::correlate::runtime::is_go_executable(Path::new(&opened)) {
            return;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > MAX_EXE_BYTES {
            self.stats.exe_unreadable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Only the parts the analysis asks for are read (not the whole binary: the agent's
        // peak memory would jump by the largest Go executable it meets).
        let analysed = elf::analyse_file(&object::ReadCache::new(&file));
        match analysed {
            Ok(info) => {
                self.seen.remove(&id);
                self.attached.insert(id);
                let exe = std::fs::read_link(&exe).unwrap_or_default();
                let _ = self.plans.send(Plan {
                    file,
                    pid,
                    exe,
                    info,
                });
            }
            Err(Skip::NotElf | Skip::NotGo) => {}
            Err(reason) => {
                if let Some(i) = SKIP_REASONS.iter().position(|r| *r == reason) {
                    self.stats.skipped[i].fetch_add(1, Ordering::Relaxed);
                }
                if reason != Skip::NoCryptoTls {
                    tracing::info!(
                        pid,
                        reason = reason.as_str(),
                        "Go executable without crypto/tls uprobes"
                    );
                }
            }
        }
    }

    /// Removes in-flight calls of processes that exited mid-call (their entries would hold the
    /// table forever).
    fn sweep_calls(&mut self) {
        if !self.sweeps {
            return;
        }
        let Some(calls) = &mut self.calls else {
            return;
        };
        let dead: Vec<GoTlsCallKey> = calls
            .keys()
            .filter_map(Result::ok)
            .take(tracer_common::MAX_GO_TLS_CALLS as usize)
            .filter(|k| !Path::new(&format!("/proc/{}", k.tgid)).exists())
            .collect();
        for key in dead {
            if calls.remove(&key).is_ok() {
                self.stats.calls_swept.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::procwatch::{ProcessWatch, testing::FakeChanges};

    /// After the first (full) scan, a scan looks only at the processes the kernel saw exec; a
    /// full scan, or changes the kernel could not name, look at every process again.
    #[test]
    fn scans_look_at_execd_processes_only_between_full_scans() {
        let fake = FakeChanges::default();
        let watch = ProcessWatch::new(Box::new(fake.clone()));
        let (plans, _received) = mpsc::channel();
        let mut discovery = Discovery {
            stats: Arc::new(Stats::default()),
            plans,
            filter: None,
            calls: None,
            seen: HashSet::new(),
            attached: HashSet::new(),
            own_pid: std::process::id(),
            own_exe: exe_id(Path::new("/proc/self/exe")),
            changes: Some(watch.subscribe()),
            sweeps: false,
        };
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let considered = |d: &Discovery| d.stats.processes_considered.load(Ordering::Relaxed);
        discovery.scan();
        let everyone = considered(&discovery);
        assert!(
            everyone > 1,
            "the first scan looked at {everyone} processes"
        );
        discovery.scan();
        assert_eq!(considered(&discovery), everyone, "nothing exec'd");
        fake.changed(child.id());
        discovery.scan();
        assert_eq!(considered(&discovery), everyone + 1, "the exec'd process");
        fake.lost();
        discovery.scan();
        assert!(
            considered(&discovery) > everyone + 2,
            "changes lost: everyone"
        );
        while !discovery
            .stats
            .scans
            .load(Ordering::Relaxed)
            .is_multiple_of(FULL_SCAN_EVERY)
        {
            discovery.scan();
        }
        let before = considered(&discovery);
        discovery.scan();
        assert!(considered(&discovery) > before + 1, "the full scan");
        assert_eq!(discovery.stats.full_scans.load(Ordering::Relaxed), 3);
        let _ = child.kill();
        let _ = child.wait();
    }
}
