//! Request targets, hosts and URLs as spans report them: target forms (RFC 9112), Host and
//! `:authority`, `url.full` with credentials and signed query values redacted, bounded values.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::intern;
use crate::model::{HttpRequest, HttpVersion, Text};
use crate::protocols::propagation::trim_ows;
use crate::telemetry::redact;

use super::MAX_SHORT_ATTR_LEN;
use super::MAX_URL_LEN;
use super::attributes::header_value;

/// `url.full` of a client request (at most [`MAX_URL_LEN`] bytes): the absolute-form target as
/// is (credentials and signed query values redacted), else `http://{Host or peer}{target}`.
/// Userinfo in a Host header or a CONNECT target is not a URL credential anyone should send: it
/// is dropped. `host_authority` is the Host header's (see [`host_header_authority`]).
pub(super) fn client_url_full(
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
pub(super) fn url_scheme(
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
pub(super) enum RequestTarget<'a> {
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
    pub(super) fn parse(method: &str, target: &'a str) -> RequestTarget<'a> {
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

    pub(super) fn scheme(&self) -> Text {
        match self {
            RequestTarget::Absolute { scheme, .. } => match *scheme {
                "http" => Text::Static("http"),
                "https" => Text::Static("https"),
                other => Text::Owned(other.to_ascii_lowercase()),
            },
            _ => Text::Static("http"),
        }
    }

    pub(super) fn path(&self) -> Option<&'a str> {
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

    pub(super) fn query(&self) -> Option<&'a str> {
        match *self {
            RequestTarget::Origin { query, .. } => query,
            RequestTarget::Absolute { rest, .. } => split_query(rest).1,
            _ => None,
        }
    }

    pub(super) fn authority(&self) -> Option<&'a str> {
        match *self {
            RequestTarget::Absolute { authority, .. } => Some(authority),
            RequestTarget::Authority(authority) => Some(authority),
            _ => None,
        }
    }
}

/// `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
pub(super) fn is_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Split `path?query` (query without the `?`); a fragment, if any was sent, is dropped.
pub(super) fn split_query(target: &str) -> (&str, Option<&str>) {
    // Byte searches: `#` and `?` are ASCII, so every cut is on a character boundary.
    let target = match target.bytes().position(|b| b == b'#') {
        Some(at) => target.get(..at).unwrap_or_default(),
        None => target,
    };
    match target.bytes().position(|b| b == b'?') {
        Some(at) => (
            target.get(..at).unwrap_or_default(),
            Some(target.get(at + 1..).unwrap_or_default()),
        ),
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
        // Byte searches: every delimiter is ASCII, so every cut is on a character boundary.
        let authority = authority.trim_matches(|c| c == ' ' || c == '\t');
        let authority = match authority.bytes().rposition(|b| b == b'@') {
            Some(at) => authority.get(at + 1..).unwrap_or_default(),
            None => authority,
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let close = bracketed.bytes().position(|b| b == b']')?;
            let after = bracketed.get(close + 1..).unwrap_or_default();
            (
                bracketed.get(..close).unwrap_or_default(),
                after.strip_prefix(':'),
            )
        } else {
            let mut colons = authority.bytes().enumerate().filter(|(_, b)| *b == b':');
            match (colons.next(), colons.next()) {
                (Some((at, _)), None) => (
                    authority.get(..at).unwrap_or_default(),
                    authority.get(at + 1..),
                ),
                _ => (authority, None),
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
pub(super) const MAX_HOST_AUTHORITY_LEN: usize = 253 + 6;

/// The Host header's `host[:port]`: userinfo removed from the whole value first (a cut could
/// hide its `@`), then `None` when empty or longer than any real authority (a cut host would be
/// a wrong one; the caller falls back to the peer).
pub(crate) fn host_header_authority(request: &HttpRequest) -> Option<Cow<'_, str>> {
    authority_of_value(host_header_value(request)?)
}

/// The raw value [`host_header_authority`] reads: HTTP/2's `:authority` (RFC 9113 8.3.1: it
/// wins over Host), else the Host header.
fn host_header_value(request: &HttpRequest) -> Option<&[u8]> {
    let authority = if request.version == HttpVersion::Http2 {
        header_value(&request.headers, ":authority")
    } else {
        None
    };
    authority.or_else(|| header_value(&request.headers, "host"))
}

/// The `host[:port]` of a Host header value (see [`host_header_authority`]).
fn authority_of_value(value: &[u8]) -> Option<Cow<'_, str>> {
    let authority = trim_ows(redact::authority_bytes_without_userinfo(trim_ows(value)));
    if authority.is_empty() || authority.len() > MAX_HOST_AUTHORITY_LEN {
        return None;
    }
    Some(String::from_utf8_lossy(authority))
}

/// What a request's Host header says, as span attributes use it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct HostHeader {
    /// [`host_header_authority`], interned.
    pub(super) authority: Option<Text>,
    /// The host (interned) and port [`HostPort::parse`] reads from `authority`.
    pub(super) host: Option<(Text, Option<u16>)>,
}

impl HostHeader {
    fn of_value(value: &[u8]) -> HostHeader {
        let authority = authority_of_value(value);
        let host = authority
            .as_deref()
            .and_then(HostPort::parse)
            .map(|h| (intern::text(h.host), h.port));
        HostHeader {
            authority: authority.map(|a| intern::text(&a)),
            host,
        }
    }
}

/// Longest Host header value the per-thread memo of [`host_header`] keeps (longer ones are read
/// every time; no real authority comes close).
const MAX_HOST_MEMO_LEN: usize = 512;

thread_local! {
    /// The last Host header value read on this thread, and what it said.
    static LAST_HOST: std::cell::RefCell<(Vec<u8>, Option<HostHeader>)> =
        const { std::cell::RefCell::new((Vec::new(), None)) };
}

/// [`HostHeader`] of `request`.
pub(super) fn host_header(request: &HttpRequest) -> HostHeader {
    with_host_header(request, HostHeader::clone)
}

/// `f` of the [`HostHeader`] of `request`, without copying what `f` does not take. The last
/// value read on this thread is kept with the header's bytes, so requests that name the same
/// host as the one before (nearly all of them: a client and a server each talk to few hosts)
/// reuse it without trimming, parsing or interning again.
pub(super) fn with_host_header<R>(request: &HttpRequest, f: impl FnOnce(&HostHeader) -> R) -> R {
    let Some(value) = host_header_value(request) else {
        return f(&HostHeader::default());
    };
    LAST_HOST.with_borrow_mut(|(key, last)| {
        if let Some(last) = last
            && key.as_slice() == value
        {
            return f(last);
        }
        let read = HostHeader::of_value(value);
        let out = f(&read);
        if value.len() <= MAX_HOST_MEMO_LEN {
            key.clear();
            key.extend_from_slice(value);
            *last = Some(read);
        }
        out
    })
}

/// HTTP/2's `:scheme` when it is `http` or `https` (static).
pub(super) fn pseudo_scheme(request: &HttpRequest) -> Option<&'static str> {
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

/// IPv4-mapped IPv6 addresses are reported as IPv4.
pub(super) fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Lossy UTF-8 of at most `max` bytes (interned).
pub(super) fn bounded_lossy(bytes: &[u8], max: usize) -> Text {
    let head = bytes.get(..max).unwrap_or(bytes);
    // The usual value is UTF-8 (nearly always ASCII): checked without the lossy walk, which
    // gives the same text for it.
    match std::str::from_utf8(head) {
        Ok(text) => bounded(text, max),
        Err(_) => bounded(&String::from_utf8_lossy(head), max),
    }
}

/// At most `max` bytes, cut on a character boundary (interned: a value seen before is shared).
pub(crate) fn bounded(text: &str, max: usize) -> Text {
    intern::text(prefix_on_boundary(text, max))
}

/// The longest prefix of at most `max` bytes that ends on a character boundary.
pub(super) fn prefix_on_boundary(text: &str, max: usize) -> &str {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.get(..cut).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_port(authority: &str) -> Option<(&str, Option<u16>)> {
        HostPort::parse(authority).map(|h| (h.host, h.port))
    }

    #[test]
    fn host_and_port_of_every_authority_form() {
        assert_eq!(host_port("api.example"), Some(("api.example", None)));
        assert_eq!(
            host_port(" api.example:8080\t"),
            Some(("api.example", Some(8080)))
        );
        assert_eq!(host_port("u:p@h@api:81"), Some(("api", Some(81))));
        assert_eq!(host_port("[::1]:443"), Some(("::1", Some(443))));
        assert_eq!(host_port("[fe80::1]"), Some(("fe80::1", None)));
        assert_eq!(host_port("[fe80::1"), None, "unclosed bracket");
        // A bare IPv6 address (more than one colon) has no port.
        assert_eq!(host_port("fe80::1"), Some(("fe80::1", None)));
        assert_eq!(host_port("h:99999"), Some(("h", None)), "port out of range");
        assert_eq!(host_port("h:"), Some(("h", None)));
        assert_eq!(host_port(":80"), None, "empty host");
        assert_eq!(host_port("ü.example:1"), Some(("ü.example", Some(1))));
        assert_eq!(host_port(""), None);
    }

    fn with_host(version: HttpVersion, headers: &[(&'static str, &[u8])]) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            target: "/".into(),
            version,
            headers: headers
                .iter()
                .map(|(name, value)| crate::model::Header {
                    name: Text::Static(name),
                    value: value.to_vec().into(),
                })
                .collect(),
            body_len: 0,
        }
    }

    /// The per-thread memo gives what reading the header afresh gives, whatever came before:
    /// repeated values, alternating ones, HTTP/2's `:authority` beside a Host, a request
    /// without one, and values too long to be kept.
    #[test]
    fn the_host_memo_answers_as_a_fresh_read() {
        let long = format!("{}:81", "h".repeat(MAX_HOST_MEMO_LEN));
        let values: [&[u8]; 8] = [
            b"api.example:8080",
            b"api.example:8080",
            b"other.example",
            b"u:secret@api.example:8080",
            b" api.example:8080",
            b"[::1]:443",
            b"",
            long.as_bytes(),
        ];
        for round in 0..3 {
            for (i, value) in values.iter().enumerate() {
                let value = if round == 1 {
                    values[values.len() - 1 - i]
                } else {
                    value
                };
                let request = with_host(HttpVersion::Http11, &[("Host", value)]);
                let fresh = HostHeader::of_value(value);
                assert_eq!(host_header(&request), fresh, "{value:?}");
                assert_eq!(
                    fresh.authority.as_deref(),
                    host_header_authority(&request).as_deref()
                );
                let h2 = with_host(
                    HttpVersion::Http2,
                    &[(":authority", b"h2.example:9"), ("host", value)],
                );
                assert_eq!(host_header(&h2), HostHeader::of_value(b"h2.example:9"));
                let none = with_host(HttpVersion::Http11, &[("X-Host", value)]);
                assert_eq!(host_header(&none), HostHeader::default());
            }
        }
        let read = host_header(&with_host(
            HttpVersion::Http11,
            &[("Host", b"u:p@a.test:70")],
        ));
        assert_eq!(read.authority.as_deref(), Some("a.test:70"));
        assert_eq!(read.host, Some((Text::Static("a.test"), Some(70))));
    }

    #[test]
    fn split_query_drops_the_fragment_first() {
        assert_eq!(split_query("/a?b=1"), ("/a", Some("b=1")));
        assert_eq!(split_query("/a#f?x"), ("/a", None));
        assert_eq!(split_query("/a?b#f"), ("/a", Some("b")));
        assert_eq!(split_query("/é?ü"), ("/é", Some("ü")));
        assert_eq!(split_query("/a?"), ("/a", Some("")));
        assert_eq!(split_query(""), ("", None));
    }
}
