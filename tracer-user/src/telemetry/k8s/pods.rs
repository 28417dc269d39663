//! What the agent keeps of a pod (`PodInfo`, taken from the API's `Pod`), how its workload is
//! named from owner references, and the resource attributes it gives a traced process.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::cgroup::ContainerId;
use crate::model::AttrValue;

/// Containers kept per pod (regular, init and ephemeral together); more are counted and dropped.
pub const MAX_CONTAINERS_PER_POD: usize = 256;

/// The label that names the application (the recommended `app.kubernetes.io/name`).
const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label a Deployment's ReplicaSet puts on its pods; the ReplicaSet name ends in `-<hash>`.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Annotation on a static pod's mirror: the UID the kubelet uses in cgroup paths.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The controlling owner of a pod, as written in its `ownerReferences`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerRef {
    pub kind: String,
    pub name: String,
}

/// One container of a pod that has been started (it has a runtime id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEntry {
    pub id: ContainerId,
    pub name: String,
}

/// What the agent keeps of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node_name: Option<String>,
    /// Value of `app.kubernetes.io/name`.
    pub app_name_label: Option<String>,
    /// Value of `pod-template-hash`.
    pub pod_template_hash: Option<String>,
    /// For a static pod's mirror: the UID seen in cgroup paths (differs from `uid`).
    pub config_uid: Option<String>,
    pub controller: Option<ControllerRef>,
    pub containers: Vec<ContainerEntry>,
    /// Containers with a runtime id past `MAX_CONTAINERS_PER_POD`, not kept.
    pub containers_dropped: usize,
}

impl PodInfo {
    /// `None` when the pod lacks a name, namespace or UID (the API always sets them).
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let meta = &pod.metadata;
        let labels = meta.labels.as_ref();
        let annotations = meta.annotations.as_ref();
        let mut containers = Vec::new();
        let mut containers_dropped = 0;
        if let Some(status) = &pod.status {
            let groups: [&Option<Vec<ContainerStatus>>; 3] = [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ];
            for status in groups.into_iter().flatten().flatten() {
                let Some(id) = status
                    .container_id
                    .as_deref()
                    .and_then(ContainerId::from_status_field)
                else {
                    continue;
                };
                if containers.len() < MAX_CONTAINERS_PER_POD {
                    containers.push(ContainerEntry {
                        id,
                        name: status.name.clone(),
                    });
                } else {
                    containers_dropped += 1;
                }
            }
        }
        Some(PodInfo {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            node_name: pod.spec.as_ref().and_then(|spec| spec.node_name.clone()),
            app_name_label: label(labels, APP_NAME_LABEL),
            pod_template_hash: label(labels, POD_TEMPLATE_HASH_LABEL),
            config_uid: label(annotations, MIRROR_POD_ANNOTATION)
                .filter(|hash| !hash.is_empty())
                .map(|hash| hash.to_ascii_lowercase()),
            controller: meta.owner_references.as_deref().and_then(controller_of),
            containers,
            containers_dropped,
        })
    }

    /// The Job that controls this pod, as `(namespace, job name)`.
    pub fn controlling_job(&self) -> Option<(String, String)> {
        match &self.controller {
            Some(owner) if owner.kind == "Job" => {
                Some((self.namespace.clone(), owner.name.clone()))
            }
            _ => None,
        }
    }

    pub fn container_name(&self, id: &ContainerId) -> Option<&str> {
        self.containers
            .iter()
            .find(|entry| &entry.id == id)
            .map(|entry| entry.name.as_str())
    }
}

fn label(map: Option<&BTreeMap<String, String>>, key: &str) -> Option<String> {
    map.and_then(|map| map.get(key)).cloned()
}

/// The owner reference marked `controller: true` (a pod has at most one).
pub fn controller_of(owners: &[OwnerReference]) -> Option<ControllerRef> {
    owners
        .iter()
        .find(|owner| owner.controller == Some(true))
        .map(|owner| ControllerRef {
            kind: owner.kind.clone(),
            name: owner.name.clone(),
        })
}

/// The workload names that apply to a pod (each set only where it applies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadNames {
    pub deployment: Option<String>,
    pub replicaset: Option<String>,
    pub statefulset: Option<String>,
    pub daemonset: Option<String>,
    pub job: Option<String>,
    pub cronjob: Option<String>,
}

impl WorkloadNames {
    /// Names the workload of `pod`. `cronjob_of_job` is the CronJob that owns the pod's Job, when
    /// it has been looked up. A Deployment is recognised by its ReplicaSet's name ending in
    /// `-<pod-template-hash>`.
    pub fn of(pod: &PodInfo, cronjob_of_job: Option<&str>) -> WorkloadNames {
        let mut names = WorkloadNames::default();
        let Some(owner) = &pod.controller else {
            return names;
        };
        match owner.kind.as_str() {
            "ReplicaSet" => {
                names.deployment = pod
                    .pod_template_hash
                    .as_deref()
                    .filter(|hash| !hash.is_empty())
                    .and_then(|hash| owner.name.strip_suffix(hash))
                    .and_then(|rest| rest.strip_suffix('-'))
                    .filter(|name| !name.is_empty())
                    .map(str::to_string);
                names.replicaset = Some(owner.name.clone());
            }
            "StatefulSet" => names.statefulset = Some(owner.name.clone()),
            "DaemonSet" => names.daemonset = Some(owner.name.clone()),
            "Job" => {
                names.job = Some(owner.name.clone());
                names.cronjob = cronjob_of_job.map(str::to_string);
            }
            _ => {}
        }
        names
    }

    /// The name of the outermost workload: the one a person would call the application.
    pub fn primary(&self) -> Option<&str> {
        self.deployment
            .as_deref()
            .or(self.statefulset.as_deref())
            .or(self.daemonset.as_deref())
            .or(self.cronjob.as_deref())
            .or(self.job.as_deref())
            .or(self.replicaset.as_deref())
    }
}

/// Resource attributes for a process running in a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodAttributes {
    /// `k8s.*` and `container.id` attributes, in a fixed order.
    pub attributes: Vec<(String, AttrValue)>,
    /// A `service.name` candidate: the `app.kubernetes.io/name` label, then the workload name,
    /// then the container name. The process's own `OTEL_SERVICE_NAME` outranks it.
    pub service_name_hint: Option<String>,
}

impl PodAttributes {
    /// Value of one attribute, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find_map(|(k, v)| match v {
            AttrValue::Str(s) if k == key => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Builds the attributes of a process in `pod`. `container` is the process's container id and
/// that container's name when the pod status lists it; `agent_node_name` stands in when the pod
/// spec has no node name.
pub fn pod_attributes(
    pod: &PodInfo,
    workload: &WorkloadNames,
    container: Option<(&ContainerId, Option<&str>)>,
    agent_node_name: &str,
) -> PodAttributes {
    let mut attributes: Vec<(String, AttrValue)> = Vec::with_capacity(12);
    let mut push = |key: &str, value: &str| {
        attributes.push((key.to_string(), AttrValue::Str(value.to_string().into())));
    };
    push("k8s.namespace.name", &pod.namespace);
    push("k8s.pod.name", &pod.name);
    push("k8s.pod.uid", &pod.uid);
    push(
        "k8s.node.name",
        pod.node_name.as_deref().unwrap_or(agent_node_name),
    );
    let container_name = container.and_then(|(_, name)| name);
    if let Some(name) = container_name {
        push("k8s.container.name", name);
    }
    if let Some((id, _)) = container {
        push("container.id", id.as_str());
    }
    let workload_attributes = [
        ("k8s.deployment.name", &workload.deployment),
        ("k8s.replicaset.name", &workload.replicaset),
        ("k8s.statefulset.name", &workload.statefulset),
        ("k8s.daemonset.name", &workload.daemonset),
        ("k8s.job.name", &workload.job),
        ("k8s.cronjob.name", &workload.cronjob),
    ];
    for (key, value) in workload_attributes {
        if let Some(value) = value {
            push(key, value);
        }
    }
    let service_name_hint = pod
        .app_name_label
        .as_deref()
        .filter(|label| !label.is_empty())
        .or(workload.primary())
        .or(container_name)
        .map(str::to_string);
    PodAttributes {
        attributes,
        service_name_hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node-a";

    /// A Deployment pod as the API serves it (trimmed of fields the agent ignores).
    const DEPLOYMENT_POD: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "name": "checkout-7c9d8f6b5-x2x4q", "namespace": "shop",
        "uid": "6f1d2c3b-4a5e-4f60-8b7a-9c8d7e6f5a4b", "resourceVersion": "91234",
        "generateName": "checkout-7c9d8f6b5-",
        "labels": {"app.kubernetes.io/name": "checkout-api", "pod-template-hash": "7c9d8f6b5"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
          "name": "checkout-7c9d8f6b5", "uid": "0a1b2c3d-0000-4000-8000-000000000001",
          "controller": true, "blockOwnerDeletion": true}]
      },
      "spec": {"nodeName": "node-7", "containers": [{"name": "app", "image": "shop/checkout:1.4"},
               {"name": "istio-proxy", "image": "istio/proxyv2:1.22"}]},
      "status": {
        "phase": "Running",
        "initContainerStatuses": [{"name": "migrate", "image": "shop/migrate:1", "imageID": "",
          "ready": false, "restartCount": 0,
          "containerID": "containerd://1111111111111111111111111111111111111111111111111111111111111111"}],
        "containerStatuses": [
          {"name": "app", "image": "shop/checkout:1.4", "imageID": "", "ready": true,
           "restartCount": 0, "started": true,
           "containerID": "containerd://2222222222222222222222222222222222222222222222222222222222222222"},
          {"name": "istio-proxy", "image": "istio/proxyv2:1.22", "imageID": "", "ready": true,
           "restartCount": 0,
           "containerID": "containerd://3333333333333333333333333333333333333333333333333333333333333333"}]
      }
    }"#;

    fn parse(json: &str) -> PodInfo {
        let pod: Pod = serde_json::from_str(json).unwrap_or_else(|e| panic!("pod json: {e}"));
        PodInfo::from_pod(&pod).unwrap_or_else(|| panic!("pod lacks identity"))
    }

    fn container(n: char) -> ContainerId {
        ContainerId::parse(&n.to_string().repeat(64)).unwrap_or_else(|| panic!("bad id"))
    }

    #[test]
    fn deployment_pod_fields_and_attributes() {
        let pod = parse(DEPLOYMENT_POD);
        assert_eq!(pod.namespace, "shop");
        assert_eq!(pod.uid, "6f1d2c3b-4a5e-4f60-8b7a-9c8d7e6f5a4b");
        assert_eq!(pod.containers.len(), 3);
        assert_eq!(pod.container_name(&container('2')), Some("app"));
        assert_eq!(pod.container_name(&container('1')), Some("migrate"));
        assert_eq!(pod.controlling_job(), None);

        let workload = WorkloadNames::of(&pod, None);
        assert_eq!(workload.deployment.as_deref(), Some("checkout"));
        assert_eq!(workload.replicaset.as_deref(), Some("checkout-7c9d8f6b5"));
        let id = container('3');
        let attrs = pod_attributes(&pod, &workload, Some((&id, pod.container_name(&id))), NODE);
        assert_eq!(attrs.get("k8s.namespace.name"), Some("shop"));
        assert_eq!(attrs.get("k8s.pod.name"), Some("checkout-7c9d8f6b5-x2x4q"));
        assert_eq!(
            attrs.get("k8s.pod.uid"),
            Some("6f1d2c3b-4a5e-4f60-8b7a-9c8d7e6f5a4b")
        );
        assert_eq!(attrs.get("k8s.node.name"), Some("node-7"));
        assert_eq!(attrs.get("k8s.container.name"), Some("istio-proxy"));
        assert_eq!(attrs.get("container.id"), Some(id.as_str()));
        assert_eq!(attrs.get("k8s.deployment.name"), Some("checkout"));
        assert_eq!(attrs.get("k8s.statefulset.name"), None);
        assert_eq!(attrs.service_name_hint.as_deref(), Some("checkout-api"));
    }

    #[test]
    fn statefulset_pod_on_crio_without_app_label_uses_workload_name() {
        let pod = parse(
            r#"{"metadata": {"name": "db-0", "namespace": "data",
                "uid": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
                "labels": {"app": "db", "statefulset.kubernetes.io/pod-name": "db-0"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                   "uid": "u1", "controller": true}]},
              "spec": {"containers": [{"name": "postgres"}]},
              "status": {"containerStatuses": [{"name": "postgres", "image": "postgres:16",
                 "imageID": "", "ready": true, "restartCount": 2,
                 "containerID": "cri-o://4444444444444444444444444444444444444444444444444444444444444444"}]}}"#,
        );
        let workload = WorkloadNames::of(&pod, None);
        assert_eq!(workload.statefulset.as_deref(), Some("db"));
        let id = container('4');
        let attrs = pod_attributes(&pod, &workload, Some((&id, pod.container_name(&id))), NODE);
        assert_eq!(attrs.get("k8s.statefulset.name"), Some("db"));
        assert_eq!(
            attrs.get("k8s.node.name"),
            Some(NODE),
            "falls back to the agent's node"
        );
        assert_eq!(attrs.service_name_hint.as_deref(), Some("db"));
    }

    #[test]
    fn cronjob_job_pod_names_both_when_the_job_owner_is_known() {
        let pod = parse(
            r#"{"metadata": {"name": "backup-29012345-abcde", "namespace": "ops",
                "uid": "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
                "labels": {"batch.kubernetes.io/job-name": "backup-29012345"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                   "name": "backup-29012345", "uid": "u2", "controller": true}]},
              "spec": {"nodeName": "node-a", "containers": [{"name": "backup"}]},
              "status": {}}"#,
        );
        assert_eq!(
            pod.controlling_job(),
            Some(("ops".into(), "backup-29012345".into()))
        );
        let unresolved = WorkloadNames::of(&pod, None);
        assert_eq!(unresolved.job.as_deref(), Some("backup-29012345"));
        assert_eq!(unresolved.cronjob, None);
        let resolved = WorkloadNames::of(&pod, Some("backup"));
        assert_eq!(resolved.cronjob.as_deref(), Some("backup"));
        assert_eq!(resolved.primary(), Some("backup"));
        let attrs = pod_attributes(&pod, &resolved, None, NODE);
        assert_eq!(attrs.get("k8s.job.name"), Some("backup-29012345"));
        assert_eq!(attrs.get("k8s.cronjob.name"), Some("backup"));
        assert_eq!(attrs.get("k8s.container.name"), None);
        assert_eq!(attrs.service_name_hint.as_deref(), Some("backup"));
    }

    #[test]
    fn daemonset_and_bare_replicaset_and_unowned_pods() {
        let daemon = parse(
            r#"{"metadata": {"name": "agent-x7k2p", "namespace": "kube-system", "uid": "u-ds",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                   "uid": "u3", "controller": true}]}}"#,
        );
        assert_eq!(
            WorkloadNames::of(&daemon, None).daemonset.as_deref(),
            Some("agent")
        );

        // A ReplicaSet made by hand: no pod-template-hash, so no Deployment is claimed.
        let bare = parse(
            r#"{"metadata": {"name": "rs-abc12", "namespace": "default", "uid": "u-rs",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                   "uid": "u4", "controller": true}]}}"#,
        );
        let names = WorkloadNames::of(&bare, None);
        assert_eq!(names.deployment, None);
        assert_eq!(names.primary(), Some("rs"));

        // A non-controller owner does not name a workload; the container name is the last resort.
        let unowned = parse(
            r#"{"metadata": {"name": "debug", "namespace": "default", "uid": "u-x",
                "ownerReferences": [{"apiVersion": "v1", "kind": "ReplicaSet", "name": "other",
                   "uid": "u5"}]}}"#,
        );
        let names = WorkloadNames::of(&unowned, None);
        assert_eq!(names, WorkloadNames::default());
        let id = container('5');
        let attrs = pod_attributes(&unowned, &names, Some((&id, Some("shell"))), NODE);
        assert_eq!(attrs.service_name_hint.as_deref(), Some("shell"));
    }

    #[test]
    fn static_pod_mirror_keeps_config_uid() {
        let pod = parse(
            r#"{"metadata": {"name": "kube-apiserver-node-a", "namespace": "kube-system",
                "uid": "cccccccc-cccc-4ccc-8ccc-cccccccccccc",
                "annotations": {"kubernetes.io/config.mirror": "0f5c2a7d9e1b3c4d5e6f7a8b9c0d1e2f",
                                "kubernetes.io/config.source": "file"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "node-a",
                   "uid": "u6", "controller": true}]}}"#,
        );
        assert_eq!(
            pod.config_uid.as_deref(),
            Some("0f5c2a7d9e1b3c4d5e6f7a8b9c0d1e2f")
        );
        assert_eq!(WorkloadNames::of(&pod, None).primary(), None);
    }

    #[test]
    fn pod_without_identity_is_rejected_and_bad_container_ids_skipped() {
        let pod: Pod = serde_json::from_str(r#"{"metadata": {"name": "x"}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(PodInfo::from_pod(&pod), None);
        let pod = parse(
            r#"{"metadata": {"name": "p", "namespace": "n", "uid": "u"},
              "status": {"containerStatuses": [
                {"name": "waiting", "image": "i", "imageID": "", "ready": false, "restartCount": 0},
                {"name": "odd", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "containerID": "containerd://short"}]}}"#,
        );
        assert!(pod.containers.is_empty());
    }

    #[test]
    fn deployment_name_is_not_stripped_when_hash_does_not_match() {
        let pod = parse(
            r#"{"metadata": {"name": "web-abc-q", "namespace": "n", "uid": "u",
                "labels": {"pod-template-hash": "zzz"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                   "uid": "u7", "controller": true}]}}"#,
        );
        let names = WorkloadNames::of(&pod, None);
        assert_eq!(names.deployment, None);
        assert_eq!(names.replicaset.as_deref(), Some("web-abc"));
    }
}
