//! The bench's OTLP receiver: the shared `otlp-receiver` crate over HTTP/protobuf, answering every
//! request at once without decoding it into generated types: spans are counted by kind, in total
//! and by their `server.port` attribute, straight from the protobuf bytes
//! (`otlp_receiver::wire`), so counting costs next to nothing. A host-wide agent on a shared
//! machine traces other work too: the bench counts only the spans of its own server's port.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
pub use otlp_receiver::wire::SpanCounts;
use otlp_receiver::wire::count_spans_by_port;
use otlp_receiver::{Config, Protocol, Receiver, Signal};

#[derive(Debug, Default)]
struct Counters {
    total: Mutex<SpanCounts>,
    by_port: Mutex<BTreeMap<u16, SpanCounts>>,
    /// Trace requests whose bytes were not a readable export request.
    unreadable: AtomicU64,
}

impl Counters {
    fn count(&self, request: &[u8]) {
        match count_spans_by_port(request) {
            Ok(counts) => {
                self.total
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add(counts.total);
                let mut by_port = self.by_port.lock().unwrap_or_else(PoisonError::into_inner);
                for (port, c) in counts.by_port {
                    by_port.entry(port).or_default().add(c);
                }
            }
            Err(_) => {
                self.unreadable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The running receiver; stops when dropped.
pub struct CountingReceiver {
    receiver: Receiver,
    counters: Arc<Counters>,
}

impl CountingReceiver {
    pub fn start() -> Result<CountingReceiver> {
        let counters = Arc::new(Counters::default());
        let mut config = Config::new(Protocol::HttpProtobuf);
        config.decode = false;
        config.log_attempts = false;
        let counting = Arc::clone(&counters);
        config.hooks.raw = Some(Arc::new(move |signal, body: &[u8]| {
            if signal == Signal::Traces {
                counting.count(body);
            }
        }));
        let receiver = Receiver::start_with(config).context("starting the OTLP receiver")?;
        Ok(CountingReceiver { receiver, counters })
    }

    /// The base URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        self.receiver.endpoint()
    }

    pub fn counts(&self) -> SpanCounts {
        *self
            .counters
            .total
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Spans whose `server.port` is `port`, by kind.
    pub fn counts_for_port(&self, port: u16) -> SpanCounts {
        self.counters
            .by_port
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&port)
            .copied()
            .unwrap_or_default()
    }

    /// Trace export requests answered, and requests refused or unreadable.
    pub fn requests(&self) -> (u64, u64) {
        let stats = self.receiver.stats();
        let unreadable = self.counters.unreadable.load(Ordering::Relaxed);
        (
            stats.requests.saturating_sub(stats.malformed + unreadable),
            stats.malformed + unreadable,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;

    use otlp_receiver::wire::count_spans;

    use super::*;

    /// An export request of one resource with a SERVER and a CLIENT span on port 8080.
    fn request() -> Vec<u8> {
        use otlp_receiver::prost::Message;
        use otlp_receiver::proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use otlp_receiver::proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        use otlp_receiver::proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
        let port = KeyValue {
            key: "server.port".to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(8080)),
            }),
            ..Default::default()
        };
        let span = |kind: span::SpanKind| Span {
            kind: kind as i32,
            attributes: vec![port.clone()],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(span::SpanKind::Server), span(span::SpanKind::Client)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn serves_keep_alive_posts_and_counts_them() {
        let receiver = CountingReceiver::start().unwrap();
        let port = receiver
            .endpoint()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = request();
        let per_request = count_spans(&body).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        for _ in 0..2 {
            let head = format!(
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
        }
        let mut twice = SpanCounts::default();
        twice.add(per_request);
        twice.add(per_request);
        assert_eq!(receiver.counts(), twice);
        assert_eq!(receiver.counts_for_port(8080).server, 2);
        assert_eq!(receiver.requests(), (2, 0));
    }
}
