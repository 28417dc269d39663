//! Parent links across uninstrumented services that send no trace headers, through real probes.
//! Topology: a client → a fan-out hub → three backends (two Python `http.server`s and nginx).
//! The thread-per-request hub must give exactly one connected trace per request (client CLIENT →
//! hub SERVER by connection pair → 3 hub CLIENT by same thread → 3 backend SERVER by connection
//! pair), alone and under concurrent load; the single-threaded asyncio hub may miss links but must
//! never link spans of two different requests; a `traceparent` from an instrumented client wins
//! over the connection pair.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use tracer_tests::netns::LoopbackNamespace;
use tracer_tests::nginx::parent_pid;
use tracer_tests::peers::{PEER_START_TIMEOUT, peer_script, python};
use tracer_tests::process::Stopped;
use tracer_tests::query::{client_spans, describe, server_spans, the_only};
use tracer_tests::{
    ChildGuard, Nginx, ObservedKind, ObservedSpan, OtlpProtocol, PythonServer, SPAN_TIMEOUT,
    TracedSession, curl, free_port, local_url, run_with_timeout, wait_for_port,
};

/// Backends each hub request fans out to.
const BACKENDS: usize = 3;
/// Spans of one request: the client's CLIENT span, the hub's SERVER span, and per backend the
/// hub's CLIENT span and the backend's SERVER span.
const SPANS_PER_REQUEST: usize = 2 + 2 * BACKENDS;
/// The concurrent load: 40 requests from 8 client threads at once.
const CONCURRENT_LOAD: LoadPhase = LoadPhase {
    requests: 40,
    threads: 8,
};
/// The asyncio hub's load: everything overlapping, then partly, then one request at a time
/// (where the one open request on the loop's thread is unambiguous).
const ASYNCIO_LOAD: [LoadPhase; 3] = [
    CONCURRENT_LOAD,
    LoadPhase {
        requests: 20,
        threads: 2,
    },
    LoadPhase {
        requests: 10,
        threads: 1,
    },
];
/// How long one `hub.py drive` run may take.
const DRIVE_TIMEOUT: Duration = Duration::from_secs(180);
/// What the slow Python backend sleeps per call, so that hub requests overlap under load.
const SLOW_BACKEND_MS: u32 = 20;

const HUB_SERVICE: &str = "linking-hub";
const CLIENT_SERVICE: &str = "linking-client";

/// `requests` requests sent from `threads` client threads at once.
#[derive(Clone, Copy, Debug)]
struct LoadPhase {
    requests: u32,
    threads: u32,
}

/// Which hub serves `/fanout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HubKind {
    /// `hub.py serve`: `ThreadingHTTPServer`, backends called one after another by the handler
    /// thread.
    Threads,
    /// `async_hub.py`: one thread, one event loop, backends called concurrently.
    Asyncio,
}

/// The hub and its three backends, all listening on 127.0.0.1; everything is stopped by pid
/// when dropped.
struct Topology {
    hub: ChildGuard,
    hub_port: u16,
    backend_a: PythonServer,
    backend_b: PythonServer,
    nginx: Nginx,
}

impl Topology {
    fn start(kind: HubKind) -> Topology {
        let backend_a = PythonServer::start(free_port(), "linking-backend-a");
        let backend_b = PythonServer::start(free_port(), "linking-backend-b");
        let nginx = Nginx::start(free_port());
        let hub_port = free_port();
        let backend_urls = [
            backend_a.url("/ok"),
            backend_b.url(&format!("/slow?ms={SLOW_BACKEND_MS}")),
            local_url(nginx.port(), "/index.html"),
        ];
        let mut command = Command::new(python());
        command.arg("-u");
        match kind {
            HubKind::Threads => command.arg(peer_script("hub.py")).arg("serve"),
            HubKind::Asyncio => command.arg(peer_script("async_hub.py")),
        };
        command
            .args(["--port", &hub_port.to_string()])
            .env("OTEL_SERVICE_NAME", HUB_SERVICE);
        for url in &backend_urls {
            command.args(["--backend", url]);
        }
        let hub = ChildGuard::spawn("hub", command);
        if !wait_for_port(hub_port, PEER_START_TIMEOUT) {
            panic!(
                "the {kind:?} hub did not listen on {hub_port} within {PEER_START_TIMEOUT:?}\n{}",
                hub.output_report()
            );
        }
        Topology {
            hub,
            hub_port,
            backend_a,
            backend_b,
            nginx,
        }
    }

    fn backend_ports(&self) -> [u16; BACKENDS] {
        [
            self.backend_a.port(),
            self.backend_b.port(),
            self.nginx.port(),
        ]
    }

    /// Every port of the topology (the agent's filter).
    fn ports(&self) -> Vec<u16> {
        std::iter::once(self.hub_port)
            .chain(self.backend_ports())
            .collect()
    }

    fn fanout_url(&self, id: u32) -> String {
        local_url(self.hub_port, &format!("/fanout?id={id}"))
    }

    /// The hub's output, for failure messages.
    fn report(&self) -> String {
        self.hub.output_report()
    }
}

/// Runs `hub.py drive`: `load.requests` GETs `/fanout?id=first_id..` from `load.threads` threads
/// at once, one connection each; panics unless every request got 200 with a body naming its own
/// id. Returns the client's pid.
fn drive(topology: &Topology, first_id: u32, load: LoadPhase) -> u32 {
    let mut command = Command::new(python());
    command
        .arg(peer_script("hub.py"))
        .arg("drive")
        .args(["--port", &topology.hub_port.to_string()])
        .args(["--first-id", &first_id.to_string()])
        .args(["--requests", &load.requests.to_string()])
        .args(["--threads", &load.threads.to_string()])
        .env("OTEL_SERVICE_NAME", CLIENT_SERVICE);
    let (status, child) = run_with_timeout("hub.py drive", command, DRIVE_TIMEOUT);
    let report = child
        .stdout()
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok());
    let pid = report
        .as_ref()
        .and_then(|r| r.get("pid")?.as_u64())
        .and_then(|p| u32::try_from(p).ok());
    match (status.success(), pid) {
        (true, Some(pid)) => pid,
        _ => panic!(
            "hub.py drive failed ({status}): some request did not get 200 and its own id back\n{}\n{}",
            child.output_report(),
            topology.report()
        ),
    }
}

/// The `id` query parameter of the request a span belongs to: from `url.query` on SERVER spans,
/// from the query of `url.full` on CLIENT spans.
fn request_id(span: &ObservedSpan) -> Option<u32> {
    let query = match span.kind {
        ObservedKind::Server => span.attr_str("url.query")?,
        _ => span.attr_str("url.full")?.split_once('?')?.1,
    };
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("id="))
        .and_then(|id| id.parse().ok())
}

/// Spans grouped by request id; spans without one are kept apart.
struct ByRequest<'a> {
    by_id: BTreeMap<u32, Vec<&'a ObservedSpan>>,
    without_id: Vec<&'a ObservedSpan>,
}

fn group_by_request(spans: &[ObservedSpan]) -> ByRequest<'_> {
    let mut grouped = ByRequest {
        by_id: BTreeMap::new(),
        without_id: Vec::new(),
    };
    for span in spans {
        match request_id(span) {
            Some(id) => grouped.by_id.entry(id).or_default().push(span),
            None => grouped.without_id.push(span),
        }
    }
    grouped
}

/// Spans of `spans` of `kind` with `server.port == port`.
fn of_kind_on_port<'a>(
    spans: &[&'a ObservedSpan],
    kind: ObservedKind,
    port: u16,
) -> Vec<&'a ObservedSpan> {
    spans
        .iter()
        .copied()
        .filter(|s| s.kind == kind && s.attr_int("server.port") == Some(i64::from(port)))
        .collect()
}

/// The single span of `candidates`, or a defect naming `what`.
fn exactly_one<'a>(
    candidates: Vec<&'a ObservedSpan>,
    what: &str,
) -> Result<&'a ObservedSpan, String> {
    match candidates.as_slice() {
        [one] => Ok(one),
        _ => Err(format!("{} {what} instead of 1", candidates.len())),
    }
}

/// Checks that `child` is a child of `parent` in the same trace.
fn child_of(child: &ObservedSpan, parent: &ObservedSpan, what: &str) -> Result<(), String> {
    if child.trace_id != parent.trace_id {
        return Err(format!(
            "{what}: trace {} instead of the parent's {}",
            child.trace_id, parent.trace_id
        ));
    }
    if child.parent_span_id.as_deref() != Some(parent.span_id.as_str()) {
        return Err(format!(
            "{what}: parent {} instead of {}",
            child.parent_span_id.as_deref().unwrap_or("none"),
            parent.span_id
        ));
    }
    Ok(())
}

/// Below the hub's SERVER span: per backend one hub CLIENT span, child of the hub SERVER span,
/// and one backend SERVER span, child of that CLIENT span.
fn check_fanout(
    spans: &[&ObservedSpan],
    hub_server: &ObservedSpan,
    backend_ports: [u16; BACKENDS],
) -> Result<(), String> {
    for port in backend_ports {
        let call = exactly_one(
            of_kind_on_port(spans, ObservedKind::Client, port),
            &format!("hub CLIENT spans to {port}"),
        )?;
        child_of(call, hub_server, &format!("hub CLIENT span to {port}"))?;
        let served = exactly_one(
            of_kind_on_port(spans, ObservedKind::Server, port),
            &format!("SERVER spans on backend {port}"),
        )?;
        child_of(served, call, &format!("SERVER span on backend {port}"))?;
    }
    Ok(())
}

/// Checks that one request's spans are exactly the header-less chain: the client's CLIENT span
/// is the root, the hub's SERVER span its child, then the fan-out.
fn check_chain(
    spans: &[&ObservedSpan],
    hub_port: u16,
    backend_ports: [u16; BACKENDS],
) -> Result<(), String> {
    if spans.len() != SPANS_PER_REQUEST {
        return Err(format!(
            "{} spans instead of {SPANS_PER_REQUEST}",
            spans.len()
        ));
    }
    let root = exactly_one(
        of_kind_on_port(spans, ObservedKind::Client, hub_port),
        "client CLIENT spans",
    )?;
    if let Some(parent) = &root.parent_span_id {
        return Err(format!(
            "the client CLIENT span has parent {parent}, expected none"
        ));
    }
    let hub_server = exactly_one(
        of_kind_on_port(spans, ObservedKind::Server, hub_port),
        "hub SERVER spans",
    )?;
    child_of(hub_server, root, "hub SERVER span")?;
    check_fanout(spans, hub_server, backend_ports)
}

/// Traces holding spans of more than one request (or spans without a request id), with the ids.
fn mixed_traces(spans: &[ObservedSpan]) -> BTreeMap<&str, BTreeSet<Option<u32>>> {
    let mut ids_per_trace: BTreeMap<&str, BTreeSet<Option<u32>>> = BTreeMap::new();
    for span in spans {
        ids_per_trace
            .entry(span.trace_id.as_str())
            .or_default()
            .insert(request_id(span));
    }
    ids_per_trace.retain(|_, ids| ids.len() > 1);
    ids_per_trace
}

/// Parent links among `spans` that join spans of two different requests: (child, parent).
fn wrong_links(spans: &[ObservedSpan]) -> Vec<(&ObservedSpan, &ObservedSpan)> {
    let by_span_id: HashMap<&str, &ObservedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    spans
        .iter()
        .filter_map(|child| {
            let parent = by_span_id.get(child.parent_span_id.as_deref()?)?;
            (request_id(child) != request_id(parent)).then_some((child, *parent))
        })
        .collect()
}

/// Spans naming a parent that is not among `spans`.
fn dangling_parents(spans: &[ObservedSpan]) -> Vec<&ObservedSpan> {
    let span_ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| {
            s.parent_span_id
                .as_deref()
                .is_some_and(|p| !span_ids.contains(p))
        })
        .collect()
}

/// Which received spans come from processes this test started: a span of any other process
/// passed the agent's port filter by mistake and is not this test's traffic.
struct Ownership {
    pids: BTreeSet<u32>,
    nginx_master: u32,
    /// Pids already classified (nginx workers are recognised by their parent).
    known: HashMap<u32, bool>,
}

impl Ownership {
    /// The topology's processes plus the `clients`.
    fn new(topology: &Topology, clients: impl IntoIterator<Item = u32>) -> Ownership {
        let pids = [
            topology.hub.pid(),
            topology.backend_a.pid(),
            topology.backend_b.pid(),
        ]
        .into_iter()
        .chain(clients)
        .collect();
        Ownership {
            pids,
            nginx_master: topology.nginx.master_pid(),
            known: HashMap::new(),
        }
    }

    fn owns(&mut self, span: &ObservedSpan) -> bool {
        let Some(pid) = span
            .resource_int("process.pid")
            .and_then(|p| u32::try_from(p).ok())
        else {
            return false;
        };
        let (pids, nginx_master) = (&self.pids, self.nginx_master);
        *self
            .known
            .entry(pid)
            .or_insert_with(|| pids.contains(&pid) || parent_pid(pid) == Some(nginx_master))
    }
}

/// What one agent run delivered.
struct Collected {
    /// Spans of processes this test started.
    spans: Vec<ObservedSpan>,
    /// Spans of other processes (reported, never asserted on).
    foreign: Vec<ObservedSpan>,
    /// The agent's stderr, for failure messages.
    agent_log: String,
}

/// Waits until `count` spans of our processes arrived (or `SPAN_TIMEOUT` passed: the checks
/// then say what is missing), stops the agent, asserts it exited 0, and splits what it sent
/// into ours and foreign. Must run while the topology still runs (nginx workers are recognised
/// through /proc).
fn collect_spans(
    session: &mut TracedSession,
    count: usize,
    ownership: &mut Ownership,
) -> Collected {
    let _ = session.receiver.wait_for(SPAN_TIMEOUT, |spans| {
        spans.iter().filter(|s| ownership.owns(s)).count() >= count
    });
    // Anything late or duplicated has been delivered once the agent has caught up.
    let page = session.agent().wait_settled();
    // How links were made and what waited, for a failure's message (libtest shows it then).
    let linking: Vec<&str> = page
        .lines()
        .filter(|l| {
            [
                "tracer_parent_links",
                "tracer_root_spans",
                "tracer_reorder",
                "tracer_pair_",
            ]
            .iter()
            .any(|prefix| l.starts_with(prefix))
        })
        .collect();
    println!("agent link counters:\n{}", linking.join("\n"));
    let exit = session.stop_agent();
    exit.assert_success();
    let (spans, foreign): (Vec<ObservedSpan>, Vec<ObservedSpan>) = session
        .receiver
        .spans()
        .into_iter()
        .partition(|s| ownership.owns(s));
    if !foreign.is_empty() {
        println!(
            "ignoring {} span(s) of processes this test did not start:\n{}",
            foreign.len(),
            describe(&foreign)
        );
    }
    Collected {
        spans,
        foreign,
        agent_log: exit.stderr,
    }
}

/// The spans of a load run and what they should cover.
struct LoadRun {
    spans: Vec<ObservedSpan>,
    /// Requests sent (ids 0..requests).
    requests: u32,
    hub_port: u16,
    backend_ports: [u16; BACKENDS],
    /// Spans of processes this test did not start (a port-filter mistake of the agent).
    foreign: usize,
    /// The agent's stderr, for failure messages.
    agent_log: String,
}

/// Sends each load phase in turn through a `kind` hub (request ids consecutive across phases)
/// and returns every span of the run.
fn load_run(kind: HubKind, phases: &[LoadPhase]) -> LoadRun {
    let topology = Topology::start(kind);
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &topology.ports());
    let mut requests = 0;
    let mut clients = Vec::new();
    for phase in phases {
        clients.push(drive(&topology, requests, *phase));
        requests += phase.requests;
    }
    let mut ownership = Ownership::new(&topology, clients);
    let collected = collect_spans(
        &mut session,
        requests as usize * SPANS_PER_REQUEST,
        &mut ownership,
    );
    LoadRun {
        spans: collected.spans,
        foreign: collected.foreign.len(),
        agent_log: collected.agent_log,
        requests,
        hub_port: topology.hub_port,
        backend_ports: topology.backend_ports(),
    }
}

/// Asserts every span of the run belongs to one of its requests and that each request has
/// exactly one span per (kind, port): nothing missing, nothing duplicated.
#[track_caller]
fn assert_all_spans_present(run: &LoadRun) {
    let grouped = group_by_request(&run.spans);
    assert!(
        grouped.without_id.is_empty(),
        "spans without a request id:\n{}",
        describe(grouped.without_id.iter().copied())
    );
    let mut problems = Vec::new();
    for id in 0..run.requests {
        let of_request = grouped.by_id.get(&id).map_or(&[][..], Vec::as_slice);
        for port in std::iter::once(run.hub_port).chain(run.backend_ports) {
            for kind in [ObservedKind::Client, ObservedKind::Server] {
                let found = of_kind_on_port(of_request, kind, port).len();
                if found != 1 {
                    problems.push(format!(
                        "request {id}: {found} {kind:?} spans on port {port}"
                    ));
                }
            }
        }
    }
    let unknown: Vec<u32> = grouped
        .by_id
        .keys()
        .copied()
        .filter(|id| *id >= run.requests)
        .collect();
    if !problems.is_empty() || !unknown.is_empty() {
        panic!(
            "{} of {} spans received from our processes (plus {} of other processes); expected \
             one span per request, kind and port:\n  {}\nspans of unknown requests: {unknown:?}\n\
             --- agent stderr ---\n{}",
            run.spans.len(),
            run.requests as usize * SPANS_PER_REQUEST,
            run.foreign,
            problems.join("\n  "),
            run.agent_log
        );
    }
}

/// Share in percent.
fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

#[test]
fn one_request_through_the_thread_hub_is_one_connected_trace() {
    let topology = Topology::start(HubKind::Threads);
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &topology.ports());
    let run = curl(&[&topology.fanout_url(7)]);
    assert_eq!(run.status, 200, "{}", topology.report());
    let mut ownership = Ownership::new(&topology, [run.pid]);
    let spans = collect_spans(&mut session, SPANS_PER_REQUEST, &mut ownership).spans;

    let all: Vec<&ObservedSpan> = spans.iter().collect();
    if let Err(defect) = check_chain(&all, topology.hub_port, topology.backend_ports()) {
        panic!(
            "not the expected chain: {defect}\nspans:\n{}\n{}",
            describe(&spans),
            topology.report()
        );
    }
    let trace_ids: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), 1, "one trace:\n{}", describe(&spans));
    assert!(
        spans.iter().all(|s| request_id(s) == Some(7)),
        "every span names id=7:\n{}",
        describe(&spans)
    );

    // Who is who: the root is curl's, the middle the hub's, the leaves the backends'.
    let root = the_only(
        client_spans(&spans, topology.hub_port),
        "curl's CLIENT span",
        &spans,
    );
    assert_eq!(root.service_name(), Some("curl"), "{}", root.summary());
    assert_eq!(root.resource_int("process.pid"), Some(i64::from(run.pid)));
    let hub_server = the_only(
        server_spans(&spans, topology.hub_port),
        "hub SERVER span",
        &spans,
    );
    assert_eq!(hub_server.service_name(), Some(HUB_SERVICE));
    assert_eq!(hub_server.attr_str("url.path"), Some("/fanout"));
    let services = ["linking-backend-a", "linking-backend-b", "nginx"];
    for (port, service) in topology.backend_ports().into_iter().zip(services) {
        let call = the_only(client_spans(&spans, port), "hub CLIENT span", &spans);
        assert_eq!(call.service_name(), Some(HUB_SERVICE), "{}", call.summary());
        let served = the_only(server_spans(&spans, port), "backend SERVER span", &spans);
        assert_eq!(served.service_name(), Some(service), "{}", served.summary());
        // The backend call happened while the hub served the request.
        assert!(
            call.start_unix_ns >= hub_server.start_unix_ns
                && call.end_unix_ns <= hub_server.end_unix_ns,
            "hub CLIENT span outside its SERVER span:\n  {}\n  {}",
            call.summary(),
            hub_server.summary()
        );
    }
}

#[test]
fn concurrent_requests_through_the_thread_hub_are_each_one_complete_trace() {
    let run = load_run(HubKind::Threads, &[CONCURRENT_LOAD]);
    let spans = &run.spans;
    let grouped = group_by_request(spans);
    let defects: BTreeMap<u32, String> = (0..run.requests)
        .filter_map(|id| {
            let of_request = grouped.by_id.get(&id).map_or(&[][..], Vec::as_slice);
            check_chain(of_request, run.hub_port, run.backend_ports)
                .err()
                .map(|defect| (id, defect))
        })
        .collect();
    let complete = run.requests as usize - defects.len();
    println!(
        "thread hub, {CONCURRENT_LOAD:?}: {complete}/{} requests are one complete trace ({:.1}%)",
        run.requests,
        percent(complete, run.requests as usize)
    );

    let mixed = mixed_traces(spans);
    assert!(
        mixed.is_empty(),
        "traces mixing requests (trace -> request ids): {mixed:?}\n{}",
        describe(spans)
    );
    assert_all_spans_present(&run);
    if let Some(first) = defects.keys().next() {
        panic!(
            "{complete}/{} complete traces; defects per request id: {defects:#?}\n\
             spans of request {first}:\n{}",
            run.requests,
            describe(grouped.by_id.get(first).into_iter().flatten().copied())
        );
    }
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), run.requests as usize, "one trace per request");
}

#[test]
fn concurrent_requests_through_the_asyncio_hub_never_link_two_requests() {
    let run = load_run(HubKind::Asyncio, &ASYNCIO_LOAD);
    let spans = &run.spans;
    assert_all_spans_present(&run);

    let wrong = wrong_links(spans);
    let dangling = dangling_parents(spans);
    let mixed = mixed_traces(spans);
    let grouped = group_by_request(spans);
    let mut first_id = 0;
    for phase in ASYNCIO_LOAD {
        let ids = first_id..first_id + phase.requests;
        first_id = ids.end;
        let of_phase: Vec<&ObservedSpan> = ids
            .clone()
            .filter_map(|id| grouped.by_id.get(&id))
            .flatten()
            .copied()
            .collect();
        let hub_calls: Vec<&ObservedSpan> = run
            .backend_ports
            .iter()
            .flat_map(|port| of_kind_on_port(&of_phase, ObservedKind::Client, *port))
            .collect();
        let linked_calls = hub_calls
            .iter()
            .filter(|s| s.parent_span_id.is_some())
            .count();
        let linked_spans = of_phase
            .iter()
            .filter(|s| s.parent_span_id.is_some())
            .count();
        let complete = ids
            .clone()
            .filter(|id| {
                grouped.by_id.get(id).is_some_and(|of_request| {
                    check_chain(of_request, run.hub_port, run.backend_ports).is_ok()
                })
            })
            .count();
        println!(
            "asyncio hub, {phase:?}: {linked_calls}/{} hub CLIENT spans linked ({:.1}%), \
             {linked_spans}/{} spans with a parent ({:.1}%), {complete}/{} complete traces",
            hub_calls.len(),
            percent(linked_calls, hub_calls.len()),
            of_phase.len(),
            percent(linked_spans, of_phase.len()),
            phase.requests,
        );
        if phase.threads == 1 {
            // One request at a time: the loop's thread serves exactly one open request whenever
            // it calls a backend, so every call is linked.
            assert_eq!(
                complete, phase.requests as usize,
                "sequential requests through the event loop are complete traces"
            );
        }
    }
    println!("asyncio hub: {} wrong links", wrong.len());

    let wrong_report: Vec<String> = wrong
        .iter()
        .map(|(child, parent)| {
            format!(
                "  child  {}\n  parent {}",
                child.summary(),
                parent.summary()
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} parent links join two different requests:\n{}",
        wrong.len(),
        wrong_report.join("\n")
    );
    assert!(
        dangling.is_empty(),
        "spans whose parent is not among the run's spans:\n{}",
        describe(dangling.iter().copied())
    );
    assert!(mixed.is_empty(), "traces mixing requests: {mixed:?}");
    // The links that need no thread guess are always there: client -> hub SERVER and hub CLIENT
    // -> backend SERVER are connection pairs.
    for (id, of_request) in &grouped.by_id {
        if let Err(defect) = check_pairs(of_request, run.hub_port, run.backend_ports) {
            panic!(
                "request {id}: connection pair missing: {defect}\n{}",
                describe(of_request.iter().copied())
            );
        }
    }
}

/// The connection-pair links of one request: hub SERVER under the client's CLIENT span, each
/// backend SERVER under the hub's CLIENT span to it.
fn check_pairs(
    spans: &[&ObservedSpan],
    hub_port: u16,
    backend_ports: [u16; BACKENDS],
) -> Result<(), String> {
    let root = exactly_one(
        of_kind_on_port(spans, ObservedKind::Client, hub_port),
        "client CLIENT spans",
    )?;
    let hub_server = exactly_one(
        of_kind_on_port(spans, ObservedKind::Server, hub_port),
        "hub SERVER spans",
    )?;
    child_of(hub_server, root, "hub SERVER span")?;
    for port in backend_ports {
        let call = exactly_one(
            of_kind_on_port(spans, ObservedKind::Client, port),
            "hub CLIENT spans",
        )?;
        let served = exactly_one(
            of_kind_on_port(spans, ObservedKind::Server, port),
            "backend SERVER spans",
        )?;
        child_of(served, call, &format!("SERVER span on backend {port}"))?;
    }
    Ok(())
}

#[test]
fn traceparent_from_an_instrumented_client_wins_over_the_connection_pair() {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";
    let topology = Topology::start(HubKind::Threads);
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &topology.ports());
    let header = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    let run = curl(&["-H", &header, &topology.fanout_url(3)]);
    assert_eq!(run.status, 200, "{}", topology.report());
    let mut ownership = Ownership::new(&topology, [run.pid]);
    let spans = collect_spans(&mut session, SPANS_PER_REQUEST, &mut ownership).spans;
    assert_eq!(
        spans.len(),
        SPANS_PER_REQUEST,
        "spans:\n{}",
        describe(&spans)
    );

    let client = the_only(
        client_spans(&spans, topology.hub_port),
        "curl's CLIENT span",
        &spans,
    );
    let hub_server = the_only(
        server_spans(&spans, topology.hub_port),
        "hub SERVER span",
        &spans,
    );
    for span in [client, hub_server] {
        assert_eq!(
            span.trace_id,
            TRACE_ID,
            "trace from the header: {}",
            span.summary()
        );
        assert_eq!(
            span.parent_span_id.as_deref(),
            Some(PARENT_ID),
            "parent from the header: {}",
            span.summary()
        );
        assert_ne!(span.span_id, PARENT_ID, "own span id: {}", span.summary());
    }
    assert_ne!(
        hub_server.parent_span_id.as_deref(),
        Some(client.span_id.as_str()),
        "the header wins over the connection pair"
    );
    let all: Vec<&ObservedSpan> = spans.iter().collect();
    if let Err(defect) = check_fanout(&all, hub_server, topology.backend_ports()) {
        panic!(
            "fan-out under the adopted SERVER span: {defect}\n{}",
            describe(&spans)
        );
    }
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE_ID),
        "every span continues the client's trace:\n{}",
        describe(&spans)
    );
}

/// The checks above on hand-made spans: they catch what they claim to catch.
mod checks {
    use super::*;
    use tracer_tests::{AttrValue, ObservedStatus};

    const HUB: u16 = 8000;
    const BACKEND_PORTS: [u16; BACKENDS] = [9001, 9002, 9003];

    fn span(
        kind: ObservedKind,
        id: u32,
        port: u16,
        name: &str,
        parent: Option<&str>,
    ) -> ObservedSpan {
        let mut attributes = BTreeMap::new();
        attributes.insert("server.port".to_owned(), AttrValue::from(port));
        match kind {
            ObservedKind::Server => attributes.insert(
                "url.query".to_owned(),
                AttrValue::from(format!("ms=5&id={id}")),
            ),
            _ => attributes.insert(
                "url.full".to_owned(),
                AttrValue::from(format!("http://127.0.0.1:{port}/x?id={id}")),
            ),
        };
        ObservedSpan {
            trace_id: format!("{id:032x}"),
            span_id: name.to_owned(),
            parent_span_id: parent.map(str::to_owned),
            trace_state: None,
            name: "GET".to_owned(),
            kind,
            start_unix_ns: 1,
            end_unix_ns: 2,
            status: ObservedStatus::Unset,
            status_description: String::new(),
            attributes,
            resource: BTreeMap::new(),
        }
    }

    /// The complete chain of request `id`; span ids are `{id}-{role}`.
    fn chain(id: u32) -> Vec<ObservedSpan> {
        let name = |role: &str| format!("{id}-{role}");
        let mut spans = vec![
            span(ObservedKind::Client, id, HUB, &name("root"), None),
            span(
                ObservedKind::Server,
                id,
                HUB,
                &name("hub"),
                Some(&name("root")),
            ),
        ];
        for port in BACKEND_PORTS {
            let call = name(&format!("call{port}"));
            spans.push(span(
                ObservedKind::Client,
                id,
                port,
                &call,
                Some(&name("hub")),
            ));
            spans.push(span(
                ObservedKind::Server,
                id,
                port,
                &name(&format!("served{port}")),
                Some(&call),
            ));
        }
        spans
    }

    #[test]
    fn complete_chains_pass_every_check() {
        let spans: Vec<ObservedSpan> = chain(1).into_iter().chain(chain(2)).collect();
        let grouped = group_by_request(&spans);
        assert_eq!(grouped.by_id.len(), 2);
        for of_request in grouped.by_id.values() {
            assert_eq!(check_chain(of_request, HUB, BACKEND_PORTS), Ok(()));
            assert_eq!(check_pairs(of_request, HUB, BACKEND_PORTS), Ok(()));
        }
        assert!(wrong_links(&spans).is_empty());
        assert!(dangling_parents(&spans).is_empty());
        assert!(mixed_traces(&spans).is_empty());
    }

    #[test]
    fn a_link_to_another_request_is_caught() {
        let mut spans: Vec<ObservedSpan> = chain(1).into_iter().chain(chain(2)).collect();
        // Request 2's call to the first backend adopted request 1's hub SERVER span.
        let stolen = spans
            .iter_mut()
            .find(|s| s.span_id == "2-call9001")
            .map(|s| {
                s.parent_span_id = Some("1-hub".to_owned());
                s.trace_id = format!("{:032x}", 1);
            });
        assert!(stolen.is_some());
        let wrong = wrong_links(&spans);
        assert_eq!(wrong.len(), 1);
        assert_eq!(
            (wrong[0].0.span_id.as_str(), wrong[0].1.span_id.as_str()),
            ("2-call9001", "1-hub")
        );
        let mixed = mixed_traces(&spans);
        assert_eq!(
            mixed.len(),
            1,
            "trace 1 now holds a span of request 2: {mixed:?}"
        );
        let grouped = group_by_request(&spans);
        let defect = grouped
            .by_id
            .get(&2)
            .map(|r| check_chain(r, HUB, BACKEND_PORTS));
        assert!(
            matches!(defect, Some(Err(ref d)) if d.starts_with("hub CLIENT span to 9001")),
            "{defect:?}"
        );
    }

    #[test]
    fn missing_and_unlinked_spans_make_a_chain_incomplete() {
        let mut spans = chain(3);
        spans.retain(|s| s.span_id != "3-served9003");
        let all: Vec<&ObservedSpan> = spans.iter().collect();
        assert!(check_chain(&all, HUB, BACKEND_PORTS).is_err());

        let mut spans = chain(4);
        for s in spans.iter_mut().filter(|s| s.span_id == "4-call9002") {
            s.parent_span_id = None;
        }
        let all: Vec<&ObservedSpan> = spans.iter().collect();
        assert!(
            check_chain(&all, HUB, BACKEND_PORTS).is_err(),
            "an unlinked call"
        );
        assert_eq!(
            check_pairs(&all, HUB, BACKEND_PORTS),
            Ok(()),
            "pairs need no thread link"
        );
        assert!(
            wrong_links(&spans).is_empty(),
            "a missing link is not a wrong one"
        );

        spans.retain(|s| s.span_id != "4-hub");
        assert_eq!(
            dangling_parents(&spans).len(),
            2,
            "the two linked calls lost their parent"
        );
    }
}

/// The kernel records a write when it returns; a client may return from its write long after
/// the server read the request (preempted on a busy machine, or, as here deterministically, a
/// body larger than the socket buffers that the server reads only after a pause). The server's
/// request then reaches the agent first: it waits for the client's (the client end is traced,
/// its request not yet seen), and the pair links. Before the fix the SERVER span was a root.
#[test]
fn a_client_write_recorded_after_the_server_read_still_pairs() {
    const HOLD_MS: u32 = 300;
    let port = free_port();
    let mut command = Command::new(python());
    command
        .arg("-u")
        .arg(peer_script("late_writer.py"))
        .args(["serve", "--port", &port.to_string()])
        .args(["--hold-ms", &HOLD_MS.to_string()])
        .env("OTEL_SERVICE_NAME", "linking-late-server");
    let server = ChildGuard::spawn("late_writer.py serve", command);
    if !wait_for_port(port, PEER_START_TIMEOUT) {
        panic!(
            "late_writer.py did not listen on {port}\n{}",
            server.output_report()
        );
    }
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let mut command = Command::new(python());
    // The body is four times what the two small socket buffers hold: the send blocks until the
    // server reads after its pause, and the rest is quick even emulated.
    // It stays alive until this test is done (killed by pid when `client` drops): its /proc is
    // there whenever a starved agent reads it.
    command.arg("-u").arg(peer_script("late_writer.py")).args([
        "send",
        "--port",
        &port.to_string(),
        "--body",
        "65536",
        "--hold-open",
    ]);
    let client = ChildGuard::spawn("late_writer.py send", command);
    let report: serde_json::Value = match client
        .stdout()
        .wait_for_line(DRIVE_TIMEOUT, |l| l.starts_with('{'))
    {
        tracer_tests::process::LineWait::Found(line) => serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad report {line:?}: {e}\n{}", client.output_report())),
        _ => panic!("no report\n{}", client.output_report()),
    };
    assert_eq!(
        report["status"],
        200,
        "{report}\n{}",
        server.output_report()
    );
    // The precondition of the test: the client's send() returned only after the server's
    // pause, so its write record came that much after the server's read of the head.
    let send_ms = report["send_ms"].as_f64().unwrap_or(0.0);
    assert!(
        send_ms >= f64::from(HOLD_MS) * 0.9,
        "the client's send returned after {send_ms} ms, before the server's pause ended"
    );
    let spans = session.wait_for("the SERVER and CLIENT span", |spans| {
        server_spans(spans, port).len() + client_spans(spans, port).len() >= 2
    });
    let page = session.agent().wait_settled();
    let waits = |outcome: &str| {
        tracer_tests::metrics_client::sample(
            &page,
            "tracer_reorder_client_waits_total",
            &format!("outcome=\"{outcome}\""),
        )
        .unwrap_or(-1.0)
    };
    let server_span = the_only(server_spans(&spans, port), "SERVER span", &spans);
    let client_span = the_only(client_spans(&spans, port), "CLIENT span", &spans);
    assert_eq!(
        server_span.parent_span_id.as_deref(),
        Some(client_span.span_id.as_str()),
        "the SERVER span is the CLIENT span's child:\n{}",
        describe(&spans)
    );
    assert_eq!(server_span.trace_id, client_span.trace_id);
    // It waited once, unless the agent itself was stalled long enough to read both records
    // at once (then nothing needed to wait); never until the bound.
    assert!(
        waits("paired_in_time") <= 1.0 && waits("expired") == 0.0,
        "client waits: {} in time, {} expired",
        waits("paired_in_time"),
        waits("expired")
    );
    session.finish();
}

/// The SERVER span on `port` for `query` and the CLIENT span of `url`, each the only one.
fn server_and_client<'a>(
    spans: &'a [ObservedSpan],
    port: u16,
    query: &str,
    url: &str,
) -> (&'a ObservedSpan, &'a ObservedSpan) {
    let server = the_only(
        server_spans(spans, port)
            .into_iter()
            .filter(|s| s.attr_str("url.query") == Some(query))
            .collect(),
        &format!("SERVER span of {query}"),
        spans,
    );
    let client = the_only(
        client_spans(spans, port)
            .into_iter()
            .filter(|s| s.attr_str("url.full") == Some(url))
            .collect(),
        &format!("CLIENT span of {url}"),
        spans,
    );
    (server, client)
}

/// A `/metrics` sample, or -1 when the series is missing (never equal to an expected count).
fn metric(page: &str, name: &str, labels: &str) -> f64 {
    tracer_tests::metrics_client::sample(page, name, labels).unwrap_or(-1.0)
}

/// Loopback tuples pair only within one network namespace. A curl whose whole life passes while
/// the agent is not scheduled (stopped here; starved of CPU on a busy host, or behind on unread
/// records) is gone before the agent reads its `/proc`; the kernel names the connection's
/// namespace in its open record, so the pair still links. Before the fix each such SERVER span
/// was left unlinked (counted `loopback_netns_unknown`).
#[test]
fn a_client_that_exits_right_after_its_request_still_pairs() {
    const CLIENTS: usize = 3;
    let server = PythonServer::start(free_port(), "linking-short-lived-server");
    let port = server.port();
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let mut runs = Vec::new();
    for n in 0..CLIENTS {
        let query = format!("short-lived={n}");
        let url = local_url(port, &format!("/ok?{query}"));
        let stopped = Stopped::process(session.agent().pid());
        let run = curl(&[&url]);
        drop(stopped);
        assert_eq!(run.status, 200, "{}", server.output_report());
        runs.push((query, url, run.pid));
    }
    session.wait_for("a SERVER and a CLIENT span per curl", |spans| {
        server_spans(spans, port).len() >= CLIENTS && client_spans(spans, port).len() >= CLIENTS
    });
    let page = session.agent().wait_settled();
    let spans = session.finish();
    for (query, url, pid) in &runs {
        let (server_span, client_span) = server_and_client(&spans, port, query, url);
        assert_eq!(
            client_span.resource_int("process.pid"),
            Some(i64::from(*pid))
        );
        assert_eq!(
            server_span.parent_span_id.as_deref(),
            Some(client_span.span_id.as_str()),
            "the SERVER span of {query} is its curl's CLIENT span's child:\n{}",
            describe(&spans)
        );
    }
    assert_eq!(
        metric(
            &page,
            "tracer_parent_links_skipped_total",
            "reason=\"loopback_netns_unknown\""
        ),
        0.0
    );
    let from_kernel = metric(&page, "tracer_connections_netns_total", "source=\"kernel\"");
    assert!(
        from_kernel >= (2 * CLIENTS) as f64,
        "both ends of each connection named by the kernel: {from_kernel}"
    );
}

/// Two network namespaces each hold a server on 127.0.0.1 with the same port and a curl from
/// the same local port: the two connections have the very same loopback 4-tuple. Each SERVER
/// span is its own namespace's curl's child, never the other's (a wrong link is worse than a
/// missing one); the kernel names both namespaces, so both link.
#[test]
fn identical_loopback_tuples_in_two_namespaces_never_pair_across() {
    let port = free_port();
    let client_port = free_port();
    let namespaces = [
        LoopbackNamespace::create("link-a"),
        LoopbackNamespace::create("link-b"),
    ];
    let mut servers = Vec::new();
    for (namespace, tag) in namespaces.iter().zip(["a", "b"]) {
        let mut command = namespace.command(python());
        command
            .arg("-u")
            .arg(peer_script("http_server.py"))
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .env("OTEL_SERVICE_NAME", format!("linking-ns-{tag}"));
        let server = ChildGuard::spawn("http_server.py in a namespace", command);
        if !matches!(
            server
                .stdout()
                .wait_for_line(PEER_START_TIMEOUT, |l| l.starts_with("listening")),
            tracer_tests::process::LineWait::Found(_)
        ) {
            panic!(
                "the server in namespace {tag} did not listen\n{}",
                server.output_report()
            );
        }
        servers.push(server);
    }
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let mut clients = Vec::new();
    for (namespace, tag) in namespaces.iter().zip(["a", "b"]) {
        let mut command = namespace.command("curl");
        command.args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
        ]);
        command.args(["--local-port", &client_port.to_string()]);
        command.arg(local_url(port, &format!("/ok?ns={tag}")));
        let (status, child) = run_with_timeout("curl in a namespace", command, DRIVE_TIMEOUT);
        assert!(
            status.success(),
            "curl in {tag}: {status}\n{}",
            child.output_report()
        );
        clients.push(child.pid());
    }
    session.wait_for("two SERVER and two CLIENT spans", |spans| {
        server_spans(spans, port).len() >= 2 && client_spans(spans, port).len() >= 2
    });
    let page = session.agent().wait_settled();
    let spans = session.finish();
    assert_eq!(server_spans(&spans, port).len(), 2, "{}", describe(&spans));
    for ((server, client_pid), tag) in servers.iter().zip(&clients).zip(["a", "b"]) {
        let server_span = the_only(
            server_spans(&spans, port)
                .into_iter()
                .filter(|s| s.resource_int("process.pid") == Some(i64::from(server.pid())))
                .collect(),
            &format!("SERVER span in namespace {tag}"),
            &spans,
        );
        assert_eq!(
            server_span.attr_int("client.port"),
            Some(i64::from(client_port))
        );
        let client_span = the_only(
            client_spans(&spans, port)
                .into_iter()
                .filter(|s| s.resource_int("process.pid") == Some(i64::from(*client_pid)))
                .collect(),
            &format!("CLIENT span in namespace {tag}"),
            &spans,
        );
        assert_eq!(
            server_span.parent_span_id.as_deref(),
            Some(client_span.span_id.as_str()),
            "the SERVER span in namespace {tag} is the child of that namespace's curl:\n{}",
            describe(&spans)
        );
    }
    assert_eq!(
        metric(
            &page,
            "tracer_parent_links_skipped_total",
            "reason=\"loopback_netns_unknown\""
        ),
        0.0
    );
}

/// A client that writes a request and exits before reading the answer (as wrk does with the
/// requests in flight when its run ends): the kernel closes its socket at exit, with no close
/// syscall for the probes to see. Its CLIENT span still comes, as `connection_closed`, long before
/// `--request-timeout` (set far beyond the wait here), and it is the parent of the server's span,
/// which otherwise names a parent that is never exported.
#[test]
fn a_client_that_exits_before_reading_its_answer_still_gets_its_client_span() {
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-linking-exit");
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        tracer_tests::AgentConfig::new()
            .ports(&[port])
            .arg("--request-timeout")
            .arg("600"),
    );
    // Writes the request, waits until the answer is in its receive buffer (the server has
    // answered), and leaves without reading it or closing the socket.
    let script = "import os, select, socket, sys\n\
                  s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
                  s.sendall(b'GET /status/200?unread=1 HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n')\n\
                  readable, _, _ = select.select([s], [], [], 20)\n\
                  print('answered' if readable else 'no answer', flush=True)\n\
                  os._exit(0 if readable else 3)\n";
    let mut command = Command::new(python());
    command.args(["-c", script, &port.to_string()]);
    let (status, client) = run_with_timeout("exiting client", command, PEER_START_TIMEOUT);
    assert!(
        status.success(),
        "the server never answered:\n{}",
        client.output_report()
    );
    let is_closed_client = |s: &ObservedSpan| {
        s.kind == ObservedKind::Client
            && s.attr_str("error.type") == Some("connection_closed")
            && s.attr_str("url.full")
                .is_some_and(|u| u.ends_with("/status/200?unread=1"))
    };
    let spans = session.wait_for(
        "the SERVER span and the exited client's CLIENT span",
        |spans| server_spans(spans, port).len() == 1 && spans.iter().any(is_closed_client),
    );
    let server = the_only(server_spans(&spans, port), "SERVER span", &spans);
    assert_eq!(server.attr_int("http.response.status_code"), Some(200));
    let client = the_only(client_spans(&spans, port), "CLIENT span", &spans);
    assert!(is_closed_client(client), "{}", describe(&spans));
    assert_eq!(client.attr_int("http.response.status_code"), None);
    assert_eq!(
        (server.trace_id.as_str(), server.parent_span_id.as_deref()),
        (client.trace_id.as_str(), Some(client.span_id.as_str())),
        "the SERVER span's parent is the exited client's span:\n{}",
        describe(&spans)
    );
    assert!(
        client.end_unix_ns >= server.end_unix_ns,
        "the CLIENT span ends when its connection was found closed, after the answer:\n{}",
        describe(&spans)
    );
    session
        .agent()
        .wait_metrics("a connection closed without a close record", |page| {
            page.lines().any(|l| {
                l.starts_with("tracer_connections_closed_unseen_total ") && !l.ends_with(" 0")
            })
        });
    session.finish();
}
