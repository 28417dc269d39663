//! Zipkin B3 propagation: the single `b3` header and the `X-B3-*` multi-header form.

use super::hexid::{HexCase, decode_id};
use super::{ContextSource, HeaderLookup, PropagationError, TraceContext, single_header, trim_ows};
use crate::model::Header;

/// Longest `b3` value accepted: 32 + 1 + 16 + 1 + 1 + 1 + 16.
const MAX_B3_LEN: usize = 68;

/// What a valid `b3` single header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum B3Single {
    /// Trace and span ids: a parent to join.
    Context(TraceContext),
    /// Only a sampling decision (`0` deny, `1` accept, `d` debug): start a new trace.
    NoContext { sampled: bool },
}

/// Parse `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]` or a lone sampling state.
/// A missing sampling state means "decide locally", which this tracer does as sampled.
pub fn parse_b3_single(value: &[u8]) -> Result<B3Single, PropagationError> {
    let value = trim_ows(value);
    if value.len() > MAX_B3_LEN {
        return Err(PropagationError::TooLong(value.len()));
    }
    let mut fields = value.split(|b| *b == b'-');
    let first = fields.next().unwrap_or_default();
    let Some(span_field) = fields.next() else {
        let sampled = sampling_state(first).ok_or(PropagationError::Sampling)?;
        return Ok(B3Single::NoContext { sampled });
    };
    let trace_id = b3_trace_id(first)?;
    let parent_span_id =
        decode_id::<8>(span_field, HexCase::Lower).ok_or(PropagationError::SpanId)?;
    let sampled = match fields.next() {
        Some(state) => sampling_state(state).ok_or(PropagationError::Sampling)?,
        None => true,
    };
    if let Some(grandparent) = fields.next() {
        decode_id::<8>(grandparent, HexCase::Lower).ok_or(PropagationError::SpanId)?;
    }
    if fields.next().is_some() {
        return Err(PropagationError::Trailing);
    }
    Ok(B3Single::Context(TraceContext {
        trace_id,
        parent_span_id,
        sampled,
        trace_state: None,
        source: ContextSource::B3Single,
    }))
}

/// Parse the multi-header form. `Ok(None)` when neither `X-B3-TraceId` nor `X-B3-SpanId` is
/// present; an error when either is missing, repeated or malformed. `X-B3-Flags: 1` (debug)
/// implies sampled; otherwise `X-B3-Sampled` decides, and its absence means sampled.
pub fn parse_b3_multi(headers: &[Header]) -> Result<Option<TraceContext>, PropagationError> {
    let trace = single_header(headers, "x-b3-traceid");
    let span = single_header(headers, "x-b3-spanid");
    let (trace, span) = match (trace, span) {
        (HeaderLookup::Absent, HeaderLookup::Absent) => return Ok(None),
        (HeaderLookup::One(trace), HeaderLookup::One(span)) => (trace, span),
        (HeaderLookup::Many, _) => return Err(PropagationError::Duplicate("X-B3-TraceId")),
        (_, HeaderLookup::Many) => return Err(PropagationError::Duplicate("X-B3-SpanId")),
        (HeaderLookup::Absent, _) => return Err(PropagationError::Missing("X-B3-TraceId")),
        (_, HeaderLookup::Absent) => return Err(PropagationError::Missing("X-B3-SpanId")),
    };
    let trace_id = b3_trace_id(trim_ows(trace))?;
    let parent_span_id =
        decode_id::<8>(trim_ows(span), HexCase::Lower).ok_or(PropagationError::SpanId)?;
    let debug = match single_header(headers, "x-b3-flags") {
        HeaderLookup::One(flags) => trim_ows(flags) == b"1",
        _ => false,
    };
    let sampled = match single_header(headers, "x-b3-sampled") {
        _ if debug => true,
        HeaderLookup::Absent => true,
        HeaderLookup::Many => return Err(PropagationError::Duplicate("X-B3-Sampled")),
        HeaderLookup::One(value) => match trim_ows(value) {
            b"1" | b"true" => true,
            b"0" | b"false" => false,
            _ => return Err(PropagationError::Sampling),
        },
    };
    Ok(Some(TraceContext {
        trace_id,
        parent_span_id,
        sampled,
        trace_state: None,
        source: ContextSource::B3Multi,
    }))
}

/// 32 hex digits, or 16 left-padded with zeros to 128 bits.
fn b3_trace_id(digits: &[u8]) -> Result<[u8; 16], PropagationError> {
    if digits.len() == 16 {
        let low = decode_id::<8>(digits, HexCase::Lower).ok_or(PropagationError::TraceId)?;
        let mut id = [0u8; 16];
        for (dst, src) in id.iter_mut().skip(8).zip(low) {
            *dst = src;
        }
        Ok(id)
    } else {
        decode_id::<16>(digits, HexCase::Lower).ok_or(PropagationError::TraceId)
    }
}

/// `1` accept, `d` debug (implies accept), `0` deny.
fn sampling_state(state: &[u8]) -> Option<bool> {
    match state {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}
