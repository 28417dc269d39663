//! gRPC exchange -> span name, attributes and status, per the stable RPC conventions (semconv
//! 1.40+): name = `rpc.method` = `package.Service/Method`, `rpc.system.name` `grpc`,
//! `rpc.response.status_code` the status NAME from `grpc-status`, errors per side (every non-OK
//! status on CLIENT spans; only server-fault statuses on SERVER spans). A call without a
//! `grpc-status` (reset, refused, cut short) gets an `error.type` class and no invented status;
//! a completed one whose status may be an undecoded HPACK field gets neither (status Unset).
//! No HTTP attributes: the method, path and HTTP status of a gRPC call say nothing the RPC keys
//! do not. With `rpc/dup` the older experimental keys are added too.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::intern;
use crate::model::{Attribute, Attributes, Exchange, ExchangeOutcome, Role, SpanStatus, Text};
use crate::protocols::http2::exchange::GRPC_STATUS;
use crate::protocols::propagation::trim_ows;
use crate::telemetry::spans::{
    HostPort, MAX_SHORT_ATTR_LEN, SpanInput, host_header_authority, outcome_class, peer_attributes,
};

use crate::telemetry::semconv;
pub use crate::telemetry::semconv::{
    RPC_GRPC_STATUS_CODE, RPC_METHOD, RPC_RESPONSE_STATUS_CODE, RPC_SERVICE, RPC_SYSTEM,
    RPC_SYSTEM_NAME,
};

/// `rpc.method` (and span name) when `:path` is not `/{service}/{method}`.
pub const OTHER_METHOD: &str = "_OTHER";

/// gRPC status names, by code (0..=16).
pub const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Statuses that are errors on a SERVER span (the server's fault).
const SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// `package.Service/Method` from a `:path` of `/package.Service/Method`: one slash inside,
/// both parts non-empty, visible ASCII, at most [`MAX_SHORT_ATTR_LEN`] bytes; else `None`.
pub fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let full = path.strip_prefix('/')?;
    let (service, method) = full.split_once('/')?;
    let valid = !service.is_empty()
        && !method.is_empty()
        && !method.contains('/')
        && full.len() <= MAX_SHORT_ATTR_LEN
        && full
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'));
    valid.then_some((full, service))
}

/// The `grpc-status` code of a response (trailers or trailers-only), when present and numeric.
pub fn grpc_status(exchange: &Exchange) -> Option<u32> {
    let response = exchange.response.as_ref()?;
    // The last one wins: trailers come after the response head.
    let value = response
        .headers
        .iter()
        .rev()
        .find(|h| h.name.eq_ignore_ascii_case(GRPC_STATUS))?;
    let digits = trim_ows(&value.value);
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The status name of a code (`_OTHER` past the known ones).
pub fn status_name(code: u32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| STATUS_NAMES.get(i))
        .copied()
        .unwrap_or("_OTHER")
}

/// Pushes the gRPC span's attributes; returns its name and status.
pub fn grpc_attributes(
    input: &SpanInput<'_>,
    dup: bool,
    out: &mut Attributes,
) -> (Text, SpanStatus) {
    let exchange = input.exchange;
    let request = &exchange.request;
    let method = grpc_method(&request.target);
    let name = match method {
        Some((full, _)) => intern::text(full),
        None => Text::Static(OTHER_METHOD),
    };
    out.push(Attribute::str(RPC_SYSTEM_NAME, "grpc"));
    out.push(Attribute::str(RPC_METHOD, name.clone()));
    if dup {
        out.push(Attribute::str(RPC_SYSTEM, "grpc"));
        if let Some((_, service)) = method {
            out.push(Attribute::str(RPC_SERVICE, intern::text(service)));
        }
    }
    server_endpoint(input, out);
    peer_attributes(input.conn, out);
    let code = grpc_status(exchange);
    let (error, error_type) = match code {
        Some(code) => {
            let name = status_name(code);
            out.push(Attribute::str(RPC_RESPONSE_STATUS_CODE, name));
            if dup {
                out.push(Attribute::int(RPC_GRPC_STATUS_CODE, i64::from(code)));
            }
            let error = match input.role {
                Role::Client => code != 0,
                Role::Server => SERVER_ERRORS.contains(&code) || code > 16,
            };
            (error, error.then_some(Text::Static(name)))
        }
        // Completed, but a response header block had undecoded fields: the grpc-status may be
        // one of them. No status is reported and the span is not called an error.
        None if status_maybe_undecoded(exchange) => (false, None),
        None => (true, Some(no_status_class(exchange))),
    };
    if let Some(error_type) = error_type {
        out.push(Attribute::str(semconv::ERROR_TYPE, error_type));
    }
    let status = if error {
        let description = match (code, exchange.outcome) {
            (None, outcome) if outcome != ExchangeOutcome::Complete => outcome_class(outcome).1,
            (None, _) => "no grpc-status",
            (Some(_), _) => "",
        };
        SpanStatus::Error {
            description: description.to_owned(),
        }
    } else {
        SpanStatus::Unset
    };
    (name, status)
}

/// Whether a completed call's missing `grpc-status` may be among its response's undecoded
/// HPACK fields.
fn status_maybe_undecoded(exchange: &Exchange) -> bool {
    exchange.outcome == ExchangeOutcome::Complete
        && exchange
            .response
            .as_ref()
            .is_some_and(|response| response.undecoded_fields)
}

/// `error.type` of a call that ended without a `grpc-status`: the outcome's class (a reset by
/// CANCEL is `cancelled`), the HTTP status when it was not 200 (a proxy's error), else `_OTHER`.
fn no_status_class(exchange: &Exchange) -> Text {
    match (&exchange.response, exchange.outcome) {
        (_, outcome) if outcome != ExchangeOutcome::Complete => {
            Text::Static(outcome_class(outcome).0)
        }
        (Some(response), _) if response.status != 200 => intern::text_fmt(|out| {
            let _ = write!(out, "{}", response.status);
        }),
        _ => Text::Static("_OTHER"),
    }
}

/// `server.address`/`server.port`: the `:authority` (Host), else on a SERVER span the local
/// port, on a CLIENT span the peer.
fn server_endpoint(input: &SpanInput<'_>, out: &mut Attributes) {
    let request = &input.exchange.request;
    let authority = host_header_authority(request);
    let host = authority.as_deref().and_then(HostPort::parse);
    let fallback: Option<SocketAddr> = match input.role {
        Role::Server => input.conn.local,
        Role::Client => input
            .conn
            .peer
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())),
    };
    match (&host, input.role, fallback) {
        (Some(host), _, _) => out.push(Attribute::str(
            semconv::SERVER_ADDRESS,
            intern::text(host.host),
        )),
        (None, Role::Client, Some(peer)) => out.push(Attribute::str(
            semconv::SERVER_ADDRESS,
            intern::ip(peer.ip()),
        )),
        _ => {}
    }
    if let Some(port) = host
        .as_ref()
        .and_then(|h| h.port)
        .or(fallback.map(|a| a.port()))
    {
        out.push(Attribute::int(semconv::SERVER_PORT, i64::from(port)));
    }
}

#[cfg(test)]
#[path = "rpc_tests.rs"]
mod tests;
