//! Cross-node context propagation in TCP header options (`--context-propagation tcp-options`):
//! whether this host can run it (cgroup v2, kernel >= 5.10), attaching the `sock_ops` program to
//! the cgroup v2 root, telling the kernel which processes serve one request per thread, and the
//! program's counters. The option layout is in `tracer_common::propagation`.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::{CgroupAttachMode, SockOps};
use tracer_common::propagation::{
    COUNTERS_MAP, DEDICATED_CANDIDATE, DEDICATED_THREADS_MAP, SOCK_OPS_PROGRAM, counter,
};

/// How span context crosses hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ContextPropagation {
    /// Not at all: no program writes to any packet (the default).
    #[default]
    None,
    /// In a TCP header option (RFC 6994 experimental option 253, 28 bytes) on the segment that
    /// starts each traced cleartext HTTP/1 request.
    TcpOptions,
}

/// The counters of the propagation programs (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PropagationCounters {
    /// Gauge: 1 when the option writer is attached, 0 when propagation is off or could not run.
    pub active: u64,
    pub options_written: u64,
    pub options_received: u64,
    pub contexts_adopted: u64,
    pub no_space: u64,
    pub malformed: u64,
    pub segment_missed: u64,
    pub client_contexts: u64,
    pub client_unlinked: u64,
    pub client_undecided: u64,
    pub processes_revoked: u64,
    /// Requests on connections whose stream offsets the kernel lost (unseen transfers): no
    /// received context adopted, no option sent.
    pub offsets_unknown: u64,
    /// SERVER requests that joined the trace of the `traceparent` header the kernel's scan of
    /// their head found.
    pub header_adopted: u64,
    /// `traceparent` headers the kernel's scan found and refused (invalid, repeated).
    pub header_rejected: u64,
    /// Scans of a head that stopped at the scan's or the capture's limit before the head ended.
    pub header_scan_at_limit: u64,
    /// Heads that were to be scanned but were not (the scan program missing from its array, or
    /// its request overwritten before it ran): those requests kept the identity the kernel
    /// gives without a header.
    pub header_scan_not_run: u64,
}

/// Why propagation cannot run here, when it cannot.
pub fn unsupported_reason() -> Option<String> {
    match aya::util::KernelVersion::current() {
        Ok(v) if v < aya::util::KernelVersion::new(5, 10, 0) => {
            return Some(format!(
                "kernel {v} is older than 5.10 (no TCP header-option callbacks)"
            ));
        }
        Ok(_) => {}
        Err(err) => return Some(format!("the kernel version is unknown: {err}")),
    }
    if cgroup2_mount(Path::new("/proc/self/mountinfo")).is_none() {
        return Some("no cgroup v2 hierarchy is mounted".to_owned());
    }
    None
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on most hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from a mountinfo file.
pub fn cgroup2_mount(mountinfo: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(mountinfo).ok()?;
    cgroup2_in(&text)
}

fn cgroup2_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ..."
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

/// Loads the `sock_ops` program and attaches it to the cgroup v2 root (every socket of the
/// host; only sockets with a pending context of a traced request carry an option).
pub fn attach(ebpf: &mut Ebpf) -> Result<PathBuf, String> {
    let root = cgroup2_mount(Path::new("/proc/self/mountinfo"))
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_owned())?;
    let cgroup = File::open(&root).map_err(|e| format!("opening {}: {e}", root.display()))?;
    let program: &mut SockOps = ebpf
        .program_mut(SOCK_OPS_PROGRAM)
        .ok_or_else(|| format!("program {SOCK_OPS_PROGRAM} is missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    program.load().map_err(|e| format!("loading: {e}"))?;
    program
        // A bpf_link (kernel >= 5.7) coexists with other programs on the cgroup whatever the
        // mode; the flags must be 0 there.
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|e| format!("attaching to {}: {e}", root.display()))?;
    Ok(root)
}

/// Tells the kernel that `pid`'s runtime is not known to multiplex requests over threads: a
/// candidate, whose CLIENT requests take the parent of the SERVER request their thread serves
/// only once the kernel has seen it serve requests one per thread (see
/// `propagation::DEDICATED_CANDIDATE`). Never over an existing mark: a process the kernel
/// revoked stays revoked, and one warming up keeps its count.
pub fn mark_dedicated(ebpf: &mut Ebpf, pid: u32) {
    /// `BPF_NOEXIST`.
    const NO_EXIST: u64 = 1;
    let Some(map) = ebpf.map_mut(DEDICATED_THREADS_MAP) else {
        return;
    };
    if let Ok(mut set) = HashMap::<&mut MapData, u32, u8>::try_from(map)
        && let Err(err) = set.insert(pid, DEDICATED_CANDIDATE, NO_EXIST)
    {
        tracing::debug!(pid, %err, "not marked (already known to the kernel, or table full)");
    }
}

/// The propagation programs' counters (`active` is filled by the caller).
pub fn counters(ebpf: &Ebpf) -> PropagationCounters {
    let mut out = PropagationCounters::default();
    let Some(map) = ebpf.map(COUNTERS_MAP) else {
        return out;
    };
    let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else {
        return out;
    };
    let read = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
    out.options_written = read(counter::OPTIONS_WRITTEN);
    out.options_received = read(counter::OPTIONS_RECEIVED);
    out.contexts_adopted = read(counter::CONTEXTS_ADOPTED);
    out.no_space = read(counter::NO_SPACE);
    out.malformed = read(counter::MALFORMED);
    out.segment_missed = read(counter::SEGMENT_MISSED);
    out.client_contexts = read(counter::CLIENT_CONTEXTS);
    out.client_unlinked = read(counter::CLIENT_UNLINKED);
    out.client_undecided = read(counter::CLIENT_UNDECIDED);
    out.processes_revoked = read(counter::PROCESSES_REVOKED);
    out.offsets_unknown = read(counter::OFFSETS_UNKNOWN);
    if let Some(map) = ebpf.map(tracer_common::traceparent_scan::COUNTERS_MAP)
        && let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map)
    {
        use tracer_common::traceparent_scan::counter as scan;
        let read = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        out.header_adopted = read(scan::ADOPTED);
        out.header_rejected = read(scan::REJECTED);
        out.header_scan_at_limit = read(scan::AT_CAPTURE_LIMIT);
        out.header_scan_not_run = read(scan::NOT_RUN);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_in("27 25 0:24 / /x rw - cgroup cgroup rw\n"), None);
        assert_eq!(cgroup2_in("garbage"), None);
    }
}
