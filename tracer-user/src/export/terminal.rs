//! Human-readable live output: spans are held briefly per trace so a trace prints together as an
//! indented tree (children under their parent span), one line per span.
//!
//! Captured text (names, paths, URLs) is sanitised before printing: control characters become
//! `?` and long values are cut, so traffic cannot inject terminal escape sequences.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use super::config::EnvLookup;
use super::stream::{BoxedWriter, Rendered, SpanFormatter, StreamSink, stdout_writer};
use crate::model::{AttrValue, ExportItem, SpanKind, SpanStatus, hex};
use crate::telemetry::semconv;

/// Terminal output settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminalOptions {
    /// How long a trace waits for more spans after its latest span arrived.
    pub hold: Duration,
    /// Longest a trace is held after its first span arrived.
    pub max_hold: Duration,
    /// Bound on held spans; past it the oldest trace is printed early.
    pub max_held_spans: usize,
    /// Bound on spans waiting to be formatted; past it spans are dropped and counted.
    pub queue_size: usize,
    /// ANSI colours.
    pub colour: bool,
}

impl Default for TerminalOptions {
    fn default() -> Self {
        TerminalOptions {
            hold: Duration::from_secs(1),
            max_hold: Duration::from_secs(5),
            max_held_spans: 4096,
            queue_size: 4096,
            colour: false,
        }
    }
}

impl TerminalOptions {
    /// Defaults with colour decided for stdout.
    pub fn for_stdout(env: EnvLookup<'_>) -> Self {
        TerminalOptions {
            colour: colour_for_stdout(env),
            ..TerminalOptions::default()
        }
    }
}

/// Colour only when stdout is a terminal and `NO_COLOR` is unset or empty.
pub fn colour_for_stdout(env: EnvLookup<'_>) -> bool {
    if env("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    // SAFETY: isatty only inspects the given descriptor number; no memory is passed.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

/// The terminal sink.
pub type TerminalSink = StreamSink<TerminalFormatter>;

impl StreamSink<TerminalFormatter> {
    /// Terminal output to stdout.
    pub fn stdout(options: TerminalOptions) -> std::io::Result<Self> {
        Ok(Self::to_writer(options, stdout_writer()?))
    }

    /// Terminal output to any writer.
    pub fn to_writer(options: TerminalOptions, writer: BoxedWriter) -> Self {
        let queue_size = options.queue_size;
        StreamSink::start(TerminalFormatter::new(options), writer, queue_size)
    }
}

/// Holds spans per trace and renders each trace as a tree when it is due.
#[derive(Debug)]
pub struct TerminalFormatter {
    held: HeldTraces,
    colour: bool,
}

impl TerminalFormatter {
    pub fn new(options: TerminalOptions) -> Self {
        TerminalFormatter {
            held: HeldTraces::new(options.hold, options.max_hold, options.max_held_spans),
            colour: options.colour,
        }
    }

    fn render_all(&self, traces: Vec<Vec<ExportItem>>) -> Rendered {
        let mut out = Rendered::default();
        for spans in traces {
            out.spans += spans.len() as u64;
            out.text.push_str(&render_trace(&spans, self.colour));
        }
        out
    }
}

impl SpanFormatter for TerminalFormatter {
    fn accept(&mut self, item: ExportItem, now: Instant) -> Rendered {
        let evicted = self.held.insert(item, now);
        self.render_all(evicted)
    }
    fn next_due(&self) -> Option<Instant> {
        self.held.next_due()
    }
    fn take_due(&mut self, now: Instant) -> Rendered {
        let due = self.held.take_due(now);
        self.render_all(due)
    }
    fn take_all(&mut self) -> Rendered {
        let all = self.held.take_all();
        self.render_all(all)
    }
}

#[derive(Debug)]
struct HeldTrace {
    spans: Vec<ExportItem>,
    first_seen: Instant,
    due: Instant,
}

/// Spans waiting to be printed, grouped by trace id, bounded in total count.
#[derive(Debug)]
pub struct HeldTraces {
    traces: HashMap<[u8; 16], HeldTrace>,
    held_spans: usize,
    hold: Duration,
    max_hold: Duration,
    max_held_spans: usize,
}

impl HeldTraces {
    pub fn new(hold: Duration, max_hold: Duration, max_held_spans: usize) -> Self {
        HeldTraces {
            traces: HashMap::new(),
            held_spans: 0,
            hold,
            max_hold: max_hold.max(hold),
            max_held_spans: max_held_spans.max(1),
        }
    }

    /// Holds a span; returns traces pushed out early because the bound was reached.
    pub fn insert(&mut self, item: ExportItem, now: Instant) -> Vec<Vec<ExportItem>> {
        let mut evicted = Vec::new();
        while self.held_spans >= self.max_held_spans {
            match self.oldest_trace() {
                Some(trace_id) => evicted.extend(self.remove(&trace_id)),
                None => break,
            }
        }
        let trace = self
            .traces
            .entry(item.span.trace_id)
            .or_insert_with(|| HeldTrace {
                spans: Vec::new(),
                first_seen: now,
                due: now,
            });
        trace.due = (now + self.hold).min(trace.first_seen + self.max_hold);
        trace.spans.push(item);
        self.held_spans += 1;
        evicted
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.traces.values().map(|t| t.due).min()
    }

    /// Traces due at `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Vec<ExportItem>> {
        let mut due: Vec<([u8; 16], Instant)> = self
            .traces
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(id, t)| (*id, t.first_seen))
            .collect();
        due.sort_by_key(|(_, first_seen)| *first_seen);
        due.into_iter()
            .filter_map(|(id, _)| self.remove(&id))
            .collect()
    }

    /// Every held trace, oldest first.
    pub fn take_all(&mut self) -> Vec<Vec<ExportItem>> {
        let mut all: Vec<HeldTrace> = self.traces.drain().map(|(_, t)| t).collect();
        self.held_spans = 0;
        all.sort_by_key(|t| t.first_seen);
        all.into_iter().map(|t| t.spans).collect()
    }

    #[cfg(test)]
    fn held_spans(&self) -> usize {
        self.held_spans
    }

    fn oldest_trace(&self) -> Option<[u8; 16]> {
        self.traces
            .iter()
            .min_by_key(|(_, t)| t.first_seen)
            .map(|(id, _)| *id)
    }

    fn remove(&mut self, trace_id: &[u8; 16]) -> Option<Vec<ExportItem>> {
        let trace = self.traces.remove(trace_id)?;
        self.held_spans = self.held_spans.saturating_sub(trace.spans.len());
        Some(trace.spans)
    }
}

/// Deepest indentation level drawn (deeper spans are drawn at this level).
const MAX_INDENT: usize = 12;
/// Longest text printed for one captured value.
const MAX_FIELD_CHARS: usize = 120;

const BOLD: &str = "1";
const DIM: &str = "2";
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const BLUE: &str = "34";
const MAGENTA: &str = "35";

fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Replaces control characters and cuts long values.
fn sanitise(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_FIELD_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_FIELD_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn attr<'a>(item: &'a ExportItem, key: &str) -> Option<&'a AttrValue> {
    item.span
        .attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| &a.value)
}

fn attr_str<'a>(item: &'a ExportItem, key: &str) -> Option<&'a str> {
    match attr(item, key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

/// Renders one trace's spans as a tree, one line per span, children under parents, siblings by
/// start time. Spans whose parent is not among `spans` are drawn as roots.
pub fn render_trace(spans: &[ExportItem], colour: bool) -> String {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans.get(i).map(|s| s.span.start_unix_ns));

    let mut index_of: HashMap<[u8; 8], usize> = HashMap::new();
    for (i, item) in spans.iter().enumerate() {
        index_of.entry(item.span.span_id).or_insert(i);
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots: Vec<usize> = Vec::new();
    for &i in &order {
        let parent = spans
            .get(i)
            .and_then(|s| s.span.parent_span_id)
            .and_then(|p| index_of.get(&p).copied())
            .filter(|&p| p != i);
        match parent.and_then(|p| children.get_mut(p)) {
            Some(list) => list.push(i),
            None => roots.push(i),
        }
    }

    let mut out = String::new();
    let mut visited = vec![false; spans.len()];
    // (span, tree branch: the prefix drawn before it and whether it is its parent's last child).
    let mut stack: Vec<(usize, Option<(String, bool)>)> =
        roots.iter().rev().map(|&i| (i, None)).collect();
    // Parent links that form a cycle leave spans unreachable from any root: draw them as roots.
    let mut leftovers = order.iter().copied();
    while let Some((i, branch)) = stack.pop().or_else(|| {
        leftovers
            .find(|&i| !visited.get(i).copied().unwrap_or(true))
            .map(|i| (i, None))
    }) {
        match visited.get_mut(i) {
            Some(seen) if !*seen => *seen = true,
            _ => continue,
        }
        let (connector, child_prefix) = match &branch {
            None => (String::new(), String::new()),
            Some((prefix, last)) => {
                let (here, below) = if *last {
                    ("└─ ", "   ")
                } else {
                    ("├─ ", "│  ")
                };
                // Past the deepest level drawn, children line up with their parent.
                let below = if prefix.chars().count() >= 3 * MAX_INDENT {
                    ""
                } else {
                    below
                };
                (format!("{prefix}{here}"), format!("{prefix}{below}"))
            }
        };
        if let Some(item) = spans.get(i) {
            render_line(&mut out, item, &connector, colour);
        }
        if let Some(kids) = children.get(i) {
            let last = kids.len().saturating_sub(1);
            stack.extend(
                kids.iter()
                    .enumerate()
                    .rev()
                    .map(|(n, &k)| (k, Some((child_prefix.clone(), n == last)))),
            );
        }
    }
    out
}

fn render_line(out: &mut String, item: &ExportItem, connector: &str, colour: bool) {
    let span = &item.span;
    out.push_str(connector);
    let kind = match span.kind {
        SpanKind::Server => paint(colour, BLUE, "SERVER"),
        SpanKind::Client => paint(colour, MAGENTA, "CLIENT"),
    };
    let service = paint(colour, BOLD, &sanitise(&item.resource.service_name));
    let target = match span.kind {
        SpanKind::Server => attr_str(item, semconv::URL_PATH),
        SpanKind::Client => {
            attr_str(item, semconv::URL_FULL).or_else(|| attr_str(item, semconv::URL_PATH))
        }
    }
    .map(sanitise)
    .unwrap_or_default();

    let code = match attr(item, semconv::HTTP_RESPONSE_STATUS_CODE) {
        Some(AttrValue::Int(code)) => Some(*code),
        _ => None,
    };
    let is_error = matches!(span.status, SpanStatus::Error { .. });
    // gRPC spans carry the status name instead of an HTTP code.
    let rpc_code = attr_str(item, semconv::RPC_RESPONSE_STATUS_CODE);
    let outcome = match (code, rpc_code, attr_str(item, semconv::ERROR_TYPE)) {
        (Some(code), _, _) => code.to_string(),
        (None, Some(rpc), _) => sanitise(rpc),
        (None, None, Some(error_type)) => format!("no response ({})", sanitise(error_type)),
        (None, None, None) => "no response".to_string(),
    };
    let outcome = if is_error {
        format!("{outcome} ERROR")
    } else {
        outcome
    };
    let outcome_colour = match code {
        _ if is_error => RED,
        Some(c) if (200..400).contains(&c) => GREEN,
        None if rpc_code.is_some() => GREEN,
        _ => YELLOW,
    };
    let duration_ms = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e6;
    // The trace id's LAST 4 bytes: with `--id-generator xray` its first 4 are the start second,
    // the same for every trace started in that second.
    let ids = format!(
        "trace={} span={}",
        hex(span.trace_id.get(12..).unwrap_or(&[])),
        hex(span.span_id.get(..4).unwrap_or(&[])),
    );
    let _ = write!(out, "{kind} {service} {name}", name = sanitise(&span.name),);
    if !target.is_empty() {
        let _ = write!(out, " {target}");
    }
    let _ = write!(
        out,
        " {} {duration_ms:.2} ms {}",
        paint(colour, outcome_colour, &outcome),
        paint(colour, DIM, &ids)
    );
    if connector.is_empty()
        && let Some(parent) = span.parent_span_id
    {
        let _ = write!(
            out,
            " {}",
            paint(colour, DIM, &format!("parent={}", hex(&parent)))
        );
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::stream::test_writer::SharedBuffer;
    use crate::model::{Attribute, ProcessResource, SpanRecord};
    use std::sync::Arc;

    fn resource(name: &str) -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            pid: 1,
            service_name: name.into(),
            attributes: vec![],
        })
    }

    /// A span fixture; the shorthand helpers below fill in the common cases.
    struct Fixture {
        trace: u8,
        id: u8,
        parent: Option<u8>,
        kind: SpanKind,
        start_ms: u64,
        dur_us: u64,
        attrs: Vec<Attribute>,
        service: &'static str,
    }

    impl Fixture {
        fn build(self) -> ExportItem {
            let start = 1_700_000_000_000_000_000 + self.start_ms * 1_000_000;
            ExportItem {
                span: SpanRecord {
                    trace_id: [self.trace; 16],
                    span_id: [self.id; 8],
                    parent_span_id: self.parent.map(|p| [p; 8]),
                    trace_state: None,
                    sampled: true,
                    name: "GET".into(),
                    kind: self.kind,
                    start_unix_ns: start,
                    end_unix_ns: start + self.dur_us * 1000,
                    attributes: self.attrs.into(),
                    status: SpanStatus::Unset,
                    pid: 1,
                },
                resource: resource(self.service),
            }
        }
    }

    /// A bare span of `trace`.
    fn span(trace: u8, id: u8, parent: Option<u8>, kind: SpanKind) -> ExportItem {
        Fixture {
            trace,
            id,
            parent,
            kind,
            start_ms: 0,
            dur_us: 1,
            attrs: vec![],
            service: "a",
        }
        .build()
    }

    fn server(id: u8, parent: Option<u8>, start_ms: u64, path: &str, code: i64) -> ExportItem {
        Fixture {
            trace: 0xab,
            id,
            parent,
            kind: SpanKind::Server,
            start_ms,
            dur_us: 12_346,
            attrs: vec![
                Attribute::str("url.path", path.to_string()),
                Attribute::int("http.response.status_code", code),
            ],
            service: "frontend",
        }
        .build()
    }

    fn client(id: u8, parent: Option<u8>, start_ms: u64, url: &str, code: i64) -> ExportItem {
        Fixture {
            trace: 0xab,
            id,
            parent,
            kind: SpanKind::Client,
            start_ms,
            dur_us: 3_100,
            attrs: vec![
                Attribute::str("url.full", url.to_string()),
                Attribute::int("http.response.status_code", code),
            ],
            service: "frontend",
        }
        .build()
    }

    #[test]
    fn renders_an_indented_tree_in_start_order() {
        let mut failing = client(3, Some(1), 5, "http://cart:8080/items", 503);
        failing.span.status = SpanStatus::Error {
            description: "503".into(),
        };
        // Arrival order differs from start order and from tree order.
        let spans = vec![
            Fixture {
                trace: 0xab,
                id: 4,
                parent: Some(3),
                kind: SpanKind::Server,
                start_ms: 6,
                dur_us: 1_000,
                attrs: vec![Attribute::str("url.path", "/items")],
                service: "cart",
            }
            .build(),
            failing,
            server(1, None, 0, "/checkout", 200),
            client(2, Some(1), 2, "http://auth/check", 204),
        ];
        let text = render_trace(&spans, false);
        let expected = "\
SERVER frontend GET /checkout 200 12.35 ms trace=abababab span=01010101
├─ CLIENT frontend GET http://auth/check 204 3.10 ms trace=abababab span=02020202
└─ CLIENT frontend GET http://cart:8080/items 503 ERROR 3.10 ms trace=abababab span=03030303
   └─ SERVER cart GET /items no response 1.00 ms trace=abababab span=04040404
";
        assert_eq!(text, expected);
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn orphans_are_roots_with_their_remote_parent_noted() {
        let spans = vec![
            server(7, Some(0x99), 0, "/x", 404),
            client(8, Some(7), 1, "http://y/", 200),
        ];
        let text = render_trace(&spans, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("SERVER frontend GET /x 404 "),
            "{text}"
        );
        assert!(lines[0].ends_with(" parent=9999999999999999"), "{text}");
        assert!(lines[1].starts_with("└─ CLIENT"), "{text}");
    }

    #[test]
    fn cycles_and_duplicates_still_print_every_span_once() {
        let spans = vec![
            server(1, Some(2), 0, "/a", 200),
            server(2, Some(1), 1, "/b", 200),
            server(3, Some(3), 2, "/self", 200),
        ];
        let text = render_trace(&spans, false);
        assert_eq!(text.lines().count(), 3, "{text}");
        for path in ["/a", "/b", "/self"] {
            assert_eq!(text.matches(&format!(" {path} ")).count(), 1, "{text}");
        }
    }

    #[test]
    fn colour_and_sanitising() {
        let evil = server(1, None, 0, "/\x1b[2Jboom", 200);
        let plain = render_trace(std::slice::from_ref(&evil), false);
        assert!(plain.contains("/?[2Jboom"), "{plain}");
        assert!(!plain.contains('\x1b'));
        let coloured = render_trace(&[evil], true);
        assert!(coloured.contains("\x1b[34mSERVER\x1b[0m"), "{coloured:?}");
        assert!(coloured.contains("\x1b[32m200\x1b[0m"), "{coloured:?}");
        let long = "x".repeat(500);
        let item = server(1, None, 0, &long, 200);
        let text = render_trace(&[item], false);
        assert!(text.contains(&format!("{}…", "x".repeat(MAX_FIELD_CHARS))));
    }

    #[test]
    fn missing_response_shows_error_type() {
        let mut item = Fixture {
            trace: 1,
            id: 1,
            parent: None,
            kind: SpanKind::Client,
            start_ms: 0,
            dur_us: 1500,
            attrs: vec![
                Attribute::str("url.full", "http://db/"),
                Attribute::str("error.type", "connection_closed"),
            ],
            service: "api",
        }
        .build();
        item.span.status = SpanStatus::Error {
            description: "closed".into(),
        };
        let text = render_trace(&[item], false);
        assert!(
            text.contains(" no response (connection_closed) ERROR 1.50 ms "),
            "{text}"
        );
    }

    #[test]
    fn held_traces_release_after_hold_and_respect_the_bound() {
        let start = Instant::now();
        let mut held = HeldTraces::new(Duration::from_secs(1), Duration::from_secs(3), 3);
        assert!(
            held.insert(span(1, 1, None, SpanKind::Server), start)
                .is_empty()
        );
        assert!(
            held.insert(
                span(2, 2, None, SpanKind::Server),
                start + Duration::from_millis(100)
            )
            .is_empty()
        );
        assert_eq!(held.next_due(), Some(start + Duration::from_secs(1)));
        // Another span of trace 1 extends its hold.
        assert!(
            held.insert(
                span(1, 3, Some(1), SpanKind::Client),
                start + Duration::from_millis(500)
            )
            .is_empty()
        );
        assert!(
            held.take_due(start + Duration::from_millis(1050))
                .is_empty()
        );
        let due = held.take_due(start + Duration::from_millis(1150));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0][0].span.trace_id, [2; 16]);
        // The bound (3) forces the oldest trace out early.
        held.insert(
            span(4, 4, None, SpanKind::Server),
            start + Duration::from_millis(1200),
        );
        assert_eq!(held.held_spans(), 3);
        let evicted = held.insert(
            span(5, 5, None, SpanKind::Server),
            start + Duration::from_millis(1300),
        );
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].len(), 2, "both spans of trace 1");
        assert_eq!(held.held_spans(), 2);
        let all = held.take_all();
        assert_eq!(
            all.iter()
                .map(|t| t[0].span.trace_id[0])
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(held.held_spans(), 0);
        assert_eq!(held.next_due(), None);
    }

    #[test]
    fn max_hold_caps_a_busy_trace() {
        let start = Instant::now();
        let mut held = HeldTraces::new(Duration::from_secs(1), Duration::from_secs(2), 100);
        for i in 0..10u64 {
            held.insert(
                span(1, i as u8, None, SpanKind::Server),
                start + Duration::from_millis(i * 400),
            );
        }
        assert_eq!(held.next_due(), Some(start + Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn sink_prints_held_traces_at_shutdown() {
        let buffer = SharedBuffer::default();
        let options = TerminalOptions {
            hold: Duration::from_secs(600),
            ..TerminalOptions::default()
        };
        let sink = TerminalSink::to_writer(options, Box::new(buffer.clone()));
        sink.submit(client(2, Some(1), 2, "http://auth/check", 200));
        sink.submit(server(1, None, 0, "/checkout", 200));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(buffer.contents(), "", "held, not printed yet");
        let stats = sink.shutdown(Duration::from_secs(10)).await;
        let text = buffer.contents();
        assert!(text.starts_with("SERVER frontend GET /checkout"), "{text}");
        assert!(
            text.contains("\n└─ CLIENT frontend GET http://auth/check"),
            "{text}"
        );
        assert_eq!(stats.spans_enqueued, 2);
        assert_eq!(stats.spans_exported, 2);
        assert_eq!(stats.spans_dropped_shutdown, 0);
    }

    #[tokio::test]
    async fn sink_prints_a_trace_once_its_hold_expires() {
        let buffer = SharedBuffer::default();
        let options = TerminalOptions {
            hold: Duration::from_millis(50),
            ..TerminalOptions::default()
        };
        let sink = TerminalSink::to_writer(options, Box::new(buffer.clone()));
        sink.submit(server(1, None, 0, "/checkout", 200));
        let mut printed = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if buffer.contents().contains("/checkout") {
                printed = true;
                break;
            }
        }
        assert!(printed, "trace printed before shutdown");
        sink.shutdown(Duration::from_secs(10)).await;
    }

    #[test]
    fn no_color_disables_colour() {
        let env = |name: &str| (name == "NO_COLOR").then(|| "1".to_string());
        assert!(!colour_for_stdout(&env));
    }
}
