//! HTTP/2 in cleartext with prior knowledge (h2c) between real uninstrumented peers: curl
//! (`--http2-prior-knowledge`) against nginx (`listen ... http2`) and against Node's built-in
//! http2 server, and Node's http2 client sending several streams on one connection. Each request
//! gives exactly one SERVER and one CLIENT span with the HTTP attributes of 1.x and
//! `network.protocol.version` "2".

use tracer_tests::h2peers::{NodeH2Server, curl_h2, node_h2_client};
use tracer_tests::query::{
    assert_attrs, assert_count, assert_no_attr, client_spans, describe, server_spans, the_only,
    with_attr,
};
use tracer_tests::{
    AgentConfig, AttrValue, Nginx, ObservedKind, ObservedSpan, ObservedStatus, OtlpProtocol,
    TracedSession, free_port, local_url,
};

/// The exporter's batch delay in these tests (the default 5 s would only make them slower).
const BATCH_DELAY_MS: &str = "200";

fn s(value: &str) -> AttrValue {
    AttrValue::from(value)
}

fn i(value: i64) -> AttrValue {
    AttrValue::Int(value)
}

fn session(port: u16) -> TracedSession {
    TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new()
            .ports(&[port])
            .env("OTEL_BSP_SCHEDULE_DELAY", BATCH_DELAY_MS),
    )
}

/// Spans of `kind` on `port` for `path` (SERVER: `url.path`; CLIENT: the path of `url.full`).
fn spans_for_path<'a>(
    spans: &'a [ObservedSpan],
    kind: ObservedKind,
    port: u16,
    path: &str,
) -> Vec<&'a ObservedSpan> {
    let candidates = match kind {
        ObservedKind::Server => server_spans(spans, port),
        _ => client_spans(spans, port),
    };
    let full = local_url(port, path);
    candidates
        .into_iter()
        .filter(|s| match kind {
            ObservedKind::Server => {
                let (want_path, want_query) = path.split_once('?').unwrap_or((path, ""));
                s.attr_str("url.path") == Some(want_path)
                    && s.attr_str("url.query").unwrap_or("") == want_query
            }
            _ => s.attr_str("url.full") == Some(full.as_str()),
        })
        .collect()
}

/// A wait condition: one SERVER and one CLIENT span on `port` for each of `paths`.
fn paths_seen(port: u16, paths: Vec<String>) -> impl Fn(&[ObservedSpan]) -> bool {
    move |spans| {
        paths.iter().all(|p| {
            !spans_for_path(spans, ObservedKind::Server, port, p).is_empty()
                && !spans_for_path(spans, ObservedKind::Client, port, p).is_empty()
        })
    }
}

/// The only SERVER and CLIENT span for `path` on `port`, with the common HTTP/2 attributes.
#[track_caller]
fn h2_pair<'a>(
    spans: &'a [ObservedSpan],
    port: u16,
    method: &str,
    path: &str,
    status: u16,
) -> (&'a ObservedSpan, &'a ObservedSpan) {
    let server = the_only(
        spans_for_path(spans, ObservedKind::Server, port, path),
        &format!("SERVER span of {method} {path}"),
        spans,
    );
    let client = the_only(
        spans_for_path(spans, ObservedKind::Client, port, path),
        &format!("CLIENT span of {method} {path}"),
        spans,
    );
    for span in [server, client] {
        assert_eq!(span.name, method, "{}", span.summary());
        assert_attrs(
            span,
            &[
                ("http.request.method", s(method)),
                ("network.protocol.version", s("2")),
                ("http.response.status_code", i(i64::from(status))),
                ("server.port", i(i64::from(port))),
                ("network.peer.address", s("127.0.0.1")),
            ],
        );
        // gRPC keys only on gRPC exchanges.
        assert_no_attr(span, "rpc.system.name");
    }
    (server, client)
}

/// Every parent link among the spans on `port` joins a SERVER span to the CLIENT span of the same
/// request (curl and Node send no trace context: only the agent's header-less pairing can link
/// them); returns how many SERVER spans have one.
#[track_caller]
fn assert_no_wrong_parent(spans: &[ObservedSpan], port: u16) -> usize {
    let ours: Vec<&ObservedSpan> = spans
        .iter()
        .filter(|s| s.attr_int("server.port") == Some(i64::from(port)))
        .collect();
    let path_of = |s: &ObservedSpan| -> Option<String> {
        match s.kind {
            ObservedKind::Server => s.attr_str("url.path").map(str::to_owned),
            _ => s
                .attr_str("url.full")
                .and_then(|u| u.strip_prefix(&local_url(port, "")))
                .map(|p| p.split('?').next().unwrap_or_default().to_owned()),
        }
    };
    let mut linked = 0;
    let mut wrong = Vec::new();
    for span in &ours {
        let Some(parent_id) = span.parent_span_id.as_deref() else {
            continue;
        };
        let parent = ours.iter().find(|p| p.span_id == parent_id);
        let right = parent.is_some_and(|p| {
            span.kind == ObservedKind::Server
                && p.kind == ObservedKind::Client
                && p.trace_id == span.trace_id
                && path_of(p) == path_of(span)
                && p.attr("http.response.status_code") == span.attr("http.response.status_code")
        });
        if right {
            linked += 1;
        } else {
            wrong.push(format!(
                "  {}\n    -> parent {}",
                span.summary(),
                parent.map_or_else(|| parent_id.to_owned(), |p| p.summary())
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong parent link(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    linked
}

#[test]
fn curl_against_nginx_h2c_gives_one_server_and_one_client_span_per_request() {
    let port = free_port();
    let nginx = Nginx::start_h2c(port);
    let mut session = session(port);
    // One request per curl (curl 7.88 cannot reuse a prior-knowledge connection).
    let ok = curl_h2(&local_url(port, "/index.html?lang=en"));
    let missing = curl_h2(&local_url(port, "/missing"));
    let unavailable = curl_h2(&local_url(port, "/unavailable"));
    assert_eq!(
        (ok.status, missing.status, unavailable.status),
        (200, 404, 503),
        "{}",
        nginx.output_report()
    );
    let paths: Vec<String> = ["/index.html?lang=en", "/missing", "/unavailable"]
        .iter()
        .map(|p| (*p).to_owned())
        .collect();
    session.wait_for(
        "a SERVER and a CLIENT span for each of the three requests",
        paths_seen(port, paths),
    );
    // Loopback tuples pair only within a known network namespace. The kernel names each
    // connection's namespace when it opens, so a curl that exits before the agent reads its
    // /proc is paired all the same: nothing is left unlinked for want of it.
    let metrics = tracer_tests::metrics_client::scrape(session.agent().metrics_addr());
    let netns_unknown = tracer_tests::metrics_client::sample(
        &metrics,
        "tracer_parent_links_skipped_total",
        "reason=\"loopback_netns_unknown\"",
    )
    .unwrap_or(-1.0);
    let spans = session.finish();
    assert_count(
        &server_spans(&spans, port),
        3,
        "SERVER spans (one per request)",
        &spans,
    );
    assert_count(
        &client_spans(&spans, port),
        3,
        "CLIENT spans (one per request)",
        &spans,
    );

    let (server, client) = h2_pair(&spans, port, "GET", "/index.html?lang=en", 200);
    assert_attrs(
        server,
        &[
            ("url.path", s("/index.html")),
            ("url.query", s("lang=en")),
            ("url.scheme", s("http")),
            ("client.address", s("127.0.0.1")),
        ],
    );
    assert!(
        server
            .attr_str("user_agent.original")
            .is_some_and(|ua| ua.starts_with("curl/")),
        "user-agent from the HPACK-decoded request: {}",
        server.summary()
    );
    assert_eq!(server.status, ObservedStatus::Unset);
    assert_eq!(client.status, ObservedStatus::Unset);
    assert_eq!(client.service_name(), Some("curl"));
    assert_eq!(client.resource_int("process.pid"), Some(i64::from(ok.pid)));
    assert_attrs(client, &[("server.address", s("127.0.0.1"))]);

    // 4xx: an error for the CLIENT only; 5xx for both (as for HTTP/1).
    let (server, client) = h2_pair(&spans, port, "GET", "/missing", 404);
    assert_eq!(server.status, ObservedStatus::Unset, "{}", server.summary());
    assert_eq!(client.status, ObservedStatus::Error, "{}", client.summary());
    assert_attrs(client, &[("error.type", s("404"))]);
    let (server, client) = h2_pair(&spans, port, "GET", "/unavailable", 503);
    assert_eq!(server.status, ObservedStatus::Error, "{}", server.summary());
    assert_eq!(client.status, ObservedStatus::Error, "{}", client.summary());
    // Same-host pairing by stream id (curl sends no context): each CLIENT the parent of its SERVER.
    let linked = assert_no_wrong_parent(&spans, port);
    assert_eq!(
        (linked, netns_unknown),
        (3, 0.0),
        "every SERVER span linked to its CLIENT span, none skipped for an unknown namespace:\n{}",
        describe(&spans)
    );
}

#[test]
fn node_http2_server_with_curl_and_the_node_client_on_one_connection() {
    let server = NodeH2Server::start("e2e-node-h2");
    let port = server.port();
    let mut session = session(port);
    let by_curl = curl_h2(&local_url(port, "/hello?from=curl"));
    assert_eq!(by_curl.status, 200);
    // Five streams on one connection: three at once, then a POST with a body and a 404.
    let together = node_h2_client(
        port,
        true,
        &["GET:/hello?i=1", "GET:/hello?i=2", "GET:/status/503"],
    );
    let sequential = node_h2_client(port, false, &["POST:/echo:3000", "GET:/nope"]);
    let statuses: Vec<u16> = together
        .responses
        .iter()
        .chain(&sequential.responses)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 503, 200, 404],
        "{}",
        server.output_report()
    );
    let paths: Vec<String> = [
        "/hello?from=curl",
        "/hello?i=1",
        "/hello?i=2",
        "/status/503",
        "/echo",
        "/nope",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    session.wait_for(
        "a SERVER and a CLIENT span for each of the six requests",
        paths_seen(port, paths),
    );
    let spans = session.finish();
    assert_count(&server_spans(&spans, port), 6, "SERVER spans", &spans);
    assert_count(&client_spans(&spans, port), 6, "CLIENT spans", &spans);

    let (server_span, client_span) = h2_pair(&spans, port, "GET", "/hello?from=curl", 200);
    assert_eq!(server_span.service_name(), Some("e2e-node-h2"));
    assert_eq!(
        server_span.resource_int("process.pid"),
        Some(i64::from(server.pid()))
    );
    assert_eq!(client_span.service_name(), Some("curl"));
    for path in ["/hello?i=1", "/hello?i=2"] {
        let (_, client_span) = h2_pair(&spans, port, "GET", path, 200);
        assert_eq!(
            client_span.resource_int("process.pid"),
            Some(i64::from(together.pid))
        );
    }
    h2_pair(&spans, port, "GET", "/status/503", 503);
    let (server_span, _) = h2_pair(&spans, port, "POST", "/echo", 200);
    assert_eq!(
        server_span.attr_int("network.peer.port"),
        Some(i64::from(sequential.local_port)),
        "the SERVER span's peer is the Node client's side of its connection"
    );
    h2_pair(&spans, port, "GET", "/nope", 404);

    // The streams of one connection never swap attributes: each status is its own path's.
    let mismatched: Vec<&ObservedSpan> = with_attr(
        spans
            .iter()
            .filter(|s| s.attr_str("url.path") == Some("/hello")),
        "http.response.status_code",
        i(503),
    );
    assert!(mismatched.is_empty(), "{}", describe(mismatched));
    let linked = assert_no_wrong_parent(&spans, port);
    assert_eq!(
        linked,
        6,
        "SERVER spans linked to their CLIENT span:\n{}",
        describe(&spans)
    );
}
