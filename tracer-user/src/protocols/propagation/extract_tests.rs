//! Precedence between the supported formats when a request carries several of them.

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

const TP: (&str, &str) = (
    "traceparent",
    "00-11111111111111111111111111111111-1111111111111111-01",
);
const TP_BAD: (&str, &str) = (
    "traceparent",
    "00-11111111111111111111111111111111-1111111111111111-01x",
);
const B3: (&str, &str) = ("b3", "22222222222222222222222222222222-2222222222222222-1");
const B3_DENY: (&str, &str) = ("b3", "0");
const B3_BAD: (&str, &str) = ("b3", "22222222222222222222222222222222");
const B3M_TRACE: (&str, &str) = ("X-B3-TraceId", "33333333333333333333333333333333");
const B3M_SPAN: (&str, &str) = ("X-B3-SpanId", "3333333333333333");
const GRPC_BIN: (&str, &str) = ("grpc-trace-bin", "AABVVVVVVVVVVVVVVVVVVVVVAVVVVVVVVVVVAgE");
const GRPC_BIN_BAD: (&str, &str) = ("grpc-trace-bin", "AQ");
const XRAY: (&str, &str) = (
    "X-Amzn-Trace-Id",
    "Root=1-44444444-444444444444444444444444;Parent=4444444444444444",
);

/// (case, headers, expected source; `None` = new trace)
type PrecedenceCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<ContextSource>,
);

#[test]
fn precedence_table() {
    // (case, headers, expected source; None = new trace)
    let cases: &[PrecedenceCase] = &[
        ("nothing", &[("Host", "example.com")], None),
        (
            "all four",
            &[XRAY, B3M_TRACE, B3M_SPAN, B3, TP],
            Some(ContextSource::TraceParent),
        ),
        (
            "b3 single over multi and xray",
            &[XRAY, B3M_TRACE, B3M_SPAN, B3],
            Some(ContextSource::B3Single),
        ),
        (
            "b3 multi over xray",
            &[XRAY, B3M_TRACE, B3M_SPAN],
            Some(ContextSource::B3Multi),
        ),
        ("xray alone", &[XRAY], Some(ContextSource::XRay)),
        (
            "grpc-trace-bin over xray",
            &[XRAY, GRPC_BIN],
            Some(ContextSource::GrpcTraceBin),
        ),
        (
            "b3 multi over grpc-trace-bin",
            &[GRPC_BIN, B3M_TRACE, B3M_SPAN],
            Some(ContextSource::B3Multi),
        ),
        (
            "traceparent over grpc-trace-bin",
            &[GRPC_BIN, TP],
            Some(ContextSource::TraceParent),
        ),
        (
            "invalid grpc-trace-bin falls to xray",
            &[GRPC_BIN_BAD, XRAY],
            Some(ContextSource::XRay),
        ),
        (
            "repeated grpc-trace-bin is ignored",
            &[GRPC_BIN, GRPC_BIN],
            None,
        ),
        (
            "invalid traceparent falls to b3",
            &[TP_BAD, B3],
            Some(ContextSource::B3Single),
        ),
        (
            "duplicate traceparent falls to xray",
            &[TP, TP, XRAY],
            Some(ContextSource::XRay),
        ),
        (
            "invalid b3 single falls to multi",
            &[B3_BAD, B3M_TRACE, B3M_SPAN],
            Some(ContextSource::B3Multi),
        ),
        (
            "b3 deny overrides multi",
            &[B3_DENY, B3M_TRACE, B3M_SPAN],
            None,
        ),
        ("b3 deny overrides xray", &[B3_DENY, XRAY], None),
        (
            "valid traceparent beats b3 deny",
            &[B3_DENY, TP],
            Some(ContextSource::TraceParent),
        ),
        ("b3 deny alone", &[B3_DENY], None),
        (
            "half b3 multi falls to xray",
            &[B3M_SPAN, XRAY],
            Some(ContextSource::XRay),
        ),
    ];
    for (case, pairs, expected) in cases {
        let got = extract(&headers(pairs));
        assert_eq!(got.as_ref().map(|c| c.source), *expected, "{case}");
        if let Some(ctx) = got {
            let digit = match ctx.source {
                ContextSource::TraceParent => '1',
                ContextSource::B3Single => '2',
                ContextSource::B3Multi => '3',
                ContextSource::XRay => '4',
                ContextSource::GrpcTraceBin => '5',
            };
            assert_eq!(hex(&ctx.trace_id), digit.to_string().repeat(32), "{case}");
            assert_eq!(
                hex(&ctx.parent_span_id),
                digit.to_string().repeat(16),
                "{case}"
            );
        }
    }
}

#[test]
fn header_lookup_helpers() {
    let hs = headers(&[("A", "1"), ("b", "2"), ("B", "3")]);
    assert_eq!(single_header(&hs, "a"), HeaderLookup::One(b"1"));
    assert_eq!(single_header(&hs, "b"), HeaderLookup::Many);
    assert_eq!(single_header(&hs, "c"), HeaderLookup::Absent);
    assert_eq!(trim_ows(b" \t x y \t"), b"x y");
    assert_eq!(trim_ows(b" \t "), b"");
    assert_eq!(trim_ows(b""), b"");
}
