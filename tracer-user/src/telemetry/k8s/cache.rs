//! The in-memory pod cache: pods on this node by UID, indexed by container id and by the UID the
//! kubelet writes in cgroup paths; and the CronJob owner of each Job seen. Both are bounded and
//! count what they refuse.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::cgroup::{CgroupIdentity, ContainerId};
use super::pods::PodInfo;

/// Pods kept per node. The kubelet's default is 110 pods per node; this leaves ample room.
pub const MAX_CACHED_PODS: usize = 4096;

/// Jobs whose CronJob owner is remembered.
pub const MAX_CACHED_JOB_OWNERS: usize = 4096;

/// `(namespace, job name)`.
pub type JobKey = (String, String);

/// A pod found for a process, with the process's container when the pod lists it.
#[derive(Clone, Debug)]
pub struct PodMatch {
    pub pod: Arc<PodInfo>,
    pub container_id: Option<ContainerId>,
    /// Set when the container id is listed in the pod's status.
    pub container_name: Option<String>,
}

/// Pods by UID with the indexes lookups need.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<String, Arc<PodInfo>>,
    /// Container id -> pod UID.
    by_container: HashMap<ContainerId, String>,
    /// UID seen in cgroup paths (the config hash, for static pods) -> pod UID.
    by_cgroup_uid: HashMap<String, String>,
    /// Pods refused because the index was full.
    refused: u64,
}

impl PodIndex {
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn containers(&self) -> usize {
        self.by_container.len()
    }

    /// Pods refused so far because the index was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Adds the refusals counted by the index this one replaces (the count is cumulative).
    pub fn carry_refusals_from(&mut self, previous: &PodIndex) {
        self.refused += previous.refused;
    }

    /// Inserts or replaces a pod. Returns false (and counts it) when the index is full.
    pub fn upsert(&mut self, pod: PodInfo) -> bool {
        if !self.pods.contains_key(&pod.uid) && self.pods.len() >= MAX_CACHED_PODS {
            self.refused += 1;
            return false;
        }
        self.remove(&pod.uid);
        for entry in &pod.containers {
            self.by_container.insert(entry.id.clone(), pod.uid.clone());
        }
        if let Some(config_uid) = &pod.config_uid {
            self.by_cgroup_uid
                .insert(config_uid.clone(), pod.uid.clone());
        }
        self.pods.insert(pod.uid.clone(), Arc::new(pod));
        true
    }

    /// Forgets a pod and its index entries.
    pub fn remove(&mut self, uid: &str) {
        let Some(old) = self.pods.remove(uid) else {
            return;
        };
        for entry in &old.containers {
            if self
                .by_container
                .get(&entry.id)
                .is_some_and(|owner| owner == uid)
            {
                self.by_container.remove(&entry.id);
            }
        }
        if let Some(config_uid) = &old.config_uid
            && self
                .by_cgroup_uid
                .get(config_uid)
                .is_some_and(|owner| owner == uid)
        {
            self.by_cgroup_uid.remove(config_uid);
        }
    }

    /// The pod a cgroup identity belongs to: by container id first, then by the pod UID in the
    /// cgroup path (a container not yet in the pod's status, or a static pod).
    pub fn find(&self, identity: &CgroupIdentity) -> Option<PodMatch> {
        if let Some(id) = &identity.container_id
            && let Some(pod) = self.by_container.get(id).and_then(|uid| self.pods.get(uid))
        {
            return Some(PodMatch {
                pod: Arc::clone(pod),
                container_id: Some(id.clone()),
                container_name: pod.container_name(id).map(str::to_string),
            });
        }
        let cgroup_uid = identity.pod_uid.as_deref()?;
        let pod = self.pods.get(cgroup_uid).or_else(|| {
            self.by_cgroup_uid
                .get(cgroup_uid)
                .and_then(|uid| self.pods.get(uid))
        })?;
        Some(PodMatch {
            pod: Arc::clone(pod),
            container_id: identity.container_id.clone(),
            container_name: None,
        })
    }
}

/// Lookup state of one Job's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOwnerState {
    /// Not asked yet, or the last lookup failed: a lookup should be queued.
    Unknown,
    /// A lookup is queued or running.
    Pending,
    /// Looked up: the CronJob that controls the Job, or `None`.
    Known(Option<String>),
}

/// The CronJob owner of each Job seen on this node.
#[derive(Debug, Default)]
pub struct JobOwners {
    known: HashMap<JobKey, Option<String>>,
    pending: HashSet<JobKey>,
    /// Times the table was full and was cleared to make room.
    evictions: u64,
}

impl JobOwners {
    pub fn state(&self, key: &JobKey) -> JobOwnerState {
        if let Some(owner) = self.known.get(key) {
            JobOwnerState::Known(owner.clone())
        } else if self.pending.contains(key) {
            JobOwnerState::Pending
        } else {
            JobOwnerState::Unknown
        }
    }

    pub fn cronjob_of(&self, key: &JobKey) -> Option<&str> {
        self.known.get(key).and_then(|owner| owner.as_deref())
    }

    /// Marks a lookup as queued; false if it is known or already pending.
    pub fn begin_lookup(&mut self, key: &JobKey) -> bool {
        if self.known.contains_key(key) || self.pending.len() >= MAX_CACHED_JOB_OWNERS {
            return false;
        }
        self.pending.insert(key.clone())
    }

    /// Forgets a queued lookup (it failed or could not be queued) so a later pod event retries.
    pub fn abandon_lookup(&mut self, key: &JobKey) {
        self.pending.remove(key);
    }

    /// Records a lookup result. A full table is cleared first (Jobs come and go; the live ones
    /// are looked up again on their pods' next events).
    pub fn record(&mut self, key: JobKey, cronjob: Option<String>) {
        self.pending.remove(&key);
        if !self.known.contains_key(&key) && self.known.len() >= MAX_CACHED_JOB_OWNERS {
            self.known.clear();
            self.evictions += 1;
        }
        self.known.insert(key, cronjob);
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::k8s::pods::{ContainerEntry, ControllerRef};

    fn id(n: char) -> ContainerId {
        ContainerId::parse(&n.to_string().repeat(64)).unwrap_or_else(|| panic!("bad id"))
    }

    fn pod(uid: &str, containers: &[(char, &str)]) -> PodInfo {
        PodInfo {
            namespace: "ns".into(),
            name: format!("pod-{uid}"),
            uid: uid.into(),
            node_name: Some("node".into()),
            app_name_label: None,
            pod_template_hash: None,
            config_uid: None,
            controller: Some(ControllerRef {
                kind: "DaemonSet".into(),
                name: "ds".into(),
            }),
            containers: containers
                .iter()
                .map(|(n, name)| ContainerEntry {
                    id: id(*n),
                    name: (*name).into(),
                })
                .collect(),
            containers_dropped: 0,
        }
    }

    fn identity(container: Option<char>, uid: Option<&str>) -> CgroupIdentity {
        CgroupIdentity {
            container_id: container.map(id),
            pod_uid: uid.map(str::to_string),
        }
    }

    #[test]
    fn finds_by_container_then_by_pod_uid() {
        let mut index = PodIndex::default();
        assert!(index.upsert(pod("u1", &[('a', "app"), ('b', "sidecar")])));
        let found = index
            .find(&identity(Some('b'), None))
            .unwrap_or_else(|| panic!("no match"));
        assert_eq!(found.pod.uid, "u1");
        assert_eq!(found.container_name.as_deref(), Some("sidecar"));

        // Container not (yet) in the status: the pod UID from the path still matches.
        let found = index
            .find(&identity(Some('c'), Some("u1")))
            .unwrap_or_else(|| panic!("no match"));
        assert_eq!(found.container_name, None);
        assert_eq!(found.container_id, Some(id('c')));
        assert!(index.find(&identity(Some('c'), Some("u2"))).is_none());
        assert!(index.find(&identity(None, None)).is_none());
    }

    #[test]
    fn update_replaces_container_index_and_remove_forgets() {
        let mut index = PodIndex::default();
        index.upsert(pod("u1", &[('a', "app")]));
        index.upsert(pod("u1", &[('b', "app")]));
        assert!(
            index.find(&identity(Some('a'), None)).is_none(),
            "restarted container id"
        );
        assert!(index.find(&identity(Some('b'), None)).is_some());
        assert_eq!(index.containers(), 1);
        index.remove("u1");
        assert!(index.is_empty());
        assert_eq!(index.containers(), 0);
        assert!(index.find(&identity(Some('b'), Some("u1"))).is_none());
    }

    #[test]
    fn static_pod_found_by_config_hash_uid() {
        let mut index = PodIndex::default();
        let mut mirror = pod("api-uid", &[]);
        mirror.config_uid = Some("0f5c2a7d9e1b3c4d5e6f7a8b9c0d1e2f".into());
        index.upsert(mirror);
        // The kubelet's cgroup path carries the config hash, not the mirror pod's UID.
        let found = index.find(&identity(None, Some("0f5c2a7d9e1b3c4d5e6f7a8b9c0d1e2f")));
        assert_eq!(found.map(|m| m.pod.uid.clone()).as_deref(), Some("api-uid"));
    }

    #[test]
    fn index_is_bounded_and_counts_refusals() {
        let mut index = PodIndex::default();
        for n in 0..MAX_CACHED_PODS {
            assert!(index.upsert(pod(&format!("u{n}"), &[])));
        }
        assert!(!index.upsert(pod("one-too-many", &[])));
        assert_eq!(index.refused(), 1);
        assert!(
            index.upsert(pod("u0", &[])),
            "updates of known pods still apply"
        );
        assert_eq!(index.len(), MAX_CACHED_PODS);
    }

    #[test]
    fn job_owner_lookup_lifecycle() {
        let mut owners = JobOwners::default();
        let key: JobKey = ("ops".into(), "backup-1".into());
        assert_eq!(owners.state(&key), JobOwnerState::Unknown);
        assert!(owners.begin_lookup(&key));
        assert!(!owners.begin_lookup(&key), "deduplicated");
        assert_eq!(owners.state(&key), JobOwnerState::Pending);
        owners.abandon_lookup(&key);
        assert_eq!(owners.state(&key), JobOwnerState::Unknown);
        assert!(owners.begin_lookup(&key));
        owners.record(key.clone(), Some("backup".into()));
        assert_eq!(owners.cronjob_of(&key), Some("backup"));
        assert!(!owners.begin_lookup(&key));
    }

    #[test]
    fn job_owner_table_is_bounded() {
        let mut owners = JobOwners::default();
        for n in 0..MAX_CACHED_JOB_OWNERS {
            owners.record(("ns".into(), format!("job-{n}")), None);
        }
        assert_eq!(owners.evictions(), 0);
        owners.record(("ns".into(), "one-more".into()), Some("cj".into()));
        assert_eq!(owners.evictions(), 1);
        assert_eq!(owners.len(), 1);
    }
}
