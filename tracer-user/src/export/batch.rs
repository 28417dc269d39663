//! The OTLP sink: a bounded queue in front of one background task that groups spans into batches
//! (full batch or schedule delay, whichever first), splits each batch by process resource, and
//! exports each group with retries. Everything dropped is counted in [`ExportStats`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SpanData;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ExportError;
use super::config::{BatchConfig, OtlpConfig, RetryConfig};
use super::convert::{otel_resource, span_data, tracer_scope};
use super::otlp::OtlpTransport;
use super::queue::{DropOldestQueue, Pushed};
use super::retry::{FailureClass, backoff_delay};
use super::stats::{ExportStats, ExportStatsSnapshot};
use crate::model::{ExportItem, ProcessResource};

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
        let queue = Arc::new(DropOldestQueue::new(cfg.batch.max_queue_size.max(1)));
        let queue_rx = Arc::clone(&queue);
        let (shutdown_deadline, deadline_rx) = watch::channel(None);
        let stats = Arc::new(ExportStats::default());
        let worker = BatchWorker {
            transport,
            batch_cfg: cfg.batch.clone(),
            retry_cfg: cfg.retry.clone(),
            stats: Arc::clone(&stats),
            deadline_rx,
            scope: tracer_scope(),
        };
        let worker = tokio::spawn(worker.run(queue_rx));
        tracing::info!(
            endpoint = %crate::redact::url(&cfg.endpoint),
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
    scope: InstrumentationScope,
}

impl BatchWorker {
    async fn run(mut self, queue_rx: Arc<DropOldestQueue<ExportItem>>) {
        let max_batch = self.batch_cfg.max_export_batch_size.max(1);
        let mut batch: Vec<ExportItem> = Vec::with_capacity(max_batch);
        let mut flush_at = Instant::now() + self.batch_cfg.schedule_delay;
        loop {
            let room = max_batch - batch.len();
            tokio::select! {
                open = queue_rx.recv_many(&mut batch, room) => {
                    if !open {
                        self.export_batch(batch).await;
                        return;
                    }
                    if batch.len() >= max_batch {
                        self.export_batch(std::mem::take(&mut batch)).await;
                        flush_at = Instant::now() + self.batch_cfg.schedule_delay;
                    }
                },
                () = tokio::time::sleep_until(flush_at) => {
                    if !batch.is_empty() {
                        self.export_batch(std::mem::take(&mut batch)).await;
                    }
                    flush_at = Instant::now() + self.batch_cfg.schedule_delay;
                }
            }
        }
    }

    /// Splits a batch by process resource and exports each group.
    async fn export_batch(&mut self, batch: Vec<ExportItem>) {
        if batch.is_empty() {
            return;
        }
        for (resource, spans) in group_by_resource(batch, &self.scope) {
            self.export_group(&resource, spans).await;
        }
    }

    async fn export_group(&mut self, resource: &ProcessResource, spans: Vec<SpanData>) {
        let count = spans.len() as u64;
        let otel = otel_resource(resource);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let failure = match self.transport.export(&otel, spans.clone()).await {
                Ok(latency) => {
                    self.stats.add_exported(count);
                    self.stats.add_batch(latency);
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

/// Groups spans by their process resource (same pid and same resource contents), converting them
/// to SDK spans. Group order follows first appearance.
fn group_by_resource(
    batch: Vec<ExportItem>,
    scope: &InstrumentationScope,
) -> Vec<(Arc<ProcessResource>, Vec<SpanData>)> {
    let mut groups: Vec<(Arc<ProcessResource>, Vec<SpanData>)> = Vec::new();
    let mut by_pid: HashMap<u32, Vec<usize>> = HashMap::new();
    for item in batch {
        let candidates = by_pid.entry(item.resource.pid).or_default();
        let found = candidates.iter().copied().find(|&i| {
            groups
                .get(i)
                .is_some_and(|(r, _)| Arc::ptr_eq(r, &item.resource) || **r == *item.resource)
        });
        let data = span_data(&item.span, scope);
        match found.and_then(|i| groups.get_mut(i)) {
            Some((_, spans)) => spans.push(data),
            None => {
                candidates.push(groups.len());
                groups.push((item.resource, vec![data]));
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, SpanKind, SpanRecord, SpanStatus};

    fn item(pid: u32, resource: &Arc<ProcessResource>, span_byte: u8) -> ExportItem {
        ExportItem {
            span: SpanRecord {
                trace_id: [1; 16],
                span_id: [span_byte; 8],
                parent_span_id: None,
                trace_state: None,
                sampled: true,
                name: "GET".into(),
                kind: SpanKind::Server,
                start_unix_ns: 1,
                end_unix_ns: 2,
                attributes: vec![],
                status: SpanStatus::Unset,
                pid,
            },
            resource: Arc::clone(resource),
        }
    }

    fn resource(pid: u32, name: &str) -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            pid,
            service_name: name.into(),
            attributes: vec![(
                "service.name".into(),
                AttrValue::Str(name.to_string().into()),
            )],
        })
    }

    #[test]
    fn groups_follow_resources_not_just_pids() {
        let a = resource(1, "a");
        let a_copy = resource(1, "a");
        let a_after_exec = resource(1, "a2");
        let b = resource(2, "b");
        let batch = vec![
            item(1, &a, 1),
            item(2, &b, 2),
            item(1, &a_copy, 3),
            item(1, &a_after_exec, 4),
            item(2, &b, 5),
        ];
        let groups = group_by_resource(batch, &tracer_scope());
        let summary: Vec<(String, Vec<u8>)> = groups
            .iter()
            .map(|(r, spans)| {
                let ids = spans
                    .iter()
                    .map(|s| s.span_context.span_id().to_bytes()[0])
                    .collect();
                (r.service_name.clone(), ids)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a".to_string(), vec![1, 3]),
                ("b".to_string(), vec![2, 5]),
                ("a2".to_string(), vec![4]),
            ]
        );
    }
}
