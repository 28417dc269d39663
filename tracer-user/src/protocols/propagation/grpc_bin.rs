//! `grpc-trace-bin`: the OpenCensus binary trace context gRPC peers carry, base64-encoded as
//! every HTTP/2 `-bin` header value is. Layout: version byte `0`, then fields in order: `0` +
//! 16-byte trace id, `1` + 8-byte span id, `2` + 1-byte options (bit 0 sampled). An unknown
//! version, a missing or short id field, an all-zero id: the header is ignored. An unknown field
//! id after the known ones ends parsing (later versions may append fields).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::{ContextSource, PropagationError, TraceContext, trim_ows};

/// Longest base64 value accepted (29 bytes encode to 40 characters; room for future fields).
const MAX_ENCODED_LEN: usize = 128;

const FIELD_TRACE_ID: u8 = 0;
const FIELD_SPAN_ID: u8 = 1;
const FIELD_OPTIONS: u8 = 2;

/// Standard base64, padded or not (gRPC strips the padding; both are accepted).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parse a `grpc-trace-bin` header value (base64 text).
pub fn parse_grpc_trace_bin(value: &[u8]) -> Result<TraceContext, PropagationError> {
    let value = trim_ows(value);
    if value.len() > MAX_ENCODED_LEN {
        return Err(PropagationError::TooLong(value.len()));
    }
    let bytes = BASE64.decode(value).map_err(|_| PropagationError::Shape)?;
    parse_binary(&bytes)
}

/// Parse the decoded binary form.
pub fn parse_binary(bytes: &[u8]) -> Result<TraceContext, PropagationError> {
    let (&version, mut rest) = bytes.split_first().ok_or(PropagationError::Shape)?;
    if version != 0 {
        return Err(PropagationError::Version);
    }
    let mut trace_id: Option<[u8; 16]> = None;
    let mut span_id: Option<[u8; 8]> = None;
    let mut options: u8 = 0;
    while let Some((&field, after)) = rest.split_first() {
        match field {
            FIELD_TRACE_ID if trace_id.is_none() && span_id.is_none() => {
                let (id, after) = split_array::<16>(after).ok_or(PropagationError::TraceId)?;
                trace_id = Some(id);
                rest = after;
            }
            FIELD_SPAN_ID if span_id.is_none() => {
                let (id, after) = split_array::<8>(after).ok_or(PropagationError::SpanId)?;
                span_id = Some(id);
                rest = after;
            }
            FIELD_OPTIONS => {
                let (&flags, after) = after.split_first().ok_or(PropagationError::Flags)?;
                options = flags;
                rest = after;
            }
            // Unknown (or out-of-order) field: nothing after it can be read.
            _ => break,
        }
    }
    let trace_id = trace_id
        .filter(|id| id.iter().any(|b| *b != 0))
        .ok_or(PropagationError::TraceId)?;
    let parent_span_id = span_id
        .filter(|id| id.iter().any(|b| *b != 0))
        .ok_or(PropagationError::SpanId)?;
    Ok(TraceContext {
        trace_id,
        parent_span_id,
        sampled: options & 1 == 1,
        trace_state: None,
        source: ContextSource::GrpcTraceBin,
    })
}

fn split_array<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let head = bytes.get(..N)?;
    let array: [u8; N] = head.try_into().ok()?;
    Some((array, bytes.get(N..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hex;

    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    fn binary(options: Option<u8>) -> Vec<u8> {
        let mut out = vec![0, FIELD_TRACE_ID];
        out.extend_from_slice(&TRACE);
        out.push(FIELD_SPAN_ID);
        out.extend_from_slice(&SPAN);
        if let Some(options) = options {
            out.extend_from_slice(&[FIELD_OPTIONS, options]);
        }
        out
    }

    fn encoded(bytes: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(bytes)
            .into_bytes()
    }

    #[test]
    fn the_spec_layout_parses_padded_or_not() {
        let ctx = parse_grpc_trace_bin(&encoded(&binary(Some(1)))).expect("valid");
        assert_eq!(hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&ctx.parent_span_id), "00f067aa0ba902b7");
        assert!(ctx.sampled);
        assert_eq!(ctx.source, ContextSource::GrpcTraceBin);
        let padded = base64::engine::general_purpose::STANDARD.encode(binary(Some(0)));
        assert!(padded.ends_with('='));
        let ctx = parse_grpc_trace_bin(padded.as_bytes()).expect("padded");
        assert!(!ctx.sampled);
        // Options are optional (OpenCensus default: not sampled); only bit 0 counts.
        assert!(!parse_binary(&binary(None)).expect("no options").sampled);
        assert!(parse_binary(&binary(Some(3))).expect("bit 0").sampled);
        // Fields appended by a later revision after the known ones are ignored.
        let mut longer = binary(Some(1));
        longer.extend_from_slice(&[9, 1, 2, 3]);
        assert!(parse_binary(&longer).is_ok());
    }

    #[test]
    fn invalid_values_are_ignored() {
        let mut version = binary(Some(1));
        version[0] = 1;
        let mut zero_trace = binary(Some(1));
        zero_trace[2..18].fill(0);
        let mut zero_span = binary(Some(1));
        zero_span[19..27].fill(0);
        let short_trace = binary(None)[..10].to_vec();
        let short_span = binary(None)[..22].to_vec();
        let no_span = binary(None)[..18].to_vec();
        let short_options = {
            let mut b = binary(None);
            b.push(FIELD_OPTIONS);
            b
        };
        for (case, bytes) in [
            ("version", version),
            ("zero trace", zero_trace),
            ("zero span", zero_span),
            ("short trace", short_trace),
            ("short span", short_span),
            ("no span", no_span),
            ("short options", short_options),
            ("empty", Vec::new()),
            ("span before trace", {
                let mut b = vec![0, FIELD_SPAN_ID];
                b.extend_from_slice(&SPAN);
                b.push(FIELD_TRACE_ID);
                b.extend_from_slice(&TRACE);
                b
            }),
        ] {
            assert!(parse_binary(&bytes).is_err(), "{case}");
            assert!(parse_grpc_trace_bin(&encoded(&bytes)).is_err(), "{case}");
        }
        assert!(parse_grpc_trace_bin(b"not base64!").is_err());
        assert!(parse_grpc_trace_bin(&[b'A'; 200]).is_err());
    }
}
