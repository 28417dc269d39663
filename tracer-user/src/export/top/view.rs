//! What both views of `tracer top` share: the sort order, number formats, the status line and
//! the plain table printed when stdout is not a terminal.

use std::fmt::Write as _;

use super::{EdgeView, RATE_WINDOW_SECONDS, RowView, TopSnapshot};
use crate::model::SpanKind;

/// The agent's own losses, read from the counters /metrics shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentDrops {
    /// `live` while the probes are attached and records are read, else `starting` or `stopped`.
    pub phase: &'static str,
    /// Kernel records lost (ring buffer full, tables full).
    pub kernel_lost: u64,
    /// Spans the exporter dropped (queue full, export failed, rejected).
    pub export_dropped: u64,
    /// Records the agent could not decode.
    pub decode_errors: u64,
}

impl AgentDrops {
    pub fn from_snapshot(
        s: &crate::telemetry::metrics::AgentSnapshot,
        phase: &'static str,
    ) -> Self {
        AgentDrops {
            phase,
            kernel_lost: s.kernel.lost(),
            export_dropped: s.spans_dropped_queue_full
                + s.spans_dropped_export_failed
                + s.spans_dropped_rejected,
            decode_errors: s.decode_errors,
        }
    }
}

/// The column rows are sorted by (descending, except the name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    #[default]
    Count,
    Rate,
    Errors,
    P50,
    P95,
    P99,
    Name,
}

impl SortBy {
    pub const ALL: [SortBy; 7] = [
        SortBy::Count,
        SortBy::Rate,
        SortBy::Errors,
        SortBy::P50,
        SortBy::P95,
        SortBy::P99,
        SortBy::Name,
    ];

    pub fn next(self) -> SortBy {
        let at = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Self::ALL[(at + 1) % Self::ALL.len()]
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Count => "COUNT",
            SortBy::Rate => "RATE/s",
            SortBy::Errors => "ERR%",
            SortBy::P50 => "P50",
            SortBy::P95 => "P95",
            SortBy::P99 => "P99",
            SortBy::Name => "ROUTE",
        }
    }

    /// Sorts rows: the chosen column (largest first; names A-Z), then by count, then by name, so
    /// the order is stable between refreshes. The overflow row is always last.
    pub fn sort(self, rows: &mut [RowView]) {
        rows.sort_by(|a, b| {
            let by = match self {
                SortBy::Count => b.count.cmp(&a.count),
                SortBy::Rate => b.rate.total_cmp(&a.rate),
                SortBy::Errors => b.error_percent().total_cmp(&a.error_percent()),
                SortBy::P50 => b.p50.total_cmp(&a.p50),
                SortBy::P95 => b.p95.total_cmp(&a.p95),
                SortBy::P99 => b.p99.total_cmp(&a.p99),
                SortBy::Name => std::cmp::Ordering::Equal,
            };
            a.overflow
                .cmp(&b.overflow)
                .then(by)
                .then(b.count.cmp(&a.count).then_with(|| {
                    (&a.service, &a.route, &a.method).cmp(&(&b.service, &b.route, &b.method))
                }))
                .then(a.id.cmp(&b.id))
        });
        if self == SortBy::Name {
            rows.sort_by(|a, b| {
                a.overflow
                    .cmp(&b.overflow)
                    .then_with(|| (&a.route, &a.service).cmp(&(&b.route, &b.service)))
                    .then(a.id.cmp(&b.id))
            });
        }
    }
}

/// Edges by count, largest first.
pub fn sort_edges(edges: &mut [EdgeView]) {
    edges.sort_by(|a, b| {
        a.overflow
            .cmp(&b.overflow)
            .then(b.count.cmp(&a.count))
            .then_with(|| (&a.client, &a.server).cmp(&(&b.client, &b.server)))
    });
}

/// A duration in at most 7 characters: `850µs`, `12.3ms`, `1.25s`.
pub fn duration(ms: f64) -> String {
    if ms <= 0.0 {
        "-".to_string()
    } else if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 100.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

pub fn kind(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    }
}

/// The status line: the agent's own losses (as /metrics counts them) and what the view's bounds
/// kept out (spans in the overflow row, unpaired or overflowing edges, traces not kept for
/// drill-in). Fits 80 columns with counts of a few digits.
pub fn status_line(snapshot: &TopSnapshot, drops: &AgentDrops) -> String {
    let s = &snapshot.stats;
    let decode = if drops.decode_errors > 0 {
        format!(" decode {}", drops.decode_errors)
    } else {
        String::new()
    };
    format!(
        "{} {} spans | lost: kernel {} export {}{decode} | past bounds: rows {} edges {} traces {}",
        if drops.phase.is_empty() {
            "starting"
        } else {
            drops.phase
        },
        s.spans,
        drops.kernel_lost,
        drops.export_dropped,
        s.overflow_spans,
        s.edges.overflow_requests + s.edges.unpaired_dropped,
        s.traces.spans_not_kept,
    )
}

/// Lays out cells in columns two spaces apart (left-aligned), one line per row.
fn columns(out: &mut String, lines: &[Vec<String>]) {
    let n = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in lines {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            if c + 1 == line.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
}

/// Text without spaces or control characters, so each cell of the plain table is one word.
fn word(text: &str) -> String {
    let w: String = text
        .chars()
        .map(|c| if c.is_control() || c == ' ' { '_' } else { c })
        .collect();
    if w.is_empty() { "-".to_string() } else { w }
}

/// The plain table (stdout not a terminal): the status line, the rows sorted by `sort`, then
/// the service edges. Every cell is one whitespace-free word, so scripts can split lines.
pub fn plain_table(
    snapshot: &TopSnapshot,
    drops: &AgentDrops,
    sort: SortBy,
    elapsed_s: u64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tracer top +{elapsed_s}s {}",
        status_line(snapshot, drops)
    );
    let mut rows = snapshot.rows.clone();
    sort.sort(&mut rows);
    let mut lines = vec![
        [
            "SERVICE", "KIND", "METHOD", "ROUTE", "COUNT", "RATE/s", "ERR%", "P50", "P95", "P99",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &rows {
        lines.push(vec![
            word(&r.service),
            kind(r.kind).to_string(),
            word(&r.method),
            word(&r.route),
            r.count.to_string(),
            format!("{:.1}", r.rate),
            format!("{:.1}", r.error_percent()),
            duration(r.p50),
            duration(r.p95),
            duration(r.p99),
        ]);
    }
    columns(&mut out, &lines);
    let mut edges = snapshot.edges.clone();
    sort_edges(&mut edges);
    let mut lines = vec![
        ["EDGE", "CLIENT", "SERVER", "COUNT", "ERRORS", "P50", "P99"]
            .map(String::from)
            .to_vec(),
    ];
    for e in &edges {
        lines.push(vec![
            "edge".to_string(),
            word(&e.client),
            if e.virtual_server {
                format!("{}(address)", word(&e.server))
            } else {
                word(&e.server)
            },
            e.count.to_string(),
            e.errors.to_string(),
            duration(e.p50),
            duration(e.p99),
        ]);
    }
    columns(&mut out, &lines);
    let _ = writeln!(
        out,
        "(rate over the last {RATE_WINDOW_SECONDS} s; percentiles since start, DDSketch 1 % relative error)"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: usize, route: &str, count: u64, errors: u64, p99: f64) -> RowView {
        RowView {
            id,
            service: "svc".into(),
            kind: SpanKind::Server,
            method: "GET".into(),
            route: route.into(),
            overflow: false,
            count,
            errors,
            rate: count as f64 / 10.0,
            p50: p99 / 2.0,
            p95: p99,
            p99,
        }
    }

    #[test]
    fn sorting_by_each_column_orders_rows_and_keeps_overflow_last() {
        let mut overflow = row(9, "(other)", 1000, 0, 1.0);
        overflow.overflow = true;
        let mut rows = vec![row(0, "/a", 10, 0, 5.0), row(1, "/b", 4, 3, 50.0), overflow];
        SortBy::Count.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [0, 1, 9]);
        SortBy::Errors.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 0, 9]);
        SortBy::P99.sort(&mut rows);
        assert_eq!(rows[0].id, 1);
        SortBy::Name.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [0, 1, 9]);
        assert_eq!(SortBy::Name.next(), SortBy::Count);
    }

    #[test]
    fn the_plain_table_has_one_word_per_cell() {
        let snapshot = TopSnapshot {
            rows: vec![row(0, "/a b", 10, 5, 1500.0)],
            ..Default::default()
        };
        let table = plain_table(&snapshot, &AgentDrops::default(), SortBy::Count, 3);
        let line = table
            .lines()
            .find(|l| l.starts_with("svc"))
            .expect("the row");
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "svc", "SERVER", "GET", "/a_b", "10", "1.0", "50.0", "750ms", "1.50s", "1.50s"
            ]
        );
        assert_eq!(duration(0.25), "250µs");
        assert_eq!(duration(12.34), "12.3ms");
    }
}
