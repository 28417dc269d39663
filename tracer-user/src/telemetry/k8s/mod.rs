//! Kubernetes pod metadata for traced processes: a process's container from its cgroup file, the
//! container's pod from a cache the API keeps current, and the `k8s.*` resource attributes.
//!
//! [`PodMetadata::start`] finds a cluster config (`KUBECONFIG`, else the in-cluster service
//! account), then watches the pods of one node in the background. [`PodMetadata::attributes_for_pid`]
//! only reads the cache: span export never waits on the API.

pub mod cache;
pub mod cgroup;
pub mod pods;
mod watch;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::DefaultBackoff;
use kube::{Client, Config};
use thiserror::Error;
use tokio::sync::{mpsc, watch as notify};
use tokio::task::AbortHandle;
use tracing::info;

use cache::{JobOwners, PodIndex};

pub use cgroup::{
    CgroupIdentity, ContainerId, container_id_from_cgroup, identity_from_cgroup,
    pod_uid_from_cgroup,
};
pub use pods::{PodAttributes, PodInfo, WorkloadNames, pod_attributes};
pub use watch::node_field_selector;

/// Bytes of `/proc/<pid>/cgroup` read at most (real files are a few hundred bytes).
pub const MAX_CGROUP_FILE_BYTES: u64 = 64 * 1024;

/// Environment variable naming this node (set from the downward API in the DaemonSet).
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// Why pod metadata could not be set up.
#[derive(Debug, Error)]
pub enum K8sError {
    #[error("reading the kubeconfig named by KUBECONFIG: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("loading the in-cluster service account config: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("no node name: set NODE_NAME or pass one (the hostname could not be read either)")]
    NoNodeName,
}

/// Counters of the pod metadata cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodMetadataStats {
    /// Pods in the cache.
    pub cached_pods: usize,
    /// Containers indexed by id.
    pub cached_containers: usize,
    /// Jobs whose CronJob owner is known.
    pub cached_job_owners: usize,
    /// Full lists of the node's pods (the first one, and one after each watch expiry or outage).
    pub relists: u64,
    /// Watch or list failures (each is retried with backoff).
    pub watch_errors: u64,
    /// Lookups made.
    pub lookups: u64,
    /// Lookups of a process in a pod-shaped cgroup whose pod was not in the cache.
    pub lookup_misses: u64,
    /// Lookups of processes not in a container (or whose cgroup file could not be read).
    pub lookups_not_in_pod: u64,
    /// Pods refused because the cache was full.
    pub pods_dropped: u64,
    /// Job owner lookups not queued because the queue was full.
    pub job_lookups_dropped: u64,
    /// Job owner lookups that failed (retried on a later pod event).
    pub job_lookup_failures: u64,
    /// Times the Job owner table was full and cleared.
    pub job_owner_evictions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    relists: AtomicU64,
    watch_errors: AtomicU64,
    lookups: AtomicU64,
    lookup_misses: AtomicU64,
    lookups_not_in_pod: AtomicU64,
    job_lookups_dropped: AtomicU64,
    job_lookup_failures: AtomicU64,
}

/// State shared by the handle and the background tasks.
struct SharedCache {
    node_name: String,
    index: RwLock<PodIndex>,
    job_owners: RwLock<JobOwners>,
    counters: Counters,
    synced: AtomicBool,
    /// Bumped on every cache change.
    generation: notify::Sender<u64>,
}

impl SharedCache {
    fn new(node_name: String) -> SharedCache {
        SharedCache {
            node_name,
            index: RwLock::new(PodIndex::default()),
            job_owners: RwLock::new(JobOwners::default()),
            counters: Counters::default(),
            synced: AtomicBool::new(false),
            generation: notify::Sender::new(0),
        }
    }

    /// Runs `change` on the index under the write lock (a poisoned lock is still used: the index
    /// holds no invariant a panic could half-apply beyond a stale entry), then bumps the generation.
    fn with_index<R>(&self, change: impl FnOnce(&mut PodIndex) -> R) -> R {
        let result = {
            let mut index = self
                .index
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            change(&mut index)
        };
        self.bump_generation();
        result
    }

    /// Installs the pods of a full list, marks the cache synced, then bumps the generation (in
    /// that order, so a waiter woken by the bump sees both). Returns whether this was the first.
    fn finish_list(&self, mut fresh: PodIndex) -> bool {
        {
            let mut index = self
                .index
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            fresh.carry_refusals_from(&index);
            *index = fresh;
        }
        let first = !self.synced.swap(true, Ordering::AcqRel);
        self.bump_generation();
        first
    }

    fn read_index<R>(&self, read: impl FnOnce(&PodIndex) -> R) -> R {
        let index = self
            .index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&index)
    }

    fn with_job_owners<R>(&self, change: impl FnOnce(&mut JobOwners) -> R) -> R {
        let mut owners = self
            .job_owners
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut owners)
    }

    fn read_job_owners<R>(&self, read: impl FnOnce(&JobOwners) -> R) -> R {
        let owners = self
            .job_owners
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&owners)
    }

    fn bump_generation(&self) {
        self.generation
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

/// Stops the background tasks when the last handle goes.
struct TaskGuard {
    tasks: Vec<AbortHandle>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A cheap, cloneable handle on the pod cache of one node.
#[derive(Clone)]
pub struct PodMetadata {
    shared: Arc<SharedCache>,
    _tasks: Arc<TaskGuard>,
}

impl std::fmt::Debug for PodMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodMetadata")
            .field("node_name", &self.shared.node_name)
            .field("synced", &self.is_synced())
            .finish_non_exhaustive()
    }
}

impl PodMetadata {
    /// Starts watching the pods on `node_name` (else `NODE_NAME`, else the hostname) if a cluster
    /// config is found: the kubeconfig files named by `KUBECONFIG` when that is set, else the
    /// in-cluster service account when `KUBERNETES_SERVICE_HOST` is set. `Ok(None)` when neither
    /// is present. Returns at once: the first list happens in the background.
    pub async fn start(node_name: Option<String>) -> Result<Option<PodMetadata>, K8sError> {
        let Some(config) = cluster_config().await? else {
            return Ok(None);
        };
        let node_name = resolve_node_name(node_name).ok_or(K8sError::NoNodeName)?;
        PodMetadata::start_with_config(config, node_name)
            .await
            .map(Some)
    }

    /// Starts watching the pods on `node_name` with an explicit client config.
    pub async fn start_with_config(
        config: Config,
        node_name: String,
    ) -> Result<PodMetadata, K8sError> {
        let backoff: Box<dyn Backoff> = Box::new(DefaultBackoff::default());
        PodMetadata::start_with_backoff(config, node_name, backoff)
    }

    fn start_with_backoff(
        mut config: Config,
        node_name: String,
        backoff: Box<dyn Backoff>,
    ) -> Result<PodMetadata, K8sError> {
        // The agent's mark: no tracer makes spans of its API watch (see `crate::capture::own`).
        if let Ok(mark) = reqwest::header::HeaderValue::from_str(&crate::capture::own::user_agent())
        {
            config.headers.push((reqwest::header::USER_AGENT, mark));
        }
        info!(cluster = %config.cluster_url, node = %node_name, "watching pods of this node");
        let client = Client::try_from(config)?;
        let shared = Arc::new(SharedCache::new(node_name));
        let (lookup_sender, lookup_receiver) = mpsc::channel(watch::JOB_LOOKUP_QUEUE);
        let watcher = tokio::spawn(watch::watch_pods(
            client.clone(),
            Arc::clone(&shared),
            lookup_sender,
            backoff,
        ));
        let resolver = tokio::spawn(watch::resolve_job_owners(
            client,
            Arc::clone(&shared),
            lookup_receiver,
        ));
        Ok(PodMetadata {
            shared,
            _tasks: Arc::new(TaskGuard {
                tasks: vec![watcher.abort_handle(), resolver.abort_handle()],
            }),
        })
    }

    /// The node whose pods are watched.
    pub fn node_name(&self) -> &str {
        &self.shared.node_name
    }

    /// Attributes for the process `pid`, from `<proc_root>/<pid>/cgroup` and the cache. Never
    /// waits on the API. `None` when the process is not in a known pod (yet: a pod that started
    /// a moment ago may appear on the next call; see [`PodMetadata::generation`]).
    pub fn attributes_for_pid(&self, proc_root: &Path, pid: u32) -> Option<PodAttributes> {
        let path = proc_root.join(pid.to_string()).join("cgroup");
        match read_bounded(&path) {
            Some(text) => self.attributes_for_cgroup(&text),
            None => {
                self.shared.counters.lookups.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .counters
                    .lookups_not_in_pod
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Attributes for a process whose cgroup file reads `cgroup_file_contents`.
    pub fn attributes_for_cgroup(&self, cgroup_file_contents: &str) -> Option<PodAttributes> {
        let counters = &self.shared.counters;
        counters.lookups.fetch_add(1, Ordering::Relaxed);
        let identity = identity_from_cgroup(cgroup_file_contents);
        if identity == CgroupIdentity::default() {
            counters.lookups_not_in_pod.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let Some(found) = self.shared.read_index(|index| index.find(&identity)) else {
            counters.lookup_misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let cronjob = found.pod.controlling_job().and_then(|job| {
            self.shared
                .read_job_owners(|owners| owners.cronjob_of(&job).map(str::to_string))
        });
        let workload = WorkloadNames::of(&found.pod, cronjob.as_deref());
        let container = found
            .container_id
            .as_ref()
            .map(|id| (id, found.container_name.as_deref()));
        Some(pod_attributes(
            &found.pod,
            &workload,
            container,
            &self.shared.node_name,
        ))
    }

    /// Whether the first full list of the node's pods has arrived.
    pub fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// Waits (at most `timeout`) for the first full list. Returns whether it arrived.
    pub async fn wait_until_synced(&self, timeout: Duration) -> bool {
        let mut changes = self.shared.generation.subscribe();
        let synced = async {
            while !self.is_synced() {
                if changes.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, synced).await.unwrap_or(false)
    }

    /// A number that changes whenever the cache changes: a caller that cached a miss for a pid
    /// can look again when it differs.
    pub fn generation(&self) -> u64 {
        *self.shared.generation.borrow()
    }

    pub fn stats(&self) -> PodMetadataStats {
        let counters = &self.shared.counters;
        let (cached_pods, cached_containers, pods_dropped) = self
            .shared
            .read_index(|index| (index.len(), index.containers(), index.refused()));
        let (cached_job_owners, job_owner_evictions) = self
            .shared
            .read_job_owners(|owners| (owners.len(), owners.evictions()));
        PodMetadataStats {
            cached_pods,
            cached_containers,
            cached_job_owners,
            relists: counters.relists.load(Ordering::Relaxed),
            watch_errors: counters.watch_errors.load(Ordering::Relaxed),
            lookups: counters.lookups.load(Ordering::Relaxed),
            lookup_misses: counters.lookup_misses.load(Ordering::Relaxed),
            lookups_not_in_pod: counters.lookups_not_in_pod.load(Ordering::Relaxed),
            pods_dropped,
            job_lookups_dropped: counters.job_lookups_dropped.load(Ordering::Relaxed),
            job_lookup_failures: counters.job_lookup_failures.load(Ordering::Relaxed),
            job_owner_evictions,
        }
    }
}

/// The cluster config to use, if any: `KUBECONFIG` (when set and non-empty) wins, as with
/// kubectl; else the in-cluster service account when running in a pod.
async fn cluster_config() -> Result<Option<Config>, K8sError> {
    if let Some(kubeconfig) = Kubeconfig::from_env()? {
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        return Ok(Some(config));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Ok(Some(Config::incluster()?));
    }
    Ok(None)
}

/// The node name: the explicit one, else `NODE_NAME`, else the hostname.
fn resolve_node_name(explicit: Option<String>) -> Option<String> {
    let non_empty = |name: String| {
        let trimmed = name.trim().to_string();
        (!trimmed.is_empty()).then_some(trimmed)
    };
    explicit
        .and_then(non_empty)
        .or_else(|| std::env::var(NODE_NAME_ENV).ok().and_then(non_empty))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(non_empty)
        })
}

/// Reads at most `MAX_CGROUP_FILE_BYTES` of a file as text (lossy on bad UTF-8).
fn read_bounded(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_CGROUP_FILE_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests;
