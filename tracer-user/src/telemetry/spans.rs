//! Exchange -> span: ids, timing, HTTP semantic-convention attributes, status, parent context.
//!
//! Follows the stable OpenTelemetry HTTP span conventions: the name is the method (`HTTP` for
//! unknown methods), SERVER spans describe the request target as `url.path`/`url.query`, CLIENT
//! spans as `url.full`. Status is left unset for 1xx-3xx, set to Error for 5xx (and for 4xx on
//! CLIENT spans), and a missing response is an Error with a short `error.type` class; no status
//! code is ever invented. Attribute strings are bounded and converted from bytes lossily.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::intern;
use crate::model::{
    Attribute, Exchange, ExchangeOutcome, HTTP_METHODS, Header, HttpRequest, HttpVersion, Role,
    SpanKind, SpanRecord, SpanStatus, Text,
};
use crate::protocols::propagation::{TraceContext, trim_ows};
use crate::telemetry::ids::random_nonzero;
use crate::telemetry::redact;

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

/// Converts kernel monotonic timestamps to Unix time: `wall = monotonic + offset`, with the
/// offset measured once (per-event clock syscalls would cost more and drift between events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    boot_offset_ns: i128,
}

impl Clock {
    /// Sample pairs to take; the tightest one wins.
    const MEASURE_TRIES: usize = 7;

    /// Read `CLOCK_REALTIME` between two `CLOCK_MONOTONIC` reads a few times and keep the offset
    /// from the sample whose monotonic reads were closest together.
    pub fn measure() -> Clock {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..Self::MEASURE_TRIES {
            let (Some(before), Some(wall), Some(after)) = (
                clock_ns(libc::CLOCK_MONOTONIC),
                clock_ns(libc::CLOCK_REALTIME),
                clock_ns(libc::CLOCK_MONOTONIC),
            ) else {
                continue;
            };
            let gap = after - before;
            let offset = wall - (before + gap / 2);
            if best.is_none_or(|(best_gap, _)| gap < best_gap) {
                best = Some((gap, offset));
            }
        }
        match best {
            Some((_, offset)) => Clock {
                boot_offset_ns: offset,
            },
            None => {
                tracing::warn!(
                    "clock_gettime failed; span times will be monotonic, not wall clock"
                );
                Clock { boot_offset_ns: 0 }
            }
        }
    }

    /// A clock with a known offset (tests, replays).
    pub fn from_offset(ns: i128) -> Clock {
        Clock { boot_offset_ns: ns }
    }

    /// The measured `wall - monotonic` offset in nanoseconds.
    pub fn offset_ns(&self) -> i128 {
        self.boot_offset_ns
    }

    /// Unix-epoch nanoseconds of a monotonic timestamp, clamped to the `u64` range.
    pub fn to_unix_ns(&self, mono_ns: u64) -> u64 {
        let wall = i128::from(mono_ns) + self.boot_offset_ns;
        u64::try_from(wall.max(0)).unwrap_or(u64::MAX)
    }
}

/// One clock reading in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> Option<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// Fresh ids for one span: its own span id, and the trace id used if it is a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub span_id: [u8; 8],
    pub trace_id_if_root: [u8; 16],
}

/// Random, never all-zero ids (for a trace id dated for X-Ray, see `ids::TraceIds`).
pub fn new_ids() -> SpanIds {
    SpanIds {
        span_id: random_nonzero(),
        trace_id_if_root: random_nonzero(),
    }
}

fn is_nonzero(id: &[u8]) -> bool {
    id.iter().any(|b| *b != 0)
}

/// Build the span for one exchange. With a `parent` the span joins its trace as a child of the
/// caller's span (keeping its tracestate and sampling decision); without one it is a sampled
/// root. The span always has its own id, distinct from the incoming parent id.
pub fn build_span(
    input: &SpanInput<'_>,
    parent: Option<&TraceContext>,
    ids: SpanIds,
) -> SpanRecord {
    let exchange = input.exchange;
    let request = &exchange.request;
    let mut attributes = Vec::with_capacity(16);
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
                "http.response.status_code",
                i64::from(response.status),
            ));
        }
        let (status, error_type) = span_status(input.role, exchange);
        if let Some(error_type) = error_type {
            attributes.push(Attribute::str("error.type", error_type));
        }
        (name, status)
    };

    let span_id = own_span_id(ids.span_id, parent.map(|p| p.parent_span_id));
    let (trace_id, parent_span_id, trace_state, sampled) = match parent {
        Some(ctx) => (
            ctx.trace_id,
            Some(ctx.parent_span_id),
            ctx.trace_state.clone(),
            ctx.sampled,
        ),
        None => {
            let trace_id = if is_nonzero(&ids.trace_id_if_root) {
                ids.trace_id_if_root
            } else {
                random_nonzero()
            };
            (trace_id, None, None, true)
        }
    };
    let start_unix_ns = input.clock.to_unix_ns(exchange.start_ns);
    let end_unix_ns = input.clock.to_unix_ns(exchange.end_ns).max(start_unix_ns);
    SpanRecord {
        trace_id,
        span_id,
        parent_span_id,
        trace_state,
        sampled,
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

/// The given id unless it is zero or equal to the incoming parent id.
fn own_span_id(candidate: [u8; 8], incoming: Option<[u8; 8]>) -> [u8; 8] {
    let mut id = candidate;
    while !is_nonzero(&id) || Some(id) == incoming {
        id = random_nonzero();
    }
    id
}

/// Push `http.request.method` (and the original when unknown); return the span name. Methods
/// the conventions know by name (case-sensitive) are static; anything else is `_OTHER`.
fn method_attributes(method: &str, attributes: &mut Vec<Attribute>) -> Text {
    if let Some(known) = HTTP_METHODS.iter().find(|known| **known == method) {
        attributes.push(Attribute::str("http.request.method", *known));
        Text::Static(known)
    } else {
        attributes.push(Attribute::str("http.request.method", "_OTHER"));
        attributes.push(Attribute::str(
            "http.request.method_original",
            bounded(method, MAX_SHORT_ATTR_LEN),
        ));
        Text::Static("HTTP")
    }
}

fn server_attributes(
    request: &HttpRequest,
    conn: &crate::model::ConnMeta,
    out: &mut Vec<Attribute>,
) {
    let target = RequestTarget::parse(&request.method, &request.target);
    out.push(Attribute::str(
        "url.scheme",
        url_scheme(&target, request, conn),
    ));
    if let Some(path) = target.path() {
        out.push(Attribute::str(
            "url.path",
            bounded(&redact::path(path), MAX_URL_LEN),
        ));
    }
    if let Some(query) = target.query().filter(|q| !q.is_empty()) {
        out.push(Attribute::str(
            "url.query",
            bounded(&redact::query(query), MAX_URL_LEN),
        ));
    }
    let host_authority = host_header_authority(request);
    let host = target
        .authority()
        .and_then(HostPort::parse)
        .or_else(|| host_authority.as_deref().and_then(HostPort::parse));
    if let Some(host) = &host {
        out.push(Attribute::str("server.address", intern::text(host.host)));
    }
    let port = host
        .as_ref()
        .and_then(|h| h.port)
        .or_else(|| conn.local.map(|a| a.port()));
    if let Some(port) = port {
        out.push(Attribute::int("server.port", i64::from(port)));
    }
    if let Some(peer) = conn.peer {
        // The client is the peer: one string serves both attributes.
        let address = intern::ip(peer.ip());
        out.push(Attribute::str("client.address", address.clone()));
        out.push(Attribute::int("client.port", i64::from(peer.port())));
        out.push(Attribute::str("network.peer.address", address));
        out.push(Attribute::int("network.peer.port", i64::from(peer.port())));
    }
    out.push(Attribute::str(
        "network.protocol.version",
        request.version.as_str(),
    ));
    if let Some(agent) = header_value(&request.headers, "user-agent") {
        out.push(Attribute::str(
            "user_agent.original",
            bounded_lossy(agent, MAX_USER_AGENT_LEN),
        ));
    }
}

fn client_attributes(
    request: &HttpRequest,
    conn: &crate::model::ConnMeta,
    out: &mut Vec<Attribute>,
) {
    let target = RequestTarget::parse(&request.method, &request.target);
    let host_authority = host_header_authority(request);
    let host = target
        .authority()
        .and_then(HostPort::parse)
        .or_else(|| host_authority.as_deref().and_then(HostPort::parse));
    let peer = conn
        .peer
        .map(|a| SocketAddr::new(canonical_ip(a.ip()), a.port()));
    match (&host, peer) {
        (Some(host), _) => out.push(Attribute::str("server.address", intern::text(host.host))),
        (None, Some(peer)) => out.push(Attribute::str("server.address", intern::ip(peer.ip()))),
        (None, None) => {}
    }
    if let Some(port) = host
        .as_ref()
        .and_then(|h| h.port)
        .or(peer.map(|p| p.port()))
    {
        out.push(Attribute::int("server.port", i64::from(port)));
    }
    if let Some(url) = client_url_full(&target, request, host_authority.as_deref(), peer, conn) {
        out.push(Attribute::str("url.full", url));
    }
    out.push(Attribute::str(
        "url.scheme",
        url_scheme(&target, request, conn),
    ));
    peer_attributes(conn, out);
    out.push(Attribute::str(
        "network.protocol.version",
        request.version.as_str(),
    ));
}

pub(crate) fn peer_attributes(conn: &crate::model::ConnMeta, out: &mut Vec<Attribute>) {
    if let Some(peer) = conn.peer {
        out.push(Attribute::str(
            "network.peer.address",
            intern::ip(peer.ip()),
        ));
        out.push(Attribute::int("network.peer.port", i64::from(peer.port())));
    }
}

/// `url.full` of a client request (at most [`MAX_URL_LEN`] bytes): the absolute-form target as
/// is (credentials and signed query values redacted), else `http://{Host or peer}{target}`.
/// Userinfo in a Host header or a CONNECT target is not a URL credential anyone should send: it
/// is dropped. `host_authority` is the Host header's (see [`host_header_authority`]).
fn client_url_full(
    target: &RequestTarget<'_>,
    request: &HttpRequest,
    host_authority: Option<&str>,
    peer: Option<SocketAddr>,
    conn: &crate::model::ConnMeta,
) -> Option<Text> {
    if host_authority.is_none()
        && peer.is_none()
        && matches!(
            target,
            RequestTarget::Origin { .. } | RequestTarget::Asterisk
        )
    {
        return None;
    }
    let authority = |out: &mut String| match (host_authority, peer) {
        (Some(host), _) => out.push_str(host),
        (None, Some(peer)) => {
            let _ = write!(out, "{peer}");
        }
        (None, None) => {}
    };
    let origin = match (pseudo_scheme(request), conn.tls) {
        (Some("https"), _) | (None, true) => "https://",
        _ => "http://",
    };
    let url = intern::text_fmt(|out| {
        match target {
            RequestTarget::Absolute { .. } => out.push_str(&redact::url(&request.target)),
            RequestTarget::Origin { .. } => {
                out.push_str(origin);
                authority(out);
                out.push_str(&redact::path_and_query(&request.target));
            }
            RequestTarget::Asterisk => {
                out.push_str(origin);
                authority(out);
            }
            RequestTarget::Authority(host) => {
                out.push_str(origin);
                out.push_str(redact::authority_without_userinfo(host));
            }
        }
        let keep = prefix_on_boundary(out, MAX_URL_LEN).len();
        out.truncate(keep);
    });
    Some(url)
}

/// `url.scheme`: an absolute-form target's own, else HTTP/2's `:scheme`, else `https` on a
/// connection whose plaintext came from a TLS library (`http` otherwise).
fn url_scheme(
    target: &RequestTarget<'_>,
    request: &HttpRequest,
    conn: &crate::model::ConnMeta,
) -> Text {
    match (target, pseudo_scheme(request)) {
        (RequestTarget::Absolute { .. }, _) => target.scheme(),
        (_, Some(scheme)) => Text::Static(scheme),
        _ if conn.tls => Text::Static("https"),
        _ => target.scheme(),
    }
}

/// The request target split by form (RFC 9112 section 3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestTarget<'a> {
    /// `/path?query` (anything else unrecognised is also read this way).
    Origin {
        path: &'a str,
        query: Option<&'a str>,
    },
    /// `scheme://authority/path?query`; `rest` starts at the path.
    Absolute {
        scheme: &'a str,
        authority: &'a str,
        rest: &'a str,
    },
    /// `host:port` of a CONNECT request.
    Authority(&'a str),
    /// `*` of a server-wide OPTIONS request.
    Asterisk,
}

impl<'a> RequestTarget<'a> {
    fn parse(method: &str, target: &'a str) -> RequestTarget<'a> {
        if target == "*" {
            return RequestTarget::Asterisk;
        }
        if target.starts_with('/') {
            // Origin form (nearly every request): no scheme can start with `/`.
            let (path, query) = split_query(target);
            return RequestTarget::Origin { path, query };
        }
        if method == "CONNECT" {
            return RequestTarget::Authority(target);
        }
        if let Some(redact::UrlParts {
            scheme,
            authority,
            rest,
        }) = redact::url_parts(target)
            && is_scheme(scheme)
        {
            return RequestTarget::Absolute {
                scheme,
                authority,
                rest,
            };
        }
        let (path, query) = split_query(target);
        RequestTarget::Origin { path, query }
    }

    fn scheme(&self) -> Text {
        match self {
            RequestTarget::Absolute { scheme, .. } => match *scheme {
                "http" => Text::Static("http"),
                "https" => Text::Static("https"),
                other => Text::Owned(other.to_ascii_lowercase()),
            },
            _ => Text::Static("http"),
        }
    }

    fn path(&self) -> Option<&'a str> {
        match *self {
            RequestTarget::Origin { path, .. } => Some(path),
            RequestTarget::Absolute { rest, .. } => {
                let (path, _) = split_query(rest);
                Some(if path.is_empty() { "/" } else { path })
            }
            RequestTarget::Asterisk => Some("*"),
            RequestTarget::Authority(_) => None,
        }
    }

    fn query(&self) -> Option<&'a str> {
        match *self {
            RequestTarget::Origin { query, .. } => query,
            RequestTarget::Absolute { rest, .. } => split_query(rest).1,
            _ => None,
        }
    }

    fn authority(&self) -> Option<&'a str> {
        match *self {
            RequestTarget::Absolute { authority, .. } => Some(authority),
            RequestTarget::Authority(authority) => Some(authority),
            _ => None,
        }
    }
}

/// `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Split `path?query` (query without the `?`); a fragment, if any was sent, is dropped.
fn split_query(target: &str) -> (&str, Option<&str>) {
    let target = target.split_once('#').map_or(target, |(before, _)| before);
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// A `host[:port]` as found in a Host header or URL authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostPort<'a> {
    /// Host name or IP literal (IPv6 without brackets), at most [`MAX_SHORT_ATTR_LEN`] bytes.
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
}

impl<'a> HostPort<'a> {
    /// Parse `host`, `host:port`, `[v6]` or `[v6]:port` (userinfo before `@` is skipped).
    /// An unparseable port is dropped; an empty host gives `None`.
    pub(crate) fn parse(authority: &'a str) -> Option<HostPort<'a>> {
        let authority = authority.trim_matches([' ', '\t']);
        let authority = redact::authority_without_userinfo(authority);
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) if !port.contains(':') => (host, Some(port)),
                Some(_) => (authority, None),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(HostPort {
            host: prefix_on_boundary(host, MAX_SHORT_ATTR_LEN),
            port: port.and_then(|p| p.parse::<u16>().ok()),
        })
    }
}

/// The longest authority a Host header can name: a 253-byte DNS name and `:65535`.
const MAX_HOST_AUTHORITY_LEN: usize = 253 + 6;

/// The Host header's `host[:port]`: userinfo removed from the whole value first (a cut could
/// hide its `@`), then `None` when empty or longer than any real authority (a cut host would be
/// a wrong one; the caller falls back to the peer).
pub(crate) fn host_header_authority(request: &HttpRequest) -> Option<Cow<'_, str>> {
    // HTTP/2 carries the authority in `:authority` (RFC 9113 8.3.1: it wins over Host).
    let value = header_value(&request.headers, ":authority")
        .filter(|_| request.version == HttpVersion::Http2)
        .or_else(|| header_value(&request.headers, "host"))?;
    let authority = trim_ows(redact::authority_bytes_without_userinfo(trim_ows(value)));
    if authority.is_empty() || authority.len() > MAX_HOST_AUTHORITY_LEN {
        return None;
    }
    Some(String::from_utf8_lossy(authority))
}

/// HTTP/2's `:scheme` when it is `http` or `https` (static).
fn pseudo_scheme(request: &HttpRequest) -> Option<&'static str> {
    if request.version != HttpVersion::Http2 {
        return None;
    }
    let value = header_value(&request.headers, ":scheme")?;
    if value.eq_ignore_ascii_case(b"https") {
        Some("https")
    } else if value.eq_ignore_ascii_case(b"http") {
        Some("http")
    } else {
        None
    }
}

pub use crate::protocols::http2::is_grpc;

/// Whether `OTEL_SEMCONV_STABILITY_OPT_IN` (read once, in the agent's environment) asks for
/// the older experimental RPC keys beside the stable ones (`rpc/dup`).
pub fn rpc_dup() -> bool {
    static DUP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DUP.get_or_init(|| {
        std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN").is_ok_and(|v| opt_in_has(&v, "rpc/dup"))
    })
}

/// Whether a comma-separated opt-in list names `token`.
pub fn opt_in_has(list: &str, token: &str) -> bool {
    list.split(',').any(|t| t.trim() == token)
}

/// The first header named `name` (ASCII case-insensitive).
pub(crate) fn header_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| &h.value[..])
}

/// IPv4-mapped IPv6 addresses are reported as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The `error.type` class and status description of an exchange without a (complete) response.
pub(crate) fn outcome_class(outcome: ExchangeOutcome) -> (&'static str, &'static str) {
    match outcome {
        ExchangeOutcome::ConnectionClosed => {
            ("connection_closed", "connection closed before the response")
        }
        ExchangeOutcome::Expired => ("timeout", "no response before the expiry deadline"),
        ExchangeOutcome::StreamDesync => ("stream_desync", "capture lost sync before the response"),
        ExchangeOutcome::StreamReset {
            error_code,
            by_client,
        } => (
            h2_reset_class(error_code),
            if by_client {
                "stream reset by the client"
            } else {
                "stream reset by the server"
            },
        ),
        ExchangeOutcome::GoAway { .. } => ("goaway", "connection going away; stream not processed"),
        ExchangeOutcome::Complete => ("_OTHER", "no response"),
    }
}

/// `error.type` of a reset HTTP/2 stream: `cancelled` for CANCEL, else the RFC 9113 error name.
pub fn h2_reset_class(error_code: u32) -> &'static str {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "cancelled",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    usize::try_from(error_code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("_OTHER")
}

/// Status and `error.type` per the conventions.
fn span_status(role: Role, exchange: &Exchange) -> (SpanStatus, Option<Text>) {
    let Some(response) = &exchange.response else {
        let (class, description) = outcome_class(exchange.outcome);
        return (
            SpanStatus::Error {
                description: description.to_string(),
            },
            Some(Text::Static(class)),
        );
    };
    let code = response.status;
    let error = code >= 500 || (role == Role::Client && code >= 400);
    if error {
        // The code itself says why: the conventions ask for no description then.
        (
            SpanStatus::Error {
                description: String::new(),
            },
            Some(intern::text_fmt(|out| {
                let _ = write!(out, "{code}");
            })),
        )
    } else {
        (SpanStatus::Unset, None)
    }
}

/// Lossy UTF-8 of at most `max` bytes (interned).
fn bounded_lossy(bytes: &[u8], max: usize) -> Text {
    let head = bytes.get(..max).unwrap_or(bytes);
    bounded(&String::from_utf8_lossy(head), max)
}

/// At most `max` bytes, cut on a character boundary (interned: a value seen before is shared).
pub(crate) fn bounded(text: &str, max: usize) -> Text {
    intern::text(prefix_on_boundary(text, max))
}

/// The longest prefix of at most `max` bytes that ends on a character boundary.
fn prefix_on_boundary(text: &str, max: usize) -> &str {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.get(..cut).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, ConnMeta, HttpResponse, HttpVersion};
    use crate::protocols::propagation::ContextSource;

    const MONO_START: u64 = 5_000_000_000;
    const OFFSET: i128 = 1_700_000_000_000_000_000;

    fn request(method: &str, target: &str, headers: &[(&str, &[u8])]) -> HttpRequest {
        HttpRequest {
            method: crate::model::method_text(method),
            target: target.to_string(),
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

    fn ids() -> SpanIds {
        SpanIds {
            span_id: [0xaa; 8],
            trace_id_if_root: [0xbb; 16],
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
            None,
            ids(),
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
    fn zero_ids_are_replaced() {
        let ex = ok(request("GET", "/", &[]));
        let c = default_conn();
        let clock = Clock::from_offset(0);
        let zero = SpanIds {
            span_id: [0; 8],
            trace_id_if_root: [0; 16],
        };
        let span = build_span(
            &SpanInput {
                exchange: &ex,
                conn: &c,
                role: Role::Server,
                clock: &clock,
            },
            None,
            zero,
        );
        assert_ne!(span.span_id, [0; 8]);
        assert_ne!(span.trace_id, [0; 16]);
    }

    #[test]
    fn child_of_incoming_context() {
        let parent = TraceContext {
            trace_id: [0x11; 16],
            parent_span_id: [0x22; 8],
            sampled: false,
            trace_state: Some("vendor=abc".to_string()),
            source: ContextSource::TraceParent,
        };
        let ex = ok(request("GET", "/", &[]));
        let c = default_conn();
        let clock = Clock::from_offset(OFFSET);
        let input = SpanInput {
            exchange: &ex,
            conn: &c,
            role: Role::Server,
            clock: &clock,
        };
        let span = build_span(&input, Some(&parent), ids());
        assert_eq!(span.trace_id, [0x11; 16]);
        assert_eq!(span.parent_span_id, Some([0x22; 8]));
        assert_eq!(span.span_id, [0xaa; 8]);
        assert_eq!(span.trace_state.as_deref(), Some("vendor=abc"));
        assert!(!span.sampled);

        // Even if handed the incoming id, the span never reuses it.
        let reuse = SpanIds {
            span_id: [0x22; 8],
            trace_id_if_root: [0x33; 16],
        };
        let span = build_span(&input, Some(&parent), reuse);
        assert_ne!(span.span_id, [0x22; 8]);
        assert_ne!(span.span_id, [0; 8]);
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
    fn new_ids_are_random_and_nonzero() {
        let a = new_ids();
        let b = new_ids();
        assert!(is_nonzero(&a.span_id) && is_nonzero(&a.trace_id_if_root));
        assert_ne!(a, b);
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
