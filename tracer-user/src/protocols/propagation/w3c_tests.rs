//! Table tests for traceparent/tracestate, following the header cases of the W3C trace-context
//! conformance suite (`test/test.py`), plus bounds and garbage input.

use super::*;
use crate::model::{Header, hex};

const TRACE: &str = "12345678901234567890123456789012";
const PARENT: &str = "1234567890123456";

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_string().into(),
        value: value.as_bytes().to_vec().into(),
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs.iter().map(|(n, v)| header(n, v)).collect()
}

/// (case, traceparent value, adopted?)
const TRACEPARENT_CASES: &[(&str, &str, bool)] = &[
    (
        "plain v00 sampled",
        "00-12345678901234567890123456789012-1234567890123456-01",
        true,
    ),
    (
        "v00 not sampled",
        "00-12345678901234567890123456789012-1234567890123456-00",
        true,
    ),
    (
        "v00 trailing dot",
        "00-12345678901234567890123456789012-1234567890123456-01.",
        false,
    ),
    (
        "v00 trailing future fields",
        "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        false,
    ),
    (
        "future version cc",
        "cc-12345678901234567890123456789012-1234567890123456-01",
        true,
    ),
    (
        "future version with extra fields",
        "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        true,
    ),
    (
        "future version, extra without dash",
        "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
        false,
    ),
    (
        "future version too short",
        "cc-12345678901234567890123456789012-1234567890123456-1",
        false,
    ),
    (
        "version ff",
        "ff-12345678901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "version leading dot",
        ".0-12345678901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "version trailing dot",
        "0.-12345678901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "version three digits",
        "000-12345678901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "version four digits",
        "0000-12345678901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "version one digit",
        "0-12345678901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "version uppercase",
        "0A-12345678901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "trace id all zero",
        "00-00000000000000000000000000000000-1234567890123456-01",
        false,
    ),
    (
        "trace id leading dot",
        "00-.2345678901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "trace id trailing dot",
        "00-1234567890123456789012345678901.-1234567890123456-01",
        false,
    ),
    (
        "trace id 33 digits",
        "00-123456789012345678901234567890123-1234567890123456-01",
        false,
    ),
    (
        "trace id 31 digits",
        "00-1234567890123456789012345678901-1234567890123456-01",
        false,
    ),
    (
        "trace id uppercase",
        "00-ABCDEF78901234567890123456789012-1234567890123456-01",
        false,
    ),
    (
        "parent id all zero",
        "00-12345678901234567890123456789012-0000000000000000-01",
        false,
    ),
    (
        "parent id leading dot",
        "00-12345678901234567890123456789012-.234567890123456-01",
        false,
    ),
    (
        "parent id trailing dot",
        "00-12345678901234567890123456789012-123456789012345.-01",
        false,
    ),
    (
        "parent id 17 digits",
        "00-12345678901234567890123456789012-12345678901234567-01",
        false,
    ),
    (
        "parent id 15 digits",
        "00-12345678901234567890123456789012-123456789012345-01",
        false,
    ),
    (
        "parent id uppercase",
        "00-12345678901234567890123456789012-ABCDEF7890123456-01",
        false,
    ),
    (
        "flags leading dot",
        "00-12345678901234567890123456789012-1234567890123456-.0",
        false,
    ),
    (
        "flags trailing dot",
        "00-12345678901234567890123456789012-1234567890123456-0.",
        false,
    ),
    (
        "flags three digits",
        "00-12345678901234567890123456789012-1234567890123456-001",
        false,
    ),
    (
        "flags one digit",
        "00-12345678901234567890123456789012-1234567890123456-1",
        false,
    ),
    (
        "flags uppercase",
        "00-12345678901234567890123456789012-1234567890123456-0F",
        false,
    ),
    (
        "leading space",
        " 00-12345678901234567890123456789012-1234567890123456-01",
        true,
    ),
    (
        "leading tab",
        "\t00-12345678901234567890123456789012-1234567890123456-01",
        true,
    ),
    (
        "trailing space",
        "00-12345678901234567890123456789012-1234567890123456-01 ",
        true,
    ),
    (
        "trailing tab",
        "00-12345678901234567890123456789012-1234567890123456-01\t",
        true,
    ),
    (
        "mixed ows",
        "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
        true,
    ),
    ("empty", "", false),
    (
        "dashes only",
        "--------------------------------------------------------",
        false,
    ),
];

#[test]
fn traceparent_conformance_table() {
    for (case, value, adopted) in TRACEPARENT_CASES {
        let ctx = extract(&headers(&[("traceparent", value)]));
        match (adopted, ctx) {
            (true, Some(ctx)) => {
                assert_eq!(hex(&ctx.trace_id), TRACE, "{case}");
                assert_eq!(hex(&ctx.parent_span_id), PARENT, "{case}");
                assert_eq!(ctx.source, ContextSource::TraceParent, "{case}");
            }
            (false, None) => {}
            (adopted, got) => panic!("{case}: expected adopted={adopted}, got {got:?}"),
        }
    }
}

#[test]
fn traceparent_fields_and_flag_mask() {
    let parsed = parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03")
        .expect("valid traceparent");
    assert_eq!(parsed.version, 0);
    assert_eq!(hex(&parsed.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&parsed.parent_id), "b7ad6b7169203331");
    assert_eq!(parsed.flags, 0x03);
    assert!(parsed.sampled(), "bit 0 set among unknown bits");
    let unsampled = parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-fe")
        .expect("valid traceparent");
    assert!(!unsampled.sampled(), "only bit 0 means sampled");
}

#[test]
fn traceparent_errors_name_the_field() {
    let cases: &[(&str, PropagationError)] = &[
        (
            "ff-12345678901234567890123456789012-1234567890123456-01",
            PropagationError::Version,
        ),
        (
            "00-00000000000000000000000000000000-1234567890123456-01",
            PropagationError::TraceId,
        ),
        (
            "00-12345678901234567890123456789012-0000000000000000-01",
            PropagationError::SpanId,
        ),
        (
            "00-12345678901234567890123456789012-1234567890123456-0x",
            PropagationError::Flags,
        ),
        (
            "00-12345678901234567890123456789012-1234567890123456-01-",
            PropagationError::Trailing,
        ),
        (
            "00-12345678901234567890123456789012-1234567890123456",
            PropagationError::Shape,
        ),
    ];
    for (value, expected) in cases {
        assert_eq!(
            parse_traceparent(value.as_bytes()),
            Err(expected.clone()),
            "{value}"
        );
    }
}

#[test]
fn traceparent_header_names() {
    let value = "00-12345678901234567890123456789012-1234567890123456-01";
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT", "traceparent"] {
        assert!(
            extract(&headers(&[(name, value)])).is_some(),
            "{name} should match"
        );
    }
    for name in ["trace-parent", "trace.parent", "traceparent2"] {
        assert!(
            extract(&headers(&[(name, value)])).is_none(),
            "{name} must not match"
        );
    }
}

#[test]
fn duplicated_traceparent_is_ignored() {
    let ctx = extract(&headers(&[
        (
            "traceparent",
            "00-12345678901234567890123456789011-1234567890123456-01",
        ),
        (
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-01",
        ),
    ]));
    assert_eq!(ctx, None);
}

#[test]
fn sampled_flag_is_carried() {
    let ctx = extract(&headers(&[(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-00",
    )]))
    .expect("valid");
    assert!(!ctx.sampled);
    let ctx = extract(&headers(&[(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-01",
    )]))
    .expect("valid");
    assert!(ctx.sampled);
}

/// Run extract with a valid traceparent followed by `tracestate` headers; return what was kept.
fn state_of(states: &[(&str, &str)]) -> Option<String> {
    let mut all = vec![header(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-00",
    )];
    all.extend(states.iter().map(|(n, v)| header(n, v)));
    let ctx = extract(&all).expect("traceparent stays valid whatever tracestate holds");
    assert_eq!(hex(&ctx.trace_id), TRACE);
    ctx.trace_state
}

fn numbered_members(from: usize, to: usize) -> String {
    (from..=to)
        .map(|i| format!("bar{i:02}={i:02}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// (case, tracestate headers, expected normalised tracestate)
type StateCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<String>);

#[test]
fn tracestate_conformance_table() {
    let key_plain = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let key_vendor = format!("{key_plain}@a-z0-9_-*/");
    let all_value: String = (0x20u8..=0x7e)
        .filter(|b| *b != b',' && *b != b'=')
        .map(char::from)
        .collect();
    let all_plain = format!("{key_plain}={all_value}");
    let all_vendor = format!("{key_vendor}={all_value}");
    let first_32 = [
        numbered_members(1, 10),
        numbered_members(11, 20),
        numbered_members(21, 30),
        numbered_members(31, 32),
    ];
    let key_256 = format!("{}=1", "z".repeat(256));
    let key_257 = format!("{}=1", "z".repeat(257));
    let tenant_241 = format!("{}@{}=1", "t".repeat(241), "v".repeat(14));
    let tenant_242 = format!("{}@v=1", "t".repeat(242));
    let vendor_15 = format!("t@{}=1", "v".repeat(15));
    let value_256 = format!("foo={}", "v".repeat(256));
    let value_257 = format!("foo={}", "v".repeat(257));

    // (case, tracestate headers, expected normalised tracestate)
    let cases: Vec<StateCase<'_>> = vec![
        ("missing", vec![], None),
        (
            "two members",
            vec![("tracestate", "foo=1,bar=2")],
            Some("foo=1,bar=2".into()),
        ),
        ("wrong name dash", vec![("trace-state", "foo=1")], None),
        ("wrong name dot", vec![("trace.state", "foo=1")], None),
        (
            "casing 1",
            vec![("TraceState", "foo=1")],
            Some("foo=1".into()),
        ),
        (
            "casing 2",
            vec![("TrAcEsTaTe", "foo=1")],
            Some("foo=1".into()),
        ),
        (
            "casing 3",
            vec![("TRACESTATE", "foo=1")],
            Some("foo=1".into()),
        ),
        ("empty header", vec![("tracestate", "")], None),
        (
            "empty after value",
            vec![("tracestate", "foo=1"), ("tracestate", "")],
            Some("foo=1".into()),
        ),
        (
            "empty before value",
            vec![("tracestate", ""), ("tracestate", "foo=1")],
            Some("foo=1".into()),
        ),
        (
            "multiple headers combine in order",
            vec![
                ("tracestate", "foo=1,bar=2"),
                ("tracestate", "rojo=1,congo=2"),
                ("tracestate", "baz=3"),
            ],
            Some("foo=1,bar=2,rojo=1,congo=2,baz=3".into()),
        ),
        (
            "duplicate key same value",
            vec![("tracestate", "foo=1,foo=1")],
            None,
        ),
        (
            "duplicate key other value",
            vec![("tracestate", "foo=1,foo=2")],
            None,
        ),
        (
            "duplicate across headers",
            vec![("tracestate", "foo=1"), ("tracestate", "foo=1")],
            None,
        ),
        (
            "duplicate across headers 2",
            vec![("tracestate", "foo=1"), ("tracestate", "foo=2")],
            None,
        ),
        (
            "all allowed chars, plain key",
            vec![("tracestate", all_plain.as_str())],
            Some(all_plain.clone()),
        ),
        (
            "all allowed chars, vendor key",
            vec![("tracestate", all_vendor.as_str())],
            Some(all_vendor.clone()),
        ),
        (
            "ows around commas",
            vec![("tracestate", "foo=1 \t , \t bar=2, \t baz=3")],
            Some("foo=1,bar=2,baz=3".into()),
        ),
        (
            "ows tabs",
            vec![("tracestate", "foo=1\t \t,\t \tbar=2,\t \tbaz=3")],
            Some("foo=1,bar=2,baz=3".into()),
        ),
        (
            "leading space",
            vec![("tracestate", " foo=1")],
            Some("foo=1".into()),
        ),
        (
            "leading tab",
            vec![("tracestate", "\tfoo=1")],
            Some("foo=1".into()),
        ),
        (
            "trailing space",
            vec![("tracestate", "foo=1 ")],
            Some("foo=1".into()),
        ),
        (
            "trailing tab",
            vec![("tracestate", "foo=1\t")],
            Some("foo=1".into()),
        ),
        (
            "both sides",
            vec![("tracestate", "\t foo=1 \t")],
            Some("foo=1".into()),
        ),
        ("key with space", vec![("tracestate", "foo =1")], None),
        ("uppercase key", vec![("tracestate", "FOO=1")], None),
        ("dot in key", vec![("tracestate", "foo.bar=1")], None),
        ("empty vendor", vec![("tracestate", "foo@=1,bar=2")], None),
        ("empty tenant", vec![("tracestate", "@foo=1,bar=2")], None),
        ("double at", vec![("tracestate", "foo@@bar=1,bar=2")], None),
        ("two ats", vec![("tracestate", "foo@bar@baz=1,bar=2")], None),
        (
            "32 members",
            first_32
                .iter()
                .map(|m| ("tracestate", m.as_str()))
                .collect(),
            Some(first_32.join(",")),
        ),
        (
            "33 members",
            vec![
                ("tracestate", first_32[0].as_str()),
                ("tracestate", first_32[1].as_str()),
                ("tracestate", first_32[2].as_str()),
                ("tracestate", "bar31=31,bar32=32,bar33=33"),
            ],
            None,
        ),
        (
            "key 256",
            vec![("tracestate", "foo=1"), ("tracestate", key_256.as_str())],
            Some(format!("foo=1,{key_256}")),
        ),
        (
            "key 257",
            vec![("tracestate", "foo=1"), ("tracestate", key_257.as_str())],
            None,
        ),
        (
            "tenant 241 vendor 14",
            vec![("tracestate", "foo=1"), ("tracestate", tenant_241.as_str())],
            Some(format!("foo=1,{tenant_241}")),
        ),
        (
            "tenant 242",
            vec![("tracestate", "foo=1"), ("tracestate", tenant_242.as_str())],
            None,
        ),
        (
            "vendor 15",
            vec![("tracestate", "foo=1"), ("tracestate", vendor_15.as_str())],
            None,
        ),
        (
            "value with equals",
            vec![("tracestate", "foo=bar=baz")],
            None,
        ),
        ("empty value", vec![("tracestate", "foo=,bar=3")], None),
        (
            "value 256",
            vec![("tracestate", value_256.as_str())],
            Some(value_256.clone()),
        ),
        ("value 257", vec![("tracestate", value_257.as_str())], None),
        ("no equals", vec![("tracestate", "foo")], None),
        ("only commas", vec![("tracestate", ",, ,\t,")], None),
        (
            "digit-first plain key",
            vec![("tracestate", "1foo=1")],
            None,
        ),
        (
            "digit-first tenant",
            vec![("tracestate", "1foo@bar=1")],
            Some("1foo@bar=1".into()),
        ),
    ];
    for (case, states, expected) in cases {
        assert_eq!(state_of(&states), expected, "{case}");
    }
}

#[test]
fn tracestate_needs_a_valid_traceparent() {
    assert_eq!(extract(&headers(&[("tracestate", "foo=1")])), None);
    let ctx = extract(&headers(&[
        (
            "traceparent",
            "00-00000000000000000000000000000000-1234567890123456-01",
        ),
        ("tracestate", "foo=1"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ]))
    .expect("falls through to b3");
    assert_eq!(ctx.source, ContextSource::B3Single);
    assert_eq!(
        ctx.trace_state, None,
        "tracestate never rides along another format"
    );
}

#[test]
fn garbage_never_panics() {
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 55],
        vec![0; 200],
        b"00-\xff\xfe345678901234567890123456789012-1234567890123456-01".to_vec(),
        "00-12345678901234567890123456789012-1234567890123456-0\u{e9}"
            .as_bytes()
            .to_vec(),
        vec![b'-'; 100_000],
        vec![b','; 100_000],
        vec![b'='; 10_000],
        vec![b'@'; 10_000],
    ];
    inputs.extend((0u8..=255).map(|b| vec![b; 60]));
    for input in &inputs {
        let _ = parse_traceparent(input);
        let _ = parse_tracestate([input.as_slice()]);
        let _ = parse_b3_single(input);
        let _ = parse_xray(input);
        for name in [
            "traceparent",
            "tracestate",
            "b3",
            "X-B3-TraceId",
            "x-amzn-trace-id",
        ] {
            let _ = extract(&[Header {
                name: name.to_string().into(),
                value: input.clone().into(),
            }]);
        }
    }
}
