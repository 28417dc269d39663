//! Service graph metrics: request count, failed count and client/server duration histograms per
//! (client service, server service) edge, named and labelled as Grafana Tempo's service graph
//! processor names them (`traces_service_graph_request_total`,
//! `traces_service_graph_request_failed_total`, `traces_service_graph_request_server_seconds`,
//! `traces_service_graph_request_client_seconds`; labels `client`, `server` and
//! `connection_type`; buckets 0.1 s doubling to 12.8 s, Tempo's `histogram_buckets` default), so
//! Grafana's service graph reads them unchanged.
//!
//! Fed by the event thread's hand-over with every finished span (through [`RedMetrics`], so
//! `--no-metrics` turns it off too). Each request is counted exactly ONCE:
//! - A CLIENT span waits under its own span id; a SERVER span waits under the span id of the
//!   CLIENT request it was paired with (its parent when it was linked by connection pair, or the
//!   pair the linker noted when a trace header won the parent, see [`ServiceGraph::note_pair`]).
//!   When both halves meet, the edge (client's service -> server's service) is counted once with
//!   both durations; it failed when either span has status Error.
//! - A SERVER span with neither a parent nor a noted pair has no traced client here (the linker
//!   pairs a server request with its same-host client the moment its head is parsed): it is
//!   counted at once, from a virtual client node named by the peer's `client.address`
//!   (`user` when unknown, Tempo's name).
//! - A half that finds no partner within [`GraphLimits::wait`] is counted alone: a CLIENT span
//!   towards a virtual server node named `server.address:server.port` (the peer address when the
//!   request named no host), a SERVER span from a virtual client node as above. Both carry
//!   `connection_type="virtual_node"`; only the measured side's histogram gets a point.
//!
//! Bounded: at most [`GraphLimits::max_pending`] halves wait (when full, the oldest is counted
//! alone early, [`GraphStats::pending_overflow`]) and at most [`GraphLimits::max_edges`] edges
//! exist (later edges' requests go to one overflow edge labelled `otel_metric_overflow="true"`,
//! [`GraphStats::overflow_requests`]).

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::model::{AttrValue, ExportItem, ProcessResource, SpanKind, SpanRecord, SpanStatus};
use crate::telemetry::metrics::exposition::{
    self, DescriptorEncoder, Exposed, GaugeValue, HistogramSeries, LabelText, Labels,
};
use crate::telemetry::red::Exemplar;

/// Tempo's default `histogram_buckets` for the service graph histograms (seconds).
pub const BOUNDARIES: [f64; 8] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8];
/// One bucket per boundary plus the one above the last.
pub const BUCKETS: usize = BOUNDARIES.len() + 1;

/// How long a half waits for its partner by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// Halves waiting at once by default (Tempo's `max_items`).
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// Edges held by default (the RED series limit's default).
pub const DEFAULT_MAX_EDGES: usize = 2_000;
/// Pairs noted by the linker and not yet claimed by their SERVER span.
const MAX_NOTES: usize = 4_096;

/// The client node of a SERVER span whose client is unknown (Tempo's name).
pub const UNKNOWN_CLIENT: &str = "user";
/// The server node of a CLIENT span whose server address is unknown.
pub const UNKNOWN_SERVER: &str = "unknown";
/// `connection_type` of an edge with a virtual node.
pub const VIRTUAL_NODE: &str = "virtual_node";

/// The metric names.
pub const REQUEST_TOTAL: &str = "traces_service_graph_request_total";
pub const REQUEST_FAILED_TOTAL: &str = "traces_service_graph_request_failed_total";
pub const REQUEST_SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
pub const REQUEST_CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";

/// Bounds of the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphLimits {
    pub wait: Duration,
    pub max_pending: usize,
    pub max_edges: usize,
}

impl Default for GraphLimits {
    fn default() -> Self {
        GraphLimits {
            wait: DEFAULT_WAIT,
            max_pending: DEFAULT_MAX_PENDING,
            max_edges: DEFAULT_MAX_EDGES,
        }
    }
}

/// Counters of the graph (monotonic unless noted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Requests counted with both ends traced here.
    pub paired: u64,
    /// Requests counted from the CLIENT span alone (virtual server node).
    pub client_only: u64,
    /// Requests counted from the SERVER span alone (virtual client node).
    pub server_only: u64,
    /// Halves counted alone before their wait ended because the pending table was full.
    pub pending_overflow: u64,
    /// Requests counted on the overflow edge because the edge limit was reached.
    pub overflow_requests: u64,
    /// Linker pairs dropped unclaimed because their table was full.
    pub notes_dropped: u64,
    /// Gauge: halves waiting now.
    pub pending: u64,
    /// Gauge: edges held now (the overflow edge included).
    pub edges: u64,
}

/// A duration histogram of one edge.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub count: u64,
    /// Seconds.
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub bucket_counts: [u64; BUCKETS],
    pub recent: Option<Exemplar>,
}

impl Histogram {
    fn empty() -> Self {
        Histogram {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            bucket_counts: [0; BUCKETS],
            recent: None,
        }
    }

    fn record(&mut self, exemplar: Exemplar) {
        let seconds = exemplar.value;
        self.count += 1;
        self.sum += seconds;
        self.min = self.min.min(seconds);
        self.max = self.max.max(seconds);
        self.bucket_counts[bucket_of(seconds)] += 1;
        self.recent = Some(exemplar);
    }
}

/// The bucket of a value (seconds): the first whose upper boundary is `>=` it.
pub fn bucket_of(seconds: f64) -> usize {
    BOUNDARIES
        .iter()
        .position(|b| seconds <= *b)
        .unwrap_or(BOUNDARIES.len())
}

/// What one edge counted over an interval.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgePoint {
    pub requests: u64,
    pub failed: u64,
    pub server: Histogram,
    pub client: Histogram,
    /// Start of the interval (Unix ns).
    pub start_unix_ns: u64,
}

impl EdgePoint {
    fn empty(start_unix_ns: u64) -> Self {
        EdgePoint {
            requests: 0,
            failed: 0,
            server: Histogram::empty(),
            client: Histogram::empty(),
            start_unix_ns,
        }
    }
}

/// One (client, server) edge.
#[derive(Clone, Debug)]
pub struct Edge {
    pub client: String,
    pub server: String,
    /// One of the nodes is virtual (`connection_type="virtual_node"`).
    pub virtual_node: bool,
    /// The overflow edge (no client/server labels).
    pub overflow: bool,
    pub total: EdgePoint,
    pub delta: EdgePoint,
    next: Option<u32>,
}

impl Edge {
    /// Its labels as (key, value), in Tempo's order; the overflow edge has only
    /// `otel.metric.overflow`.
    pub fn labels(&self) -> Vec<(&'static str, &str)> {
        if self.overflow {
            return vec![(crate::telemetry::red::OVERFLOW_ATTRIBUTE, "true")];
        }
        let mut out = vec![
            ("client", self.client.as_str()),
            ("server", self.server.as_str()),
        ];
        if self.virtual_node {
            out.push(("connection_type", VIRTUAL_NODE));
        }
        out
    }
}

/// A span waiting for its other end.
#[derive(Clone, Debug)]
struct Half {
    kind: SpanKind,
    resource: Arc<ProcessResource>,
    /// The peer's node name if it turns out virtual: (address, port).
    peer: (Option<AttrValue>, Option<i64>),
    failed: bool,
    exemplar: Exemplar,
    seq: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Client span id -> the half waiting under it (CLIENT: its own id; SERVER: its client's).
    /// A SERVER span's parent id may come from a peer's header: the maps keyed by span ids use a
    /// per-table seeded foldhash (as `seed` below), not SipHash (a hash per span was ~0.5 % of the
    /// agent) nor an unkeyed one.
    pending: HashMap<[u8; 8], Half, foldhash::fast::RandomState>,
    /// (due, key, seq) in arrival order; entries whose half is gone or newer are skipped.
    order: VecDeque<(Instant, [u8; 8], u64)>,
    seq: u64,
    /// SERVER span id -> the CLIENT span id the linker paired it with (when a header won).
    notes: HashMap<[u8; 8], [u8; 8], foldhash::fast::RandomState>,
    notes_order: VecDeque<[u8; 8]>,
    edges: Vec<Edge>,
    /// Edge hash -> first edge with it (the key is a seeded hash already).
    index: crate::idhash::IdHashMap<u64, u32>,
    /// Seed of the edge hashes (foldhash, seeded per graph: several times faster than SipHash;
    /// a collision only lengthens a chain the edge limit bounds).
    seed: foldhash::fast::RandomState,
    overflow: Option<u32>,
    /// The edge the last request was counted on (never the overflow edge).
    last_edge: Option<u32>,
    /// Reused to format virtual node names.
    scratch: String,
}

/// The service graph aggregation, shared by the event thread (writer), the OTLP metrics
/// exporter and the Prometheus page (readers).
#[derive(Debug)]
pub struct ServiceGraph {
    state: Mutex<State>,
    limits: GraphLimits,
    paired: AtomicU64,
    client_only: AtomicU64,
    server_only: AtomicU64,
    pending_overflow: AtomicU64,
    overflow_requests: AtomicU64,
    notes_dropped: AtomicU64,
    /// Halves pending, so an idle hand-over takes no lock.
    pending: AtomicU64,
}

fn unix_ns_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a AttrValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| &a.value)
}

fn int_attr(span: &SpanRecord, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(AttrValue::Int(i)) => Some(*i),
        _ => None,
    }
}

fn edge_hash(
    seed: &foldhash::fast::RandomState,
    client: &str,
    server: &str,
    virtual_node: bool,
) -> u64 {
    let mut h = std::hash::BuildHasher::build_hasher(seed);
    client.hash(&mut h);
    server.hash(&mut h);
    virtual_node.hash(&mut h);
    h.finish()
}

fn value_str(v: &AttrValue, out: &mut String) {
    use std::fmt::Write as _;
    match v {
        AttrValue::Str(s) => out.push_str(s),
        AttrValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
        AttrValue::Bool(b) => {
            let _ = write!(out, "{b}");
        }
    }
}

/// One request to count.
struct Count<'a> {
    client: &'a str,
    server: &'a str,
    virtual_node: bool,
    failed: bool,
    client_seconds: Option<Exemplar>,
    server_seconds: Option<Exemplar>,
}

impl ServiceGraph {
    pub fn new(limits: GraphLimits) -> Arc<Self> {
        Arc::new(ServiceGraph {
            state: Mutex::new(State::default()),
            limits,
            paired: AtomicU64::new(0),
            client_only: AtomicU64::new(0),
            server_only: AtomicU64::new(0),
            pending_overflow: AtomicU64::new(0),
            overflow_requests: AtomicU64::new(0),
            notes_dropped: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> GraphLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn stats(&self) -> GraphStats {
        let state = self.lock();
        GraphStats {
            paired: self.paired.load(Ordering::Relaxed),
            client_only: self.client_only.load(Ordering::Relaxed),
            server_only: self.server_only.load(Ordering::Relaxed),
            pending_overflow: self.pending_overflow.load(Ordering::Relaxed),
            overflow_requests: self.overflow_requests.load(Ordering::Relaxed),
            notes_dropped: self.notes_dropped.load(Ordering::Relaxed),
            pending: state.pending.len() as u64,
            edges: state.edges.len() as u64,
        }
    }

    /// The linker paired SERVER request `server_span` with the CLIENT request `client_span` on
    /// this host, but the server's parent came from a trace header (so the span does not name
    /// its client): remembered until the SERVER span is handed over. Called on the event thread
    /// before that span reaches [`Self::record_batch`].
    pub fn note_pair(&self, server_span: [u8; 8], client_span: [u8; 8]) {
        let mut state = self.lock();
        while state.notes.len() >= MAX_NOTES {
            let Some(old) = state.notes_order.pop_front() else {
                break;
            };
            if state.notes.remove(&old).is_some() {
                self.notes_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if state.notes.insert(server_span, client_span).is_none() {
            state.notes_order.push_back(server_span);
        }
    }

    /// Takes a batch of finished spans, then counts the halves whose wait ended by `now`.
    pub fn record_batch(&self, items: &[ExportItem], now: Instant) {
        if items.is_empty() && self.pending.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut state = self.lock();
        for item in items {
            self.record_locked(&mut state, item, now);
        }
        self.expire_locked(&mut state, now);
        self.pending
            .store(state.pending.len() as u64, Ordering::Relaxed);
    }

    fn record_locked(&self, state: &mut State, item: &ExportItem, now: Instant) {
        let span = &item.span;
        let seconds = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
        let exemplar = Exemplar {
            trace_id: span.trace_id,
            span_id: span.span_id,
            value: seconds,
            time_unix_ns: span.end_unix_ns,
        };
        let failed = matches!(span.status, SpanStatus::Error { .. });
        let (key, peer) = match span.kind {
            SpanKind::Client => {
                let address = attr(span, "server.address")
                    .or_else(|| attr(span, "network.peer.address"))
                    .cloned();
                let port =
                    int_attr(span, "server.port").or_else(|| int_attr(span, "network.peer.port"));
                (Some(span.span_id), (address, port))
            }
            SpanKind::Server => {
                let noted = if state.notes.is_empty() {
                    None
                } else {
                    state.notes.remove(&span.span_id)
                };
                let address = attr(span, "client.address")
                    .or_else(|| attr(span, "network.peer.address"))
                    .cloned();
                (noted.or(span.parent_span_id), (address, None))
            }
        };
        let half = Half {
            kind: span.kind,
            resource: Arc::clone(&item.resource),
            peer,
            failed,
            exemplar,
            seq: 0,
        };
        let Some(key) = key else {
            // A SERVER span with no parent and no pair: no traced client here.
            self.count_alone(state, &half);
            return;
        };
        match state.pending.remove(&key) {
            Some(other) if other.kind != half.kind => {
                let (client, server) = match half.kind {
                    SpanKind::Client => (&half, &other),
                    SpanKind::Server => (&other, &half),
                };
                self.paired.fetch_add(1, Ordering::Relaxed);
                self.count(
                    state,
                    &Count {
                        client: &client.resource.service_name,
                        server: &server.resource.service_name,
                        virtual_node: false,
                        failed: client.failed || server.failed,
                        client_seconds: Some(client.exemplar),
                        server_seconds: Some(server.exemplar),
                    },
                );
            }
            other => {
                // Two halves of one kind under one id (a trace header reused by several
                // requests): the older one has no partner coming.
                if let Some(older) = other {
                    self.count_alone(state, &older);
                }
                while state.pending.len() >= self.limits.max_pending.max(1) {
                    let Some((_, old_key, seq)) = state.order.pop_front() else {
                        break;
                    };
                    if state.pending.get(&old_key).is_some_and(|h| h.seq == seq)
                        && let Some(old) = state.pending.remove(&old_key)
                    {
                        self.pending_overflow.fetch_add(1, Ordering::Relaxed);
                        self.count_alone(state, &old);
                    }
                }
                // Entries of halves that met their partner stay in `order` until due: keep them
                // at most as many as the live ones (amortised O(1), no allocation once grown).
                if state.order.len() > 2 * state.pending.len() + 64 {
                    let State { order, pending, .. } = &mut *state;
                    order.retain(|(_, k, seq)| pending.get(k).is_some_and(|h| h.seq == *seq));
                }
                state.seq += 1;
                let seq = state.seq;
                state.order.push_back((now + self.limits.wait, key, seq));
                state.pending.insert(key, Half { seq, ..half });
            }
        }
    }

    fn expire_locked(&self, state: &mut State, now: Instant) {
        while let Some(&(due, key, seq)) = state.order.front() {
            if due > now {
                break;
            }
            state.order.pop_front();
            if state.pending.get(&key).is_some_and(|h| h.seq == seq)
                && let Some(half) = state.pending.remove(&key)
            {
                self.count_alone(state, &half);
            }
        }
        if state.pending.is_empty() {
            state.order.clear();
        }
    }

    /// Counts a half whose other end is not traced here, with a virtual node for that end.
    fn count_alone(&self, state: &mut State, half: &Half) {
        let mut name = std::mem::take(&mut state.scratch);
        name.clear();
        match (&half.peer.0, half.peer.1) {
            (Some(address), port) => {
                value_str(address, &mut name);
                if let Some(port) = port {
                    use std::fmt::Write as _;
                    let _ = write!(name, ":{port}");
                }
            }
            (None, _) => name.push_str(match half.kind {
                SpanKind::Client => UNKNOWN_SERVER,
                SpanKind::Server => UNKNOWN_CLIENT,
            }),
        }
        let own = half.resource.service_name.as_str();
        let count = match half.kind {
            SpanKind::Client => {
                self.client_only.fetch_add(1, Ordering::Relaxed);
                Count {
                    client: own,
                    server: &name,
                    virtual_node: true,
                    failed: half.failed,
                    client_seconds: Some(half.exemplar),
                    server_seconds: None,
                }
            }
            SpanKind::Server => {
                self.server_only.fetch_add(1, Ordering::Relaxed);
                Count {
                    client: &name,
                    server: own,
                    virtual_node: true,
                    failed: half.failed,
                    client_seconds: None,
                    server_seconds: Some(half.exemplar),
                }
            }
        };
        self.count(state, &count);
        state.scratch = name;
    }

    fn count(&self, state: &mut State, c: &Count<'_>) {
        let is_edge = |e: &Edge| {
            !e.overflow
                && e.virtual_node == c.virtual_node
                && e.client == c.client
                && e.server == c.server
        };
        // The edge of the last request is compared in place first: requests of one edge
        // usually come in runs, and then nothing is hashed.
        let last = state
            .last_edge
            .filter(|i| state.edges.get(*i as usize).is_some_and(is_edge));
        let mut found = last.map(|i| i as usize);
        let mut hash = None;
        if found.is_none() {
            let h = edge_hash(&state.seed, c.client, c.server, c.virtual_node);
            hash = Some(h);
            let mut at = state.index.get(&h).copied();
            while let Some(i) = at {
                let e = &state.edges[i as usize];
                if is_edge(e) {
                    found = Some(i as usize);
                    break;
                }
                at = e.next;
            }
        }
        let now_ns = || unix_ns_now();
        let real_edges = state.edges.len() - usize::from(state.overflow.is_some());
        let i = match found {
            Some(i) => i,
            None if real_edges < self.limits.max_edges => {
                let i = state.edges.len();
                let hash = hash
                    .unwrap_or_else(|| edge_hash(&state.seed, c.client, c.server, c.virtual_node));
                let next = state.index.insert(hash, i as u32);
                let start = now_ns();
                state.edges.push(Edge {
                    client: c.client.to_string(),
                    server: c.server.to_string(),
                    virtual_node: c.virtual_node,
                    overflow: false,
                    total: EdgePoint::empty(start),
                    delta: EdgePoint::empty(start),
                    next,
                });
                i
            }
            None => {
                self.overflow_requests.fetch_add(1, Ordering::Relaxed);
                match state.overflow {
                    Some(i) => i as usize,
                    None => {
                        let i = state.edges.len();
                        let start = now_ns();
                        state.edges.push(Edge {
                            client: String::new(),
                            server: String::new(),
                            virtual_node: false,
                            overflow: true,
                            total: EdgePoint::empty(start),
                            delta: EdgePoint::empty(start),
                            next: None,
                        });
                        state.overflow = Some(i as u32);
                        i
                    }
                }
            }
        };
        if state.edges.get(i).is_some_and(|e| !e.overflow) {
            state.last_edge = Some(i as u32);
        }
        let edge = &mut state.edges[i];
        for p in [&mut edge.total, &mut edge.delta] {
            p.requests += 1;
            p.failed += u64::from(c.failed);
            if let Some(e) = c.client_seconds {
                p.client.record(e);
            }
            if let Some(e) = c.server_seconds {
                p.server.record(e);
            }
        }
    }

    /// Calls `f` with every edge (cumulative points), under the lock.
    pub fn with_cumulative<R>(&self, f: impl FnOnce(&[Edge]) -> R) -> R {
        f(&self.lock().edges)
    }

    /// Calls `f` with every edge, then starts a new delta interval at `now_unix_ns`.
    pub fn with_delta<R>(&self, now_unix_ns: u64, f: impl FnOnce(&[Edge]) -> R) -> R {
        let mut state = self.lock();
        let out = f(&state.edges);
        for e in &mut state.edges {
            e.delta = EdgePoint::empty(now_unix_ns);
        }
        out
    }
}

impl Exposed for ServiceGraph {
    /// The graph's own counters, then the four families (cumulative) under Tempo's names.
    fn expose(&self, page: &mut DescriptorEncoder) -> std::fmt::Result {
        let stats = self.stats();
        exposition::counter(
            page,
            "tracer_service_graph_requests_total",
            "Requests counted on the service graph, by how their ends were found (paired: both \
             traced here; client_only/server_only: the other end is a virtual node).",
            [
                (exposition::labels(&[("kind", "paired")]), stats.paired),
                (
                    exposition::labels(&[("kind", "client_only")]),
                    stats.client_only,
                ),
                (
                    exposition::labels(&[("kind", "server_only")]),
                    stats.server_only,
                ),
            ],
        )?;
        let counters = [
            (
                "tracer_service_graph_pending_overflow_total",
                "Spans counted alone (virtual node) before their wait for the other end was over, \
                 because the pending table was full.",
                stats.pending_overflow,
            ),
            (
                "tracer_service_graph_overflow_requests_total",
                "Requests counted on the overflow edge (otel_metric_overflow=\"true\") because the \
                 edge limit was reached.",
                stats.overflow_requests,
            ),
            (
                "tracer_service_graph_pair_notes_dropped_total",
                "Same-host pairs of header-linked requests forgotten before their SERVER span \
                 arrived (table full): both ends may then be counted alone.",
                stats.notes_dropped,
            ),
        ];
        for (name, help, value) in counters {
            exposition::counter(page, name, help, [(Vec::new(), value)])?;
        }
        for (name, help, value) in [
            (
                "tracer_service_graph_pending",
                "Spans waiting for the other end of their request.",
                stats.pending,
            ),
            (
                "tracer_service_graph_edges",
                "Service graph edges held (the overflow edge included).",
                stats.edges,
            ),
        ] {
            exposition::gauge(page, name, help, [(Vec::new(), GaugeValue::Int(value))])?;
        }
        self.with_cumulative(|edges| {
            // Label names as Prometheus spells them (`otel.metric.overflow` has dots).
            let names: Vec<Vec<(String, &str)>> = edges
                .iter()
                .map(|e| {
                    e.labels()
                        .into_iter()
                        .map(|(k, v)| (k.replace('.', "_"), v))
                        .collect()
                })
                .collect();
            let labels = |i: usize| -> Labels<'_> {
                names[i]
                    .iter()
                    .map(|(k, v)| (k.as_str(), LabelText(v)))
                    .collect()
            };
            for (name, help, value) in [
                (
                    REQUEST_TOTAL,
                    "Total count of requests between two nodes.",
                    (|p: &EdgePoint| p.requests) as fn(&EdgePoint) -> u64,
                ),
                (
                    REQUEST_FAILED_TOTAL,
                    "Total count of failed requests between two nodes.",
                    |p: &EdgePoint| p.failed,
                ),
            ] {
                if edges.is_empty() {
                    continue;
                }
                exposition::counter(
                    page,
                    name,
                    help,
                    edges
                        .iter()
                        .enumerate()
                        .map(|(i, e)| (labels(i), value(&e.total))),
                )?;
            }
            for (name, help, histogram) in [
                (
                    REQUEST_SERVER_SECONDS,
                    "Time for a request between two nodes as seen from the server.",
                    (|p: &EdgePoint| &p.server) as fn(&EdgePoint) -> &Histogram,
                ),
                (
                    REQUEST_CLIENT_SECONDS,
                    "Time for a request between two nodes as seen from the client.",
                    |p: &EdgePoint| &p.client,
                ),
            ] {
                exposition::histogram(
                    page,
                    name,
                    help,
                    &BOUNDARIES,
                    edges.iter().enumerate().filter_map(|(i, e)| {
                        let h = histogram(&e.total);
                        (h.count != 0).then(|| HistogramSeries {
                            labels: labels(i),
                            bucket_counts: &h.bucket_counts,
                            sum: h.sum,
                            count: h.count,
                        })
                    }),
                )?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attribute, Text};

    fn resource(pid: u32, name: &str) -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            pid,
            service_name: name.to_string(),
            attributes: vec![],
        })
    }

    fn span(kind: SpanKind, id: u8, parent: Option<u8>, millis: u64) -> SpanRecord {
        let attributes = match kind {
            SpanKind::Client => vec![
                Attribute::str("server.address", "backend.test"),
                Attribute::int("server.port", 8080),
            ],
            SpanKind::Server => vec![
                Attribute::str("client.address", "10.0.0.9"),
                Attribute::int("client.port", 50123),
            ],
        };
        SpanRecord {
            trace_id: [7; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            trace_state: None,
            sampled: true,
            name: Text::Static("GET"),
            kind,
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_000_000_000 + millis * 1_000_000,
            attributes: attributes.into(),
            status: SpanStatus::Unset,
            pid: 1,
        }
    }

    fn item(resource: &Arc<ProcessResource>, span: SpanRecord) -> ExportItem {
        ExportItem {
            span,
            resource: Arc::clone(resource),
        }
    }

    /// (client, server, virtual, requests, failed, client count, server count) of every edge.
    fn edges(graph: &ServiceGraph) -> Vec<(String, String, bool, u64, u64, u64, u64)> {
        graph.with_cumulative(|edges| {
            edges
                .iter()
                .map(|e| {
                    (
                        e.client.clone(),
                        e.server.clone(),
                        e.virtual_node,
                        e.total.requests,
                        e.total.failed,
                        e.total.client.count,
                        e.total.server.count,
                    )
                })
                .collect()
        })
    }

    fn edge(
        c: &str,
        s: &str,
        v: bool,
        n: u64,
        failed: u64,
        client: u64,
        server: u64,
    ) -> (String, String, bool, u64, u64, u64, u64) {
        (c.into(), s.into(), v, n, failed, client, server)
    }

    #[test]
    fn both_ends_traced_count_once_whichever_arrives_first() {
        let graph = ServiceGraph::new(GraphLimits::default());
        let hub = resource(1, "hub");
        let backend = resource(2, "backend");
        let t0 = Instant::now();
        // Server first (the usual order: it finishes writing before the client reads).
        graph.record_batch(
            &[item(&backend, span(SpanKind::Server, 2, Some(1), 30))],
            t0,
        );
        assert_eq!(graph.stats().pending, 1);
        graph.record_batch(&[item(&hub, span(SpanKind::Client, 1, Some(9), 40))], t0);
        // Client first, both in one batch.
        let mut failed = span(SpanKind::Server, 4, Some(3), 30);
        failed.status = SpanStatus::Error {
            description: String::new(),
        };
        graph.record_batch(
            &[
                item(&hub, span(SpanKind::Client, 3, Some(9), 40)),
                item(&backend, failed),
            ],
            t0,
        );
        // Long after the wait: nothing is counted again.
        graph.record_batch(&[], t0 + Duration::from_secs(60));
        assert_eq!(edges(&graph), [edge("hub", "backend", false, 2, 1, 2, 2)]);
        let stats = graph.stats();
        assert_eq!(
            (stats.paired, stats.client_only, stats.server_only),
            (2, 0, 0)
        );
        assert_eq!(stats.pending, 0);
        graph.with_cumulative(|e| {
            assert_eq!(e[0].total.server.bucket_counts[0], 2);
            assert!((e[0].total.client.sum - 0.08).abs() < 1e-9);
        });
    }

    #[test]
    fn one_end_traced_counts_once_with_a_virtual_node() {
        let graph = ServiceGraph::new(GraphLimits::default());
        let hub = resource(1, "hub");
        let t0 = Instant::now();
        // A root SERVER span: no traced client, counted at once.
        graph.record_batch(&[item(&hub, span(SpanKind::Server, 1, None, 5))], t0);
        assert_eq!(graph.stats().pending, 0);
        // A SERVER span whose parent came from an untraced client's header: after the wait.
        graph.record_batch(&[item(&hub, span(SpanKind::Server, 2, Some(0xaa), 5))], t0);
        // A CLIENT span whose server is not traced here: after the wait.
        graph.record_batch(&[item(&hub, span(SpanKind::Client, 3, Some(1), 250))], t0);
        assert_eq!(edges(&graph), [edge("10.0.0.9", "hub", true, 1, 0, 0, 1)]);
        graph.record_batch(&[], t0 + DEFAULT_WAIT - Duration::from_millis(1));
        assert_eq!(graph.stats().pending, 2);
        graph.record_batch(&[], t0 + DEFAULT_WAIT);
        assert_eq!(
            edges(&graph),
            [
                edge("10.0.0.9", "hub", true, 2, 0, 0, 2),
                edge("hub", "backend.test:8080", true, 1, 0, 1, 0),
            ]
        );
        let stats = graph.stats();
        assert_eq!(
            (stats.paired, stats.client_only, stats.server_only),
            (0, 1, 2)
        );
        assert_eq!(stats.pending, 0);
    }

    #[test]
    fn a_noted_pair_joins_a_header_linked_server_with_its_client() {
        let graph = ServiceGraph::new(GraphLimits::default());
        let hub = resource(1, "hub");
        let backend = resource(2, "backend");
        let t0 = Instant::now();
        // Both spans are children of the header's span 0x55; the linker paired them.
        graph.note_pair([2; 8], [1; 8]);
        graph.record_batch(
            &[
                item(&backend, span(SpanKind::Server, 2, Some(0x55), 10)),
                item(&hub, span(SpanKind::Client, 1, Some(0x55), 12)),
            ],
            t0,
        );
        graph.record_batch(&[], t0 + Duration::from_secs(60));
        assert_eq!(edges(&graph), [edge("hub", "backend", false, 1, 0, 1, 1)]);
    }

    #[test]
    fn pending_and_edges_are_bounded_and_counted() {
        let graph = ServiceGraph::new(GraphLimits {
            wait: DEFAULT_WAIT,
            max_pending: 2,
            max_edges: 1,
        });
        let hub = resource(1, "hub");
        let other = resource(2, "other");
        let t0 = Instant::now();
        graph.record_batch(
            &[
                item(&hub, span(SpanKind::Client, 1, None, 1)),
                item(&hub, span(SpanKind::Client, 2, None, 1)),
                item(&hub, span(SpanKind::Client, 3, None, 1)),
            ],
            t0,
        );
        let stats = graph.stats();
        assert_eq!((stats.pending, stats.pending_overflow), (2, 1));
        // A second edge goes to the overflow edge.
        graph.record_batch(&[item(&other, span(SpanKind::Server, 9, None, 1))], t0);
        let stats = graph.stats();
        assert_eq!((stats.overflow_requests, stats.edges), (1, 2));
        graph.with_cumulative(|e| {
            assert!(e[1].overflow);
            assert_eq!(e[1].labels(), [("otel.metric.overflow", "true")]);
        });
        let page = exposition::page_of(graph);
        assert!(
            page.contains("traces_service_graph_request_total{otel_metric_overflow=\"true\"} 1\n"),
            "{page}"
        );
    }

    #[test]
    fn prometheus_page_uses_tempo_names_labels_and_buckets() {
        let graph = ServiceGraph::new(GraphLimits::default());
        let hub = resource(1, "hub");
        let backend = resource(2, "backend");
        let t0 = Instant::now();
        graph.record_batch(
            &[
                item(&backend, span(SpanKind::Server, 2, Some(1), 150)),
                item(&hub, span(SpanKind::Client, 1, None, 300)),
                item(&hub, span(SpanKind::Server, 5, None, 500)),
            ],
            t0,
        );
        let page = exposition::page_of(graph);
        for line in [
            "# TYPE traces_service_graph_request counter",
            "traces_service_graph_request_total{client=\"hub\",server=\"backend\"} 1",
            "traces_service_graph_request_total{client=\"10.0.0.9\",server=\"hub\",connection_type=\"virtual_node\"} 1",
            "traces_service_graph_request_failed_total{client=\"hub\",server=\"backend\"} 0",
            "# TYPE traces_service_graph_request_server_seconds histogram",
            "traces_service_graph_request_server_seconds_bucket{le=\"0.1\",client=\"hub\",server=\"backend\"} 0",
            "traces_service_graph_request_server_seconds_bucket{le=\"0.2\",client=\"hub\",server=\"backend\"} 1",
            "traces_service_graph_request_server_seconds_bucket{le=\"+Inf\",client=\"hub\",server=\"backend\"} 1",
            "traces_service_graph_request_server_seconds_count{client=\"10.0.0.9\",server=\"hub\",connection_type=\"virtual_node\"} 1",
            "traces_service_graph_request_client_seconds_bucket{le=\"0.4\",client=\"hub\",server=\"backend\"} 1",
            "traces_service_graph_request_client_seconds_count{client=\"hub\",server=\"backend\"} 1",
            "tracer_service_graph_requests_total{kind=\"paired\"} 1",
        ] {
            assert!(page.contains(&format!("{line}\n")), "{line} in\n{page}");
        }
        // The virtual client edge measured no client side.
        assert!(
            !page.contains("traces_service_graph_request_client_seconds_count{client=\"10.0.0.9\"")
        );
    }
}
