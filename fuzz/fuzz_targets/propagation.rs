//! Fuzzes trace-context extraction. The input is read as a header list (lines split on `\n`,
//! name and value split on the first `:`) for `extract` and the B3 multi-header parser, and as
//! a raw header value for each single-value parser. Checks: no panic, and every accepted context
//! has non-zero ids (all-zero ids are invalid in every supported format).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::model::Header;
use tracer::protocols::propagation::{
    B3Single, ContextSource, MAX_TRACESTATE_MEMBERS, TraceContext, extract, parse_b3_multi,
    parse_b3_single, parse_grpc_trace_bin, parse_traceparent, parse_tracestate, parse_xray,
};

fn headers_of(data: &[u8]) -> Vec<Header> {
    data.split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let (name, value) = line.split_at(colon);
            Some(Header {
                name: String::from_utf8_lossy(name).into_owned().into(),
                value: value.get(1..).unwrap_or_default().to_vec().into(),
            })
        })
        .collect()
}

fn check_ids(trace_id: &[u8; 16], parent_id: &[u8; 8]) {
    assert!(
        trace_id.iter().any(|b| *b != 0),
        "accepted an all-zero trace id"
    );
    assert!(
        parent_id.iter().any(|b| *b != 0),
        "accepted an all-zero parent span id"
    );
}

fn check_context(ctx: &TraceContext) {
    check_ids(&ctx.trace_id, &ctx.parent_span_id);
    if let Some(state) = &ctx.trace_state {
        assert_eq!(
            ctx.source,
            ContextSource::TraceParent,
            "tracestate without traceparent"
        );
        assert!(!state.is_empty(), "empty tracestate kept");
        assert!(
            state.split(',').count() <= MAX_TRACESTATE_MEMBERS,
            "too many tracestate members"
        );
        assert!(
            state.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "non-printable tracestate"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let headers = headers_of(data);
    if let Some(ctx) = extract(&headers) {
        check_context(&ctx);
    }
    if let Ok(Some(ctx)) = parse_b3_multi(&headers) {
        check_context(&ctx);
    }
    if let Ok(parent) = parse_traceparent(data) {
        check_ids(&parent.trace_id, &parent.parent_id);
        assert_ne!(parent.version, 0xff, "accepted version ff");
    }
    if let Ok(B3Single::Context(ctx)) = parse_b3_single(data) {
        check_context(&ctx);
    }
    if let Ok(ctx) = parse_xray(data) {
        check_context(&ctx);
    }
    if let Ok(ctx) = parse_grpc_trace_bin(data) {
        check_context(&ctx);
    }
    if let Ok(Some(state)) = parse_tracestate(data.split(|b| *b == b'\n')) {
        assert!(
            state.split(',').count() <= MAX_TRACESTATE_MEMBERS,
            "too many tracestate members"
        );
    }
});
