//! Basic request/response tracing against real probes: curl against the Python server and nginx
//! gives exactly one SERVER and one CLIENT span per request, with the HTTP semconv attributes,
//! resources, timings and the status rules (4xx error on CLIENT only, 5xx on both); and the port
//! filter on a server that accepts without the peer's address (Node).

use std::process::Command;
use std::time::Duration;

use tracer_tests::metrics_client::sample;
use tracer_tests::nginx::parent_pid;
use tracer_tests::query::{
    assert_attrs, assert_count, assert_no_attr, at_least, client_spans, is_valid_id, server_spans,
    the_only, with_attr,
};
use tracer_tests::{
    AgentConfig, AttrValue, ChildGuard, Nginx, ObservedKind, ObservedSpan, ObservedStatus,
    OtlpProtocol, PythonServer, TracedSession, curl, free_port, local_url, unix_now_ns,
    wait_for_port,
};

/// Clock slack between the two sides of one exchange and between the test's and the agent's
/// clocks.
const CLOCK_SLACK_NS: u64 = 50_000_000;

fn s(value: &str) -> AttrValue {
    AttrValue::from(value)
}

fn i(value: i64) -> AttrValue {
    AttrValue::Int(value)
}

/// The SERVER and CLIENT span of the request answered with `status` on `port`.
fn pair_with_status(
    spans: &[ObservedSpan],
    port: u16,
    status: u16,
) -> (&ObservedSpan, &ObservedSpan) {
    let code = i(i64::from(status));
    let server = the_only(
        with_attr(
            server_spans(spans, port),
            "http.response.status_code",
            code.clone(),
        ),
        &format!("SERVER span with status {status}"),
        spans,
    );
    let client = the_only(
        with_attr(client_spans(spans, port), "http.response.status_code", code),
        &format!("CLIENT span with status {status}"),
        spans,
    );
    (server, client)
}

#[test]
fn get_gives_one_server_and_one_client_span_with_semconv_attributes() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-basic-get");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let before = unix_now_ns();
    let run = curl(&["-A", "tracer-e2e/1.0", &server.url("/ok?a=1&b=two")]);
    let after = unix_now_ns();
    assert_eq!(run.status, 200);
    session.wait_for(
        "the SERVER and CLIENT span of GET /ok",
        at_least(port, 1, 1),
    );
    let spans = session.finish();
    assert_count(
        &spans.iter().collect::<Vec<_>>(),
        2,
        "spans in total (agent filtered to the port)",
        &spans,
    );

    let server_span = the_only(server_spans(&spans, port), "SERVER span", &spans);
    assert_eq!(server_span.name, "GET");
    assert_eq!(server_span.kind, ObservedKind::Server);
    assert_eq!(server_span.status, ObservedStatus::Unset);
    assert_attrs(
        server_span,
        &[
            ("http.request.method", s("GET")),
            ("url.path", s("/ok")),
            ("url.query", s("a=1&b=two")),
            ("url.scheme", s("http")),
            ("server.port", i(i64::from(port))),
            ("client.address", s("127.0.0.1")),
            ("network.peer.address", s("127.0.0.1")),
            ("network.protocol.version", s("1.1")),
            ("http.response.status_code", i(200)),
            ("user_agent.original", s("tracer-e2e/1.0")),
        ],
    );
    assert_no_attr(server_span, "error.type");
    let peer_port = server_span.attr_int("network.peer.port").unwrap_or(0);
    assert!(
        peer_port > 0 && peer_port != i64::from(port),
        "client's port on the server span: {peer_port}"
    );
    assert_eq!(
        server_span.service_name(),
        Some("e2e-basic-get"),
        "service.name from OTEL_SERVICE_NAME"
    );
    assert_eq!(
        server_span.resource_int("process.pid"),
        Some(i64::from(server.pid()))
    );

    let client_span = the_only(client_spans(&spans, port), "CLIENT span", &spans);
    assert_eq!(client_span.name, "GET");
    assert_eq!(client_span.status, ObservedStatus::Unset);
    assert_attrs(
        client_span,
        &[
            ("http.request.method", s("GET")),
            ("server.address", s("127.0.0.1")),
            ("server.port", i(i64::from(port))),
            ("url.full", s(&server.url("/ok?a=1&b=two"))),
            ("network.peer.address", s("127.0.0.1")),
            ("network.peer.port", i(i64::from(port))),
            ("http.response.status_code", i(200)),
        ],
    );
    assert_no_attr(client_span, "error.type");
    assert_eq!(client_span.service_name(), Some("curl"));
    assert_eq!(
        client_span.resource_int("process.pid"),
        Some(i64::from(run.pid))
    );

    for span in [server_span, client_span] {
        assert!(
            is_valid_id(&span.trace_id, 32) && is_valid_id(&span.span_id, 16),
            "{}",
            span.summary()
        );
        assert!(
            span.end_unix_ns > span.start_unix_ns,
            "positive duration: {}",
            span.summary()
        );
        assert!(
            span.start_unix_ns + CLOCK_SLACK_NS >= before
                && span.end_unix_ns <= after + CLOCK_SLACK_NS,
            "span outside the request's wall-clock window [{before}, {after}]: {}",
            span.summary()
        );
    }
    assert_ne!(server_span.span_id, client_span.span_id);
    // The server handled the request inside the client's exchange.
    assert!(client_span.start_unix_ns <= server_span.start_unix_ns + CLOCK_SLACK_NS);
    assert!(server_span.end_unix_ns <= client_span.end_unix_ns + CLOCK_SLACK_NS);
}

#[test]
fn slow_handler_time_is_inside_both_spans() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-basic-slow");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    assert_eq!(curl(&[&server.url("/slow?ms=400")]).status, 200);
    session.wait_for("the spans of GET /slow", at_least(port, 1, 1));
    let spans = session.finish();
    let server_span = the_only(server_spans(&spans, port), "SERVER span", &spans);
    let client_span = the_only(client_spans(&spans, port), "CLIENT span", &spans);
    for span in [server_span, client_span] {
        assert!(
            span.duration() >= Duration::from_millis(400),
            "shorter than the 400 ms sleep: {}",
            span.summary()
        );
        assert!(
            span.duration() < Duration::from_secs(10),
            "implausibly long: {}",
            span.summary()
        );
    }
    assert_eq!(server_span.attr_str("url.path"), Some("/slow"));
    assert_eq!(server_span.attr_str("url.query"), Some("ms=400"));
}

#[test]
fn status_codes_set_span_status_per_semconv() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-basic-status");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    for status in [200u16, 404, 500, 503] {
        assert_eq!(
            curl(&[&server.url(&format!("/status/{status}"))]).status,
            status
        );
    }
    session.wait_for("4 SERVER and 4 CLIENT spans", at_least(port, 4, 4));
    let spans = session.finish();
    assert_count(&server_spans(&spans, port), 4, "SERVER spans", &spans);
    assert_count(&client_spans(&spans, port), 4, "CLIENT spans", &spans);

    let (server_200, client_200) = pair_with_status(&spans, port, 200);
    for span in [server_200, client_200] {
        assert_eq!(span.status, ObservedStatus::Unset, "{}", span.summary());
        assert_no_attr(span, "error.type");
    }

    let (server_404, client_404) = pair_with_status(&spans, port, 404);
    assert_eq!(
        server_404.status,
        ObservedStatus::Unset,
        "4xx is not a server error: {}",
        server_404.summary()
    );
    assert_no_attr(server_404, "error.type");
    assert_eq!(
        client_404.status,
        ObservedStatus::Error,
        "4xx is a client error: {}",
        client_404.summary()
    );
    assert_attrs(client_404, &[("error.type", s("404"))]);

    for status in [500u16, 503] {
        let (server_5xx, client_5xx) = pair_with_status(&spans, port, status);
        for span in [server_5xx, client_5xx] {
            assert_eq!(
                span.status,
                ObservedStatus::Error,
                "5xx is an error on both sides: {}",
                span.summary()
            );
            assert_attrs(span, &[("error.type", s(&status.to_string()))]);
        }
        assert_eq!(
            server_5xx.attr_str("url.path"),
            Some(format!("/status/{status}").as_str())
        );
    }
}

#[test]
fn nginx_static_file_and_503_are_traced() {
    let port = free_port();
    let nginx = Nginx::start(port);
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    assert_eq!(
        curl(&[&local_url(port, "/index.html")]).status,
        200,
        "{}",
        nginx.output_report()
    );
    assert_eq!(curl(&[&local_url(port, "/unavailable")]).status, 503);
    session.wait_for(
        "2 SERVER spans from nginx and 2 CLIENT spans from curl",
        at_least(port, 2, 2),
    );
    let spans = session.finish();
    assert_count(&server_spans(&spans, port), 2, "SERVER spans", &spans);
    assert_count(&client_spans(&spans, port), 2, "CLIENT spans", &spans);

    let (server_ok, client_ok) = pair_with_status(&spans, port, 200);
    assert_attrs(
        server_ok,
        &[
            ("http.request.method", s("GET")),
            ("url.path", s("/index.html")),
            ("url.scheme", s("http")),
        ],
    );
    assert_eq!(server_ok.status, ObservedStatus::Unset);
    assert_eq!(
        client_ok.attr_str("url.full"),
        Some(local_url(port, "/index.html").as_str())
    );

    let (server_503, client_503) = pair_with_status(&spans, port, 503);
    assert_eq!(server_503.attr_str("url.path"), Some("/unavailable"));
    for span in [server_503, client_503] {
        assert_eq!(span.status, ObservedStatus::Error, "{}", span.summary());
        assert_attrs(span, &[("error.type", s("503"))]);
    }

    for span in [server_ok, server_503] {
        assert_eq!(
            span.service_name(),
            Some("nginx"),
            "executable base name: {}",
            span.summary()
        );
        // Requests are served by the worker, a child of the master we started.
        let worker = span
            .resource_int("process.pid")
            .and_then(|p| u32::try_from(p).ok());
        let worker = worker.unwrap_or_else(|| panic!("process.pid missing: {}", span.summary()));
        assert_eq!(
            parent_pid(worker),
            Some(nginx.master_pid()),
            "worker {worker} is not our nginx's"
        );
    }
    for span in [client_ok, client_503] {
        assert_eq!(span.service_name(), Some("curl"));
    }
}

/// Node's http servers accept with `accept4(fd, NULL, NULL)`: the syscall returns no peer
/// address, and the kernel reads the endpoints from the accepted socket instead. So the port
/// filter applies in the kernel: a connection to a port outside `--port` is never tracked (an
/// agent that left these endpoints to /proc tracked every such connection and dropped it only
/// once it had read /proc, `tracer_sniffed_fds_ignored_total{reason="port_filter"}`), and one to
/// a traced port is traced with its endpoints.
#[test]
fn node_accepting_without_a_peer_address_is_port_filtered_in_the_kernel() {
    let (traced, filtered) = (free_port(), free_port());
    let script = format!(
        "const http = require('http'); let up = 0; \
         for (const port of [{traced}, {filtered}]) {{ \
           http.createServer((q, s) => s.end('ok')).listen(port, '127.0.0.1', () => {{ \
             if (++up === 2) console.log('listening'); }}); }}"
    );
    let mut command = Command::new("node");
    command.args(["-e", &script]);
    let node = ChildGuard::spawn("node http servers", command);
    for port in [traced, filtered] {
        assert!(
            wait_for_port(port, Duration::from_secs(60)),
            "node did not listen on {port}\n{}",
            node.output_report()
        );
    }
    // Only node is traced: the counters are its connections', not other tests' servers'.
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new().pid(node.pid()).ports(&[traced]),
    );
    // The filtered port's requests first: once the traced port's spans arrived, the agent has
    // read every record before them.
    for n in 0..3 {
        assert_eq!(curl(&[&local_url(filtered, &format!("/f{n}"))]).status, 200);
    }
    for n in 0..3 {
        assert_eq!(curl(&[&local_url(traced, &format!("/t{n}"))]).status, 200);
    }
    session.wait_for("3 SERVER spans of the traced port", |spans| {
        server_spans(spans, traced).len() >= 3
    });
    let page = session.agent().wait_settled();
    let spans = session.finish();
    let counted = |family: &str, labels: &str| sample(&page, family, labels).unwrap_or(-1.0);
    for server in server_spans(&spans, traced) {
        assert_eq!(
            server.attr("client.address"),
            Some(&s("127.0.0.1")),
            "{}",
            server.summary()
        );
    }
    assert_count(
        &spans.iter().collect::<Vec<_>>(),
        3,
        "spans (the traced port's SERVER spans only)",
        &spans,
    );
    assert_eq!(
        (
            counted("tracer_connections_opened_total", ""),
            counted("tracer_sniffed_fds_ignored_total", "reason=\"port_filter\""),
            counted("tracer_kernel_accept_endpoints_unknown_total", ""),
        ),
        (3.0, 0.0, 0.0),
        "(connections tracked, filtered out in userspace, endpoints left to /proc)\n{page}"
    );
}
