//! Finding spans among those received (by kind, port, attribute) and asserting on them with
//! messages that list what was actually there.

use std::collections::BTreeMap;

use crate::span::{AttrValue, ObservedKind, ObservedSpan};

/// One line per span.
pub fn describe<'a>(spans: impl IntoIterator<Item = &'a ObservedSpan>) -> String {
    let lines: Vec<String> = spans
        .into_iter()
        .map(|s| format!("  {}", s.summary()))
        .collect();
    if lines.is_empty() {
        "  (none)".to_owned()
    } else {
        lines.join("\n")
    }
}

/// SERVER spans of the process listening on `port` (`server.port == port`).
pub fn server_spans(spans: &[ObservedSpan], port: u16) -> Vec<&ObservedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.kind == ObservedKind::Server && s.attr_int("server.port") == Some(i64::from(port))
        })
        .collect()
}

/// CLIENT spans of requests sent to `port` (`server.port == port`).
pub fn client_spans(spans: &[ObservedSpan], port: u16) -> Vec<&ObservedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.kind == ObservedKind::Client && s.attr_int("server.port") == Some(i64::from(port))
        })
        .collect()
}

/// Spans whose attribute `key` equals `value`.
pub fn with_attr<'a>(
    spans: impl IntoIterator<Item = &'a ObservedSpan>,
    key: &str,
    value: impl Into<AttrValue>,
) -> Vec<&'a ObservedSpan> {
    let value = value.into();
    spans
        .into_iter()
        .filter(|s| s.attr(key) == Some(&value))
        .collect()
}

/// Spans that mention `port` anywhere a port can appear (server, peer or client port).
pub fn touching_port(spans: &[ObservedSpan], port: u16) -> Vec<&ObservedSpan> {
    let port = AttrValue::Int(i64::from(port));
    spans
        .iter()
        .filter(|s| {
            [
                "server.port",
                "network.peer.port",
                "client.port",
                "network.local.port",
            ]
            .iter()
            .any(|key| s.attr(key) == Some(&port))
        })
        .collect()
}

/// A condition for waits: at least `server` SERVER and `client` CLIENT spans on `port`.
pub fn at_least(port: u16, server: usize, client: usize) -> impl Fn(&[ObservedSpan]) -> bool {
    move |spans| {
        server_spans(spans, port).len() >= server && client_spans(spans, port).len() >= client
    }
}

/// The single span of `candidates`; panics listing them and `all` otherwise.
#[track_caller]
pub fn the_only<'a>(
    candidates: Vec<&'a ObservedSpan>,
    what: &str,
    all: &[ObservedSpan],
) -> &'a ObservedSpan {
    match candidates.as_slice() {
        [one] => one,
        _ => panic!(
            "expected exactly one {what}, found {}:\n{}\nall spans:\n{}",
            candidates.len(),
            describe(candidates.iter().copied()),
            describe(all)
        ),
    }
}

/// Asserts `candidates` has exactly `count` spans.
#[track_caller]
pub fn assert_count(candidates: &[&ObservedSpan], count: usize, what: &str, all: &[ObservedSpan]) {
    if candidates.len() != count {
        panic!(
            "expected {count} {what}, found {}:\n{}\nall spans:\n{}",
            candidates.len(),
            describe(candidates.iter().copied()),
            describe(all)
        );
    }
}

/// Asserts no two spans share a span id.
#[track_caller]
pub fn assert_distinct_span_ids(spans: &[&ObservedSpan]) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for span in spans {
        *seen.entry(span.span_id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    if !repeated.is_empty() {
        panic!(
            "span ids repeated: {repeated:?}\n{}",
            describe(spans.iter().copied())
        );
    }
}

/// Asserts every `(key, value)` attribute, reporting all mismatches at once.
#[track_caller]
pub fn assert_attrs(span: &ObservedSpan, expected: &[(&str, AttrValue)]) {
    let mismatches: Vec<String> = expected
        .iter()
        .filter(|(key, value)| span.attr(key) != Some(value))
        .map(|(key, value)| match span.attr(key) {
            Some(actual) => format!("{key}: expected {value}, got {actual}"),
            None => format!("{key}: expected {value}, missing"),
        })
        .collect();
    if !mismatches.is_empty() {
        panic!(
            "attribute mismatch on\n  {}\n  {}",
            span.summary(),
            mismatches.join("\n  ")
        );
    }
}

/// Asserts `key` is absent.
#[track_caller]
pub fn assert_no_attr(span: &ObservedSpan, key: &str) {
    if let Some(value) = span.attr(key) {
        panic!(
            "{key} should be absent, found {value} on\n  {}",
            span.summary()
        );
    }
}

/// True for 32 (trace) or 16 (span) lowercase hex digits, not all zero.
pub fn is_valid_id(id: &str, hex_digits: usize) -> bool {
    id.len() == hex_digits
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::ObservedStatus;

    fn span(kind: ObservedKind, id: &str, port: i64) -> ObservedSpan {
        ObservedSpan {
            trace_id: "1".repeat(32),
            span_id: id.to_owned(),
            parent_span_id: None,
            trace_state: None,
            name: "GET".to_owned(),
            kind,
            start_unix_ns: 0,
            end_unix_ns: 1,
            status: ObservedStatus::Unset,
            status_description: String::new(),
            attributes: [("server.port".to_owned(), AttrValue::Int(port))]
                .into_iter()
                .collect(),
            resource: BTreeMap::new(),
        }
    }

    #[test]
    fn finds_by_kind_and_port() {
        let spans = vec![
            span(ObservedKind::Server, "a", 80),
            span(ObservedKind::Client, "b", 80),
            span(ObservedKind::Server, "c", 81),
        ];
        assert_eq!(server_spans(&spans, 80).len(), 1);
        assert_eq!(client_spans(&spans, 80).len(), 1);
        assert_eq!(touching_port(&spans, 81).len(), 1);
        assert!(at_least(80, 1, 1)(&spans));
        assert!(!at_least(81, 1, 1)(&spans));
        assert_eq!(
            the_only(server_spans(&spans, 81), "server", &spans).span_id,
            "c"
        );
        assert_eq!(with_attr(&spans, "server.port", 80u16).len(), 2);
    }

    #[test]
    #[should_panic(expected = "span ids repeated")]
    fn duplicate_ids_are_caught() {
        let a = span(ObservedKind::Server, "same", 80);
        let b = span(ObservedKind::Client, "same", 80);
        assert_distinct_span_ids(&[&a, &b]);
    }

    #[test]
    fn id_validity() {
        assert!(is_valid_id("0af7651916cd43dd8448eb211c80319c", 32));
        assert!(!is_valid_id(&"0".repeat(32), 32));
        assert!(!is_valid_id("0AF7651916CD43DD", 16));
        assert!(!is_valid_id("abc", 16));
    }
}
