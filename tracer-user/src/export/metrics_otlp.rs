//! OTLP metrics export of the RED histograms ([`RedMetrics`]): configuration from the
//! `OTEL_EXPORTER_OTLP_METRICS_*` variables (falling back to the generic ones, as for traces),
//! `OTEL_METRIC_EXPORT_INTERVAL` and the temporality preference; the encoding of an
//! `ExportMetricsServiceRequest` (one `ResourceMetrics` per process); and a periodic worker that
//! sends it over the same HTTP and gRPC senders as traces, with the same retry policy.
//!
//! Configured only when an endpoint is (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`); without one there is no metrics export.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar as ProtoExemplar, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ExportError;
use super::config::{
    ConfigError, EnvLookup, OtlpCompression, OtlpConfig, OtlpOverrides, OtlpProtocol,
};
use super::encode::{SCOPE_NAME, SCOPE_VERSION};
use super::grpc::GrpcSender;
use super::http_client::{HttpSender, gzip};
use super::otlp::{AttemptFailure, marked_headers};
use super::retry::{FailureClass, backoff_delay};
use crate::model::AttrValue;
use crate::telemetry::red::{BOUNDARIES, Instrument, Point, RedMetrics, ResourceSeries};
use crate::telemetry::service_graph::{self, Edge, EdgePoint};

pub const ENV_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
pub const ENV_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
pub const ENV_TEMPORALITY: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
/// The spec's default export interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(60_000);
/// The OTLP metrics export method (gRPC).
pub const GRPC_METRICS_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Cumulative (the default) or delta points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    /// `delta`, and `lowmemory` (histograms are delta there).
    Delta,
}

impl Temporality {
    fn proto(self) -> i32 {
        match self {
            Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
            Temporality::Delta => AggregationTemporality::Delta as i32,
        }
    }
}

/// Everything the metrics exporter needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsExportConfig {
    /// Endpoint (the metrics URL), protocol, headers, timeout, compression, retry.
    pub otlp: OtlpConfig,
    pub interval: Duration,
    pub temporality: Temporality,
}

impl MetricsExportConfig {
    /// `None` when no endpoint is configured for metrics. The signal-specific variables
    /// (`OTEL_EXPORTER_OTLP_METRICS_{ENDPOINT,PROTOCOL,HEADERS,TIMEOUT,COMPRESSION}`) win over
    /// the generic ones; the flags win over both, as for traces. A metrics endpoint is used as
    /// is; one derived from a base gets `/v1/metrics` for HTTP.
    pub fn from_env_and_overrides(
        env: EnvLookup<'_>,
        overrides: &OtlpOverrides,
    ) -> Result<Option<Self>, ConfigError> {
        let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
        let own_endpoint = set(ENV_METRICS_ENDPOINT);
        if !own_endpoint && overrides.endpoint.is_none() && !set(super::config::ENV_ENDPOINT) {
            return Ok(None);
        }
        // The traces configuration read through the metrics variables: one parser, one set of
        // rules.
        let mapped = |name: &str| match name.strip_prefix("OTEL_EXPORTER_OTLP_TRACES_") {
            Some(rest) => env(&format!("OTEL_EXPORTER_OTLP_METRICS_{rest}")),
            None => env(name),
        };
        let mut otlp = OtlpConfig::from_env_and_overrides(&mapped, overrides)?;
        if otlp.protocol.is_http()
            && !(own_endpoint && overrides.endpoint.is_none())
            && let Some(base) = otlp.endpoint.strip_suffix("/v1/traces")
        {
            otlp.endpoint = format!("{base}/v1/metrics");
        }
        let interval = match env(ENV_METRIC_EXPORT_INTERVAL).map(|v| v.trim().to_string()) {
            Some(v) if !v.is_empty() => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError {
                        setting: ENV_METRIC_EXPORT_INTERVAL.into(),
                        value: v,
                        reason: "not a positive number of milliseconds".into(),
                    });
                }
            },
            _ => DEFAULT_INTERVAL,
        };
        let temporality = match env(ENV_TEMPORALITY).map(|v| v.trim().to_ascii_lowercase()) {
            None => Temporality::Cumulative,
            Some(v) => match v.as_str() {
                "" | "cumulative" => Temporality::Cumulative,
                "delta" | "lowmemory" => Temporality::Delta,
                _ => {
                    return Err(ConfigError {
                        setting: ENV_TEMPORALITY.into(),
                        value: v,
                        reason: "not supported (use cumulative, delta or lowmemory)".into(),
                    });
                }
            },
        };
        Ok(Some(MetricsExportConfig {
            otlp,
            interval,
            temporality,
        }))
    }
}

fn any_value(v: &AttrValue) -> AnyValue {
    AnyValue {
        value: Some(match v {
            AttrValue::Str(s) => any_value::Value::StringValue(s.as_str().to_string()),
            AttrValue::Int(i) => any_value::Value::IntValue(*i),
            AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        }),
    }
}

fn key_value(key: &str, v: &AttrValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(any_value(v)),
        ..Default::default()
    }
}

fn exemplar(e: &crate::telemetry::red::Exemplar) -> ProtoExemplar {
    ProtoExemplar {
        time_unix_nano: e.time_unix_ns,
        span_id: e.span_id.to_vec(),
        trace_id: e.trace_id.to_vec(),
        value: Some(exemplar::Value::AsDouble(e.value)),
        ..Default::default()
    }
}

fn data_point(attributes: Vec<KeyValue>, p: &Point, now_unix_ns: u64) -> HistogramDataPoint {
    let mut exemplars = Vec::with_capacity(2);
    if let Some(recent) = &p.recent {
        exemplars.push(exemplar(recent));
    }
    if let Some(slowest) = &p.slowest
        && p.recent
            .as_ref()
            .is_none_or(|r| r.span_id != slowest.span_id)
    {
        exemplars.push(exemplar(slowest));
    }
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: p.start_unix_ns,
        time_unix_nano: now_unix_ns,
        count: p.count,
        sum: Some(p.sum),
        bucket_counts: p.bucket_counts.to_vec(),
        explicit_bounds: BOUNDARIES.to_vec(),
        exemplars,
        flags: 0,
        min: (p.count > 0).then_some(p.min),
        max: (p.count > 0).then_some(p.max),
    }
}

/// The request for every process's series: cumulative points, or delta points (series without a
/// span in the interval left out). Returns the request and its number of data points.
pub fn encode_request(
    resources: &[ResourceSeries],
    temporality: Temporality,
    now_unix_ns: u64,
) -> (ExportMetricsServiceRequest, u64) {
    let mut points = 0u64;
    let mut resource_metrics = Vec::with_capacity(resources.len());
    for r in resources {
        let mut metrics = Vec::new();
        for instrument in Instrument::ALL {
            let data_points: Vec<HistogramDataPoint> = r
                .series
                .iter()
                .filter(|s| s.instrument == instrument)
                .filter_map(|s| {
                    let p = match temporality {
                        Temporality::Cumulative => &s.total,
                        Temporality::Delta => &s.delta,
                    };
                    (p.count > 0).then(|| {
                        let attrs = s.attributes().map(|(k, v)| key_value(k, v)).collect();
                        data_point(attrs, p, now_unix_ns)
                    })
                })
                .collect();
            if data_points.is_empty() {
                continue;
            }
            points += data_points.len() as u64;
            metrics.push(Metric {
                name: instrument.name().to_string(),
                description: instrument.description().to_string(),
                unit: "s".to_string(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: temporality.proto(),
                })),
                ..Default::default()
            });
        }
        if metrics.is_empty() {
            continue;
        }
        resource_metrics.push(ResourceMetrics {
            resource: Some(Resource {
                attributes: r
                    .resource
                    .attributes
                    .iter()
                    .map(|(k, v)| key_value(k, v))
                    .collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_string(),
                    version: SCOPE_VERSION.to_string(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }
    (ExportMetricsServiceRequest { resource_metrics }, points)
}

fn string_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// The service graph's metrics (Tempo's names and labels; see `telemetry::service_graph`) as one
/// `ResourceMetrics` with an empty resource (an edge belongs to two processes), or `None` when
/// there is no point. Delta: edges without a request in the interval are left out. Returns it
/// and its number of data points.
pub fn encode_service_graph(
    edges: &[Edge],
    temporality: Temporality,
    now_unix_ns: u64,
) -> (Option<ResourceMetrics>, u64) {
    let point_of = |e: &Edge| -> Option<(Vec<KeyValue>, EdgePoint)> {
        let p = match temporality {
            Temporality::Cumulative => &e.total,
            Temporality::Delta => &e.delta,
        };
        (p.requests > 0).then(|| {
            let attrs = e
                .labels()
                .into_iter()
                .map(|(k, v)| match k {
                    crate::telemetry::red::OVERFLOW_ATTRIBUTE => {
                        key_value(k, &AttrValue::Bool(true))
                    }
                    _ => string_value(k, v),
                })
                .collect();
            (attrs, p.clone())
        })
    };
    let points: Vec<(Vec<KeyValue>, EdgePoint)> = edges.iter().filter_map(point_of).collect();
    if points.is_empty() {
        return (None, 0);
    }
    let mut n = 0u64;
    let mut metrics = Vec::with_capacity(4);
    for (name, description, value) in [
        (
            service_graph::REQUEST_TOTAL,
            "Total count of requests between two nodes.",
            (|p: &EdgePoint| p.requests) as fn(&EdgePoint) -> u64,
        ),
        (
            service_graph::REQUEST_FAILED_TOTAL,
            "Total count of failed requests between two nodes.",
            |p: &EdgePoint| p.failed,
        ),
    ] {
        let data_points: Vec<NumberDataPoint> = points
            .iter()
            .map(|(attrs, p)| NumberDataPoint {
                attributes: attrs.clone(),
                start_time_unix_nano: p.start_unix_ns,
                time_unix_nano: now_unix_ns,
                value: Some(number_data_point::Value::AsInt(value(p) as i64)),
                ..Default::default()
            })
            .collect();
        n += data_points.len() as u64;
        metrics.push(Metric {
            name: name.to_string(),
            description: description.to_string(),
            unit: "{request}".to_string(),
            data: Some(metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: temporality.proto(),
                is_monotonic: true,
            })),
            ..Default::default()
        });
    }
    for (name, description, histogram) in [
        (
            service_graph::REQUEST_SERVER_SECONDS,
            "Time for a request between two nodes as seen from the server.",
            (|p: &EdgePoint| &p.server) as fn(&EdgePoint) -> &service_graph::Histogram,
        ),
        (
            service_graph::REQUEST_CLIENT_SECONDS,
            "Time for a request between two nodes as seen from the client.",
            |p: &EdgePoint| &p.client,
        ),
    ] {
        let data_points: Vec<HistogramDataPoint> = points
            .iter()
            .filter_map(|(attrs, p)| {
                let h = histogram(p);
                (h.count > 0).then(|| HistogramDataPoint {
                    attributes: attrs.clone(),
                    start_time_unix_nano: p.start_unix_ns,
                    time_unix_nano: now_unix_ns,
                    count: h.count,
                    sum: Some(h.sum),
                    bucket_counts: h.bucket_counts.to_vec(),
                    explicit_bounds: service_graph::BOUNDARIES.to_vec(),
                    exemplars: h.recent.iter().map(exemplar).collect(),
                    flags: 0,
                    min: Some(h.min),
                    max: Some(h.max),
                })
            })
            .collect();
        if data_points.is_empty() {
            continue;
        }
        n += data_points.len() as u64;
        metrics.push(Metric {
            name: name.to_string(),
            description: description.to_string(),
            unit: "s".to_string(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: temporality.proto(),
            })),
            ..Default::default()
        });
    }
    let rm = ResourceMetrics {
        resource: Some(Resource::default()),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: SCOPE_NAME.to_string(),
                version: SCOPE_VERSION.to_string(),
                ..Default::default()
            }),
            metrics,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    };
    (Some(rm), n)
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
enum Sender {
    Http(HttpSender),
    Grpc(GrpcSender),
}

/// The periodic OTLP metrics export.
#[derive(Debug)]
pub struct MetricsExporter {
    stop: watch::Sender<Option<Instant>>,
    worker: JoinHandle<()>,
}

struct Worker {
    cfg: MetricsExportConfig,
    sender: Sender,
    red: Arc<RedMetrics>,
    stop: watch::Receiver<Option<Instant>>,
}

impl MetricsExporter {
    /// Starts the worker on the current tokio runtime (nothing is contacted here).
    pub fn start(cfg: MetricsExportConfig, red: Arc<RedMetrics>) -> Result<Self, ExportError> {
        let headers = marked_headers(&cfg.otlp.headers);
        let sender = match cfg.otlp.protocol {
            OtlpProtocol::Grpc => {
                Sender::Grpc(GrpcSender::new(&cfg.otlp, &headers)?.with_path(GRPC_METRICS_PATH))
            }
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                Sender::Http(HttpSender::new(&cfg.otlp, &headers)?)
            }
        };
        tracing::info!(
            endpoint = %crate::telemetry::redact::url(&cfg.otlp.endpoint),
            protocol = cfg.otlp.protocol.as_str(),
            interval = ?cfg.interval,
            temporality = ?cfg.temporality,
            "OTLP metrics export configured"
        );
        let (stop, stop_rx) = watch::channel(None);
        let worker = Worker {
            cfg,
            sender,
            red,
            stop: stop_rx,
        };
        Ok(MetricsExporter {
            stop,
            worker: tokio::spawn(worker.run()),
        })
    }

    /// Exports once more (the last interval) and stops, giving up after `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        let MetricsExporter { stop, mut worker } = self;
        let until = Instant::now() + deadline;
        stop.send_replace(Some(until));
        if tokio::time::timeout_at(until, &mut worker).await.is_err() {
            worker.abort();
            tracing::warn!(
                ?deadline,
                "OTLP metrics export did not finish before shutdown"
            );
        }
    }
}

impl Worker {
    async fn run(mut self) {
        let mut next = Instant::now() + self.cfg.interval;
        loop {
            // A stop seen during a retry wait is not signalled again: check first.
            let stopping = self.stop.borrow().is_some()
                || tokio::select! {
                    () = tokio::time::sleep_until(next) => false,
                    changed = self.stop.changed() => changed.is_err() || self.stop.borrow().is_some(),
                };
            next = Instant::now() + self.cfg.interval;
            self.export_once().await;
            if stopping {
                return;
            }
        }
    }

    fn body(&self) -> Option<(Bytes, u64)> {
        let now = unix_now_ns();
        let temporality = self.cfg.temporality;
        let (mut request, mut points) = match temporality {
            Temporality::Cumulative => self
                .red
                .with_cumulative(|r| encode_request(r, temporality, now)),
            Temporality::Delta => self
                .red
                .with_delta(now, |r| encode_request(r, temporality, now)),
        };
        let graph = self.red.service_graph();
        let (edges, edge_points) = match temporality {
            Temporality::Cumulative => {
                graph.with_cumulative(|e| encode_service_graph(e, temporality, now))
            }
            Temporality::Delta => {
                graph.with_delta(now, |e| encode_service_graph(e, temporality, now))
            }
        };
        request.resource_metrics.extend(edges);
        points += edge_points;
        if points == 0 {
            return None;
        }
        let body = match self.cfg.otlp.protocol {
            OtlpProtocol::HttpJson => match serde_json::to_vec(&request) {
                Ok(json) => Bytes::from(json),
                Err(err) => {
                    tracing::warn!(%err, "cannot encode metrics as JSON");
                    self.red.export_counters().failed(points);
                    return None;
                }
            },
            _ => Bytes::from(request.encode_to_vec()),
        };
        let body = if self.cfg.otlp.protocol != OtlpProtocol::Grpc
            && self.cfg.otlp.compression == Some(OtlpCompression::Gzip)
        {
            match gzip(&body) {
                Ok(body) => body,
                Err(err) => {
                    tracing::warn!(%err, "cannot compress metrics");
                    self.red.export_counters().failed(points);
                    return None;
                }
            }
        } else {
            body
        };
        Some((body, points))
    }

    async fn export_once(&mut self) {
        let Some((body, points)) = self.body() else {
            return;
        };
        let counters = self.red.export_counters();
        let retry = self.cfg.otlp.retry.clone();
        let limit = self.cfg.otlp.timeout + Duration::from_secs(5);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sent = async {
                match &mut self.sender {
                    Sender::Http(http) => http.send(body.clone()).await,
                    Sender::Grpc(grpc) => grpc.send(body.clone()).await,
                }
            };
            let failure = match tokio::time::timeout(limit, sent).await {
                Ok(Ok(rejected)) => {
                    counters.exported(points.saturating_sub(rejected), rejected.min(points));
                    return;
                }
                Ok(Err(failure)) => failure,
                Err(_) => AttemptFailure::transient(format!(
                    "metrics export did not finish within {limit:?}"
                )),
            };
            // The last export at shutdown is tried once: the span sink's flush runs meanwhile
            // and a collector that is down must not hold the agent's exit.
            let stopping = self.stop.borrow().is_some();
            let retry_after = match failure.class {
                FailureClass::Transient { retry_after }
                    if attempt < retry.max_attempts && !stopping =>
                {
                    retry_after
                }
                _ => {
                    tracing::warn!(points, attempts = attempt, error = %failure.message, "dropping metrics after export failure");
                    counters.failed(points);
                    return;
                }
            };
            let jitter: f64 = rand::rng().random_range(0.0..=1.0);
            let delay = backoff_delay(&retry, attempt - 1, jitter, retry_after);
            tokio::select! {
                () = tokio::time::sleep(delay) => counters.retried(),
                _ = self.stop.changed() => {
                    // Shutting down: this interval's points are given up (cumulative points
                    // are in the last export anyway).
                    counters.failed(points);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attribute, ExportItem, ProcessResource, SpanKind, SpanRecord, SpanStatus};
    use crate::telemetry::red::Limits;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn no_endpoint_means_no_metrics_export() {
        let e = env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )]);
        let cfg = MetricsExportConfig::from_env_and_overrides(&e, &OtlpOverrides::default());
        assert_eq!(cfg, Ok(None));
    }

    #[test]
    fn metrics_settings_fall_back_to_the_generic_ones() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "b=2"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ]);
        let cfg = MetricsExportConfig::from_env_and_overrides(&e, &OtlpOverrides::default())
            .unwrap()
            .unwrap();
        assert_eq!(cfg.otlp.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(cfg.otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(cfg.otlp.headers, [("b".to_string(), "2".to_string())]);
        assert_eq!(cfg.interval, DEFAULT_INTERVAL);
        assert_eq!(cfg.temporality, Temporality::Cumulative);

        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:9000/custom",
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
        ]);
        let cfg = MetricsExportConfig::from_env_and_overrides(&e, &OtlpOverrides::default())
            .unwrap()
            .unwrap();
        assert_eq!(cfg.otlp.endpoint, "http://m:9000/custom");
        assert_eq!(cfg.interval, Duration::from_millis(250));
        assert_eq!(cfg.temporality, Temporality::Delta);

        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
        ]);
        let cfg = MetricsExportConfig::from_env_and_overrides(&e, &OtlpOverrides::default())
            .unwrap()
            .unwrap();
        assert_eq!(cfg.otlp.endpoint, "http://c:4317");
        assert_eq!(cfg.otlp.protocol, OtlpProtocol::Grpc);

        for bad in [
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "sideways",
            ),
        ] {
            let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), bad]);
            assert!(
                MetricsExportConfig::from_env_and_overrides(&e, &OtlpOverrides::default()).is_err(),
                "{bad:?}"
            );
        }
    }

    fn span(status: i64, millis: u64, id: u8) -> SpanRecord {
        SpanRecord {
            trace_id: [id; 16],
            span_id: [id; 8],
            parent_span_id: None,
            trace_state: None,
            sampled: true,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_ns: 10,
            end_unix_ns: 10 + millis * 1_000_000,
            attributes: smallvec::smallvec![
                Attribute::str("http.request.method", "GET"),
                Attribute::int("http.response.status_code", status),
            ],
            status: SpanStatus::Unset,
            pid: 1,
        }
    }

    #[test]
    fn requests_carry_one_resource_per_process_buckets_and_exemplars() {
        let red = RedMetrics::new(Limits::default());
        let resource = Arc::new(ProcessResource {
            pid: 1,
            service_name: "a".into(),
            attributes: vec![(
                "service.name".into(),
                AttrValue::Str("a".to_string().into()),
            )],
        });
        let item = |span| ExportItem {
            span,
            resource: Arc::clone(&resource),
        };
        red.record_batch(&[item(span(200, 600, 1)), item(span(200, 2, 2))]);
        let (request, points) =
            red.with_cumulative(|r| encode_request(r, Temporality::Cumulative, 99));
        assert_eq!(points, 1);
        // Survives a protobuf round trip.
        let request = ExportMetricsServiceRequest::decode(&request.encode_to_vec()[..]).unwrap();
        let rm = &request.resource_metrics[0];
        assert_eq!(
            rm.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let metric = &rm.scope_metrics[0].metrics[0];
        assert_eq!(metric.name, "http.server.request.duration");
        assert_eq!(metric.unit, "s");
        let Some(metric::Data::Histogram(h)) = &metric.data else {
            panic!("not a histogram")
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        assert_eq!(p.count, 2);
        assert_eq!(p.bucket_counts.len(), BOUNDARIES.len() + 1);
        assert_eq!(p.bucket_counts[0], 1);
        assert_eq!(p.bucket_counts[8], 1); // 0.6 s: (0.5, 0.75]
        assert_eq!(p.start_time_unix_nano, 10);
        assert_eq!(p.min, Some(0.002));
        assert_eq!(p.max, Some(0.6));
        let ids: Vec<_> = p.exemplars.iter().map(|e| e.trace_id.clone()).collect();
        assert_eq!(ids, [vec![2u8; 16], vec![1u8; 16]]); // most recent, slowest

        // OTLP/JSON (http/json) round-trips too.
        let json = serde_json::to_vec(&request).unwrap();
        let back: ExportMetricsServiceRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, request);

        // Delta: the interval's points only; nothing new -> no point.
        let (first, n) = red.with_delta(100, |r| encode_request(r, Temporality::Delta, 100));
        assert_eq!(n, 1);
        let Some(metric::Data::Histogram(h)) =
            &first.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!()
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
        let (_, n) = red.with_delta(200, |r| encode_request(r, Temporality::Delta, 200));
        assert_eq!(n, 0);
    }

    #[test]
    fn service_graph_edges_are_sums_and_histograms_with_tempo_names() {
        let red = RedMetrics::new(Limits::default());
        let resource = |pid, name: &str| {
            Arc::new(ProcessResource {
                pid,
                service_name: name.into(),
                attributes: vec![],
            })
        };
        let (hub, backend) = (resource(1, "hub"), resource(2, "backend"));
        let mut client = span(500, 30, 1);
        client.kind = SpanKind::Client;
        client.status = SpanStatus::Error {
            description: String::new(),
        };
        let mut server = span(500, 20, 2);
        server.parent_span_id = Some([1; 8]);
        red.record_batch(&[
            ExportItem {
                span: server,
                resource: backend,
            },
            ExportItem {
                span: client,
                resource: hub,
            },
        ]);
        let graph = red.service_graph();
        let (rm, points) =
            graph.with_cumulative(|e| encode_service_graph(e, Temporality::Cumulative, 99));
        assert_eq!(points, 4);
        let rm = rm.expect("edges");
        let metrics = &rm.scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "traces_service_graph_request_total",
                "traces_service_graph_request_failed_total",
                "traces_service_graph_request_server_seconds",
                "traces_service_graph_request_client_seconds"
            ]
        );
        let Some(metric::Data::Sum(total)) = &metrics[1].data else {
            panic!("not a sum")
        };
        assert!(total.is_monotonic);
        let p = &total.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(1)));
        let labels: Vec<(String, String)> = p
            .attributes
            .iter()
            .map(|kv| {
                let Some(any_value::Value::StringValue(v)) =
                    kv.value.as_ref().and_then(|v| v.value.clone())
                else {
                    panic!("{kv:?}")
                };
                (kv.key.clone(), v)
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("client".to_string(), "hub".to_string()),
                ("server".to_string(), "backend".to_string())
            ]
        );
        let Some(metric::Data::Histogram(h)) = &metrics[2].data else {
            panic!("not a histogram")
        };
        assert_eq!(h.data_points[0].explicit_bounds, service_graph::BOUNDARIES);
        assert_eq!(h.data_points[0].count, 1);
        // Delta: sent once.
        let (_, n) = graph.with_delta(100, |e| encode_service_graph(e, Temporality::Delta, 100));
        assert_eq!(n, 4);
        let (rm, n) = graph.with_delta(200, |e| encode_service_graph(e, Temporality::Delta, 200));
        assert_eq!((rm, n), (None, 0));
    }

    /// A collector that is down: the last export at shutdown is tried once, given up and
    /// counted, and the worker ends by itself (an aborted worker would count nothing).
    #[tokio::test]
    async fn shutdown_with_an_unreachable_collector_tries_once_and_counts_it() {
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{addr}"))]);
        let cfg = MetricsExportConfig::from_env_and_overrides(&e, &OtlpOverrides::default())
            .unwrap()
            .unwrap();
        let red = RedMetrics::new(Limits::default());
        let resource = Arc::new(ProcessResource {
            pid: 1,
            service_name: "a".into(),
            attributes: vec![],
        });
        red.record_batch(&[ExportItem {
            span: span(200, 1, 1),
            resource,
        }]);
        let exporter = MetricsExporter::start(cfg, Arc::clone(&red)).unwrap();
        exporter.shutdown(Duration::from_secs(60)).await;
        let c = red.export_counters();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(load(&c.requests), 1);
        assert_eq!(load(&c.requests_failed), 1);
        assert_eq!(load(&c.retries), 0);
        // The span's RED point, and its service graph edge (a root SERVER span: virtual
        // client) as request and failed counts and a server histogram.
        assert_eq!(load(&c.points_dropped), 1 + 3);
    }
}
