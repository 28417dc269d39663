//! The kernel's `traceparent` scan (`tracer_common::traceparent_scan`, run by the eBPF programs
//! with `--context-propagation tcp-options`) against userspace's parsing of the same head (the
//! HTTP/1 head parser, then the `traceparent` rules of `protocols::propagation`): wherever the
//! kernel adopts a context, userspace finds the same one; where the kernel refuses, userspace
//! refuses too, except where the head goes past what the kernel scans (the cases named below).

use tracer_common::traceparent_scan::{self as scan, MAX_HEADERS, SCAN_BYTES, outcome};

use super::HttpLimits;
use super::head::{HeadParse, ParsedHead, parse_head};
use super::start_line::MessageKind;
use crate::protocols::propagation::{HeaderLookup, parse_traceparent, single_header};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Userspace's context for a request head: (trace id, parent span id as a number).
fn userspace(head: &[u8]) -> Option<([u8; 16], u64)> {
    let Ok(HeadParse::Complete {
        head: ParsedHead::Request(request, _),
        ..
    }) = parse_head(head, MessageKind::Request, &HttpLimits::default())
    else {
        return None;
    };
    let HeaderLookup::One(value) = single_header(&request.headers, "traceparent") else {
        return None;
    };
    let parsed = parse_traceparent(value).ok()?;
    Some((parsed.trace_id, u64::from_be_bytes(parsed.parent_id)))
}

fn kernel(head: &[u8]) -> Option<([u8; 16], u64)> {
    scan::scan(head).0
}

fn request(headers: &[&str]) -> Vec<u8> {
    let mut out = b"GET /ok?id=1 HTTP/1.1\r\nHost: leaf\r\n".to_vec();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn the_limits_are_userspaces() {
    assert_eq!(MAX_HEADERS as usize, HttpLimits::default().max_headers);
}

#[test]
fn kernel_and_userspace_agree_on_every_case() {
    let upper = TP.to_uppercase();
    let long_version = format!("01{}-extra", &TP[2..]);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("plain", request(&[&format!("traceparent: {TP}")]), true),
        ("name case", request(&[&format!("TraceParent: {TP}")]), true),
        ("no space", request(&[&format!("traceparent:{TP}")]), true),
        (
            "tabs and spaces",
            request(&[&format!("traceparent:\t {TP} \t")]),
            true,
        ),
        (
            "last header",
            request(&["Accept: */*", &format!("traceparent: {TP}")]),
            true,
        ),
        (
            "future version, more fields",
            request(&[&format!("traceparent: {long_version}")]),
            true,
        ),
        (
            "future version, exact",
            request(&[&format!("traceparent: 01{}", &TP[2..])]),
            true,
        ),
        (
            "version ff",
            request(&[&format!("traceparent: ff{}", &TP[2..])]),
            false,
        ),
        (
            "version 00 with more",
            request(&[&format!("traceparent: {TP}-x")]),
            false,
        ),
        (
            "uppercase hex",
            request(&[&format!("traceparent: {upper}")]),
            false,
        ),
        (
            "zero trace",
            request(&["traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01"]),
            false,
        ),
        (
            "zero span",
            request(&["traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"]),
            false,
        ),
        (
            "short",
            request(&[&format!("traceparent: {}", &TP[..54])]),
            false,
        ),
        (
            "bad flags",
            request(&[&format!("traceparent: {}0g", &TP[..53])]),
            false,
        ),
        (
            "repeated",
            request(&[&format!("traceparent: {TP}"), &format!("traceparent: {TP}")]),
            false,
        ),
        (
            "repeated, second invalid",
            request(&[&format!("traceparent: {TP}"), "traceparent: x"]),
            false,
        ),
        (
            "space before colon",
            request(&[&format!("traceparent : {TP}")]),
            false,
        ),
        (
            "other name",
            request(&[&format!("traceparent2: {TP}")]),
            false,
        ),
        (
            "prefixed name",
            request(&[&format!("x-traceparent: {TP}")]),
            false,
        ),
        ("none", request(&["Accept: */*"]), false),
        (
            "in the body",
            {
                let mut r = request(&["Content-Length: 70"]);
                r.extend_from_slice(format!("\ntraceparent: {TP}\r\n").as_bytes());
                r
            },
            false,
        ),
        (
            "bare line feeds",
            format!("GET / HTTP/1.1\nHost: a\ntraceparent: {TP}\n\n").into_bytes(),
            true,
        ),
    ];
    for (name, head, adopted) in cases {
        let (k, u) = (kernel(&head), userspace(&head));
        assert_eq!(k, u, "{name}: the kernel and userspace disagree");
        assert_eq!(k.is_some(), adopted, "{name}");
        if adopted {
            let (trace, span) = k.unwrap_or_default();
            assert_eq!(trace[..2], [0x4b, 0xf9], "{name}");
            assert_eq!(span, 0x00f0_67aa_0ba9_02b7, "{name}");
        }
    }
}

#[test]
fn past_the_header_limit_neither_side_sees_it() {
    let fillers: Vec<String> = (0..MAX_HEADERS).map(|i| format!("x{i}: y")).collect();
    let mut headers: Vec<&str> = fillers.iter().map(String::as_str).collect();
    let tp = format!("traceparent: {TP}");
    headers.push(&tp);
    // Host is header 0, the fillers 1..=64: the traceparent is header 65.
    let head = request(&headers);
    assert_eq!((kernel(&head), userspace(&head)), (None, None));
    // One filler fewer: header 64, still past userspace's 64 (0..=63).
    let head = request(&headers[1..]);
    assert_eq!((kernel(&head), userspace(&head)), (None, None));
    // Two fewer: header 63, the last kept.
    let head = request(&headers[2..]);
    assert!(kernel(&head).is_some());
    assert_eq!(kernel(&head), userspace(&head));
}

#[test]
fn a_header_past_the_scanned_prefix_is_left_to_userspace_and_the_scan_says_so() {
    let cookie = format!("Cookie: {}", "c".repeat(SCAN_BYTES));
    let head = request(&[&cookie, &format!("traceparent: {TP}")]);
    let (found, state) = scan::scan(&head);
    assert_eq!(found, None);
    assert_eq!(
        state.outcome & outcome::ENDED,
        0,
        "the scan ran out of bytes"
    );
    assert!(userspace(&head).is_some(), "userspace sees the whole head");
    // A header cut by the end of the scanned bytes is not adopted from what follows them.
    let mut cut = b"GET / HTTP/1.1\r\n".to_vec();
    cut.resize(SCAN_BYTES - 40, b'a');
    cut.extend_from_slice(format!("\r\ntraceparent: {TP}\r\n\r\n").as_bytes());
    assert_eq!(kernel(&cut), None);
}

#[test]
fn the_scan_is_total_over_arbitrary_bytes() {
    // Every prefix and every one-byte change of a valid head: never a panic, and never a
    // context userspace would not give.
    let head = request(&["Accept: */*", &format!("traceparent: {TP}")]);
    for len in 0..=head.len() {
        let k = kernel(&head[..len]);
        if k.is_some() {
            assert_eq!(k, userspace(&head), "prefix {len}");
        }
    }
    // Within the header line (elsewhere a change can make the head unparseable for userspace,
    // which then makes no span at all).
    let line = head.len() - TP.len() - "traceparent: \r\n\r\n".len();
    for at in line..head.len() - 2 {
        for byte in [0u8, b'\n', b'\r', b' ', b'-', b'A', b'f', b'0', 0xff] {
            let mut changed = head.clone();
            changed[at] = byte;
            let k = kernel(&changed);
            if k.is_some() {
                assert_eq!(k, userspace(&changed), "byte {at} set to {byte:#x}");
            }
        }
    }
}
