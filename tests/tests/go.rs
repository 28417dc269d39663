//! Never a wrong link with a runtime that multiplexes requests over OS threads: a real Go
//! net/http hub (goroutines migrate between threads) fans each request out to two Python
//! backends with Go's default keep-alive client. Three rounds of twelve requests at once, each
//! carrying its id to every downstream call, so a parent link between two requests is
//! detectable (the agent before this check made 2 to 11 such links per run). The agent
//! must make no such link (same-thread guesses are off for Go), and keep every same-host
//! connection-pair link (driver CLIENT -> hub SERVER, hub CLIENT -> backend SERVER).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tracer_tests::go_peer::build_go_peer;
use tracer_tests::metrics_client::scrape;
use tracer_tests::peers::PEER_START_TIMEOUT;
use tracer_tests::query::describe;
use tracer_tests::{
    AgentConfig, ChildGuard, ObservedKind, ObservedSpan, OtlpProtocol, PythonServer, SPAN_TIMEOUT,
    TracedSession, free_port, run_with_timeout, wait_for_port,
};

/// Concurrent requests through the hub per round.
const CONCURRENT: u32 = 12;
/// Rounds of concurrent requests (more chances for a wrong guess to show).
const ROUNDS: u32 = 3;
/// Requests in all.
const REQUESTS: u32 = CONCURRENT * ROUNDS;
/// Spans per request: driver CLIENT, hub SERVER, and per backend a hub CLIENT and a backend
/// SERVER.
const SPANS_PER_REQUEST: usize = 2 + 2 * 2;
const HUB_SERVICE: &str = "go-hub";
const DRIVER_SERVICE: &str = "go-driver";

/// The Go peer, built once per test run into the target directory.
fn gohub() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        build_go_peer(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            "gohub",
            "gohub",
            &[],
        )
    })
}

/// The `id` query parameter: from `url.query` on SERVER spans, from `url.full` on CLIENT spans.
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

fn on_port(span: &ObservedSpan, kind: ObservedKind, port: u16) -> bool {
    span.kind == kind && span.attr_int("server.port") == Some(i64::from(port))
}

/// The value of the first sample line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn go_fanout_under_concurrency_has_no_wrong_links_and_keeps_connection_pairs() {
    let gohub = gohub();
    let backend_a = PythonServer::start(free_port(), "go-backend-a");
    let backend_b = PythonServer::start(free_port(), "go-backend-b");
    let backend_ports = [backend_a.port(), backend_b.port()];
    let hub_port = free_port();
    let mut command = Command::new(gohub);
    command
        .args(["serve", "--port", &hub_port.to_string()])
        .args(["--backend", &backend_a.url("/ok")])
        .args(["--backend", &backend_b.url("/slow?ms=15")])
        .env("OTEL_SERVICE_NAME", HUB_SERVICE)
        // As on an 8-core node: more OS threads, each more often holding exactly one request
        // (where a same-thread guess would be taken, and wrong).
        .env("GOMAXPROCS", "8");
    let hub = ChildGuard::spawn("gohub serve", command);
    assert!(
        wait_for_port(hub_port, PEER_START_TIMEOUT),
        "the Go hub did not listen on {hub_port}\n{}",
        hub.output_report()
    );

    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ports = [hub_port, backend_ports[0], backend_ports[1]];
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new()
            .ports(&ports)
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string()),
    );

    for round in 0..ROUNDS {
        let mut drive = Command::new(gohub);
        drive
            .args(["drive", "--port", &hub_port.to_string()])
            .args(["--requests", &CONCURRENT.to_string()])
            .args(["--first-id", &(round * CONCURRENT).to_string()])
            .env("OTEL_SERVICE_NAME", DRIVER_SERVICE);
        let (status, driver) = run_with_timeout("gohub drive", drive, Duration::from_secs(120));
        assert!(
            status.success(),
            "the Go driver failed ({status})\n{}\n{}",
            driver.output_report(),
            hub.output_report()
        );
    }

    let ours = |s: &ObservedSpan| {
        matches!(
            s.service_name(),
            Some(HUB_SERVICE | DRIVER_SERVICE | "go-backend-a" | "go-backend-b")
        )
    };
    let want = REQUESTS as usize * SPANS_PER_REQUEST;
    let _ = session.receiver.wait_for(SPAN_TIMEOUT, |spans| {
        spans.iter().filter(|s| ours(s)).count() >= want
    });
    // The agent refreshes /metrics every second: wait until it has built every span and counted
    // the hub's skipped thread links. Anything late or duplicated is flushed when the agent
    // stops, before the spans are read below.
    let skipped_key = "tracer_parent_links_skipped_total{reason=\"multiplexed_threads\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let text = scrape(metrics_addr);
        let built = metric(&text, "tracer_spans_built_total ").unwrap_or(0.0);
        let skipped = metric(&text, skipped_key).unwrap_or(0.0);
        if built >= want as f64 && skipped >= f64::from(2 * REQUESTS) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's /metrics did not reach {want} spans built and {} skipped thread links \
             within 15 s:\n{text}",
            2 * REQUESTS
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let exit = session.stop_agent();
    exit.assert_success();
    let spans: Vec<ObservedSpan> = session.receiver.spans().into_iter().filter(ours).collect();

    // 1. No parent link joins two requests.
    let by_id: HashMap<&str, &ObservedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let wrong: Vec<String> = spans
        .iter()
        .filter_map(|child| {
            let parent = by_id.get(child.parent_span_id.as_deref()?)?;
            (request_id(child) != request_id(parent))
                .then(|| format!("  {}\n    -> parent {}", child.summary(), parent.summary()))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong parent link(s) among {} spans:\n{}\n--- agent stderr ---\n{}",
        wrong.len(),
        spans.len(),
        wrong.join("\n"),
        exit.stderr
    );

    // 2. Every request is complete, and every connection-pair link is there.
    let mut grouped: BTreeMap<u32, Vec<&ObservedSpan>> = BTreeMap::new();
    for span in &spans {
        grouped
            .entry(request_id(span).unwrap_or(u32::MAX))
            .or_default()
            .push(span);
    }
    let mut problems = Vec::new();
    for id in 0..REQUESTS {
        let of = grouped.get(&id).map_or(&[][..], Vec::as_slice);
        let one = |kind, port| {
            let found: Vec<&&ObservedSpan> = of.iter().filter(|s| on_port(s, kind, port)).collect();
            match found.as_slice() {
                [s] => Ok(**s),
                _ => Err(format!(
                    "request {id}: {} {kind:?} spans on {port}",
                    found.len()
                )),
            }
        };
        let pairs = std::iter::once(hub_port).chain(backend_ports).map(|port| {
            let client = one(ObservedKind::Client, port)?;
            let server = one(ObservedKind::Server, port)?;
            if server.parent_span_id.as_deref() != Some(client.span_id.as_str())
                || server.trace_id != client.trace_id
            {
                return Err(format!(
                    "request {id}: SERVER span on {port} is not the child of its CLIENT span\n  {}\n  {}",
                    server.summary(),
                    client.summary()
                ));
            }
            Ok(())
        });
        problems.extend(pairs.filter_map(Result::err));
    }
    if let Some(stray) = grouped.get(&u32::MAX) {
        problems.push(format!(
            "spans without a request id:\n{}",
            describe(stray.iter().copied())
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\nall spans:\n{}\n--- agent stderr ---\n{}",
        problems.join("\n"),
        describe(&spans),
        exit.stderr
    );

    // 3. The hub was recognised as Go, and its skipped thread links were counted.
    let skipped = metric(&metrics, skipped_key);
    assert!(
        skipped.is_some_and(|n| n >= f64::from(2 * REQUESTS)),
        "expected at least {} skipped thread links (the hub's CLIENT calls), got {skipped:?}\n{metrics}",
        2 * REQUESTS
    );
    let linked_by_thread = spans
        .iter()
        .filter(|s| s.kind == ObservedKind::Client && s.parent_span_id.is_some())
        .filter(|s| {
            backend_ports
                .iter()
                .any(|p| on_port(s, ObservedKind::Client, *p))
        })
        .count();
    println!(
        "Go hub: {} spans, 0 wrong links, {linked_by_thread} hub CLIENT spans with a parent, \
         {skipped:?} thread links skipped",
        spans.len()
    );
    drop(hub);
}
