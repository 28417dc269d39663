//! `SpanStore`: the bounded, shared list of spans a receiver has collected, and the bounded wait
//! for a condition on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

use crate::span::ObservedSpan;

/// Spans kept per store; more are dropped and counted.
pub const MAX_STORED_SPANS: usize = 100_000;

/// Metrics export requests kept per store; the oldest are dropped past it (each cumulative
/// request supersedes the earlier ones).
pub const MAX_STORED_METRIC_REQUESTS: usize = 1000;

/// Counters of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Export requests accepted.
    pub export_requests: u64,
    /// Requests refused (bad method, media type, encoding or body): filled by the receiver.
    pub rejected_requests: u64,
    /// Spans dropped because the store was full.
    pub dropped_spans: u64,
}

#[derive(Default)]
struct StoreInner {
    spans: Mutex<Vec<ObservedSpan>>,
    /// OTLP metrics export requests, in arrival order (bounded by [`MAX_STORED_METRIC_REQUESTS`]).
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    changed: Condvar,
    export_requests: AtomicU64,
    dropped_spans: AtomicU64,
}

/// Cheap to clone: every clone sees the same spans.
#[derive(Clone, Default)]
pub struct SpanStore {
    inner: Arc<StoreInner>,
}

/// `wait_for` gave up; carries what was there at the end.
#[derive(Debug, thiserror::Error)]
#[error("condition not met within {waited:?}; {} span(s) received:\n{}", last_seen.len(), crate::query::describe(last_seen))]
pub struct WaitTimedOut {
    pub waited: Duration,
    pub last_seen: Vec<ObservedSpan>,
}

impl SpanStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<ObservedSpan>> {
        self.inner
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the spans of one accepted export request.
    pub fn record(&self, spans: Vec<ObservedSpan>) {
        self.inner.export_requests.fetch_add(1, Ordering::Relaxed);
        let mut stored = self.lock();
        for span in spans {
            if stored.len() >= MAX_STORED_SPANS {
                self.inner.dropped_spans.fetch_add(1, Ordering::Relaxed);
            } else {
                stored.push(span);
            }
        }
        drop(stored);
        self.inner.changed.notify_all();
    }

    /// Adds one accepted OTLP metrics export request.
    /// (Not counted in `export_requests`, which counts trace exports.)
    pub fn record_metrics(&self, request: ExportMetricsServiceRequest) {
        let mut stored = self
            .inner
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if stored.len() >= MAX_STORED_METRIC_REQUESTS {
            stored.remove(0);
        }
        stored.push(request);
        drop(stored);
        // Waiters hold the spans lock while they wait on `changed`.
        drop(self.lock());
        self.inner.changed.notify_all();
    }

    /// Every metrics export request received so far (oldest first).
    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.inner
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Blocks until `condition` holds on the metrics requests received (checked on every
    /// arrival) or `timeout` passes; returns them, or the last seen as the error.
    pub fn wait_for_metrics(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[ExportMetricsServiceRequest]) -> bool,
    ) -> Result<Vec<ExportMetricsServiceRequest>, Vec<ExportMetricsServiceRequest>> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        loop {
            let requests = self.metric_requests();
            if condition(&requests) {
                return Ok(requests);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(requests);
            }
            guard = self
                .inner
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Counts a refused request.
    /// A copy of everything received so far.
    pub fn spans(&self) -> Vec<ObservedSpan> {
        self.lock().clone()
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            export_requests: self.inner.export_requests.load(Ordering::Relaxed),
            rejected_requests: 0,
            dropped_spans: self.inner.dropped_spans.load(Ordering::Relaxed),
        }
    }

    /// Blocks until `condition` holds on the received spans (checked on every arrival) or
    /// `timeout` passes; returns the spans that satisfied it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[ObservedSpan]) -> bool,
    ) -> Result<Vec<ObservedSpan>, WaitTimedOut> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut stored = self.lock();
        loop {
            if condition(&stored) {
                return Ok(stored.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitTimedOut {
                    waited: now - started,
                    last_seen: stored.clone(),
                });
            }
            stored = self
                .inner
                .changed
                .wait_timeout(stored, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{ObservedKind, ObservedStatus};
    use std::collections::BTreeMap;

    fn span(id: &str) -> ObservedSpan {
        ObservedSpan {
            trace_id: "t".repeat(32),
            span_id: id.to_owned(),
            parent_span_id: None,
            trace_state: None,
            name: "GET".to_owned(),
            kind: ObservedKind::Server,
            start_unix_ns: 1,
            end_unix_ns: 2,
            status: ObservedStatus::Unset,
            status_description: String::new(),
            attributes: BTreeMap::new(),
            resource: BTreeMap::new(),
        }
    }

    #[test]
    fn wait_for_wakes_on_arrival_from_another_thread() {
        let store = SpanStore::new();
        let writer = store.clone();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.record(vec![span("a")]);
            std::thread::sleep(Duration::from_millis(50));
            writer.record(vec![span("b")]);
        });
        let seen = store
            .wait_for(Duration::from_secs(10), |spans| spans.len() == 2)
            .expect("both spans arrive");
        assert_eq!(
            seen.iter().map(|s| s.span_id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(store.stats().export_requests, 2);
        handle.join().expect("writer thread");
    }

    #[test]
    fn wait_for_times_out_with_what_was_seen() {
        let store = SpanStore::new();
        store.record(vec![span("only")]);
        let started = Instant::now();
        let err = store
            .wait_for(Duration::from_millis(100), |spans| spans.len() > 1)
            .expect_err("only one span ever arrives");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(err.last_seen.len(), 1);
        assert!(err.to_string().contains("only"), "{err}");
    }
}
