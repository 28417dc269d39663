//! AWS X-Ray propagation: `X-Amzn-Trace-Id: Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=1`.

use super::hexid::{HexCase, decode, decode_id};
use super::{ContextSource, PropagationError, TraceContext, trim_ows};

/// Longest header value considered (real ones are well under 256 bytes).
const MAX_XRAY_LEN: usize = 1024;
/// Most `;`-separated fields considered.
const MAX_XRAY_FIELDS: usize = 16;

/// Parse an `X-Amzn-Trace-Id` value. Fields may come in any order, keys are matched
/// case-insensitively, unknown fields (`Self`, `Lineage`, ...) are ignored. `Root` and `Parent`
/// are required; `Sampled` is `1`, `0` or `?` (requested, taken as sampled) and defaults to
/// sampled when absent. Hex digits of either case are accepted.
pub fn parse_xray(value: &[u8]) -> Result<TraceContext, PropagationError> {
    let value = trim_ows(value);
    if value.len() > MAX_XRAY_LEN {
        return Err(PropagationError::TooLong(value.len()));
    }
    let mut root = None;
    let mut parent = None;
    let mut sampled = None;
    for (index, field) in value.split(|b| *b == b';').enumerate() {
        if index >= MAX_XRAY_FIELDS {
            return Err(PropagationError::TooManyMembers(MAX_XRAY_FIELDS));
        }
        let field = trim_ows(field);
        if field.is_empty() {
            continue;
        }
        let eq = field
            .iter()
            .position(|b| *b == b'=')
            .ok_or(PropagationError::Shape)?;
        let key = trim_ows(field.get(..eq).unwrap_or_default());
        let val = trim_ows(field.get(eq + 1..).unwrap_or_default());
        if key.eq_ignore_ascii_case(b"root") {
            set_once(&mut root, parse_root(val)?, "Root")?;
        } else if key.eq_ignore_ascii_case(b"parent") {
            let id = decode_id::<8>(val, HexCase::Any).ok_or(PropagationError::SpanId)?;
            set_once(&mut parent, id, "Parent")?;
        } else if key.eq_ignore_ascii_case(b"sampled") {
            let decision = match val {
                b"1" | b"?" => true,
                b"0" => false,
                _ => return Err(PropagationError::Sampling),
            };
            set_once(&mut sampled, decision, "Sampled")?;
        }
    }
    Ok(TraceContext {
        trace_id: root.ok_or(PropagationError::Missing("Root"))?,
        parent_span_id: parent.ok_or(PropagationError::Missing("Parent"))?,
        sampled: sampled.unwrap_or(true),
        trace_state: None,
        source: ContextSource::XRay,
    })
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), PropagationError> {
    if slot.is_some() {
        return Err(PropagationError::Duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

/// `1-{8 hex epoch seconds}-{24 hex}` -> the 32-hex trace id (the two parts concatenated).
fn parse_root(root: &[u8]) -> Result<[u8; 16], PropagationError> {
    let mut parts = root.split(|b| *b == b'-');
    let (version, epoch, unique, extra) = (parts.next(), parts.next(), parts.next(), parts.next());
    let (Some(b"1"), Some(epoch), Some(unique), None) = (version, epoch, unique, extra) else {
        return Err(PropagationError::Version);
    };
    let epoch = decode::<4>(epoch, HexCase::Any).ok_or(PropagationError::TraceId)?;
    let unique = decode::<12>(unique, HexCase::Any).ok_or(PropagationError::TraceId)?;
    let mut id = [0u8; 16];
    for (dst, src) in id.iter_mut().zip(epoch.iter().chain(unique.iter())) {
        *dst = *src;
    }
    if id.iter().all(|b| *b == 0) {
        return Err(PropagationError::TraceId);
    }
    Ok(id)
}
