//! Table tests for the B3 single and multi header forms.

use super::*;
use crate::model::{Header, hex};

fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs
        .iter()
        .map(|(n, v)| Header {
            name: n.to_string().into(),
            value: v.as_bytes().to_vec().into(),
        })
        .collect()
}

const T32: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const T16: &str = "a3ce929d0e0e4736";
const S16: &str = "e457b5a2e4d86bd1";
const P16: &str = "05e3ac9a4f6e3b90";

/// Expected (trace hex, parent hex, sampled), or `None` when the input yields no context.
type Expected<'a> = Option<(&'a str, &'a str, bool)>;
/// (case, header value or header pairs, expectation)
type SingleCase<'a> = (&'a str, String, Expected<'a>);
type MultiCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, Expected<'a>);

#[test]
fn single_header_table() {
    // (case, value, expected (trace hex, parent hex, sampled) or None when rejected)
    let t16_padded = format!("0000000000000000{T16}");
    let cases: Vec<SingleCase<'_>> = vec![
        (
            "ids only defer to sampled",
            format!("{T32}-{S16}"),
            Some((T32, S16, true)),
        ),
        ("accept", format!("{T32}-{S16}-1"), Some((T32, S16, true))),
        (
            "deny with ids",
            format!("{T32}-{S16}-0"),
            Some((T32, S16, false)),
        ),
        ("debug", format!("{T32}-{S16}-d"), Some((T32, S16, true))),
        (
            "with parent span",
            format!("{T32}-{S16}-1-{P16}"),
            Some((T32, S16, true)),
        ),
        (
            "64-bit trace id padded",
            format!("{T16}-{S16}-1"),
            Some((t16_padded.as_str(), S16, true)),
        ),
        (
            "ows trimmed",
            format!(" {T32}-{S16}-1\t"),
            Some((T32, S16, true)),
        ),
        (
            "uppercase trace id",
            format!("{}-{S16}", T32.to_uppercase()),
            None,
        ),
        ("zero trace id", format!("{}-{S16}", "0".repeat(32)), None),
        ("zero span id", format!("{T32}-{}", "0".repeat(16)), None),
        ("short span id", format!("{T32}-e457b5a2e4d86bd"), None),
        ("24-digit trace id", format!("{}-{S16}", &T32[..24]), None),
        ("bad sampling state", format!("{T32}-{S16}-x"), None),
        ("bad parent span", format!("{T32}-{S16}-1-xyz"), None),
        ("too many fields", format!("{T32}-{S16}-1-{P16}-1"), None),
        ("empty span", format!("{T32}-"), None),
        ("trailing dash", format!("{T32}-{S16}-"), None),
        ("huge", "a".repeat(10_000), None),
    ];
    for (case, value, expected) in cases {
        let got = parse_b3_single(value.as_bytes());
        match (expected, got) {
            (Some((trace, parent, sampled)), Ok(B3Single::Context(ctx))) => {
                assert_eq!(hex(&ctx.trace_id), trace, "{case}");
                assert_eq!(hex(&ctx.parent_span_id), parent, "{case}");
                assert_eq!(ctx.sampled, sampled, "{case}");
                assert_eq!(ctx.source, ContextSource::B3Single, "{case}");
            }
            (None, Err(_)) => {}
            (expected, got) => panic!("{case}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn single_header_sampling_only() {
    assert_eq!(
        parse_b3_single(b"0"),
        Ok(B3Single::NoContext { sampled: false })
    );
    assert_eq!(
        parse_b3_single(b"1"),
        Ok(B3Single::NoContext { sampled: true })
    );
    assert_eq!(
        parse_b3_single(b"d"),
        Ok(B3Single::NoContext { sampled: true })
    );
    assert!(parse_b3_single(b"2").is_err());
    assert!(parse_b3_single(b"").is_err());
}

#[test]
fn multi_header_table() {
    let t16_padded = format!("0000000000000000{T16}");
    // (case, headers, expected (trace, parent, sampled); None = no context)
    let cases: Vec<MultiCase<'_>> = vec![
        (
            "ids only",
            vec![("X-B3-TraceId", T32), ("X-B3-SpanId", S16)],
            Some((T32, S16, true)),
        ),
        (
            "sampled 1",
            vec![
                ("X-B3-TraceId", T32),
                ("X-B3-SpanId", S16),
                ("X-B3-Sampled", "1"),
            ],
            Some((T32, S16, true)),
        ),
        (
            "sampled 0",
            vec![
                ("X-B3-TraceId", T32),
                ("X-B3-SpanId", S16),
                ("X-B3-Sampled", "0"),
            ],
            Some((T32, S16, false)),
        ),
        (
            "sampled true",
            vec![
                ("X-B3-TraceId", T32),
                ("X-B3-SpanId", S16),
                ("X-B3-Sampled", "true"),
            ],
            Some((T32, S16, true)),
        ),
        (
            "flags 1 beats sampled 0",
            vec![
                ("X-B3-TraceId", T32),
                ("X-B3-SpanId", S16),
                ("X-B3-Sampled", "0"),
                ("X-B3-Flags", "1"),
            ],
            Some((T32, S16, true)),
        ),
        (
            "flags 0 is not debug",
            vec![
                ("X-B3-TraceId", T32),
                ("X-B3-SpanId", S16),
                ("X-B3-Sampled", "0"),
                ("X-B3-Flags", "0"),
            ],
            Some((T32, S16, false)),
        ),
        (
            "lowercase names",
            vec![("x-b3-traceid", T32), ("x-b3-spanid", S16)],
            Some((T32, S16, true)),
        ),
        (
            "parent span id ignored",
            vec![
                ("X-B3-TraceId", T32),
                ("X-B3-SpanId", S16),
                ("X-B3-ParentSpanId", P16),
            ],
            Some((T32, S16, true)),
        ),
        (
            "64-bit trace id padded",
            vec![("X-B3-TraceId", T16), ("X-B3-SpanId", S16)],
            Some((t16_padded.as_str(), S16, true)),
        ),
        ("span id missing", vec![("X-B3-TraceId", T32)], None),
        ("trace id missing", vec![("X-B3-SpanId", S16)], None),
        (
            "bad sampled value",
            vec![
                ("X-B3-TraceId", T32),
                ("X-B3-SpanId", S16),
                ("X-B3-Sampled", "yes"),
            ],
            None,
        ),
        (
            "repeated trace id",
            vec![
                ("X-B3-TraceId", T32),
                ("X-B3-TraceId", T32),
                ("X-B3-SpanId", S16),
            ],
            None,
        ),
        (
            "uppercase hex",
            vec![
                ("X-B3-TraceId", "80F198EE56343BA864FE8B2A57D3EFF7"),
                ("X-B3-SpanId", S16),
            ],
            None,
        ),
        ("sampled only", vec![("X-B3-Sampled", "1")], None),
    ];
    for (case, pairs, expected) in cases {
        let ctx = extract(&headers(&pairs));
        match (expected, ctx) {
            (Some((trace, parent, sampled)), Some(ctx)) => {
                assert_eq!(hex(&ctx.trace_id), trace, "{case}");
                assert_eq!(hex(&ctx.parent_span_id), parent, "{case}");
                assert_eq!(ctx.sampled, sampled, "{case}");
                assert_eq!(ctx.source, ContextSource::B3Multi, "{case}");
            }
            (None, None) => {}
            (expected, got) => panic!("{case}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn multi_header_absent_and_errors() {
    assert_eq!(parse_b3_multi(&headers(&[("Host", "x")])), Ok(None));
    assert_eq!(
        parse_b3_multi(&headers(&[("X-B3-TraceId", T32)])),
        Err(PropagationError::Missing("X-B3-SpanId"))
    );
}
