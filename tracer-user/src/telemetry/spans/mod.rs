//! Exchange -> span: ids, timing, HTTP semantic-convention attributes, status, parent context.
//!
//! Follows the stable OpenTelemetry HTTP span conventions: the name is the method (`HTTP` for
//! unknown methods), SERVER spans describe the request target as `url.path`/`url.query`, CLIENT
//! spans as `url.full`. Status is left unset for 1xx-3xx, set to Error for 5xx (and for 4xx on
//! CLIENT spans), and a missing response is an Error with a short `error.type` class; no status
//! code is ever invented. Attribute strings are bounded and converted from bytes lossily.

mod attributes;
mod clock;
mod status;
mod url;

use crate::model::{
    Attribute, Attributes, Exchange, INLINE_ATTRIBUTES, Role, SpanKind, SpanRecord,
};
use crate::telemetry::ids::SpanIdentity;

pub(crate) use self::attributes::peer_attributes;
use self::attributes::{client_attributes, method_attributes, server_attributes};
pub use self::attributes::{opt_in_has, rpc_dup};
pub use self::clock::Clock;
pub use self::status::h2_reset_class;
pub(crate) use self::status::outcome_class;
use self::status::span_status;
pub(crate) use self::url::{HostPort, host_header_authority};
pub use crate::protocols::http2::is_grpc;
use crate::telemetry::semconv;

/// Longest `url.*` value kept, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Longest `user_agent.original` kept, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 2048;
/// Longest host name or original method kept, in bytes.
pub const MAX_SHORT_ATTR_LEN: usize = 256;

/// Everything [`build_span`] needs about one exchange.
#[derive(Clone, Copy, Debug)]
pub struct SpanInput<'a> {
    pub exchange: &'a Exchange,
    pub conn: &'a crate::model::ConnMeta,
    pub role: Role,
    pub clock: &'a Clock,
}

/// Build the span for one exchange with the identity decided for its request (see
/// [`SpanIdentity`]): taken as given, never re-picked here.
pub fn build_span(input: &SpanInput<'_>, identity: &SpanIdentity) -> SpanRecord {
    let exchange = input.exchange;
    let request = &exchange.request;
    let mut attributes = Attributes::with_capacity(INLINE_ATTRIBUTES);
    let (name, status) = if is_grpc(request) {
        crate::telemetry::rpc::grpc_attributes(input, rpc_dup(), &mut attributes)
    } else {
        let name = method_attributes(&request.method, &mut attributes);
        match input.role {
            Role::Server => server_attributes(request, input.conn, &mut attributes),
            Role::Client => client_attributes(request, input.conn, &mut attributes),
        }
        if let Some(response) = &exchange.response {
            attributes.push(Attribute::int(
                semconv::HTTP_RESPONSE_STATUS_CODE,
                i64::from(response.status),
            ));
        }
        let (status, error_type) = span_status(input.role, exchange);
        if let Some(error_type) = error_type {
            attributes.push(Attribute::str(semconv::ERROR_TYPE, error_type));
        }
        (name, status)
    };

    let start_unix_ns = input.clock.to_unix_ns(exchange.start_ns);
    let end_unix_ns = input.clock.to_unix_ns(exchange.end_ns).max(start_unix_ns);
    SpanRecord {
        trace_id: identity.trace_id,
        span_id: identity.span_id,
        parent_span_id: identity.parent_span_id,
        trace_state: identity.trace_state.clone(),
        sampled: identity.sampled,
        name,
        kind: match input.role {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
        },
        start_unix_ns,
        end_unix_ns,
        attributes,
        status,
        pid: input.conn.pid,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::clock::*;
    use super::url::*;
    use super::*;
    use crate::intern;
    use crate::model::{AttrValue, ConnMeta, HttpResponse, HttpVersion};
    use crate::model::{ExchangeOutcome, Header, HttpRequest, SpanStatus};
    use crate::protocols::propagation::{ContextSource, TraceContext};

    const MONO_START: u64 = 5_000_000_000;
    const OFFSET: i128 = 1_700_000_000_000_000_000;

    fn request(method: &str, target: &str, headers: &[(&str, &[u8])]) -> HttpRequest {
        HttpRequest {
            method: crate::model::method_text(method),
            target: target.to_string().into(),
            version: HttpVersion::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: n.to_string().into(),
                    value: v.to_vec().into(),
                })
                .collect(),
            body_len: 0,
        }
    }

    fn exchange(request: HttpRequest, status: Option<u16>, outcome: ExchangeOutcome) -> Exchange {
        Exchange {
            request,
            response: status.map(|status| HttpResponse {
                version: HttpVersion::Http11,
                status,
                headers: Vec::new(),
                body_len: 0,
                undecoded_fields: false,
            }),
            outcome,
            start_ns: MONO_START,
            request_end_ns: MONO_START + 100,
            end_ns: MONO_START + 2_000,
            request_tid: 7,
            response_tid: status.map(|_| 7),
            sequence: 0,
        }
    }

    fn ok(request: HttpRequest) -> Exchange {
        exchange(request, Some(200), ExchangeOutcome::Complete)
    }

    fn conn(local: &str, peer: &str) -> ConnMeta {
        ConnMeta {
            conn_id: 1,
            pid: 4242,
            fd: 9,
            role: None,
            local: Some(local.parse().expect("local addr")),
            peer: Some(peer.parse().expect("peer addr")),
            netns: None,
            tls: false,
        }
    }

    fn default_conn() -> ConnMeta {
        conn("10.0.0.1:8080", "10.0.0.2:51000")
    }

    /// A root identity with recognisable ids.
    fn ids() -> SpanIdentity {
        SpanIdentity {
            span_id: [0xaa; 8],
            ..SpanIdentity::root([0xbb; 16])
        }
    }

    fn span_for(ex: &Exchange, conn: &ConnMeta, role: Role) -> SpanRecord {
        let clock = Clock::from_offset(OFFSET);
        build_span(
            &SpanInput {
                exchange: ex,
                conn,
                role,
                clock: &clock,
            },
            &ids(),
        )
    }

    fn attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a AttrValue> {
        let found: Vec<_> = span.attributes.iter().filter(|a| a.key == key).collect();
        assert!(
            found.len() <= 1,
            "attribute {key} appears {} times",
            found.len()
        );
        found.first().map(|a| &a.value)
    }

    fn str_attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
        match attr(span, key) {
            Some(AttrValue::Str(s)) => Some(s),
            Some(other) => panic!("{key} is not a string: {other:?}"),
            None => None,
        }
    }

    fn int_attr(span: &SpanRecord, key: &str) -> Option<i64> {
        match attr(span, key) {
            Some(AttrValue::Int(i)) => Some(*i),
            Some(other) => panic!("{key} is not an int: {other:?}"),
            None => None,
        }
    }

    #[test]
    fn names_and_methods() {
        // (method, span name, http.request.method, method_original)
        let cases = [
            ("GET", "GET", "GET", None),
            ("HEAD", "HEAD", "HEAD", None),
            ("POST", "POST", "POST", None),
            ("PUT", "PUT", "PUT", None),
            ("DELETE", "DELETE", "DELETE", None),
            ("OPTIONS", "OPTIONS", "OPTIONS", None),
            ("TRACE", "TRACE", "TRACE", None),
            ("PATCH", "PATCH", "PATCH", None),
            ("get", "HTTP", "_OTHER", Some("get")),
            ("PROPFIND", "HTTP", "_OTHER", Some("PROPFIND")),
        ];
        for (method, name, semconv, original) in cases {
            for role in [Role::Server, Role::Client] {
                let span = span_for(&ok(request(method, "/x", &[])), &default_conn(), role);
                assert_eq!(span.name, name, "{method} {role:?}");
                assert_eq!(
                    str_attr(&span, "http.request.method"),
                    Some(semconv),
                    "{method}"
                );
                assert_eq!(
                    str_attr(&span, "http.request.method_original"),
                    original,
                    "{method}"
                );
            }
        }
    }

    #[test]
    fn server_attributes_from_origin_form() {
        let req = request(
            "GET",
            "/users/42?expand=1&x=y",
            &[
                ("Host", b"api.example.com:9000"),
                ("User-Agent", b"curl/8.5.0"),
            ],
        );
        let span = span_for(&ok(req), &default_conn(), Role::Server);
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(str_attr(&span, "url.path"), Some("/users/42"));
        assert_eq!(str_attr(&span, "url.query"), Some("expand=1&x=y"));
        assert_eq!(str_attr(&span, "url.scheme"), Some("http"));
        assert_eq!(str_attr(&span, "server.address"), Some("api.example.com"));
        assert_eq!(int_attr(&span, "server.port"), Some(9000));
        assert_eq!(str_attr(&span, "client.address"), Some("10.0.0.2"));
        assert_eq!(int_attr(&span, "client.port"), Some(51000));
        assert_eq!(str_attr(&span, "network.peer.address"), Some("10.0.0.2"));
        assert_eq!(int_attr(&span, "network.peer.port"), Some(51000));
        assert_eq!(str_attr(&span, "network.protocol.version"), Some("1.1"));
        assert_eq!(str_attr(&span, "user_agent.original"), Some("curl/8.5.0"));
        assert_eq!(int_attr(&span, "http.response.status_code"), Some(200));
        assert_eq!(
            str_attr(&span, "url.full"),
            None,
            "url.full is for CLIENT spans"
        );
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(span.pid, 4242);
    }

    #[test]
    fn server_port_falls_back_to_local_socket() {
        let span = span_for(
            &ok(request("GET", "/", &[("host", b"example.com")])),
            &default_conn(),
            Role::Server,
        );
        assert_eq!(str_attr(&span, "server.address"), Some("example.com"));
        assert_eq!(int_attr(&span, "server.port"), Some(8080));
        let span = span_for(&ok(request("GET", "/", &[])), &default_conn(), Role::Server);
        assert_eq!(str_attr(&span, "server.address"), None);
        assert_eq!(int_attr(&span, "server.port"), Some(8080));
    }

    #[test]
    fn query_only_when_present() {
        for target in ["/a", "/a?"] {
            let span = span_for(
                &ok(request("GET", target, &[])),
                &default_conn(),
                Role::Server,
            );
            assert_eq!(str_attr(&span, "url.path"), Some("/a"), "{target}");
            assert_eq!(str_attr(&span, "url.query"), None, "{target}");
        }
    }

    #[test]
    fn server_absolute_form_and_special_targets() {
        let req = request(
            "GET",
            "http://origin.test:81/p/q?k=v",
            &[("Host", b"ignored.test")],
        );
        let span = span_for(&ok(req), &default_conn(), Role::Server);
        assert_eq!(str_attr(&span, "url.path"), Some("/p/q"));
        assert_eq!(str_attr(&span, "url.query"), Some("k=v"));
        assert_eq!(str_attr(&span, "server.address"), Some("origin.test"));
        assert_eq!(int_attr(&span, "server.port"), Some(81));

        let span = span_for(
            &ok(request("GET", "http://origin.test", &[])),
            &default_conn(),
            Role::Server,
        );
        assert_eq!(str_attr(&span, "url.path"), Some("/"));

        let span = span_for(
            &ok(request("OPTIONS", "*", &[])),
            &default_conn(),
            Role::Server,
        );
        assert_eq!(str_attr(&span, "url.path"), Some("*"));

        let span = span_for(
            &ok(request("CONNECT", "tunnel.test:443", &[])),
            &default_conn(),
            Role::Server,
        );
        assert_eq!(str_attr(&span, "url.path"), None);
        assert_eq!(str_attr(&span, "server.address"), Some("tunnel.test"));
        assert_eq!(int_attr(&span, "server.port"), Some(443));
    }

    /// The attributes of a usual HTTP span fit inline: building it allocates no list.
    #[test]
    fn usual_spans_keep_their_attributes_inline() {
        let req = request(
            "GET",
            "/orders?id=3",
            &[("Host", b"api.test:8080"), ("User-Agent", b"curl/8")],
        );
        for role in [Role::Server, Role::Client] {
            let span = span_for(&ok(req.clone()), &default_conn(), role);
            assert!(
                span.attributes.len() >= 8,
                "{role:?}: {:?}",
                span.attributes
            );
            assert!(
                !span.attributes.spilled(),
                "{role:?}: {}",
                span.attributes.len()
            );
        }
    }

    #[test]
    fn host_header_forms() {
        // (Host value, server.address, server.port)
        let cases: [(&[u8], Option<&str>, i64); 7] = [
            (b"[::1]:8443", Some("::1"), 8443),
            (b"[fe80::1]", Some("fe80::1"), 8080),
            (b" spaced.test:70 ", Some("spaced.test"), 70),
            (b"bad.port:99999", Some("bad.port"), 8080),
            (b"", None, 8080),
            (b":80", None, 8080),
            (b"caf\xc3\xa9.test", Some("caf\u{e9}.test"), 8080),
        ];
        for (host, address, port) in cases {
            let span = span_for(
                &ok(request("GET", "/", &[("Host", host)])),
                &default_conn(),
                Role::Server,
            );
            assert_eq!(str_attr(&span, "server.address"), address, "{host:?}");
            assert_eq!(int_attr(&span, "server.port"), Some(port), "{host:?}");
        }
    }

    #[test]
    fn ipv4_mapped_peers_are_reported_as_ipv4() {
        let c = conn("[::ffff:10.0.0.1]:80", "[::ffff:192.168.1.9]:40000");
        let span = span_for(&ok(request("GET", "/", &[])), &c, Role::Server);
        assert_eq!(str_attr(&span, "client.address"), Some("192.168.1.9"));
        assert_eq!(str_attr(&span, "network.peer.address"), Some("192.168.1.9"));
        let c = conn("[::1]:80", "[2001:db8::5]:40000");
        let span = span_for(&ok(request("GET", "/", &[])), &c, Role::Server);
        assert_eq!(str_attr(&span, "client.address"), Some("2001:db8::5"));
    }

    #[test]
    fn client_attributes() {
        let c = conn("10.0.0.2:51000", "10.0.0.1:8080");
        let req = request(
            "POST",
            "/orders?id=3",
            &[("Host", b"orders.svc:8080"), ("User-Agent", b"x")],
        );
        let span = span_for(&ok(req), &c, Role::Client);
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(str_attr(&span, "server.address"), Some("orders.svc"));
        assert_eq!(int_attr(&span, "server.port"), Some(8080));
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://orders.svc:8080/orders?id=3")
        );
        assert_eq!(str_attr(&span, "network.peer.address"), Some("10.0.0.1"));
        assert_eq!(int_attr(&span, "network.peer.port"), Some(8080));
        assert_eq!(str_attr(&span, "network.protocol.version"), Some("1.1"));
        assert_eq!(str_attr(&span, "url.path"), None);
        assert_eq!(str_attr(&span, "client.address"), None);
        assert_eq!(str_attr(&span, "user_agent.original"), None);

        // Host without port: the connected port.
        let span = span_for(
            &ok(request("GET", "/", &[("Host", b"orders.svc")])),
            &c,
            Role::Client,
        );
        assert_eq!(int_attr(&span, "server.port"), Some(8080));
        assert_eq!(str_attr(&span, "url.full"), Some("http://orders.svc/"));

        // No Host: the peer address.
        let span = span_for(&ok(request("GET", "/a?b=c", &[])), &c, Role::Client);
        assert_eq!(str_attr(&span, "server.address"), Some("10.0.0.1"));
        assert_eq!(int_attr(&span, "server.port"), Some(8080));
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://10.0.0.1:8080/a?b=c")
        );

        let c6 = conn("[::1]:51000", "[::1]:8080");
        let span = span_for(&ok(request("GET", "/", &[])), &c6, Role::Client);
        assert_eq!(str_attr(&span, "server.address"), Some("::1"));
        assert_eq!(str_attr(&span, "url.full"), Some("http://[::1]:8080/"));
    }

    #[test]
    fn client_absolute_form_is_used_as_is_with_redaction() {
        let c = conn("10.0.0.2:51000", "10.0.0.9:3128");
        let req = request(
            "GET",
            "http://example.com:8000/x?y=1",
            &[("Host", b"example.com:8000")],
        );
        let span = span_for(&ok(req), &c, Role::Client);
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://example.com:8000/x?y=1")
        );
        assert_eq!(str_attr(&span, "server.address"), Some("example.com"));
        assert_eq!(int_attr(&span, "server.port"), Some(8000));

        let req = request(
            "GET",
            "http://user:pw@example.com/s?a=1&Signature=abc&sig=d",
            &[],
        );
        let span = span_for(&ok(req), &c, Role::Client);
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://REDACTED:REDACTED@example.com/s?a=1&Signature=REDACTED&sig=REDACTED")
        );
        assert_eq!(str_attr(&span, "server.address"), Some("example.com"));
        assert_eq!(
            int_attr(&span, "server.port"),
            Some(3128),
            "no port in URL: the connected one"
        );

        let req = request("GET", "/p?X-Goog-Signature=zzz&keep=1", &[("Host", b"h")]);
        let span = span_for(&ok(req.clone()), &c, Role::Client);
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://h/p?X-Goog-Signature=REDACTED&keep=1")
        );
        let span = span_for(&ok(req), &c, Role::Server);
        assert_eq!(
            str_attr(&span, "url.query"),
            Some("X-Goog-Signature=REDACTED&keep=1")
        );
    }

    #[test]
    fn userinfo_and_signed_values_never_reach_a_span() {
        let c = conn("10.0.0.2:51000", "10.0.0.9:8080");
        let secrets = ["pw-host", "pw-connect", "pw-abs", "tok-1", "tok-2", "sig-3"];
        let cases = [
            cases_host_request(),
            request("CONNECT", "u:pw-connect@db.example:443", &[]),
            request("GET", "http://u:pw-abs@h/x?apikey=tok-2", &[]),
        ];
        for req in cases {
            for role in [Role::Client, Role::Server] {
                let span = span_for(&ok(req.clone()), &c, role);
                let text = format!("{span:?}");
                for secret in secrets {
                    assert!(!text.contains(secret), "{secret} leaked: {text}");
                }
            }
        }
        let span = span_for(&ok(cases_host_request()), &c, Role::Client);
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://api.example:9000/p?ACCESS_TOKEN=REDACTED&%53ignature=REDACTED&keep=1")
        );
        assert_eq!(str_attr(&span, "server.address"), Some("api.example"));
        let span = span_for(&ok(cases_host_request()), &c, Role::Server);
        assert_eq!(
            str_attr(&span, "url.query"),
            Some("ACCESS_TOKEN=REDACTED&%53ignature=REDACTED&keep=1")
        );
        let connect = request("CONNECT", "u:pw@db.example:443", &[]);
        let span = span_for(&ok(connect), &c, Role::Client);
        assert_eq!(str_attr(&span, "url.full"), Some("http://db.example:443"));
    }

    /// A Host value longer than any host name: its userinfo is found in the whole value (not in
    /// a cut prefix that lost the `@`), and a host that would be cut is dropped for the peer.
    #[test]
    fn long_host_userinfo_never_reaches_a_span() {
        let c = conn("10.0.0.2:51000", "10.0.0.9:8080");
        let token = "t0k:".repeat(75);
        for host in [
            format!("u:{token}@api.example:9000"),
            format!("{token}@api.example"),
        ] {
            for role in [Role::Client, Role::Server] {
                let req = request("GET", "/x", &[("Host", host.as_bytes())]);
                let span = span_for(&ok(req), &c, role);
                let text = format!("{span:?}");
                assert!(!text.contains("t0k"), "token leaked: {text}");
                assert_eq!(str_attr(&span, "server.address"), Some("api.example"));
            }
        }
        let req = request("GET", "/x", &[("Host", b"u:pw@api.example:9000")]);
        let span = span_for(&ok(req), &c, Role::Client);
        assert_eq!(
            str_attr(&span, "url.full"),
            Some("http://api.example:9000/x")
        );
        // Too long to be a host name and cut: the peer instead.
        let long = format!("{}.example", "a".repeat(300));
        for role in [Role::Client, Role::Server] {
            let req = request("GET", "/x", &[("Host", long.as_bytes())]);
            let span = span_for(&ok(req), &c, role);
            assert!(!format!("{span:?}").contains("aaaa"), "{role:?}");
        }
        let req = request("GET", "/x", &[("Host", long.as_bytes())]);
        let span = span_for(&ok(req), &c, Role::Client);
        assert_eq!(str_attr(&span, "url.full"), Some("http://10.0.0.9:8080/x"));
        assert_eq!(str_attr(&span, "server.address"), Some("10.0.0.9"));
    }

    #[test]
    fn path_session_parameters_never_reach_a_span() {
        let c = conn("10.0.0.2:51000", "10.0.0.9:8080");
        for target in [
            "/cart;jsessionid=S3SS?x=1",
            "http://h/cart;jsessionid=S3SS?x=1",
        ] {
            for role in [Role::Client, Role::Server] {
                let req = request("GET", target, &[("Host", b"h")]);
                let span = span_for(&ok(req), &c, role);
                let text = format!("{span:?}");
                assert!(!text.contains("S3SS"), "session leaked: {text}");
            }
        }
        let req = request("GET", "/cart;jsessionid=S3SS?x=1", &[]);
        let span = span_for(&ok(req), &c, Role::Server);
        assert_eq!(
            str_attr(&span, "url.path"),
            Some("/cart;jsessionid=REDACTED")
        );
    }

    fn cases_host_request() -> HttpRequest {
        request(
            "GET",
            "/p?ACCESS_TOKEN=tok-1&%53ignature=sig-3&keep=1",
            &[("Host", b"user:pw-host@api.example:9000")],
        )
    }

    #[test]
    fn status_by_code_and_role() {
        // (status, server error?, client error?)
        let cases = [
            (101, false, false),
            (200, false, false),
            (304, false, false),
            (400, false, true),
            (404, false, true),
            (499, false, true),
            (500, true, true),
            (503, true, true),
        ];
        for (code, server_error, client_error) in cases {
            for (role, expect_error) in [(Role::Server, server_error), (Role::Client, client_error)]
            {
                let ex = exchange(
                    request("GET", "/", &[]),
                    Some(code),
                    ExchangeOutcome::Complete,
                );
                let span = span_for(&ex, &default_conn(), role);
                assert_eq!(
                    int_attr(&span, "http.response.status_code"),
                    Some(i64::from(code))
                );
                if expect_error {
                    assert!(
                        matches!(span.status, SpanStatus::Error { .. }),
                        "{code} {role:?}"
                    );
                    assert_eq!(
                        str_attr(&span, "error.type"),
                        Some(code.to_string().as_str())
                    );
                } else {
                    assert_eq!(span.status, SpanStatus::Unset, "{code} {role:?}");
                    assert_eq!(str_attr(&span, "error.type"), None, "{code} {role:?}");
                }
            }
        }
    }

    #[test]
    fn missing_response_is_an_error_without_a_status_code() {
        let cases = [
            (ExchangeOutcome::ConnectionClosed, "connection_closed"),
            (ExchangeOutcome::Expired, "timeout"),
            (ExchangeOutcome::StreamDesync, "stream_desync"),
            (ExchangeOutcome::Complete, "_OTHER"),
        ];
        for (outcome, class) in cases {
            for role in [Role::Server, Role::Client] {
                let ex = exchange(request("GET", "/", &[]), None, outcome);
                let span = span_for(&ex, &default_conn(), role);
                assert!(
                    matches!(&span.status, SpanStatus::Error { description } if !description.is_empty())
                );
                assert_eq!(str_attr(&span, "error.type"), Some(class), "{outcome:?}");
                assert_eq!(
                    int_attr(&span, "http.response.status_code"),
                    None,
                    "{outcome:?}"
                );
            }
        }
        // A response head was seen before the close: its code decides, nothing is invented.
        let ex = exchange(
            request("GET", "/", &[]),
            Some(200),
            ExchangeOutcome::ConnectionClosed,
        );
        let span = span_for(&ex, &default_conn(), Role::Server);
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(int_attr(&span, "http.response.status_code"), Some(200));
    }

    #[test]
    fn root_span_ids() {
        let span = span_for(&ok(request("GET", "/", &[])), &default_conn(), Role::Server);
        assert_eq!(span.trace_id, [0xbb; 16]);
        assert_eq!(span.span_id, [0xaa; 8]);
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.trace_state, None);
        assert!(span.sampled);
    }

    #[test]
    fn the_identity_is_taken_as_given() {
        let parent = TraceContext {
            trace_id: [0x11; 16],
            parent_span_id: [0x22; 8],
            sampled: false,
            trace_state: Some("vendor=abc".to_string()),
            source: ContextSource::TraceParent,
        };
        let identity = SpanIdentity::from_header(parent);
        let ex = ok(request("GET", "/", &[]));
        let c = default_conn();
        let clock = Clock::from_offset(OFFSET);
        let input = SpanInput {
            exchange: &ex,
            conn: &c,
            role: Role::Server,
            clock: &clock,
        };
        let span = build_span(&input, &identity);
        assert_eq!(span.trace_id, [0x11; 16]);
        assert_eq!(span.parent_span_id, Some([0x22; 8]));
        assert_eq!(span.span_id, identity.span_id);
        assert_eq!(span.trace_state.as_deref(), Some("vendor=abc"));
        assert!(!span.sampled);
    }

    #[test]
    fn times_use_the_clock_offset_and_never_run_backwards() {
        let span = span_for(&ok(request("GET", "/", &[])), &default_conn(), Role::Server);
        assert_eq!(
            i128::from(span.start_unix_ns),
            i128::from(MONO_START) + OFFSET
        );
        assert_eq!(span.end_unix_ns - span.start_unix_ns, 2_000);

        let mut ex = ok(request("GET", "/", &[]));
        ex.end_ns = ex.start_ns - 50;
        let span = span_for(&ex, &default_conn(), Role::Client);
        assert_eq!(span.end_unix_ns, span.start_unix_ns);

        assert_eq!(Clock::from_offset(-10).to_unix_ns(5), 0);
        assert_eq!(
            Clock::from_offset(i128::from(u64::MAX)).to_unix_ns(5),
            u64::MAX
        );
        assert_eq!(Clock::from_offset(7).offset_ns(), 7);
    }

    #[test]
    fn measured_clock_matches_the_system_clock() {
        let clock = Clock::measure();
        let mono = clock_ns(libc::CLOCK_MONOTONIC).expect("monotonic clock");
        let converted = clock.to_unix_ns(u64::try_from(mono).expect("positive"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after epoch")
            .as_nanos();
        let diff = (i128::try_from(now).expect("fits") - i128::from(converted)).abs();
        assert!(
            diff < 1_000_000_000,
            "converted monotonic time is {diff} ns off"
        );
    }

    #[test]
    fn long_and_non_utf8_values_are_bounded() {
        let long_agent = vec![b'a'; 10_000];
        let long_target = format!("/{}?{}", "p".repeat(5000), "q".repeat(5000));
        let long_method = "X".repeat(1000);
        let req = request(
            &long_method,
            &long_target,
            &[("User-Agent", &long_agent), ("Host", &[b'h'; 5000])],
        );
        for role in [Role::Server, Role::Client] {
            let span = span_for(&ok(req.clone()), &default_conn(), role);
            for a in &span.attributes {
                if let AttrValue::Str(s) = &a.value {
                    assert!(s.len() <= MAX_URL_LEN, "{} has {} bytes", a.key, s.len());
                }
            }
            assert_eq!(
                str_attr(&span, "http.request.method_original").map(str::len),
                Some(MAX_SHORT_ATTR_LEN)
            );
        }
        let span = span_for(&ok(req), &default_conn(), Role::Server);
        assert_eq!(
            str_attr(&span, "user_agent.original").map(str::len),
            Some(MAX_USER_AGENT_LEN)
        );
        assert_eq!(str_attr(&span, "url.path").map(str::len), Some(MAX_URL_LEN));

        let req = request("GET", "/", &[("User-Agent", b"agent\xff\xfe/1")]);
        let span = span_for(&ok(req), &default_conn(), Role::Server);
        assert_eq!(
            str_attr(&span, "user_agent.original"),
            Some("agent\u{fffd}\u{fffd}/1")
        );
    }

    #[test]
    fn ip_text_matches_display() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut v4s: Vec<std::net::Ipv4Addr> =
            ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.20.199.99"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v4s.push(std::net::Ipv4Addr::from((state >> 16) as u32));
        }
        for v4 in v4s {
            assert_eq!(intern::ip(IpAddr::V4(v4)), v4.to_string());
            assert_eq!(
                intern::ip(IpAddr::V6(v4.to_ipv6_mapped())),
                v4.to_string(),
                "mapped"
            );
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(intern::ip(v6), "2001:db8::1");
    }

    #[test]
    fn bounded_cuts_on_char_boundaries() {
        assert_eq!(bounded("h\u{e9}llo", 2), "h");
        assert_eq!(bounded("h\u{e9}llo", 3), "h\u{e9}");
        assert_eq!(bounded_lossy("h\u{e9}llo".as_bytes(), 2), "h");
        assert_eq!(bounded("", 0), "");
    }
}
