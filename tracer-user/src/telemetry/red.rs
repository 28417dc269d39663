//! RED metrics (rate, errors, duration) aggregated from every finished span: the stable semconv
//! duration histograms `http.server.request.duration`, `http.client.request.duration`,
//! `rpc.server.call.duration` and `rpc.client.call.duration`, one set of series per process
//! resource (the same resource the span carries).
//!
//! Where it is fed: the event thread records each batch of spans just before handing it to the
//! span sink ([`Handover`]), so every sink (OTLP, terminal, JSON, none) gets the same metrics and
//! spans dropped later by a full export queue are still counted here. One lock per batch.
//!
//! Bounded: at most [`Limits::series_per_instrument`] series per instrument (over all processes)
//! and [`Limits::resources`] processes. A span whose series would pass the series limit lands in
//! its process's overflow series (the only attribute is `otel.metric.overflow=true`, as the OTel
//! SDKs do) and is counted in [`RedStats::overflow_points`]; a span of a process past the
//! resource limit is not aggregated and is counted in [`RedStats::dropped_points`].
//!
//! No allocation per span in steady state: a series is found by a hash of the span's borrowed
//! attribute values and compared in place; memory is taken only when a series is created.
//!
//! Each series keeps two points: the cumulative one (Prometheus and cumulative OTLP) and the one
//! since the last delta collection (delta OTLP), each with exemplars of the most recent and the
//! slowest span.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::idhash::IdHashMap;
use crate::model::{AttrValue, ExportItem, ProcessResource, SpanKind, SpanRecord};
use crate::telemetry::metrics::exposition::{
    self, DescriptorEncoder, Exposed, GaugeValue, HistogramSeries, LabelText, Labels,
};
use crate::telemetry::rpc;
use crate::telemetry::semconv;

/// The semconv explicit bucket boundaries (seconds) for the HTTP and RPC duration histograms.
pub const BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Buckets: one per boundary plus the one above the last.
pub const BUCKETS: usize = BOUNDARIES.len() + 1;

/// Default series limit per instrument (the OTel SDKs' default cardinality limit).
pub const DEFAULT_SERIES_LIMIT: usize = 2000;
/// Default number of processes aggregated at once.
pub const DEFAULT_RESOURCE_LIMIT: usize = 1024;

/// The attribute of an overflow series.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// One of the duration histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Instrument {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
}

const HTTP_SERVER_KEYS: &[&str] = &[
    semconv::HTTP_REQUEST_METHOD,
    semconv::HTTP_RESPONSE_STATUS_CODE,
    semconv::ERROR_TYPE,
    semconv::URL_SCHEME,
    semconv::NETWORK_PROTOCOL_VERSION,
    semconv::HTTP_ROUTE,
];
const HTTP_CLIENT_KEYS: &[&str] = &[
    semconv::HTTP_REQUEST_METHOD,
    semconv::HTTP_RESPONSE_STATUS_CODE,
    semconv::ERROR_TYPE,
    semconv::URL_SCHEME,
    semconv::NETWORK_PROTOCOL_VERSION,
    semconv::SERVER_ADDRESS,
    semconv::SERVER_PORT,
    semconv::HTTP_ROUTE,
];
const RPC_KEYS: &[&str] = &[
    rpc::RPC_SYSTEM_NAME,
    rpc::RPC_METHOD,
    rpc::RPC_RESPONSE_STATUS_CODE,
    semconv::ERROR_TYPE,
    semconv::SERVER_ADDRESS,
    semconv::SERVER_PORT,
];
/// Most attribute keys of any instrument.
const MAX_KEYS: usize = 8;

/// The attributes any instrument reads, each in a slot of its own (see [`slot_of`]).
const SLOTS: usize = 11;
const SLOT_RPC_SYSTEM_NAME: usize = 8;
const SLOT_HTTP_REQUEST_METHOD: usize = 0;

/// The slot of an attribute an instrument reads, `None` for the others. A match on constant
/// keys compares lengths and then a few words inline, so one pass over a span's attributes finds
/// all of them (one scan per key, each comparing through `memcmp`, was most of this module's
/// cost per span).
fn slot_of(key: &str) -> Option<usize> {
    Some(match key {
        semconv::HTTP_REQUEST_METHOD => SLOT_HTTP_REQUEST_METHOD,
        semconv::HTTP_RESPONSE_STATUS_CODE => 1,
        semconv::ERROR_TYPE => 2,
        semconv::URL_SCHEME => 3,
        semconv::NETWORK_PROTOCOL_VERSION => 4,
        semconv::HTTP_ROUTE => 5,
        semconv::SERVER_ADDRESS => 6,
        semconv::SERVER_PORT => 7,
        semconv::RPC_SYSTEM_NAME => SLOT_RPC_SYSTEM_NAME,
        semconv::RPC_METHOD => 9,
        semconv::RPC_RESPONSE_STATUS_CODE => 10,
        _ => return None,
    })
}

const HTTP_SERVER_SLOTS: &[usize] = &[0, 1, 2, 3, 4, 5];
const HTTP_CLIENT_SLOTS: &[usize] = &[0, 1, 2, 3, 4, 6, 7, 5];
const RPC_SLOTS: &[usize] = &[8, 9, 10, 2, 6, 7];

impl Instrument {
    pub const ALL: [Instrument; 4] = [
        Instrument::HttpServer,
        Instrument::HttpClient,
        Instrument::RpcServer,
        Instrument::RpcClient,
    ];

    /// The OTel metric name.
    pub fn name(self) -> &'static str {
        match self {
            Instrument::HttpServer => semconv::HTTP_SERVER_REQUEST_DURATION,
            Instrument::HttpClient => semconv::HTTP_CLIENT_REQUEST_DURATION,
            Instrument::RpcServer => semconv::RPC_SERVER_CALL_DURATION,
            Instrument::RpcClient => semconv::RPC_CLIENT_CALL_DURATION,
        }
    }

    /// The Prometheus base name (OTel-to-Prometheus: dots to underscores, unit suffix).
    pub fn prometheus_name(self) -> &'static str {
        match self {
            Instrument::HttpServer => "http_server_request_duration_seconds",
            Instrument::HttpClient => "http_client_request_duration_seconds",
            Instrument::RpcServer => "rpc_server_call_duration_seconds",
            Instrument::RpcClient => "rpc_client_call_duration_seconds",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Instrument::HttpServer => "Duration of HTTP server requests.",
            Instrument::HttpClient => "Duration of HTTP client requests.",
            Instrument::RpcServer => "Duration of RPC calls a server answered.",
            Instrument::RpcClient => "Duration of RPC calls a client made.",
        }
    }

    /// The attribute keys its series are told apart by (the semconv list, less opt-in ones).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Instrument::HttpServer => HTTP_SERVER_KEYS,
            Instrument::HttpClient => HTTP_CLIENT_KEYS,
            Instrument::RpcServer | Instrument::RpcClient => RPC_KEYS,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The slot (see [`slot_of`]) of each of [`Self::keys`].
    fn slots(self) -> &'static [usize] {
        match self {
            Instrument::HttpServer => HTTP_SERVER_SLOTS,
            Instrument::HttpClient => HTTP_CLIENT_SLOTS,
            Instrument::RpcServer | Instrument::RpcClient => RPC_SLOTS,
        }
    }

    /// The instrument a span is measured by: RPC when it has `rpc.system.name`, HTTP when it has
    /// `http.request.method`, none otherwise.
    pub fn of(span: &SpanRecord) -> Option<Instrument> {
        let has = |key: &str| span.attributes.iter().any(|a| a.key == key);
        let is_rpc = has(rpc::RPC_SYSTEM_NAME);
        if !is_rpc && !has(semconv::HTTP_REQUEST_METHOD) {
            return None;
        }
        Some(match (is_rpc, span.kind) {
            (true, SpanKind::Server) => Instrument::RpcServer,
            (true, SpanKind::Client) => Instrument::RpcClient,
            (false, SpanKind::Server) => Instrument::HttpServer,
            (false, SpanKind::Client) => Instrument::HttpClient,
        })
    }
}

/// A span a histogram point refers to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Seconds.
    pub value: f64,
    pub time_unix_ns: u64,
}

/// One histogram point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub count: u64,
    /// Seconds.
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// `bucket_counts[i]` counts values `<= BOUNDARIES[i]` and above the previous boundary; the
    /// last counts values above every boundary.
    pub bucket_counts: [u64; BUCKETS],
    /// Start of the interval the point covers (Unix ns).
    pub start_unix_ns: u64,
    pub recent: Option<Exemplar>,
    pub slowest: Option<Exemplar>,
}

impl Point {
    fn empty(start_unix_ns: u64) -> Self {
        Point {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            bucket_counts: [0; BUCKETS],
            start_unix_ns,
            recent: None,
            slowest: None,
        }
    }

    /// Records `seconds`, which falls in bucket `bucket` (`bucket_of(seconds)`).
    fn record(&mut self, seconds: f64, bucket: usize, exemplar: Exemplar) {
        self.count += 1;
        self.sum += seconds;
        self.min = self.min.min(seconds);
        self.max = self.max.max(seconds);
        if let Some(count) = self.bucket_counts.get_mut(bucket) {
            *count += 1;
        }
        self.recent = Some(exemplar);
        if self.slowest.is_none_or(|s| seconds >= s.value) {
            self.slowest = Some(exemplar);
        }
    }
}

/// The bucket a value (seconds) falls in: the first whose upper boundary is `>=` the value.
pub fn bucket_of(seconds: f64) -> usize {
    BOUNDARIES
        .iter()
        .position(|b| seconds <= *b)
        .unwrap_or(BOUNDARIES.len())
}

/// One series: an instrument and its attribute values.
#[derive(Clone, Debug)]
pub struct Series {
    pub instrument: Instrument,
    /// Aligned with `instrument.keys()`; `None` when the span did not have it.
    values: Box<[Option<AttrValue>]>,
    /// The overflow series (no attributes but `otel.metric.overflow=true`).
    pub overflow: bool,
    pub total: Point,
    pub delta: Point,
    /// Next series with the same hash.
    next: Option<u32>,
}

impl Series {
    /// The attributes of the series, present ones only, in the instrument's key order.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &AttrValue)> + '_ {
        const TRUE: AttrValue = AttrValue::Bool(true);
        let overflow = self.overflow.then_some((OVERFLOW_ATTRIBUTE, &TRUE));
        overflow.into_iter().chain(
            self.instrument
                .keys()
                .iter()
                .zip(self.values.iter())
                .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v))),
        )
    }
}

/// The series of one process.
#[derive(Debug)]
pub struct ResourceSeries {
    pub resource: Arc<ProcessResource>,
    pub series: Vec<Series>,
    /// Attribute hash -> first series with it (the key is a seeded hash already).
    index: IdHashMap<u64, u32>,
    overflow: [Option<u32>; 4],
    /// Per instrument, the series the last span went to: a span of the same series (the usual
    /// case) is compared with it in place, not hashed and looked up.
    last: [Option<u32>; 4],
}

/// Limits of the aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Series per instrument over all processes (overflow series not included).
    pub series_per_instrument: usize,
    /// Processes aggregated at once.
    pub resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            series_per_instrument: DEFAULT_SERIES_LIMIT,
            resources: DEFAULT_RESOURCE_LIMIT,
        }
    }
}

/// Counters of the aggregation (monotonic, but `series` is a gauge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedStats {
    /// Spans measured by a histogram.
    pub points: u64,
    /// Of those, points recorded in an overflow series because of the series limit.
    pub overflow_points: u64,
    /// Spans not aggregated because the process limit was reached.
    pub dropped_points: u64,
    /// Gauge: series held now (including overflow series).
    pub series: u64,
}

#[derive(Debug, Default)]
struct Tables {
    resources: Vec<ResourceSeries>,
    /// `Arc::as_ptr` of a resource (kept alive by `resources`) -> its position.
    by_resource: IdHashMap<usize, u32>,
    /// Seed of the attribute hashes (foldhash, seeded per table: several times faster than
    /// SipHash; a collision only lengthens a chain the series limit bounds).
    seed: foldhash::fast::RandomState,
    per_instrument: [usize; 4],
    series: usize,
}

/// The aggregation, shared by the event thread (writer), the OTLP metrics exporter and the
/// Prometheus page (readers).
#[derive(Debug)]
pub struct RedMetrics {
    tables: Mutex<Tables>,
    limits: Limits,
    points: AtomicU64,
    overflow_points: AtomicU64,
    dropped_points: AtomicU64,
    export: MetricsExportCounters,
    /// The service graph, fed by the same hand-over.
    graph: Arc<crate::telemetry::service_graph::ServiceGraph>,
}

/// Counters of the OTLP metrics export (data points are histogram points of one series).
#[derive(Debug, Default)]
pub struct MetricsExportCounters {
    pub requests: AtomicU64,
    pub requests_failed: AtomicU64,
    pub retries: AtomicU64,
    pub points_exported: AtomicU64,
    /// Points the receiver rejected (partial success) or that were given up after failures.
    pub points_dropped: AtomicU64,
}

impl MetricsExportCounters {
    pub fn exported(&self, points: u64, rejected: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.points_exported.fetch_add(points, Ordering::Relaxed);
        self.points_dropped.fetch_add(rejected, Ordering::Relaxed);
    }

    pub fn failed(&self, points: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.requests_failed.fetch_add(1, Ordering::Relaxed);
        self.points_dropped.fetch_add(points, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The instrument measuring `span` (see [`Instrument::of`]) and the values of its keys, aligned
/// with [`Instrument::keys`], found in one pass over the attributes (the first of a key counts,
/// as a search by key finds it).
fn series_values(span: &SpanRecord) -> Option<(Instrument, [Option<&AttrValue>; MAX_KEYS])> {
    let mut found: [Option<&AttrValue>; SLOTS] = [None; SLOTS];
    for attribute in &span.attributes {
        if let Some(slot) = slot_of(attribute.key).and_then(|i| found.get_mut(i))
            && slot.is_none()
        {
            *slot = Some(&attribute.value);
        }
    }
    let is_rpc = found[SLOT_RPC_SYSTEM_NAME].is_some();
    if !is_rpc && found[SLOT_HTTP_REQUEST_METHOD].is_none() {
        return None;
    }
    let instrument = match (is_rpc, span.kind) {
        (true, SpanKind::Server) => Instrument::RpcServer,
        (true, SpanKind::Client) => Instrument::RpcClient,
        (false, SpanKind::Server) => Instrument::HttpServer,
        (false, SpanKind::Client) => Instrument::HttpClient,
    };
    let mut values: [Option<&AttrValue>; MAX_KEYS] = [None; MAX_KEYS];
    for (value, slot) in values.iter_mut().zip(instrument.slots()) {
        *value = found.get(*slot).copied().flatten();
    }
    Some((instrument, values))
}

fn hash_values(
    seed: &foldhash::fast::RandomState,
    instrument: Instrument,
    values: &[Option<&AttrValue>],
) -> u64 {
    let mut h = seed.build_hasher();
    instrument.hash(&mut h);
    for v in values {
        match v {
            None => 0u8.hash(&mut h),
            Some(AttrValue::Str(s)) => {
                1u8.hash(&mut h);
                s.as_str().hash(&mut h);
            }
            Some(AttrValue::Int(i)) => {
                2u8.hash(&mut h);
                i.hash(&mut h);
            }
            Some(AttrValue::Bool(b)) => {
                3u8.hash(&mut h);
                b.hash(&mut h);
            }
        }
    }
    h.finish()
}

impl RedMetrics {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(RedMetrics {
            tables: Mutex::new(Tables::default()),
            limits,
            points: AtomicU64::new(0),
            overflow_points: AtomicU64::new(0),
            dropped_points: AtomicU64::new(0),
            export: MetricsExportCounters::default(),
            graph: crate::telemetry::service_graph::ServiceGraph::new(
                crate::telemetry::service_graph::GraphLimits {
                    max_edges: limits.series_per_instrument,
                    ..Default::default()
                },
            ),
        })
    }

    /// The service graph aggregated from the same spans.
    pub fn service_graph(&self) -> &Arc<crate::telemetry::service_graph::ServiceGraph> {
        &self.graph
    }

    /// Counters of the OTLP metrics export.
    pub fn export_counters(&self) -> &MetricsExportCounters {
        &self.export
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn stats(&self) -> RedStats {
        let series = self
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .series as u64;
        RedStats {
            points: self.points.load(Ordering::Relaxed),
            overflow_points: self.overflow_points.load(Ordering::Relaxed),
            dropped_points: self.dropped_points.load(Ordering::Relaxed),
            series,
        }
    }

    /// Records every span of a batch (one lock).
    pub fn record_batch(&self, items: &[ExportItem]) {
        // The graph also counts, on empty batches, the spans whose wait for their other end
        // is over.
        self.graph.record_batch(items, std::time::Instant::now());
        if items.is_empty() {
            return;
        }
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        for item in items {
            self.record_locked(&mut tables, item);
        }
    }

    fn record_locked(&self, tables: &mut Tables, item: &ExportItem) {
        let span = &item.span;
        let Some((instrument, values)) = series_values(span) else {
            return;
        };
        let values = &values[..instrument.keys().len()];
        let seconds = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
        let exemplar = Exemplar {
            trace_id: span.trace_id,
            span_id: span.span_id,
            value: seconds,
            time_unix_ns: span.end_unix_ns,
        };

        let key = Arc::as_ptr(&item.resource) as usize;
        let r = match tables.by_resource.get(&key) {
            Some(r) => *r as usize,
            None => {
                if tables.resources.len() >= self.limits.resources {
                    self.dropped_points.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                tables.resources.push(ResourceSeries {
                    resource: Arc::clone(&item.resource),
                    series: Vec::new(),
                    index: IdHashMap::default(),
                    overflow: [None; 4],
                    last: [None; 4],
                });
                let r = tables.resources.len() - 1;
                tables.by_resource.insert(key, r as u32);
                r
            }
        };
        let is_series = |s: &Series| {
            !s.overflow
                && s.instrument == instrument
                && s.values.len() == values.len()
                && s.values.iter().zip(values).all(|(a, b)| a.as_ref() == *b)
        };
        let rs = &tables.resources[r];
        let last = rs.last[instrument.index()]
            .filter(|i| rs.series.get(*i as usize).is_some_and(is_series));
        let (found, hash) = match last {
            Some(i) => (Some(i as usize), None),
            None => {
                let hash = hash_values(&tables.seed, instrument, values);
                let mut at = rs.index.get(&hash).copied();
                let mut found = None;
                while let Some(i) = at {
                    let s = &rs.series[i as usize];
                    if is_series(s) {
                        found = Some(i as usize);
                        break;
                    }
                    at = s.next;
                }
                (found, Some(hash))
            }
        };
        let at = match found {
            Some(i) => i,
            None if tables.per_instrument[instrument.index()]
                < self.limits.series_per_instrument =>
            {
                tables.per_instrument[instrument.index()] += 1;
                tables.series += 1;
                let rs = &mut tables.resources[r];
                let i = rs.series.len() as u32;
                let hash = hash.unwrap_or_else(|| hash_values(&tables.seed, instrument, values));
                let next = rs.index.insert(hash, i);
                rs.series.push(Series {
                    instrument,
                    values: values.iter().map(|v| v.cloned()).collect(),
                    overflow: false,
                    total: Point::empty(span.start_unix_ns),
                    delta: Point::empty(span.start_unix_ns),
                    next,
                });
                i as usize
            }
            None => {
                self.overflow_points.fetch_add(1, Ordering::Relaxed);
                let rs = &mut tables.resources[r];
                match rs.overflow[instrument.index()] {
                    Some(i) => i as usize,
                    None => {
                        let i = rs.series.len();
                        rs.overflow[instrument.index()] = Some(i as u32);
                        rs.series.push(Series {
                            instrument,
                            values: Box::new([]),
                            overflow: true,
                            total: Point::empty(span.start_unix_ns),
                            delta: Point::empty(span.start_unix_ns),
                            next: None,
                        });
                        tables.series += 1;
                        i
                    }
                }
            }
        };
        let rs = &mut tables.resources[r];
        if !rs.series[at].overflow {
            rs.last[instrument.index()] = Some(at as u32);
        }
        let s = &mut rs.series[at];
        let bucket = bucket_of(seconds);
        s.total.record(seconds, bucket, exemplar);
        s.delta.record(seconds, bucket, exemplar);
        self.points.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls `f` with every process's series (cumulative points), under the lock.
    pub fn with_cumulative<R>(&self, f: impl FnOnce(&[ResourceSeries]) -> R) -> R {
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        f(&tables.resources)
    }

    /// Calls `f` with every process's series, then starts a new delta interval at `now_unix_ns`
    /// for every series (their `delta` points are reset). Series with no span in the interval
    /// have a `delta.count` of 0 (delta exporters skip them).
    pub fn with_delta<R>(&self, now_unix_ns: u64, f: impl FnOnce(&[ResourceSeries]) -> R) -> R {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&tables.resources);
        for rs in &mut tables.resources {
            for s in &mut rs.series {
                s.delta = Point::empty(now_unix_ns);
            }
        }
        out
    }
}

/// A Prometheus label name from an OTel attribute key: characters outside `[a-zA-Z0-9_]` become
/// `_`, and a leading digit gets a `_` prefix (the OTel-to-Prometheus rules).
fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn value_text(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s.as_str().to_string(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
    }
}

fn resource_attr<'a>(resource: &'a ProcessResource, key: &str) -> Option<&'a AttrValue> {
    resource
        .attributes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// `job` and `instance` of a process resource (OTel-to-Prometheus): `job` is
/// `service.namespace/service.name` (or `service.name`), `instance` is `service.instance.id`, or
/// `host.name/process.pid` when the resource has none (processes of one service must not share a
/// series).
pub fn job_and_instance(resource: &ProcessResource) -> (String, String) {
    let job = match resource_attr(resource, "service.namespace") {
        Some(ns) => format!("{}/{}", value_text(ns), resource.service_name),
        None => resource.service_name.clone(),
    };
    let instance = match resource_attr(resource, "service.instance.id") {
        Some(id) => value_text(id),
        None => {
            let host = resource_attr(resource, "host.name")
                .map(value_text)
                .unwrap_or_default();
            format!("{host}/{}", resource.pid)
        }
    };
    (job, instance)
}

/// Identifying labels of a process's series: `job`, `instance`, `service_name`.
fn identifying_labels(resource: &ProcessResource) -> Vec<(String, String)> {
    let (job, instance) = job_and_instance(resource);
    vec![
        ("job".to_owned(), job),
        ("instance".to_owned(), instance),
        ("service_name".to_owned(), resource.service_name.clone()),
    ]
}

/// Borrowed labels of owned name/value pairs, for the page's writers.
fn borrowed(pairs: &[(String, String)]) -> Labels<'_> {
    pairs
        .iter()
        .map(|(name, value)| (name.as_str(), LabelText(value)))
        .collect()
}

impl Exposed for RedMetrics {
    /// The aggregation's own counters, `target_info` for every process that has series, the
    /// histograms (cumulative), then the service graph.
    fn expose(&self, page: &mut DescriptorEncoder) -> std::fmt::Result {
        let stats = self.stats();
        let e = &self.export;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = [
            (
                "tracer_red_points_total",
                "Spans measured by a RED duration histogram.",
                stats.points,
            ),
            (
                "tracer_red_overflow_points_total",
                "Spans recorded in an overflow series (otel_metric_overflow=\"true\") because \
                 their instrument reached its series limit.",
                stats.overflow_points,
            ),
            (
                "tracer_red_dropped_points_total",
                "Spans not aggregated because the process limit of the RED metrics was reached.",
                stats.dropped_points,
            ),
            (
                "tracer_red_export_requests_total",
                "OTLP metrics export requests (each after its retries), failed ones included.",
                load(&e.requests),
            ),
            (
                "tracer_red_export_requests_failed_total",
                "OTLP metrics export requests given up after failures.",
                load(&e.requests_failed),
            ),
            (
                "tracer_red_export_retries_total",
                "Retried OTLP metrics export attempts.",
                load(&e.retries),
            ),
            (
                "tracer_red_export_points_total",
                "Data points (RED histograms, service graph counts and histograms) the OTLP \
                 metrics receiver accepted.",
                load(&e.points_exported),
            ),
            (
                "tracer_red_export_points_dropped_total",
                "Data points (RED histograms, service graph counts and histograms) not \
                 delivered (export failed or rejected by the receiver).",
                load(&e.points_dropped),
            ),
        ];
        for (name, help, value) in counters {
            exposition::counter(page, name, help, [(Vec::new(), value)])?;
        }
        exposition::gauge(
            page,
            "tracer_red_series",
            "RED histogram series held now (overflow series included).",
            [(Vec::new(), GaugeValue::Int(stats.series))],
        )?;
        self.with_cumulative(|resources| {
            let ids: Vec<Vec<(String, String)>> = resources
                .iter()
                .map(|r| identifying_labels(&r.resource))
                .collect();
            let target_info: Vec<Vec<(String, String)>> = resources
                .iter()
                .zip(&ids)
                .map(|(r, id)| {
                    let mut labels = id.clone();
                    for (key, value) in &r.resource.attributes {
                        if matches!(
                            key.as_str(),
                            "service.name" | "service.namespace" | "service.instance.id"
                        ) {
                            continue;
                        }
                        let name = label_name(key);
                        if labels.iter().any(|(seen, _)| *seen == name) {
                            continue;
                        }
                        labels.push((name, value_text(value)));
                    }
                    labels
                })
                .collect();
            exposition::info(
                page,
                "target",
                "Target metadata",
                target_info.iter().map(|labels| borrowed(labels)),
            )?;
            for instrument in Instrument::ALL {
                let series: Vec<(Vec<(String, String)>, &Point)> = resources
                    .iter()
                    .zip(&ids)
                    .flat_map(|(r, id)| {
                        r.series
                            .iter()
                            .filter(move |s| s.instrument == instrument)
                            .map(move |s| {
                                let mut labels = id.clone();
                                labels.extend(
                                    s.attributes()
                                        .map(|(key, value)| (label_name(key), value_text(value))),
                                );
                                (labels, &s.total)
                            })
                    })
                    .collect();
                exposition::histogram(
                    page,
                    instrument.prometheus_name(),
                    instrument.description(),
                    &BOUNDARIES,
                    series.iter().map(|(labels, p)| HistogramSeries {
                        labels: borrowed(labels),
                        bucket_counts: &p.bucket_counts,
                        sum: p.sum,
                        count: p.count,
                    }),
                )?;
            }
            Ok(())
        })?;
        self.graph.expose(page)
    }
}

/// The event thread's hand-over of finished spans: metrics first (when on), then the span sink
/// (when spans are on; otherwise the batch is discarded after it was measured).
#[derive(Debug)]
pub struct Handover {
    pub sink: crate::export::SpanSink,
    pub red: Option<Arc<RedMetrics>>,
    pub spans: bool,
    /// `tracer top`'s aggregation, fed the same batches.
    pub top: Option<Arc<crate::export::top::Top>>,
}

impl Handover {
    /// Measures and hands over `items`, leaving it empty (its capacity kept).
    pub fn submit_batch(&self, items: &mut Vec<ExportItem>) {
        if let Some(red) = &self.red {
            red.record_batch(items);
        }
        if let Some(top) = &self.top {
            top.record_batch(items);
        }
        if self.spans {
            self.sink.submit_batch(items);
        } else {
            items.clear();
        }
    }

    pub fn stats(&self) -> Arc<crate::export::ExportStats> {
        self.sink.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attribute, SpanStatus, Text};

    fn resource(pid: u32, name: &str) -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            pid,
            service_name: name.to_string(),
            attributes: vec![(
                "service.name".into(),
                AttrValue::Str(name.to_string().into()),
            )],
        })
    }

    fn span(kind: SpanKind, attrs: Vec<Attribute>, millis: u64, id: u8) -> SpanRecord {
        SpanRecord {
            trace_id: [id; 16],
            span_id: [id; 8],
            parent_span_id: None,
            trace_state: None,
            sampled: true,
            name: Text::Static("GET"),
            kind,
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_000_000_000 + millis * 1_000_000,
            attributes: attrs.into(),
            status: SpanStatus::Unset,
            pid: 1,
        }
    }

    fn http(method: &'static str, status: i64, path: &str) -> Vec<Attribute> {
        vec![
            Attribute::str("http.request.method", method),
            Attribute::str("url.path", path.to_string()),
            Attribute::str("url.scheme", "http"),
            Attribute::int("http.response.status_code", status),
            Attribute::str("network.protocol.version", "1.1"),
            Attribute::int("client.port", 50000 + i64::from(path.len() as u16)),
        ]
    }

    fn item(resource: &Arc<ProcessResource>, span: SpanRecord) -> ExportItem {
        ExportItem {
            span,
            resource: Arc::clone(resource),
        }
    }

    #[test]
    fn every_key_has_its_slot() {
        for instrument in Instrument::ALL {
            let slots: Vec<Option<usize>> = instrument.keys().iter().map(|k| slot_of(k)).collect();
            let expected: Vec<Option<usize>> =
                instrument.slots().iter().map(|s| Some(*s)).collect();
            assert_eq!(slots, expected, "{instrument:?}");
        }
        let mut all: Vec<usize> = Instrument::ALL
            .iter()
            .flat_map(|i| i.slots().iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..SLOTS).collect::<Vec<_>>(), "slots are dense");
    }

    /// The one-pass lookup finds what a search by key finds, for the instrument `Instrument::of`
    /// picks: every mix of the keys, repeated keys (the first counts) and unrelated ones.
    #[test]
    fn one_pass_lookup_matches_a_search_by_key() {
        let keys = [
            semconv::HTTP_REQUEST_METHOD,
            semconv::HTTP_RESPONSE_STATUS_CODE,
            semconv::ERROR_TYPE,
            semconv::URL_SCHEME,
            semconv::NETWORK_PROTOCOL_VERSION,
            semconv::HTTP_ROUTE,
            semconv::SERVER_ADDRESS,
            semconv::SERVER_PORT,
            semconv::RPC_SYSTEM_NAME,
            semconv::RPC_METHOD,
            semconv::RPC_RESPONSE_STATUS_CODE,
            "url.path",
            "client.address",
            "http.request.method_original",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2000 {
            let count = (next() % 16) as usize;
            let attrs: Vec<Attribute> = (0..count)
                .map(|i| {
                    let key = keys[(next() % keys.len() as u64) as usize];
                    if next() % 2 == 0 {
                        Attribute::int(key, i as i64)
                    } else {
                        Attribute::str(key, format!("v{i}"))
                    }
                })
                .collect();
            let kind = if round % 2 == 0 {
                SpanKind::Server
            } else {
                SpanKind::Client
            };
            let span = span(kind, attrs, 1, 1);
            let expected = Instrument::of(&span).map(|instrument| {
                let values: Vec<Option<&AttrValue>> = instrument
                    .keys()
                    .iter()
                    .map(|k| {
                        span.attributes
                            .iter()
                            .find(|a| a.key == *k)
                            .map(|a| &a.value)
                    })
                    .collect();
                (instrument, values)
            });
            let got = series_values(&span).map(|(instrument, values)| {
                (instrument, values[..instrument.keys().len()].to_vec())
            });
            assert_eq!(got, expected, "{:?}", span.attributes);
        }
    }

    #[test]
    fn buckets_follow_the_semconv_boundaries_upper_inclusive() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.005), 0);
        assert_eq!(bucket_of(0.0051), 1);
        assert_eq!(bucket_of(0.3), 7);
        assert_eq!(bucket_of(10.0), 13);
        assert_eq!(bucket_of(10.5), 14);
        assert_eq!(bucket_of(f64::NAN), 14);
    }

    #[test]
    fn spans_aggregate_per_resource_and_attribute_set_without_raw_paths() {
        let red = RedMetrics::new(Limits::default());
        let a = resource(1, "a");
        let b = resource(2, "b");
        let batch = vec![
            item(&a, span(SpanKind::Server, http("GET", 200, "/x/1"), 3, 1)),
            item(
                &a,
                span(SpanKind::Server, http("GET", 200, "/x/22"), 300, 2),
            ),
            item(&a, span(SpanKind::Server, http("GET", 500, "/x/1"), 20, 3)),
            item(&b, span(SpanKind::Server, http("GET", 200, "/x/1"), 1, 4)),
            item(&a, span(SpanKind::Client, http("GET", 200, "/x/1"), 1, 5)),
            // Not HTTP or RPC: not measured.
            item(&a, span(SpanKind::Client, vec![], 1, 6)),
        ];
        red.record_batch(&batch);
        let stats = red.stats();
        assert_eq!(stats.points, 5);
        assert_eq!(stats.series, 4);
        red.with_cumulative(|resources| {
            assert_eq!(resources.len(), 2);
            let a = &resources[0];
            assert_eq!(a.series.len(), 3);
            let ok = &a.series[0];
            assert_eq!(ok.instrument, Instrument::HttpServer);
            assert_eq!(ok.total.count, 2);
            assert!((ok.total.sum - 0.303).abs() < 1e-9);
            assert_eq!(ok.total.bucket_counts[0], 1);
            assert_eq!(ok.total.bucket_counts[7], 1);
            assert_eq!(ok.total.recent.unwrap().trace_id, [2; 16]);
            assert_eq!(ok.total.slowest.unwrap().span_id, [2; 8]);
            let keys: Vec<_> = ok.attributes().map(|(k, _)| k).collect();
            assert_eq!(
                keys,
                [
                    "http.request.method",
                    "http.response.status_code",
                    "url.scheme",
                    "network.protocol.version"
                ]
            );
            assert_eq!(a.series[1].total.count, 1);
            assert_eq!(a.series[2].instrument, Instrument::HttpClient);
            assert_eq!(resources[1].series[0].total.count, 1);
        });
    }

    #[test]
    fn runs_and_alternations_of_series_land_in_their_own_series() {
        // The last series is compared in place before any lookup: a span of another series
        // (or of the same values in another instrument or process) must not land in it.
        let red = RedMetrics::new(Limits::default());
        let a = resource(1, "a");
        let b = resource(2, "b");
        let statuses = [200, 200, 404, 200, 404, 404, 200];
        let mut batch: Vec<_> = statuses
            .iter()
            .map(|s| item(&a, span(SpanKind::Server, http("GET", *s, "/"), 1, 1)))
            .collect();
        batch.push(item(
            &a,
            span(SpanKind::Client, http("GET", 200, "/"), 1, 1),
        ));
        batch.push(item(
            &b,
            span(SpanKind::Server, http("GET", 200, "/"), 1, 1),
        ));
        batch.push(item(
            &a,
            span(SpanKind::Server, http("GET", 200, "/"), 1, 1),
        ));
        red.record_batch(&batch[..4]);
        red.record_batch(&batch[4..]);
        red.with_cumulative(|r| {
            let counts: Vec<_> = r[0]
                .series
                .iter()
                .map(|s| (s.instrument, s.total.count))
                .collect();
            assert_eq!(
                counts,
                [
                    (Instrument::HttpServer, 5),
                    (Instrument::HttpServer, 3),
                    (Instrument::HttpClient, 1)
                ]
            );
            let status = |s: &Series| {
                s.attributes()
                    .find(|(k, _)| *k == semconv::HTTP_RESPONSE_STATUS_CODE)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(status(&r[0].series[0]), Some(AttrValue::Int(200)));
            assert_eq!(status(&r[0].series[1]), Some(AttrValue::Int(404)));
            assert_eq!(r[1].series.len(), 1);
            assert_eq!(r[1].series[0].total.count, 1);
        });
        assert_eq!(red.stats().series, 4);
    }

    #[test]
    fn rpc_spans_use_the_rpc_instruments() {
        let red = RedMetrics::new(Limits::default());
        let a = resource(1, "a");
        let attrs = vec![
            Attribute::str("rpc.system.name", "grpc"),
            Attribute::str("rpc.method", "pkg.Svc/Call"),
            Attribute::str("rpc.response.status_code", "OK"),
            Attribute::str("http.request.method", "POST"),
        ];
        red.record_batch(&[
            item(&a, span(SpanKind::Server, attrs.clone(), 2, 1)),
            item(&a, span(SpanKind::Client, attrs, 2, 2)),
        ]);
        red.with_cumulative(|r| {
            let s = &r[0].series;
            assert_eq!(s[0].instrument, Instrument::RpcServer);
            assert_eq!(s[1].instrument, Instrument::RpcClient);
            let keys: Vec<_> = s[0].attributes().map(|(k, _)| k).collect();
            assert_eq!(
                keys,
                ["rpc.system.name", "rpc.method", "rpc.response.status_code"]
            );
        });
    }

    #[test]
    fn series_past_the_limit_go_to_the_overflow_series_and_are_counted() {
        let red = RedMetrics::new(Limits {
            series_per_instrument: 2,
            resources: 2,
        });
        let a = resource(1, "a");
        let b = resource(2, "b");
        let c = resource(3, "c");
        let batch: Vec<_> = (200..206)
            .map(|status| item(&a, span(SpanKind::Server, http("GET", status, "/"), 1, 1)))
            .chain([item(
                &b,
                span(SpanKind::Server, http("GET", 200, "/"), 1, 2),
            )])
            .chain([item(
                &c,
                span(SpanKind::Server, http("GET", 200, "/"), 1, 3),
            )])
            .collect();
        red.record_batch(&batch);
        let stats = red.stats();
        assert_eq!(stats.points, 7);
        assert_eq!(stats.overflow_points, 5);
        assert_eq!(stats.dropped_points, 1);
        // Two real series, and one overflow series in each of the two processes.
        assert_eq!(stats.series, 4);
        red.with_cumulative(|r| {
            let over = &r[0].series[2];
            assert!(over.overflow);
            assert_eq!(over.total.count, 4);
            let attrs: Vec<_> = over.attributes().collect();
            assert_eq!(attrs, [(OVERFLOW_ATTRIBUTE, &AttrValue::Bool(true))]);
            assert_eq!(r[1].series[0].total.count, 1);
            assert!(r[1].series[0].overflow);
        });
        // Known series keep counting after the limit is reached.
        red.record_batch(&[item(
            &a,
            span(SpanKind::Server, http("GET", 200, "/"), 1, 1),
        )]);
        red.with_cumulative(|r| assert_eq!(r[0].series[0].total.count, 2));
    }

    #[test]
    fn delta_collection_resets_the_interval_and_cumulative_does_not() {
        let red = RedMetrics::new(Limits::default());
        let a = resource(1, "a");
        let one = || item(&a, span(SpanKind::Server, http("GET", 200, "/"), 7, 1));
        red.record_batch(&[one(), one()]);
        let first = red.with_delta(5_000_000_000, |r| r[0].series[0].delta.count);
        assert_eq!(first, 2);
        let empty = red.with_delta(6_000_000_000, |r| {
            (
                r[0].series[0].delta.count,
                r[0].series[0].delta.start_unix_ns,
            )
        });
        assert_eq!(empty, (0, 5_000_000_000));
        red.record_batch(&[one()]);
        red.with_delta(7_000_000_000, |r| {
            let s = &r[0].series[0];
            assert_eq!(s.delta.count, 1);
            assert_eq!(s.delta.start_unix_ns, 6_000_000_000);
            assert_eq!(s.total.count, 3);
            assert_eq!(s.total.start_unix_ns, 1_000_000_000);
        });
    }

    #[test]
    fn prometheus_page_has_cumulative_buckets_and_target_info() {
        let red = RedMetrics::new(Limits::default());
        let a = Arc::new(ProcessResource {
            pid: 42,
            service_name: "shop".into(),
            attributes: vec![
                (
                    "service.name".into(),
                    AttrValue::Str("shop".to_string().into()),
                ),
                ("host.name".into(), AttrValue::Str("h1".to_string().into())),
                ("process.pid".into(), AttrValue::Int(42)),
            ],
        });
        red.record_batch(&[
            item(&a, span(SpanKind::Server, http("GET", 200, "/"), 3, 1)),
            item(&a, span(SpanKind::Server, http("GET", 200, "/"), 300, 2)),
        ]);
        let page = exposition::page_of(red);
        let id = "job=\"shop\",instance=\"h1/42\",service_name=\"shop\"";
        assert!(
            page.contains(&format!(
                "target_info{{{id},host_name=\"h1\",process_pid=\"42\"}} 1"
            )),
            "{page}"
        );
        let labels = format!(
            "{id},http_request_method=\"GET\",http_response_status_code=\"200\",url_scheme=\"http\",network_protocol_version=\"1.1\""
        );
        for (le, n) in [("0.005", 1), ("0.25", 1), ("0.5", 2), ("+Inf", 2)] {
            let line = format!(
                "http_server_request_duration_seconds_bucket{{le=\"{le}\",{labels}}} {n}\n"
            );
            assert!(page.contains(&line), "{line} in {page}");
        }
        assert!(page.contains(&format!(
            "http_server_request_duration_seconds_count{{{labels}}} 2\n"
        )));
        assert!(page.contains("# TYPE http_server_request_duration_seconds histogram\n"));
        assert!(!page.contains("http_client_request_duration_seconds"));
        assert!(page.contains("tracer_red_points_total 2\n"));
    }
}
