//! Trace context from request headers, through real probes: a SERVER span adopts the trace id
//! and parent span id of an incoming `traceparent`, `b3` (single and multi), or
//! `X-Amzn-Trace-Id` header, with a new span id of its own; precedence and invalid headers.

use tracer_tests::query::{at_least, client_spans, is_valid_id, server_spans, the_only};
use tracer_tests::{
    ClientMode, ObservedSpan, OtlpProtocol, PythonServer, TracedSession, curl, free_port,
    run_client,
};

/// Sends one curl GET with `headers` and returns the SERVER span, the CLIENT span and all spans.
fn exchange_with_headers(
    service: &str,
    headers: &[&str],
) -> (ObservedSpan, ObservedSpan, Vec<ObservedSpan>) {
    let port = free_port();
    let server = PythonServer::start(port, service);
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let mut args: Vec<&str> = Vec::new();
    for header in headers {
        args.extend(["-H", header]);
    }
    let url = server.url("/ok");
    args.push(&url);
    assert_eq!(curl(&args).status, 200);
    session.wait_for("the SERVER and CLIENT span", at_least(port, 1, 1));
    let spans = session.finish();
    let server_span = the_only(server_spans(&spans, port), "SERVER span", &spans).clone();
    let client_span = the_only(client_spans(&spans, port), "CLIENT span", &spans).clone();
    (server_span, client_span, spans)
}

/// Asserts the SERVER span continues `trace_id` under `parent_id` with a fresh span id.
#[track_caller]
fn assert_adopted(span: &ObservedSpan, trace_id: &str, parent_id: &str) {
    assert_eq!(
        span.trace_id,
        trace_id,
        "trace id from the header: {}",
        span.summary()
    );
    assert_eq!(
        span.parent_span_id.as_deref(),
        Some(parent_id),
        "parent from the header: {}",
        span.summary()
    );
    assert_ne!(
        span.span_id, parent_id,
        "the incoming id is the parent, never the span's own id"
    );
    assert!(is_valid_id(&span.span_id, 16), "{}", span.summary());
}

#[test]
fn traceparent_sets_trace_and_parent_of_the_server_span() {
    let (server, _, _) = exchange_with_headers(
        "e2e-prop-traceparent",
        &[
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate: vendor=abc,other=1",
        ],
    );
    assert_adopted(
        &server,
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    );
    assert_eq!(
        server.trace_state.as_deref(),
        Some("vendor=abc,other=1"),
        "{}",
        server.summary()
    );
}

#[test]
fn b3_single_header_sets_trace_and_parent() {
    let (server, _, _) = exchange_with_headers(
        "e2e-prop-b3",
        &["b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"],
    );
    assert_adopted(
        &server,
        "80f198ee56343ba864fe8b2a57d3eff7",
        "e457b5a2e4d86bd1",
    );
}

#[test]
fn b3_multi_headers_set_trace_and_parent_with_64_bit_trace_id_padded() {
    let (server, _, _) = exchange_with_headers(
        "e2e-prop-b3-multi",
        &[
            "X-B3-TraceId: 463ac35c9f6413ad",
            "X-B3-SpanId: a2fb4a1d1a96d312",
            "X-B3-Sampled: 1",
        ],
    );
    assert_adopted(
        &server,
        "0000000000000000463ac35c9f6413ad",
        "a2fb4a1d1a96d312",
    );
}

#[test]
fn x_amzn_trace_id_sets_trace_and_parent() {
    let (server, _, _) = exchange_with_headers(
        "e2e-prop-xray",
        &[
            "X-Amzn-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        ],
    );
    assert_adopted(
        &server,
        "5759e988bd862e3fe1be46a994272793",
        "53995c3f42cd8ad8",
    );
}

#[test]
fn valid_traceparent_wins_over_b3_and_x_amzn() {
    let (server, _, _) = exchange_with_headers(
        "e2e-prop-precedence",
        &[
            "X-Amzn-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ],
    );
    assert_adopted(
        &server,
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    );
}

#[test]
fn b3_single_wins_over_x_amzn_when_traceparent_is_invalid() {
    let (server, _, _) = exchange_with_headers(
        "e2e-prop-fallback",
        &[
            // Uppercase hex: invalid, so the next source in precedence order is used.
            "traceparent: 00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "X-Amzn-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1",
        ],
    );
    assert_adopted(
        &server,
        "80f198ee56343ba864fe8b2a57d3eff7",
        "e457b5a2e4d86bd1",
    );
}

#[test]
fn invalid_traceparent_starts_a_new_trace() {
    let bad_trace = "ffffffffffffffffffffffffffffffff";
    let (server, _, _) = exchange_with_headers(
        "e2e-prop-invalid",
        // Version ff is invalid.
        &["traceparent: ff-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01"],
    );
    assert_ne!(server.trace_id, bad_trace, "{}", server.summary());
    assert_ne!(
        server.parent_span_id.as_deref(),
        Some("ffffffffffffffff"),
        "{}",
        server.summary()
    );
    assert!(
        is_valid_id(&server.trace_id, 32) && is_valid_id(&server.span_id, 16),
        "{}",
        server.summary()
    );
}

#[test]
fn every_request_on_a_keep_alive_connection_adopts_its_header() {
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-prop-keepalive");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let header = "traceparent: 00-11111111111111111111111111111111-2222222222222222-01";
    let run = run_client(
        port,
        ClientMode::KeepAlive,
        &["GET:/ok?i=0", "GET:/ok?i=1", "GET:/ok?i=2"],
        &[header],
    );
    assert!(run.responses.iter().all(|r| r.status == 200));
    session.wait_for("3 SERVER spans", at_least(port, 3, 3));
    let spans = session.finish();
    let servers = server_spans(&spans, port);
    assert_eq!(
        servers.len(),
        3,
        "{}",
        tracer_tests::query::describe(servers.iter().copied())
    );
    for span in &servers {
        assert_adopted(span, "11111111111111111111111111111111", "2222222222222222");
    }
    let mut ids: Vec<&str> = servers.iter().map(|s| s.span_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each SERVER span has its own id");
}

/// Without headers, a SERVER span whose connection mirrors a traced CLIENT connection on the same
/// host is that CLIENT span's child (the header-less linking of the design).
#[test]
fn header_less_server_span_is_child_of_the_traced_client_span() {
    let (server, client, _) = exchange_with_headers("e2e-prop-headerless", &[]);
    assert_eq!(
        client.parent_span_id,
        None,
        "curl's span is a root: {}",
        client.summary()
    );
    assert_eq!(
        server.trace_id, client.trace_id,
        "one trace across both processes"
    );
    assert_eq!(
        server.parent_span_id.as_deref(),
        Some(client.span_id.as_str()),
        "{}",
        server.summary()
    );
}
