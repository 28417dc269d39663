//! The pipeline on TLS connections: ciphertext records (socket bytes) are never framed, the
//! plaintext records a TLS library's uprobes captured (`DATA_FLAG_TLS`) are, and their spans
//! carry the `https` scheme; client and server ends on one host still pair by socket.

use super::test_harness::{Harness, int_attr, str_attr};
use super::*;
use crate::model::{Direction, SpanKind};
use crate::protocols::http2::PREFACE;

const SERVER_PID: u32 = 6100;
const CLIENT_PID: u32 = 6200;

/// A TLS 1.2/1.3 ClientHello record's first bytes (handshake, version 3.1).
const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x03];
/// A ServerHello + more handshake (version 3.3).
const SERVER_HELLO: &[u8] = &[0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00];
/// Application data records (what the socket carries once the handshake is done).
const APP_DATA: &[u8] = &[0x17, 0x03, 0x03, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef];

const GET: &[u8] = b"GET /secure/items?id=7 HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The handshake's ciphertext comes first (the uprobes have not fired yet), then the plaintext
/// of one exchange, with more ciphertext interleaved (the kernel's data programs may still send
/// some before they see `ConnState::tls`): one SERVER span with scheme https, the right path
/// and status, and the HTTP framer never saw a ciphertext byte (no desync, nothing skipped).
#[test]
fn ciphertext_is_skipped_and_plaintext_becomes_an_https_server_span() {
    let mut h = Harness::new(
        "tls-server",
        &[(SERVER_PID, "tls-server"), (CLIENT_PID, "tls-client")],
    );
    let (local, peer) = ("127.0.0.1:8443", "127.0.0.1:40001");
    h.open(SERVER_PID, 1, Role::Server, local, peer);
    h.data(
        SERVER_PID,
        1,
        Role::Server,
        Direction::Ingress,
        CLIENT_HELLO,
    );
    h.data(SERVER_PID, 1, Role::Server, Direction::Egress, SERVER_HELLO);
    h.data(SERVER_PID, 1, Role::Server, Direction::Ingress, APP_DATA);
    h.plain(SERVER_PID, 1, Role::Server, Direction::Ingress, GET);
    h.data(SERVER_PID, 1, Role::Server, Direction::Egress, APP_DATA);
    h.plain(SERVER_PID, 1, Role::Server, Direction::Egress, OK);
    h.data(SERVER_PID, 1, Role::Server, Direction::Ingress, APP_DATA);
    let spans = h.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = spans[0];
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(str_attr(span, "url.scheme"), Some("https"));
    assert_eq!(str_attr(span, "url.path"), Some("/secure/items"));
    assert_eq!(int_attr(span, "http.response.status_code"), Some(200));
    let http = h.pipeline.http_stats();
    assert_eq!(http.desyncs, 0, "{http:?}");
    assert_eq!(http.bytes_skipped, 0, "{http:?}");
    let tls = h.pipeline.tls_stats();
    assert_eq!(tls.ciphertext_connections, 1);
    assert_eq!(tls.plaintext_connections, 1);
    assert_eq!(tls.ciphertext_records_skipped, 5);
    assert_eq!(tls.plaintext_records, 2);
    assert_eq!(tls.switched_after_framing, 0);
}

/// Client and server ends of one TLS connection on this host: the CLIENT span's url.full and
/// url.scheme say https, and the SERVER span is its child (pairing by socket, not bytes); the
/// client's traceparent (sent encrypted) is adopted. Records interleave as the reorder window
/// releases them, requests split across plaintext records, keep-alive.
#[test]
fn client_and_server_ends_pair_across_tls_with_keep_alive() {
    let mut h = Harness::new(
        "tls-pair",
        &[(SERVER_PID, "tls-server"), (CLIENT_PID, "tls-client")],
    );
    let (server, client) = ("127.0.0.1:8443", "127.0.0.1:40002");
    h.open(CLIENT_PID, 7, Role::Client, client, server);
    h.open(SERVER_PID, 8, Role::Server, server, client);
    h.data(CLIENT_PID, 7, Role::Client, Direction::Egress, CLIENT_HELLO);
    h.data(
        SERVER_PID,
        8,
        Role::Server,
        Direction::Ingress,
        CLIENT_HELLO,
    );
    h.data(SERVER_PID, 8, Role::Server, Direction::Egress, SERVER_HELLO);
    h.data(
        CLIENT_PID,
        7,
        Role::Client,
        Direction::Ingress,
        SERVER_HELLO,
    );
    for i in 0..3 {
        let request = format!("GET /r/{i} HTTP/1.1\r\nHost: localhost:8443\r\n\r\n");
        let (head, tail) = request.as_bytes().split_at(10);
        h.plain(
            CLIENT_PID,
            7,
            Role::Client,
            Direction::Egress,
            request.as_bytes(),
        );
        h.data(CLIENT_PID, 7, Role::Client, Direction::Egress, APP_DATA);
        h.data(SERVER_PID, 8, Role::Server, Direction::Ingress, APP_DATA);
        h.plain(SERVER_PID, 8, Role::Server, Direction::Ingress, head);
        h.plain(SERVER_PID, 8, Role::Server, Direction::Ingress, tail);
        h.plain(SERVER_PID, 8, Role::Server, Direction::Egress, OK);
        h.data(SERVER_PID, 8, Role::Server, Direction::Egress, APP_DATA);
        h.data(CLIENT_PID, 7, Role::Client, Direction::Ingress, APP_DATA);
        h.plain(CLIENT_PID, 7, Role::Client, Direction::Ingress, OK);
    }
    let spans = h.spans();
    assert_eq!(spans.len(), 6, "{spans:?}");
    let clients: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .collect();
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server)
        .collect();
    assert_eq!((clients.len(), servers.len()), (3, 3));
    for (i, (c, s)) in clients.iter().zip(&servers).enumerate() {
        assert_eq!(
            str_attr(c, "url.full"),
            Some(format!("https://localhost:8443/r/{i}").as_str())
        );
        assert_eq!(str_attr(c, "url.scheme"), Some("https"));
        assert_eq!(str_attr(s, "url.scheme"), Some("https"));
        assert_eq!(str_attr(s, "url.path"), Some(format!("/r/{i}").as_str()));
        assert_eq!(s.trace_id, c.trace_id);
        assert_eq!(
            s.parent_span_id,
            Some(c.span_id),
            "server {i} is the client's child"
        );
    }
    assert_eq!(h.pipeline.http_stats().desyncs, 0);
}

/// A traceparent inside the plaintext is adopted (the encrypted request carried it).
#[test]
fn a_traceparent_in_the_plaintext_is_adopted() {
    let mut h = Harness::new(
        "tls-traceparent",
        &[(SERVER_PID, "tls-server"), (CLIENT_PID, "tls-client")],
    );
    h.open(
        SERVER_PID,
        3,
        Role::Server,
        "127.0.0.1:8443",
        "10.0.0.9:5000",
    );
    h.data(
        SERVER_PID,
        3,
        Role::Server,
        Direction::Ingress,
        CLIENT_HELLO,
    );
    let request = b"GET / HTTP/1.1\r\nHost: x\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
    h.plain(SERVER_PID, 3, Role::Server, Direction::Ingress, request);
    h.plain(SERVER_PID, 3, Role::Server, Direction::Egress, OK);
    let spans = h.spans();
    assert_eq!(spans.len(), 1);
    let hex: String = spans[0]
        .trace_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, "0af7651916cd43dd8448eb211c80319c");
}

/// A large response as the kernel sends it: a captured prefix and a gap (true_len beyond the
/// capture) across several plaintext records; framing keeps its place and the next request on
/// the connection is still a span.
#[test]
fn plaintext_gaps_keep_the_framer_in_place() {
    let mut h = Harness::new(
        "tls-gaps",
        &[(SERVER_PID, "tls-server"), (CLIENT_PID, "tls-client")],
    );
    h.open(
        SERVER_PID,
        4,
        Role::Server,
        "127.0.0.1:8443",
        "127.0.0.1:40004",
    );
    h.data(
        SERVER_PID,
        4,
        Role::Server,
        Direction::Ingress,
        CLIENT_HELLO,
    );
    h.plain(SERVER_PID, 4, Role::Server, Direction::Ingress, GET);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let body_first = 16_384 - head.len() as u32;
    h.record(
        SERVER_PID,
        4,
        Role::Server,
        Direction::Egress,
        head,
        head.len() as u32 + body_first,
        true,
        false,
    );
    h.record(
        SERVER_PID,
        4,
        Role::Server,
        Direction::Egress,
        b"",
        100_000 - body_first,
        true,
        false,
    );
    h.plain(SERVER_PID, 4, Role::Server, Direction::Ingress, GET);
    h.plain(SERVER_PID, 4, Role::Server, Direction::Egress, OK);
    let spans = h.spans();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(h.pipeline.http_stats().desyncs, 0);
}

/// Records lost at the start: the first captured socket bytes are ciphertext that is no TLS
/// record header, framed as garbage; the first plaintext record starts a fresh framer and the
/// request numbering restarts without stealing an identity.
#[test]
fn ciphertext_framed_before_plaintext_is_discarded_at_the_switch() {
    let mut h = Harness::new(
        "tls-switch",
        &[(SERVER_PID, "tls-server"), (CLIENT_PID, "tls-client")],
    );
    h.open(
        SERVER_PID,
        5,
        Role::Server,
        "127.0.0.1:8443",
        "127.0.0.1:40005",
    );
    h.record(
        SERVER_PID,
        5,
        Role::Server,
        Direction::Ingress,
        &[0x8e, 0x21, 0x77, 0x05, 0x99],
        5,
        false,
        true,
    );
    h.plain(SERVER_PID, 5, Role::Server, Direction::Ingress, GET);
    h.plain(SERVER_PID, 5, Role::Server, Direction::Egress, OK);
    h.data(SERVER_PID, 5, Role::Server, Direction::Egress, APP_DATA);
    let spans = h.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(str_attr(spans[0], "url.scheme"), Some("https"));
    let tls = h.pipeline.tls_stats();
    assert_eq!(tls.switched_after_framing, 1);
    assert_eq!(tls.ciphertext_records_skipped, 1);
}

/// ALPN h2: the plaintext starts with the client preface: HTTP/2 framing, spans https.
#[test]
fn http2_plaintext_after_alpn_is_framed_as_http2() {
    let mut h = Harness::new(
        "tls-h2",
        &[(SERVER_PID, "tls-server"), (CLIENT_PID, "tls-client")],
    );
    h.open(
        SERVER_PID,
        9,
        Role::Server,
        "127.0.0.1:8443",
        "127.0.0.1:40009",
    );
    h.data(
        SERVER_PID,
        9,
        Role::Server,
        Direction::Ingress,
        CLIENT_HELLO,
    );
    let mut request = PREFACE.to_vec();
    request.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
    // HEADERS (END_STREAM | END_HEADERS) with literal fields, no Huffman.
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/h2"),
        (":authority", "x"),
    ] {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let len = block.len() as u32;
    request.extend([
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0x1,
        0x5,
        0,
        0,
        0,
        1,
    ]);
    request.extend_from_slice(&block);
    h.plain(SERVER_PID, 9, Role::Server, Direction::Ingress, &request);
    let mut response = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let status = [
        0x00, 7, b':', b's', b't', b'a', b't', b'u', b's', 3, b'2', b'0', b'4',
    ];
    response.extend([0, 0, status.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    response.extend_from_slice(&status);
    h.plain(SERVER_PID, 9, Role::Server, Direction::Egress, &response);
    let spans = h.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(str_attr(spans[0], "url.scheme"), Some("https"));
    assert_eq!(str_attr(spans[0], "url.path"), Some("/h2"));
    assert_eq!(int_attr(spans[0], "http.response.status_code"), Some(204));
}
