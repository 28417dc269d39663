//! The pipeline on HTTP/2 bytes (wire layer, exchange layer, linker, spans together): gRPC calls
//! become RPC spans, interleaved streams keep their own attributes, and the same-host client and
//! server ends of one connection pair by stream id.

use super::test_harness::{HOST_NETNS, Harness, fake_process, str_attr};
use super::*;
use crate::model::{AttrValue, Direction, SpanKind, SpanStatus};
use crate::protocols::http2::PREFACE;

const SERVER_PID: u32 = 5100;
const CLIENT_PID: u32 = 5200;

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block of literal fields without indexing (new names, no Huffman).
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn request(stream_id: u32, method: &str) -> Vec<u8> {
    let path = format!("/helloworld.Greeter/{method}");
    let mut out = frame(
        HEADERS,
        END_HEADERS,
        stream_id,
        &block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", &path),
            (":authority", "127.0.0.1:50051"),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-python/1.85"),
        ]),
    );
    out.extend(frame(DATA, END_STREAM, stream_id, &[0, 0, 0, 0, 0]));
    out
}

fn response(stream_id: u32, grpc_status: &str) -> Vec<u8> {
    let mut out = frame(
        HEADERS,
        END_HEADERS,
        stream_id,
        &block(&[(":status", "200"), ("content-type", "application/grpc")]),
    );
    out.extend(frame(DATA, 0, stream_id, &[0, 0, 0, 0, 2, b'o', b'k']));
    out.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream_id,
        &block(&[
            ("grpc-status", grpc_status),
            ("grpc-message", "secret detail"),
        ]),
    ));
    out
}

/// A gRPC server's connection from its first bytes: one RPC span per call, named by the
/// method, with the status NAME from the trailers and nothing of grpc-message.
#[test]
fn a_grpc_server_connection_gives_rpc_spans() {
    let mut h = Harness::new(
        "h2-server",
        &[
            (SERVER_PID, "greeter-server"),
            (CLIENT_PID, "greeter-client"),
        ],
    );
    let srv = |h: &mut Harness, dir, bytes: &[u8]| h.data(SERVER_PID, 1, Role::Server, dir, bytes);
    h.open(
        SERVER_PID,
        1,
        Role::Server,
        "127.0.0.1:50051",
        "127.0.0.1:40000",
    );
    let mut client_flight = PREFACE.to_vec();
    client_flight.extend(frame(SETTINGS, 0, 0, &[]));
    client_flight.extend(request(1, "SayHello"));
    client_flight.extend(request(3, "SayHello_missing"));
    srv(&mut h, Direction::Ingress, &client_flight);
    let mut server_flight = frame(SETTINGS, 0, 0, &[]);
    server_flight.extend(response(3, "5"));
    srv(&mut h, Direction::Egress, &server_flight);
    srv(&mut h, Direction::Egress, &response(1, "0"));
    // A third call the client abandons.
    srv(&mut h, Direction::Ingress, &request(5, "Slow"));
    srv(
        &mut h,
        Direction::Ingress,
        &frame(RST_STREAM, 0, 5, &8u32.to_be_bytes()),
    );
    let spans = h.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "helloworld.Greeter/SayHello_missing",
            "helloworld.Greeter/SayHello",
            "helloworld.Greeter/Slow"
        ]
    );
    let codes: Vec<Option<&str>> = spans
        .iter()
        .map(|s| str_attr(s, "rpc.response.status_code"))
        .collect();
    assert_eq!(codes, vec![Some("NOT_FOUND"), Some("OK"), None]);
    assert!(spans.iter().all(|s| s.kind == SpanKind::Server));
    // NOT_FOUND is not the server's fault; the abandoned call is cancelled.
    assert_eq!(spans[0].status, SpanStatus::Unset);
    assert_eq!(str_attr(spans[2], "error.type"), Some("cancelled"));
    assert_eq!(str_attr(spans[1], "server.address"), Some("127.0.0.1"));
    for span in &spans {
        assert!(
            span.attributes.iter().all(|a| match &a.value {
                AttrValue::Str(s) => !s.contains("secret"),
                _ => true,
            }),
            "grpc-message exported: {:?}",
            span.attributes
        );
    }
    assert_eq!(h.pipeline.http2_stats().exchanges, 3);
    assert_eq!(h.pipeline.http2_stats().streams_reset, 1);
    assert_eq!(h.out[0].resource.service_name, "greeter-server");
}

/// Both ends of one connection traced on this host: each SERVER span is the child of the
/// CLIENT span of the same stream id, whatever order the calls complete in.
#[test]
fn same_host_ends_pair_by_stream_id() {
    let mut h = Harness::new(
        "h2-pair",
        &[
            (SERVER_PID, "greeter-server"),
            (CLIENT_PID, "greeter-client"),
        ],
    );
    h.open(
        CLIENT_PID,
        10,
        Role::Client,
        "127.0.0.1:40000",
        "127.0.0.1:50051",
    );
    h.open(
        SERVER_PID,
        11,
        Role::Server,
        "127.0.0.1:50051",
        "127.0.0.1:40000",
    );
    let mut flight = PREFACE.to_vec();
    flight.extend(frame(SETTINGS, 0, 0, &[]));
    for (id, method) in [(1, "A"), (3, "B"), (5, "C")] {
        flight.extend(request(id, method));
    }
    h.data(CLIENT_PID, 10, Role::Client, Direction::Egress, &flight);
    h.data(SERVER_PID, 11, Role::Server, Direction::Ingress, &flight);
    let mut answers = frame(SETTINGS, 0, 0, &[]);
    for id in [5, 1, 3] {
        answers.extend(response(id, "0"));
    }
    h.data(SERVER_PID, 11, Role::Server, Direction::Egress, &answers);
    h.data(CLIENT_PID, 10, Role::Client, Direction::Ingress, &answers);
    let spans = h.spans();
    assert_eq!(spans.len(), 6);
    for method in ["A", "B", "C"] {
        let name = format!("helloworld.Greeter/{method}");
        let of = |kind| {
            spans
                .iter()
                .find(|s| s.kind == kind && s.name == name.as_str())
                .copied()
                .expect("span")
        };
        let (server, client) = (of(SpanKind::Server), of(SpanKind::Client));
        assert_eq!(server.parent_span_id, Some(client.span_id), "{method}");
        assert_eq!(server.trace_id, client.trace_id, "{method}");
        assert_eq!(client.parent_span_id, None);
    }
    assert_eq!(h.pipeline.linker_stats().by_connection_pair, 3);
}

/// Two pods on one host each have their own loopback: a client in one namespace and a server in
/// another with the same loopback 4-tuple are not the two ends of one connection, and a
/// server whose namespace is unknown pairs with nothing (counted). Before the fix both paired.
#[test]
fn loopback_tuples_pair_only_within_one_network_namespace() {
    const OTHER_POD_PID: u32 = 5300;
    const UNKNOWN_NS_PID: u32 = 5400;
    let mut h = Harness::new(
        "h2-netns",
        &[
            (SERVER_PID, "greeter-server"),
            (CLIENT_PID, "greeter-client"),
        ],
    );
    fake_process(
        &h.root,
        OTHER_POD_PID,
        "other-pod",
        100,
        Some(HOST_NETNS + 7),
    );
    fake_process(&h.root, UNKNOWN_NS_PID, "no-ns", 100, None);
    h.open(
        CLIENT_PID,
        20,
        Role::Client,
        "127.0.0.1:40000",
        "127.0.0.1:50051",
    );
    let mut flight = PREFACE.to_vec();
    flight.extend(frame(SETTINGS, 0, 0, &[]));
    flight.extend(request(1, "A"));
    h.data(CLIENT_PID, 20, Role::Client, Direction::Egress, &flight);
    for (pid, conn_id) in [(OTHER_POD_PID, 21), (UNKNOWN_NS_PID, 22)] {
        h.open(
            pid,
            conn_id,
            Role::Server,
            "127.0.0.1:50051",
            "127.0.0.1:40000",
        );
        h.data(pid, conn_id, Role::Server, Direction::Ingress, &flight);
        let mut answer = frame(SETTINGS, 0, 0, &[]);
        answer.extend(response(1, "0"));
        h.data(pid, conn_id, Role::Server, Direction::Egress, &answer);
    }
    let spans = h.spans();
    assert_eq!(spans.len(), 2, "two SERVER spans");
    for span in &spans {
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.parent_span_id, None, "paired across namespaces");
    }
    assert_eq!(h.pipeline.linker_stats().by_connection_pair, 0);
    assert_eq!(h.pipeline.linker_stats().pair_netns_unknown, 1);
    // The same tuple within the client's namespace does pair.
    h.open(
        SERVER_PID,
        23,
        Role::Server,
        "127.0.0.1:50051",
        "127.0.0.1:40000",
    );
    h.data(SERVER_PID, 23, Role::Server, Direction::Ingress, &flight);
    let mut answer = frame(SETTINGS, 0, 0, &[]);
    answer.extend(response(1, "0"));
    h.data(SERVER_PID, 23, Role::Server, Direction::Egress, &answer);
    assert_eq!(h.pipeline.linker_stats().by_connection_pair, 1);
}

/// A connection adopted by sniffing whose addresses `/proc` could not give, under a port
/// filter: the filter cannot admit its exchanges. Before the fix they vanished with nothing
/// counted and the identity the linker gave their request head stayed pending forever.
#[test]
fn exchanges_a_port_filter_cannot_judge_are_counted_and_release_their_identity() {
    let mut h = Harness::new(
        "h2-ports-unknown",
        &[
            (SERVER_PID, "greeter-server"),
            (CLIENT_PID, "greeter-client"),
        ],
    );
    h.pipeline.opts.ports = vec![50051];
    let header = h.header(SERVER_PID, 9);
    h.pipeline.on_event(
        KernelEvent::ConnOpen {
            header,
            role: None,
            local: None,
            peer: None,
            netns: None,
        },
        &mut h.out,
    );
    let data = |h: &mut Harness, direction, bytes: &[u8]| {
        let header = h.header(SERVER_PID, 9);
        h.pipeline.on_event(
            KernelEvent::Data {
                header,
                direction,
                role: None,
                true_len: bytes.len() as u32,
                syscall_ns: 0,
                loss_before: false,
                tls: false,
                payload: bytes,
            },
            &mut h.out,
        );
    };
    let mut client_flight = PREFACE.to_vec();
    client_flight.extend(frame(SETTINGS, 0, 0, &[]));
    client_flight.extend(request(1, "SayHello"));
    data(&mut h, Direction::Ingress, &client_flight);
    assert_eq!(
        h.pipeline.linker.pending(),
        1,
        "the head was given an identity"
    );
    data(&mut h, Direction::Egress, &response(1, "0"));
    assert!(h.spans().is_empty());
    assert_eq!(h.pipeline.http2_stats().exchanges, 1);
    assert_eq!(h.pipeline.stats().exchanges_ports_unknown, 1);
    assert_eq!(h.pipeline.linker.pending(), 0, "identity released");
}

/// The kernel names a connection's network namespace in its open record: a client whose `/proc`
/// is gone (a short-lived curl) pairs with the server in its namespace, and the kernel's name
/// wins over `/proc`'s (a server whose `/proc` says another namespace still pairs when the
/// kernel says they share one; one that the kernel puts elsewhere does not).
#[test]
fn the_namespace_the_kernel_names_pairs_a_client_without_proc() {
    const GONE_PID: u32 = 5500;
    const OTHER_NS: u64 = HOST_NETNS + 9;
    let mut h = Harness::new(
        "h2-kernel-netns",
        &[
            (SERVER_PID, "greeter-server"),
            (CLIENT_PID, "greeter-client"),
        ],
    );
    let flight = || {
        let mut flight = PREFACE.to_vec();
        flight.extend(frame(SETTINGS, 0, 0, &[]));
        flight.extend(request(1, "A"));
        flight
    };
    let answer = || {
        let mut answer = frame(SETTINGS, 0, 0, &[]);
        answer.extend(response(1, "0"));
        answer
    };
    // No /proc entry for the client at all.
    h.open_in(
        GONE_PID,
        30,
        Role::Client,
        "127.0.0.1:40000",
        "127.0.0.1:50051",
        Some(OTHER_NS),
    );
    h.data(GONE_PID, 30, Role::Client, Direction::Egress, &flight());
    // The same tuple in the host namespace, as the kernel names it: no pair across.
    h.open_in(
        SERVER_PID,
        31,
        Role::Server,
        "127.0.0.1:50051",
        "127.0.0.1:40000",
        Some(HOST_NETNS),
    );
    h.data(SERVER_PID, 31, Role::Server, Direction::Ingress, &flight());
    h.data(SERVER_PID, 31, Role::Server, Direction::Egress, &answer());
    assert_eq!(h.pipeline.linker_stats().by_connection_pair, 0);
    // The server's /proc says the host namespace; the kernel says the client's: they pair.
    h.open_in(
        SERVER_PID,
        32,
        Role::Server,
        "127.0.0.1:50051",
        "127.0.0.1:40000",
        Some(OTHER_NS),
    );
    h.data(SERVER_PID, 32, Role::Server, Direction::Ingress, &flight());
    h.data(SERVER_PID, 32, Role::Server, Direction::Egress, &answer());
    assert_eq!(h.pipeline.linker_stats().by_connection_pair, 1);
    assert_eq!(h.pipeline.linker_stats().pair_netns_unknown, 0);
    let stats = h.pipeline.stats();
    assert_eq!((stats.netns_from_kernel, stats.netns_from_proc), (3, 0));
}
