//! Byte-fixture tests of framing and pairing through the public `HttpConnection` API.

use super::*;
use crate::model::{ExchangeOutcome, HttpVersion};

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

/// Drives one connection; every record gets the next timestamp (10, 20, 30, ...).
struct Harness {
    conn: HttpConnection,
    out: Vec<Exchange>,
    ts: u64,
}

impl Harness {
    /// Default limits, except that response headers are kept (tests identify responses by
    /// their `X-Id`).
    fn new(role: Option<Role>) -> Self {
        let limits = HttpLimits {
            max_response_headers: HttpLimits::default().max_headers,
            ..HttpLimits::default()
        };
        Harness::with_limits(role, limits)
    }

    fn with_limits(role: Option<Role>, limits: HttpLimits) -> Self {
        Harness {
            conn: HttpConnection::new(role, limits),
            out: Vec::new(),
            ts: 0,
        }
    }

    fn next_ts(&mut self) -> u64 {
        self.ts += 10;
        self.ts
    }

    /// A fully captured record; returns its timestamp.
    fn send(&mut self, dir: Direction, bytes: &[u8], tid: u32) -> u64 {
        self.send_truncated(dir, bytes, bytes.len(), tid)
    }

    /// A record whose true length is `true_len` but only `bytes` were captured.
    fn send_truncated(&mut self, dir: Direction, bytes: &[u8], true_len: usize, tid: u32) -> u64 {
        let ts = self.next_ts();
        let true_len = u32::try_from(true_len).expect("test record length fits u32");
        self.conn
            .on_record(dir, bytes, true_len, tid, ts, &mut self.out);
        ts
    }

    fn close(&mut self) -> u64 {
        let ts = self.next_ts();
        self.conn.on_close(ts, &mut self.out);
        ts
    }

    fn expire(&mut self) -> u64 {
        let ts = self.next_ts();
        self.conn.on_expire(ts, &mut self.out);
        ts
    }

    fn take(&mut self) -> Vec<Exchange> {
        check_exchanges(&self.out);
        std::mem::take(&mut self.out)
    }

    fn stats(&self) -> &HttpStats {
        self.conn.stats()
    }
}

fn header<'a>(headers: &'a [crate::model::Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| &h.value[..])
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t/1\r\n\r\n").into_bytes()
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn ok_with_id(id: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nX-Id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn simple_server_exchange_has_every_field() {
    let mut h = Harness::new(Some(Role::Server));
    let t_req = h.send(IN, &get("/users?id=7"), 11);
    let t_resp = h.send(OUT, &ok("hello"), 12);
    let out = h.take();
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(e.request.method, "GET");
    assert_eq!(e.request.target, "/users?id=7");
    assert_eq!(e.request.version, HttpVersion::Http11);
    assert_eq!(
        header(&e.request.headers, "host"),
        Some(&b"example.test"[..])
    );
    assert_eq!(e.request.body_len, 0);
    let response = e.response.as_ref().expect("response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body_len, 5);
    assert_eq!(e.outcome, ExchangeOutcome::Complete);
    assert_eq!(
        (e.start_ns, e.request_end_ns, e.end_ns),
        (t_req, t_req, t_resp)
    );
    assert_eq!((e.request_tid, e.response_tid), (11, Some(12)));
    assert_eq!(e.sequence, 0);
    assert_eq!(h.stats().messages_parsed, 2);
    assert_eq!(h.stats().exchanges, 1);
    assert_eq!(h.conn.buffered_bytes(), 0);
}

#[test]
fn client_role_pairs_egress_requests_with_ingress_responses() {
    let mut h = Harness::new(Some(Role::Client));
    h.send(OUT, &get("/a"), 1);
    h.send(IN, &ok("x"), 1);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/a");
    // A request arriving on the response direction is not taken as a request.
    h.send(IN, &get("/wrong-way"), 1);
    assert!(h.take().is_empty());
    assert_eq!(h.conn.pending_requests(), 0);
}

/// A request with a body and a chunked response, split in two records each at every offset.
#[test]
fn request_and_response_split_at_every_offset() {
    let request = b"POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde";
    let response =
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    let response_body = response.len()
        - response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(0)
        - 4;
    for i in 0..=request.len() {
        for j in 0..=response.len() {
            let mut h = Harness::new(Some(Role::Server));
            let (r1, r2) = request.split_at(i);
            let (s1, s2) = response.split_at(j);
            let t1 = h.send(IN, r1, 1);
            let t2 = h.send(IN, r2, 2);
            let t3 = h.send(OUT, s1, 3);
            let t4 = h.send(OUT, s2, 4);
            let out = h.take();
            assert_eq!(out.len(), 1, "split {i}/{j}");
            let e = &out[0];
            assert_eq!(e.request.target, "/submit", "split {i}/{j}");
            assert_eq!(e.request.body_len, 5, "split {i}/{j}");
            let resp = e.response.as_ref().expect("response");
            assert_eq!(
                (resp.status, resp.body_len),
                (201, response_body as u64),
                "split {i}/{j}"
            );
            assert_eq!(e.start_ns, if i > 0 { t1 } else { t2 }, "split {i}/{j}");
            assert_eq!(
                e.request_end_ns,
                if i < request.len() { t2 } else { t1 },
                "split {i}/{j}"
            );
            assert_eq!(
                e.end_ns,
                if j < response.len() { t4 } else { t3 },
                "split {i}/{j}"
            );
            assert_eq!(e.request_tid, if i > 0 { 1 } else { 2 }, "split {i}/{j}");
            assert_eq!(
                e.response_tid,
                Some(if j > 0 { 3 } else { 4 }),
                "split {i}/{j}"
            );
            assert_eq!(h.stats().desyncs, 0, "split {i}/{j}");
            assert!(h.conn.buffered_bytes() <= request.len(), "split {i}/{j}");
        }
    }
}

#[test]
fn one_byte_records_parse_like_whole_ones() {
    let mut h = Harness::new(Some(Role::Server));
    let request = concat(&[&get("/one"), &get("/two")]);
    for b in &request {
        h.send(IN, std::slice::from_ref(b), 1);
    }
    let responses = concat(&[&ok("1"), &ok("22")]);
    for b in &responses {
        h.send(OUT, std::slice::from_ref(b), 2);
    }
    let out = h.take();
    let targets: Vec<_> = out.iter().map(|e| e.request.target.as_str()).collect();
    assert_eq!(targets, ["/one", "/two"]);
    let bodies: Vec<_> = out
        .iter()
        .map(|e| e.response.as_ref().map(|r| r.body_len))
        .collect();
    assert_eq!(bodies, [Some(1), Some(2)]);
    assert_eq!(h.stats().desyncs, 0);
}

#[test]
fn several_messages_in_one_record() {
    let mut h = Harness::new(Some(Role::Server));
    let t_req = h.send(IN, &concat(&[&get("/1"), &get("/2"), &get("/3")]), 1);
    assert_eq!(h.conn.pending_requests(), 3);
    let t_resp = h.send(
        OUT,
        &concat(&[
            &ok_with_id("1", "a"),
            &ok_with_id("2", "bb"),
            &ok_with_id("3", ""),
        ]),
        2,
    );
    let out = h.take();
    assert_eq!(out.len(), 3);
    for (n, e) in out.iter().enumerate() {
        assert_eq!(e.sequence, n as u64);
        assert_eq!(e.request.target, format!("/{}", n + 1));
        let resp = e.response.as_ref().expect("response");
        assert_eq!(
            header(&resp.headers, "x-id"),
            Some(format!("{}", n + 1).as_bytes())
        );
        assert_eq!((e.start_ns, e.end_ns), (t_req, t_resp));
    }
}

#[test]
fn pipelining_three_deep_pairs_fifo() {
    let mut h = Harness::new(Some(Role::Server));
    let starts: Vec<u64> = ["/a", "/b", "/c"]
        .iter()
        .map(|p| h.send(IN, &get(p), 1))
        .collect();
    assert_eq!(h.conn.pending_requests(), 3);
    let ends: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|id| h.send(OUT, &ok_with_id(id, id), 2))
        .collect();
    let out = h.take();
    assert_eq!(out.len(), 3);
    for (n, e) in out.iter().enumerate() {
        let resp = e.response.as_ref().expect("response");
        assert_eq!(
            e.request.target.trim_start_matches('/').as_bytes(),
            header(&resp.headers, "x-id").unwrap_or_default()
        );
        assert_eq!(
            (e.start_ns, e.end_ns, e.sequence),
            (starts[n], ends[n], n as u64)
        );
    }
}

#[test]
fn responses_wait_for_exchange_order_and_complete_request_bodies() {
    // The server answers before the request body is fully sent (e.g. an early 413).
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, b"PUT /big HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc", 1);
    h.send(
        OUT,
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
        2,
    );
    assert!(h.take().is_empty(), "request still incomplete");
    let t_end = h.send(IN, b"def", 1);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.body_len, 6);
    assert_eq!(out[0].request_end_ns, t_end);
    assert_eq!(out[0].response.as_ref().map(|r| r.status), Some(413));
}

#[test]
fn chunked_request_with_extensions_trailers_and_split_size_lines() {
    let head = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = b"a;ext=1;q=\"x\"\r\n0123456789\r\n1F \r\nabcdefghijklmnopqrstuvwxyz01234\r\n0;last\r\nChecksum: 9\r\nX: y\r\n\r\n";
    for split in 0..=body.len() {
        let mut h = Harness::new(Some(Role::Server));
        let (b1, b2) = body.split_at(split);
        h.send(IN, &concat(&[head, b1]), 1);
        let t2 = h.send(IN, b2, 1);
        h.send(IN, &get("/after"), 1);
        h.send(OUT, &ok(""), 2);
        h.send(OUT, &ok(""), 2);
        let out = h.take();
        assert_eq!(out.len(), 2, "split {split}");
        assert_eq!(out[0].request.body_len, body.len() as u64, "split {split}");
        if split < body.len() {
            assert_eq!(out[0].request_end_ns, t2, "split {split}");
        }
        assert_eq!(out[1].request.target, "/after", "split {split}");
        assert_eq!(h.stats().desyncs, 0, "split {split}");
    }
}

#[test]
fn garbage_inside_chunked_body_desyncs_and_recovers() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, &get("/x"), 1);
    h.send(
        OUT,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz-not-hex\r\n",
        2,
    );
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, ExchangeOutcome::StreamDesync);
    assert_eq!(out[0].response.as_ref().map(|r| r.status), Some(200));
    assert_eq!(h.stats().desyncs, 1);
    h.send(IN, &get("/y"), 1);
    h.send(OUT, &ok("fine"), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].request.target.as_str(), out[0].outcome),
        ("/y", ExchangeOutcome::Complete)
    );
}

#[test]
fn content_length_bodies_on_both_sides() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(
        IN,
        b"POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello",
        1,
    );
    let t2 = h.send(IN, b" world", 1);
    h.send(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok", 2);
    let t4 = h.send(OUT, b"!!", 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.body_len, 11);
    assert_eq!(out[0].request_end_ns, t2);
    assert_eq!(out[0].response.as_ref().map(|r| r.body_len), Some(4));
    assert_eq!(out[0].end_ns, t4);
}

#[test]
fn close_delimited_response_ends_at_close() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, &get("/stream"), 1);
    h.send(
        OUT,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome ",
        2,
    );
    h.send_truncated(OUT, b"more", 1000, 2);
    assert!(h.take().is_empty());
    let t_close = h.close();
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, ExchangeOutcome::Complete);
    assert_eq!(out[0].end_ns, t_close);
    assert_eq!(out[0].response.as_ref().map(|r| r.body_len), Some(5 + 1000));
}

#[test]
fn http10_response_without_length_is_close_delimited() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, b"GET /old HTTP/1.0\r\n\r\n", 1);
    h.send(OUT, b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n<html>", 2);
    h.send(OUT, b"</html>", 2);
    let t_close = h.close();
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.version, HttpVersion::Http10);
    let resp = out[0].response.as_ref().expect("response");
    assert_eq!((resp.version, resp.body_len), (HttpVersion::Http10, 13));
    assert_eq!(
        (out[0].outcome, out[0].end_ns),
        (ExchangeOutcome::Complete, t_close)
    );
}

#[test]
fn head_response_with_content_length_has_no_body() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, b"HEAD /file HTTP/1.1\r\nHost: h\r\n\r\n", 1);
    h.send(IN, &get("/next"), 1);
    h.send(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 2);
    h.send(OUT, &ok("n"), 2);
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].response.as_ref().map(|r| r.body_len), Some(0));
    assert_eq!(out[1].request.target, "/next");
    assert_eq!(out[1].response.as_ref().map(|r| r.body_len), Some(1));
}

#[test]
fn no_body_statuses_ignore_content_length() {
    for status in ["204 No Content", "304 Not Modified"] {
        let mut h = Harness::new(Some(Role::Server));
        h.send(IN, &concat(&[&get("/a"), &get("/b")]), 1);
        let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 50\r\n\r\n");
        h.send(OUT, &concat(&[resp.as_bytes(), &ok("b")]), 2);
        let out = h.take();
        assert_eq!(out.len(), 2, "{status}");
        assert_eq!(
            out[0].response.as_ref().map(|r| r.body_len),
            Some(0),
            "{status}"
        );
        assert_eq!(
            out[1].response.as_ref().map(|r| r.status),
            Some(200),
            "{status}"
        );
    }
}

#[test]
fn expect_continue_pairs_with_the_final_response() {
    let mut h = Harness::new(Some(Role::Server));
    let t_head = h.send(
        IN,
        b"POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        1,
    );
    h.send(OUT, b"HTTP/1.1 100 Continue\r\n\r\n", 7);
    assert!(h.take().is_empty(), "interim response is not final");
    let t_body = h.send(IN, b"data", 1);
    let t_final = h.send(OUT, &ok("done"), 8);
    let out = h.take();
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(e.response.as_ref().map(|r| r.status), Some(200));
    assert_eq!(e.request.body_len, 4);
    assert_eq!(
        (e.start_ns, e.request_end_ns, e.end_ns),
        (t_head, t_body, t_final)
    );
    assert_eq!(e.response_tid, Some(7));
}

#[test]
fn upgrade_completes_at_101_and_stops_parsing() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(
        IN,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        1,
    );
    let t_101 = h.send(
        OUT,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        2,
    );
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response.as_ref().map(|r| r.status), Some(101));
    assert_eq!(
        (out[0].outcome, out[0].end_ns),
        (ExchangeOutcome::Complete, t_101)
    );
    assert!(h.conn.is_stopped());
    h.send(IN, &get("/looks-like-http-but-is-a-frame"), 1);
    h.send(OUT, &ok("x"), 2);
    h.close();
    assert!(h.take().is_empty());
    assert_eq!(h.stats().upgrades, 1);
    assert_eq!(h.stats().messages_parsed, 2);
}

#[test]
fn connect_tunnel_stops_parsing() {
    let mut h = Harness::new(Some(Role::Client));
    h.send(
        OUT,
        b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n",
        1,
    );
    h.send(IN, b"HTTP/1.1 200 Connection established\r\n\r\n", 1);
    h.send(OUT, b"\x00\x00\x00\x08\x04\xd2\x16\x2f", 1);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.method, "CONNECT");
    assert!(h.conn.is_stopped());
    assert_eq!(h.stats().upgrades, 1);
}

#[test]
fn http2_preface_stops_parsing() {
    let mut h = Harness::new(None);
    h.send(OUT, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", 1);
    h.send(IN, b"\x00\x00\x00\x04\x01\x00\x00\x00\x00", 1);
    h.close();
    assert!(h.take().is_empty());
    assert!(h.conn.is_stopped());
    assert_eq!(h.stats().http2_connections, 1);
    assert_eq!(h.stats().desyncs, 0);
}

#[test]
fn gap_inside_body_keeps_sync() {
    let mut h = Harness::new(Some(Role::Server));
    let mut head = b"POST /big HTTP/1.1\r\nContent-Length: 10000\r\n\r\n".to_vec();
    let true_len = head.len() + 10_000;
    head.extend_from_slice(&[b'x'; 100]);
    let t1 = h.send_truncated(IN, &head, true_len, 1);
    let resp_head = b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n";
    let t2 = h.send_truncated(OUT, resp_head, resp_head.len() + 50_000, 2);
    h.send(IN, &get("/next"), 1);
    h.send(OUT, &ok("n"), 2);
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].request.body_len, out[0].request_end_ns),
        (10_000, t1)
    );
    assert_eq!(out[0].response.as_ref().map(|r| r.body_len), Some(50_000));
    assert_eq!(out[0].end_ns, t2);
    assert_eq!(out[1].request.target, "/next");
    assert_eq!(h.stats().desyncs, 0);
}

#[test]
fn gap_inside_chunk_data_keeps_sync() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, &get("/chunks"), 1);
    h.send(
        OUT,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        2,
    );
    // One write of a 4096-byte chunk of which only the size line and 10 bytes were captured.
    h.send_truncated(OUT, b"1000\r\n0123456789", 6 + 4096 + 2, 2);
    let t_end = h.send(OUT, b"0\r\n\r\n", 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].response.as_ref().map(|r| r.body_len),
        Some(6 + 4096 + 2 + 5)
    );
    assert_eq!(
        (out[0].outcome, out[0].end_ns),
        (ExchangeOutcome::Complete, t_end)
    );
}

#[test]
fn whole_chunked_body_in_one_truncated_write_completes() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, &get("/big"), 1);
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    // head + "2000" CRLF + 8192 data bytes + CRLF + "0" CRLF CRLF, captured up to 100 data bytes.
    let mut captured = concat(&[head, b"2000\r\n"]);
    let body_len = 6 + 0x2000 + 2 + 5;
    let true_len = head.len() + body_len;
    captured.extend_from_slice(&[b'd'; 100]);
    let t_resp = h.send_truncated(OUT, &captured, true_len, 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].outcome, out[0].end_ns),
        (ExchangeOutcome::Complete, t_resp)
    );
    assert_eq!(
        out[0].response.as_ref().map(|r| r.body_len),
        Some(body_len as u64)
    );
    // A gap that hides other chunk framing loses the body.
    h.send(IN, &get("/lossy"), 1);
    h.send_truncated(OUT, &captured, true_len + 10, 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, ExchangeOutcome::StreamDesync);
}

#[test]
fn gap_inside_head_loses_only_that_message() {
    let mut h = Harness::new(Some(Role::Server));
    let first = get("/lost");
    h.send_truncated(IN, &first[..20], first.len(), 1);
    h.send(OUT, &ok_with_id("lost", ""), 2);
    h.send(IN, &get("/kept"), 1);
    h.send(OUT, &ok_with_id("kept", "k"), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/kept");
    assert_eq!(out[0].sequence, 1, "the lost request kept its place");
    assert_eq!(
        header(&out[0].response.as_ref().expect("response").headers, "x-id"),
        Some(&b"kept"[..])
    );
    assert_eq!(h.stats().messages_lost, 1);
    assert_eq!(h.stats().unpaired_responses, 1);
}

#[test]
fn gap_inside_pipelined_heads_resyncs_on_next_start_line() {
    let mut h = Harness::new(Some(Role::Server));
    // One write: a request cut inside its head, with the rest of that write not captured.
    let first = get("/lost");
    h.send_truncated(IN, &first[..30], first.len() + 50, 1);
    // The next write arrives mid-message (the tail of something), then a full request.
    h.send(
        IN,
        &concat(&[b"tail-of-lost: header\r\n\r\n", &get("/kept")]),
        1,
    );
    h.send(
        OUT,
        &concat(&[&ok_with_id("lost", ""), &ok_with_id("kept", "")]),
        2,
    );
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/kept");
    assert_eq!(
        header(&out[0].response.as_ref().expect("response").headers, "x-id"),
        Some(&b"kept"[..])
    );
    assert!(h.stats().bytes_skipped > 0);
}

#[test]
fn response_head_gap_desyncs_its_exchange_only() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, &concat(&[&get("/a"), &get("/b")]), 1);
    let resp = ok_with_id("a", "body");
    let t_gap = h.send_truncated(OUT, &resp[..10], resp.len(), 2);
    h.send(OUT, &ok_with_id("b", ""), 2);
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].outcome, out[0].end_ns),
        (ExchangeOutcome::StreamDesync, t_gap)
    );
    assert!(out[0].response.is_none());
    assert_eq!(out[1].outcome, ExchangeOutcome::Complete);
    assert_eq!(
        header(&out[1].response.as_ref().expect("response").headers, "x-id"),
        Some(&b"b"[..])
    );
}

#[test]
fn garbage_prefix_is_skipped_and_counted() {
    let mut h = Harness::new(Some(Role::Server));
    let garbage =
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 binary junk GET without version\r\n";
    h.send(IN, &concat(&[garbage, &get("/real")]), 1);
    h.send(OUT, &ok(""), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/real");
    assert_eq!(h.stats().bytes_skipped, garbage.len() as u64);
    assert_eq!(h.stats().desyncs, 1);
}

#[test]
fn garbage_split_across_records_with_partial_candidates() {
    let mut h = Harness::new(Some(Role::Server));
    // "GET /x" at a record end looks like a start line until the next record proves otherwise.
    h.send(IN, b"junk GET /x", 1);
    h.send(IN, b"yz not-http\r\n", 1);
    h.send(IN, &get("/ok"), 1);
    h.send(OUT, &ok(""), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/ok");
    assert_eq!(h.stats().messages_lost, 0);
    assert_eq!(h.stats().bytes_skipped, 24);
}

#[test]
fn sniffed_role_inferred_from_ingress_request() {
    let mut h = Harness::new(None);
    assert_eq!(h.conn.role(), None);
    // Mid-stream adoption: the tail of an earlier response is seen first and skipped.
    h.send(OUT, &ok_with_id("old", "old body"), 2);
    assert_eq!(h.stats().unpaired_responses, 1);
    assert_eq!(h.conn.role(), None);
    h.send(IN, &get("/s"), 1);
    assert_eq!(h.conn.role(), Some(Role::Server));
    h.send(OUT, &ok("s"), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/s");
}

#[test]
fn sniffed_role_inferred_from_egress_request_mid_body() {
    let mut h = Harness::new(None);
    // Adopted in the middle of a request body: skipped until a start line.
    h.send(OUT, &concat(&[b"{\"partial\": \"json\"}", &get("/c")]), 1);
    assert_eq!(h.conn.role(), Some(Role::Client));
    h.send(IN, &ok("c"), 1);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/c");
}

#[test]
fn pending_overflow_is_counted() {
    let limits = HttpLimits {
        max_pending_requests: 2,
        ..HttpLimits::default()
    };
    let mut h = Harness::with_limits(Some(Role::Server), limits);
    for path in ["/1", "/2", "/3", "/4"] {
        h.send(IN, &get(path), 1);
    }
    assert_eq!(h.stats().pending_overflow, 2);
    assert_eq!(h.conn.pending_requests(), 2);
    let t_close = h.close();
    let out = h.take();
    let summary: Vec<_> = out
        .iter()
        .map(|e| (e.request.target.as_str(), e.sequence, e.outcome))
        .collect();
    assert_eq!(
        summary,
        [
            ("/1", 0, ExchangeOutcome::ConnectionClosed),
            ("/2", 1, ExchangeOutcome::ConnectionClosed)
        ]
    );
    assert!(
        out.iter()
            .all(|e| e.end_ns == t_close && e.response.is_none())
    );
}

#[test]
fn close_without_response_reports_connection_closed() {
    let mut h = Harness::new(Some(Role::Client));
    let t_req = h.send(
        OUT,
        b"POST /slow HTTP/1.1\r\nContent-Length: 3\r\n\r\nab",
        1,
    );
    let t_close = h.close();
    let out = h.take();
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(
        (e.outcome, e.end_ns, e.response_tid),
        (ExchangeOutcome::ConnectionClosed, t_close, None)
    );
    assert_eq!((e.request.body_len, e.request_end_ns), (2, t_req));
    assert!(e.response.is_none());
}

#[test]
fn expiry_with_incomplete_response_reports_expired() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, &get("/long-poll"), 1);
    h.send(
        OUT,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        5,
    );
    let t_exp = h.expire();
    let out = h.take();
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(
        (e.outcome, e.end_ns, e.response_tid),
        (ExchangeOutcome::Expired, t_exp, Some(5))
    );
    assert_eq!(
        e.response.as_ref().map(|r| (r.status, r.body_len)),
        Some((200, 10))
    );
    // The rest of the expired body is framed and dropped; the connection goes on.
    h.send(OUT, &[b'z'; 90], 5);
    h.send(IN, &get("/after"), 1);
    h.send(OUT, &ok(""), 5);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].request.target.as_str(), out[0].sequence),
        ("/after", 1)
    );
    assert_eq!(out[0].outcome, ExchangeOutcome::Complete);
}

#[test]
fn expiry_without_response() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, &get("/nothing"), 1);
    let t_exp = h.expire();
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].outcome, out[0].end_ns),
        (ExchangeOutcome::Expired, t_exp)
    );
    assert!(out[0].response.is_none());
    assert_eq!(h.conn.pending_requests(), 0);
}

#[test]
fn head_larger_than_limit_is_dropped_and_stream_recovers() {
    let mut h = Harness::new(Some(Role::Server));
    let huge = format!(
        "GET /huge HTTP/1.1\r\nCookie: {}\r\n\r\n",
        "c".repeat(20_000)
    );
    // Sent in 1 KiB writes, as a client would stream it.
    for piece in huge.as_bytes().chunks(1024) {
        h.send(IN, piece, 1);
        assert!(h.conn.buffered_bytes() <= HttpLimits::default().max_head_bytes);
    }
    h.send(IN, &get("/small"), 1);
    h.send(OUT, &ok(""), 2);
    h.send(OUT, &ok(""), 2);
    let out = h.take();
    assert_eq!(h.stats().heads_too_large, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/small");
    assert_eq!(out[0].sequence, 1);
}

#[test]
fn head_larger_than_limit_in_one_record() {
    let limits = HttpLimits {
        max_head_bytes: 256,
        ..HttpLimits::default()
    };
    let mut h = Harness::with_limits(Some(Role::Server), limits);
    let huge = format!("GET /huge HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(400));
    h.send(IN, &concat(&[huge.as_bytes(), &get("/small")]), 1);
    h.send(OUT, &concat(&[&ok(""), &ok("")]), 2);
    let out = h.take();
    assert_eq!(h.stats().heads_too_large, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/small");
}

#[test]
fn traceparent_after_large_cookie_survives() {
    let mut h = Harness::new(Some(Role::Server));
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let request = format!(
        "GET /t HTTP/1.1\r\nHost: h\r\nCookie: {}\r\ntraceparent: {traceparent}\r\n\r\n",
        "k=v; ".repeat(1300)
    );
    for piece in request.as_bytes().chunks(1500) {
        h.send(IN, piece, 1);
    }
    h.send(OUT, &ok(""), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    let headers = &out[0].request.headers;
    assert_eq!(header(headers, "traceparent"), Some(traceparent.as_bytes()));
    assert!(header(headers, "cookie").map_or(0, <[u8]>::len) >= 6000);
}

#[test]
fn header_count_and_value_limits_keep_prefixes() {
    let limits = HttpLimits {
        max_headers: 4,
        max_header_value_bytes: 8,
        ..HttpLimits::default()
    };
    let mut h = Harness::with_limits(Some(Role::Server), limits);
    let mut request = b"POST /many HTTP/1.1\r\nX-Long: 0123456789abcdef\r\n".to_vec();
    for i in 0..80 {
        request.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    request.extend_from_slice(b"Content-Length: 2\r\n\r\nhi");
    h.send(IN, &request, 1);
    h.send(OUT, &ok(""), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    let headers = &out[0].request.headers;
    assert_eq!(headers.len(), 4);
    assert_eq!(header(headers, "x-long"), Some(&b"01234567"[..]));
    assert_eq!(
        out[0].request.body_len, 2,
        "framing used the headers past the limit"
    );
}

#[test]
fn unknown_methods_and_leading_blank_lines_are_fine() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(IN, b"\r\nPROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n", 1);
    h.send(
        OUT,
        b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n",
        2,
    );
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.method, "PROPFIND");
    assert_eq!(h.stats().desyncs, 0);
}

#[test]
fn unpaired_response_on_known_role_is_framed_and_skipped() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(OUT, &ok("stale body that mentions GET / HTTP/1.1"), 2);
    h.send(IN, &get("/fresh"), 1);
    h.send(OUT, &ok(""), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/fresh");
    assert_eq!(h.stats().unpaired_responses, 1);
}

#[test]
fn invalid_content_length_desyncs() {
    let mut h = Harness::new(Some(Role::Server));
    h.send(
        IN,
        b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        1,
    );
    h.send(OUT, &ok(""), 2);
    let out = h.take();
    assert_eq!(out.len(), 1);
    assert_eq!(h.stats().desyncs, 1);
}

/// Tiny deterministic generator (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that steer random input through the interesting states.
const FRAGMENTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.0 204 No Content\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\r\n",
    b"5;x\r\nhello\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"HEAD /h HTTP/1.1\r\n\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\n",
    b"POST /p HTTP/1.0\r\nExpect: 100-continue\r\n",
];

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let limits = HttpLimits {
        max_head_bytes: 512,
        max_pending_requests: 4,
        ..HttpLimits::default()
    };
    for _ in 0..600 {
        let role = match rng.below(3) {
            0 => None,
            1 => Some(Role::Server),
            _ => Some(Role::Client),
        };
        let mut conn = HttpConnection::new(role, limits);
        let mut out = Vec::new();
        let mut ts = 0;
        for _ in 0..rng.below(40) {
            let mut record = Vec::new();
            for _ in 0..rng.below(6) {
                if rng.below(2) == 0 {
                    record.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]);
                } else {
                    let n = rng.below(300);
                    record.extend((0..n).map(|_| rng.next() as u8));
                }
            }
            let gap = if rng.below(4) == 0 {
                rng.below(5000)
            } else {
                0
            };
            let dir = if rng.below(2) == 0 { IN } else { OUT };
            ts += 1;
            let true_len = u32::try_from(record.len() + gap).unwrap_or(u32::MAX);
            conn.on_record(dir, &record, true_len, 1, ts, &mut out);
            assert!(conn.buffered_bytes() <= 2 * limits.max_head_bytes);
            if rng.below(30) == 0 {
                ts += 1;
                conn.on_expire(ts, &mut out);
            }
        }
        conn.on_close(ts + 1, &mut out);
        check_exchanges(&out);
        assert_eq!(conn.pending_requests(), 0);
    }
}

#[test]
fn random_splits_of_valid_traffic_parse_identically() {
    let mut rng = XorShift(42);
    let requests: [&[u8]; 4] = [
        &get("/1"),
        b"POST /2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        b"PUT /3 HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz",
        b"HEAD /4 HTTP/1.1\r\n\r\n",
    ];
    let responses: [&[u8]; 4] = [
        &ok("one"),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 77\r\n\r\n",
    ];
    // A response may only start once its request was sent in full.
    let request_ends: Vec<usize> = requests
        .iter()
        .scan(0, |end, r| {
            *end += r.len();
            Some(*end)
        })
        .collect();
    let response_starts: Vec<usize> = responses
        .iter()
        .scan(0, |start, r| {
            let s = *start;
            *start += r.len();
            Some(s)
        })
        .collect();
    let (requests, responses) = (requests.concat(), responses.concat());
    let reference = {
        let mut h = Harness::new(Some(Role::Server));
        h.send(IN, &requests, 1);
        h.send(OUT, &responses, 2);
        h.take()
    };
    assert_eq!(reference.len(), 4);
    for round in 0..300 {
        let mut h = Harness::new(Some(Role::Server));
        let (mut req_at, mut resp_at) = (0, 0);
        while req_at < requests.len() || resp_at < responses.len() {
            let sent = request_ends.iter().filter(|&&end| end <= req_at).count();
            let resp_limit = response_starts
                .get(sent)
                .copied()
                .unwrap_or(responses.len());
            let can_respond = resp_at < resp_limit;
            let from_requests = !can_respond || (req_at < requests.len() && rng.below(2) == 0);
            let (bytes, at, limit, dir) = if from_requests {
                (&requests, &mut req_at, requests.len(), IN)
            } else {
                (&responses, &mut resp_at, resp_limit, OUT)
            };
            let end = (*at + 1 + rng.below(40)).min(limit);
            h.send(dir, &bytes[*at..end], 1);
            *at = end;
        }
        let out = h.take();
        assert_eq!(out.len(), 4, "round {round}");
        for (a, b) in out.iter().zip(&reference) {
            assert_eq!(
                (&a.request, &a.response, a.outcome),
                (&b.request, &b.response, b.outcome)
            );
        }
        assert_eq!(h.stats().desyncs, 0);
    }
}

#[test]
fn fuzz_entry_runs_on_scripted_and_random_inputs() {
    let mut script = vec![1u8];
    for part in [&get("/f")[..], &ok("x")[..]] {
        script.push(if part.starts_with(b"GET") { 0 } else { 1 });
        script.push(part.len() as u8);
        script.push(0);
        script.extend_from_slice(part);
    }
    script.push(0xe0);
    fuzz_entry(&script);
    fuzz_entry(&[]);
    let mut rng = XorShift(7);
    for _ in 0..300 {
        let n = rng.below(2000);
        let data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        fuzz_entry(&data);
    }
}

#[test]
fn shed_mid_body_stops_parsing_instead_of_finding_requests_inside_the_body() {
    let mut h = Harness::new(Some(Role::Server));
    let inner = b"GET /inside-the-body HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/http\r\nContent-Length: {}\r\n\r\n",
        4 + inner.len()
    );
    h.send(IN, head.as_bytes(), 1);
    h.send(IN, b"--b\n", 1);
    let discarded = h.conn.shed(&mut h.out);
    assert_eq!(discarded.len(), 1, "the open POST is discarded by the shed");
    assert!(
        h.conn.is_stopped(),
        "a shed connection is not parsed until it closes"
    );
    assert_eq!(h.conn.memory_bytes(), 0);
    // The rest of the body carries a request line; the real response follows.
    h.send(IN, inner, 1);
    h.send(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1);
    h.send(IN, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n", 1);
    h.send(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1);
    h.close();
    let exchanges = h.take();
    assert!(
        exchanges.is_empty(),
        "nothing is paired after a shed: {:?}",
        exchanges
            .iter()
            .map(|e| e.request.target.clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn an_idle_keep_alive_stream_holds_no_budgeted_bytes() {
    let mut h = Harness::new(Some(Role::Server));
    // A head split over two records is buffered; the buffer is kept between messages.
    h.send(IN, b"GET / HTTP/1.1\r\nHo", 1);
    h.send(IN, b"st: x\r\n\r\n", 1);
    h.send(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1);
    assert_eq!(h.take().len(), 1);
    assert_eq!(
        h.conn.memory_bytes(),
        0,
        "retained buffer capacity is not budgeted"
    );
}

/// Header values share a per-stream arena that is reused from message to message: values of
/// exchanges still held (pipelined, or kept by the caller) are never overwritten by later heads,
/// and a head too large for the arena gets a buffer of its own.
#[test]
fn header_values_of_held_exchanges_survive_later_heads() {
    let mut h = Harness::new(Some(Role::Server));
    let request = |host: &str, agent: &str| {
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n\r\n").into_bytes()
    };
    // Two pipelined requests, then their responses.
    h.send(IN, &request("first.test", "a/1"), 1);
    h.send(IN, &request("second.test", "b/2"), 1);
    h.send(OUT, &ok("1"), 1);
    h.send(OUT, &ok("2"), 1);
    let mut held = h.take();
    // Kept by the caller while many more heads (one of them too large for the arena) arrive.
    let large = "x".repeat(4096);
    for i in 0..50 {
        let agent = if i == 25 {
            large.clone()
        } else {
            format!("c/{i}")
        };
        h.send(IN, &request(&format!("host{i}.test"), &agent), 1);
        h.send(OUT, &ok("3"), 1);
        held.extend(h.take());
    }
    assert_eq!(held.len(), 52);
    let host = |e: &Exchange| header(&e.request.headers, "host").map(<[u8]>::to_vec);
    let agent = |e: &Exchange| header(&e.request.headers, "user-agent").map(<[u8]>::to_vec);
    assert_eq!(host(&held[0]), Some(b"first.test".to_vec()));
    assert_eq!(agent(&held[0]), Some(b"a/1".to_vec()));
    assert_eq!(host(&held[1]), Some(b"second.test".to_vec()));
    assert_eq!(agent(&held[1]), Some(b"b/2".to_vec()));
    for (i, e) in held[2..].iter().enumerate() {
        assert_eq!(host(e), Some(format!("host{i}.test").into_bytes()));
        let expected = if i == 25 {
            large.clone()
        } else {
            format!("c/{i}")
        };
        assert_eq!(agent(e), Some(expected.into_bytes()));
    }
}
