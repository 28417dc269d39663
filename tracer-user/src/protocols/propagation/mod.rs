//! Incoming trace context: W3C traceparent/tracestate, B3 single and multi, AWS X-Ray.
//!
//! [`extract`] reads the headers of a captured request and returns the context the span should
//! join, or `None` when the span starts a new trace. Precedence when several formats are present:
//!
//! 1. a valid W3C `traceparent` (with its `tracestate` when that is valid too);
//! 2. the B3 single header `b3` (a valid `b3` without ids, such as the deny value `0`, ends the
//!    search: it overrides the multi-header form and means "start a new trace");
//! 3. the B3 multi headers `X-B3-TraceId` + `X-B3-SpanId`;
//! 4. `grpc-trace-bin` (OpenCensus binary, base64 in HTTP/2 `-bin` headers);
//! 5. `X-Amzn-Trace-Id`.
//!
//! An invalid, duplicated or unparseable header of one format is ignored and the next format is
//! tried. Every parser is total over arbitrary bytes and runs in time linear in its input.

mod b3;
mod grpc_bin;
mod hexid;
mod w3c;
mod xray;

#[cfg(test)]
mod b3_tests;
#[cfg(test)]
mod extract_tests;
#[cfg(test)]
mod w3c_tests;
#[cfg(test)]
mod xray_tests;

pub use b3::{B3Single, parse_b3_multi, parse_b3_single};
pub use grpc_bin::parse_grpc_trace_bin;
pub use w3c::{MAX_TRACESTATE_MEMBERS, TraceParent, parse_traceparent, parse_tracestate};
pub use xray::parse_xray;

use crate::model::Header;

/// Which header format a [`TraceContext`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextSource {
    TraceParent,
    B3Single,
    B3Multi,
    XRay,
    GrpcTraceBin,
}

/// The remote parent a span adopts: it joins `trace_id` as a child of `parent_span_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span id: the PARENT of the span being built, never its own id.
    pub parent_span_id: [u8; 8],
    pub sampled: bool,
    /// Normalised W3C tracestate (members joined by `,`), only with a valid traceparent.
    pub trace_state: Option<String>,
    pub source: ContextSource,
}

/// Why a propagation header was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PropagationError {
    #[error("header value of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("header value has the wrong length or shape")]
    Shape,
    #[error("invalid version")]
    Version,
    #[error("invalid trace id")]
    TraceId,
    #[error("invalid span id")]
    SpanId,
    #[error("invalid trace flags")]
    Flags,
    #[error("invalid sampling state")]
    Sampling,
    #[error("unexpected characters after the last field")]
    Trailing,
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("field {0} appears more than once")]
    Duplicate(&'static str),
    #[error("more than {0} list members")]
    TooManyMembers(usize),
    #[error("invalid tracestate list member")]
    Member,
}

/// Extract the incoming context per the module's precedence rule. `None` means "start a new
/// trace"; invalid headers are never an error for the request being traced.
pub fn extract(headers: &[Header]) -> Option<TraceContext> {
    match from_w3c(headers) {
        Ok(Some(ctx)) => return Some(ctx),
        Ok(None) => {}
        Err(error) => tracing::trace!(%error, "ignoring traceparent"),
    }
    match single_header(headers, "b3") {
        HeaderLookup::One(value) => match parse_b3_single(value) {
            Ok(B3Single::Context(ctx)) => return Some(ctx),
            Ok(B3Single::NoContext { .. }) => return None,
            Err(error) => tracing::trace!(%error, "ignoring b3 header"),
        },
        HeaderLookup::Many => tracing::trace!("ignoring repeated b3 headers"),
        HeaderLookup::Absent => {}
    }
    match parse_b3_multi(headers) {
        Ok(Some(ctx)) => return Some(ctx),
        Ok(None) => {}
        Err(error) => tracing::trace!(%error, "ignoring X-B3 headers"),
    }
    match single_header(headers, "grpc-trace-bin") {
        HeaderLookup::One(value) => match parse_grpc_trace_bin(value) {
            Ok(ctx) => return Some(ctx),
            Err(error) => tracing::trace!(%error, "ignoring grpc-trace-bin"),
        },
        HeaderLookup::Many => tracing::trace!("ignoring repeated grpc-trace-bin headers"),
        HeaderLookup::Absent => {}
    }
    match single_header(headers, "x-amzn-trace-id") {
        HeaderLookup::One(value) => match parse_xray(value) {
            Ok(ctx) => return Some(ctx),
            Err(error) => tracing::trace!(%error, "ignoring X-Amzn-Trace-Id"),
        },
        HeaderLookup::Many => tracing::trace!("ignoring repeated X-Amzn-Trace-Id headers"),
        HeaderLookup::Absent => {}
    }
    None
}

/// traceparent (exactly one header) plus its tracestate; `Ok(None)` when absent.
fn from_w3c(headers: &[Header]) -> Result<Option<TraceContext>, PropagationError> {
    let value = match single_header(headers, "traceparent") {
        HeaderLookup::Absent => return Ok(None),
        HeaderLookup::Many => return Err(PropagationError::Duplicate("traceparent")),
        HeaderLookup::One(value) => value,
    };
    let parent = parse_traceparent(value)?;
    let states = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("tracestate"))
        .map(|h| &h.value[..]);
    let trace_state = parse_tracestate(states).unwrap_or_else(|error| {
        tracing::trace!(%error, "dropping tracestate");
        None
    });
    Ok(Some(TraceContext {
        trace_id: parent.trace_id,
        parent_span_id: parent.parent_id,
        sampled: parent.sampled(),
        trace_state,
        source: ContextSource::TraceParent,
    }))
}

/// Result of looking up a header that must appear at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderLookup<'a> {
    Absent,
    One(&'a [u8]),
    Many,
}

/// Find the header named `name` (ASCII case-insensitive), telling apart absent and repeated.
pub(crate) fn single_header<'a>(headers: &'a [Header], name: &str) -> HeaderLookup<'a> {
    let mut found = HeaderLookup::Absent;
    for header in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        found = match found {
            HeaderLookup::Absent => HeaderLookup::One(&header.value),
            _ => return HeaderLookup::Many,
        };
    }
    found
}

/// Strip HTTP optional whitespace (spaces and tabs) from both ends of a header value.
pub fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}
