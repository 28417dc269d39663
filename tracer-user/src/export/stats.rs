//! Counters shared by every sink: what was accepted, delivered, retried and dropped (and why).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live counters, updated with relaxed atomics from the pipeline and the sink's worker task.
#[derive(Debug, Default)]
pub struct ExportStats {
    spans_enqueued: AtomicU64,
    spans_exported: AtomicU64,
    spans_dropped_queue_full: AtomicU64,
    spans_dropped_export_failed: AtomicU64,
    spans_dropped_shutdown: AtomicU64,
    spans_dropped_rejected: AtomicU64,
    export_batches: AtomicU64,
    export_batches_failed: AtomicU64,
    export_retries: AtomicU64,
    last_export_latency_us: AtomicU64,
}

/// A point-in-time copy of [`ExportStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStatsSnapshot {
    /// Spans accepted into the sink's queue.
    pub spans_enqueued: u64,
    /// Spans delivered (OTLP: acknowledged by the receiver; text/JSON: written).
    pub spans_exported: u64,
    /// Spans refused because the queue was full.
    pub spans_dropped_queue_full: u64,
    /// Spans given up on after a permanent error or exhausted retries (or a write error).
    pub spans_dropped_export_failed: u64,
    /// Spans still queued or in flight when the shutdown deadline passed (or submitted after).
    pub spans_dropped_shutdown: u64,
    /// Spans in accepted requests that the receiver said it rejected (OTLP partial success).
    pub spans_dropped_rejected: u64,
    /// Export requests that succeeded (OTLP: one per batch, holding every process resource in it;
    /// more when a batch passes the request size cap).
    pub export_batches: u64,
    /// Export requests given up on.
    pub export_batches_failed: u64,
    /// Retry attempts made after transient failures.
    pub export_retries: u64,
    /// Duration of the last successful export request.
    pub last_export_latency: Duration,
}

impl ExportStats {
    pub fn snapshot(&self) -> ExportStatsSnapshot {
        ExportStatsSnapshot {
            spans_enqueued: self.spans_enqueued.load(Ordering::Relaxed),
            spans_exported: self.spans_exported.load(Ordering::Relaxed),
            spans_dropped_queue_full: self.spans_dropped_queue_full.load(Ordering::Relaxed),
            spans_dropped_export_failed: self.spans_dropped_export_failed.load(Ordering::Relaxed),
            spans_dropped_shutdown: self.spans_dropped_shutdown.load(Ordering::Relaxed),
            spans_dropped_rejected: self.spans_dropped_rejected.load(Ordering::Relaxed),
            export_batches: self.export_batches.load(Ordering::Relaxed),
            export_batches_failed: self.export_batches_failed.load(Ordering::Relaxed),
            export_retries: self.export_retries.load(Ordering::Relaxed),
            last_export_latency: Duration::from_micros(
                self.last_export_latency_us.load(Ordering::Relaxed),
            ),
        }
    }

    pub(crate) fn add_enqueued(&self, n: u64) {
        self.spans_enqueued.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_exported(&self, n: u64) {
        self.spans_exported.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped_queue_full(&self, n: u64) {
        self.spans_dropped_queue_full
            .fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped_export_failed(&self, n: u64) {
        self.spans_dropped_export_failed
            .fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped_shutdown(&self, n: u64) {
        self.spans_dropped_shutdown.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped_rejected(&self, n: u64) {
        self.spans_dropped_rejected.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_batch(&self, latency: Duration) {
        self.export_batches.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.last_export_latency_us.store(micros, Ordering::Relaxed);
    }
    pub(crate) fn add_batch_failed(&self) {
        self.export_batches_failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_retry(&self) {
        self.export_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts every accepted span not yet delivered or dropped as lost at shutdown (spans refused
    /// at submit time were never accepted and are already counted).
    pub(crate) fn settle_shutdown_losses(&self) {
        let s = self.snapshot();
        // Every submitted span is enqueued; evictions (queue full) remove enqueued spans.
        let settled = s.spans_exported
            + s.spans_dropped_export_failed
            + s.spans_dropped_queue_full
            + s.spans_dropped_rejected;
        let lost = s.spans_enqueued.saturating_sub(settled);
        if lost > 0 {
            self.add_dropped_shutdown(lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_losses_are_the_unsettled_remainder() {
        let stats = ExportStats::default();
        // 14 submitted (all enqueued); 5 evicted when the queue was full.
        stats.add_enqueued(14);
        stats.add_exported(6);
        stats.add_dropped_export_failed(1);
        stats.add_dropped_queue_full(5);
        stats.add_dropped_rejected(1);
        stats.settle_shutdown_losses();
        let s = stats.snapshot();
        assert_eq!(s.spans_dropped_shutdown, 1);
        assert_eq!(s.spans_dropped_queue_full, 5);
    }

    #[test]
    fn batch_latency_is_recorded() {
        let stats = ExportStats::default();
        stats.add_batch(Duration::from_millis(12));
        let s = stats.snapshot();
        assert_eq!(s.export_batches, 1);
        assert_eq!(s.last_export_latency, Duration::from_millis(12));
    }
}
