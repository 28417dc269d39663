//! Cross-node traces without headers: `--context-propagation tcp-options` carries the context
//! in a TCP header option. Two network namespaces joined by a veth pair play two nodes; a DNAT
//! rule in the client's namespace maps a "service" address to the server namespace's pod
//! address (as kube-proxy does). Two agents play the two nodes' agents, each given `--pid` for
//! its own node's process only, both exporting to one OTLP receiver:
//! `hub.py drive` → threaded hub (node A) → leaf `http_server.py` via the service (node B).
//! With propagation on, every leaf SERVER span is a child of the hub CLIENT span that called it
//! (same trace, zero wrong links); with it off, the two nodes' spans are separate traces (the
//! link came from the option).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::peers::{peer_script, python};
use tracer_tests::query::describe;
use tracer_tests::{
    AgentConfig, ChildGuard, ObservedKind, ObservedSpan, OtlpProtocol, OtlpReceiver, SPAN_TIMEOUT,
    run_with_timeout,
};

const SEQUENTIAL: u32 = 20;
const CONCURRENT: u32 = 8;
const LEAF_PORT: u16 = 8080;
const HUB_PORT: u16 = 9090;
const SERVICE_PORT: u16 = 80;
const DRIVE_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests the hub serves before the measured ones (ids from `WARM_UP_FIRST_ID`, never
/// checked): the kernel decides a CLIENT request's parent only in a process it has seen serve
/// requests one per thread (4 answered requests: `tracer_common::propagation::
/// DEDICATED_VERIFIED` - `DEDICATED_CANDIDATE`).
const WARM_UP: u32 = 5;
const WARM_UP_FIRST_ID: u32 = 1000;
/// `tracer_common::propagation::SOCK_OPS_PROGRAM`.
const SOCK_OPS_PROGRAM: &str = "tcp_context_options";

/// The `sock_ops` program of every agent with propagation on is attached to the cgroup v2 root,
/// so its kernel counters (options received, malformed) count every connection on the host,
/// including those of the other tests of this file running beside it. A test asserting those
/// counters exactly runs alone (`HostCounters::exclusive`); every other test holds a share.
static HOST_COUNTERS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A test's hold on `HOST_COUNTERS`, released when dropped (a panicking holder does not poison
/// the others: the lock guards no data).
#[allow(dead_code)]
enum HostCounters {
    Shared(std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(std::sync::RwLockWriteGuard<'static, ()>),
}

impl HostCounters {
    fn shared() -> HostCounters {
        HostCounters::Shared(HOST_COUNTERS.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn exclusive() -> HostCounters {
        HostCounters::Exclusive(HOST_COUNTERS.write().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Runs `ip` (or any command) and panics with its output when it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?} could not run: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, a veth pair between them and a DNAT rule: deleted when dropped (which
/// removes the veth pair and the rule with them).
struct Nodes {
    a: String,
    b: String,
    /// 10.<net>.0.0/24 is the pod network, 10.<net>.1.10 the service address.
    net: u8,
}

impl Nodes {
    fn create(tag: &str) -> Nodes {
        let pid = std::process::id();
        // A /16 of its own per test of this run.
        let index = match tag {
            "on" => 0,
            "off" => 1,
            "ka" => 2,
            // Two clusters of one test with the SAME addresses (see `twin_namespaces_...`).
            "twin1" | "twin2" => 4,
            "hole" => 5,
            _ => 3,
        };
        let net = (20 + (pid % 50) * 4 + index) as u8;
        let nodes = Nodes {
            a: format!("trc-{tag}-a-{pid}"),
            b: format!("trc-{tag}-b-{pid}"),
            net,
        };
        let (a, b) = (nodes.a.as_str(), nodes.b.as_str());
        // Interface names: at most 15 bytes, distinct per test.
        let (va, vb) = (format!("t{tag}a{pid}"), format!("t{tag}b{pid}"));
        let (va, vb) = (&va[..va.len().min(15)], &vb[..vb.len().min(15)]);
        let (pod_a, pod_b) = (nodes.pod_a(), nodes.pod_b());
        sh(&["ip", "netns", "add", a]);
        sh(&["ip", "netns", "add", b]);
        sh(&["ip", "link", "add", va, "type", "veth", "peer", "name", vb]);
        sh(&["ip", "link", "set", va, "netns", a]);
        sh(&["ip", "link", "set", vb, "netns", b]);
        for (ns, dev, addr) in [(a, va, &pod_a), (b, vb, &pod_b)] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // Node A reaches the service address through its veth; DNAT sends it to node B's pod.
        let service = nodes.service();
        sh(&[
            "ip",
            "-n",
            a,
            "route",
            "add",
            &format!("{service}/32"),
            "dev",
            va,
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            a,
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &service,
            "--dport",
            &SERVICE_PORT.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{pod_b}:{LEAF_PORT}"),
        ]);
        nodes
    }

    fn pod_a(&self) -> String {
        format!("10.{}.0.1", self.net)
    }

    fn pod_b(&self) -> String {
        format!("10.{}.0.2", self.net)
    }

    fn service(&self) -> String {
        format!("10.{}.1.10", self.net)
    }

    /// A middlebox on node B's way in: strips our option (kind 253) from segments carrying
    /// `text` (the request line of one request).
    fn strip_option_on(&self, text: &str) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.b,
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-m",
            "string",
            "--string",
            text,
            "--algo",
            "bm",
            "-j",
            "TCPOPTSTRIP",
            "--strip-options",
            "253",
        ]);
    }

    fn exec(&self, ns: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]);
        command
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// The two nodes with the hub on A and the leaf on B (processes stopped before the namespaces
/// are deleted: fields drop in order).
struct Cluster {
    hub: ChildGuard,
    leaf: ChildGuard,
    nodes: Nodes,
}

/// Waits until something accepts TCP connections on `addr:port` inside namespace `ns`.
fn wait_listening(nodes: &Nodes, ns: &str, addr: &str, port: u16, who: &ChildGuard) {
    let deadline = Instant::now() + START_TIMEOUT;
    let probe = format!(
        "import socket,sys\ns=socket.socket()\ns.settimeout(1)\nsys.exit(s.connect_ex(('{addr}',{port})))"
    );
    loop {
        let ok = nodes
            .exec(ns)
            .arg(python())
            .args(["-c", &probe])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {addr}:{port} in {ns}\n{}",
            who.name(),
            who.output_report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// `direct`: the hub calls the leaf's pod address (no DNAT), so that one agent on the host
    /// can also pair the two ends of the connection.
    fn start(tag: &str, keep_alive: bool, direct: bool) -> Cluster {
        Cluster::start_from(tag, keep_alive, direct, None, None)
    }

    /// `source_port`: the hub's backend connections are made from this local port.
    /// `hole_at`: the leaf is `hole_leaf.py`, reading that request of each connection (1-based)
    /// with a transfer the agent does not see.
    fn start_from(
        tag: &str,
        keep_alive: bool,
        direct: bool,
        source_port: Option<u16>,
        hole_at: Option<u32>,
    ) -> Cluster {
        let nodes = Nodes::create(tag);
        let mut leaf = nodes.exec(&nodes.b);
        leaf.arg(python())
            .arg(peer_script(if hole_at.is_some() {
                "hole_leaf.py"
            } else {
                "http_server.py"
            }))
            .args(["--host", &nodes.pod_b(), "--port", &LEAF_PORT.to_string()]);
        if let Some(n) = hole_at {
            leaf.args(["--mmsg-request", &n.to_string()]);
        }
        let leaf = ChildGuard::spawn("leaf", leaf);
        wait_listening(&nodes, &nodes.b, &nodes.pod_b(), LEAF_PORT, &leaf);
        let mut hub = nodes.exec(&nodes.a);
        hub.arg(python())
            .arg(peer_script("hub.py"))
            .arg("serve")
            .args(["--host", "127.0.0.1", "--port", &HUB_PORT.to_string()])
            .args([
                "--backend",
                &if direct {
                    format!("http://{}:{LEAF_PORT}/ok", nodes.pod_b())
                } else {
                    format!("http://{}:{SERVICE_PORT}/ok", nodes.service())
                },
            ]);
        if keep_alive {
            hub.arg("--keep-alive");
        }
        if let Some(port) = source_port {
            hub.args(["--source-port", &port.to_string()]);
        }
        let hub = ChildGuard::spawn("hub", hub);
        wait_listening(&nodes, &nodes.a, "127.0.0.1", HUB_PORT, &hub);
        Cluster { hub, leaf, nodes }
    }

    /// The warm-up requests (see `WARM_UP`), one at a time.
    fn warm_up(&self) {
        self.drive(WARM_UP_FIRST_ID, WARM_UP, 1);
    }

    /// `hub.py drive` inside node A: `requests` GETs from `threads` threads, ids from `first`.
    fn drive(&self, first: u32, requests: u32, threads: u32) {
        let command = self.drive_command(first, requests, threads);
        let (status, child) = run_with_timeout("hub.py drive", command, DRIVE_TIMEOUT);
        assert!(
            status.success(),
            "hub.py drive failed ({status})\n{}\n{}\n{}",
            child.output_report(),
            self.hub.output_report(),
            self.leaf.output_report()
        );
    }

    fn drive_command(&self, first: u32, requests: u32, threads: u32) -> Command {
        let mut command = self.nodes.exec(&self.nodes.a);
        command
            .arg(python())
            .arg(peer_script("hub.py"))
            .arg("drive")
            .args(["--port", &HUB_PORT.to_string()])
            .args(["--first-id", &first.to_string()])
            .args(["--requests", &requests.to_string()])
            .args(["--threads", &threads.to_string()]);
        command
    }
}

fn agent(receiver: &OtlpReceiver, pid: u32, propagation: bool) -> tracer_tests::Agent {
    let mut config = AgentConfig::new().pid(pid).export_to(receiver);
    if propagation {
        config = config.arg("--context-propagation").arg("tcp-options");
    }
    config.start()
}

/// The `id` query parameter of a request's span.
fn request_id(span: &ObservedSpan) -> Option<u32> {
    let query = match span.kind {
        ObservedKind::Server => span.attr_str("url.query")?,
        _ => span.attr_str("url.full")?.split_once('?')?.1,
    };
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("id="))?
        .parse()
        .ok()
}

/// Spans by request id: (hub SERVER, hub CLIENT, leaf SERVER, driver CLIENT when traced).
type ById<'a> = HashMap<u32, [Vec<&'a ObservedSpan>; 4]>;

fn by_id(spans: &[ObservedSpan]) -> ById<'_> {
    let mut out: ById<'_> = HashMap::new();
    for span in spans {
        let Some(id) = request_id(span) else { continue };
        let slot = match (span.kind, span.attr_str("url.path")) {
            (ObservedKind::Server, Some("/fanout")) => 0,
            (ObservedKind::Client, _)
                if span
                    .attr_str("url.full")
                    .is_some_and(|u| u.contains("/fanout")) =>
            {
                3
            }
            (ObservedKind::Client, _) => 1,
            (ObservedKind::Server, Some("/ok")) => 2,
            _ => continue,
        };
        out.entry(id).or_default()[slot].push(span);
    }
    out
}

fn complete(spans: &[ObservedSpan], ids: std::ops::Range<u32>) -> bool {
    let by = by_id(spans);
    ids.clone().all(|id| {
        by.get(&id)
            .is_some_and(|s| s[..3].iter().all(|v| v.len() == 1))
    })
}

/// The requests of `ids` not linked hub SERVER -> hub CLIENT -> leaf SERVER in one trace.
fn unlinked(spans: &[ObservedSpan], ids: impl IntoIterator<Item = u32>) -> Vec<String> {
    let by = by_id(spans);
    let mut wrong = Vec::new();
    for id in ids {
        let [hub_server, hub_client, leaf, _] = &by[&id];
        let (hub_server, hub_client, leaf) = (hub_server[0], hub_client[0], leaf[0]);
        let linked = leaf.parent_span_id.as_deref() == Some(hub_client.span_id.as_str())
            && leaf.trace_id == hub_client.trace_id
            && hub_client.parent_span_id.as_deref() == Some(hub_server.span_id.as_str())
            && hub_client.trace_id == hub_server.trace_id;
        if !linked {
            wrong.push(describe([hub_server, hub_client, leaf]));
        }
    }
    wrong
}

/// Whether process `pid` holds the propagation's `sock_ops` program (names are cut to 15 bytes
/// by the kernel).
fn holds_sock_ops_program(pid: u32) -> bool {
    use tracer_tests::bpf_objects::{Held, program_name};
    Held::by_pid(pid).programs.iter().any(|id| {
        program_name(*id)
            .is_some_and(|name| !name.is_empty() && SOCK_OPS_PROGRAM.starts_with(name.as_str()))
    })
}

fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn context_crosses_nodes_in_tcp_options() {
    let _host = HostCounters::shared();
    let cluster = Cluster::start("on", false, false);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent_a = agent(&receiver, cluster.hub.pid(), true);
    let mut agent_b = agent(&receiver, cluster.leaf.pid(), true);
    let active = agent_a.wait_metrics("propagation active", |m| {
        metric(m, "tracer_context_propagation_active ") == 1
    });
    assert_eq!(metric(&active, "tracer_context_propagation_active "), 1);
    assert!(
        holds_sock_ops_program(agent_a.pid()),
        "an agent with --context-propagation tcp-options holds its sock_ops program"
    );

    cluster.warm_up();
    cluster.drive(0, SEQUENTIAL, 1);
    cluster.drive(SEQUENTIAL, CONCURRENT, CONCURRENT);
    let total = SEQUENTIAL + CONCURRENT;
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| complete(s, 0..total))
        .unwrap_or_else(|e| {
            panic!(
                "not every request has its hub SERVER, hub CLIENT and leaf SERVER span: {e:?}\n{}\n{}",
                agent_a.stderr_text(),
                agent_b.stderr_text()
            )
        });
    let wrong = unlinked(&spans, 0..total);
    let metrics_a = agent_a.wait_settled();
    let metrics_b = agent_b.wait_settled();
    assert!(
        wrong.is_empty(),
        "{} of {total} requests not linked hub SERVER -> hub CLIENT -> leaf SERVER:\n{}\n\
         agent A:\n{}\nagent B:\n{}",
        wrong.len(),
        wrong.join("\n"),
        metrics_a
            .lines()
            .filter(|l| l.contains("context") || l.contains("kernel_identit"))
            .collect::<Vec<_>>()
            .join("\n"),
        metrics_b
            .lines()
            .filter(|l| l.contains("context") || l.contains("kernel_identit"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let written = metric(
        &metrics_a,
        "tracer_context_options_total{outcome=\"written\"} ",
    );
    let adopted = metric(&metrics_b, "tracer_context_adopted_total ");
    assert!(
        written >= u64::from(total) && adopted >= u64::from(total),
        "options written on node A {written}, adopted on node B {adopted}, want >= {total}"
    );
    assert_eq!(
        metric(&metrics_b, "tracer_kernel_identity_disagreements_total "),
        0
    );
}

/// Two clusters whose namespaces use the SAME addresses and ports at the same time (isolated
/// networks with one private range on one host), both with propagation on: each hub's
/// keep-alive connection to its leaf has the same 4-tuple as the other's, and the same requests
/// at the same stream offsets. The kernel's tables name a connection by its network namespace
/// too: every leaf SERVER span is the child of its own cluster's hub CLIENT span, none of the
/// other's. Without the namespace in the key, one cluster's `ESTABLISHED` replaced the other's
/// stream baselines in every agent's `sock_ops` tables.
#[test]
fn twin_namespaces_with_the_same_4_tuples_never_exchange_contexts() {
    let _host = HostCounters::shared();
    const SOURCE_PORT: u16 = 45000;
    const REQUESTS: u32 = 10;
    // Ids of one width in both clusters: their requests have the same lengths, so the same
    // stream offsets.
    let (first_one, first_two) = (100, 200);
    let one = Cluster::start_from("twin1", true, false, Some(SOURCE_PORT), None);
    let two = Cluster::start_from("twin2", true, false, Some(SOURCE_PORT), None);
    assert_eq!(
        (one.nodes.pod_a(), one.nodes.service()),
        (two.nodes.pod_a(), two.nodes.service()),
        "the two clusters use the same addresses"
    );
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agents = [
        agent(&receiver, one.hub.pid(), true),
        agent(&receiver, one.leaf.pid(), true),
        agent(&receiver, two.hub.pid(), true),
        agent(&receiver, two.leaf.pid(), true),
    ];
    for a in &mut agents {
        a.wait_metrics("propagation active", |m| {
            metric(m, "tracer_context_propagation_active ") == 1
        });
    }
    // Both clusters at once: warm-up (ids of one width too), then the measured requests.
    for (first_one, first_two, requests) in
        [(1000, 2000, WARM_UP), (first_one, first_two, REQUESTS)]
    {
        let command = two.drive_command(first_two, requests, 1);
        let other = std::thread::spawn(move || {
            let (status, child) = run_with_timeout("hub.py drive", command, DRIVE_TIMEOUT);
            (status.success(), child.output_report())
        });
        one.drive(first_one, requests, 1);
        let (ok, report) = other.join().expect("the second driver thread");
        assert!(ok, "hub.py drive (second cluster) failed\n{report}");
    }
    let ids = || (first_one..first_one + REQUESTS).chain(first_two..first_two + REQUESTS);
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| {
            complete(s, first_one..first_one + REQUESTS)
                && complete(s, first_two..first_two + REQUESTS)
        })
        .unwrap_or_else(|e| panic!("spans missing: {e:?}"));
    let wrong = unlinked(&spans, ids());
    let settled: Vec<String> = agents.iter_mut().map(|a| a.wait_settled()).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests not linked to their own cluster's hub:\n{}\nagents' counters:\n{}",
        wrong.len(),
        2 * REQUESTS,
        wrong.join("\n"),
        settled
            .iter()
            .map(|m| m
                .lines()
                .filter(|l| l.starts_with("tracer_context"))
                .collect::<Vec<_>>()
                .join("\n"))
            .collect::<Vec<_>>()
            .join("\n--\n")
    );
}

#[test]
fn without_propagation_the_nodes_traces_stay_separate() {
    let _host = HostCounters::shared();
    let cluster = Cluster::start("off", false, false);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent_a = agent(&receiver, cluster.hub.pid(), false);
    let mut agent_b = agent(&receiver, cluster.leaf.pid(), false);
    let requests = 5;
    cluster.drive(0, requests, 1);
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| complete(s, 0..requests))
        .unwrap_or_else(|e| panic!("spans missing: {e:?}"));
    let by = by_id(&spans);
    for id in 0..requests {
        let [_, hub_client, leaf, _] = &by[&id];
        assert!(
            leaf[0].parent_span_id.is_none() && leaf[0].trace_id != hub_client[0].trace_id,
            "with propagation off the leaf's span must start its own trace:\n{}",
            describe([hub_client[0], leaf[0]])
        );
    }
    let metrics_a = agent_a.wait_settled();
    let _ = agent_b.wait_settled();
    assert!(
        !holds_sock_ops_program(agent_a.pid()),
        "without --context-propagation no sock_ops program may be loaded"
    );
    assert_eq!(metric(&metrics_a, "tracer_context_propagation_active "), 0);
    assert_eq!(
        metric(
            &metrics_a,
            "tracer_context_options_total{outcome=\"written\"} "
        ),
        0
    );
}

/// A keep-alive connection carries one context per request; the option of one request is
/// stripped on the way (a middlebox): that request is left unlinked and every later one on the
/// connection still links to its own caller (offsets, not request order).
#[test]
fn each_request_of_a_keep_alive_connection_carries_its_own_context() {
    let _host = HostCounters::shared();
    const STRIPPED: u32 = 3;
    let cluster = Cluster::start("ka", true, false);
    cluster
        .nodes
        .strip_option_on(&format!("?id={STRIPPED} HTTP/1.1"));
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent_a = agent(&receiver, cluster.hub.pid(), true);
    let mut agent_b = agent(&receiver, cluster.leaf.pid(), true);
    let requests = 10;
    cluster.warm_up();
    let adopted_before = metric(&agent_b.wait_settled(), "tracer_context_adopted_total ");
    cluster.drive(0, requests, 1);
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| complete(s, 0..requests))
        .unwrap_or_else(|e| {
            panic!(
                "spans missing: {e:?}\n{}\n{}",
                agent_a.stderr_text(),
                agent_b.stderr_text()
            )
        });
    let by = by_id(&spans);
    let peers: std::collections::BTreeSet<Option<i64>> = (0..requests)
        .map(|id| {
            let leaf = by[&id][2][0];
            leaf.attr_int("network.peer.port")
                .or_else(|| leaf.attr_int("client.port"))
        })
        .collect();
    assert!(
        peers.len() == 1 && !peers.contains(&None),
        "the hub's backend calls must share one keep-alive connection: peer ports {peers:?}"
    );
    let wrong = unlinked(&spans, (0..STRIPPED).chain(STRIPPED + 1..requests));
    let _ = agent_a.wait_settled();
    let metrics_b = agent_b.wait_settled();
    assert!(
        wrong.is_empty(),
        "{} of {} keep-alive requests with their option not linked:\n{}",
        wrong.len(),
        requests - 1,
        wrong.join("\n")
    );
    let [_, hub_client, leaf, _] = &by[&STRIPPED];
    assert!(
        leaf[0].parent_span_id.is_none() && leaf[0].trace_id != hub_client[0].trace_id,
        "the request whose option was stripped must be left unlinked, not linked to another:\n{}",
        describe([hub_client[0], leaf[0]])
    );
    assert_eq!(
        metric(&metrics_b, "tracer_context_adopted_total ") - adopted_before,
        u64::from(requests - 1)
    );
}

/// A hole in what the kernel saw of a keep-alive stream (the leaf reads one request with
/// recvmmsg, which the agent does not hook) right after that request's context arrived, then a
/// request whose own option is stripped: its stream offset as the kernel counts it is the
/// unseen request's, whose context is still the connection's latest. The kernel must not adopt
/// it (before: adopted, a wrong parent for everything that request called): from the hole on,
/// the connection's offsets are unknown, nothing is adopted there (counted), and the requests
/// before the hole link as usual.
#[test]
fn after_a_hole_in_the_stream_no_context_is_adopted() {
    let _host = HostCounters::shared();
    const HOLE: u32 = 11;
    const STRIPPED: u32 = 12;
    const FIRST: u32 = 10;
    const REQUESTS: u32 = 5;
    // The leaf counts the warm-up requests too (same keep-alive connection).
    let cluster = Cluster::start_from("hole", true, false, None, Some(WARM_UP + HOLE - FIRST + 1));
    cluster
        .nodes
        .strip_option_on(&format!("?id={STRIPPED} HTTP/1.1"));
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent_a = agent(&receiver, cluster.hub.pid(), true);
    let mut agent_b = agent(&receiver, cluster.leaf.pid(), true);
    cluster.warm_up();
    let adopted_before = metric(&agent_b.wait_settled(), "tracer_context_adopted_total ");
    cluster.drive(FIRST, REQUESTS, 1);
    // The unseen request has no leaf span; the others all do.
    let seen = || (FIRST..HOLE).chain(HOLE + 1..FIRST + REQUESTS);
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| {
            let by = by_id(s);
            seen().all(|id| {
                by.get(&id)
                    .is_some_and(|v| v[..3].iter().all(|x| x.len() == 1))
            })
        })
        .unwrap_or_else(|e| {
            panic!(
                "spans missing: {e:?}\n{}\n{}",
                agent_a.stderr_text(),
                agent_b.stderr_text()
            )
        });
    let metrics_b = agent_b.wait_settled();
    let by = by_id(&spans);
    let before = unlinked(&spans, FIRST..HOLE);
    let metrics_a = agent_a.wait_settled();
    let counters = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("tracer_context") || l.starts_with("tracer_kernel_ident"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        before.is_empty(),
        "the requests before the hole link as usual:\n{}\nnode A:\n{}\nnode B:\n{}",
        before.join("\n"),
        counters(&metrics_a),
        counters(&metrics_b)
    );
    for id in HOLE + 1..FIRST + REQUESTS {
        let leaf = by[&id][2][0];
        let own = by[&id][1][0];
        assert!(
            leaf.parent_span_id.is_none() || leaf.parent_span_id.as_deref() == Some(&own.span_id),
            "request {id} after the hole has another request's parent:\n{}",
            describe([own, leaf])
        );
    }
    assert_eq!(
        metric(&metrics_b, "tracer_context_adopted_total ") - adopted_before,
        u64::from(HOLE - FIRST),
        "node B adopted a context for each request before the hole only"
    );
    assert!(
        metric(&metrics_b, "tracer_context_offsets_unknown_total ") >= 1,
        "the requests after the hole are counted"
    );
}

/// One agent for both nodes' processes (one host, pod-to-pod over the veth, no DNAT): the leaf's
/// parent is known twice, from the connection pair and from the option; both must name the same
/// span on every request (0 disagreements).
#[test]
fn on_one_host_pairing_and_the_option_agree() {
    let _host = HostCounters::shared();
    let cluster = Cluster::start("one", false, true);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent = AgentConfig::new()
        .pid(cluster.hub.pid())
        .pid(cluster.leaf.pid())
        .export_to(&receiver)
        .arg("--context-propagation")
        .arg("tcp-options")
        .start();
    let requests = 10;
    cluster.warm_up();
    // The warm-up's calls were left to userspace (no option): the leaf's SERVER span started
    // a trace in the kernel and pairing linked it, each counted as a disagreement.
    let disagreements_before = metric(
        &agent.wait_settled(),
        "tracer_kernel_identity_disagreements_total ",
    );
    cluster.drive(0, requests, 1);
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| complete(s, 0..requests))
        .unwrap_or_else(|e| panic!("spans missing: {e:?}\n{}", agent.stderr_text()));
    let wrong = unlinked(&spans, 0..requests);
    let metrics = agent.wait_settled();
    assert!(
        wrong.is_empty(),
        "{} of {requests} not linked:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let adopted = metric(&metrics, "tracer_context_adopted_total ");
    let paired = metric(
        &metrics,
        "tracer_parent_links_total{source=\"connection_pair\"} ",
    );
    assert!(
        adopted >= u64::from(requests) && paired >= u64::from(requests),
        "both sources must have seen every request: adopted {adopted}, paired {paired}"
    );
    assert_eq!(
        metric(&metrics, "tracer_kernel_identity_disagreements_total ") - disagreements_before,
        0,
        "pairing and option disagreed"
    );
}

/// A request arriving at the hub with a `traceparent` keeps that trace id end to end: the
/// kernel's scan of the hub's request head gives the hub's SERVER request the header's trace,
/// so the option its backend call carries names that trace, and the leaf on node B joins it.
/// An invalid header (uppercase hex) is refused by the kernel as by userspace: its request
/// links as any other, in a trace of its own. Without the scan the leaf would be in the trace
/// the kernel drew at random (the hub's spans remapped to the header's: a counted disagreement).
#[test]
fn a_traceparent_keeps_its_trace_id_across_nodes() {
    let _host = HostCounters::shared();
    const VALID: u32 = 4;
    const INVALID_ID: u32 = VALID;
    let cluster = Cluster::start("tp", false, false);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent_a = agent(&receiver, cluster.hub.pid(), true);
    let mut agent_b = agent(&receiver, cluster.leaf.pid(), true);
    agent_a.wait_metrics("propagation active", |m| {
        metric(m, "tracer_context_propagation_active ") == 1
    });
    cluster.warm_up();
    let trace = |id: u32| format!("4bf92f3577b34da6a3ce929d{:08x}", 0x0e0e_4700 + id);
    let parent = "00f067aa0ba902b7";
    let send = |id: u32, header: String| {
        let mut command = cluster.nodes.exec(&cluster.nodes.a);
        command
            .arg(python())
            .arg(peer_script("hub.py"))
            .arg("drive")
            .args(["--port", &HUB_PORT.to_string()])
            .args(["--first-id", &id.to_string()])
            .args(["--requests", "1", "--threads", "1"])
            .args(["--header", &header]);
        let (status, child) = run_with_timeout("hub.py drive", command, DRIVE_TIMEOUT);
        assert!(
            status.success(),
            "hub.py drive failed ({status})\n{}\n{}",
            child.output_report(),
            cluster.hub.output_report()
        );
    };
    for id in 0..VALID {
        // The header name in both letter cases, the value with and without spaces around.
        let name = if id % 2 == 0 {
            "traceparent"
        } else {
            "TraceParent"
        };
        send(id, format!("{name}: 00-{}-{parent}-01", trace(id)));
    }
    send(
        INVALID_ID,
        format!(
            "traceparent: 00-{}-{parent}-01",
            trace(INVALID_ID).to_uppercase()
        ),
    );
    let total = VALID + 1;
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| complete(s, 0..total))
        .unwrap_or_else(|e| {
            panic!(
                "spans missing: {e:?}\n{}\n{}",
                agent_a.stderr_text(),
                agent_b.stderr_text()
            )
        });
    let wrong = unlinked(&spans, 0..total);
    let metrics_a = agent_a.wait_settled();
    let _ = agent_b.wait_settled();
    assert!(
        wrong.is_empty(),
        "not linked hub SERVER -> hub CLIENT -> leaf SERVER:\n{}",
        wrong.join("\n")
    );
    let by = by_id(&spans);
    for id in 0..VALID {
        let [hub_server, _, leaf, _] = &by[&id];
        assert!(
            hub_server[0].trace_id == trace(id)
                && hub_server[0].parent_span_id.as_deref() == Some(parent)
                && leaf[0].trace_id == trace(id),
            "request {id} must keep its traceparent's trace id {} on both nodes:\n{}",
            trace(id),
            describe([hub_server[0], leaf[0]])
        );
    }
    let [hub_server, _, leaf, _] = &by[&INVALID_ID];
    assert!(
        hub_server[0].parent_span_id.is_none()
            && !leaf[0].trace_id.eq_ignore_ascii_case(&trace(INVALID_ID)),
        "an invalid traceparent must not be adopted:\n{}",
        describe([hub_server[0], leaf[0]])
    );
    let scans = |outcome: &str| {
        metric(
            &metrics_a,
            &format!("tracer_kernel_header_scans_total{{outcome=\"{outcome}\"}} "),
        )
    };
    assert_eq!(
        (scans("adopted"), scans("rejected"), scans("not_run")),
        (u64::from(VALID), 1, 0),
        "the hub's agent adopted every valid header and refused the invalid one (the scan \
         program, tail-called by the data programs, ran for every request)"
    );
    assert_eq!(
        metric(&metrics_a, "tracer_kernel_identity_disagreements_total "),
        0,
        "the kernel and userspace read the same header"
    );
}

/// A segment without room for the option is sent without it and counted: its request is left
/// unlinked on the other node, never linked to another. The room is taken by the TCP MD5
/// signature option (RFC 2385: 20 of the 40 option bytes with padding, timestamps 12 more), set
/// by the client and the server on one connection: SACK blocks leave no room either, but cannot
/// be made to appear on a request's segment on demand. The same client's next, plain connection
/// carries the option again (the test is not blind).
#[test]
fn a_segment_without_option_room_is_counted_and_left_unlinked() {
    let _host = HostCounters::shared();
    const REQUESTS: u32 = 3;
    const MD5_PORT: u16 = 8081;
    const PLAIN_PORT: u16 = 8082;
    let nodes = Nodes::create("md5");
    let mut server = nodes.exec(&nodes.b);
    server
        .arg(python())
        .arg(peer_script("md5_pair.py"))
        .args(["serve", "--host", &nodes.pod_b(), "--peer", &nodes.pod_a()])
        .args(["--md5-port", &MD5_PORT.to_string()])
        .args(["--plain-port", &PLAIN_PORT.to_string()]);
    let server = ChildGuard::spawn("md5 server", server);
    wait_listening(&nodes, &nodes.b, &nodes.pod_b(), PLAIN_PORT, &server);
    let scratch = tracer_tests::ScratchDir::new("md5");
    let go = scratch.path().join("go");
    let mut client = nodes.exec(&nodes.a);
    client
        .arg(python())
        .arg(peer_script("md5_pair.py"))
        .args(["drive", "--host", &nodes.pod_b()])
        .args(["--md5-port", &MD5_PORT.to_string()])
        .args(["--plain-port", &PLAIN_PORT.to_string()])
        .args(["--requests", &REQUESTS.to_string()])
        .arg("--wait-file")
        .arg(&go);
    let mut client = ChildGuard::spawn("md5 client", client);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent_a = agent(&receiver, client.pid(), true);
    let mut agent_b = agent(&receiver, server.pid(), true);
    for a in [&mut agent_a, &mut agent_b] {
        a.wait_metrics("propagation active", |m| {
            metric(m, "tracer_context_propagation_active ") == 1
        });
    }
    std::fs::write(&go, b"go").expect("writing the client's start file");
    let status = client.wait_timeout(DRIVE_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the MD5 client failed ({status:?})\n{}\n{}",
        client.output_report(),
        server.output_report()
    );
    let total = 2 * REQUESTS;
    let both = |spans: &[ObservedSpan]| {
        let by = by_id(spans);
        (0..total).all(|id| {
            by.get(&id)
                .is_some_and(|s| s[1].len() == 1 && s[2].len() == 1)
        })
    };
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| both(s))
        .unwrap_or_else(|e| {
            panic!(
                "not every request has its client and leaf span: {e:?}\n{}\n{}",
                agent_a.stderr_text(),
                agent_b.stderr_text()
            )
        });
    let metrics_a = agent_a.wait_settled();
    let metrics_b = agent_b.wait_settled();
    let by = by_id(&spans);
    for id in 0..total {
        let [_, client_span, leaf, _] = &by[&id];
        let (client_span, leaf) = (client_span[0], leaf[0]);
        let linked = leaf.parent_span_id.as_deref() == Some(client_span.span_id.as_str())
            && leaf.trace_id == client_span.trace_id;
        if id < REQUESTS {
            assert!(
                leaf.parent_span_id.is_none() && leaf.trace_id != client_span.trace_id,
                "request {id} went without the option: its leaf span must be left unlinked:\n{}",
                describe([client_span, leaf])
            );
        } else {
            assert!(
                linked,
                "request {id} (plain connection) carried the option: linked\n{}",
                describe([client_span, leaf])
            );
        }
    }
    let no_space = metric(
        &metrics_a,
        "tracer_context_options_not_sent_total{reason=\"no_space\"} ",
    );
    let written = metric(
        &metrics_a,
        "tracer_context_options_total{outcome=\"written\"} ",
    );
    assert!(
        no_space >= u64::from(REQUESTS) && written >= u64::from(REQUESTS),
        "node A: {no_space} requests counted without option room (want >= {REQUESTS}), \
         {written} options written (want >= {REQUESTS})"
    );
    assert_eq!(
        metric(&metrics_b, "tracer_context_adopted_total "),
        u64::from(REQUESTS),
        "node B adopts the plain connection's contexts only"
    );
}

/// Foreign and malformed options of kind 253 (sent from hand-made TCP segments: no socket option
/// makes the kernel send them) are ignored, the malformed ones counted, and their requests left
/// unlinked; a valid option sent the same way is adopted exactly (the injection works).
#[test]
fn foreign_and_malformed_options_are_ignored() {
    // Exact counts of the host-wide option counters: see `HOST_COUNTERS`.
    let _host = HostCounters::exclusive();
    const FIRST_ID: u32 = 100;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let span = "b7ad6b7169203331";
    let cluster = Cluster::start("raw", false, false);
    let nodes = &cluster.nodes;
    // The hand-made connections are unknown to node A's kernel: its RSTs must not end them.
    sh(&[
        "ip",
        "netns",
        "exec",
        &nodes.a,
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &nodes.pod_b(),
        "--dport",
        &LEAF_PORT.to_string(),
        "--tcp-flags",
        "RST",
        "RST",
        "-j",
        "DROP",
    ]);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent_b = agent(&receiver, cluster.leaf.pid(), true);
    agent_b.wait_metrics("propagation active", |m| {
        metric(m, "tracer_context_propagation_active ") == 1
    });
    let cases = [
        "foreign".to_string(),
        "short".to_string(),
        "zero-trace".to_string(),
        format!("valid:{trace}:{span}"),
    ];
    let mut command = nodes.exec(&nodes.a);
    command
        .arg(python())
        .arg(peer_script("raw_option.py"))
        .args(["--src", &nodes.pod_a(), "--dst", &nodes.pod_b()])
        .args(["--port", &LEAF_PORT.to_string()])
        .args(["--first-id", &FIRST_ID.to_string()])
        .args(&cases);
    let (status, child) = run_with_timeout("raw_option.py", command, DRIVE_TIMEOUT);
    assert!(
        status.success(),
        "raw_option.py failed ({status})\n{}",
        child.output_report()
    );
    let ids = FIRST_ID..FIRST_ID + cases.len() as u32;
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| {
            let by = by_id(s);
            ids.clone()
                .all(|id| by.get(&id).is_some_and(|v| v[2].len() == 1))
        })
        .unwrap_or_else(|e| panic!("leaf spans missing: {e:?}\n{}", agent_b.stderr_text()));
    let metrics_b = agent_b.wait_settled();
    let by = by_id(&spans);
    for (id, case) in ids.clone().zip(&cases) {
        let leaf = by[&id][2][0];
        if case.starts_with("valid") {
            assert!(
                leaf.trace_id == trace && leaf.parent_span_id.as_deref() == Some(span),
                "the valid option must be adopted exactly:\n{}",
                describe([leaf])
            );
        } else {
            assert!(
                leaf.parent_span_id.is_none() && leaf.trace_id != trace,
                "the {case} option must be ignored:\n{}",
                describe([leaf])
            );
        }
    }
    let options = |outcome: &str| {
        metric(
            &metrics_b,
            &format!("tracer_context_options_total{{outcome=\"{outcome}\"}} "),
        )
    };
    assert_eq!(
        (options("malformed"), options("received")),
        (2, 1),
        "node B: the short and zero-id options counted malformed, the valid one received (the \
         foreign one is another program's: ignored, not counted)"
    );
    assert_eq!(metric(&metrics_b, "tracer_context_adopted_total "), 1);
}
