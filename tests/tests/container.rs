//! End-to-end: the agent's image run as the DaemonSet's pod in a real container runtime (podman
//! with runc, `podman kube play`), with the manifest's security context, volumes, args and
//! ConfigMap, tracing processes of the host.
//!
//! The pod is `k8s/base/daemonset.yaml`'s pod template. Only what `podman kube play` (4.3)
//! cannot express is replaced, in [`render`]:
//! - kind DaemonSet becomes a Pod named per test, with `restartPolicy: Never` (a kubelet restarts
//!   the agent; a test wants its first exit);
//! - `NODE_NAME` from the `spec.nodeName` fieldRef becomes a literal node name;
//! - `securityContext.seccompProfile` becomes the equivalent
//!   `container.seccomp.security.alpha.kubernetes.io/tracer` annotation (kube play ignores the
//!   field), the Localhost profile read from a directory holding `k8s/seccomp/tracer.json` as a
//!   node's `/var/lib/kubelet/seccomp` would;
//! - `hostPID: true` becomes `pidns = "host"` in the test's containers.conf (kube play ignores
//!   the field before podman 4.5; the container then gets the host's PID namespace, as the
//!   kubelet gives it);
//! - the container's `ports` are removed: kube play publishes a containerPort on the host's port
//!   of the same number when no hostPort is given, which Kubernetes does not (and pods of tests
//!   running side by side would collide); the test reaches the port on the pod's address;
//! - the startup, liveness and readiness probes are removed (kube play turns an `httpGet` probe
//!   into a `curl` run inside the container, and the image has no shell); the test asks
//!   `/healthz` and `/readyz` from the host over the pod network, as a kubelet does;
//! - the image is the one under test (`TRACER_IMAGE`), the ConfigMap's OTLP endpoint is a
//!   receiver on the pod network's gateway, with a short batch delay.
//!
//! Machine quirks are handled here, not in the product: runc instead of Debian's crun (which
//! refuses hybrid cgroup layouts) and explicit ulimits (podman's defaults exceed the host's hard
//! limits), through a containers.conf of the test's own. Its `memlock` limit is 64 KiB: the agent
//! needs no CAP_SYS_RESOURCE to raise it on kernels since 5.11.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracer_tests::peers::{peer_script, python};
use tracer_tests::query::{describe, server_spans};
use tracer_tests::{
    ChildGuard, OtlpProtocol, OtlpReceiver, ScratchDir, curl, free_port, local_url, wait_for_port,
};

/// The container's name in the manifest (and the annotation key's suffix).
const CONTAINER: &str = "tracer";
/// The metrics, health and readiness port (`--metrics-addr=0.0.0.0:9464`).
const METRICS_PORT: u16 = 9464;
/// How long the agent in the pod may take to load its probes and answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long spans may take to reach the receiver.
const SPAN_TIMEOUT: Duration = Duration::from_secs(30);
/// A process of the host with this uid and no capabilities is traced in [`traced_servers`].
const NOBODY: u32 = 65534;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn yaml(relative: &str) -> Value {
    let path = repo().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The image under test: `$TRACER_IMAGE`, which must exist in podman's local storage.
fn image() -> String {
    let Ok(image) = std::env::var("TRACER_IMAGE") else {
        panic!(
            "TRACER_IMAGE is not set: build the image with `cargo xtask image --debug --tag \
             localhost/tracer:e2e` and set TRACER_IMAGE=localhost/tracer:e2e (`cargo xtask test` \
             does both); these tests fail rather than skip"
        );
    };
    let exists = Command::new("podman")
        .args(["image", "exists", &image])
        .status()
        .unwrap_or_else(|e| panic!("running podman (install it with `cargo xtask setup`): {e}"));
    assert!(
        exists.success(),
        "image {image} is not in podman's storage: build it with `cargo xtask image`"
    );
    image
}

/// podman with the test's containers.conf: runc and ulimits within the host's hard limits.
struct Podman {
    dir: ScratchDir,
}

impl Podman {
    /// `host_pid`: containers get the host's PID namespace (the pod's `hostPID: true`).
    fn new(host_pid: bool) -> Podman {
        let dir = ScratchDir::new("podman");
        let pidns = if host_pid { "pidns = \"host\"\n" } else { "" };
        let conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\", \"memlock=65536:65536\"]\n\
             {pidns}\
             [engine]\n\
             runtime = \"runc\"\n"
        );
        std::fs::write(dir.path().join("containers.conf"), conf).expect("writing containers.conf");
        // The node's seccomp directory, with the shipped profile installed as k8s/README.md says.
        let seccomp = dir.path().join("seccomp");
        std::fs::create_dir(&seccomp).expect("creating the seccomp directory");
        std::fs::copy(
            repo().join("k8s/seccomp/tracer.json"),
            seccomp.join("tracer.json"),
        )
        .expect("installing k8s/seccomp/tracer.json");
        Podman { dir }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"));
        command
    }

    fn seccomp_root(&self) -> PathBuf {
        self.dir.path().join("seccomp")
    }

    /// Runs podman with `args`; panics unless it exits 0.
    fn run(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "podman {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running podman {args:?}: {e}"))
    }

    /// The gateway of podman's default network: the host's address as pods see it.
    fn gateway(&self) -> IpAddr {
        let text = self.run(&[
            "network",
            "inspect",
            "podman",
            "--format",
            "{{range .Subnets}}{{.Gateway}} {{end}}",
        ]);
        text.split_whitespace()
            .find_map(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("no gateway in podman's default network: {text:?}"))
    }
}

/// How a test changes the manifest's pod.
#[derive(Clone, Debug, Default)]
struct Variant {
    /// Capabilities removed from `capabilities.add`.
    drop: Vec<&'static str>,
    /// `seccompProfile: RuntimeDefault` instead of the shipped Localhost profile.
    runtime_default_seccomp: bool,
    /// The k8s/privileged overlay's patch applied.
    privileged: bool,
}

/// Merges `patch` into `target` the way a strategic merge patch does for these manifests: maps
/// merge key by key, and lists of named items (containers) merge item by item on `name`.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    // A strategic merge patch deletes a key set to null.
                    target.remove(key);
                    continue;
                }
                match target.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(target), Value::Array(patch))
            if patch.iter().all(|item| item.get("name").is_some()) =>
        {
            for item in patch {
                match target
                    .iter_mut()
                    .find(|t| t.get("name") == item.get("name"))
                {
                    Some(existing) => merge(existing, item),
                    None => target.push(item.clone()),
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// The DaemonSet's pod template as a Pod `name` (see the module comment for what is replaced).
fn render(variant: &Variant, name: &str, image: &str) -> Value {
    let mut daemonset = yaml("k8s/base/daemonset.yaml");
    if variant.privileged {
        merge(
            &mut daemonset,
            &yaml("k8s/privileged/privileged-agent.yaml"),
        );
    }
    let template = daemonset["spec"]["template"].take();
    let mut metadata = template["metadata"].clone();
    let mut spec = template["spec"].clone();
    spec["restartPolicy"] = json!("Never");
    let containers = spec["containers"].as_array_mut().expect("containers");
    let container = containers
        .iter_mut()
        .find(|c| c["name"] == CONTAINER)
        .expect("the manifest has a container named tracer");
    container["image"] = json!(image);
    for env in container["env"].as_array_mut().expect("env") {
        if env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            *env = json!({ "name": env["name"], "value": "e2e-node" });
        }
    }
    let container = container.as_object_mut().expect("container");
    for probe in ["ports", "startupProbe", "livenessProbe", "readinessProbe"] {
        container.remove(probe);
    }
    let security = container
        .get_mut("securityContext")
        .and_then(Value::as_object_mut)
        .expect("securityContext");
    if variant.runtime_default_seccomp {
        security.insert("seccompProfile".into(), json!({ "type": "RuntimeDefault" }));
    }
    let profile = security.remove("seccompProfile").expect("seccompProfile");
    // The API server refuses `localhostProfile` with any type but Localhost (the privileged
    // overlay must delete the base's).
    assert!(
        profile["type"] == "Localhost" || profile.get("localhostProfile").is_none(),
        "seccompProfile {profile} would be rejected by Kubernetes"
    );
    let annotation = match profile["type"].as_str() {
        Some("Localhost") => format!(
            "localhost/{}",
            profile["localhostProfile"]
                .as_str()
                .expect("localhostProfile")
        ),
        Some("RuntimeDefault") => "runtime/default".to_owned(),
        Some("Unconfined") => "unconfined".to_owned(),
        other => panic!("unexpected seccompProfile type {other:?}"),
    };
    if let Some(add) = security
        .get_mut("capabilities")
        .and_then(|c| c.get_mut("add"))
        .and_then(Value::as_array_mut)
    {
        for capability in &variant.drop {
            let before = add.len();
            add.retain(|c| c != capability);
            assert!(add.len() < before, "the manifest does not add {capability}");
        }
    }
    metadata["name"] = json!(name);
    metadata["annotations"]
        [format!("container.seccomp.security.alpha.kubernetes.io/{CONTAINER}")] = json!(annotation);
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec })
}

/// The manifest's ConfigMap, exporting to `endpoint` with a short batch delay.
fn configmap(endpoint: &str) -> Value {
    let mut configmap = yaml("k8s/base/configmap.yaml");
    configmap["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = json!(endpoint);
    configmap["data"]["OTEL_BSP_SCHEDULE_DELAY"] = json!("200");
    configmap
}

/// A pod started by `podman kube play`; removed (with its containers) on drop.
struct Pod {
    podman: Podman,
    name: String,
    _files: ScratchDir,
}

impl Pod {
    fn play(variant: &Variant, label: &str, endpoint: &str) -> Pod {
        let name = format!("tracer-e2e-{label}-{}", std::process::id());
        let pod = render(variant, &name, &image());
        let podman = Podman::new(pod["spec"]["hostPID"] == true);
        let files = ScratchDir::new("pod");
        let pod_file = files.path().join("pod.json");
        let configmap_file = files.path().join("configmap.json");
        std::fs::write(&pod_file, pod.to_string()).expect("writing the pod");
        std::fs::write(&configmap_file, configmap(endpoint).to_string())
            .expect("writing the configmap");
        let seccomp_root = podman.seccomp_root();
        // From here on the guard removes the pod, whatever happens.
        let pod = Pod {
            podman,
            name,
            _files: files,
        };
        // A pod left by an interrupted run of this same test process id.
        let _ = pod.podman.output(&["pod", "rm", "--force", &pod.name]);
        pod.podman.run(&[
            "kube",
            "play",
            // On podman's default network, whose gateway the test receives on (`gateway`):
            // without it, podman 4 puts kube pods on a network of their own
            // (podman-default-kube-network), and the default network's bridge, with the
            // gateway's address, may never come up.
            "--network",
            "podman",
            "--seccomp-profile-root",
            seccomp_root.to_str().expect("utf-8 path"),
            "--configmap",
            configmap_file.to_str().expect("utf-8 path"),
            pod_file.to_str().expect("utf-8 path"),
        ]);
        pod
    }

    fn container(&self) -> String {
        format!("{}-{CONTAINER}", self.name)
    }

    fn logs(&self) -> String {
        let output = self.podman.output(&["logs", &self.container()]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    fn state(&self) -> String {
        self.podman.run(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &self.container(),
        ])
    }

    /// Waits for the agent to exit; returns its logs. Panics if it keeps running.
    fn wait_exit(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state();
            if state.starts_with("exited") || state.starts_with("stopped") {
                return format!("[{state}]\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "the agent in pod {} still runs after {timeout:?} ({state}); it was expected to \
                 stop\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pod's address on podman's network.
    fn ip(&self) -> IpAddr {
        let infra = self.podman.run(&[
            "pod",
            "inspect",
            "--format",
            "{{.InfraContainerID}}",
            &self.name,
        ]);
        let text = self.podman.run(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &infra,
        ]);
        text.split_whitespace()
            .find_map(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("pod {} has no IP address: {text:?}", self.name))
    }

    /// Waits until `/readyz` answers 200 (probes attached); panics with the logs if the agent
    /// exits or does not get ready in time.
    fn wait_ready(&self) -> IpAddr {
        let ip = self.ip();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some((200, _)) = http_get(ip, "/readyz") {
                return ip;
            }
            let state = self.state();
            assert!(
                state.starts_with("running"),
                "the agent in pod {} is not running ({state})\n{}",
                self.name,
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "the agent in pod {} did not answer /readyz with 200 within {READY_TIMEOUT:?}\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // `pod rm` can leave the pod itself behind while its cgroup is still being emptied:
        // try again until it is gone (bounded).
        for _ in 0..20 {
            let _ = self
                .podman
                .output(&["pod", "rm", "--force", "--time", "10", &self.name]);
            let exists = self.podman.output(&["pod", "exists", &self.name]);
            if !exists.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("pod {} could not be removed", self.name);
    }
}

/// `GET path` on the pod's metrics port: (status, body), or None when it does not answer.
fn http_get(ip: IpAddr, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::new(ip, METRICS_PORT);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Some((status, body))
}

/// `peers/http_server.py` on 127.0.0.1:`port` with `OTEL_SERVICE_NAME=service`, run as `uid`
/// (0: as the test, root with every capability). Another uid runs Debian's python3 on a copy of
/// the script in a world-readable directory, wherever the checkout lives.
struct HostServer {
    child: ChildGuard,
    _dir: ScratchDir,
}

impl HostServer {
    fn start(port: u16, service: &str, uid: u32) -> HostServer {
        let dir = ScratchDir::new("server");
        let mut command = if uid == 0 {
            let mut command = Command::new(python());
            command.arg(peer_script("http_server.py"));
            command
        } else {
            let script = dir.path().join("http_server.py");
            std::fs::copy(peer_script("http_server.py"), &script).expect("copying the server");
            let mut command = Command::new("setpriv");
            command.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--inh-caps=-all",
                "/usr/bin/python3",
            ]);
            command.arg(script);
            command
        };
        command
            .args(["--port", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .env("OTEL_SERVICE_NAME", service);
        let child = ChildGuard::spawn("http_server.py", command);
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "http_server.py (uid {uid}) did not listen on {port}\n{}",
            child.output_report()
        );
        HostServer { child, _dir: dir }
    }
}

/// What the traced servers' spans said.
struct Traced {
    /// service.name of the root server's SERVER span.
    root_service: String,
    /// process.executable.path of the root server's SERVER span ("" when absent).
    root_executable: String,
    /// service.name of the uid-65534 server's SERVER span.
    nobody_service: String,
    /// process.executable.path of the uid-65534 server's SERVER span ("" when absent).
    nobody_executable: String,
    logs: String,
}

/// Plays the pod, checks `/healthz` and `/readyz`, then has curl call two servers of the host
/// (one root, one uid 65534, each with its own OTEL_SERVICE_NAME) and waits for both SERVER
/// spans at the receiver.
fn traced_servers(variant: &Variant, label: &str) -> Traced {
    let gateway = Podman::new(false).gateway();
    let receiver_port = free_port();
    let endpoint = format!("http://{}", SocketAddr::new(gateway, receiver_port));
    let pod = Pod::play(variant, label, &endpoint);
    let ip = pod.wait_ready();
    assert_eq!(
        http_get(ip, "/healthz").map(|(status, _)| status),
        Some(200),
        "/healthz\n{}",
        pod.logs()
    );
    let metrics = http_get(ip, "/metrics").expect("/metrics answers");
    assert_eq!(metrics.0, 200, "/metrics: {}", metrics.1);

    // The pod network's bridge exists now that the pod runs: receive on its gateway.
    let receiver = OtlpReceiver::start_on(
        OtlpProtocol::HttpProtobuf,
        SocketAddr::new(gateway, receiver_port),
    )
    .unwrap_or_else(|e| panic!("OTLP receiver on {gateway}:{receiver_port}: {e}"));
    let (root_port, nobody_port) = (free_port(), free_port());
    let root_service = format!("e2e-root-{label}");
    let nobody_service = format!("e2e-nobody-{label}");
    let root = HostServer::start(root_port, &root_service, 0);
    let nobody = HostServer::start(nobody_port, &nobody_service, NOBODY);
    for port in [root_port, nobody_port] {
        assert_eq!(curl(&[&local_url(port, "/ok")]).status, 200);
    }
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |spans| {
            !server_spans(spans, root_port).is_empty()
                && !server_spans(spans, nobody_port).is_empty()
        })
        .unwrap_or_else(|_| {
            panic!(
                "no SERVER spans of both host servers from the agent in the pod within \
                 {SPAN_TIMEOUT:?}; received:\n{}\nagent:\n{}\n{}\n{}",
                describe(&receiver.spans()),
                pod.logs(),
                root.child.output_report(),
                nobody.child.output_report()
            )
        });
    let service = |port| {
        server_spans(&spans, port)[0]
            .service_name()
            .unwrap_or_default()
            .to_owned()
    };
    let executable = |port| {
        server_spans(&spans, port)[0]
            .resource_str("process.executable.path")
            .unwrap_or_default()
            .to_owned()
    };
    Traced {
        root_service: service(root_port),
        root_executable: executable(root_port),
        nobody_executable: executable(nobody_port),
        nobody_service: service(nobody_port),
        logs: pod.logs(),
    }
}

/// Plays the pod and returns the agent's output once it has stopped (it must stop).
fn failed_start(variant: &Variant, label: &str) -> String {
    let pod = Pod::play(variant, label, "http://127.0.0.1:4318");
    pod.wait_exit(READY_TIMEOUT)
}

#[test]
fn the_manifest_pod_traces_host_processes_and_answers_its_probes() {
    let traced = traced_servers(&Variant::default(), "manifest");
    assert_eq!(traced.root_service, "e2e-root-manifest", "{}", traced.logs);
    assert!(
        traced.root_executable.contains("python"),
        "process.executable.path {:?}\n{}",
        traced.root_executable,
        traced.logs
    );
    assert!(
        traced.nobody_executable.contains("python"),
        "{}",
        traced.logs
    );
    assert_eq!(
        traced.nobody_service, "e2e-nobody-manifest",
        "{}",
        traced.logs
    );
    assert!(
        !traced.logs.contains("is not in effect"),
        "the manifest's pod warns of a missing capability:\n{}",
        traced.logs
    );
}

#[test]
fn the_privileged_overlay_pod_traces_too() {
    let variant = Variant {
        privileged: true,
        ..Variant::default()
    };
    let traced = traced_servers(&variant, "privileged");
    assert_eq!(
        traced.root_service, "e2e-root-privileged",
        "{}",
        traced.logs
    );
    assert_eq!(
        traced.nobody_service, "e2e-nobody-privileged",
        "{}",
        traced.logs
    );
}

#[test]
fn under_the_runtime_default_seccomp_profile_the_agent_names_seccomp() {
    let variant = Variant {
        runtime_default_seccomp: true,
        ..Variant::default()
    };
    let output = failed_start(&variant, "runtime-default");
    assert!(
        output.contains("failed to create map") && output.contains("EPERM"),
        "{output}"
    );
    assert!(output.contains("Likely cause: seccomp"), "{output}");
    assert!(output.contains("Localhost"), "the fix is named: {output}");
}

#[test]
fn without_cap_bpf_the_agent_names_it() {
    let variant = Variant {
        drop: vec!["BPF"],
        ..Variant::default()
    };
    let output = failed_start(&variant, "no-bpf");
    assert!(output.contains("missing capability CAP_BPF"), "{output}");
    assert!(output.contains("add `BPF`"), "{output}");
}

#[test]
fn without_cap_perfmon_the_agent_names_it() {
    let variant = Variant {
        drop: vec!["PERFMON"],
        ..Variant::default()
    };
    let output = failed_start(&variant, "no-perfmon");
    assert!(
        output.contains("missing capability CAP_PERFMON"),
        "{output}"
    );
    assert!(!output.contains("CAP_BPF"), "{output}");
}

#[test]
fn without_cap_sys_ptrace_spans_lose_the_executable() {
    let variant = Variant {
        drop: vec!["SYS_PTRACE"],
        ..Variant::default()
    };
    let traced = traced_servers(&variant, "no-ptrace");
    assert!(
        traced.logs.contains("CAP_SYS_PTRACE is not in effect"),
        "{}",
        traced.logs
    );
    // The exe link (and fd/) of a process of another user, or of one with more capabilities
    // than the agent (root's), is closed to it; environ is only mode-checked (DAC_READ_SEARCH).
    assert_eq!(traced.root_executable, "", "{}", traced.logs);
    assert_eq!(traced.nobody_executable, "", "{}", traced.logs);
    assert_eq!(traced.root_service, "e2e-root-no-ptrace", "{}", traced.logs);
}

#[test]
fn without_cap_dac_read_search_spans_of_other_users_lose_their_service_name() {
    let variant = Variant {
        drop: vec!["DAC_READ_SEARCH"],
        ..Variant::default()
    };
    let traced = traced_servers(&variant, "no-dac");
    assert!(
        traced.logs.contains("CAP_DAC_READ_SEARCH is not in effect"),
        "{}",
        traced.logs
    );
    // Root's own processes stay readable; /proc/<pid>/environ of uid 65534 is mode 0400.
    assert_eq!(traced.root_service, "e2e-root-no-dac", "{}", traced.logs);
    assert!(traced.root_executable.contains("python"), "{}", traced.logs);
    assert_ne!(
        traced.nobody_service, "e2e-nobody-no-dac",
        "{}",
        traced.logs
    );
}
