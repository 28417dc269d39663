//! Per-process OTel resource: service.name discovery from /proc, process.* and host.name.
//!
//! `service.name` of a traced process, first match wins: `OTEL_SERVICE_NAME` in its own
//! environment, `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`, the executable's base name
//! (`exe` link, else `comm`), else `unknown_service:<pid>` when nothing is readable. The other
//! `OTEL_RESOURCE_ATTRIBUTES` entries become resource attributes too. Every read is bounded.
//!
//! `process.command_line` is only exported when asked for ([`CommandLine::Redacted`]):
//! arguments carry passwords and tokens, so even then their secret-looking values are redacted
//! (see [`crate::telemetry::redact`]). By default the process is described by `process.executable.name`
//! and `process.executable.path`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::{AttrValue, ProcessResource};

/// Default number of processes whose resource is cached.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;
/// Most bytes read from `/proc/<pid>/environ`.
pub const MAX_ENVIRON_BYTES: u64 = 256 * 1024;
/// Most bytes of `process.command_line`.
pub const MAX_COMMAND_LINE_BYTES: usize = 1024;
/// Most bytes read from `/proc/<pid>/cmdline` (a little more than is kept, so that redaction
/// markers do not push real arguments out).
const MAX_COMMAND_LINE_READ: u64 = 2 * MAX_COMMAND_LINE_BYTES as u64;
/// Most attributes taken from a process's `OTEL_RESOURCE_ATTRIBUTES`.
pub const MAX_ENV_ATTRIBUTES: usize = 64;
/// Longest key and value taken from `OTEL_RESOURCE_ATTRIBUTES` (longer entries are skipped).
const MAX_ENV_KEY_LEN: usize = 256;
const MAX_ENV_VALUE_LEN: usize = 1024;
/// Longest `service.name` kept from the environment.
const MAX_SERVICE_NAME_LEN: usize = 256;
/// Longest `comm` (the kernel keeps 16 bytes).
const MAX_COMM_BYTES: u64 = 64;

/// Whether `process.command_line` is exported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommandLine {
    /// Not exported (the default: arguments carry secrets).
    #[default]
    Omitted,
    /// Exported with secret-looking values redacted.
    Redacted,
}

/// Attributes that describe the traced process or this tracer, which the process's own
/// `OTEL_RESOURCE_ATTRIBUTES` may not override (`service.name` follows the discovery order).
const PROTECTED_KEYS: [&str; 6] = [
    "service.name",
    "process.pid",
    "telemetry.sdk.name",
    "telemetry.sdk.version",
    "telemetry.distro.name",
    "telemetry.distro.version",
];

/// Host tgid (as the kernel reports it) to the pid naming the process under the agent's `/proc`,
/// `None` when that `/proc` does not show it (an agent in a child pid namespace).
pub type PidMap = Arc<dyn Fn(u32) -> Option<u32> + Send + Sync>;

/// Resources by pid, read from `/proc` once per pid. Bounded: when full, the least recently used
/// eighth of the entries is evicted (and counted).
pub struct ResourceCache {
    /// Pod metadata when running on a Kubernetes node.
    pods: Option<crate::telemetry::k8s::PodMetadata>,
    /// Whether resources carry a (redacted) `process.command_line`.
    command_line: CommandLine,
    proc_root: PathBuf,
    host_name: String,
    capacity: usize,
    entries: HashMap<u32, CacheEntry>,
    clock: u64,
    evictions: u64,
    /// Cached entries replaced because their pid now belongs to another process (or the process
    /// exec'd another program).
    pid_reuses: u64,
    /// Entries removed because their process exited.
    exited_removed: u64,
    /// Set when the agent's `/proc` numbers processes differently from the kernel.
    pid_map: Option<PidMap>,
    /// Processes whose resource was built without `/proc`: the agent cannot name them there.
    unmapped: u64,
}

#[derive(Debug)]
struct CacheEntry {
    resource: Arc<ProcessResource>,
    last_used: u64,
    /// Pod cache generation at lookup when the pid was not found in it (retry after a change).
    pod_miss_generation: Option<u64>,
    /// Start time of the process read (with the pid, its identity across pid reuse).
    start_time: Option<u64>,
    /// Its executable's (device, inode): changes when the process execs another program.
    exe: Option<(u64, u64)>,
    /// The process was gone at the last sweep (removed at the next one if still gone).
    gone: bool,
}

impl ResourceCache {
    /// A cache of [`DEFAULT_CACHE_CAPACITY`] processes reading from `proc_root` (normally `/proc`).
    pub fn new(proc_root: PathBuf, host_name: String) -> Self {
        Self::with_capacity(proc_root, host_name, DEFAULT_CACHE_CAPACITY)
    }

    /// A cache holding at most `capacity` (at least 1) processes.
    pub fn with_capacity(proc_root: PathBuf, host_name: String, capacity: usize) -> Self {
        ResourceCache {
            pods: None,
            command_line: CommandLine::Omitted,
            proc_root,
            host_name,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            clock: 0,
            evictions: 0,
            pid_reuses: 0,
            exited_removed: 0,
            pid_map: None,
            unmapped: 0,
        }
    }

    /// The resource of `pid`, discovered on first use.
    /// Adds Kubernetes pod attributes (and the pod's service.name rule) to every resource.
    pub fn with_pods(mut self, pods: Option<crate::telemetry::k8s::PodMetadata>) -> Self {
        self.pods = pods;
        self
    }

    /// Export `process.command_line` (redacted) or not; off unless asked for.
    pub fn with_command_line(mut self, command_line: CommandLine) -> Self {
        self.command_line = command_line;
        self
    }

    pub fn get(&mut self, pid: u32) -> Arc<ProcessResource> {
        self.get_started(pid, None)
    }

    /// The resource of `pid`, which the caller saw started at `start_time` (`/proc/<pid>/stat`
    /// field 22): a cached entry of an earlier process with the same pid is read again.
    pub fn get_started(&mut self, pid: u32, start_time: Option<u64>) -> Arc<ProcessResource> {
        self.clock += 1;
        let generation = self.pods.as_ref().map(|p| p.generation());
        let exe = match start_time {
            // The caller saw the process now: also notice an exec since it was read.
            Some(_) => self
                .proc_pid(pid)
                .and_then(|p| crate::telemetry::proc_identity::exe_id(&self.proc_root, p)),
            None => None,
        };
        if let Some(entry) = self.entries.get_mut(&pid) {
            let reused = (start_time.is_some() && entry.start_time != start_time)
                || (exe.is_some() && entry.exe.is_some() && entry.exe != exe);
            if reused {
                self.pid_reuses += 1;
            }
            let stale = reused
                || (entry.pod_miss_generation.is_some() && entry.pod_miss_generation != generation);
            if !stale {
                entry.last_used = self.clock;
                return Arc::clone(&entry.resource);
            }
        }
        if self.entries.len() >= self.capacity {
            self.evict_least_recent();
        }
        let proc_pid = match &self.pid_map {
            None => Some(pid),
            Some(map) => map(pid),
        };
        if proc_pid.is_none() {
            // Reading /proc/<host tgid> here would describe another process of this namespace.
            self.unmapped += 1;
        }
        let (mut resource, named_by_env) = discover_inner(
            proc_pid.map(|_| self.proc_root.as_path()),
            proc_pid.unwrap_or(pid),
            &self.host_name,
            self.command_line,
        );
        let mut pod_miss_generation = None;
        if let (Some(pods), Some(proc_pid)) = (&self.pods, proc_pid) {
            match pods.attributes_for_pid(&self.proc_root, proc_pid) {
                Some(pod) => merge_pod(&mut resource, pod, named_by_env),
                None => pod_miss_generation = generation,
            }
        }
        let resource = Arc::new(resource);
        let start_time = start_time
            .or_else(|| crate::telemetry::proc_identity::start_time(&self.proc_root, pid));
        let exe = exe.or_else(|| {
            proc_pid.and_then(|p| crate::telemetry::proc_identity::exe_id(&self.proc_root, p))
        });
        let entry = CacheEntry {
            resource: Arc::clone(&resource),
            last_used: self.clock,
            pod_miss_generation,
            start_time,
            exe,
            gone: false,
        };
        self.entries.insert(pid, entry);
        resource
    }

    /// Names a process whose `/proc` could not be read (it exited before the agent looked: a
    /// short-lived client on a busy machine) after the thread name the kernel reported when it
    /// opened a connection: `service.name` and `process.executable.name` become `comm` instead
    /// of `unknown_service:<pid>`. A resource read from `/proc` is left as it is.
    pub fn name_unreadable(&mut self, pid: u32, comm: &str) {
        let Some(entry) = self.entries.get_mut(&pid) else {
            return;
        };
        if comm.is_empty() || entry.resource.service_name != format!("unknown_service:{pid}") {
            return;
        }
        let mut resource = (*entry.resource).clone();
        resource.service_name = comm.to_owned();
        resource
            .attributes
            .retain(|(k, _)| k != "service.name" && k != "process.executable.name");
        resource.attributes.insert(
            0,
            (
                "service.name".into(),
                AttrValue::Str(comm.to_owned().into()),
            ),
        );
        resource.attributes.push((
            "process.executable.name".into(),
            AttrValue::Str(comm.to_owned().into()),
        ));
        entry.resource = Arc::new(resource);
    }

    /// Names processes under `/proc` through `map` (an agent in a child pid namespace).
    pub fn with_pid_map(mut self, map: Option<PidMap>) -> Self {
        self.pid_map = map;
        self
    }

    /// The `/proc` pid of host tgid `pid`, when this agent's `/proc` shows it.
    pub fn proc_pid(&self, pid: u32) -> Option<u32> {
        match &self.pid_map {
            None => Some(pid),
            Some(map) => map(pid),
        }
    }

    /// Processes described without `/proc` because the agent could not name them there.
    pub fn unmapped(&self) -> u64 {
        self.unmapped
    }

    /// Drop `pid` (the process exited; its pid may be reused).
    pub fn forget(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// Entries evicted because the cache was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Cached entries read again because their pid was reused by another process.
    pub fn pid_reuses(&self) -> u64 {
        self.pid_reuses
    }

    /// Entries removed because their process exited.
    pub fn exited_removed(&self) -> u64 {
        self.exited_removed
    }

    /// Forgets processes that have exited: an entry is removed when its process was already
    /// gone at the previous sweep, so spans still on their way (reorder window, requests
    /// pending) keep their resource for at least one sweep interval. One `stat` per entry.
    pub fn sweep_exited(&mut self) {
        let proc_root = &self.proc_root;
        let before = self.entries.len();
        self.entries.retain(|pid, entry| {
            let alive = proc_root.join(pid.to_string()).exists();
            let keep = alive || !entry.gone;
            entry.gone = !alive;
            keep
        });
        self.exited_removed += (before - self.entries.len()) as u64;
    }

    /// Processes currently cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remove the least recently used eighth (at least one entry): amortised O(log n) per miss.
    fn evict_least_recent(&mut self) {
        let mut ages: Vec<(u64, u32)> = self
            .entries
            .iter()
            .map(|(pid, e)| (e.last_used, *pid))
            .collect();
        ages.sort_unstable();
        let count = (self.capacity / 8).max(1);
        for (_, pid) in ages.into_iter().take(count) {
            self.entries.remove(&pid);
            self.evictions += 1;
        }
        tracing::debug!(
            evictions = self.evictions,
            "process resource cache full; evicted"
        );
    }
}

/// Read the resource of `pid` under `proc_root` (without `process.command_line`). Never fails:
/// what cannot be read is left out.
pub fn discover(proc_root: &Path, pid: u32, host_name: &str) -> ProcessResource {
    discover_inner(Some(proc_root), pid, host_name, CommandLine::Omitted).0
}

/// Pod attributes join the resource; the pod's name hint (label, workload, container) replaces
/// the executable-name fallback, never a name the process gave itself.
fn merge_pod(
    resource: &mut ProcessResource,
    pod: crate::telemetry::k8s::PodAttributes,
    named_by_env: bool,
) {
    if !named_by_env && let Some(hint) = pod.service_name_hint {
        resource.service_name = hint.clone();
        if let Some((_, v)) = resource
            .attributes
            .iter_mut()
            .find(|(k, _)| k == "service.name")
        {
            *v = AttrValue::Str(hint.into());
        }
    }
    for (key, value) in pod.attributes {
        if !resource.attributes.iter().any(|(k, _)| *k == key) {
            resource.attributes.push((key, value));
        }
    }
}

/// The resource, and whether its service.name came from the process's own environment.
/// With no `proc_root`, nothing is read (a process the agent's `/proc` does not show).
fn discover_inner(
    proc_root: Option<&Path>,
    pid: u32,
    host_name: &str,
    wants_command_line: CommandLine,
) -> (ProcessResource, bool) {
    let dir = proc_root.map(|root| root.join(pid.to_string()));
    let dir = dir.as_deref();
    let environ = dir
        .and_then(|d| read_bounded(&d.join("environ"), MAX_ENVIRON_BYTES))
        .map(|bytes| complete_entries(bytes, MAX_ENVIRON_BYTES));
    let exe_path = dir
        .and_then(|d| std::fs::read_link(d.join("exe")).ok())
        .map(|p| executable_path(&p));
    let comm = dir
        .and_then(|d| read_bounded(&d.join("comm"), MAX_COMM_BYTES))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\n')
                .to_string()
        })
        .filter(|c| !c.is_empty());
    let command_line = match wants_command_line {
        CommandLine::Omitted => None,
        CommandLine::Redacted => dir
            .and_then(|d| read_bounded(&d.join("cmdline"), MAX_COMMAND_LINE_READ))
            .map(|b| command_line(&b)),
    }
    .filter(|c| !c.is_empty());

    let env = environ
        .as_deref()
        .map(ProcessEnv::parse)
        .unwrap_or_default();
    let exe_name = exe_path
        .as_deref()
        .and_then(|p| p.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| comm.clone());
    let named_by_env = env.service_name.is_some() || env.attribute("service.name").is_some();
    let service_name = env
        .service_name
        .clone()
        .or_else(|| env.attribute("service.name").map(str::to_string))
        .or_else(|| exe_name.clone())
        .unwrap_or_else(|| format!("unknown_service:{pid}"));

    let mut attributes: Vec<(String, AttrValue)> = vec![
        (
            "service.name".into(),
            AttrValue::Str(service_name.clone().into()),
        ),
        ("process.pid".into(), AttrValue::Int(i64::from(pid))),
    ];
    if let Some(name) = exe_name {
        attributes.push((
            "process.executable.name".into(),
            AttrValue::Str(name.into()),
        ));
    }
    if let Some(path) = exe_path {
        attributes.push((
            "process.executable.path".into(),
            AttrValue::Str(path.into()),
        ));
    }
    if let Some(line) = command_line {
        attributes.push(("process.command_line".into(), AttrValue::Str(line.into())));
    }
    if !host_name.is_empty() {
        attributes.push((
            "host.name".into(),
            AttrValue::Str(host_name.to_string().into()),
        ));
    }
    let version = env!("CARGO_PKG_VERSION");
    attributes.push(("telemetry.sdk.name".into(), AttrValue::Str("tracer".into())));
    attributes.push((
        "telemetry.sdk.version".into(),
        AttrValue::Str(version.into()),
    ));
    attributes.push((
        "telemetry.distro.name".into(),
        AttrValue::Str("tracer".into()),
    ));
    attributes.push((
        "telemetry.distro.version".into(),
        AttrValue::Str(version.into()),
    ));
    for (key, value) in env.attributes {
        if PROTECTED_KEYS.contains(&key.as_str()) {
            continue;
        }
        match attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, existing)) => *existing = AttrValue::Str(value.into()),
            None => attributes.push((key, AttrValue::Str(value.into()))),
        }
    }
    (
        ProcessResource {
            pid,
            service_name,
            attributes,
        },
        named_by_env,
    )
}

/// What the process's environment says about its resource.
#[derive(Debug, Default, PartialEq, Eq)]
struct ProcessEnv {
    service_name: Option<String>,
    /// Decoded `OTEL_RESOURCE_ATTRIBUTES` entries, first occurrence of each key.
    attributes: Vec<(String, String)>,
}

impl ProcessEnv {
    /// Parse a NUL-separated `environ` block.
    fn parse(environ: &[u8]) -> ProcessEnv {
        let mut env = ProcessEnv::default();
        for entry in environ.split(|b| *b == 0) {
            if let Some(value) = entry.strip_prefix(b"OTEL_SERVICE_NAME=") {
                let name = String::from_utf8_lossy(value).trim().to_string();
                if !name.is_empty() {
                    env.service_name = Some(truncate(name, MAX_SERVICE_NAME_LEN));
                }
            } else if let Some(value) = entry.strip_prefix(b"OTEL_RESOURCE_ATTRIBUTES=") {
                env.attributes = parse_resource_attributes(value);
            }
        }
        env
    }

    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// `k1=v1,k2=v2` with percent-encoded keys and values and optional whitespace around them.
/// Malformed or oversized entries are skipped; later duplicates of a key are ignored.
fn parse_resource_attributes(value: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in value.split(|b| *b == b',') {
        if out.len() >= MAX_ENV_ATTRIBUTES {
            tracing::debug!("OTEL_RESOURCE_ATTRIBUTES of a traced process has too many entries");
            break;
        }
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let key = percent_decode(entry.get(..eq).unwrap_or_default());
        let val = percent_decode(entry.get(eq + 1..).unwrap_or_default());
        let (key, val) = (key.trim(), val.trim());
        if key.is_empty() || key.len() > MAX_ENV_KEY_LEN || val.len() > MAX_ENV_VALUE_LEN {
            continue;
        }
        if !out.iter().any(|(k, _)| k == key) {
            out.push((key.to_string(), val.to_string()));
        }
    }
    out
}

/// Decode `%XX` escapes (invalid escapes are kept literally), then UTF-8 lossily.
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&byte, tail)) = rest.split_first() {
        let decoded = match (byte, tail) {
            (b'%', [high, low, ..]) => hex_value(*high)
                .zip(hex_value(*low))
                .map(|(h, l)| (h << 4) | l),
            _ => None,
        };
        match decoded {
            Some(value) => {
                out.push(value);
                rest = tail.get(2..).unwrap_or_default();
            }
            None => {
                out.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Read at most `limit` bytes of a file; `None` if it cannot be opened or read.
fn read_bounded(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// If the read stopped at `limit`, drop the last (possibly cut) NUL-separated entry.
fn complete_entries(mut bytes: Vec<u8>, limit: u64) -> Vec<u8> {
    if bytes.len() as u64 >= limit {
        let keep = bytes.iter().rposition(|b| *b == 0).map_or(0, |i| i + 1);
        bytes.truncate(keep);
    }
    bytes
}

/// The `exe` link target as text, without the kernel's ` (deleted)` suffix.
fn executable_path(link: &Path) -> String {
    let path = link.to_string_lossy();
    path.strip_suffix(" (deleted)").unwrap_or(&path).to_string()
}

/// `cmdline` arguments with secrets redacted, joined by spaces, bounded to
/// [`MAX_COMMAND_LINE_BYTES`]. An argument cut by the read limit is dropped, not half-redacted
/// (a cut URL could show part of its password).
fn command_line(raw: &[u8]) -> String {
    let raw = complete_entries(raw.to_vec(), MAX_COMMAND_LINE_READ);
    let raw = raw.strip_suffix(b"\0").unwrap_or(&raw);
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    let text = crate::telemetry::redact::command_line_args(&args).join(" ");
    truncate(text.trim_end().to_string(), MAX_COMMAND_LINE_BYTES)
}

/// At most `max` bytes, cut on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {

    /// A process gone before its /proc was read is named after the kernel's thread name, not
    /// `unknown_service:<pid>`; a process read from /proc keeps its own name.
    #[test]
    fn a_process_gone_before_its_proc_was_read_is_named_by_the_kernel() {
        let root = std::env::temp_dir().join(format!("tracer-res-comm-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let mut cache = ResourceCache::new(root.clone(), "host".into());
        assert_eq!(cache.get(77).service_name, "unknown_service:77");
        cache.name_unreadable(77, "curl");
        let named = cache.get(77);
        assert_eq!(named.service_name, "curl");
        let attr = |k: &str| {
            named
                .attributes
                .iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            attr("service.name"),
            vec![AttrValue::Str("curl".to_owned().into())]
        );
        assert_eq!(
            attr("process.executable.name"),
            vec![AttrValue::Str("curl".to_owned().into())]
        );
        assert_eq!(attr("process.pid"), vec![AttrValue::Int(77)]);
        let dir = root.join("78");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("comm"), "nginx\n").unwrap();
        assert_eq!(cache.get(78).service_name, "nginx");
        cache.name_unreadable(78, "other");
        assert_eq!(cache.get(78).service_name, "nginx");
        let _ = std::fs::remove_dir_all(&root);
    }

    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fake `/proc` in a fresh temporary directory, removed on drop.
    struct FakeProc {
        root: PathBuf,
    }

    impl FakeProc {
        fn new() -> FakeProc {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "tracer-resource-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&root).expect("create fake proc root");
            FakeProc { root }
        }

        fn process(&self, pid: u32) -> FakeProcess {
            let dir = self.root.join(pid.to_string());
            std::fs::create_dir_all(&dir).expect("create pid dir");
            FakeProcess { dir }
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    struct FakeProcess {
        dir: PathBuf,
    }

    impl FakeProcess {
        fn file(self, name: &str, contents: &[u8]) -> Self {
            std::fs::write(self.dir.join(name), contents).expect("write fake proc file");
            self
        }
        fn exe(self, target: &str) -> Self {
            std::os::unix::fs::symlink(target, self.dir.join("exe")).expect("symlink exe");
            self
        }
        fn environ(self, vars: &[&str]) -> Self {
            let mut block = Vec::new();
            for var in vars {
                block.extend_from_slice(var.as_bytes());
                block.push(0);
            }
            self.file("environ", &block)
        }
    }

    #[test]
    fn pid_map_reads_the_namespaced_pid_and_never_an_unmapped_host_pid() {
        let proc = FakeProc::new();
        // In the agent's namespace, 7 is the process the kernel knows as 4242; 4242 there is an
        // unrelated process, and host tgid 5000 is not in the namespace at all.
        proc.process(7).exe("/usr/bin/curl");
        proc.process(4242).exe("/usr/bin/unrelated");
        proc.process(5000).exe("/usr/bin/also-unrelated");
        let map: PidMap = Arc::new(|host| (host == 4242).then_some(7));
        let mut cache = ResourceCache::new(proc.root.clone(), "h".into()).with_pid_map(Some(map));
        assert_eq!(cache.get(4242).service_name, "curl");
        assert_eq!(cache.unmapped(), 0);
        let outside = cache.get(5000);
        assert_eq!(outside.service_name, "unknown_service:5000");
        assert_eq!(attr(&outside, "process.executable.name"), None);
        assert_eq!(cache.unmapped(), 1);
        assert_eq!(cache.proc_pid(4242), Some(7));
        assert_eq!(cache.proc_pid(5000), None);
    }

    fn attr<'a>(resource: &'a ProcessResource, key: &str) -> Option<&'a AttrValue> {
        let found: Vec<_> = resource
            .attributes
            .iter()
            .filter(|(k, _)| k == key)
            .collect();
        assert!(found.len() <= 1, "{key} appears {} times", found.len());
        found.first().map(|(_, v)| v)
    }

    fn str_attr<'a>(resource: &'a ProcessResource, key: &str) -> Option<&'a str> {
        match attr(resource, key) {
            Some(AttrValue::Str(s)) => Some(s),
            Some(other) => panic!("{key} is not a string: {other:?}"),
            None => None,
        }
    }

    #[test]
    fn service_name_order() {
        let proc = FakeProc::new();
        let base = |pid| {
            proc.process(pid)
                .exe("/usr/local/bin/checkout-api")
                .file("comm", b"checkout-wor\n")
                .file("cmdline", b"/usr/local/bin/checkout-api\0--port\08080\0")
        };
        base(1).environ(&[
            "PATH=/bin",
            "OTEL_SERVICE_NAME=checkout",
            "OTEL_RESOURCE_ATTRIBUTES=service.name=ignored",
        ]);
        base(2).environ(&[
            "OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod,service.name=cart%20svc",
        ]);
        base(3).environ(&["OTEL_SERVICE_NAME=  ", "HOME=/root"]);
        proc.process(4).file("comm", b"worker\n");
        proc.process(5);
        // (pid, expected service.name)
        let cases = [
            (1, "checkout"),
            (2, "cart svc"),
            (3, "checkout-api"),
            (4, "worker"),
            (5, "unknown_service:5"),
            (6, "unknown_service:6"),
        ];
        for (pid, expected) in cases {
            let resource = discover(&proc.root, pid, "node-a");
            assert_eq!(resource.service_name, expected, "pid {pid}");
            assert_eq!(
                str_attr(&resource, "service.name"),
                Some(expected),
                "pid {pid}"
            );
            assert_eq!(resource.pid, pid);
        }
    }

    /// exec keeps the pid and the start time; the executable changes: the resource is re-read.
    #[test]
    fn exec_is_noticed_by_the_executable_identity() {
        let proc = FakeProc::new();
        let launcher = proc.root.join("launcher-bin");
        let server = proc.root.join("server-bin");
        std::fs::write(&launcher, b"a").expect("launcher file");
        std::fs::write(&server, b"b").expect("server file");
        proc.process(40)
            .file("comm", b"launcher\n")
            .exe(launcher.to_str().expect("utf-8 path"));
        let mut cache = ResourceCache::new(proc.root.clone(), "h".into());
        assert_eq!(cache.get_started(40, Some(7)).service_name, "launcher-bin");
        let dir = proc.root.join("40");
        std::fs::remove_file(dir.join("exe")).expect("unlink exe");
        std::os::unix::fs::symlink(&server, dir.join("exe")).expect("relink exe");
        std::fs::write(dir.join("comm"), b"server\n").expect("comm");
        assert_eq!(cache.get_started(40, Some(7)).service_name, "server-bin");
        assert_eq!(cache.pid_reuses(), 1);
    }

    #[test]
    fn process_attributes() {
        let proc = FakeProc::new();
        proc.process(77)
            .exe("/opt/app/bin/server (deleted)")
            .file("comm", b"server\n")
            .file("cmdline", b"/opt/app/bin/server\0-c\0/etc/app.conf\0")
            .environ(&["OTEL_RESOURCE_ATTRIBUTES=deployment.environment=staging, team = pay%2Cments ,host.name=from-env,process.pid=1,telemetry.sdk.name=other,broken,=nokey"]);
        let r = discover(&proc.root, 77, "node-a");
        assert_eq!(
            str_attr(&r, "process.command_line"),
            None,
            "not exported unless asked for"
        );
        let r = discover_inner(Some(&proc.root), 77, "node-a", CommandLine::Redacted).0;
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(77)));
        assert_eq!(str_attr(&r, "process.executable.name"), Some("server"));
        assert_eq!(
            str_attr(&r, "process.executable.path"),
            Some("/opt/app/bin/server")
        );
        assert_eq!(
            str_attr(&r, "process.command_line"),
            Some("/opt/app/bin/server -c /etc/app.conf")
        );
        assert_eq!(
            str_attr(&r, "telemetry.sdk.name"),
            Some("tracer"),
            "protected from the env"
        );
        assert_eq!(
            str_attr(&r, "telemetry.sdk.version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(str_attr(&r, "telemetry.distro.name"), Some("tracer"));
        assert_eq!(str_attr(&r, "telemetry.sdk.language"), None);
        assert_eq!(str_attr(&r, "deployment.environment"), Some("staging"));
        assert_eq!(str_attr(&r, "team"), Some("pay,ments"));
        assert_eq!(
            str_attr(&r, "host.name"),
            Some("from-env"),
            "the process's own setting wins"
        );
        assert_eq!(str_attr(&r, "broken"), None);
        assert_eq!(r.service_name, "server");
    }

    #[test]
    fn host_name_and_missing_pieces() {
        let proc = FakeProc::new();
        proc.process(8).file("comm", b"sh\n");
        let r = discover(&proc.root, 8, "node-b");
        assert_eq!(str_attr(&r, "host.name"), Some("node-b"));
        assert_eq!(str_attr(&r, "process.executable.name"), Some("sh"));
        assert_eq!(str_attr(&r, "process.executable.path"), None);
        assert_eq!(str_attr(&r, "process.command_line"), None);
        let gone = discover(&proc.root, 9, "");
        assert_eq!(str_attr(&gone, "host.name"), None);
        assert_eq!(gone.service_name, "unknown_service:9");
    }

    #[test]
    fn reads_are_bounded() {
        let proc = FakeProc::new();
        let filler = format!("FILLER={}", "x".repeat(300 * 1024));
        let many_args = format!("{}\0", "a".repeat(99)).repeat(50);
        proc.process(10)
            .file("cmdline", format!("prog\0{many_args}").as_bytes())
            .environ(&[
                "OTEL_SERVICE_NAME=early",
                &filler,
                "OTEL_RESOURCE_ATTRIBUTES=late=1",
            ]);
        let r = discover_inner(Some(&proc.root), 10, "h", CommandLine::Redacted).0;
        assert_eq!(r.service_name, "early");
        assert_eq!(
            str_attr(&r, "late"),
            None,
            "entries past the environ limit are not read"
        );
        let line = str_attr(&r, "process.command_line").expect("command line");
        assert_eq!(line.len(), MAX_COMMAND_LINE_BYTES);
        assert!(line.starts_with("prog aaa"));

        // An entry cut by the read limit is not half-used.
        let pad = "P".repeat(usize::try_from(MAX_ENVIRON_BYTES).expect("fits") - 40);
        let env = format!("PAD={pad}\0OTEL_SERVICE_NAME=truncated-name-that-crosses-the-limit\0");
        proc.process(11)
            .file("environ", env.as_bytes())
            .file("comm", b"fallback\n");
        assert_eq!(discover(&proc.root, 11, "h").service_name, "fallback");

        let many: Vec<String> = (0..200).map(|i| format!("k{i}=v")).collect();
        let var = format!("OTEL_RESOURCE_ATTRIBUTES={}", many.join(","));
        proc.process(12).environ(&[&var]);
        let r = discover(&proc.root, 12, "h");
        assert_eq!(str_attr(&r, "k63"), Some("v"));
        assert_eq!(str_attr(&r, "k64"), None);
    }

    #[test]
    fn non_utf8_is_lossy() {
        let proc = FakeProc::new();
        proc.process(13)
            .file("cmdline", b"bin\xff\0arg\0")
            .environ(&["OTEL_RESOURCE_ATTRIBUTES=k=%ff%zz%4"]);
        let r = discover_inner(Some(&proc.root), 13, "h", CommandLine::Redacted).0;
        assert_eq!(
            str_attr(&r, "process.command_line"),
            Some("bin\u{fffd} arg")
        );
        assert_eq!(str_attr(&r, "k"), Some("\u{fffd}%zz%4"));
    }

    #[test]
    fn command_line_is_opt_in_and_redacted() {
        let proc = FakeProc::new();
        proc.process(30).exe("/usr/bin/worker").file(
            "cmdline",
            b"/usr/bin/worker\0--db-password=hunter2\0--token\0tok-1\0\0--db\0postgres://app:pw-2@db/x?sslmode=off\0",
        );
        let mut cache = ResourceCache::with_capacity(proc.root.clone(), "h".into(), 8);
        let default = cache.get(30);
        assert_eq!(str_attr(&default, "process.command_line"), None);
        assert_eq!(
            str_attr(&default, "process.executable.name"),
            Some("worker")
        );
        assert_eq!(
            str_attr(&default, "process.executable.path"),
            Some("/usr/bin/worker")
        );

        let mut cache = ResourceCache::with_capacity(proc.root.clone(), "h".into(), 8)
            .with_command_line(CommandLine::Redacted);
        let opted_in = cache.get(30);
        assert_eq!(
            str_attr(&opted_in, "process.command_line"),
            Some(
                "/usr/bin/worker --db-password=REDACTED --token REDACTED  --db \
                 postgres://REDACTED:REDACTED@db/x?sslmode=off"
            )
        );

        // The read stops inside a URL: the cut argument is dropped, not shown in part.
        let limit = usize::try_from(MAX_COMMAND_LINE_READ).expect("fits");
        let tokens = format!("--token={}\0", "t".repeat(150)).repeat(12);
        let raw = format!("prog\0{tokens}http://user:secret-{}", "x".repeat(limit));
        let line = command_line(raw.get(..limit).expect("ascii").as_bytes());
        assert!(line.starts_with("prog --token=REDACTED"), "{line}");
        assert!(!line.contains("secret"), "{line}");
        assert!(line.len() <= MAX_COMMAND_LINE_BYTES);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b%3D%2c"), "a b=,");
        assert_eq!(percent_decode(b"%"), "%");
        assert_eq!(percent_decode(b"%4"), "%4");
        assert_eq!(percent_decode(b"%G1"), "%G1");
        assert_eq!(percent_decode(b"caf%C3%A9"), "caf\u{e9}");
    }

    #[test]
    fn cache_reads_once_forgets_and_evicts() {
        let proc = FakeProc::new();
        proc.process(20).environ(&["OTEL_SERVICE_NAME=first"]);
        let mut cache = ResourceCache::with_capacity(proc.root.clone(), "h".into(), 8);
        let first = cache.get(20);
        assert_eq!(first.service_name, "first");
        proc.process(20).environ(&["OTEL_SERVICE_NAME=second"]);
        let again = cache.get(20);
        assert!(
            Arc::ptr_eq(&first, &again),
            "cached: /proc is read once per pid"
        );
        cache.forget(20);
        assert_eq!(cache.get(20).service_name, "second");

        for pid in 100..107 {
            cache.get(pid);
        }
        assert_eq!(cache.len(), 8);
        assert_eq!(cache.evictions(), 0);
        cache.get(20); // refresh: 100 is now the least recently used
        cache.get(200);
        assert_eq!(cache.evictions(), 1);
        assert_eq!(cache.len(), 8);
        let survivor = cache.get(20);
        assert_eq!(survivor.service_name, "second", "recently used entry kept");
        assert_eq!(cache.evictions(), 1, "hit does not evict");
        cache.get(100); // was evicted: a miss that evicts again
        assert_eq!(cache.evictions(), 2);

        // Exited processes leave after a grace sweep.
        let mut swept = ResourceCache::with_capacity(proc.root.clone(), "h".into(), 8);
        swept.get(20);
        swept.get(999); // no such process
        swept.sweep_exited();
        assert_eq!((swept.len(), swept.exited_removed()), (2, 0), "grace sweep");
        swept.sweep_exited();
        assert_eq!((swept.len(), swept.exited_removed()), (1, 1));
        assert_eq!(
            swept.get(20).service_name,
            "second",
            "the live process stays"
        );

        let mut big = ResourceCache::with_capacity(proc.root.clone(), "h".into(), 64);
        for pid in 0..1000 {
            big.get(pid);
            assert!(big.len() <= 64);
        }
        assert!(big.evictions() >= 1000 - 64);
    }

    #[test]
    fn real_proc_for_this_process() {
        let pid = std::process::id();
        let resource = discover_inner(
            Some(Path::new("/proc")),
            pid,
            "test-host",
            CommandLine::Redacted,
        )
        .0;
        let exe = std::env::current_exe().expect("current exe");
        let exe_name = exe.file_name().and_then(|n| n.to_str()).expect("exe name");
        assert_eq!(resource.pid, pid);
        assert_eq!(
            attr(&resource, "process.pid"),
            Some(&AttrValue::Int(i64::from(pid)))
        );
        assert_eq!(
            str_attr(&resource, "process.executable.name"),
            Some(exe_name)
        );
        assert_eq!(str_attr(&resource, "process.executable.path"), exe.to_str());
        let line = str_attr(&resource, "process.command_line").expect("command line");
        assert!(line.contains(exe_name), "{line}");
        if std::env::var_os("OTEL_SERVICE_NAME").is_none()
            && std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_none()
        {
            assert_eq!(resource.service_name, exe_name);
        }
        assert!(!resource.service_name.is_empty());
    }
}
