//! Waiting on the agent's state instead of on time: the agent has caught up when every record
//! its kernel programs submitted has been read, nothing waits in its reorder window, and every
//! span it handed to its sink was delivered or counted as dropped, in a `/metrics` snapshot taken
//! after the wait began. A test that asserts something did NOT happen waits for this, not for a
//! fixed sleep: faster when the machine is idle, still right when it is loaded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::metrics_client::{http_get, sample};

/// How long the agent may take to catch up.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The counters that say whether the agent has caught up, from one `/metrics` page.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backlog {
    /// `tracer_metrics_snapshots_total`: how many times the values were refreshed.
    pub snapshots: f64,
    pub kernel_submitted: f64,
    pub read: f64,
    pub malformed: f64,
    pub reorder_buffered: f64,
    pub spans_enqueued: f64,
    /// Spans delivered or dropped for a reason other than shutdown.
    pub spans_settled: f64,
}

impl Backlog {
    /// `None` when the page lacks one of the counters.
    pub fn from_page(page: &str) -> Option<Backlog> {
        let value = |name: &str, labels: &str| sample(page, name, labels);
        let dropped = |reason: &str| {
            value(
                "tracer_spans_dropped_total",
                &format!("reason=\"{reason}\""),
            )
        };
        Some(Backlog {
            snapshots: value("tracer_metrics_snapshots_total", "")?,
            kernel_submitted: value("tracer_kernel_events_submitted_total", "")?,
            read: value("tracer_events_read_total", "")?,
            malformed: value(
                "tracer_events_dropped_total",
                "stage=\"decode\",reason=\"malformed\"",
            )?,
            reorder_buffered: value("tracer_reorder_buffered", "")?,
            spans_enqueued: value("tracer_spans_enqueued_total", "")?,
            spans_settled: value("tracer_spans_exported_total", "")?
                + dropped("queue_full")?
                + dropped("export_failed")?
                + dropped("rejected_by_receiver")?,
        })
    }

    /// Every submitted record read, none held back, every enqueued span settled.
    pub fn caught_up(&self) -> bool {
        self.read + self.malformed >= self.kernel_submitted
            && self.reorder_buffered == 0.0
            && self.spans_settled >= self.spans_enqueued
    }
}

/// Waits until a snapshot taken after this call shows the agent caught up, and returns that
/// `/metrics` page. Panics after [`SETTLE_TIMEOUT`] with the last page and `context()` (e.g. the
/// agent's stderr).
pub fn wait_settled(addr: SocketAddr, context: impl Fn() -> String) -> String {
    // The snapshot current at the call may predate it; the one after next was surely taken after.
    poll_snapshots(
        addr,
        2.0,
        "the agent to catch up (records read vs submitted, reorder window, spans settled vs \
         enqueued)",
        |page| match Backlog::from_page(page) {
            Some(backlog) => backlog.caught_up(),
            None => {
                panic!("the agent's /metrics lacks a counter the settle barrier reads:\n{page}")
            }
        },
        context,
    )
}

/// Waits until `condition` holds on a `/metrics` page of a snapshot taken after this call, and
/// returns that page. Panics after [`SETTLE_TIMEOUT`] with `what`, the last page and `context()`.
pub fn wait_for_metrics(
    addr: SocketAddr,
    what: &str,
    condition: impl Fn(&str) -> bool,
    context: impl Fn() -> String,
) -> String {
    poll_snapshots(addr, 1.0, what, condition, context)
}

/// Polls `/metrics` until a page whose `tracer_metrics_snapshots_total` is at least `newer` above
/// the first one read satisfies `condition`; returns that page.
fn poll_snapshots(
    addr: SocketAddr,
    newer: f64,
    what: &str,
    condition: impl Fn(&str) -> bool,
    context: impl Fn() -> String,
) -> String {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut first: Option<f64> = None;
    let mut last = String::new();
    loop {
        if let Ok(answer) = http_get(addr, "/metrics", Duration::from_secs(10))
            && answer.status == 200
        {
            if let Some(snapshots) = sample(&answer.body, "tracer_metrics_snapshots_total", "") {
                let start = *first.get_or_insert(snapshots);
                if snapshots >= start + newer && condition(&answer.body) {
                    return answer.body;
                }
            }
            last = answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "waited {SETTLE_TIMEOUT:?} for {what}; last /metrics:\n{last}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
tracer_metrics_snapshots_total 7
tracer_kernel_events_submitted_total 10
tracer_events_read_total 9
tracer_events_dropped_total{stage=\"decode\",reason=\"malformed\"} 1
tracer_reorder_buffered 0
tracer_spans_enqueued_total 4
tracer_spans_exported_total 2
tracer_spans_dropped_total{reason=\"queue_full\"} 1
tracer_spans_dropped_total{reason=\"export_failed\"} 1
tracer_spans_dropped_total{reason=\"rejected_by_receiver\"} 0
tracer_spans_dropped_total{reason=\"shutdown\"} 0
";

    #[test]
    fn caught_up_counts_malformed_records_and_dropped_spans() {
        let backlog = Backlog::from_page(PAGE).expect("every counter present");
        assert_eq!(backlog.snapshots, 7.0);
        assert!(backlog.caught_up(), "{backlog:?}");
        let behind = PAGE.replace("tracer_events_read_total 9", "tracer_events_read_total 8");
        assert!(!Backlog::from_page(&behind).expect("parsed").caught_up());
        let held = PAGE.replace("tracer_reorder_buffered 0", "tracer_reorder_buffered 3");
        assert!(!Backlog::from_page(&held).expect("parsed").caught_up());
        let unsent = PAGE.replace(
            "tracer_spans_exported_total 2",
            "tracer_spans_exported_total 1",
        );
        assert!(!Backlog::from_page(&unsent).expect("parsed").caught_up());
    }

    #[test]
    fn a_page_without_the_counters_is_not_read_as_settled() {
        assert_eq!(Backlog::from_page("tracer_ready 1\n"), None);
    }
}
