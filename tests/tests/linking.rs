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

use tracer_tests::peers::{PEER_START_TIMEOUT, peer_script, python};
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
/// Requests and client threads of the concurrent runs.
const CONCURRENT_REQUESTS: u32 = 40;
const CLIENT_THREADS: u32 = 8;
/// How long one `hub.py drive` run may take.
const DRIVE_TIMEOUT: Duration = Duration::from_secs(180);
/// What the slow Python backend sleeps per call, so that hub requests overlap under load.
const SLOW_BACKEND_MS: u32 = 20;

const HUB_SERVICE: &str = "linking-hub";
const CLIENT_SERVICE: &str = "linking-client";

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

/// Runs `hub.py drive`: `requests` GETs `/fanout?id=0..` from `threads` threads at once, one
/// connection each; panics unless every request got 200 with a body naming its own id. Returns
/// the client's pid.
fn drive(topology: &Topology, requests: u32, threads: u32) -> u32 {
    let mut command = Command::new(python());
    command
        .arg(peer_script("hub.py"))
        .arg("drive")
        .args(["--port", &topology.hub_port.to_string()])
        .args(["--requests", &requests.to_string()])
        .args(["--threads", &threads.to_string()])
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

/// Waits until `count` spans arrived (or `SPAN_TIMEOUT` passed: the checks then say what is
/// missing), stops the agent and returns every span.
fn collect_spans(session: &mut TracedSession, count: usize) -> Vec<ObservedSpan> {
    let _ = session
        .receiver
        .wait_for(SPAN_TIMEOUT, |spans| spans.len() >= count);
    // Anything late or duplicated would arrive within a few export intervals.
    std::thread::sleep(Duration::from_millis(600));
    session.finish()
}

/// Runs the concurrent load through `kind` hub and returns the spans and the topology's ports.
fn concurrent_run(kind: HubKind) -> (Vec<ObservedSpan>, u16, [u16; BACKENDS]) {
    let topology = Topology::start(kind);
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &topology.ports());
    drive(&topology, CONCURRENT_REQUESTS, CLIENT_THREADS);
    let expected = CONCURRENT_REQUESTS as usize * SPANS_PER_REQUEST;
    let spans = collect_spans(&mut session, expected);
    (spans, topology.hub_port, topology.backend_ports())
}

/// Asserts every span of the run belongs to one of the driven requests and none is missing or
/// duplicated per (kind, port).
#[track_caller]
fn assert_all_spans_present(spans: &[ObservedSpan], hub_port: u16, backend_ports: [u16; BACKENDS]) {
    let grouped = group_by_request(spans);
    assert!(
        grouped.without_id.is_empty(),
        "spans without a request id:\n{}",
        describe(grouped.without_id.iter().copied())
    );
    let ids: Vec<u32> = grouped.by_id.keys().copied().collect();
    assert_eq!(
        ids,
        (0..CONCURRENT_REQUESTS).collect::<Vec<_>>(),
        "request ids seen in spans"
    );
    let expect_one = |port: u16, kind: ObservedKind| {
        let per_port = spans
            .iter()
            .filter(|s| s.kind == kind && s.attr_int("server.port") == Some(i64::from(port)))
            .count();
        assert_eq!(
            per_port, CONCURRENT_REQUESTS as usize,
            "{kind:?} spans with server.port {port} (one per request)"
        );
    };
    for port in std::iter::once(hub_port).chain(backend_ports) {
        expect_one(port, ObservedKind::Client);
        expect_one(port, ObservedKind::Server);
    }
}

#[test]
fn one_request_through_the_thread_hub_is_one_connected_trace() {
    let topology = Topology::start(HubKind::Threads);
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &topology.ports());
    let run = curl(&[&topology.fanout_url(7)]);
    assert_eq!(run.status, 200, "{}", topology.report());
    let spans = collect_spans(&mut session, SPANS_PER_REQUEST);

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
    let (spans, hub_port, backend_ports) = concurrent_run(HubKind::Threads);
    let grouped = group_by_request(&spans);
    let defects: BTreeMap<u32, String> = grouped
        .by_id
        .iter()
        .filter_map(|(id, of_request)| {
            check_chain(of_request, hub_port, backend_ports)
                .err()
                .map(|defect| (*id, defect))
        })
        .collect();
    let complete = (0..CONCURRENT_REQUESTS)
        .filter(|id| grouped.by_id.contains_key(id) && !defects.contains_key(id))
        .count();
    println!(
        "thread hub: {complete}/{CONCURRENT_REQUESTS} requests are one complete trace ({:.1}%)",
        100.0 * complete as f64 / f64::from(CONCURRENT_REQUESTS)
    );

    let mixed = mixed_traces(&spans);
    assert!(
        mixed.is_empty(),
        "traces mixing requests (trace -> request ids): {mixed:?}\n{}",
        describe(&spans)
    );
    assert_all_spans_present(&spans, hub_port, backend_ports);
    if !defects.is_empty() {
        let first = defects.keys().next().copied().unwrap_or_default();
        panic!(
            "{complete}/{CONCURRENT_REQUESTS} complete traces; defects per request id: {defects:#?}\n\
             spans of request {first}:\n{}",
            describe(grouped.by_id.get(&first).into_iter().flatten().copied())
        );
    }
    // Every request is exactly one trace of its own.
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces.len(),
        CONCURRENT_REQUESTS as usize,
        "one trace per request"
    );
}

#[test]
fn concurrent_requests_through_the_asyncio_hub_never_link_two_requests() {
    let (spans, hub_port, backend_ports) = concurrent_run(HubKind::Asyncio);
    assert_all_spans_present(&spans, hub_port, backend_ports);

    let wrong = wrong_links(&spans);
    let dangling = dangling_parents(&spans);
    let mixed = mixed_traces(&spans);
    let hub_calls: Vec<&ObservedSpan> = spans
        .iter()
        .filter(|s| {
            s.kind == ObservedKind::Client
                && backend_ports
                    .iter()
                    .any(|p| s.attr_int("server.port") == Some(i64::from(*p)))
        })
        .collect();
    let linked_calls = hub_calls
        .iter()
        .filter(|s| s.parent_span_id.is_some())
        .count();
    let linked_spans = spans.iter().filter(|s| s.parent_span_id.is_some()).count();
    let grouped = group_by_request(&spans);
    let complete = grouped
        .by_id
        .values()
        .filter(|of_request| check_chain(of_request, hub_port, backend_ports).is_ok())
        .count();
    println!(
        "asyncio hub: {linked_calls}/{} hub CLIENT spans linked to their SERVER span; \
         {linked_spans}/{} spans with a parent; {complete}/{CONCURRENT_REQUESTS} complete traces; \
         {} wrong links",
        hub_calls.len(),
        spans.len(),
        wrong.len()
    );

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
    // The links that need no thread guess are always there: client → hub SERVER and hub CLIENT
    // → backend SERVER are connection pairs.
    for (id, of_request) in &grouped.by_id {
        let hub_server = exactly_one(
            of_kind_on_port(of_request, ObservedKind::Server, hub_port),
            "hub SERVER spans",
        );
        let root = exactly_one(
            of_kind_on_port(of_request, ObservedKind::Client, hub_port),
            "client CLIENT spans",
        );
        let paired = match (hub_server, root) {
            (Ok(server), Ok(root)) => child_of(server, root, "hub SERVER span"),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let backends_paired = backend_ports.iter().try_for_each(|port| {
            let call = exactly_one(
                of_kind_on_port(of_request, ObservedKind::Client, *port),
                "hub CLIENT spans",
            )?;
            let served = exactly_one(
                of_kind_on_port(of_request, ObservedKind::Server, *port),
                "backend SERVER spans",
            )?;
            child_of(served, call, &format!("SERVER span on backend {port}"))
        });
        if let Err(defect) = paired.and(backends_paired) {
            panic!(
                "request {id}: connection pair missing: {defect}\n{}",
                describe(of_request.iter().copied())
            );
        }
    }
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
    let spans = collect_spans(&mut session, SPANS_PER_REQUEST);
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
