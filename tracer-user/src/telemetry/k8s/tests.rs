//! Tests of `PodMetadata` against the loopback fake API: node-scoped watch, cache updates, re-list
//! after watch expiry and API restarts, Job owner lookups, and lookups that never wait.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::runtime::utils::Backoff;
use serde_json::{Value, json};

use super::*;
use crate::testing::fake_k8s_api::FakeApi;

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(20);

/// Retries at a fixed short delay so tests recover quickly.
struct QuickBackoff;

impl Iterator for QuickBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

impl Backoff for QuickBackoff {
    fn reset(&mut self) {}
}

fn container_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn pod_uid(n: u8) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

/// A pod of Deployment `web` with one started container, as the API serves it.
fn deployment_pod(n: u8, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("web-6b7f9c8d4-{n:05}"), "namespace": "shop", "uid": pod_uid(n),
            "labels": {"pod-template-hash": "6b7f9c8d4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-6b7f9c8d4", "uid": "rs-uid", "controller": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "server", "image": "web:1"}]},
        "status": {"containerStatuses": [{"name": "server", "image": "web:1", "imageID": "",
            "ready": true, "restartCount": 0,
            "containerID": format!("containerd://{}", container_id(n))}]}
    })
}

fn systemd_cgroup(n: u8) -> String {
    let slice_uid = pod_uid(n).replace('-', "_");
    format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slice_uid}.slice/cri-containerd-{}.scope\n",
        container_id(n)
    )
}

async fn start(api: &FakeApi) -> PodMetadata {
    let url = api.url().parse().unwrap_or_else(|e| panic!("url: {e}"));
    let metadata =
        PodMetadata::start_with_backoff(Config::new(url), NODE.into(), Box::new(QuickBackoff))
            .unwrap_or_else(|e| panic!("start: {e}"));
    assert!(
        metadata.wait_until_synced(WAIT).await,
        "first list never arrived"
    );
    metadata
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_only_this_node_and_follows_pod_events() {
    let api = FakeApi::start().await;
    api.apply_pod(deployment_pod(1, NODE));
    api.apply_pod(deployment_pod(2, "node-b"));
    let metadata = start(&api).await;

    let attrs = metadata
        .attributes_for_cgroup(&systemd_cgroup(1))
        .unwrap_or_else(|| panic!("pod 1 not found"));
    assert_eq!(attrs.get("k8s.pod.name"), Some("web-6b7f9c8d4-00001"));
    assert_eq!(attrs.get("k8s.pod.uid"), Some(pod_uid(1).as_str()));
    assert_eq!(attrs.get("k8s.namespace.name"), Some("shop"));
    assert_eq!(attrs.get("k8s.container.name"), Some("server"));
    assert_eq!(attrs.get("k8s.node.name"), Some(NODE));
    assert_eq!(attrs.get("k8s.deployment.name"), Some("web"));
    assert_eq!(attrs.service_name_hint.as_deref(), Some("web"));
    assert!(
        metadata.attributes_for_cgroup(&systemd_cgroup(2)).is_none(),
        "other node's pod"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "watch not scoped to the node: {:?}",
        api.requests()
    );

    api.apply_pod(deployment_pod(3, NODE));
    eventually("pod 3 added by the watch", || {
        metadata.attributes_for_cgroup(&systemd_cgroup(3)).is_some()
    })
    .await;
    api.delete_pod(&pod_uid(1));
    eventually("pod 1 deleted by the watch", || {
        metadata.attributes_for_cgroup(&systemd_cgroup(1)).is_none()
    })
    .await;

    let stats = metadata.stats();
    assert_eq!(stats.cached_pods, 1);
    assert_eq!(stats.relists, 1);
    assert!(stats.lookup_misses >= 2, "{stats:?}");
    assert_eq!(metadata.attributes_for_cgroup("0::/init.scope\n"), None);
    assert_eq!(metadata.stats().lookups_not_in_pod, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_watch_expiry_and_api_restart() {
    let mut api = FakeApi::start().await;
    api.apply_pod(deployment_pod(1, NODE));
    api.apply_pod(deployment_pod(2, NODE));
    let metadata = start(&api).await;
    assert_eq!(metadata.stats().cached_pods, 2);

    // Watch expiry: the API compacts history and ends the watch with 410 Gone.
    api.delete_pod_silently(&pod_uid(2));
    api.expire_watches();
    eventually(
        "re-list drops the pod deleted while the watch was expired",
        || metadata.attributes_for_cgroup(&systemd_cgroup(2)).is_none(),
    )
    .await;
    assert!(metadata.stats().relists >= 2, "{:?}", metadata.stats());

    // API restart: the connection drops, the watch fails while the port is closed, and resumes.
    api.stop().await;
    eventually("watch errors while the API is down", || {
        metadata.stats().watch_errors >= 1
    })
    .await;
    // Lookups answer from the cache meanwhile.
    assert!(metadata.attributes_for_cgroup(&systemd_cgroup(1)).is_some());
    api.apply_pod(deployment_pod(4, NODE));
    api.restart();
    eventually("pod added during the outage appears", || {
        metadata.attributes_for_cgroup(&systemd_cgroup(4)).is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_named_through_the_job_owner() {
    let api = FakeApi::start().await;
    api.put_job(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "report-29100000", "namespace": "ops", "uid": "job-uid",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "report",
                "uid": "cj-uid", "controller": true}]},
        "spec": {"template": {"spec": {"containers": []}}}
    }));
    let mut pod = deployment_pod(7, NODE);
    pod["metadata"]["namespace"] = json!("ops");
    pod["metadata"]["labels"] = json!({});
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": "report-29100000", "uid": "job-uid", "controller": true}]);
    api.apply_pod(pod);
    let metadata = start(&api).await;
    eventually("cronjob resolved", || {
        metadata
            .attributes_for_cgroup(&systemd_cgroup(7))
            .is_some_and(|attrs| attrs.get("k8s.cronjob.name") == Some("report"))
    })
    .await;
    let attrs = metadata
        .attributes_for_cgroup(&systemd_cgroup(7))
        .unwrap_or_else(|| panic!("pod 7 missing"));
    assert_eq!(attrs.get("k8s.job.name"), Some("report-29100000"));
    assert_eq!(attrs.service_name_hint.as_deref(), Some("report"));
    assert_eq!(metadata.stats().cached_job_owners, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_cgroup_file_under_a_proc_root() {
    let api = FakeApi::start().await;
    api.apply_pod(deployment_pod(9, NODE));
    let metadata = start(&api).await;

    let proc_root = scratch_dir("proc-root");
    let pid = 4242u32;
    let pid_dir = proc_root.join(pid.to_string());
    std::fs::create_dir_all(&pid_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let v1_cgroupfs = format!(
        "12:pids:/kubepods/besteffort/pod{}/{}\n0::/\n",
        pod_uid(9),
        container_id(9)
    );
    std::fs::write(pid_dir.join("cgroup"), v1_cgroupfs).unwrap_or_else(|e| panic!("write: {e}"));
    let attrs = metadata
        .attributes_for_pid(&proc_root, pid)
        .unwrap_or_else(|| panic!("pid not resolved"));
    assert_eq!(attrs.get("container.id"), Some(container_id(9).as_str()));
    assert_eq!(
        metadata.attributes_for_pid(&proc_root, pid + 1),
        None,
        "no such pid"
    );
    let _ = std::fs::remove_dir_all(&proc_root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_do_not_wait_for_an_unreachable_api() {
    // A port nothing listens on.
    let api = FakeApi::start().await;
    let url = api.url();
    drop(api);
    let config = Config::new(url.parse().unwrap_or_else(|e| panic!("url: {e}")));
    let metadata = PodMetadata::start_with_backoff(config, NODE.into(), Box::new(QuickBackoff))
        .unwrap_or_else(|e| panic!("start: {e}"));
    let started = Instant::now();
    assert_eq!(metadata.attributes_for_cgroup(&systemd_cgroup(1)), None);
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(!metadata.wait_until_synced(Duration::from_millis(300)).await);
    eventually("errors counted", || metadata.stats().watch_errors >= 1).await;
}

#[test]
fn node_name_prefers_the_explicit_one() {
    assert_eq!(
        resolve_node_name(Some(" worker-3 ".into())).as_deref(),
        Some("worker-3")
    );
    // Without one, NODE_NAME or the hostname: never empty.
    assert!(resolve_node_name(Some(String::new())).is_some_and(|name| !name.is_empty()));
}

fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    std::env::temp_dir().join(format!("tracer-k8s-{tag}-{}-{nanos}", std::process::id()))
}

#[test]
fn handle_is_cheap_to_share_across_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<PodMetadata>();
    shareable::<PodAttributes>();
}
