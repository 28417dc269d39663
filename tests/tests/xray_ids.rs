//! Trace ids AWS X-Ray accepts, through real probes: with `--id-generator xray` (or
//! `TRACER_ID_GENERATOR=xray`, the DaemonSet's form) every trace the tracer starts has a trace id
//! whose first 8 hex digits are its start in Unix seconds; header-less children share it; ids that
//! arrive in headers are kept. Without the option ids are random.

use tracer_tests::query::{at_least, client_spans, server_spans, the_only};
use tracer_tests::{
    AgentConfig, ObservedSpan, OtlpProtocol, PythonServer, TracedSession, curl, free_port,
};

/// Requests sent per agent (each a new trace).
const REQUESTS: usize = 3;

/// Runs `REQUESTS` curl GETs (with `headers`) through an agent started from `config` and
/// returns every span touching the server's port.
fn traced_requests(
    service: &str,
    config: AgentConfig,
    headers: &[&str],
) -> (u16, Vec<ObservedSpan>) {
    let port = free_port();
    let server = PythonServer::start(port, service);
    let mut session = TracedSession::start_with(OtlpProtocol::HttpProtobuf, config.ports(&[port]));
    let url = server.url("/ok");
    for _ in 0..REQUESTS {
        let mut args: Vec<&str> = Vec::new();
        for header in headers {
            args.extend(["-H", header]);
        }
        args.push(&url);
        assert_eq!(curl(&args).status, 200);
    }
    session.wait_for(
        "a SERVER and a CLIENT span per request",
        at_least(port, REQUESTS, REQUESTS),
    );
    (port, session.finish())
}

/// The Unix seconds in the first 32 bits of a hex trace id.
fn time_prefix(trace_id: &str) -> u64 {
    match trace_id.get(..8).map(|hex| u64::from_str_radix(hex, 16)) {
        Some(Ok(secs)) => secs,
        _ => panic!("trace id {trace_id:?} is not 32 hex digits"),
    }
}

#[track_caller]
fn assert_dated_by_its_start(root: &ObservedSpan) {
    assert!(
        root.parent_span_id.is_none(),
        "not a root: {}",
        root.summary()
    );
    let start_secs = root.start_unix_ns / 1_000_000_000;
    let prefix = time_prefix(&root.trace_id);
    // The id is dated by the kernel timestamp of the request's first bytes; the span starts at
    // the same record, so the two agree to the second (one second of slack for rounding).
    assert!(
        prefix.abs_diff(start_secs) <= 1,
        "trace id {} is dated {prefix}, the root started at {start_secs}: {}",
        root.trace_id,
        root.summary()
    );
}

#[test]
fn xray_generator_dates_every_new_trace_and_children_share_it() {
    let (port, spans) = traced_requests(
        "e2e-xray-ids",
        AgentConfig::new().arg("--id-generator").arg("xray"),
        &[],
    );
    let clients = client_spans(&spans, port);
    assert_eq!(clients.len(), REQUESTS, "one curl CLIENT span per request");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for client in &clients {
        // curl is the root of each trace (no header, no traced caller).
        assert_dated_by_its_start(client);
        assert!(now.abs_diff(time_prefix(&client.trace_id)) < 120);
        // The server's span is its child through the same-host connection pair: same id.
        let server = the_only(
            server_spans(&spans, port)
                .into_iter()
                .filter(|s| s.parent_span_id.as_deref() == Some(client.span_id.as_str()))
                .collect(),
            "SERVER span under this CLIENT",
            &spans,
        );
        assert_eq!(server.trace_id, client.trace_id, "{}", server.summary());
    }
    let mut ids: Vec<&str> = clients.iter().map(|s| s.trace_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), REQUESTS, "each request is its own trace");
}

#[test]
fn xray_generator_from_the_environment_keeps_incoming_ids() {
    let traceparent = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (port, spans) = traced_requests(
        "e2e-xray-ids-header",
        AgentConfig::new().env("TRACER_ID_GENERATOR", "xray"),
        &[traceparent],
    );
    // curl sends the header, so its CLIENT span continues that trace too.
    let both: Vec<&ObservedSpan> = server_spans(&spans, port)
        .into_iter()
        .chain(client_spans(&spans, port))
        .collect();
    assert_eq!(both.len(), 2 * REQUESTS);
    for span in both {
        assert_eq!(
            span.trace_id,
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "an adopted context keeps its trace id: {}",
            span.summary()
        );
    }

    let xray = "X-Amzn-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let (port, spans) = traced_requests(
        "e2e-xray-ids-amzn",
        AgentConfig::new().env("TRACER_ID_GENERATOR", "xray"),
        &[xray],
    );
    let servers = server_spans(&spans, port);
    assert_eq!(servers.len(), REQUESTS);
    for server in servers {
        assert_eq!(
            server.trace_id,
            "5759e988bd862e3fe1be46a994272793",
            "{}",
            server.summary()
        );
    }
}

#[test]
fn default_trace_ids_are_random() {
    let (port, spans) = traced_requests("e2e-random-ids", AgentConfig::new(), &[]);
    let clients = client_spans(&spans, port);
    assert_eq!(clients.len(), REQUESTS);
    for client in clients {
        let start_secs = client.start_unix_ns / 1_000_000_000;
        // A random 32-bit prefix lands within a minute of the start with probability ~3e-8.
        assert!(
            time_prefix(&client.trace_id).abs_diff(start_secs) > 60,
            "a random trace id looks dated: {}",
            client.summary()
        );
    }
}
