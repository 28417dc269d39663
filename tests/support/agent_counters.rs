//! The agent's loss counters and table state from its Prometheus `/metrics`, and, for an agent
//! that has exited, from its last drop summary and `tracer stopped` log lines.

use std::collections::BTreeMap;

pub use crate::metrics_client::scrape;

/// Message of the periodic drop summary.
const DROP_SUMMARY: &str = "events or spans were dropped";
/// Message of the last log line.
const STOPPED: &str = "tracer stopped";

/// Loss counters, totals since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropTotals {
    pub kernel_ringbuf_full: u64,
    pub spans_dropped_queue_full: u64,
    pub spans_dropped_export_failed: u64,
}

impl DropTotals {
    /// From the last drop summary line the agent logged (all zero when none was printed:
    /// nothing dropped); for an agent that has exited and no longer serves `/metrics`.
    pub fn from_logs(stderr: &str) -> DropTotals {
        let Some(fields) = stderr
            .lines()
            .rev()
            .find_map(|l| fields_after(l, DROP_SUMMARY))
        else {
            return DropTotals::default();
        };
        let get = |key: &str| fields.get(key).copied().unwrap_or(0);
        DropTotals {
            kernel_ringbuf_full: get("kernel_ringbuf_full"),
            spans_dropped_queue_full: get("spans_dropped_queue_full"),
            spans_dropped_export_failed: get("spans_dropped_export_failed"),
        }
    }

    /// From a `/metrics` page.
    pub fn from_metrics(text: &str) -> DropTotals {
        let get = |name, labels: &[(&str, &str)]| {
            sample(text, name, labels)
                .unwrap_or_else(|| panic!("metric {name}{labels:?} missing from /metrics:\n{text}"))
                as u64
        };
        DropTotals {
            kernel_ringbuf_full: get(
                "tracer_events_dropped_total",
                &[("stage", "kernel"), ("reason", "ringbuf_full")],
            ),
            spans_dropped_queue_full: get(
                "tracer_spans_dropped_total",
                &[("reason", "queue_full")],
            ),
            spans_dropped_export_failed: get(
                "tracer_spans_dropped_total",
                &[("reason", "export_failed")],
            ),
        }
    }
}

/// The agent's connection table and how far it has read the kernel's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableState {
    pub tracked: u64,
    pub events_read: u64,
    pub events_submitted: u64,
}

impl TableState {
    pub fn from_metrics(text: &str) -> TableState {
        let get = |name| {
            sample(text, name, &[])
                .unwrap_or_else(|| panic!("metric {name} missing from /metrics:\n{text}"))
                as u64
        };
        TableState {
            tracked: get("tracer_connections_tracked"),
            events_read: get("tracer_events_read_total"),
            events_submitted: get("tracer_kernel_events_submitted_total"),
        }
    }
}

/// The counters of the final `tracer stopped` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoppedLine {
    pub spans: u64,
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
    pub dropped_shutdown: u64,
}

impl StoppedLine {
    pub fn from_logs(stderr: &str) -> Option<StoppedLine> {
        let fields = stderr
            .lines()
            .rev()
            .find_map(|l| fields_after(l, STOPPED))?;
        let get = |key: &str| fields.get(key).copied();
        Some(StoppedLine {
            spans: get("spans")?,
            exported: get("exported")?,
            dropped_queue_full: get("dropped_queue_full")?,
            dropped_export_failed: get("dropped_export_failed")?,
            dropped_shutdown: get("dropped_shutdown")?,
        })
    }

    /// Every span lost, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_export_failed + self.dropped_shutdown
    }
}

/// The numeric `key=value` fields after `message` in a log line (ANSI colours removed).
pub fn fields_after(line: &str, message: &str) -> Option<BTreeMap<String, u64>> {
    let plain = strip_ansi(line);
    let at = plain.find(message)?;
    let rest = plain.get(at + message.len()..)?;
    Some(
        rest.split_whitespace()
            .filter_map(|token| {
                let (key, value) = token.split_once('=')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect(),
    )
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of sample `name` with exactly `labels` in Prometheus text.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, Vec::new()),
            };
            (series_name == name && series_labels == want).then(|| value.parse().ok())?
        })
}

/// `a="x",b="y"` (no escapes needed for the agent's label values), sorted.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        let value = value.strip_prefix('"')?.strip_suffix('"')?;
        labels.push((key.to_owned(), value.to_owned()));
    }
    labels.sort();
    Some(labels)
}

#[cfg(test)]
#[test]
fn parses_log_lines_and_metrics() {
    let line = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m tracer::agent: \
                events or spans were dropped (totals since start) \
                \u{1b}[3mkernel_ringbuf_full\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 \
                spans_dropped_queue_full=2 spans_dropped_export_failed=3 decode_errors=0";
    let stderr = format!(
        "first\n{line}\nINFO tracer stopped spans=9 exported=4 \
                          dropped_queue_full=2 dropped_export_failed=3 dropped_shutdown=0\n"
    );
    assert_eq!(
        DropTotals::from_logs(&stderr),
        DropTotals {
            kernel_ringbuf_full: 7,
            spans_dropped_queue_full: 2,
            spans_dropped_export_failed: 3
        }
    );
    assert_eq!(DropTotals::from_logs("nothing"), DropTotals::default());
    let stopped = StoppedLine::from_logs(&stderr).expect("stopped line");
    assert_eq!(
        (stopped.spans, stopped.exported, stopped.dropped()),
        (9, 4, 5)
    );

    let metrics = "# TYPE tracer_spans_dropped_total counter\n\
                   tracer_spans_dropped_total{reason=\"queue_full\"} 5\n\
                   tracer_spans_dropped_total{reason=\"export_failed\"} 6\n\
                   tracer_events_dropped_total{stage=\"kernel\",reason=\"ringbuf_full\"} 8\n\
                   tracer_connections_tracked 0\n";
    assert_eq!(
        DropTotals::from_metrics(metrics),
        DropTotals {
            kernel_ringbuf_full: 8,
            spans_dropped_queue_full: 5,
            spans_dropped_export_failed: 6
        }
    );
    assert_eq!(
        sample(metrics, "tracer_connections_tracked", &[]),
        Some(0.0)
    );
    assert_eq!(sample(metrics, "tracer_spans_dropped_total", &[]), None);
}
