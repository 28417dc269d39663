//! Feedback loops: the agent never makes spans of telemetry. A host-wide agent exporting through
//! a forwarding collector (a real OTLP/HTTP receiver that re-exports to a backend) beside a
//! second tracer (`tracer run`) stops producing spans once application traffic stops; an agent
//! running in its own pid namespace still recognises itself in the kernel.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::agent::READY_LINE;
use tracer_tests::metrics_client::scrape;
use tracer_tests::netns::LoopbackNamespace;
use tracer_tests::peers::{peer_script, python};
use tracer_tests::process::LineWait;
use tracer_tests::query::describe;
use tracer_tests::{
    AgentConfig, ChildGuard, ObservedKind, ObservedSpan, OtlpProtocol, OtlpReceiver, PythonServer,
    ScratchDir, curl, free_port, run_with_timeout, tracer_bin, tracer_command, wait_for_port,
};

/// How long a test waits for the spans or counters it expects.
const WAIT: Duration = Duration::from_secs(40);
/// The exporters' batch delay in these tests.
const EXPORT_INTERVAL: Duration = Duration::from_millis(200);

/// `peers/otlp_forwarder.py`: receives OTLP/HTTP on `port`, re-exports to `upstream_port`.
struct Forwarder {
    child: ChildGuard,
    port: u16,
}

impl Forwarder {
    fn start(port: u16, upstream_port: u16) -> Forwarder {
        let mut command = Command::new(python());
        command
            .arg("-u")
            .arg(peer_script("otlp_forwarder.py"))
            .args(["--port", &port.to_string()])
            .args(["--upstream", &format!("http://127.0.0.1:{upstream_port}")])
            .env("OTEL_SERVICE_NAME", "otlp-forwarder");
        let child = ChildGuard::spawn("otlp_forwarder.py", command);
        if !wait_for_port(port, Duration::from_secs(20)) {
            panic!(
                "otlp_forwarder.py did not listen on {port}\n{}",
                child.output_report()
            );
        }
        Forwarder { child, port }
    }

    fn exporter_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
                "http/protobuf".to_owned(),
            ),
            (
                "OTEL_BSP_SCHEDULE_DELAY".to_owned(),
                EXPORT_INTERVAL.as_millis().to_string(),
            ),
        ]
    }

    fn forwards(&self) -> usize {
        self.child
            .stderr()
            .lines()
            .iter()
            .filter(|l| l.starts_with("forwarded /v1/traces -> 200"))
            .count()
    }
}

/// The value of sample `name{labels}` on a metrics page.
fn sample(text: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The counters of the feedback-loop guards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LoopCounters {
    own_telemetry: u64,
    telemetry_pipeline: u64,
    mirrors_ignored: u64,
    /// Mirrors found by userspace among connections resolved from /proc.
    proc_mirrors_ignored: u64,
    spans_built: u64,
}

impl LoopCounters {
    fn read(addr: SocketAddr) -> LoopCounters {
        let text = scrape(addr);
        let get = |name, labels| {
            sample(&text, name, labels)
                .unwrap_or_else(|| panic!("{name}{{{labels}}} missing from /metrics:\n{text}"))
        };
        LoopCounters {
            own_telemetry: get("tracer_exchanges_dropped_total", "reason=\"own_telemetry\""),
            telemetry_pipeline: get(
                "tracer_exchanges_dropped_total",
                "reason=\"telemetry_pipeline\"",
            ),
            mirrors_ignored: get("tracer_kernel_agent_mirrors_ignored_total", ""),
            proc_mirrors_ignored: get("tracer_agent_mirrors_ignored_total", ""),
            spans_built: get("tracer_spans_built_total", ""),
        }
    }

    /// Polls until `done` holds (panicking after `WAIT` with the last values and `context`).
    fn wait(
        addr: SocketAddr,
        what: &str,
        context: impl Fn() -> String,
        done: impl Fn(&Self) -> bool,
    ) -> Self {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = LoopCounters::read(addr);
            if done(&now) {
                return now;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {WAIT:?} for {what}; counters {now:?}\n{}",
                    context()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether a span is about the telemetry itself: an OTLP path, or a telemetry port on either end.
fn about_telemetry(span: &ObservedSpan, ports: &[u16]) -> bool {
    let path_like = ["url.path", "url.full"]
        .iter()
        .filter_map(|k| span.attr_str(k))
        .any(|v| v.contains("/v1/traces"));
    let port_like = ["server.port", "network.peer.port", "client.port"]
        .iter()
        .filter_map(|k| span.attr_int(k))
        .any(|p| ports.iter().any(|t| i64::from(*t) == p));
    path_like || port_like
}

#[test]
fn forwarding_collector_beside_host_wide_agent_and_second_tracer_gets_no_telemetry_spans() {
    let backend = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let forwarder = Forwarder::start(free_port(), backend.addr().port());
    let app = PythonServer::start(free_port(), "loop-app");
    let telemetry_ports = [forwarder.port, backend.addr().port()];
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Every process on the host is traced; the port set keeps other tests' traffic out.
    let mut config = AgentConfig::new()
        .ports(&[app.port(), forwarder.port, backend.addr().port()])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("NO_COLOR", "1");
    for (key, value) in forwarder.exporter_env() {
        config = config.env(key, value);
    }
    let agent = config.start();
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr {metrics} never accepted connections\n{}",
        agent.stderr_text()
    );

    for i in 0..3 {
        curl(&[&app.url(&format!("/ok?host-wide={i}"))]);
    }
    // A second tracer on this host, exporting through the same collector.
    let mut second = tracer_command();
    second
        .args(["run", "--port", &app.port().to_string(), "--"])
        .args(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null"])
        .arg(app.url("/ok?second-tracer"));
    for (key, value) in forwarder.exporter_env() {
        second.env(key, value);
    }
    let (status, second) = run_with_timeout("tracer run", second, WAIT);
    assert!(
        status.success(),
        "`tracer run` failed ({status})\n{}",
        second.output_report()
    );

    let context = || {
        format!(
            "backend spans:\n{}\n--- agent stderr ---\n{}\n{}",
            describe(&backend.spans()),
            agent.stderr_text(),
            forwarder.child.output_report()
        )
    };
    // Every application span came through the collector: from the host-wide agent both ends of
    // the four requests (curl is traced too), from the second tracer its command's CLIENT span.
    let deadline = Instant::now() + WAIT;
    loop {
        let spans = backend.spans();
        let count = |kind: ObservedKind, query: &str| {
            spans
                .iter()
                .filter(|s| s.kind == kind)
                .filter(|s| {
                    let target = s.attr_str("url.query").map(str::to_owned).or_else(|| {
                        s.attr_str("url.full")
                            .and_then(|u| u.split_once('?'))
                            .map(|(_, q)| q.to_owned())
                    });
                    target.is_some_and(|q| q.starts_with(query))
                })
                .count()
        };
        let counts = (
            count(ObservedKind::Server, "host-wide"),
            count(ObservedKind::Client, "host-wide"),
            count(ObservedKind::Server, "second-tracer"),
            count(ObservedKind::Client, "second-tracer"),
        );
        if counts == (3, 3, 1, 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for the application spans (server, client, second server, second \
             client: {counts:?})\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each guard has seen its traffic: the collector's side of the agent's export (kernel), the
    // second tracer's marked export on both ends, and the collector's re-export to the backend.
    let moved = LoopCounters::wait(metrics, "every telemetry guard to count", context, |c| {
        c.mirrors_ignored >= 1 && c.own_telemetry >= 2 && c.telemetry_pipeline >= 2
    });

    // Traffic has stopped: across several export intervals nothing more is built or received.
    let received = backend.spans().len();
    assert_eq!(
        received,
        9,
        "the backend got spans beyond the application's\n{}",
        context()
    );
    // Wait on state, not time: every re-export the collector made has been captured on both
    // ends (its client, the backend's server) and dropped by the guard. A loop would have turned
    // them into spans by then, and spans into more exports.
    let settled = LoopCounters::wait(
        metrics,
        "both ends of every forward to be dropped as telemetry",
        context,
        |c| c.telemetry_pipeline >= 2 * forwarder.forwards() as u64,
    );
    let forwards = forwarder.forwards();
    let spans = backend.spans();
    let about: Vec<ObservedSpan> = spans
        .iter()
        .filter(|s| about_telemetry(s, &telemetry_ports))
        .cloned()
        .collect();
    assert!(
        about.is_empty(),
        "spans about the telemetry itself reached the backend:\n{}\n{}",
        describe(&about),
        context()
    );
    assert_eq!(
        (spans.len(), settled.spans_built),
        (received, moved.spans_built),
        "spans kept coming after application traffic stopped ({} forwards before, {} after)\n{}",
        forwards,
        forwarder.forwards(),
        context()
    );
    agent.stop().assert_success();
}

/// The pid of the only child of `parent` (the agent under `unshare --fork`).
fn only_child(parent: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    let mut pids = text.split_whitespace().filter_map(|p| p.parse().ok());
    let first = pids.next()?;
    pids.next().is_none().then_some(first)
}

#[test]
fn agent_in_its_own_pid_namespace_never_traces_itself() {
    let backend = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let app = PythonServer::start(free_port(), "pidns-app");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // `tracer agent` as pid 1 of a new pid namespace with its own /proc, as in a container
    // without hostPID; its own export goes to a port it traces.
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"])
        .arg(tracer_bin())
        .args(["agent", "--port", &app.port().to_string()])
        .args(["--port", &backend.addr().port().to_string()])
        .args(["--metrics-addr", &metrics.to_string()])
        .env("NO_COLOR", "1");
    for (key, value) in backend.exporter_env() {
        command.env(key, value);
    }
    let mut agent = ChildGuard::spawn("unshare tracer agent", command);
    match agent
        .stderr()
        .wait_for_line(Duration::from_secs(60), |l| l.contains(READY_LINE))
    {
        LineWait::Found(_) => {}
        other => panic!(
            "the namespaced agent did not attach its probes ({other:?}); the end-to-end tests \
             need root, BTF, tracefs and unshare(1)\n{}",
            agent.output_report()
        ),
    }
    let host_pid = only_child(agent.pid()).unwrap_or_else(|| {
        panic!(
            "cannot find the agent under unshare\n{}",
            agent.output_report()
        )
    });
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr never listened\n{}",
        agent.output_report()
    );

    for i in 0..3 {
        curl(&[&app.url(&format!("/ok?pidns={i}"))]);
    }
    let context = || {
        format!(
            "backend spans:\n{}\n{}",
            describe(&backend.spans()),
            agent.output_report()
        )
    };
    let deadline = Instant::now() + WAIT;
    while backend
        .spans()
        .iter()
        .filter(|s| {
            s.kind == ObservedKind::Server
                && s.attr_int("server.port") == Some(i64::from(app.port()))
        })
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for the app's spans\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The export that delivered them went out on a traced port: the agent's own end was skipped
    // by pid (nothing of it reached the pipeline: no marked exchange) and the receiver's end as
    // the mirror of the agent's socket.
    let counters = LoopCounters::wait(metrics, "the agent's export to be seen", context, |c| {
        c.mirrors_ignored + c.own_telemetry >= 1
    });
    assert_eq!(
        (counters.own_telemetry, counters.mirrors_ignored >= 1),
        (0, true),
        "the agent's own exchanges reached its pipeline: the kernel did not recognise it\n{}",
        context()
    );
    // The app runs outside the agent's pid namespace: its /proc entries are not the agent's to
    // read (a host tgid there may be another process's pid), so none were read, counted.
    let unmapped = sample(&scrape(metrics), "tracer_proc_pid_unmapped_total", "");
    assert!(
        unmapped.is_some_and(|n| n >= 1),
        "tracer_proc_pid_unmapped_total is {unmapped:?}\n{}",
        context()
    );
    let app_span = backend
        .spans()
        .into_iter()
        .find(|s| s.attr_int("server.port") == Some(i64::from(app.port())))
        .unwrap_or_else(|| unreachable!());
    // Named from the kernel's record of the process itself (its thread's comm, carried by the
    // connection-open record) or not at all, never from a /proc entry that may be another's.
    assert!(
        app_span
            .service_name()
            .is_some_and(|n| n.starts_with("unknown_service:") || n == "python3"),
        "a process outside the agent's namespace must not be named from its /proc: {}",
        app_span.summary()
    );
    let stderr = agent.stderr().text();
    let recognised = stderr
        .lines()
        .find(|l| l.contains("the kernel programs recognise the agent"))
        .unwrap_or_else(|| panic!("the agent did not say how the kernel knows it\n{stderr}"));
    assert!(
        recognised.contains(&format!("host_pid={host_pid} ")) && recognised.contains("pid=1 "),
        "the kernel must know the agent by its host pid {host_pid}, not its namespaced pid 1: \
         {recognised}"
    );
    let about: Vec<ObservedSpan> = backend
        .spans()
        .into_iter()
        .filter(|s| about_telemetry(s, &[backend.addr().port()]))
        .collect();
    assert!(
        about.is_empty(),
        "spans of the agent's own export:\n{}",
        describe(&about)
    );
    // unshare ignores SIGTERM while it waits for its child: stop the agent itself, by its pid.
    // SAFETY: kill(2) has no memory-safety preconditions; the agent is still running (unshare
    // has not exited), so the pid is still the agent's.
    unsafe { libc::kill(host_pid as libc::pid_t, libc::SIGTERM) };
    let status = agent.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the namespaced agent did not exit cleanly ({status:?})\n{}",
        agent.output_report()
    );
}

#[test]
fn tracer_run_in_its_own_pid_namespace_traces_its_command_and_not_itself() {
    let backend = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let app = PythonServer::start(free_port(), "pidns-run-app");
    // `tracer run` inside a container without hostPID: the pid it gets for its command is a pid
    // of its namespace, which the kernel programs must translate.
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"])
        .arg(tracer_bin())
        .args(["run", "--port", &app.port().to_string()])
        .args(["--port", &backend.addr().port().to_string(), "--"])
        // The client stays alive a moment after its request, so the agent can read its /proc
        // entry (a curl may exit before the agent gets to it on a loaded machine, and then no
        // process can be named: that race is not what this test is about).
        .args(["env", "OTEL_SERVICE_NAME=pidns-run-client"])
        .arg(python())
        .args([
            "-c",
            "import sys, time, urllib.request\n\
             urllib.request.urlopen(sys.argv[1]).read()\n\
             time.sleep(2)",
        ])
        .arg(app.url("/ok?pidns-run"))
        .env("NO_COLOR", "1");
    for (key, value) in backend.exporter_env() {
        command.env(key, value);
    }
    let (status, run) = run_with_timeout("unshare tracer run", command, WAIT);
    assert!(
        status.success(),
        "`tracer run` in a pid namespace failed ({status})\n{}",
        run.output_report()
    );
    let spans = backend
        .wait_for(WAIT, |spans| {
            spans.iter().any(|s| {
                s.kind == ObservedKind::Client
                    && s.attr_str("url.full")
                        .is_some_and(|u| u.ends_with("?pidns-run"))
            })
        })
        .unwrap_or_else(|timed_out| {
            panic!(
                "the command's CLIENT span never arrived:\n{}\n{}",
                describe(&timed_out.last_seen),
                run.output_report()
            )
        });
    // The agent reads its own namespace's /proc: the kernel's host tgid of the command is
    // translated to the command's pid there, never read as another process's pid.
    let client = spans
        .iter()
        .find(|s| s.kind == ObservedKind::Client)
        .unwrap_or_else(|| unreachable!());
    assert_eq!(
        client.service_name(),
        Some("pidns-run-client"),
        "the command's resource must come from its own /proc entry\n{}",
        describe(&spans)
    );
    let others: Vec<&ObservedSpan> = spans
        .iter()
        .filter(|s| s.service_name() != Some("pidns-run-client"))
        .collect();
    assert!(
        others.is_empty(),
        "spans of processes other than the command (the agent's own export?):\n{}",
        describe(others)
    );
}

#[test]
fn kubernetes_api_watch_is_marked_and_its_server_end_never_traced() {
    let scratch = ScratchDir::new("self-telemetry-k8s");
    let pods = scratch.path().join("pods.json");
    std::fs::write(&pods, "[]").unwrap_or_else(|e| panic!("writing {}: {e}", pods.display()));
    let api_port = free_port();
    let mut api_command = Command::new(python());
    api_command
        .arg("-u")
        .arg(peer_script("fake_kube_api.py"))
        .args(["--port", &api_port.to_string()])
        .arg("--pods")
        .arg(&pods);
    let api = ChildGuard::spawn("fake_kube_api.py", api_command);
    assert!(
        wait_for_port(api_port, Duration::from_secs(20)),
        "fake API did not start\n{}",
        api.output_report()
    );
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{api_port}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", kubeconfig.display()));

    let backend = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let app = PythonServer::start(free_port(), "watch-app");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The API server's port is traced: only the agent's own exclusions keep its watch out.
    let agent = AgentConfig::new()
        .ports(&[app.port(), api_port])
        .arg("--k8s-node-name")
        .arg("loops-node")
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("KUBECONFIG", kubeconfig.display().to_string())
        .env("NO_COLOR", "1")
        .export_to(&backend)
        .start();
    match api
        .stdout()
        .wait_for_line(WAIT, |line| line.starts_with("WATCH"))
    {
        LineWait::Found(_) => {}
        other => panic!(
            "the agent did not watch pods ({other:?})\n{}\n--- agent stderr ---\n{}",
            api.output_report(),
            agent.stderr_text()
        ),
    }
    let requests = api.stdout().lines();
    let unmarked: Vec<&String> = requests
        .iter()
        .filter(|l| l.starts_with("LIST") || l.starts_with("WATCH") || l.starts_with("GET"))
        .filter(|l| !l.contains("user-agent=tracer-agent/"))
        .collect();
    assert!(
        unmarked.is_empty(),
        "API requests without the agent's mark: {unmarked:?}"
    );

    curl(&[&app.url("/ok?beside-the-watch")]);
    let context = || {
        format!(
            "backend spans:\n{}\n--- agent stderr ---\n{}",
            describe(&backend.spans()),
            agent.stderr_text()
        )
    };
    backend
        .wait_for(WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.attr_str("url.query") == Some("beside-the-watch"))
        })
        .unwrap_or_else(|_| panic!("the app's span never arrived\n{}", context()));
    // The agent connects to the API only once its probes are attached: the kernel knows the
    // socket as the agent's from the first list on.
    let counters = LoopCounters::wait(metrics, "the API server's end to be seen", context, |c| {
        c.mirrors_ignored + c.own_telemetry >= 1
    });
    assert_eq!(
        (counters.own_telemetry, counters.mirrors_ignored >= 1),
        (0, true),
        "the API server's end of the watch was captured\n{}",
        context()
    );
    let about: Vec<ObservedSpan> = backend
        .spans()
        .into_iter()
        .filter(|s| about_telemetry(s, &[api_port]))
        .collect();
    assert!(
        about.is_empty(),
        "spans of the agent's API watch:\n{}",
        describe(&about)
    );
    agent.stop().assert_success();
}

#[test]
fn grpc_export_is_never_captured_on_the_collector_side() {
    let backend = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
    let app = PythonServer::start(free_port(), "grpc-export-app");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The collector's port is traced: HTTP/2 is not parsed, so only the kernel's exclusion of the
    // agent's own connections keeps the export's bytes from being captured.
    let agent = AgentConfig::new()
        .ports(&[app.port(), backend.addr().port()])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("NO_COLOR", "1")
        .export_to(&backend)
        .start();
    curl(&[&app.url("/ok?over-grpc")]);
    let context = || {
        format!(
            "backend spans:\n{}\n--- agent stderr ---\n{}",
            describe(&backend.spans()),
            agent.stderr_text()
        )
    };
    backend
        .wait_for(WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.attr_str("url.query") == Some("over-grpc"))
        })
        .unwrap_or_else(|_| panic!("the app's span never arrived\n{}", context()));
    // The kernel recognised the collector's end (HTTP/2 is not parsed, so no userspace guard
    // could have: this is the assertion).
    LoopCounters::wait(metrics, "the collector's end to be ignored", context, |c| {
        c.mirrors_ignored >= 1
    });
    agent.stop().assert_success();
}

/// A network namespace joined to the host by a veth pair (host 10.231.N.1/24, namespace
/// 10.231.N.2/24) and a DNAT sending `service:port` on the host to the namespace, as a Kubernetes
/// Service does. Dropping it removes the rule and the namespace (and with it the veth pair).
struct NattedNamespace {
    name: String,
    nat_rule: Vec<String>,
    /// A source NAT rule (POSTROUTING), when `rewrite_source` added one.
    snat_rule: Vec<String>,
    /// The host's end of the veth pair.
    host_if: String,
    host_addr: String,
    ns_addr: String,
    service_addr: String,
}

fn run_ok(program: &str, args: &[&str]) {
    let mut command = Command::new(program);
    command.args(args);
    let (status, child) = run_with_timeout(program, command, Duration::from_secs(20));
    assert!(
        status.success(),
        "`{program} {}` failed ({status})\n{}",
        args.join(" "),
        child.output_report()
    );
}

impl NattedNamespace {
    fn create(port: u16) -> NattedNamespace {
        // Unique per test process and per instance (tests of one process run in parallel).
        static INSTANCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let instance = INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2;
        let id = std::process::id();
        let subnet = format!("10.231.{}", (id % 125) * 2 + instance + 1);
        let name = format!("tracer-loops-{id}-{instance}");
        let (host_if, ns_if) = (
            format!("tlh{}-{instance}", id % 100_000),
            format!("tln{}-{instance}", id % 100_000),
        );
        let natted = NattedNamespace {
            host_if: host_if.clone(),
            name: name.clone(),
            nat_rule: Vec::new(),
            snat_rule: Vec::new(),
            host_addr: format!("{subnet}.1"),
            ns_addr: format!("{subnet}.2"),
            service_addr: format!("{subnet}.9"),
        };
        run_ok("ip", &["netns", "add", &name]);
        let mut natted = natted;
        run_ok(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ],
        );
        run_ok("ip", &["link", "set", &ns_if, "netns", &name]);
        run_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", natted.host_addr),
                "dev",
                &host_if,
            ],
        );
        run_ok("ip", &["link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name.as_str(), "ip"];
            all.extend_from_slice(args);
            run_ok("ip", &all);
        };
        in_ns(&[
            "addr",
            "add",
            &format!("{}/24", natted.ns_addr),
            "dev",
            &ns_if,
        ]);
        in_ns(&["link", "set", &ns_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        let port = port.to_string();
        let to = format!("{}:{port}", natted.ns_addr);
        natted.nat_rule = [
            "OUTPUT",
            "-d",
            &natted.service_addr,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut add = vec!["-t", "nat", "-A"];
        add.extend(natted.nat_rule.iter().map(String::as_str));
        run_ok("iptables", &add);
        natted
    }

    /// Rewrites the source of connections to the namespace's `port` to another address of the
    /// host (10.231.N.3 on the host's end of the veth), as a masquerading Service or portmap
    /// does: the collector then sees a peer the agent never had.
    fn rewrite_source(&mut self, port: u16) -> String {
        let subnet = self
            .host_addr
            .strip_suffix(".1")
            .unwrap_or_else(|| unreachable!());
        let snat_addr = format!("{subnet}.3");
        run_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{snat_addr}/24"),
                "dev",
                &self.host_if,
            ],
        );
        let port = port.to_string();
        self.snat_rule = [
            "POSTROUTING",
            "-d",
            &self.ns_addr,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "SNAT",
            "--to-source",
            &snat_addr,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut add = vec!["-t", "nat", "-A"];
        add.extend(self.snat_rule.iter().map(String::as_str));
        run_ok("iptables", &add);
        snat_addr
    }

    /// `command` run inside the namespace.
    fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for NattedNamespace {
    fn drop(&mut self) {
        if !self.snat_rule.is_empty() {
            let _ = Command::new("iptables")
                .args(["-t", "nat", "-D"])
                .args(&self.snat_rule)
                .status();
        }
        if !self.nat_rule.is_empty() {
            let _ = Command::new("iptables")
                .args(["-t", "nat", "-D"])
                .args(&self.nat_rule)
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

#[test]
fn collector_behind_a_dnat_on_this_host_never_captures_the_export() {
    export_through_a_nat(false);
}

/// A NAT that rewrites the source (masquerade, SNAT) defeats the kernel's recognition of the
/// collector's end: the collector's side is captured, and the agent's `User-Agent` mark is what
/// keeps the export from becoming spans (the documented fallback).
#[test]
fn collector_behind_a_source_rewriting_nat_is_kept_out_by_the_mark() {
    export_through_a_nat(true);
}

fn export_through_a_nat(rewrite_source: bool) {
    let collector_port = free_port();
    let mut natted = NattedNamespace::create(collector_port);
    if rewrite_source {
        natted.rewrite_source(collector_port);
    }
    // The collector: an HTTP server in the namespace (it answers the export 404; what matters
    // is the connection), reached by the agent through the DNAT'd service address.
    let mut collector_command = natted.command(python());
    collector_command
        .arg("-u")
        .arg(peer_script("http_server.py"))
        .args(["--port", &collector_port.to_string()])
        .args(["--host", &natted.ns_addr]);
    let collector = ChildGuard::spawn("http_server.py in a netns", collector_command);
    let collector_addr: SocketAddr = format!("{}:{collector_port}", natted.ns_addr)
        .parse()
        .unwrap_or_else(|e| panic!("collector address: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&collector_addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the collector in the namespace did not listen\n{}",
            collector.output_report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let app = PythonServer::start(free_port(), "dnat-app");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = AgentConfig::new()
        .ports(&[app.port(), collector_port])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("NO_COLOR", "1")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}:{collector_port}", natted.service_addr),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .start();
    curl(&[&app.url("/ok?behind-dnat")]);
    let context = || {
        format!(
            "--- agent stderr ---\n{}\n{}",
            agent.stderr_text(),
            collector.output_report()
        )
    };
    // The agent's socket is (host, ephemeral) -> (service, port); the collector's is
    // (namespace, port) <- (host, ephemeral): no mirror 4-tuple, the same source endpoint.
    let counters = LoopCounters::wait(metrics, "the collector's end to be seen", context, |c| {
        c.mirrors_ignored + c.own_telemetry >= 1
    });
    if rewrite_source {
        // The collector's peer is the rewritten source: captured, then dropped by the mark.
        assert_eq!(
            (
                counters.own_telemetry >= 1,
                counters.mirrors_ignored,
                counters.spans_built
            ),
            (true, 0, 2),
            "behind a source NAT, the mark must drop the captured export (and only the app's \
             two spans be built)\n{}",
            context()
        );
    } else {
        assert_eq!(
            (counters.own_telemetry, counters.mirrors_ignored >= 1),
            (0, true),
            "the collector's end of the export was captured\n{}",
            context()
        );
    }
    assert!(
        collector.stderr().text().contains("POST /v1/traces"),
        "the export did not reach the collector through the DNAT\n{}",
        context()
    );
    agent.stop().assert_success();
}

/// The local port of this host's established TCP connection to `127.0.0.1:remote_port` from
/// another port (the agent's export connection; the receiver's end has the port itself).
fn local_port_towards(remote_port: u16) -> Option<u16> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    let remote = format!("0100007F:{remote_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, peer, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        if *peer != remote || *state != "01" {
            return None;
        }
        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        (port != remote_port).then_some(port)
    })
}

/// The kernel exclusion of the agent's own connections is not fooled by an application
/// connection whose peer endpoint happens to equal the agent's local endpoint: here a pod-like
/// network namespace's client on its own 127.0.0.1 with the very port the host agent exports
/// from (the same holds on one host when connect() reuses a port towards another server).
#[test]
fn application_connection_reusing_the_agents_local_endpoint_is_traced() {
    let backend = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
    let trigger = PythonServer::start(free_port(), "reuse-trigger");
    let server_port = free_port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = AgentConfig::new()
        .ports(&[trigger.port(), server_port])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("NO_COLOR", "1")
        .export_to(&backend)
        .start();
    let context = || {
        format!(
            "backend spans:\n{}\n--- agent stderr ---\n{}",
            describe(&backend.spans()),
            agent.stderr_text()
        )
    };
    // A first span opens the agent's export connection (gRPC keeps it).
    curl(&[&trigger.url("/first")]);
    backend
        .wait_for(WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.attr_str("url.path") == Some("/first"))
        })
        .unwrap_or_else(|_| panic!("the trigger span never arrived\n{}", context()));
    let agent_port = local_port_towards(backend.addr().port()).unwrap_or_else(|| {
        panic!(
            "no established connection to the receiver's port {}\n{}",
            backend.addr().port(),
            context()
        )
    });

    let namespace = LoopbackNamespace::create("loops-lo");
    let mut server_command = namespace.command(python());
    server_command
        .arg("-u")
        .arg(peer_script("http_server.py"))
        .args(["--port", &server_port.to_string()])
        .args(["--host", "127.0.0.1"])
        .env("OTEL_SERVICE_NAME", "netns-app");
    let server = ChildGuard::spawn("http_server.py in a netns", server_command);
    // The namespace's client takes the agent's local port (free in its own port space).
    let url = format!("http://127.0.0.1:{server_port}/reused");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut client = namespace.command("curl");
        client.args(["-s", "-o", "/dev/null", "--max-time", "5"]);
        client.args(["--local-port", &agent_port.to_string(), &url]);
        let (status, _) = run_with_timeout("curl in a netns", client, Duration::from_secs(10));
        if status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "curl from port {agent_port} in the namespace never got an answer\n{}",
            server.output_report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    backend
        .wait_for(WAIT, |spans| {
            spans.iter().any(|s| {
                s.kind == ObservedKind::Server && s.attr_str("url.path") == Some("/reused")
            })
        })
        .unwrap_or_else(|_| {
            panic!(
                "the namespace server's span (peer 127.0.0.1:{agent_port}, the agent's local \
                 endpoint) never arrived: wrongly excluded as the agent's mirror\n{}",
                context()
            )
        });
    drop(server);
    agent.stop().assert_success();
}

/// A collector that accepts with `accept4(fd, NULL, NULL)` (Node's libuv) gets no peer address
/// from the syscall: the kernel reads the endpoints from the accepted socket and recognises the
/// agent's own export there, ignoring it before any of its bytes are captured (an agent that
/// left these endpoints to /proc recognised it only in userspace, counted
/// `tracer_agent_mirrors_ignored_total`, after the connection was tracked).
#[test]
fn collector_accepting_without_a_peer_address_is_recognised_in_the_kernel() {
    let collector_port = free_port();
    let script = format!(
        "require('http').createServer((q, s) => {{ q.resume(); q.on('end', () => {{ \
         s.writeHead(200, {{'content-type': 'application/x-protobuf'}}); s.end(); }}); }})\
         .listen({collector_port}, '127.0.0.1', () => console.log('listening'));"
    );
    let mut command = Command::new("node");
    command.args(["-e", &script]);
    let collector = ChildGuard::spawn("node collector", command);
    assert!(
        wait_for_port(collector_port, Duration::from_secs(20)),
        "the node collector did not listen\n{}",
        collector.output_report()
    );
    let app = PythonServer::start(free_port(), "null-accept-app");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = AgentConfig::new()
        .ports(&[app.port(), collector_port])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("NO_COLOR", "1")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector_port}"),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env(
            "OTEL_BSP_SCHEDULE_DELAY",
            EXPORT_INTERVAL.as_millis().to_string(),
        )
        .start();
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr never listened\n{}",
        agent.stderr_text()
    );
    curl(&[&app.url("/ok?null-accept")]);
    let context = || {
        format!(
            "--- agent stderr ---\n{}\n{}",
            agent.stderr_text(),
            collector.output_report()
        )
    };
    let counters = LoopCounters::wait(metrics, "the export to reach the collector", context, |c| {
        c.mirrors_ignored + c.proc_mirrors_ignored + c.own_telemetry >= 1
    });
    assert_eq!(
        (
            counters.own_telemetry,
            counters.proc_mirrors_ignored,
            counters.mirrors_ignored >= 1
        ),
        (0, 0, true),
        "the collector's end of the export was not ignored by the kernel\n{}",
        context()
    );
    agent.stop().assert_success();
}
