//! The HTTP semantic-convention attributes of a span: method, server and client views of the
//! request, peer, protocol version, user agent; and the opt-ins that change which keys are sent.

use std::net::SocketAddr;

use crate::intern;
use crate::model::{Attribute, Attributes, HTTP_METHODS, Header, HttpRequest, Text};
use crate::telemetry::redact;

use super::url::{
    HostPort, RequestTarget, bounded, bounded_lossy, canonical_ip, client_url_full, host_header,
    url_scheme, with_host_header,
};
use super::{MAX_SHORT_ATTR_LEN, MAX_URL_LEN, MAX_USER_AGENT_LEN};
use crate::telemetry::semconv;

/// Push `http.request.method` (and the original when unknown); return the span name. Methods
/// the conventions know by name (case-sensitive) are static; anything else is `_OTHER`.
pub(super) fn method_attributes(method: &str, attributes: &mut Attributes) -> Text {
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
    out: &mut Attributes,
) {
    let target = RequestTarget::parse(&request.method, &request.target);
    out.push(Attribute::str(
        semconv::URL_SCHEME,
        url_scheme(&target, request, conn),
    ));
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
    let (host, port) = target_or_header_host(
        &target,
        with_host_header(request, |header| header.host.clone()),
    );
    if let Some(host) = host {
        out.push(Attribute::str(semconv::SERVER_ADDRESS, host));
    }
    let port = port.or_else(|| conn.local.map(|a| a.port()));
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
    out: &mut Attributes,
) {
    let target = RequestTarget::parse(&request.method, &request.target);
    let host_header = host_header(request);
    let (host, host_port) = target_or_header_host(&target, host_header.host);
    let host_authority = host_header.authority;
    let peer = conn
        .peer
        .map(|a| SocketAddr::new(canonical_ip(a.ip()), a.port()));
    match (host, peer) {
        (Some(host), _) => out.push(Attribute::str(semconv::SERVER_ADDRESS, host)),
        (None, Some(peer)) => out.push(Attribute::str(
            semconv::SERVER_ADDRESS,
            intern::ip(peer.ip()),
        )),
        (None, None) => {}
    }
    if let Some(port) = host_port.or(peer.map(|p| p.port())) {
        out.push(Attribute::int(semconv::SERVER_PORT, i64::from(port)));
    }
    if let Some(url) = client_url_full(&target, request, host_authority.as_deref(), peer, conn) {
        out.push(Attribute::str(semconv::URL_FULL, url));
    }
    out.push(Attribute::str(
        semconv::URL_SCHEME,
        url_scheme(&target, request, conn),
    ));
    peer_attributes(conn, out);
    out.push(Attribute::str(
        semconv::NETWORK_PROTOCOL_VERSION,
        request.version.as_str(),
    ));
}

/// The host (interned) and port a request names: its target's authority (absolute form or
/// CONNECT), else its Host header's (`header`, see [`host_header`]). No port without a host.
fn target_or_header_host(
    target: &RequestTarget<'_>,
    header: Option<(Text, Option<u16>)>,
) -> (Option<Text>, Option<u16>) {
    match target.authority().and_then(HostPort::parse) {
        Some(host) => (Some(intern::text(host.host)), host.port),
        None => header.map_or((None, None), |(host, port)| (Some(host), port)),
    }
}

pub(crate) fn peer_attributes(conn: &crate::model::ConnMeta, out: &mut Attributes) {
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
