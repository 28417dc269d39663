//! Table tests for the AWS X-Ray `X-Amzn-Trace-Id` header.

use super::*;
use crate::model::hex;

const TRACE: &str = "5759e988bd862e3fe1be46a994272793";
const PARENT: &str = "53995c3f42cd8ad8";

#[test]
fn xray_table() {
    // (case, value, expected sampled; None = rejected)
    let cases: &[(&str, &str, Option<bool>)] = &[
        (
            "spec example",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            Some(true),
        ),
        (
            "not sampled",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
            Some(false),
        ),
        (
            "sampling requested",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=?",
            Some(true),
        ),
        (
            "sampled absent",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            Some(true),
        ),
        (
            "any order",
            "Sampled=0;Parent=53995c3f42cd8ad8;Root=1-5759e988-bd862e3fe1be46a994272793",
            Some(false),
        ),
        (
            "unknown fields ignored",
            "Self=1-67891234-12456789abcdef012345678;Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=a87bd80c:1|68fd508a:5;Parent=53995c3f42cd8ad8;Sampled=1",
            Some(true),
        ),
        (
            "spaces around fields",
            " Root=1-5759e988-bd862e3fe1be46a994272793 ; Parent=53995c3f42cd8ad8 ;Sampled=1 ",
            Some(true),
        ),
        (
            "trailing semicolon",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;",
            Some(true),
        ),
        (
            "lowercase keys",
            "root=1-5759e988-bd862e3fe1be46a994272793;parent=53995c3f42cd8ad8",
            Some(true),
        ),
        (
            "uppercase hex",
            "Root=1-5759E988-BD862E3FE1BE46A994272793;Parent=53995C3F42CD8AD8",
            Some(true),
        ),
        (
            "root only",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            None,
        ),
        ("parent only", "Parent=53995c3f42cd8ad8;Sampled=1", None),
        (
            "version 2",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            None,
        ),
        (
            "short epoch",
            "Root=1-5759e98-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            None,
        ),
        (
            "long random part",
            "Root=1-5759e988-bd862e3fe1be46a9942727930;Parent=53995c3f42cd8ad8",
            None,
        ),
        (
            "extra root part",
            "Root=1-5759e988-bd862e3fe1be46a994272793-1;Parent=53995c3f42cd8ad8",
            None,
        ),
        (
            "zero root",
            "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8",
            None,
        ),
        (
            "zero parent",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000",
            None,
        ),
        (
            "short parent",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad",
            None,
        ),
        (
            "bad sampled",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=yes",
            None,
        ),
        (
            "repeated root",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            None,
        ),
        (
            "field without equals",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;junk",
            None,
        ),
        ("empty", "", None),
    ];
    for (case, value, expected) in cases {
        match (expected, parse_xray(value.as_bytes())) {
            (Some(sampled), Ok(ctx)) => {
                assert_eq!(hex(&ctx.trace_id), TRACE, "{case}");
                assert_eq!(hex(&ctx.parent_span_id), PARENT, "{case}");
                assert_eq!(ctx.sampled, *sampled, "{case}");
                assert_eq!(ctx.source, ContextSource::XRay, "{case}");
                assert_eq!(ctx.trace_state, None, "{case}");
            }
            (None, Err(_)) => {}
            (expected, got) => panic!("{case}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn xray_bounds() {
    let long = format!(
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Pad={}",
        "x".repeat(2000)
    );
    assert!(matches!(
        parse_xray(long.as_bytes()),
        Err(PropagationError::TooLong(_))
    ));
    let many = format!(
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8{}",
        ";A=1".repeat(20)
    );
    assert!(matches!(
        parse_xray(many.as_bytes()),
        Err(PropagationError::TooManyMembers(_))
    ));
}
