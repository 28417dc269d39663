//! `tracer top`: a live view of what the agent aggregates, fed by the same hand-over as the RED
//! metrics (one call per batch, [`Top::record_batch`]). It lives under `export/` because it is
//! another consumer of finished spans beside the OTLP, terminal and JSON sinks, and its drill-in
//! reuses the terminal's trace trees ([`crate::export::render_trace`]); `telemetry/` keeps the
//! exported metrics.
//!
//! One row per (service, span kind, method, route-or-template) with count, errors, a rate over a
//! sliding window of [`RATE_WINDOW_SECONDS`] and p50/p95/p99 from a DDSketch ([`sketch`], 1 %
//! relative accuracy, since the view started). Route-or-template: `http.route` when known,
//! otherwise [`template`]'s bounded heuristic; gRPC rows by `rpc.method`. Rows are bounded
//! ([`TopLimits::rows`]): spans of further keys go to one overflow row and are counted. No
//! allocation per span in steady state: a row is found by a hash of borrowed values and compared
//! in place; memory is taken when a row is created, when a trace is kept for drill-in (at most
//! [`traces::TraceLimits::admit_per_second`] a second) and when a row's slowest spans change.

pub mod edges;
pub mod sketch;
pub mod template;
pub mod traces;
pub mod tui;
pub mod view;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crate::model::{AttrValue, ExportItem, SpanKind, SpanStatus, Text};
use crate::telemetry::semconv;
use edges::{EdgeStats, EdgeTable};
use sketch::LatencySketch;
use traces::{TraceLimits, TraceStats, TraceStore};

/// The sliding window of the rate column.
pub const RATE_WINDOW_SECONDS: u64 = 10;
/// Recent kept traces remembered per row.
pub const RECENT_TRACES: usize = 3;
/// Slowest spans remembered per row.
pub const SLOWEST_SPANS: usize = 3;
/// What the overflow row shows in its text columns.
pub const OVERFLOW_LABEL: &str = "(other)";

/// Bounds of the aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopLimits {
    /// Rows (the overflow row not included).
    pub rows: usize,
    /// Service edges (the overflow edge not included).
    pub edges: usize,
    pub traces: TraceLimits,
}

impl Default for TopLimits {
    fn default() -> Self {
        TopLimits {
            rows: 500,
            edges: 200,
            traces: TraceLimits::default(),
        }
    }
}

/// Per-second counts over the rate window (a ring indexed by Unix second).
#[derive(Clone, Debug, Default)]
struct RateWindow {
    seconds: [u64; RATE_WINDOW_SECONDS as usize],
    counts: [u32; RATE_WINDOW_SECONDS as usize],
}

impl RateWindow {
    fn add(&mut self, second: u64) {
        let slot = (second % RATE_WINDOW_SECONDS) as usize;
        if self.seconds[slot] != second {
            self.seconds[slot] = second;
            self.counts[slot] = 0;
        }
        self.counts[slot] = self.counts[slot].saturating_add(1);
    }

    /// Requests per second over the window ending at `now_second` (inclusive).
    fn rate(&self, now_second: u64) -> f64 {
        let from = now_second.saturating_sub(RATE_WINDOW_SECONDS - 1);
        let n: u64 = self
            .seconds
            .iter()
            .zip(self.counts)
            .filter(|(s, _)| (from..=now_second).contains(*s))
            .map(|(_, c)| u64::from(c))
            .sum();
        n as f64 / RATE_WINDOW_SECONDS as f64
    }
}

/// A span remembered as one of a row's slowest.
#[derive(Clone, Debug)]
struct Slow {
    duration_ns: u64,
    item: ExportItem,
}

#[derive(Clone, Debug)]
struct Row {
    service: String,
    kind: SpanKind,
    method: String,
    route: String,
    overflow: bool,
    count: u64,
    errors: u64,
    sketch: LatencySketch,
    window: RateWindow,
    /// Trace ids of the row's most recent kept traces (ring, newest at `recent_at - 1`).
    recent: [Option<[u8; 16]>; RECENT_TRACES],
    recent_at: usize,
    /// Slowest first.
    slowest: Vec<Slow>,
    next: Option<u32>,
}

impl Row {
    fn new(service: &str, kind: SpanKind, method: &str, route: &str, overflow: bool) -> Row {
        Row {
            service: service.to_owned(),
            kind,
            method: method.to_owned(),
            route: route.to_owned(),
            overflow,
            count: 0,
            errors: 0,
            sketch: LatencySketch::default(),
            window: RateWindow::default(),
            recent: [None; RECENT_TRACES],
            recent_at: 0,
            slowest: Vec::new(),
            next: None,
        }
    }

    fn record(&mut self, item: &ExportItem, second: u64, kept: bool) {
        let span = &item.span;
        let ns = span.end_unix_ns.saturating_sub(span.start_unix_ns);
        self.count += 1;
        self.errors += u64::from(matches!(span.status, SpanStatus::Error { .. }));
        self.sketch.record_ns(ns);
        self.window.add(second);
        if kept
            && self.recent[(self.recent_at + RECENT_TRACES - 1) % RECENT_TRACES]
                != Some(span.trace_id)
        {
            self.recent[self.recent_at] = Some(span.trace_id);
            self.recent_at = (self.recent_at + 1) % RECENT_TRACES;
        }
        if self.slowest.len() < SLOWEST_SPANS
            || self.slowest.last().is_some_and(|s| ns > s.duration_ns)
        {
            if self.slowest.len() == SLOWEST_SPANS {
                self.slowest.pop();
            }
            let at = self.slowest.partition_point(|s| s.duration_ns >= ns);
            self.slowest.insert(
                at,
                Slow {
                    duration_ns: ns,
                    item: item.clone(),
                },
            );
        }
    }
}

/// Counters of the view itself (shown in the status line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopStats {
    /// Spans aggregated.
    pub spans: u64,
    /// Of those, spans counted in the overflow row because the row bound was reached.
    pub overflow_spans: u64,
    pub traces: TraceStats,
    pub edges: EdgeStats,
}

#[derive(Debug, Default)]
struct State {
    rows: Vec<Row>,
    index: HashMap<u64, u32>,
    overflow: Option<u32>,
    edges: EdgeTable,
    traces: TraceStore,
    /// The route of the span being recorded (reused).
    scratch: String,
    stats: TopStats,
}

/// The aggregation: written by the agent's event thread, read by the view.
#[derive(Debug)]
pub struct Top {
    state: Mutex<State>,
    limits: TopLimits,
}

/// One row as the view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RowView {
    /// Stable while the view runs (rows are never removed): the key of [`Top::drill_in`].
    pub id: usize,
    pub service: String,
    pub kind: SpanKind,
    pub method: String,
    pub route: String,
    pub overflow: bool,
    pub count: u64,
    pub errors: u64,
    /// Requests per second over the last [`RATE_WINDOW_SECONDS`].
    pub rate: f64,
    /// Milliseconds.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl RowView {
    pub fn error_percent(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            100.0 * self.errors as f64 / self.count as f64
        }
    }
}

/// One edge as the view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeView {
    pub client: String,
    pub server: String,
    pub virtual_server: bool,
    pub overflow: bool,
    pub count: u64,
    pub errors: u64,
    pub p50: f64,
    pub p99: f64,
}

/// Everything the view draws at one refresh.
#[derive(Clone, Debug, Default)]
pub struct TopSnapshot {
    pub rows: Vec<RowView>,
    pub edges: Vec<EdgeView>,
    pub stats: TopStats,
}

/// The trace trees of one row.
#[derive(Clone, Debug, Default)]
pub struct DrillIn {
    /// Newest first; each the spans of one kept trace.
    pub recent: Vec<Vec<ExportItem>>,
    /// Slowest first: the duration (ns) and the trace's kept spans (or the slow span alone when
    /// its trace was not kept or has been evicted).
    pub slowest: Vec<(u64, Vec<ExportItem>)>,
}

fn attr<'a>(item: &'a ExportItem, key: &str) -> Option<&'a AttrValue> {
    item.span
        .attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| &a.value)
}

fn str_attr<'a>(item: &'a ExportItem, key: &str) -> Option<&'a Text> {
    match attr(item, key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

/// The row key's method and route of a span (the route written into `route`).
fn method_and_route<'a>(item: &'a ExportItem, route: &mut String) -> &'a str {
    if let Some(method) = str_attr(item, semconv::RPC_METHOD) {
        route.clear();
        route.extend(
            method
                .chars()
                .take(template::MAX_TEMPLATE_CHARS)
                .map(|c| if c.is_control() { '?' } else { c }),
        );
        return match str_attr(item, semconv::RPC_SYSTEM_NAME) {
            Some(system) if system.as_str() == "grpc" => "gRPC",
            _ => "RPC",
        };
    }
    if let Some(known) = str_attr(item, semconv::HTTP_ROUTE) {
        route.clear();
        route.extend(
            known
                .chars()
                .take(template::MAX_TEMPLATE_CHARS)
                .map(|c| if c.is_control() { '?' } else { c }),
        );
    } else {
        let path = str_attr(item, semconv::URL_PATH).or_else(|| str_attr(item, semconv::URL_FULL));
        template::template_into(path.map_or("", |p| p.as_str()), route);
    }
    match str_attr(item, semconv::HTTP_REQUEST_METHOD) {
        Some(m) => m.as_str(),
        None => "HTTP",
    }
}

fn row_hash(service: &str, kind: SpanKind, method: &str, route: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    service.hash(&mut h);
    kind.hash(&mut h);
    method.hash(&mut h);
    route.hash(&mut h);
    h.finish()
}

fn unix_second(ns: u64) -> u64 {
    ns / 1_000_000_000
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Top {
    pub fn new(limits: TopLimits) -> Arc<Top> {
        Arc::new(Top {
            state: Mutex::new(State {
                edges: EdgeTable::new(limits.edges),
                traces: TraceStore::new(limits.traces),
                ..Default::default()
            }),
            limits,
        })
    }

    /// Aggregates a batch of spans (one lock).
    pub fn record_batch(&self, items: &[ExportItem]) {
        self.record_batch_at(items, now_unix_ns());
    }

    fn record_batch_at(&self, items: &[ExportItem], now_ns: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now_second = unix_second(now_ns);
        for item in items {
            self.record_locked(&mut state, item, now_second);
        }
        state.edges.sweep(now_second);
    }

    fn record_locked(&self, state: &mut State, item: &ExportItem, now_second: u64) {
        let State {
            rows,
            index,
            overflow,
            edges,
            traces,
            scratch,
            stats,
        } = state;
        let method = method_and_route(item, scratch);
        let service = item.resource.service_name.as_str();
        let kind = item.span.kind;
        let hash = row_hash(service, kind, method, scratch);
        let mut at = index.get(&hash).copied();
        let mut found = None;
        while let Some(i) = at {
            let r = &rows[i as usize];
            if r.kind == kind && r.service == service && r.method == method && r.route == *scratch {
                found = Some(i as usize);
                break;
            }
            at = r.next;
        }
        let row = match found {
            Some(i) => i,
            // The overflow row is made only once `limits.rows` rows exist, so this bounds both.
            None if rows.len() < self.limits.rows => {
                let mut row = Row::new(service, kind, method, scratch, false);
                row.next = index.insert(hash, rows.len() as u32);
                rows.push(row);
                rows.len() - 1
            }
            None => {
                stats.overflow_spans += 1;
                match overflow {
                    Some(i) => *i as usize,
                    None => {
                        rows.push(Row::new(
                            OVERFLOW_LABEL,
                            kind,
                            OVERFLOW_LABEL,
                            OVERFLOW_LABEL,
                            true,
                        ));
                        *overflow = Some(rows.len() as u32 - 1);
                        rows.len() - 1
                    }
                }
            }
        };
        stats.spans += 1;
        let kept = traces.offer(item, now_second);
        rows[row].record(item, unix_second(item.span.end_unix_ns), kept);
        edges.record(item, now_second);
    }

    /// What the view draws now.
    pub fn snapshot(&self) -> TopSnapshot {
        self.snapshot_at(now_unix_ns())
    }

    fn snapshot_at(&self, now_ns: u64) -> TopSnapshot {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now_second = unix_second(now_ns);
        state.edges.sweep(now_second);
        let q = |s: &LatencySketch, q: f64| s.quantile_ms(q).unwrap_or(0.0);
        TopSnapshot {
            rows: state
                .rows
                .iter()
                .enumerate()
                .map(|(id, r)| RowView {
                    id,
                    service: r.service.clone(),
                    kind: r.kind,
                    method: r.method.clone(),
                    route: r.route.clone(),
                    overflow: r.overflow,
                    count: r.count,
                    errors: r.errors,
                    rate: r.window.rate(now_second),
                    p50: q(&r.sketch, 0.5),
                    p95: q(&r.sketch, 0.95),
                    p99: q(&r.sketch, 0.99),
                })
                .collect(),
            edges: state
                .edges
                .edges
                .iter()
                .map(|e| EdgeView {
                    client: e.client.clone(),
                    server: e.server.clone(),
                    virtual_server: e.virtual_server,
                    overflow: e.overflow,
                    count: e.count,
                    errors: e.errors,
                    p50: q(&e.sketch, 0.5),
                    p99: q(&e.sketch, 0.99),
                })
                .collect(),
            stats: TopStats {
                traces: state.traces.stats,
                edges: state.edges.stats,
                ..state.stats
            },
        }
    }

    /// At exit, when no more spans come: spans still waiting for their other half are counted
    /// (see [`EdgeTable::finish`]).
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.edges.finish();
    }

    /// The kept trace trees of row `id`.
    pub fn drill_in(&self, id: usize) -> DrillIn {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(row) = state.rows.get(id) else {
            return DrillIn::default();
        };
        let recent = (1..=RECENT_TRACES)
            .filter_map(|back| row.recent[(row.recent_at + RECENT_TRACES - back) % RECENT_TRACES])
            .filter_map(|trace| state.traces.get(&trace).map(<[ExportItem]>::to_vec))
            .collect();
        let slowest = row
            .slowest
            .iter()
            .map(|s| {
                let spans = match state.traces.get(&s.item.span.trace_id) {
                    Some(spans) if spans.iter().any(|x| x.span.span_id == s.item.span.span_id) => {
                        spans.to_vec()
                    }
                    _ => vec![s.item.clone()],
                };
                (s.duration_ns, spans)
            })
            .collect();
        DrillIn { recent, slowest }
    }
}

#[cfg(test)]
mod tests;
