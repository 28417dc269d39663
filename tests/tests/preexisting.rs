//! Connections opened before the agent started: the kernel never saw their accept or connect, so
//! they are adopted when HTTP bytes flow on them (and /proc supplies their addresses).
//!
//! A read already blocked when the probes attached is not seen (its syscall entry, which carries
//! the buffer address, came before): the server side of the first request after the agent starts
//! is lost; every later one is traced.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tracer_tests::query::{at_least, client_spans, server_spans, the_only};
use tracer_tests::{AttrValue, ObservedSpan, OtlpProtocol, PythonServer, TracedSession, free_port};

/// Sends one keep-alive GET on `stream` and reads the whole response; returns the status.
fn get(stream: &mut TcpStream, port: u16, path: &str) -> u16 {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: preexisting\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("writing the request");
    // Read on the same fd that wrote (a dup'ed fd would be a different connection to the tracer).
    let mut reader = BufReader::new(&*stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .expect("reading the status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("reading a header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("reading the body");
    status
}

#[test]
fn keep_alive_connection_opened_before_the_agent_is_traced() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-preexisting");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    // Before the agent exists: nobody sees this one.
    assert_eq!(get(&mut stream, port, "/ok?before=1"), 200);

    let mut session = TracedSession::start(OtlpProtocol::HttpProtobuf, &[port]);
    assert_eq!(get(&mut stream, port, "/ok?after=1"), 200);
    assert_eq!(get(&mut stream, port, "/ok?after=2"), 200);
    session.wait_for(
        "SERVER and CLIENT spans of the requests on the old connection",
        at_least(port, 1, 2),
    );
    let spans = session.finish();

    let server_span = the_only(server_spans(&spans, port), "SERVER span", &spans);
    assert_eq!(
        server_span.attr("url.query"),
        Some(&AttrValue::from("after=2")),
        "{spans:#?}"
    );
    assert_eq!(
        server_span.resource.get("process.pid"),
        Some(&AttrValue::Int(i64::from(server.pid())))
    );
    let local = stream.local_addr().expect("local address");
    assert_eq!(
        server_span.attr("client.port"),
        Some(&AttrValue::Int(i64::from(local.port()))),
        "the adopted connection's peer comes from /proc: {server_span:#?}"
    );
    let client_urls = sorted_client_urls(&spans, port);
    assert_eq!(
        client_urls,
        [
            format!("http://127.0.0.1:{port}/ok?after=1"),
            format!("http://127.0.0.1:{port}/ok?after=2")
        ],
        "both requests written after the agent started have CLIENT spans: {spans:#?}"
    );
    assert!(
        spans
            .iter()
            .all(|s| s.attr_str("url.query") != Some("before=1")
                && !s
                    .attr_str("url.full")
                    .is_some_and(|u| u.contains("before=1"))),
        "the request made before the agent started cannot have a span: {spans:#?}"
    );
}

/// A thread that already moves bytes on a connection the kernel tracks keeps the arguments of
/// its other syscalls in its own per-thread entry (not the candidate table): an old connection
/// it then uses is still adopted by its bytes, and the tracked one stays traced.
#[test]
fn a_thread_with_a_tracked_connection_still_adopts_an_old_one() {
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-preexisting-mixed");
    let mut old = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the server");
    old.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    assert_eq!(get(&mut old, port, "/ok?before=1"), 200);

    let mut session = TracedSession::start(OtlpProtocol::HttpProtobuf, &[port]);
    // Connected after the agent started: tracked from its connect, on this very thread.
    let mut new = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the server");
    new.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    assert_eq!(get(&mut new, port, "/ok?new=1"), 200);
    assert_eq!(get(&mut old, port, "/ok?old=1"), 200);
    assert_eq!(get(&mut new, port, "/ok?new=2"), 200);
    assert_eq!(get(&mut old, port, "/ok?old=2"), 200);
    session.wait_for("CLIENT spans of the four requests", at_least(port, 0, 4));
    let spans = session.finish();
    let client_urls = sorted_client_urls(&spans, port);
    assert_eq!(
        client_urls,
        [
            format!("http://127.0.0.1:{port}/ok?new=1"),
            format!("http://127.0.0.1:{port}/ok?new=2"),
            format!("http://127.0.0.1:{port}/ok?old=1"),
            format!("http://127.0.0.1:{port}/ok?old=2"),
        ],
        "every request written after the agent started has one CLIENT span: {spans:#?}"
    );
}

/// The `url.full` of every CLIENT span to `port`, sorted.
fn sorted_client_urls(spans: &[ObservedSpan], port: u16) -> Vec<&str> {
    let mut urls: Vec<&str> = client_spans(spans, port)
        .iter()
        .filter_map(|s| s.attr_str("url.full"))
        .collect();
    urls.sort_unstable();
    urls
}
