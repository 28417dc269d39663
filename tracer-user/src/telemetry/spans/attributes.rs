//! The HTTP semantic-convention attributes of a span: method, server and client views of the
//! request, peer, protocol version, user agent; and the opt-ins that change which keys are sent.

use std::net::SocketAddr;

use crate::intern;
use crate::model::{Attribute, HTTP_METHODS, Header, HttpRequest, Text};
use crate::telemetry::redact;

use super::url::{
    HostPort, RequestTarget, bounded, bounded_lossy, canonical_ip, client_url_full,
    host_header_authority, pseudo_scheme,
};
use super::{MAX_SHORT_ATTR_LEN, MAX_URL_LEN, MAX_USER_AGENT_LEN};
use crate::telemetry::semconv;

/// Push `http.request.method` (and the original when unknown); return the span name. Methods
/// the conventions know by name (case-sensitive) are static; anything else is `_OTHER`.
pub(super) fn method_attributes(method: &str, attributes: &mut Vec<Attribute>) -> Text {
    if let Some(known) = HTTP_METHODS.iter().find(|known| **known == method) {
        attributes.push(Attribute::str(semconv::HTTP_REQUEST_METHOD, *known));
        Text::Static(known)
    } else {
        attributes.push(Attribute::str(semconv::HTTP_REQUEST_METHOD, "_OTHER"));
        attributes.push(Attribute::str(
            semconv::HTTP_REQUEST_METHOD_ORIGINAL,
            bounded(method, MAX_SHORT_ATTR_LEN),
        ));
        Text::Static("HTTP")
    }
}

pub(super) fn server_attributes(
    request: &HttpRequest,
    conn: &crate::model::ConnMeta,
    out: &mut Vec<Attribute>,
) {
    let target = RequestTarget::parse(&request.method, &request.target);
    let scheme = match (&target, pseudo_scheme(request)) {
        (RequestTarget::Absolute { .. }, _) | (_, None) => target.scheme(),
        (_, Some(scheme)) => Text::Static(scheme),
    };
    out.push(Attribute::str(semconv::URL_SCHEME, scheme));
    if let Some(path) = target.path() {
        out.push(Attribute::str(
            semconv::URL_PATH,
            bounded(&redact::path(path), MAX_URL_LEN),
        ));
    }
    if let Some(query) = target.query().filter(|q| !q.is_empty()) {
        out.push(Attribute::str(
            semconv::URL_QUERY,
            bounded(&redact::query(query), MAX_URL_LEN),
        ));
    }
    let host_authority = host_header_authority(request);
    let host = target
        .authority()
        .and_then(HostPort::parse)
        .or_else(|| host_authority.as_deref().and_then(HostPort::parse));
    if let Some(host) = &host {
        out.push(Attribute::str(
            semconv::SERVER_ADDRESS,
            intern::text(host.host),
        ));
    }
    let port = host
        .as_ref()
        .and_then(|h| h.port)
        .or_else(|| conn.local.map(|a| a.port()));
    if let Some(port) = port {
        out.push(Attribute::int(semconv::SERVER_PORT, i64::from(port)));
    }
    if let Some(peer) = conn.peer {
        // The client is the peer: one string serves both attributes.
        let address = intern::ip(peer.ip());
        out.push(Attribute::str(semconv::CLIENT_ADDRESS, address.clone()));
        out.push(Attribute::int(semconv::CLIENT_PORT, i64::from(peer.port())));
        out.push(Attribute::str(semconv::NETWORK_PEER_ADDRESS, address));
        out.push(Attribute::int(
            semconv::NETWORK_PEER_PORT,
            i64::from(peer.port()),
        ));
    }
    out.push(Attribute::str(
        semconv::NETWORK_PROTOCOL_VERSION,
        request.version.as_str(),
    ));
    if let Some(agent) = header_value(&request.headers, "user-agent") {
        out.push(Attribute::str(
            semconv::USER_AGENT_ORIGINAL,
            bounded_lossy(agent, MAX_USER_AGENT_LEN),
        ));
    }
}

pub(super) fn client_attributes(
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
        (Some(host), _) => out.push(Attribute::str(
            semconv::SERVER_ADDRESS,
            intern::text(host.host),
        )),
        (None, Some(peer)) => out.push(Attribute::str(
            semconv::SERVER_ADDRESS,
            intern::ip(peer.ip()),
        )),
        (None, None) => {}
    }
    if let Some(port) = host
        .as_ref()
        .and_then(|h| h.port)
        .or(peer.map(|p| p.port()))
    {
        out.push(Attribute::int(semconv::SERVER_PORT, i64::from(port)));
    }
    if let Some(url) = client_url_full(&target, request, host_authority.as_deref(), peer) {
        out.push(Attribute::str(semconv::URL_FULL, url));
    }
    peer_attributes(conn, out);
    out.push(Attribute::str(
        semconv::NETWORK_PROTOCOL_VERSION,
        request.version.as_str(),
    ));
}

pub(crate) fn peer_attributes(conn: &crate::model::ConnMeta, out: &mut Vec<Attribute>) {
    if let Some(peer) = conn.peer {
        out.push(Attribute::str(
            semconv::NETWORK_PEER_ADDRESS,
            intern::ip(peer.ip()),
        ));
        out.push(Attribute::int(
            semconv::NETWORK_PEER_PORT,
            i64::from(peer.port()),
        ));
    }
}

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
