//! Parsing of one complete message head with `httparse` into the shared model: start line,
//! bounded headers (count and value size), and the facts that decide body framing.

use std::mem::MaybeUninit;

use bytes::BytesMut;

use crate::model::{Header, HttpRequest, HttpResponse, HttpVersion, SharedStr, Text, method_text};

use super::HttpLimits;
use super::framing::FramingHeaders;
use super::response_scan;
use super::start_line::MessageKind;

/// A parsed head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ParsedHead {
    Request(HttpRequest, FramingHeaders),
    Response(HttpResponse, FramingHeaders),
}

/// Result of a parse attempt on bytes that start with a head.
#[derive(Debug)]
pub(crate) enum HeadParse {
    /// The head is complete and `len` bytes long.
    Complete { head: ParsedHead, len: usize },
    /// More bytes are needed.
    Partial,
}

/// Why a head could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("malformed head: {0}")]
    Malformed(#[from] httparse::Error),
    #[error("unsupported HTTP version 1.{0}")]
    Version(u8),
    #[error("head has no start line")]
    MissingStartLine,
}

/// Headers parsed without touching the heap; heads with more fall back to a heap table.
const STACK_HEADERS: usize = 64;

/// Lenient parsing: a tracer must follow what real peers accept, not police them.
fn parser_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true);
    config
}

/// Parses the head of a `kind` message at the start of `bytes` (kept header values in a buffer
/// of their own).
#[cfg(test)]
pub(crate) fn parse_head(
    bytes: &[u8],
    kind: MessageKind,
    limits: &HttpLimits,
) -> Result<HeadParse, HeadError> {
    parse_head_into(bytes, kind, limits, &mut BytesMut::new())
}

/// Parses the head of a `kind` message at the start of `bytes`. Kept header values are copied
/// into `values`, an arena the stream reuses: once the previous message's values are dropped
/// its space is reclaimed, so a keep-alive connection allocates nothing per message. A response
/// of which no header is kept is first read by the cheaper [`response_scan`], which takes the
/// common strictly formed heads and leaves the rest to the full parse.
pub(crate) fn parse_head_into(
    bytes: &[u8],
    kind: MessageKind,
    limits: &HttpLimits,
    values: &mut BytesMut,
) -> Result<HeadParse, HeadError> {
    if kind == MessageKind::Response
        && limits.max_headers.min(limits.max_response_headers) == 0
        && let Some(scanned) = response_scan::scan(bytes)
    {
        return Ok(HeadParse::Complete {
            head: ParsedHead::Response(
                HttpResponse {
                    version: version(scanned.minor)?,
                    status: scanned.status,
                    headers: Vec::new(),
                    body_len: 0,
                    undecoded_fields: false,
                },
                scanned.framing,
            ),
            len: scanned.len,
        });
    }
    parse_head_full(bytes, kind, limits, values)
}

/// Parses the head of a `kind` message at the start of `bytes` with `httparse`.
fn parse_head_full(
    bytes: &[u8],
    kind: MessageKind,
    limits: &HttpLimits,
    values: &mut BytesMut,
) -> Result<HeadParse, HeadError> {
    let config = parser_config();
    let mut stack = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    match parse_with(bytes, kind, limits, &config, &mut stack, values) {
        Err(HeadError::Malformed(httparse::Error::TooManyHeaders)) => {
            // Every header line takes at least three bytes (`a:` and a line feed).
            let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> =
                std::iter::repeat_with(MaybeUninit::uninit)
                    .take(bytes.len() / 3 + 1)
                    .collect();
            parse_with(bytes, kind, limits, &config, &mut heap, values)
        }
        other => other,
    }
}

fn parse_with<'b>(
    bytes: &'b [u8],
    kind: MessageKind,
    limits: &HttpLimits,
    config: &httparse::ParserConfig,
    table: &mut [MaybeUninit<httparse::Header<'b>>],
    values: &mut BytesMut,
) -> Result<HeadParse, HeadError> {
    match kind {
        MessageKind::Request => {
            let mut request = httparse::Request::new(&mut []);
            let len = match config.parse_request_with_uninit_headers(&mut request, bytes, table)? {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => return Ok(HeadParse::Partial),
            };
            let (Some(method), Some(target), Some(minor)) =
                (request.method, request.path, request.version)
            else {
                return Err(HeadError::MissingStartLine);
            };
            let (headers, framing, target) =
                convert_headers(request.headers, limits.max_headers, limits, values, target);
            let head = HttpRequest {
                method: method_text(method),
                target,
                version: version(minor)?,
                headers,
                body_len: 0,
            };
            Ok(HeadParse::Complete {
                head: ParsedHead::Request(head, framing),
                len,
            })
        }
        MessageKind::Response => {
            let mut response = httparse::Response::new(&mut []);
            let len =
                match config.parse_response_with_uninit_headers(&mut response, bytes, table)? {
                    httparse::Status::Complete(len) => len,
                    httparse::Status::Partial => return Ok(HeadParse::Partial),
                };
            let (Some(minor), Some(status)) = (response.version, response.code) else {
                return Err(HeadError::MissingStartLine);
            };
            let kept = limits.max_headers.min(limits.max_response_headers);
            let (headers, framing, _) = convert_headers(response.headers, kept, limits, values, "");
            let head = HttpResponse {
                version: version(minor)?,
                status,
                headers,
                body_len: 0,
                undecoded_fields: false,
            };
            Ok(HeadParse::Complete {
                head: ParsedHead::Response(head, framing),
                len,
            })
        }
    }
}

fn version(minor: u8) -> Result<HttpVersion, HeadError> {
    match minor {
        0 => Ok(HttpVersion::Http10),
        1 => Ok(HttpVersion::Http11),
        other => Err(HeadError::Version(other)),
    }
}

/// Keeps up to `keep` headers (values cut to `max_header_value_bytes`) and reads the framing
/// facts from all of them. The kept values (and a request's `target`) are copied once, into the
/// `values` arena that every value and the returned target slice; common names are static (see
/// [`header_name`]).
fn convert_headers<'b>(
    parsed: &[httparse::Header<'b>],
    keep: usize,
    limits: &HttpLimits,
    values: &mut BytesMut,
    target: &str,
) -> (Vec<Header>, FramingHeaders, SharedStr) {
    let mut framing = FramingHeaders::default();
    let kept = &parsed[..parsed.len().min(keep)];
    for header in parsed {
        framing.observe(header.name, header.value);
    }
    if kept.is_empty() && target.is_empty() {
        return (Vec::new(), framing, SharedStr::default());
    }
    // Each kept value is found once (a Host value is searched for userinfo): the first
    // `KEPT_SLOTS` on the stack, any further ones again when they are copied.
    let mut slots: [&'b [u8]; KEPT_SLOTS] = [&[]; KEPT_SLOTS];
    let mut total = target.len();
    for (i, header) in kept.iter().enumerate() {
        let value = kept_value(header, limits);
        if let Some(slot) = slots.get_mut(i) {
            *slot = value;
        }
        total += value.len();
    }
    let value_of = |i: usize, header: &httparse::Header<'b>| -> &'b [u8] {
        match slots.get(i) {
            Some(value) => value,
            None => kept_value(header, limits),
        }
    };
    // Large heads get a buffer of their own, so the arena a connection keeps stays small.
    let mut own = BytesMut::new();
    let arena = if total > MAX_ARENA_BYTES {
        &mut own
    } else {
        values
    };
    arena.clear();
    // Reclaims the arena's space when no earlier message still holds a slice of it.
    arena.reserve(total.max(MIN_ARENA_BYTES));
    arena.extend_from_slice(target.as_bytes());
    for (i, header) in kept.iter().enumerate() {
        arena.extend_from_slice(value_of(i, header));
    }
    let values = arena.split().freeze();
    // SAFETY: the arena's first bytes are a copy of the `str` `target`.
    let target = unsafe { SharedStr::from_utf8_unchecked(values.slice(..target.len())) };
    let mut headers = Vec::with_capacity(kept.len());
    let mut at = target.len();
    for (i, header) in kept.iter().enumerate() {
        let len = value_of(i, header).len();
        headers.push(Header {
            name: header_name(header.name),
            value: values.slice(at..at + len),
        });
        at += len;
    }
    (headers, framing, target)
}

/// Kept header values of one head remembered on the stack while they are copied.
const KEPT_SLOTS: usize = 32;

/// Smallest allocation of a header value arena (most heads' kept values fit), and the most
/// value bytes of one head that go to the arena. An idle connection keeps its arena (at most
/// `MAX_ARENA_BYTES`, like the 1 KiB head buffer a stream keeps), bounded in total by the
/// table's connection limit.
const MIN_ARENA_BYTES: usize = 256;
const MAX_ARENA_BYTES: usize = 1024;

/// The part of a header's value that is kept.
fn kept_value<'a>(header: &httparse::Header<'a>, limits: &HttpLimits) -> &'a [u8] {
    // A Host userinfo is dropped before the cut, which could drop its `@` and keep it.
    let value = if header.name.eq_ignore_ascii_case("host") {
        crate::telemetry::redact::authority_bytes_without_userinfo(header.value)
    } else {
        header.value
    };
    value.get(..limits.max_header_value_bytes).unwrap_or(value)
}

/// A header name as sent: common names (in their usual spellings) are static, others owned.
fn header_name(name: &str) -> Text {
    let known = match name {
        "Host" => "Host",
        "host" => "host",
        "User-Agent" => "User-Agent",
        "user-agent" => "user-agent",
        "Accept" => "Accept",
        "accept" => "accept",
        "Accept-Encoding" => "Accept-Encoding",
        "accept-encoding" => "accept-encoding",
        "Accept-Language" => "Accept-Language",
        "accept-language" => "accept-language",
        "Connection" => "Connection",
        "connection" => "connection",
        "Content-Type" => "Content-Type",
        "content-type" => "content-type",
        "Content-Length" => "Content-Length",
        "content-length" => "content-length",
        "Transfer-Encoding" => "Transfer-Encoding",
        "transfer-encoding" => "transfer-encoding",
        "Cookie" => "Cookie",
        "cookie" => "cookie",
        "Authorization" => "Authorization",
        "authorization" => "authorization",
        "Cache-Control" => "Cache-Control",
        "cache-control" => "cache-control",
        "Referer" => "Referer",
        "referer" => "referer",
        "Origin" => "Origin",
        "origin" => "origin",
        "Upgrade" => "Upgrade",
        "upgrade" => "upgrade",
        "Expect" => "Expect",
        "expect" => "expect",
        "traceparent" => "traceparent",
        "tracestate" => "tracestate",
        "Traceparent" => "Traceparent",
        "Tracestate" => "Tracestate",
        "b3" => "b3",
        "X-B3-TraceId" => "X-B3-TraceId",
        "X-B3-SpanId" => "X-B3-SpanId",
        "X-B3-ParentSpanId" => "X-B3-ParentSpanId",
        "X-B3-Sampled" => "X-B3-Sampled",
        "X-B3-Flags" => "X-B3-Flags",
        "x-b3-traceid" => "x-b3-traceid",
        "x-b3-spanid" => "x-b3-spanid",
        "x-b3-parentspanid" => "x-b3-parentspanid",
        "x-b3-sampled" => "x-b3-sampled",
        "x-b3-flags" => "x-b3-flags",
        "X-Amzn-Trace-Id" => "X-Amzn-Trace-Id",
        "x-amzn-trace-id" => "x-amzn-trace-id",
        "X-Forwarded-For" => "X-Forwarded-For",
        "x-forwarded-for" => "x-forwarded-for",
        "X-Request-Id" => "X-Request-Id",
        "x-request-id" => "x-request-id",
        _ => return Text::Owned(name.to_owned()),
    };
    Text::Static(known)
}

/// Fuzz entry (`head_scan`): on every response head the cheaper scan takes, the full parse gives
/// the same head, length and framing facts.
pub(crate) fn fuzz_response_scan(bytes: &[u8]) {
    let Some(scanned) = response_scan::scan(bytes) else {
        return;
    };
    let limits = HttpLimits::default();
    match parse_head_full(bytes, MessageKind::Response, &limits, &mut BytesMut::new()) {
        Ok(HeadParse::Complete {
            head: ParsedHead::Response(response, framing),
            len,
        }) => {
            assert_eq!(len, scanned.len, "head length");
            assert_eq!(version(scanned.minor).ok(), Some(response.version));
            assert_eq!(response.status, scanned.status, "status");
            assert_eq!(framing, scanned.framing, "framing");
            assert!(response.headers.is_empty());
        }
        other => panic!("the scan took a head the full parse did not: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::http1::framing::ContentLength;

    fn complete(bytes: &[u8], kind: MessageKind, limits: &HttpLimits) -> (ParsedHead, usize) {
        match parse_head(bytes, kind, limits) {
            Ok(HeadParse::Complete { head, len }) => (head, len),
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn parses_request_head_and_framing() {
        let bytes = b"POST /a?b=1 HTTP/1.0\r\nHost: x\r\nContent-Length: 12\r\n\r\nbody";
        let (head, len) = complete(bytes, MessageKind::Request, &HttpLimits::default());
        assert_eq!(len, bytes.len() - 4);
        let ParsedHead::Request(request, framing) = head else {
            panic!("not a request")
        };
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, "/a?b=1");
        assert_eq!(request.version, HttpVersion::Http10);
        assert_eq!(request.headers.len(), 2);
        assert_eq!(
            request.headers[0],
            Header {
                name: "Host".into(),
                value: b"x".to_vec().into()
            }
        );
        assert_eq!(framing.content_length, ContentLength::Valid(12));
    }

    /// The target and the kept header values of a request are slices of one arena (no copy of
    /// their own).
    #[test]
    fn target_and_values_share_the_arena() {
        let bytes = b"GET /items?id=7 HTTP/1.1\r\nHost: api.test\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n";
        let mut arena = BytesMut::new();
        let limits = HttpLimits::default();
        for _ in 0..3 {
            let Ok(HeadParse::Complete {
                head: ParsedHead::Request(request, _),
                ..
            }) = parse_head_into(bytes, MessageKind::Request, &limits, &mut arena)
            else {
                panic!("not a complete request");
            };
            assert_eq!(request.target, "/items?id=7");
            let target_end = request.target.as_ptr() as usize + request.target.len();
            assert_eq!(request.headers[0].value.as_ptr() as usize, target_end);
            assert_eq!(request.headers[2].value, &b"*/*"[..]);
        }
    }

    #[test]
    fn partial_and_malformed_heads() {
        let limits = HttpLimits::default();
        assert!(matches!(
            parse_head(
                b"HTTP/1.1 200 OK\r\nA: b\r\n",
                MessageKind::Response,
                &limits
            ),
            Ok(HeadParse::Partial)
        ));
        assert!(
            parse_head(
                b"GET / HTTP/1.1\r\nA\x00: b\r\n\r\n",
                MessageKind::Request,
                &limits
            )
            .is_err()
        );
        assert!(parse_head(b"GET / HTTP/1.2\r\n\r\n", MessageKind::Request, &limits).is_err());
    }

    #[test]
    fn keeps_headers_up_to_limits_and_frames_with_all() {
        let limits = HttpLimits {
            max_headers: 3,
            max_response_headers: 10,
            max_header_value_bytes: 5,
            ..HttpLimits::default()
        };
        let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..100 {
            bytes.extend_from_slice(format!("X-{i}: value-{i}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"Content-Length: 3\r\n\r\n");
        let (head, len) = complete(&bytes, MessageKind::Response, &limits);
        assert_eq!(len, bytes.len());
        let ParsedHead::Response(response, framing) = head else {
            panic!("not a response")
        };
        assert_eq!(response.headers.len(), 3);
        assert_eq!(response.headers[2].name, "X-2");
        assert_eq!(response.headers[2].value, &b"value"[..]);
        assert_eq!(framing.content_length, ContentLength::Valid(3));
    }

    #[test]
    fn values_beyond_the_stack_slots_are_kept_alike() {
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        let count = KEPT_SLOTS + 8;
        for i in 0..count {
            if i == KEPT_SLOTS + 3 {
                bytes.extend_from_slice(b"Host: user:secret@api.example\r\n");
            } else {
                bytes.extend_from_slice(format!("X-{i}: v{i}\r\n").as_bytes());
            }
        }
        bytes.extend_from_slice(b"\r\n");
        let (head, _) = complete(&bytes, MessageKind::Request, &HttpLimits::default());
        let ParsedHead::Request(request, _) = head else {
            panic!("not a request")
        };
        assert_eq!(request.headers.len(), count);
        for (i, header) in request.headers.iter().enumerate() {
            if i == KEPT_SLOTS + 3 {
                assert_eq!(header.value, &b"api.example"[..]);
            } else {
                assert_eq!(header.name, format!("X-{i}").as_str());
                assert_eq!(header.value, format!("v{i}").as_bytes());
            }
        }
    }

    #[test]
    fn common_header_names_are_static_and_others_owned() {
        for name in [
            "Host",
            "user-agent",
            "b3",
            "X-B3-ParentSpanId",
            "x-amzn-trace-id",
        ] {
            assert!(
                matches!(header_name(name), Text::Static(s) if s == name),
                "{name}"
            );
        }
        // Same lengths as known names, other bytes or case.
        for name in ["Hosx", "HOST", "User-Agenz", "b4", "X-Custom-Header"] {
            assert!(
                matches!(header_name(name), Text::Owned(ref s) if s == name),
                "{name}"
            );
        }
    }

    #[test]
    fn host_userinfo_is_dropped_before_the_value_cut() {
        let limits = HttpLimits {
            max_header_value_bytes: 16,
            ..HttpLimits::default()
        };
        let password = "p:".repeat(20);
        let bytes = format!("GET / HTTP/1.1\r\nHost: u:{password}@api.example\r\nX-A: b\r\n\r\n");
        let (head, _) = complete(bytes.as_bytes(), MessageKind::Request, &limits);
        let ParsedHead::Request(request, _) = head else {
            panic!("not a request")
        };
        assert_eq!(request.headers[0].value, &b"api.example"[..]);
        assert_eq!(request.headers[1].value, &b"b"[..]);
    }

    #[test]
    fn response_headers_are_not_kept_by_default_but_still_frame() {
        let bytes = b"HTTP/1.1 200 OK\r\nX-Id: 7\r\nContent-Length: 3\r\n\r\n";
        let (head, _) = complete(bytes, MessageKind::Response, &HttpLimits::default());
        let ParsedHead::Response(response, framing) = head else {
            panic!("not a response")
        };
        assert!(response.headers.is_empty());
        assert_eq!(framing.content_length, ContentLength::Valid(3));
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (head, _) = complete(request, MessageKind::Request, &HttpLimits::default());
        let ParsedHead::Request(request, _) = head else {
            panic!("not a request")
        };
        assert_eq!(request.headers.len(), 1, "request headers are kept");
    }
}
