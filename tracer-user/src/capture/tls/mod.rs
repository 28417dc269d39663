//! Finds the OpenSSL copies that processes on this host map, so the agent attaches the OpenSSL
//! uprobes (`tracer_common::OPENSSL_UPROBE_PROGRAMS`) to each distinct file once: shared
//! libraries named `libssl*.so*` in `/proc/<pid>/maps` (OpenSSL 3 and, best effort, 1.1), and
//! executables that link OpenSSL statically and export its symbols (Node.js's `node`). Files are
//! opened through `/proc/<pid>/root/<path>` so a copy inside another mount namespace (a
//! container) is found at its real inode; each (device, inode) is tried once.
//!
//! Processes that start later, or `dlopen` libssl after they started (Python imports `ssl`
//! lazily), are found by a periodic rescan (`RESCAN_EVERY_NS`): an exec hook alone would miss a
//! library loaded after exec. The rescan reads `/proc/<pid>/maps` of at most `MAX_PIDS_PER_SCAN`
//! processes, and only of those that are new or changed since their maps were last read: the
//! kernel names the processes that exec'd or mapped a file executable (a `dlopen`) since the last
//! rescan (`capture::procwatch`), and each is read at that rescan and once more at the next (its
//! mapping may have been under way); nothing is read of the others. When the kernel cannot name
//! them (its table was full, another pid namespace), a rescan compares every process's start
//! time and virtual size in `/proc/<pid>/stat` with those at its last read (a `dlopen` grows the
//! latter), and so does every `STAMP_RESCAN_EVERY`th rescan (30 s); every `FULL_RESCAN_EVERY`th
//! (5 min) reads the maps of them all; an executable's symbols are read
//! once per inode. It runs on its own thread
//! ([`TlsSearch`]): the event thread only attaches what it found (tens of milliseconds per scan
//! on a busy host, a second for the first look at every executable, never on the event loop;
//! a scan runs in slices so the event thread never waits for a whole one). The search at
//! start-up covers the libraries only, synchronously, so that processes already running are
//! traced from the moment the agent says its probes are attached: at most
//! `STARTUP_SEARCH_BUDGET`, the rest left to the thread at once (counted). An executable is
//! inspected through its dynamic symbol table only, never read whole.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// How often processes are scanned again for OpenSSL copies not seen yet.
pub const RESCAN_EVERY_NS: u64 = 2_000_000_000;
/// Processes whose maps one scan reads at most.
pub const MAX_PIDS_PER_SCAN: usize = 8192;
/// Every this many rescans, every process's maps are read again, changed or not (the others read
/// only processes that are new or whose address space changed): 5 minutes.
pub const FULL_RESCAN_EVERY: u64 = 150;
/// Every this many rescans (30 s), the processes whose maps are read are told by comparing every
/// process's [`ProcessStamp`], not only from the kernel's names of changed processes (a backstop).
pub const STAMP_RESCAN_EVERY: u64 = 15;
/// Longest the search at start-up runs before the agent reports ready (about 3,000 processes
/// take a second in a debug build on a loaded host): processes it has not read by then are
/// left to the search thread, which starts at once (`scans_cut_short`).
pub const STARTUP_SEARCH_BUDGET: std::time::Duration = std::time::Duration::from_millis(500);
/// Bytes of one `/proc/<pid>/maps` read at most.
const MAX_MAPS_BYTES: u64 = 4 << 20;
/// Attempts to attach to one file before it is given up (counted once in `attach_failed`).
const MAX_ATTACH_ATTEMPTS: u8 = 4;
/// Executables larger than this are not inspected for OpenSSL symbols.
const MAX_EXECUTABLE_BYTES: u64 = 512 << 20;

/// What kind of OpenSSL copy a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// `libssl.so.*`.
    SharedLibrary,
    /// An executable exporting `SSL_read`/`SSL_write` (OpenSSL linked in statically).
    Executable,
}

/// One OpenSSL copy to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The file as this agent opens it (through the mapping process's root).
    pub path: PathBuf,
    /// The path inside the process's mount namespace (for logs).
    pub shown: String,
    pub kind: TargetKind,
    pub pid: u32,
    /// (device, inode) of the file.
    pub id: (u64, u64),
}

/// Counters of the search (monotonic unless noted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsAttachStats {
    /// Gauge: OpenSSL copies the uprobes are attached to.
    pub libraries_attached: u64,
    /// OpenSSL copies the uprobes could not be attached to (symbols missing, file gone).
    pub attach_failed: u64,
    pub scans: u64,
    /// Scans stopped at their time budget (the start-up search), the rest left to the thread.
    pub scans_cut_short: u64,
    /// Executables inspected for exported OpenSSL symbols.
    pub executables_inspected: u64,
    /// Processes a rescan did not read again: unchanged since they were read (same start time
    /// and virtual size) and with nothing to attach then.
    pub processes_unchanged: u64,
    /// Rescans that looked at every process: its maps (the first, then every
    /// `FULL_RESCAN_EVERY`th), or its stamp (every `STAMP_RESCAN_EVERY`th, and when the kernel
    /// could not name the processes that changed).
    pub full_scans: u64,
    /// Gauge, per [`UNSUPPORTED`] library: processes that mapped it at the last scan.
    pub unsupported_processes: [u64; UNSUPPORTED.len()],
}

/// TLS libraries recognised in `/proc/<pid>/maps` whose traffic is not traced (their ciphertext
/// is skipped, never parsed): the label, and the file-name prefixes that mean it. rustls (linked
/// statically, no exported symbols) cannot be seen this way.
pub const UNSUPPORTED: [(&str, &[&str]); 4] = [
    ("gnutls", &["libgnutls.so"]),
    ("nss", &["libnss3.so", "libssl3.so"]),
    // grpcio's extension module carries BoringSSL.
    ("boringssl", &["cygrpc.", "libboringssl"]),
    // The JVM (JSSE).
    ("java", &["libjvm.so"]),
];

/// Which [`UNSUPPORTED`] library a mapped file is.
fn unsupported_library(path: &str) -> Option<usize> {
    let name = path.rsplit('/').next().unwrap_or(path);
    UNSUPPORTED
        .iter()
        .position(|(_, prefixes)| prefixes.iter().any(|p| name.starts_with(p)))
}

/// What `/proc/<pid>/stat` says of a process's identity and address space: its start time
/// (another process under a reused pid differs) and its virtual size (a library mapped by
/// `dlopen`, or an exec, changes it). A process whose stamp is the one it had when its maps were
/// last read, and found nothing, is not read again until the next full rescan: reading `maps`
/// walks every mapping, `stat` is a few counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcessStamp {
    start: u64,
    vsize: u64,
}

impl ProcessStamp {
    fn read(dir: &Path) -> Option<ProcessStamp> {
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        ProcessStamp::parse(&stat)
    }

    /// Fields 22 (starttime) and 23 (vsize) of `stat`, counted after the command name, which
    /// may itself hold spaces and parentheses.
    fn parse(stat: &str) -> Option<ProcessStamp> {
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_ascii_whitespace().skip(19);
        Some(ProcessStamp {
            start: fields.next()?.parse().ok()?,
            vsize: fields.next()?.parse().ok()?,
        })
    }
}

/// A process read before: its stamp then, what it mapped of [`UNSUPPORTED`], and whether its
/// executable was inspected.
#[derive(Clone, Copy, Debug)]
struct ProcessRead {
    stamp: ProcessStamp,
    unsupported: u8,
    executables: bool,
}

/// One scan of processes in progress (see [`TlsTargets::continue_pass`]).
pub struct ScanPass {
    pids: Vec<u32>,
    /// Whether processes unchanged since they were last read are skipped.
    incremental: bool,
    /// The processes the kernel named as changed, and those read as new or changed at the last
    /// pass (read again once): the only ones read besides new ones. None: unchanged processes
    /// are told by their `/proc/<pid>/stat` stamp.
    wanted: Option<HashSet<u32>>,
    /// The processes the kernel named as changed for this pass.
    changed: HashSet<u32>,
    /// Index in `pids` of the next process to read.
    next: usize,
    /// Times each file was offered in this pass.
    offered: std::collections::HashMap<(u64, u64), u8>,
    unsupported: [u64; UNSUPPORTED.len()],
}

impl ScanPass {
    fn over(pids: Vec<u32>) -> ScanPass {
        ScanPass {
            pids,
            incremental: false,
            wanted: None,
            changed: HashSet::new(),
            next: 0,
            offered: std::collections::HashMap::new(),
            unsupported: [0; UNSUPPORTED.len()],
        }
    }
}

/// The search state: which files were already tried.
pub struct TlsTargets {
    proc_root: PathBuf,
    own_pid: u32,
    /// (device, inode) of every file done with: attached, given up, or an executable without
    /// OpenSSL.
    done: HashSet<(u64, u64)>,
    /// Failed attaches per file (a process that exits between the scan and the attach takes its
    /// `/proc/<pid>/root` path with it: tried again from another process, a few times).
    failures: std::collections::HashMap<(u64, u64), u8>,
    /// Processes the last scan read the maps of.
    pub last_scan_processes: usize,
    /// Processes read and found with nothing to attach, by pid (rebuilt by every full pass).
    read: std::collections::HashMap<u32, ProcessRead>,
    /// Passes begun, to make every [`FULL_RESCAN_EVERY`]th one full.
    passes: u64,
    /// When set, a scan stops at this instant (counted in `scans_cut_short`).
    deadline: Option<std::time::Instant>,
    /// The processes the kernel saw change (None: every rescan reads every process's stamp).
    changes: Option<crate::capture::procwatch::Subscriber>,
    /// Processes read at the last pass because they were new or changed: read once more.
    recheck: HashSet<u32>,
    pub stats: TlsAttachStats,
}

impl TlsTargets {
    pub fn new(proc_root: PathBuf) -> Self {
        TlsTargets {
            proc_root,
            own_pid: std::process::id(),
            done: HashSet::new(),
            failures: std::collections::HashMap::new(),
            last_scan_processes: 0,
            read: std::collections::HashMap::new(),
            passes: 0,
            deadline: None,
            changes: None,
            recheck: HashSet::new(),
            stats: TlsAttachStats::default(),
        }
    }

    /// Records that attaching to `target` failed; returns whether it will be tried again at a
    /// later scan (at most `MAX_ATTACH_ATTEMPTS` attempts per file).
    pub fn attach_failed(&mut self, target: &Target) -> bool {
        let failures = self.failures.entry(target.id).or_insert(0);
        *failures = failures.saturating_add(1);
        let retry = *failures < MAX_ATTACH_ATTEMPTS;
        if !retry {
            self.done.insert(target.id);
        }
        retry
    }

    /// The uprobes are attached to `target`'s file.
    pub fn attached(&mut self, target: &Target) {
        self.done.insert(target.id);
        self.failures.remove(&target.id);
    }

    /// Whether `target`'s file is done with (attached or given up) since the scan offered it.
    pub fn is_done(&self, target: &Target) -> bool {
        self.done.contains(&target.id)
    }

    /// Scans processes (all, or `pids` only) and returns the OpenSSL copies not attached yet,
    /// each through up to `MAX_ATTACH_ATTEMPTS` processes that map it (a short-lived one may be
    /// gone by the time its path is opened). Executables are inspected for exported OpenSSL
    /// symbols only with `executables`. Stops at `deadline` when one is set (counted).
    pub fn scan(&mut self, now_ns: u64, pids: Option<&[u32]>, executables: bool) -> Vec<Target> {
        let _ = now_ns;
        let mut pass = match pids {
            Some(pids) => ScanPass::over(pids.to_vec()),
            None => self.begin_pass(),
        };
        let mut out = Vec::new();
        let complete = self.continue_pass(&mut pass, executables, self.deadline, &mut out);
        if !complete {
            self.stats.scans_cut_short += 1;
            self.stats.scans += 1;
        }
        out
    }

    /// A scan of every process (up to `MAX_PIDS_PER_SCAN`), to run with [`Self::continue_pass`].
    /// The first, and every [`FULL_RESCAN_EVERY`]th, reads every process; the others only the
    /// processes that are new or changed since they were read.
    pub fn begin_pass(&mut self) -> ScanPass {
        let pids: Vec<u32> = std::fs::read_dir(&self.proc_root)
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .take(MAX_PIDS_PER_SCAN)
                    .collect()
            })
            .unwrap_or_default();
        let incremental = !self.passes.is_multiple_of(FULL_RESCAN_EVERY);
        let stamps = self.passes.is_multiple_of(STAMP_RESCAN_EVERY);
        self.passes += 1;
        // Drained at every pass, a full one too (which reads the named processes anyway).
        let changes = self.changes.as_ref().map(|c| c.take());
        let recheck = std::mem::take(&mut self.recheck);
        let mut wanted = None;
        let mut changed = HashSet::new();
        match changes.filter(|c| incremental && !stamps && !c.everything) {
            Some(changes) => {
                let mut all = changes.pids.clone();
                all.extend(recheck);
                wanted = Some(all);
                changed = changes.pids;
            }
            None => self.stats.full_scans += 1,
        }
        if !incremental {
            self.read.clear();
        } else {
            // Forget the processes that are gone (their pid may come back as another).
            let live: HashSet<u32> = pids.iter().copied().collect();
            self.read.retain(|pid, _| live.contains(pid));
        }
        let mut pass = ScanPass::over(pids);
        pass.incremental = incremental;
        pass.wanted = wanted;
        pass.changed = changed;
        pass
    }

    /// Reads the processes of `pass` not read yet, until `until` (if any) passes, adding the
    /// copies found to `out`; true when the pass is complete (its counts are then published).
    /// The search thread runs a pass in slices and releases the shared state between them.
    pub fn continue_pass(
        &mut self,
        pass: &mut ScanPass,
        executables: bool,
        until: Option<std::time::Instant>,
        out: &mut Vec<Target>,
    ) -> bool {
        while let Some(&pid) = pass.pids.get(pass.next) {
            if until.is_some_and(|until| std::time::Instant::now() >= until) {
                self.last_scan_processes = pass.next;
                return false;
            }
            pass.next += 1;
            if pid == self.own_pid {
                // Never the agent itself (the kernel programs skip it too).
                continue;
            }
            let dir = self.proc_root.join(pid.to_string());
            let known = self
                .read
                .get(&pid)
                .filter(|r| r.executables || !executables);
            let (unchanged, stamp) = match &pass.wanted {
                // The kernel names what changed: nothing is read of the others.
                Some(wanted) => match known.filter(|_| !wanted.contains(&pid)) {
                    Some(read) => (Some(read), None),
                    None => {
                        if !self.read.contains_key(&pid) || pass.changed.contains(&pid) {
                            // New or changed: read once more at the next pass.
                            self.recheck.insert(pid);
                        }
                        (None, ProcessStamp::read(&dir))
                    }
                },
                None => {
                    // Read before the maps: a change after this read shows at the next pass.
                    let stamp = ProcessStamp::read(&dir);
                    let unchanged = known.filter(|r| pass.incremental && Some(r.stamp) == stamp);
                    (unchanged, stamp)
                }
            };
            let seen = match unchanged {
                Some(read) => {
                    self.stats.processes_unchanged += 1;
                    read.unsupported
                }
                None => {
                    let offered = out.len();
                    let seen = self.scan_process(pid, &dir, executables, &mut pass.offered, out);
                    match stamp {
                        // Only a process that gave nothing to attach can be skipped later: one
                        // whose attach fails is offered again.
                        Some(stamp) if out.len() == offered => {
                            self.read.insert(
                                pid,
                                ProcessRead {
                                    stamp,
                                    unsupported: seen,
                                    executables,
                                },
                            );
                        }
                        _ => {
                            self.read.remove(&pid);
                        }
                    }
                    seen
                }
            };
            for (i, count) in pass.unsupported.iter_mut().enumerate() {
                *count += u64::from(seen & (1 << i) != 0);
            }
        }
        self.last_scan_processes = pass.next;
        self.stats.scans += 1;
        self.stats.unsupported_processes = pass.unsupported;
        true
    }

    /// Reads the maps of process `pid`, whose `/proc` directory is `dir`.
    fn scan_process(
        &mut self,
        pid: u32,
        dir: &Path,
        executables: bool,
        offered: &mut std::collections::HashMap<(u64, u64), u8>,
        out: &mut Vec<Target>,
    ) -> u8 {
        let mut unsupported = 0u8;
        let Some(maps) = read_bounded(&dir.join("maps"), MAX_MAPS_BYTES) else {
            return unsupported;
        };
        let exe = std::fs::read_link(dir.join("exe")).ok();
        let exe = exe.as_deref().and_then(Path::to_str).map(str::to_owned);
        for line in maps.lines() {
            let Some(mapping) = Mapping::parse(line) else {
                continue;
            };
            if let Some(i) = unsupported_library(mapping.path) {
                unsupported |= 1 << i;
                continue;
            }
            let kind = if is_libssl(mapping.path) {
                TargetKind::SharedLibrary
            } else if executables && exe.as_deref() == Some(mapping.path) {
                TargetKind::Executable
            } else {
                continue;
            };
            let id = (mapping.dev, mapping.inode);
            if self.done.contains(&id)
                || out
                    .last()
                    .is_some_and(|t: &Target| t.id == id && t.pid == pid)
            {
                continue;
            }
            let times = offered.entry(id).or_insert(0u8);
            if *times >= MAX_ATTACH_ATTEMPTS {
                continue;
            }
            let path = open_path(dir, mapping.path, id);
            if kind == TargetKind::Executable {
                self.stats.executables_inspected += 1;
                match exports_openssl(&path) {
                    Some(true) => {}
                    Some(false) => {
                        self.done.insert(id);
                        continue;
                    }
                    None => continue,
                }
            }
            *times += 1;
            out.push(Target {
                path,
                shown: mapping.path.to_owned(),
                kind,
                pid,
                id: (mapping.dev, mapping.inode),
            });
        }
        unsupported
    }
}

/// The host's own OpenSSL at the usual paths (Debian/Ubuntu multiarch, RHEL/SUSE `lib64`, and
/// 1.1 where it still ships).
const WELL_KNOWN_LIBSSL: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/aarch64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libssl.so.1.1",
    "/usr/lib64/libssl.so.1.1",
];

impl TlsTargets {
    /// The host's OpenSSL libraries at their usual paths, whether or not a process maps them
    /// now: a uprobe is set on the file, so a short-lived client (curl) that loads it later is
    /// covered from its first call, not only after the next rescan (by then it may have exited).
    pub fn well_known(&mut self, out: &mut Vec<Target>) {
        use std::os::unix::fs::MetadataExt;
        for path in WELL_KNOWN_LIBSSL {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let dev = meta.dev();
            let id = (
                u64::from(libc::major(dev)) << 32 | u64::from(libc::minor(dev)),
                meta.ino(),
            );
            if self.done.contains(&id) || out.iter().any(|t| t.id == id) {
                continue;
            }
            out.push(Target {
                path: PathBuf::from(path),
                shown: (*path).to_owned(),
                kind: TargetKind::SharedLibrary,
                pid: 0,
                id,
            });
        }
    }
}

/// The path to open the file `path` that a process (`/proc/<pid>` is `dir`) maps as `id`: the
/// same path in the agent's own mount namespace when it is that very file (nothing depends on
/// the process living on), else through the process's root (a container's file).
fn open_path(dir: &Path, path: &str, id: (u64, u64)) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let own = PathBuf::from(path);
    if let Ok(meta) = std::fs::metadata(&own) {
        let dev = meta.dev();
        let same = (
            u64::from(libc::major(dev)) << 32 | u64::from(libc::minor(dev)),
            meta.ino(),
        );
        if same == id {
            return own;
        }
    }
    dir.join("root").join(path.trim_start_matches('/'))
}

/// The search on its own thread: targets it finds wait in `pending` for the event thread,
/// which attaches them and reports back through [`TlsSearch::attached`] /
/// [`TlsSearch::attach_failed`].
pub struct TlsSearch {
    shared: std::sync::Arc<std::sync::Mutex<Shared>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    targets: TlsTargets,
    pending: Vec<Target>,
}

impl TlsSearch {
    /// Scans for the libraries now (the caller attaches them before it reports ready), then
    /// rescans everything (executables too) every `RESCAN_EVERY_NS` on a thread.
    /// `changes` names the processes that changed since the last rescan (None: every rescan
    /// reads every process's stamp).
    pub fn start(
        proc_root: PathBuf,
        now_ns: u64,
        changes: Option<crate::capture::procwatch::Subscriber>,
    ) -> TlsSearch {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let mut targets = TlsTargets::new(proc_root);
        targets.changes = changes;
        let began = std::time::Instant::now();
        targets.deadline = Some(began + STARTUP_SEARCH_BUDGET);
        let mut pending = targets.scan(now_ns, None, false);
        targets.deadline = None;
        targets.well_known(&mut pending);
        let cut_short = targets.stats.scans_cut_short > 0;
        tracing::info!(
            elapsed_ms = began.elapsed().as_millis() as u64,
            processes = targets.last_scan_processes,
            found = pending.len(),
            cut_short,
            "searched the running processes for OpenSSL copies"
        );
        let shared = Arc::new(Mutex::new(Shared { targets, pending }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("tls-search".into())
                .spawn(move || search_loop(&shared, &stop, cut_short))
                .map_err(|err| tracing::warn!(%err, "TLS library search thread not started"))
                .ok()
        };
        TlsSearch {
            shared,
            stop,
            thread,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Targets found and not attached yet (empty while a scan holds the state).
    pub fn take_pending(&self) -> Vec<Target> {
        match self.shared.try_lock() {
            Ok(mut shared) => {
                let pending = std::mem::take(&mut shared.pending);
                pending
                    .into_iter()
                    .filter(|t| !shared.targets.is_done(t))
                    .collect()
            }
            Err(_) => Vec::new(),
        }
    }

    pub fn is_done(&self, target: &Target) -> bool {
        self.lock().targets.is_done(target)
    }

    pub fn attached(&self, target: &Target) {
        let mut shared = self.lock();
        shared.targets.attached(target);
        shared.targets.stats.libraries_attached += 1;
    }

    /// See [`TlsTargets::attach_failed`]; a file given up is counted.
    pub fn attach_failed(&self, target: &Target) -> bool {
        let mut shared = self.lock();
        let retry = shared.targets.attach_failed(target);
        if !retry {
            shared.targets.stats.attach_failed += 1;
        }
        retry
    }

    pub fn stats(&self) -> TlsAttachStats {
        self.lock().targets.stats
    }
}

impl Drop for TlsSearch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Longest the search thread holds the shared state in one go (the event thread waits for it
/// when it reports an attach or reads the counters).
const SCAN_SLICE: std::time::Duration = std::time::Duration::from_millis(5);

/// Rescans every `RESCAN_EVERY_NS`; the first one at once when the start-up search was cut
/// short (`now`). A rescan runs in slices of `SCAN_SLICE`, the shared state released between.
fn search_loop(shared: &std::sync::Mutex<Shared>, stop: &std::sync::atomic::AtomicBool, now: bool) {
    use std::sync::atomic::Ordering;
    let lock = || {
        shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let started = std::time::Instant::now();
    let step = std::time::Duration::from_millis(100);
    let mut next = if now {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_nanos(RESCAN_EVERY_NS)
    };
    let mut pass: Option<(ScanPass, std::time::Instant)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (scan, began) = match &mut pass {
            Some(running) => running,
            None if started.elapsed() < next => {
                std::thread::sleep(step);
                continue;
            }
            None => {
                next = started.elapsed() + std::time::Duration::from_nanos(RESCAN_EVERY_NS);
                pass.insert((lock().targets.begin_pass(), std::time::Instant::now()))
            }
        };
        let mut shared = lock();
        let mut found = Vec::new();
        let until = std::time::Instant::now() + SCAN_SLICE;
        let complete = shared
            .targets
            .continue_pass(scan, true, Some(until), &mut found);
        for target in found {
            if !shared
                .pending
                .iter()
                .any(|t| t.id == target.id && t.pid == target.pid)
            {
                shared.pending.push(target);
            }
        }
        drop(shared);
        if complete {
            tracing::debug!(
                elapsed_us = began.elapsed().as_micros() as u64,
                processes = scan.pids.len(),
                "scanned processes for OpenSSL copies"
            );
            pass = None;
        } else {
            // Let the event thread take the state between two slices.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// One line of `/proc/<pid>/maps` with a file: its device, inode and path.
struct Mapping<'a> {
    dev: u64,
    inode: u64,
    path: &'a str,
}

impl<'a> Mapping<'a> {
    /// `address perms offset major:minor inode path` (the path may hold spaces; a deleted file
    /// ends in ` (deleted)` and is skipped: its path names nothing any more).
    fn parse(line: &'a str) -> Option<Mapping<'a>> {
        let mut rest = line;
        let mut fields = [""; 5];
        for field in &mut fields {
            rest = rest.trim_start();
            let end = rest.find(' ')?;
            *field = &rest[..end];
            rest = &rest[end..];
        }
        let path = rest.trim();
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            return None;
        }
        let (major, minor) = fields[3].split_once(':')?;
        let dev =
            (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?;
        let inode = fields[4].parse().ok().filter(|i| *i != 0)?;
        Some(Mapping { dev, inode, path })
    }
}

/// `libssl.so.3`, `libssl.so.1.1`, and bundled copies such as `libssl-1a2b3c.so.3` (not NSS's
/// `libssl3.so`, another library).
fn is_libssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libssl.so") || (name.starts_with("libssl-") && name.contains(".so"))
}

fn read_bounded(path: &Path, max: u64) -> Option<String> {
    use std::io::Read;
    let mut out = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_string(&mut out)
        .ok()?;
    Some(out)
}

/// Whether the ELF file at `path` exports OpenSSL's `SSL_read` and `SSL_write` as defined
/// dynamic symbols (an executable with OpenSSL linked in statically, as Node.js's binary);
/// `None` when it cannot be opened (its process is gone: ask again through another one).
///
/// Only the ELF header, the section headers and the dynamic symbol table with its strings are
/// read (a few hundred KiB for `node`), never the whole file: every executable of the host is
/// inspected once, and reading each whole (a debug build is hundreds of MiB) made the agent's
/// peak memory jump by the largest executable running.
pub fn exports_openssl(path: &Path) -> Option<bool> {
    use object::elf::{FileHeader32, FileHeader64};
    use object::{Endianness, FileKind};
    let file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_EXECUTABLE_BYTES {
        return Some(false);
    }
    let cache = object::ReadCache::new(file);
    let exports = match FileKind::parse(&cache) {
        Ok(FileKind::Elf64) => dynamic_exports::<FileHeader64<Endianness>>(&cache),
        Ok(FileKind::Elf32) => dynamic_exports::<FileHeader32<Endianness>>(&cache),
        _ => None,
    };
    Some(exports.unwrap_or(false))
}

/// Dynamic symbol table plus its strings read at most per executable (`node` has ~1 MiB).
const MAX_DYNAMIC_SYMBOL_BYTES: u64 = 32 << 20;

/// Whether the ELF file in `data` defines both `SSL_read` and `SSL_write` in its dynamic symbol
/// table; None when its headers do not parse or the table is larger than
/// `MAX_DYNAMIC_SYMBOL_BYTES`.
fn dynamic_exports<Elf>(data: &object::ReadCache<std::fs::File>) -> Option<bool>
where
    Elf: object::read::elf::FileHeader<Endian = object::Endianness>,
{
    use object::read::elf::{SectionHeader, Sym};
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let Some(dynsym) = sections
        .iter()
        .find(|s| s.sh_type(endian) == object::elf::SHT_DYNSYM)
    else {
        return Some(false);
    };
    let strtab = sections
        .section(object::SectionIndex(dynsym.sh_link(endian) as usize))
        .ok()?;
    let size: u64 = dynsym.sh_size(endian).into() + strtab.sh_size(endian).into();
    if size > MAX_DYNAMIC_SYMBOL_BYTES {
        return None;
    }
    let symbols: &[Elf::Sym] = dynsym.data_as_array(endian, data).ok()?;
    let strings = strtab.data(endian, data).ok()?;
    let strings = object::StringTable::new(strings, 0, strings.len() as u64);
    let (mut read, mut write) = (false, false);
    for symbol in symbols {
        if symbol.is_undefined(endian) {
            continue;
        }
        match symbol.name(endian, strings) {
            Ok(b"SSL_read") => read = true,
            Ok(b"SSL_write") => write = true,
            _ => {}
        }
    }
    Some(read && write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_name_device_inode_and_path() {
        let line = "7f1c2a400000-7f1c2a4a0000 r--p 00000000 fd:01 1311234                    /usr/lib/x86_64-linux-gnu/libssl.so.3";
        let m = Mapping::parse(line).unwrap();
        assert_eq!((m.dev, m.inode), ((0xfd << 32) | 1, 1311234));
        assert_eq!(m.path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert!(is_libssl(m.path));
        let spaced = "7f1c2a400000-7f1c2a4a0000 r-xp 00000000 08:02 42 /opt/my app/libssl.so.1.1";
        assert_eq!(
            Mapping::parse(spaced).unwrap().path,
            "/opt/my app/libssl.so.1.1"
        );
        assert!(
            Mapping::parse("7f-80 r--p 00000000 fd:01 99 /tmp/libssl.so.3 (deleted)").is_none()
        );
        assert!(Mapping::parse("7ffd-7ffe rw-p 00000000 00:00 0 [stack]").is_none());
        assert!(Mapping::parse("7ffd-7ffe rw-p 00000000 00:00 0").is_none());
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libssl3.so"));
        assert_eq!(
            unsupported_library("/usr/lib/x86_64-linux-gnu/libssl3.so"),
            Some(1)
        );
        assert_eq!(
            unsupported_library("/venv/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so"),
            Some(2)
        );
        assert_eq!(
            unsupported_library("/usr/lib/jvm/java-17/lib/server/libjvm.so"),
            Some(3)
        );
        assert_eq!(
            unsupported_library("/usr/lib/x86_64-linux-gnu/libssl.so.3"),
            None
        );
        // The order `telemetry::metrics` labels its samples in.
        let names: Vec<&str> = UNSUPPORTED.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["gnutls", "nss", "boringssl", "java"]);
        assert!(is_libssl(
            "/venv/lib/python3/site-packages/x.libs/libssl-8a3c1f.so.3"
        ));
    }

    /// Bytes this thread has read from files so far (`rchar` of /proc/thread-self/io).
    fn thread_read_bytes() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("rchar in /proc/thread-self/io")
    }

    /// OpenSSL's exports are found in its dynamic symbol table, and telling an executable that
    /// has none (this test binary, tens of MiB) reads a small part of it, not the whole file.
    #[test]
    fn openssl_exports_are_read_from_the_dynamic_symbols_only() {
        let libssl = WELL_KNOWN_LIBSSL
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .expect("the host's libssl.so.3 (python3 and curl need it; `cargo xtask setup`)");
        assert_eq!(exports_openssl(libssl), Some(true), "{}", libssl.display());
        let me = std::fs::read_link("/proc/self/exe").expect("own executable");
        let size = std::fs::metadata(&me).expect("own executable").len();
        let before = thread_read_bytes();
        assert_eq!(exports_openssl(&me), Some(false));
        let read = thread_read_bytes() - before;
        assert!(
            read < size / 4 && read < 4 << 20,
            "read {read} bytes of a {size}-byte executable to find its exports"
        );
        let garbage =
            std::env::temp_dir().join(format!("tracer-tls-garbage-{}", std::process::id()));
        std::fs::write(&garbage, b"\x7fELF\x02\x01\x01 not really").expect("temp file");
        assert_eq!(exports_openssl(&garbage), Some(false));
        let _ = std::fs::remove_file(&garbage);
        assert_eq!(exports_openssl(Path::new("/nonexistent/node")), None);
    }

    /// A scan past its deadline stops before reading another process, counted.
    #[test]
    fn a_scan_past_its_deadline_stops_and_is_counted() {
        let mut targets = TlsTargets::new(PathBuf::from("/proc"));
        targets.own_pid = 0;
        targets.deadline = Some(std::time::Instant::now());
        assert!(
            targets
                .scan(1, Some(&[std::process::id()]), false)
                .is_empty()
        );
        assert_eq!(targets.last_scan_processes, 0);
        assert_eq!(targets.stats.scans_cut_short, 1);
        targets.deadline = None;
        targets.scan(2, Some(&[std::process::id()]), false);
        assert_eq!(targets.last_scan_processes, 1);
        assert_eq!(targets.stats.scans_cut_short, 1);
        // The search thread's pass over every process, in slices: one stopped at once resumes
        // where it was and completes once.
        let scans = targets.stats.scans;
        let mut pass = targets.begin_pass();
        let total = pass.pids.len();
        assert!(total > 1, "processes listed: {total}");
        let mut out = Vec::new();
        let now = Some(std::time::Instant::now());
        assert!(!targets.continue_pass(&mut pass, false, now, &mut out));
        assert_eq!(pass.next, 0);
        assert!(targets.continue_pass(&mut pass, false, None, &mut out));
        assert_eq!((pass.next, targets.last_scan_processes), (total, total));
        assert_eq!(targets.stats.scans, scans + 1);
    }

    /// The agent's own process is never a target, and each file is tried once.
    #[test]
    fn a_scan_of_this_process_skips_it_and_files_are_tried_once() {
        let mut targets = TlsTargets::new(PathBuf::from("/proc"));
        let own = std::process::id();
        assert!(targets.scan(1, Some(&[own]), true).is_empty());
        targets.own_pid = 0;
        for target in targets.scan(3, Some(&[own]), true) {
            targets.attached(&target);
        }
        assert!(
            targets.scan(4, Some(&[own]), true).is_empty(),
            "offered again"
        );
    }

    fn fake_process(root: &Path, pid: u32, start: u64, vsize: u64, library: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("fake proc dir");
        let zeros = "0 ".repeat(18);
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (a (b) c) S {zeros}{start} {vsize} 0\n"),
        )
        .expect("stat");
        std::fs::write(
            dir.join("maps"),
            format!(
                "7f0000000000-7f0000001000 r-xp 00000000 08:01 {} {library}\n",
                library.len()
            ),
        )
        .expect("maps");
    }

    /// `stat`'s start time and virtual size, after a command name holding spaces and parens.
    #[test]
    fn a_process_stamp_is_read_after_the_command_name() {
        let zeros = "0 ".repeat(18);
        let stat = format!("42 (a (b) c) S {zeros}777 123456 9 9\n");
        assert_eq!(
            ProcessStamp::parse(&stat),
            Some(ProcessStamp {
                start: 777,
                vsize: 123456
            })
        );
        assert_eq!(ProcessStamp::parse("42 (x) S 1 2"), None);
    }

    /// A rescan reads again only the processes that are new or changed (start time, virtual
    /// size), or that had something to attach; every `FULL_RESCAN_EVERY`th pass reads all.
    #[test]
    fn rescans_read_only_new_or_changed_processes() {
        let root = std::env::temp_dir().join(format!("tracer-tls-rescan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut targets = TlsTargets::new(root.clone());
        let pass = |targets: &mut TlsTargets| {
            let mut pass = targets.begin_pass();
            let mut out = Vec::new();
            assert!(targets.continue_pass(&mut pass, true, None, &mut out));
            out
        };
        let libssl = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        fake_process(&root, 100, 5, 1000, "/usr/lib/libfoo.so");
        assert!(pass(&mut targets).is_empty());
        // The maps change behind an unchanged stamp: not read (never in practice: a new mapping
        // grows the virtual size).
        fake_process(&root, 100, 5, 1000, libssl);
        assert!(pass(&mut targets).is_empty());
        assert_eq!(targets.stats.processes_unchanged, 1);
        // The virtual size changed (a dlopen): read, and offered.
        fake_process(&root, 100, 5, 2000, libssl);
        let found = pass(&mut targets);
        assert_eq!(found.len(), 1, "{found:?}");
        // Not attached yet (a failed attach): offered again without a change.
        assert_eq!(pass(&mut targets).len(), 1);
        targets.attached(&found[0]);
        // A reused pid (another start time) is read as new.
        fake_process(&root, 100, 6, 2000, "/usr/lib/libfoo.so");
        let unchanged = targets.stats.processes_unchanged;
        assert!(pass(&mut targets).is_empty());
        assert_eq!(targets.stats.processes_unchanged, unchanged);
        // Unchanged until the next full pass, which reads it again.
        fake_process(&root, 100, 6, 2000, "/opt/other/libssl.so.3");
        let mut found = Vec::new();
        while found.is_empty() {
            let full = targets.passes.is_multiple_of(FULL_RESCAN_EVERY);
            found = pass(&mut targets);
            assert_eq!(found.is_empty(), !full, "pass {}", targets.passes);
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    /// With the kernel naming changed processes, a rescan reads only those (at that rescan and
    /// once more at the next: a mapping may have been under way) and new ones, never the
    /// others' `stat`: a `dlopen` is found by its executable mapping, an exec'd or reused pid by
    /// its exec, a new process by its pid; changes the kernel could not name fall back to the
    /// stamps of every process.
    #[test]
    fn rescans_read_only_processes_the_kernel_names_as_changed() {
        use crate::capture::procwatch::{ProcessWatch, testing::FakeChanges};
        let root = std::env::temp_dir().join(format!("tracer-tls-changes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let fake = FakeChanges::default();
        let watch = ProcessWatch::new(Box::new(fake.clone()));
        let mut targets = TlsTargets::new(root.clone());
        targets.changes = Some(watch.subscribe());
        let pass = |targets: &mut TlsTargets| {
            let mut pass = targets.begin_pass();
            let mut out = Vec::new();
            assert!(targets.continue_pass(&mut pass, true, None, &mut out));
            out
        };
        let (foo, libssl) = (
            "/usr/lib/libfoo.so",
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        );
        fake_process(&root, 100, 5, 1000, foo);
        fake_process(&root, 101, 5, 1000, foo);
        assert!(pass(&mut targets).is_empty());
        assert_eq!(targets.stats.full_scans, 1);
        // A dlopen the kernel has not named (its virtual size changed too): not read, and no
        // stamp read either (a stat file that no longer parses changes nothing).
        fake_process(&root, 100, 5, 2000, libssl);
        std::fs::write(root.join("101/stat"), "garbage").expect("stat");
        let unchanged = targets.stats.processes_unchanged;
        assert!(pass(&mut targets).is_empty());
        assert_eq!(targets.stats.processes_unchanged, unchanged + 2);
        // Named (its executable mapping of libssl): read, offered, attached.
        fake.changed(100);
        let found = pass(&mut targets);
        assert_eq!(found.len(), 1, "{found:?}");
        targets.attached(&found[0]);
        // A new process, never listed: read without being named.
        fake_process(&root, 102, 7, 1000, "/opt/b/libssl.so.3");
        let found = pass(&mut targets);
        assert_eq!((found.len(), found[0].pid), (1, 102), "{found:?}");
        targets.attached(&found[0]);
        // Exec (or a reused pid that exec'd): named, read at once and again at the next pass,
        // which finds what was mapped after the first read.
        fake_process(&root, 101, 9, 1000, foo);
        fake.changed(101);
        assert!(pass(&mut targets).is_empty());
        fake_process(&root, 101, 9, 1000, "/opt/other/libssl.so.3");
        let found = pass(&mut targets);
        assert_eq!((found.len(), found[0].pid), (1, 101), "{found:?}");
        targets.attached(&found[0]);
        // Read again after its offer (the attach might have failed), then once more; then left
        // alone until the kernel names it.
        assert!(pass(&mut targets).is_empty());
        assert!(pass(&mut targets).is_empty());
        fake_process(&root, 101, 9, 1000, "/opt/third/lib/libssl.so.3");
        assert!(pass(&mut targets).is_empty());
        // Changes the kernel could not name: every process's stamp is compared.
        fake.lost();
        let found = pass(&mut targets);
        assert!(found.is_empty(), "same stamp: {found:?}");
        fake_process(&root, 101, 9, 3000, "/opt/third/lib/libssl.so.3");
        fake.lost();
        let found = pass(&mut targets);
        assert_eq!((found.len(), found[0].pid), (1, 101), "{found:?}");
        // The first pass, and the two whose changes were lost, looked at every process.
        assert_eq!(targets.stats.full_scans, 3);
        let _ = std::fs::remove_dir_all(&root);
    }
}
