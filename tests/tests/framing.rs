//! HTTP/1.1 message framing seen through real probes: chunked responses and request bodies,
//! HEAD, `Expect: 100-continue`, keep-alive, pipelining and bodies larger than the capture size
//! each give exactly one span per request on each side, with no duplicates.

use std::time::Duration;

use tracer_tests::query::{
    assert_count, assert_distinct_span_ids, at_least, client_spans, server_spans, the_only,
    with_attr,
};
use tracer_tests::{
    AttrValue, ClientMode, ObservedSpan, ObservedStatus, OtlpProtocol, PythonServer, ScratchDir,
    TracedSession, curl, free_port, run_client,
};

/// The one span among `spans` with `url.query` (SERVER) equal to `query`.
fn server_with_query<'a>(spans: &'a [ObservedSpan], port: u16, query: &str) -> &'a ObservedSpan {
    the_only(
        with_attr(server_spans(spans, port), "url.query", query),
        &format!("SERVER span with query {query:?}"),
        spans,
    )
}

/// The one CLIENT span whose `url.full` is `http://127.0.0.1:PORT` + `path_and_query`.
fn client_with_target<'a>(
    spans: &'a [ObservedSpan],
    port: u16,
    path_and_query: &str,
) -> &'a ObservedSpan {
    let url = format!("http://127.0.0.1:{port}{path_and_query}");
    the_only(
        with_attr(client_spans(spans, port), "url.full", url.as_str()),
        &format!("CLIENT span for {url}"),
        spans,
    )
}

/// Asserts exactly `count` spans on each side and no repeated span id.
fn assert_exact_counts(spans: &[ObservedSpan], port: u16, count: usize) {
    let servers = server_spans(spans, port);
    let clients = client_spans(spans, port);
    assert_count(&servers, count, "SERVER spans", spans);
    assert_count(&clients, count, "CLIENT spans", spans);
    assert_distinct_span_ids(
        &servers
            .iter()
            .chain(clients.iter())
            .copied()
            .collect::<Vec<_>>(),
    );
}

#[test]
fn chunked_response_span_covers_every_chunk() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-framing-chunked");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    // 4 parts 150 ms apart and 150 ms before the last chunk: the body takes >= 600 ms.
    assert_eq!(curl(&[&server.url("/chunked?parts=4&ms=150")]).status, 200);
    session.wait_for("the spans of the chunked response", at_least(port, 1, 1));
    let spans = session.finish();
    assert_exact_counts(&spans, port, 1);
    for span in [server_spans(&spans, port)[0], client_spans(&spans, port)[0]] {
        assert_eq!(
            span.attr_int("http.response.status_code"),
            Some(200),
            "{}",
            span.summary()
        );
        assert!(
            span.duration() >= Duration::from_millis(600),
            "the span must end with the last chunk: {}",
            span.summary()
        );
    }
}

#[test]
fn head_response_ends_at_its_headers_and_the_next_request_is_framed() {
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-framing-head");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    // The HEAD response advertises Content-Length 5000 but carries no body.
    let run = run_client(
        port,
        ClientMode::KeepAlive,
        &["HEAD:/bytes?n=5000", "GET:/ok?after=head"],
        &[],
    );
    assert_eq!(
        run.responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200]
    );
    session.wait_for("2 SERVER and 2 CLIENT spans", at_least(port, 2, 2));
    let spans = session.finish();
    assert_exact_counts(&spans, port, 2);
    let head = server_with_query(&spans, port, "n=5000");
    assert_eq!(head.name, "HEAD");
    assert_eq!(head.attr_str("http.request.method"), Some("HEAD"));
    assert_eq!(head.attr_int("http.response.status_code"), Some(200));
    let get = server_with_query(&spans, port, "after=head");
    assert_eq!(get.attr_str("http.request.method"), Some("GET"));
    assert_eq!(get.attr_str("url.path"), Some("/ok"));
    assert_eq!(get.attr_int("http.response.status_code"), Some(200));
    assert_eq!(
        client_with_target(&spans, port, "/bytes?n=5000").attr_str("http.request.method"),
        Some("HEAD")
    );
    assert_eq!(
        client_with_target(&spans, port, "/ok?after=head").attr_int("http.response.status_code"),
        Some(200)
    );
}

#[test]
fn expect_100_continue_is_one_exchange_with_the_final_status() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-framing-expect");
    let scratch = ScratchDir::new("expect");
    let body_file = scratch.path().join("body.bin");
    std::fs::write(&body_file, vec![b'z'; 4096]).expect("write request body");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let data = format!("@{}", body_file.display());
    let run = curl(&[
        "-X",
        "POST",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        &server.url("/echo?via=curl"),
    ]);
    assert_eq!(run.status, 200);
    // The same on a kept-alive connection, followed by another request.
    let client = run_client(
        port,
        ClientMode::KeepAlive,
        &["POST:/echo?via=py:expect:2000", "GET:/ok?after=expect"],
        &[],
    );
    assert_eq!(
        client.responses[0].interim, 1,
        "the server sent 100 Continue"
    );
    session.wait_for("3 SERVER and 3 CLIENT spans", at_least(port, 3, 3));
    let spans = session.finish();
    assert_exact_counts(&spans, port, 3);
    for query in ["via=curl", "via=py"] {
        let span = server_with_query(&spans, port, query);
        assert_eq!(
            span.attr_str("http.request.method"),
            Some("POST"),
            "{}",
            span.summary()
        );
        assert_eq!(
            span.attr_int("http.response.status_code"),
            Some(200),
            "final status, not 100: {}",
            span.summary()
        );
        assert_eq!(span.status, ObservedStatus::Unset);
    }
    for target in ["/echo?via=curl", "/echo?via=py"] {
        let span = client_with_target(&spans, port, target);
        assert_eq!(
            span.attr_int("http.response.status_code"),
            Some(200),
            "final status, not 100: {}",
            span.summary()
        );
    }
    assert_eq!(
        server_with_query(&spans, port, "after=expect").attr_int("http.response.status_code"),
        Some(200)
    );
}

#[test]
fn chunked_request_body_keeps_the_connection_in_sync() {
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-framing-chunked-request");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let run = run_client(
        port,
        ClientMode::KeepAlive,
        &[
            "POST:/echo?body=chunked:chunked:3000",
            "GET:/status/404?after=chunked",
        ],
        &[],
    );
    assert_eq!(
        run.responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 404]
    );
    assert_eq!(run.responses[0].body_len, 3000);
    session.wait_for("2 SERVER and 2 CLIENT spans", at_least(port, 2, 2));
    let spans = session.finish();
    assert_exact_counts(&spans, port, 2);
    let post = server_with_query(&spans, port, "body=chunked");
    assert_eq!(post.attr_str("http.request.method"), Some("POST"));
    assert_eq!(post.attr_int("http.response.status_code"), Some(200));
    let after = server_with_query(&spans, port, "after=chunked");
    assert_eq!(after.attr_str("url.path"), Some("/status/404"));
    assert_eq!(after.attr_int("http.response.status_code"), Some(404));
}

#[test]
fn keep_alive_requests_each_get_one_span() {
    const REQUESTS: usize = 5;
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-framing-keepalive");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let targets: Vec<String> = (0..REQUESTS).map(|n| format!("GET:/ok?i={n}")).collect();
    let target_refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let run = run_client(port, ClientMode::KeepAlive, &target_refs, &[]);
    assert!(
        run.responses.iter().all(|r| r.status == 200),
        "{:?}",
        run.responses
    );
    session.wait_for(
        "5 SERVER and 5 CLIENT spans",
        at_least(port, REQUESTS, REQUESTS),
    );
    let spans = session.finish();
    assert_exact_counts(&spans, port, REQUESTS);
    for n in 0..REQUESTS {
        let server_span = server_with_query(&spans, port, &format!("i={n}"));
        assert_eq!(
            server_span.attr("network.peer.port"),
            Some(&AttrValue::from(run.local_port)),
            "all requests came on the client's one connection: {}",
            server_span.summary()
        );
        client_with_target(&spans, port, &format!("/ok?i={n}"));
    }
    // Requests on one connection are sequential: their server spans do not overlap.
    let mut servers = server_spans(&spans, port);
    servers.sort_by_key(|s| s.start_unix_ns);
    for pair in servers.windows(2) {
        assert!(
            pair[0].end_unix_ns <= pair[1].start_unix_ns,
            "overlap:\n{}\n{}",
            pair[0].summary(),
            pair[1].summary()
        );
    }
}

#[test]
fn pipelined_requests_each_get_one_span_in_order() {
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-framing-pipeline");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let requests = [
        "GET:/ok?i=0",
        "GET:/bytes?n=20000&i=1",
        "GET:/status/404?i=2",
        "POST:/echo?i=3:length:100",
        "GET:/ok?i=4",
    ];
    let run = run_client(port, ClientMode::Pipeline, &requests, &[]);
    assert_eq!(
        run.responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 404, 200, 200]
    );
    session.wait_for("5 SERVER and 5 CLIENT spans", at_least(port, 5, 5));
    let spans = session.finish();
    assert_exact_counts(&spans, port, 5);
    let expected = [
        ("i=0", 200),
        ("n=20000&i=1", 200),
        ("i=2", 404),
        ("i=3", 200),
        ("i=4", 200),
    ];
    let mut previous_start = 0;
    for (query, status) in expected {
        let span = server_with_query(&spans, port, query);
        assert_eq!(
            span.attr_int("http.response.status_code"),
            Some(status),
            "{}",
            span.summary()
        );
        assert!(
            span.start_unix_ns >= previous_start,
            "requests are served in order: {}",
            span.summary()
        );
        previous_start = span.start_unix_ns;
    }
    for (target, status) in [
        ("/ok?i=0", 200),
        ("/bytes?n=20000&i=1", 200),
        ("/status/404?i=2", 404),
        ("/echo?i=3", 200),
        ("/ok?i=4", 200),
    ] {
        let span = client_with_target(&spans, port, target);
        assert_eq!(
            span.attr_int("http.response.status_code"),
            Some(status),
            "{}",
            span.summary()
        );
    }
}

#[test]
fn response_larger_than_the_capture_keeps_framing() {
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-framing-large");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let run = run_client(
        port,
        ClientMode::KeepAlive,
        &[
            "GET:/bytes?n=300000",
            "POST:/echo?big=1:length:100000",
            "GET:/ok?after=large",
        ],
        &[],
    );
    assert_eq!(
        run.responses.iter().map(|r| r.body_len).collect::<Vec<_>>(),
        [300_000, 100_000, 3]
    );
    session.wait_for("3 SERVER and 3 CLIENT spans", at_least(port, 3, 3));
    let spans = session.finish();
    assert_exact_counts(&spans, port, 3);
    assert_eq!(
        server_with_query(&spans, port, "n=300000").attr_int("http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        server_with_query(&spans, port, "big=1").attr_str("http.request.method"),
        Some("POST")
    );
    let after = server_with_query(&spans, port, "after=large");
    assert_eq!(after.attr_str("url.path"), Some("/ok"));
    assert_eq!(
        client_with_target(&spans, port, "/ok?after=large").attr_int("http.response.status_code"),
        Some(200)
    );
}
