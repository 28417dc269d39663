//! End-to-end: Kubernetes pod metadata on spans. Real servers run in pod-shaped cgroups (one in the
//! systemd driver's containerd shape, one in the cgroupfs driver's shape), the agent finds the API
//! through KUBECONFIG pointing at a loopback fake (`peers/fake_kube_api.py`) that answers the pod
//! list and watch as the API server does, and the servers' spans carry their pods' `k8s.*`
//! resource attributes and the `service.name` rule (own OTEL_SERVICE_NAME first, then the
//! `app.kubernetes.io/name` label).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tracer_tests::peers::{peer_script, python};
use tracer_tests::process::LineWait;
use tracer_tests::query::{client_spans, describe, server_spans};
use tracer_tests::{
    AgentConfig, ChildGuard, ObservedSpan, OtlpProtocol, ScratchDir, TracedSession, curl,
    free_port, local_url, wait_for_port,
};

const NODE: &str = "e2e-node-1";
const CHECKOUT_UID: &str = "5d0c3f7e-2b1a-4c8d-9e6f-0a1b2c3d4e5f";
const CHECKOUT_CONTAINER: &str = "3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a";
const LEDGER_UID: &str = "7e6d5c4b-3a29-4817-8615-a4b3c2d1e0f9";
const LEDGER_CONTAINER: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
/// How long the agent may take to list the pods and start watching.
const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// A cgroup directory chain created for the test, removed (leaf first) on drop once empty.
struct PodCgroup {
    leaf: PathBuf,
    created: Vec<PathBuf>,
}

impl PodCgroup {
    fn create(root: &Path, relative: &str) -> PodCgroup {
        let mut path = root.to_path_buf();
        let mut created = Vec::new();
        for component in relative.split('/').filter(|c| !c.is_empty()) {
            path.push(component);
            if !path.is_dir() {
                std::fs::create_dir(&path).unwrap_or_else(|e| {
                    panic!(
                        "creating cgroup {} (the test needs root and a writable cgroup \
                         filesystem): {e}",
                        path.display()
                    )
                });
                created.push(path.clone());
            }
        }
        PodCgroup {
            leaf: path,
            created,
        }
    }

    fn procs_file(&self) -> PathBuf {
        self.leaf.join("cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // The killed process may take a moment to leave the cgroup.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The cgroup hierarchy to place processes in: the unified (v2) one when mounted, else the v1
/// `pids` hierarchy.
fn cgroup_root() -> PathBuf {
    let candidates = [
        ("/sys/fs/cgroup", "cgroup.controllers"),
        ("/sys/fs/cgroup/unified", "cgroup.procs"),
        ("/sys/fs/cgroup/pids", "cgroup.procs"),
    ];
    for (root, marker) in candidates {
        if Path::new(root).join(marker).is_file() {
            return PathBuf::from(root);
        }
    }
    panic!("no writable cgroup hierarchy found under /sys/fs/cgroup");
}

/// `peers/http_server.py` on `port`, moved into `cgroup` before it starts (the shell writes its
/// own pid to `cgroup.procs`, then execs Python under the same pid).
fn server_in_cgroup(cgroup: &PodCgroup, port: u16, service_name: Option<&str>) -> ChildGuard {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"echo $$ > "$1" && exec "$2" -u "$3" --port "$4""#)
        .arg("sh")
        .arg(cgroup.procs_file())
        .arg(python())
        .arg(peer_script("http_server.py"))
        .arg(port.to_string())
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES");
    if let Some(name) = service_name {
        command.env("OTEL_SERVICE_NAME", name);
    }
    let child = ChildGuard::spawn("http_server.py in a pod cgroup", command);
    if !wait_for_port(port, Duration::from_secs(20)) {
        panic!("server on {port} did not start\n{}", child.output_report());
    }
    child
}

fn pod_json(
    name: &str,
    uid: &str,
    labels: serde_json::Value,
    owner: (&str, &str),
    container: (&str, &str),
    node: &str,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid, "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                "uid": format!("owner-of-{name}"), "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": container.0, "image": "example/app:1"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": container.0, "image": "example/app:1", "imageID": "", "ready": true,
            "restartCount": 0, "started": true,
            "containerID": format!("containerd://{}", container.1)}]}
    })
}

fn write_kubeconfig(dir: &Path, api_port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{api_port}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: shop\n\
         current-context: fake\n\
         users:\n- name: fake\n  user: {{}}\n"
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

fn resource_report(span: &ObservedSpan) -> String {
    format!("{} resource {:?}", span.summary(), span.resource)
}

#[test]
fn spans_of_processes_in_pods_carry_pod_metadata() {
    let scratch = ScratchDir::new("k8s");
    let root = cgroup_root();
    let base = format!("tracer-e2e-{}.slice", std::process::id());
    // systemd driver, containerd: .../kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope
    let checkout_cgroup = PodCgroup::create(
        &root,
        &format!(
            "{base}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CHECKOUT_CONTAINER}.scope",
            CHECKOUT_UID.replace('-', "_")
        ),
    );
    // cgroupfs driver: .../kubepods/burstable/pod<uid>/<id>
    let ledger_cgroup = PodCgroup::create(
        &root,
        &format!("{base}/kubepods/burstable/pod{LEDGER_UID}/{LEDGER_CONTAINER}"),
    );

    let checkout_port = free_port();
    let ledger_port = free_port();
    let api_port = free_port();
    let pods = json!([
        pod_json(
            "checkout-5f7d8c9b6-q7x2m",
            CHECKOUT_UID,
            json!({"app.kubernetes.io/name": "checkout-api", "pod-template-hash": "5f7d8c9b6"}),
            ("ReplicaSet", "checkout-5f7d8c9b6"),
            ("app", CHECKOUT_CONTAINER),
            NODE,
        ),
        pod_json(
            "ledger-0",
            LEDGER_UID,
            json!({"app": "ledger"}),
            ("StatefulSet", "ledger"),
            ("ledger", LEDGER_CONTAINER),
            NODE,
        ),
        // Same container id on another node: must not be matched through the node-scoped watch.
        pod_json(
            "elsewhere-0",
            "00000000-1111-4222-8333-444444444444",
            json!({"app.kubernetes.io/name": "elsewhere"}),
            ("StatefulSet", "elsewhere"),
            ("other", CHECKOUT_CONTAINER),
            "e2e-node-2",
        ),
    ]);
    let pods_file = scratch.path().join("pods.json");
    std::fs::write(&pods_file, pods.to_string())
        .unwrap_or_else(|e| panic!("writing {}: {e}", pods_file.display()));
    let mut api_command = Command::new(python());
    api_command
        .arg("-u")
        .arg(peer_script("fake_kube_api.py"))
        .args(["--port", &api_port.to_string()])
        .arg("--pods")
        .arg(&pods_file);
    let api = ChildGuard::spawn("fake_kube_api.py", api_command);
    if !wait_for_port(api_port, Duration::from_secs(20)) {
        panic!("fake API did not start\n{}", api.output_report());
    }
    let kubeconfig = write_kubeconfig(scratch.path(), api_port);

    // Servers first: the agent discovers their pods when it sees their traffic.
    let checkout = server_in_cgroup(&checkout_cgroup, checkout_port, None);
    let ledger = server_in_cgroup(&ledger_cgroup, ledger_port, Some("ledger-svc"));

    let config = AgentConfig::new()
        .ports(&[checkout_port, ledger_port])
        .arg("--k8s-node-name")
        .arg(NODE)
        .env("KUBECONFIG", kubeconfig.display().to_string());
    let mut session = TracedSession::start_with(OtlpProtocol::HttpProtobuf, config);
    match api
        .stdout()
        .wait_for_line(WATCH_TIMEOUT, |line| line.starts_with("WATCH"))
    {
        LineWait::Found(_) => {}
        other => panic!(
            "the agent did not list and watch pods ({other:?})\n--- fake API ---\n{}\n\
             --- agent stderr ---\n{}",
            api.output_report(),
            session.agent().stderr_text()
        ),
    }
    let requests = api.stdout().text();
    assert!(
        requests.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}")),
        "the pod list is not scoped to this node:\n{requests}"
    );

    assert_eq!(curl(&[&local_url(checkout_port, "/ok")]).status, 200);
    assert_eq!(curl(&[&local_url(ledger_port, "/ok")]).status, 200);
    let spans = session.wait_for("SERVER spans with pod metadata on both ports", |spans| {
        [checkout_port, ledger_port].iter().all(|port| {
            server_spans(spans, *port)
                .iter()
                .any(|s| s.resource_str("k8s.pod.name").is_some())
        })
    });

    let checkout_span = server_spans(&spans, checkout_port)
        .into_iter()
        .find(|s| s.resource_str("k8s.pod.name").is_some())
        .unwrap_or_else(|| panic!("no checkout span:\n{}", describe(&spans)));
    let expected_checkout = [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "checkout-5f7d8c9b6-q7x2m"),
        ("k8s.pod.uid", CHECKOUT_UID),
        ("k8s.container.name", "app"),
        ("k8s.node.name", NODE),
        ("k8s.deployment.name", "checkout"),
        ("k8s.replicaset.name", "checkout-5f7d8c9b6"),
        ("service.name", "checkout-api"),
    ];
    for (key, value) in expected_checkout {
        assert_eq!(
            checkout_span.resource_str(key),
            Some(value),
            "{key} on {}",
            resource_report(checkout_span)
        );
    }
    assert_eq!(checkout_span.resource_str("k8s.statefulset.name"), None);

    let ledger_span = server_spans(&spans, ledger_port)
        .into_iter()
        .find(|s| s.resource_str("k8s.pod.name").is_some())
        .unwrap_or_else(|| panic!("no ledger span:\n{}", describe(&spans)));
    let expected_ledger = [
        ("k8s.pod.name", "ledger-0"),
        ("k8s.pod.uid", LEDGER_UID),
        ("k8s.container.name", "ledger"),
        ("k8s.statefulset.name", "ledger"),
        ("k8s.node.name", NODE),
        // The process's own OTEL_SERVICE_NAME outranks every Kubernetes name.
        ("service.name", "ledger-svc"),
    ];
    for (key, value) in expected_ledger {
        assert_eq!(
            ledger_span.resource_str(key),
            Some(value),
            "{key} on {}",
            resource_report(ledger_span)
        );
    }

    // curl runs in the test's own cgroup, in no known pod.
    for span in client_spans(&spans, checkout_port) {
        assert_eq!(
            span.resource_str("k8s.pod.name"),
            None,
            "{}",
            resource_report(span)
        );
    }

    // The pod cache's own counters are on /metrics: the list it made, the pods it holds, the
    // lookups of the traced processes.
    let at_least = |page: &str, name: &str, min: f64| {
        tracer_tests::metrics_client::sample(page, name, "").is_some_and(|v| v >= min)
    };
    session
        .agent()
        .wait_metrics("the pod metadata cache's counters", |page| {
            at_least(page, "tracer_k8s_relists_total", 1.0)
                && at_least(page, "tracer_k8s_pods_cached", 2.0)
                && at_least(page, "tracer_k8s_containers_cached", 2.0)
                && at_least(page, "tracer_k8s_pod_lookups_total", 2.0)
        });

    session.finish();
    drop(checkout);
    drop(ledger);
    drop(api);
}
