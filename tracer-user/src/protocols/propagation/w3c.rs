//! W3C Trace Context: the `traceparent` and `tracestate` header grammars.

use super::hexid::{HexCase, decode, decode_id};
use super::{PropagationError, trim_ows};

/// Length of a version-00 traceparent: `vv-<32>-<16>-ff`.
const TRACEPARENT_LEN: usize = 55;
/// Most list members a tracestate may carry; more makes the whole tracestate invalid.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest key without a vendor part.
const MAX_SIMPLE_KEY_LEN: usize = 256;
/// Longest tenant part of a `tenant@vendor` key.
const MAX_TENANT_LEN: usize = 241;
/// Longest vendor part of a `tenant@vendor` key.
const MAX_VENDOR_LEN: usize = 14;
/// Longest value.
const MAX_VALUE_LEN: usize = 256;

/// A parsed `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// The only flag defined so far: bit 0, sampled.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }
}

/// Parse one `traceparent` value. Surrounding spaces/tabs are ignored; version `00` must be
/// exactly 55 characters; a future version must be at least that long and continue with `-`
/// after the flags (the rest is ignored).
pub fn parse_traceparent(value: &[u8]) -> Result<TraceParent, PropagationError> {
    let value = trim_ows(value);
    if value.len() < TRACEPARENT_LEN {
        return Err(PropagationError::Shape);
    }
    let field = |range: std::ops::Range<usize>| value.get(range).unwrap_or_default();
    let dash_at = |index: usize| value.get(index) == Some(&b'-');
    if !(dash_at(2) && dash_at(35) && dash_at(52)) {
        return Err(PropagationError::Shape);
    }
    let [version] = decode::<1>(field(0..2), HexCase::Lower).ok_or(PropagationError::Version)?;
    if version == 0xff {
        return Err(PropagationError::Version);
    }
    let trace_id =
        decode_id::<16>(field(3..35), HexCase::Lower).ok_or(PropagationError::TraceId)?;
    let parent_id =
        decode_id::<8>(field(36..52), HexCase::Lower).ok_or(PropagationError::SpanId)?;
    let [flags] = decode::<1>(field(52 + 1..TRACEPARENT_LEN), HexCase::Lower)
        .ok_or(PropagationError::Flags)?;
    let rest_ok = if version == 0 {
        value.len() == TRACEPARENT_LEN
    } else {
        value.len() == TRACEPARENT_LEN || dash_at(TRACEPARENT_LEN)
    };
    if !rest_ok {
        return Err(PropagationError::Trailing);
    }
    Ok(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

/// Combine and validate every `tracestate` header value (in arrival order, as if joined with
/// `,`). Empty members are skipped; `Ok(None)` when no member is left. Any invalid member, a
/// duplicated key or more than [`MAX_TRACESTATE_MEMBERS`] members rejects the whole tracestate.
/// The result is the members joined by `,` without optional whitespace.
pub fn parse_tracestate<'a, I>(values: I) -> Result<Option<String>, PropagationError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut members: Vec<(&[u8], &[u8])> = Vec::new();
    for value in values {
        for raw in value.split(|b| *b == b',') {
            let member = trim_ows(raw);
            if member.is_empty() {
                continue;
            }
            let (key, val) = split_member(member).ok_or(PropagationError::Member)?;
            if members.iter().any(|(seen, _)| *seen == key) {
                return Err(PropagationError::Duplicate("tracestate key"));
            }
            if members.len() == MAX_TRACESTATE_MEMBERS {
                return Err(PropagationError::TooManyMembers(MAX_TRACESTATE_MEMBERS));
            }
            members.push((key, val));
        }
    }
    if members.is_empty() {
        return Ok(None);
    }
    let mut joined = String::new();
    for (index, (key, val)) in members.iter().enumerate() {
        if index > 0 {
            joined.push(',');
        }
        // Both parts were checked to be printable ASCII, so each byte is one char.
        joined.extend(key.iter().map(|b| char::from(*b)));
        joined.push('=');
        joined.extend(val.iter().map(|b| char::from(*b)));
    }
    Ok(Some(joined))
}

/// Split `key=value` at the first `=` and validate both sides.
fn split_member(member: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = member.iter().position(|b| *b == b'=')?;
    let key = member.get(..eq)?;
    let value = member.get(eq + 1..)?;
    (valid_key(key) && valid_value(value)).then_some((key, value))
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// `lcalpha 0*255(keychar)` or `(lcalpha / DIGIT) 0*240(keychar) "@" lcalpha 0*13(keychar)`.
fn valid_key(key: &[u8]) -> bool {
    let mut parts = key.split(|b| *b == b'@');
    let (first, second, third) = (parts.next(), parts.next(), parts.next());
    match (first, second, third) {
        (Some(simple), None, None) => {
            part_ok(simple, MAX_SIMPLE_KEY_LEN, |b| b.is_ascii_lowercase())
        }
        (Some(tenant), Some(vendor), None) => {
            part_ok(tenant, MAX_TENANT_LEN, |b| {
                b.is_ascii_lowercase() || b.is_ascii_digit()
            }) && part_ok(vendor, MAX_VENDOR_LEN, |b| b.is_ascii_lowercase())
        }
        _ => false,
    }
}

fn part_ok(part: &[u8], max_len: usize, first_ok: impl Fn(u8) -> bool) -> bool {
    match part.split_first() {
        Some((first, rest)) => {
            part.len() <= max_len && first_ok(*first) && rest.iter().all(|b| is_key_char(*b))
        }
        None => false,
    }
}

/// `0*255(chr) nblk-chr`: printable ASCII except `,` and `=`, not ending in a space.
fn valid_value(value: &[u8]) -> bool {
    let chr = |b: &u8| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=';
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value.iter().all(chr)
        && value.last() != Some(&b' ')
}
