//! gRPC and HTTP/2 spans from exchanges.

use super::*;
use crate::model::{
    AttrValue, ConnMeta, Header, HttpRequest, HttpResponse, HttpVersion, SpanKind, SpanRecord,
};
use crate::telemetry::ids::SpanIdentity;
use crate::telemetry::spans::{Clock, build_span, is_grpc, opt_in_has};

fn h2_request(path: &str, content_type: &str, extra: &[(&str, &str)]) -> HttpRequest {
    let mut headers = vec![
        (":scheme", "http"),
        (":authority", "greeter.local:50051"),
        ("content-type", content_type),
    ];
    headers.extend_from_slice(extra);
    HttpRequest {
        method: "POST".into(),
        target: path.to_owned().into(),
        version: HttpVersion::Http2,
        headers: headers
            .iter()
            .map(|(n, v)| Header {
                name: Text::Owned((*n).to_owned()),
                value: v.as_bytes().to_vec().into(),
            })
            .collect(),
        body_len: 0,
    }
}

fn exchange(
    request: HttpRequest,
    response: Option<(u16, Option<&str>)>,
    outcome: ExchangeOutcome,
) -> Exchange {
    Exchange {
        request,
        response: response.map(|(status, grpc)| HttpResponse {
            version: HttpVersion::Http2,
            status,
            headers: grpc
                .map(|code| Header {
                    name: Text::Static(GRPC_STATUS),
                    value: code.as_bytes().to_vec().into(),
                })
                .into_iter()
                .collect(),
            body_len: 0,
            undecoded_fields: false,
        }),
        outcome,
        start_ns: 1_000,
        request_end_ns: 1_100,
        end_ns: 3_000,
        request_tid: 1,
        response_tid: Some(1),
        sequence: 1,
    }
}

fn conn() -> ConnMeta {
    ConnMeta {
        conn_id: 1,
        pid: 4242,
        fd: 9,
        role: None,
        local: "10.0.0.1:50051".parse().ok(),
        peer: "10.0.0.2:51000".parse().ok(),
        netns: None,
        tls: false,
    }
}

fn span(exchange: &Exchange, role: Role) -> SpanRecord {
    let clock = Clock::from_offset(1_700_000_000_000_000_000);
    let conn = conn();
    let input = SpanInput {
        exchange,
        conn: &conn,
        role,
        clock: &clock,
    };
    let identity = SpanIdentity {
        span_id: [0xaa; 8],
        ..SpanIdentity::root([0xbb; 16])
    };
    build_span(&input, &identity)
}

fn attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a AttrValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| &a.value)
}

fn str_attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    match attr(span, key)? {
        AttrValue::Str(s) => Some(s.as_str()),
        _ => None,
    }
}

const GREETER: &str = "/helloworld.Greeter/SayHello";

#[test]
fn a_grpc_call_is_named_by_its_method_with_the_rpc_keys() {
    let ok = exchange(
        h2_request(GREETER, "application/grpc", &[]),
        Some((200, Some("0"))),
        ExchangeOutcome::Complete,
    );
    for role in [Role::Client, Role::Server] {
        let span = span(&ok, role);
        assert_eq!(span.name, "helloworld.Greeter/SayHello");
        assert_eq!(str_attr(&span, RPC_SYSTEM_NAME), Some("grpc"));
        assert_eq!(
            str_attr(&span, RPC_METHOD),
            Some("helloworld.Greeter/SayHello")
        );
        assert_eq!(str_attr(&span, RPC_RESPONSE_STATUS_CODE), Some("OK"));
        assert_eq!(str_attr(&span, "server.address"), Some("greeter.local"));
        assert_eq!(attr(&span, "server.port"), Some(&AttrValue::Int(50051)));
        assert_eq!(str_attr(&span, "network.peer.address"), Some("10.0.0.2"));
        assert_eq!(span.status, SpanStatus::Unset);
        assert!(attr(&span, "error.type").is_none());
        // No HTTP keys on an RPC span, and no experimental ones without rpc/dup.
        assert!(
            span.attributes
                .iter()
                .all(|a| !a.key.starts_with("http.") && !a.key.starts_with("url.")),
            "{:?}",
            span.attributes
        );
        assert!(attr(&span, RPC_SYSTEM).is_none() && attr(&span, RPC_GRPC_STATUS_CODE).is_none());
    }
    assert_eq!(span(&ok, Role::Client).kind, SpanKind::Client);
}

#[test]
fn status_codes_map_to_names_and_errors_differ_by_side() {
    for code in 0..=17u32 {
        let ex = exchange(
            h2_request(GREETER, "application/grpc+proto", &[]),
            Some((200, Some(&code.to_string()))),
            ExchangeOutcome::Complete,
        );
        let name = if code <= 16 {
            STATUS_NAMES[code as usize]
        } else {
            "_OTHER"
        };
        let client = span(&ex, Role::Client);
        assert_eq!(str_attr(&client, RPC_RESPONSE_STATUS_CODE), Some(name));
        let client_error = code != 0;
        assert_eq!(
            matches!(client.status, SpanStatus::Error { .. }),
            client_error,
            "{code}"
        );
        assert_eq!(
            str_attr(&client, "error.type"),
            client_error.then_some(name)
        );
        let server = span(&ex, Role::Server);
        let server_error = matches!(code, 2 | 4 | 12 | 13 | 14 | 15 | 17);
        assert_eq!(
            matches!(server.status, SpanStatus::Error { .. }),
            server_error,
            "{code}"
        );
        assert_eq!(
            str_attr(&server, "error.type"),
            server_error.then_some(name)
        );
    }
    assert_eq!(
        str_attr(
            &span(
                &exchange(
                    h2_request(GREETER, "application/grpc", &[]),
                    Some((200, Some("5"))),
                    ExchangeOutcome::Complete,
                ),
                Role::Client
            ),
            RPC_RESPONSE_STATUS_CODE
        ),
        Some("NOT_FOUND")
    );
}

/// A call the client abandoned (RST_STREAM CANCEL) has `error.type` `cancelled` and no status
/// code; other ends without a grpc-status never invent one either.
#[test]
fn calls_without_a_status_get_an_error_class_and_no_invented_code() {
    let cases = [
        (
            None,
            ExchangeOutcome::StreamReset {
                error_code: 8,
                by_client: true,
            },
            "cancelled",
        ),
        (
            Some((200, None)),
            ExchangeOutcome::StreamReset {
                error_code: 8,
                by_client: true,
            },
            "cancelled",
        ),
        (
            None,
            ExchangeOutcome::StreamReset {
                error_code: 7,
                by_client: false,
            },
            "REFUSED_STREAM",
        ),
        (None, ExchangeOutcome::GoAway { error_code: 0 }, "goaway"),
        (None, ExchangeOutcome::ConnectionClosed, "connection_closed"),
        (
            Some((200, None)),
            ExchangeOutcome::StreamDesync,
            "stream_desync",
        ),
        (Some((503, None)), ExchangeOutcome::Complete, "503"),
        (Some((200, None)), ExchangeOutcome::Complete, "_OTHER"),
        (Some((200, Some("x"))), ExchangeOutcome::Complete, "_OTHER"),
    ];
    for (response, outcome, class) in cases {
        let ex = exchange(
            h2_request(GREETER, "application/grpc", &[]),
            response,
            outcome,
        );
        for role in [Role::Client, Role::Server] {
            let span = span(&ex, role);
            assert_eq!(str_attr(&span, "error.type"), Some(class), "{outcome:?}");
            assert!(attr(&span, RPC_RESPONSE_STATUS_CODE).is_none());
            assert!(matches!(span.status, SpanStatus::Error { .. }));
        }
    }
}

#[test]
fn malformed_paths_are_other() {
    for path in [
        "/", "/svc", "//m", "/svc/", "/a/b/c", "/a b/c", "nope", "/a/b?x=1",
    ] {
        let ex = exchange(
            h2_request(path, "application/grpc", &[]),
            Some((200, Some("0"))),
            ExchangeOutcome::Complete,
        );
        let span = span(&ex, Role::Server);
        assert_eq!(span.name, OTHER_METHOD, "{path}");
        assert_eq!(str_attr(&span, RPC_METHOD), Some(OTHER_METHOD));
    }
    let long = format!("/{}/M", "a".repeat(300));
    assert_eq!(grpc_method(&long), None);
    assert_eq!(
        grpc_method("/pkg.v1.Svc/Get"),
        Some(("pkg.v1.Svc/Get", "pkg.v1.Svc"))
    );
}

#[test]
fn rpc_dup_adds_the_experimental_keys() {
    let ex = exchange(
        h2_request(GREETER, "application/grpc", &[]),
        Some((200, Some("5"))),
        ExchangeOutcome::Complete,
    );
    let conn = conn();
    let clock = Clock::from_offset(0);
    let input = SpanInput {
        exchange: &ex,
        conn: &conn,
        role: Role::Client,
        clock: &clock,
    };
    let mut attributes = crate::model::Attributes::new();
    let (name, _) = grpc_attributes(&input, true, &mut attributes);
    assert_eq!(name, "helloworld.Greeter/SayHello");
    let get = |key: &str| attributes.iter().find(|a| a.key == key).map(|a| &a.value);
    assert_eq!(get(RPC_SYSTEM), Some(&AttrValue::Str("grpc".into())));
    assert_eq!(
        get(RPC_SERVICE),
        Some(&AttrValue::Str("helloworld.Greeter".into()))
    );
    assert_eq!(get(RPC_GRPC_STATUS_CODE), Some(&AttrValue::Int(5)));
    assert_eq!(
        get(RPC_METHOD),
        Some(&AttrValue::Str("helloworld.Greeter/SayHello".into()))
    );
    assert!(opt_in_has("http, rpc/dup", "rpc/dup"));
    assert!(!opt_in_has("rpc", "rpc/dup"));
}

#[test]
fn grpc_is_told_by_content_type_on_http2_only() {
    assert!(is_grpc(&h2_request("/a/b", "application/grpc", &[])));
    assert!(is_grpc(&h2_request("/a/b", "application/grpc+proto", &[])));
    assert!(is_grpc(&h2_request(
        "/a/b",
        "Application/GRPC; charset=x",
        &[]
    )));
    assert!(!is_grpc(&h2_request("/a/b", "application/grpc-web", &[])));
    assert!(!is_grpc(&h2_request("/a/b", "application/json", &[])));
    let mut http1 = h2_request("/a/b", "application/grpc", &[]);
    http1.version = HttpVersion::Http11;
    assert!(!is_grpc(&http1));
}

/// A plain HTTP/2 exchange is an HTTP span with version `2`, scheme and host from the
/// pseudo-headers.
#[test]
fn http2_spans_are_http_spans_with_version_2() {
    let mut request = h2_request("/items?id=1", "text/plain", &[("user-agent", "curl/8")]);
    request.method = "GET".into();
    let ex = exchange(request, Some((404, None)), ExchangeOutcome::Complete);
    let server = span(&ex, Role::Server);
    assert_eq!(server.name, "GET");
    assert_eq!(str_attr(&server, "network.protocol.version"), Some("2"));
    assert_eq!(str_attr(&server, "url.scheme"), Some("http"));
    assert_eq!(str_attr(&server, "url.path"), Some("/items"));
    assert_eq!(str_attr(&server, "server.address"), Some("greeter.local"));
    assert_eq!(
        attr(&server, "http.response.status_code"),
        Some(&AttrValue::Int(404))
    );
    assert!(attr(&server, RPC_SYSTEM_NAME).is_none());
    let mut tls = ex.clone();
    tls.request.headers[0].value = b"https".to_vec().into();
    let client = span(&tls, Role::Client);
    assert_eq!(
        str_attr(&client, "url.full"),
        Some("https://greeter.local:50051/items?id=1")
    );
    assert_eq!(str_attr(&client, "error.type"), Some("404"));
    // A reset stream names the h2 error, with no status code.
    let reset = exchange(
        h2_request("/x", "text/plain", &[]),
        None,
        ExchangeOutcome::StreamReset {
            error_code: 2,
            by_client: false,
        },
    );
    let span = span(&reset, Role::Server);
    assert_eq!(str_attr(&span, "error.type"), Some("INTERNAL_ERROR"));
    assert!(attr(&span, "http.response.status_code").is_none());
}

/// One HTTP/2 frame: HEADERS (type 1) with END_HEADERS, END_STREAM as given.
fn headers_frame(stream_id: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let len = u32::try_from(block.len()).unwrap_or(0);
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.push(1);
    frame.push(0x4 | u8::from(end_stream));
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(block);
    frame
}

/// A gRPC call on a connection adopted mid-stream whose trailer `grpc-status` is an index into
/// the dynamic table (unknown after adoption): completed, status unknown. Before the fix the
/// call was reported as an error (`error.type` `_OTHER`) although the server said OK.
#[test]
fn an_undecodable_grpc_status_trailer_is_no_error_and_no_invented_status() {
    use crate::model::Direction;
    use crate::protocols::http2::{Http2Connection, Http2Limits};
    let mut conn = Http2Connection::new(Some(Role::Server), Http2Limits::default(), false);
    let mut request = vec![0x83, 0x86, 0x04, GREETER.len() as u8];
    request.extend_from_slice(GREETER.as_bytes());
    // content-type (static name 31), literal value, without indexing.
    request.extend_from_slice(&[0x0f, 0x10, 0x10]);
    request.extend_from_slice(b"application/grpc");
    let mut out = Vec::new();
    let frame = headers_frame(1, false, &request);
    conn.on_record(
        Direction::Ingress,
        &frame,
        frame.len() as u32,
        1,
        10,
        &mut out,
    );
    // :status 200 (static 8), then trailers: index 62, the newest dynamic entry, never seen.
    let frame = headers_frame(1, false, &[0x88]);
    conn.on_record(
        Direction::Egress,
        &frame,
        frame.len() as u32,
        1,
        20,
        &mut out,
    );
    let frame = headers_frame(1, true, &[0xbe]);
    conn.on_record(
        Direction::Egress,
        &frame,
        frame.len() as u32,
        1,
        30,
        &mut out,
    );
    assert_eq!(out.len(), 1, "one exchange: {out:?}");
    let ex = &out[0];
    assert_eq!(ex.outcome, ExchangeOutcome::Complete);
    assert!(ex.response.as_ref().is_some_and(|r| r.undecoded_fields));
    assert_eq!(conn.stats().grpc_status_undecoded, 1);
    for role in [Role::Client, Role::Server] {
        let span = span(ex, role);
        assert_eq!(span.name.as_str(), "helloworld.Greeter/SayHello");
        assert!(attr(&span, RPC_RESPONSE_STATUS_CODE).is_none());
        assert!(attr(&span, "error.type").is_none());
        assert!(
            matches!(span.status, SpanStatus::Unset),
            "{:?}",
            span.status
        );
    }
}
