//! JSON lines output (`--format json`): one object per span per line, with stable field names:
//! `trace_id`, `span_id`, `parent_span_id` (null for roots), `name`, `kind` (`SERVER`/`CLIENT`),
//! `start_unix_ns`, `end_unix_ns`, `duration_ns`, `status` {`code`: `UNSET`/`ERROR`,
//! `description`}, `attributes` {key: value}, `resource` {key: value}, `trace_state` (or null).

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use tokio::time::Instant;

use super::stream::{BoxedWriter, Rendered, SpanFormatter, StreamSink, stdout_writer};
use crate::model::{AttrValue, ExportItem, SpanKind, SpanStatus, hex};

/// Spans waiting to be written before new ones are dropped and counted.
pub const JSON_QUEUE_SIZE: usize = 4096;

/// The JSON lines sink.
pub type JsonSink = StreamSink<JsonFormatter>;

impl StreamSink<JsonFormatter> {
    /// JSON lines to stdout.
    pub fn stdout() -> std::io::Result<Self> {
        Ok(Self::to_writer(stdout_writer()?))
    }

    /// JSON lines to any writer.
    pub fn to_writer(writer: BoxedWriter) -> Self {
        StreamSink::start(JsonFormatter, writer, JSON_QUEUE_SIZE)
    }
}

/// Formats each span as soon as it arrives.
#[derive(Debug, Default)]
pub struct JsonFormatter;

impl SpanFormatter for JsonFormatter {
    fn accept(&mut self, item: ExportItem, _now: Instant) -> Rendered {
        let mut rendered = Rendered::default();
        write_span_line(&item, &mut rendered.text);
        rendered.spans = 1;
        rendered
    }
    fn next_due(&self) -> Option<Instant> {
        None
    }
    fn take_due(&mut self, _now: Instant) -> Rendered {
        Rendered::default()
    }
    fn take_all(&mut self) -> Rendered {
        Rendered::default()
    }
}

/// Appends one span as a JSON object and a newline to `out`, serialised straight from the span
/// record (no intermediate JSON tree).
pub fn write_span_line(item: &ExportItem, out: &mut String) {
    let span = &item.span;
    let (code, description) = match &span.status {
        SpanStatus::Unset => ("UNSET", None),
        SpanStatus::Error { description } => ("ERROR", Some(description.as_str())),
    };
    let line = SpanLine {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: span.parent_span_id.map(|p| hex(&p)),
        name: &span.name,
        kind: match span.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        },
        start_unix_ns: span.start_unix_ns,
        end_unix_ns: span.end_unix_ns,
        duration_ns: span.end_unix_ns.saturating_sub(span.start_unix_ns),
        status: Status { code, description },
        attributes: Attributes(item),
        resource: Resource(item),
        trace_state: span.trace_state.as_deref(),
    };
    let mut bytes = std::mem::take(out).into_bytes();
    let before = bytes.len();
    // Strings, numbers and string-keyed maps into a Vec: serialisation cannot fail; if it ever
    // did, the partial line is cut off rather than written.
    if serde_json::to_writer(&mut bytes, &line).is_ok() {
        bytes.push(b'\n');
    } else {
        bytes.truncate(before);
    }
    // serde_json writes valid UTF-8 only; the fallback keeps `out` a String either way.
    *out = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
}

#[derive(Serialize)]
struct SpanLine<'a> {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    name: &'a str,
    kind: &'static str,
    start_unix_ns: u64,
    end_unix_ns: u64,
    duration_ns: u64,
    status: Status<'a>,
    attributes: Attributes<'a>,
    resource: Resource<'a>,
    trace_state: Option<&'a str>,
}

#[derive(Serialize)]
struct Status<'a> {
    code: &'static str,
    description: Option<&'a str>,
}

/// The span's attributes as a JSON object.
struct Attributes<'a>(&'a ExportItem);

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let attributes = &self.0.span.attributes;
        let mut map = serializer.serialize_map(Some(attributes.len()))?;
        for a in attributes {
            map.serialize_entry(a.key, &Value(&a.value))?;
        }
        map.end()
    }
}

/// The process resource as a JSON object, with `service.name` always present.
struct Resource<'a>(&'a ExportItem);

impl Serialize for Resource<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let resource = &self.0.resource;
        let has_name = resource.attributes.iter().any(|(k, _)| k == "service.name");
        let mut map = serializer.serialize_map(None)?;
        if !has_name {
            map.serialize_entry("service.name", &resource.service_name)?;
        }
        for (key, value) in &resource.attributes {
            map.serialize_entry(key, &Value(value))?;
        }
        map.end()
    }
}

struct Value<'a>(&'a AttrValue);

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            AttrValue::Str(s) => serializer.serialize_str(s),
            AttrValue::Int(i) => serializer.serialize_i64(*i),
            AttrValue::Bool(b) => serializer.serialize_bool(*b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::stream::test_writer::SharedBuffer;
    use serde_json::{Value, json};

    /// The written line, parsed back.
    fn span_json(item: &ExportItem) -> Value {
        let mut line = String::new();
        write_span_line(item, &mut line);
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line:?}"
        );
        serde_json::from_str(&line).expect("valid JSON")
    }
    use crate::model::{Attribute, ProcessResource, SpanRecord};
    use std::sync::Arc;
    use std::time::Duration;

    fn item(parent: Option<[u8; 8]>, status: SpanStatus) -> ExportItem {
        ExportItem {
            span: SpanRecord {
                trace_id: [0x0a; 16],
                span_id: [0xb1; 8],
                parent_span_id: parent,
                trace_state: parent.map(|_| "k=v".to_string()),
                sampled: true,
                name: "POST".into(),
                kind: if parent.is_some() {
                    SpanKind::Client
                } else {
                    SpanKind::Server
                },
                start_unix_ns: 1_000,
                end_unix_ns: 3_500,
                attributes: smallvec::smallvec![
                    Attribute::str("url.path", "/orders"),
                    Attribute::int("http.response.status_code", 500),
                    Attribute {
                        key: "x.cached",
                        value: AttrValue::Bool(false),
                    },
                ],
                status,
                pid: 9,
            },
            resource: Arc::new(ProcessResource {
                pid: 9,
                service_name: "orders".into(),
                attributes: vec![("process.pid".into(), AttrValue::Int(9))],
            }),
        }
    }

    #[test]
    fn root_span_fields() {
        let v = span_json(&item(None, SpanStatus::Unset));
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "trace_id",
            "span_id",
            "parent_span_id",
            "name",
            "kind",
            "start_unix_ns",
            "end_unix_ns",
            "duration_ns",
            "status",
            "attributes",
            "resource",
            "trace_state",
        ];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(v["trace_id"], "0a".repeat(16));
        assert_eq!(v["span_id"], "b1".repeat(8));
        assert!(v["parent_span_id"].is_null());
        assert!(v["trace_state"].is_null());
        assert_eq!(v["name"], "POST");
        assert_eq!(v["kind"], "SERVER");
        assert_eq!(v["start_unix_ns"], 1_000);
        assert_eq!(v["end_unix_ns"], 3_500);
        assert_eq!(v["duration_ns"], 2_500);
        assert_eq!(v["status"], json!({"code": "UNSET", "description": null}));
        assert_eq!(v["attributes"]["url.path"], "/orders");
        assert_eq!(v["attributes"]["http.response.status_code"], 500);
        assert_eq!(v["attributes"]["x.cached"], false);
        assert_eq!(v["resource"]["service.name"], "orders");
        assert_eq!(v["resource"]["process.pid"], 9);
    }

    #[test]
    fn child_error_span_fields() {
        let v = span_json(&item(
            Some([0xcc; 8]),
            SpanStatus::Error {
                description: "500".into(),
            },
        ));
        assert_eq!(v["parent_span_id"], "cc".repeat(8));
        assert_eq!(v["kind"], "CLIENT");
        assert_eq!(v["status"], json!({"code": "ERROR", "description": "500"}));
        assert_eq!(v["trace_state"], "k=v");
    }

    #[tokio::test]
    async fn sink_writes_one_parseable_line_per_span() {
        let buffer = SharedBuffer::default();
        let sink = JsonSink::to_writer(Box::new(buffer.clone()));
        sink.submit(item(None, SpanStatus::Unset));
        sink.submit(item(Some([1; 8]), SpanStatus::Unset));
        let stats = sink.shutdown(Duration::from_secs(10)).await;
        let text = buffer.contents();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("valid JSON line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0]["parent_span_id"].is_null());
        assert_eq!(lines[1]["parent_span_id"], "01".repeat(8));
        assert_eq!(stats.spans_exported, 2);
    }

    /// A batch of spans goes out in one write, not one write each.
    #[tokio::test]
    async fn queued_spans_are_written_together() {
        let buffer = SharedBuffer::default();
        let sink = JsonSink::to_writer(Box::new(buffer.clone()));
        let mut batch: Vec<ExportItem> = (0..100).map(|_| item(None, SpanStatus::Unset)).collect();
        sink.submit_batch(&mut batch);
        assert!(batch.is_empty());
        let stats = sink.shutdown(Duration::from_secs(10)).await;
        assert_eq!(stats.spans_exported, 100);
        assert_eq!(buffer.contents().lines().count(), 100);
        assert_eq!(buffer.writes(), 1, "100 queued spans, one write");
    }

    /// A writer whose first write blocks until the test lets it go.
    struct GatedWriter {
        entered: std::sync::mpsc::Sender<()>,
        gate: std::sync::mpsc::Receiver<()>,
        inner: SharedBuffer,
        first: bool,
    }

    impl std::io::Write for GatedWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.first {
                self.first = false;
                let _ = self.entered.send(());
                let _ = self.gate.recv();
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink with a 4-span queue whose writer is stuck in the write of its first span, after
    /// one span and then a batch of 10 were submitted (1 in the writer, 4 queued, 6 refused).
    /// Returns the sink, what was written, the writer's gate and the emptied batch.
    fn sink_behind_a_stuck_writer() -> (
        JsonSink,
        SharedBuffer,
        std::sync::mpsc::Sender<()>,
        Vec<ExportItem>,
    ) {
        let buffer = SharedBuffer::default();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel();
        let writer = GatedWriter {
            entered: entered_tx,
            gate: gate_rx,
            inner: buffer.clone(),
            first: true,
        };
        let sink = StreamSink::start(JsonFormatter, Box::new(writer), 4);
        sink.submit(item(None, SpanStatus::Unset));
        entered_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the writer thread took the first span");
        let mut batch: Vec<ExportItem> = (0..10).map(|_| item(None, SpanStatus::Unset)).collect();
        sink.submit_batch(&mut batch);
        (sink, buffer, gate_tx, batch)
    }

    /// A stuck stdout blocks only the writer thread: submitting never waits, and spans beyond
    /// the queue's room are dropped and counted.
    #[tokio::test]
    async fn a_blocked_writer_never_blocks_submit_and_overflow_is_counted() {
        let (sink, buffer, gate_tx, batch) = sink_behind_a_stuck_writer();
        assert!(batch.is_empty());
        let during = sink.stats().snapshot();
        assert_eq!(
            during.spans_enqueued, 11,
            "every submitted span counts: 1 in the writer + 4 queued + 6 refused"
        );
        assert_eq!(during.spans_dropped_queue_full, 6);
        gate_tx.send(()).unwrap();
        let stats = sink.shutdown(Duration::from_secs(10)).await;
        assert_eq!(stats.spans_exported, 5);
        assert_eq!(stats.spans_dropped_shutdown, 0);
        assert_eq!(buffer.contents().lines().count(), 5);
    }

    /// A stdout stuck past the shutdown deadline: the spans in the writer and in the queue count
    /// as lost at shutdown, next to the ones refused when the queue was full, and every submitted
    /// span is accounted for exactly once.
    #[tokio::test]
    async fn a_writer_stuck_past_the_shutdown_deadline_settles_every_span() {
        let (sink, _written, gate_tx, _) = sink_behind_a_stuck_writer();
        let stats = sink.shutdown(Duration::from_millis(100)).await;
        assert_eq!(stats.spans_exported, 0);
        assert_eq!(stats.spans_dropped_queue_full, 6);
        assert_eq!(
            stats.spans_dropped_shutdown, 5,
            "1 in the writer + 4 queued"
        );
        assert_eq!(
            stats.spans_enqueued,
            stats.spans_exported
                + stats.spans_dropped_export_failed
                + stats.spans_dropped_queue_full
                + stats.spans_dropped_shutdown,
            "{stats:?}"
        );
        // Let the writer thread finish.
        gate_tx.send(()).unwrap();
    }

    /// Panics on the first write.
    struct PanickingWriter;

    impl std::io::Write for PanickingWriter {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            panic!("writer broke");
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A panic on the output thread closes the sink: later spans are refused and counted at
    /// once instead of piling up in a queue nobody reads.
    #[tokio::test]
    async fn a_panicking_writer_closes_the_sink_and_counts_the_rest() {
        let sink = StreamSink::start(JsonFormatter, Box::new(PanickingWriter), 1000);
        sink.submit(item(None, SpanStatus::Unset));
        let mut submitted = 1u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            sink.submit(item(None, SpanStatus::Unset));
            submitted += 1;
            if sink.stats().snapshot().spans_dropped_shutdown > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sink still accepts spans after its writer panicked: {:?}",
                sink.stats().snapshot()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = sink.shutdown(Duration::from_secs(10)).await;
        assert_eq!(stats.spans_exported, 0);
        assert_eq!(
            stats.spans_dropped_export_failed
                + stats.spans_dropped_queue_full
                + stats.spans_dropped_shutdown,
            submitted,
            "every span is counted once: {stats:?}"
        );
    }
}
