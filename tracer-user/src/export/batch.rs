//! The OTLP sink: a bounded queue in front of one background task that groups spans into batches
//! (full batch or schedule delay, whichever first; the queue wakes the task only for a full
//! batch, so handing spans over costs the producer no wake-up of it), encodes each batch once as one request (one
//! `ResourceSpans` per process resource) and exports it with retries. Everything dropped is
//! counted in [`ExportStats`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ExportError;
use super::config::{BatchConfig, OtlpConfig, RetryConfig};
use super::otlp::OtlpTransport;
use super::queue::{DropOldestQueue, Pushed, PushedMany};
use super::retry::{FailureClass, backoff_delay};
use super::stats::{ExportStats, ExportStatsSnapshot};
use crate::model::ExportItem;

/// Batching OTLP exporter. `submit` never waits; `shutdown` flushes within a deadline.
#[derive(Debug)]
pub struct BatchExporter {
    queue: Arc<DropOldestQueue<ExportItem>>,
    stats: Arc<ExportStats>,
    /// Set at shutdown so retries stop waiting past the deadline.
    shutdown_deadline: watch::Sender<Option<Instant>>,
    worker: JoinHandle<()>,
}

impl BatchExporter {
    /// Builds the OTLP exporter and starts the worker task on the current tokio runtime.
    /// The endpoint is not contacted here: an unreachable collector only shows up as retries.
    pub fn start(cfg: &OtlpConfig) -> Result<Self, ExportError> {
        let transport = OtlpTransport::new(cfg)?;
        let queue = Arc::new(DropOldestQueue::new(
            cfg.batch.max_queue_size,
            cfg.batch.max_export_batch_size,
        ));
        let queue_rx = Arc::clone(&queue);
        let (shutdown_deadline, deadline_rx) = watch::channel(None);
        let stats = Arc::new(ExportStats::default());
        let worker = BatchWorker {
            transport,
            batch_cfg: cfg.batch.clone(),
            retry_cfg: cfg.retry.clone(),
            stats: Arc::clone(&stats),
            deadline_rx,
        };
        let worker = tokio::spawn(worker.run(queue_rx));
        tracing::info!(
            endpoint = %crate::telemetry::redact::url(&cfg.endpoint),
            protocol = cfg.protocol.as_str(),
            "OTLP export configured"
        );
        Ok(BatchExporter {
            queue,
            stats,
            shutdown_deadline,
            worker,
        })
    }

    /// Queues a span for export; when the queue is full its OLDEST span is dropped and counted.
    pub fn submit(&self, item: ExportItem) {
        match self.queue.push(item) {
            Pushed::Queued => self.stats.add_enqueued(1),
            Pushed::EvictedOldest => {
                self.stats.add_enqueued(1);
                self.stats.add_dropped_queue_full(1);
            }
            Pushed::Closed => self.stats.add_dropped_shutdown(1),
        }
    }

    /// Queues a batch of spans with one lock, waking the worker only when a full export batch is
    /// queued (`items` is left empty for reuse); evictions of the oldest spans are counted as with `submit`.
    pub fn submit_batch(&self, items: &mut Vec<ExportItem>) {
        let n = items.len() as u64;
        match self.queue.push_many(items) {
            Some(PushedMany { queued, evicted }) => {
                self.stats.add_enqueued(queued);
                if evicted > 0 {
                    self.stats.add_dropped_queue_full(evicted);
                }
            }
            None => self.stats.add_dropped_shutdown(n),
        }
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// Exports everything queued, giving up at `deadline` from now; spans not delivered by then
    /// are counted in `spans_dropped_shutdown`.
    pub async fn shutdown(self, deadline: Duration) -> ExportStatsSnapshot {
        let BatchExporter {
            queue,
            stats,
            shutdown_deadline,
            mut worker,
        } = self;
        let until = Instant::now() + deadline;
        shutdown_deadline.send_replace(Some(until));
        // Closing the queue lets the worker drain what is buffered and then stop.
        queue.close();
        if tokio::time::timeout_at(until, &mut worker).await.is_err() {
            worker.abort();
            tracing::warn!(
                ?deadline,
                "OTLP export did not finish before the shutdown deadline"
            );
        }
        stats.settle_shutdown_losses();
        stats.snapshot()
    }
}

struct BatchWorker {
    transport: OtlpTransport,
    batch_cfg: BatchConfig,
    retry_cfg: RetryConfig,
    stats: Arc<ExportStats>,
    deadline_rx: watch::Receiver<Option<Instant>>,
}

impl BatchWorker {
    /// Exports every full batch as soon as it is queued, and what is left each schedule delay
    /// (counted from the last export); at close, everything.
    async fn run(mut self, queue: Arc<DropOldestQueue<ExportItem>>) {
        let max_batch = self.batch_cfg.max_export_batch_size.max(1);
        let mut flush_at = Instant::now() + self.batch_cfg.schedule_delay;
        // The batches one export takes (as the producer handed them over), reused.
        let mut batch: Vec<Vec<ExportItem>> = Vec::new();
        loop {
            let flush_due = tokio::select! {
                () = queue.filled() => false,
                () = tokio::time::sleep_until(flush_at) => true,
            };
            let closed = queue.is_closed();
            // A due flush takes what was queued when it fell due, not what keeps arriving while
            // it exports (that waits for a full batch or the next delay).
            let mut flush_left = if flush_due || closed { queue.len() } else { 0 };
            loop {
                let take = if closed || queue.len() >= max_batch {
                    max_batch
                } else if flush_left > 0 {
                    flush_left.min(max_batch)
                } else {
                    break;
                };
                let taken = queue.take_batches(&mut batch, take);
                if taken == 0 {
                    break;
                }
                flush_left = flush_left.saturating_sub(taken);
                let requests = self.encode_batch(&mut batch);
                queue.give_back(&mut batch);
                self.export_requests(requests).await;
                flush_at = Instant::now() + self.batch_cfg.schedule_delay;
            }
            if closed {
                return;
            }
            if flush_due {
                flush_at = Instant::now() + self.batch_cfg.schedule_delay;
            }
        }
    }

    /// Encodes the spans of `batches` as one request (several when it passes the request size
    /// cap), in order, and releases them (the vectors are left empty for the queue to reuse), so
    /// a batch waiting on retries holds only its bytes.
    fn encode_batch(
        &mut self,
        batches: &mut [Vec<ExportItem>],
    ) -> Vec<super::otlp::EncodedRequest> {
        let items: Vec<&ExportItem> = batches.iter().flatten().collect();
        let requests = if items.is_empty() {
            Vec::new()
        } else {
            self.transport.encode(&items)
        };
        drop(items);
        for batch in batches.iter_mut() {
            batch.clear();
        }
        requests
    }

    /// Exports each encoded request on its own.
    async fn export_requests(&mut self, requests: Vec<super::otlp::EncodedRequest>) {
        for request in requests {
            let count = request.spans;
            match request.body {
                Ok(body) => self.export_request(body, count).await,
                Err(failure) => {
                    tracing::warn!(spans = count, error = %failure.message, "dropping span batch: cannot encode it");
                    self.give_up(count);
                }
            }
        }
    }

    async fn export_request(&mut self, body: Bytes, count: u64) {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let failure = match self.transport.export(body.clone()).await {
                Ok(delivered) => {
                    // Spans the receiver rejected (partial success) were not delivered; the
                    // count it reports is capped by what we sent, so the totals still balance.
                    let rejected = delivered.rejected_spans.min(count);
                    if rejected > 0 {
                        tracing::debug!(spans = count, rejected, "OTLP partial success");
                        self.stats.add_dropped_rejected(rejected);
                    }
                    self.stats.add_exported(count - rejected);
                    self.stats.add_batch(delivered.latency);
                    return;
                }
                Err(failure) => failure,
            };
            let retry_after = match failure.class {
                FailureClass::Transient { retry_after }
                    if attempt < self.retry_cfg.max_attempts =>
                {
                    retry_after
                }
                class => {
                    tracing::warn!(
                        spans = count,
                        attempts = attempt,
                        permanent = class == FailureClass::Permanent,
                        error = %failure.message,
                        "dropping span batch after export failure"
                    );
                    self.give_up(count);
                    return;
                }
            };
            let jitter: f64 = rand::rng().random_range(0.0..=1.0);
            let delay = backoff_delay(&self.retry_cfg, attempt - 1, jitter, retry_after);
            tracing::debug!(attempt, ?delay, error = %failure.message, "retrying OTLP export");
            if !self.pause_before_retry(delay).await {
                tracing::warn!(
                    spans = count,
                    "dropping span batch: retry would pass the shutdown deadline"
                );
                self.give_up(count);
                return;
            }
            self.stats.add_retry();
        }
    }

    fn give_up(&self, count: u64) {
        self.stats.add_dropped_export_failed(count);
        self.stats.add_batch_failed();
    }

    /// Sleeps `delay` unless that would pass the shutdown deadline; returns whether to retry.
    async fn pause_before_retry(&mut self, delay: Duration) -> bool {
        let wake = Instant::now() + delay;
        loop {
            if let Some(deadline) = *self.deadline_rx.borrow_and_update()
                && wake >= deadline
            {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => return true,
                changed = self.deadline_rx.changed() => {
                    if changed.is_err() {
                        // The exporter handle is gone without a deadline: just wait.
                        tokio::time::sleep_until(wake).await;
                        return true;
                    }
                }
            }
        }
    }
}
