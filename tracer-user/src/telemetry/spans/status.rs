//! Span status and `error.type` per the conventions: HTTP status classes by role, outcomes of
//! exchanges without a (complete) response, HTTP/2 reset codes.

use std::fmt::Write as _;

use crate::intern;
use crate::model::{Exchange, ExchangeOutcome, Role, SpanStatus, Text};

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
pub(super) fn span_status(role: Role, exchange: &Exchange) -> (SpanStatus, Option<Text>) {
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
