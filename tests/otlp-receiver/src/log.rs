//! What a receiver saw: one [`Attempt`] per export request it could decode, counters of the
//! rest, and the hooks through which a caller keeps what it needs (spans, metrics, raw bytes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;

/// Attempts kept in the log; later ones are counted in [`Stats::attempts_dropped`].
pub const MAX_LOGGED_ATTEMPTS: usize = 100_000;

/// Which OTLP signal a request exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

/// One export request the receiver decoded, and how it answered.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When the whole body had arrived.
    pub at: Instant,
    pub signal: Signal,
    /// The HTTP path (empty over gRPC).
    pub path: String,
    /// Header (or gRPC metadata) names lowercased, with their values.
    pub headers: Vec<(String, String)>,
    /// The HTTP status answered (200 over gRPC, whose errors travel in the trailers).
    pub status: u16,
    /// The gRPC status answered when it was not OK.
    pub grpc_code: Option<tonic::Code>,
    /// The request was answered with success and its spans were taken.
    pub accepted: bool,
    /// Span ids (hex) in the request, in order.
    pub span_ids: Vec<String>,
    /// `service.name` of each resource in the request.
    pub services: Vec<String>,
    /// The decoded request, when the receiver keeps requests.
    pub traces: Option<ExportTraceServiceRequest>,
    pub metrics: Option<ExportMetricsServiceRequest>,
}

impl Attempt {
    /// Identifies the batch: a retry of the same batch carries the same span ids.
    pub fn batch_key(&self) -> String {
        let mut ids = self.span_ids.clone();
        ids.sort();
        ids.join(",")
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Counters of a receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted (HTTP only: tonic accepts gRPC connections itself).
    pub connections: u64,
    /// Trace export requests received (decodable or not).
    pub requests: u64,
    /// Metrics export requests received (decodable or not).
    pub metric_requests: u64,
    /// Requests refused as malformed (method, media type, encoding, size or body).
    pub malformed: u64,
    /// Spans in trace requests answered with success (kept or discarded).
    pub spans_accepted: u64,
    /// Attempts not logged because the log was full.
    pub attempts_dropped: u64,
}

/// Receives each accepted trace request.
pub type TracesHook = Arc<dyn Fn(&ExportTraceServiceRequest) + Send + Sync>;
/// Receives each accepted metrics request.
pub type MetricsHook = Arc<dyn Fn(&ExportMetricsServiceRequest) + Send + Sync>;
/// Receives the (decompressed) protobuf body of every request before it is decoded.
pub type RawHook = Arc<dyn Fn(Signal, &[u8]) + Send + Sync>;

/// What the caller keeps, beside the attempt log.
#[derive(Clone, Default)]
pub struct Hooks {
    pub traces: Option<TracesHook>,
    pub metrics: Option<MetricsHook>,
    pub raw: Option<RawHook>,
}

#[derive(Default)]
struct Log {
    attempts: Vec<Attempt>,
    dropped: u64,
}

/// The log, counters and hooks shared by the servers and the handle.
pub(crate) struct Shared {
    log: Mutex<Log>,
    logged: Condvar,
    pub(crate) hooks: Hooks,
    pub(crate) keep_requests: bool,
    pub(crate) log_attempts: bool,
    pub(crate) decode: bool,
    pub(crate) connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) metric_requests: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) spans_accepted: AtomicU64,
}

impl Shared {
    pub(crate) fn new(hooks: Hooks, keep_requests: bool, log_attempts: bool, decode: bool) -> Self {
        Shared {
            log: Mutex::default(),
            logged: Condvar::new(),
            hooks,
            keep_requests,
            log_attempts,
            decode,
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            metric_requests: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            spans_accepted: AtomicU64::new(0),
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count_request(&self, signal: Signal) {
        match signal {
            Signal::Traces => &self.requests,
            Signal::Metrics => &self.metric_requests,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs an answered request and hands what was accepted to the hooks.
    pub(crate) fn record(&self, answered: &Answered, export: &Export) {
        self.log_attempt(answered, export);
        self.deliver(answered, export);
    }

    /// Counts the spans of an accepted request and hands it to the hooks.
    pub(crate) fn deliver(&self, answered: &Answered, export: &Export) {
        if !answered.accepted {
            return;
        }
        match export {
            Export::Traces(request) => {
                let spans: usize = request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                self.spans_accepted
                    .fetch_add(spans as u64, Ordering::Relaxed);
                if answered.keep
                    && let Some(hook) = &self.hooks.traces
                {
                    hook(request);
                }
            }
            Export::Metrics(request) => {
                if let Some(hook) = &self.hooks.metrics {
                    hook(request);
                }
            }
            Export::Undecoded(_) => {}
        }
    }

    /// Logs a request as it arrived (before any delay its answer takes).
    pub(crate) fn log_attempt(&self, answered: &Answered, export: &Export) {
        if !self.log_attempts {
            return;
        }
        let mut attempt = Attempt {
            at: Instant::now(),
            signal: export.signal(),
            path: answered.path.clone(),
            headers: answered.headers.clone(),
            status: answered.status,
            grpc_code: answered.grpc_code,
            accepted: answered.accepted,
            span_ids: Vec::new(),
            services: Vec::new(),
            traces: None,
            metrics: None,
        };
        match export {
            Export::Traces(request) => {
                attempt.span_ids = span_ids(request);
                attempt.services = services(request);
                attempt.traces = self.keep_requests.then(|| request.clone());
            }
            Export::Metrics(request) => {
                attempt.metrics = self.keep_requests.then(|| request.clone());
            }
            Export::Undecoded(_) => {}
        }
        let mut log = self.log();
        if log.attempts.len() >= MAX_LOGGED_ATTEMPTS {
            log.dropped += 1;
        } else {
            log.attempts.push(attempt);
        }
        drop(log);
        self.logged.notify_all();
    }

    pub(crate) fn attempts(&self) -> Vec<Attempt> {
        self.log().attempts.clone()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            connections: self.connections.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            metric_requests: self.metric_requests.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            spans_accepted: self.spans_accepted.load(Ordering::Relaxed),
            attempts_dropped: self.log().dropped,
        }
    }

    /// Blocks until `condition` holds on the attempts or `timeout` passes: Ok or Err with the
    /// attempts seen last.
    pub(crate) fn wait(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[Attempt]) -> bool,
    ) -> Result<Vec<Attempt>, Vec<Attempt>> {
        let deadline = Instant::now() + timeout;
        let mut log = self.log();
        loop {
            if condition(&log.attempts) {
                return Ok(log.attempts.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(log.attempts.clone());
            }
            log = self
                .logged
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A request as decoded (or not: the receiver may be told not to decode).
pub(crate) enum Export {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Undecoded(Signal),
}

impl Export {
    pub(crate) fn signal(&self) -> Signal {
        match self {
            Export::Traces(_) => Signal::Traces,
            Export::Metrics(_) => Signal::Metrics,
            Export::Undecoded(signal) => *signal,
        }
    }
}

/// How a request was answered, for the log.
pub(crate) struct Answered {
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) status: u16,
    pub(crate) grpc_code: Option<tonic::Code>,
    pub(crate) accepted: bool,
    /// Accepted spans go to the hooks (not with `Behaviour::Discard`).
    pub(crate) keep: bool,
}

fn span_ids(request: &ExportTraceServiceRequest) -> Vec<String> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|span| span.span_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect()
}

fn services(request: &ExportTraceServiceRequest) -> Vec<String> {
    request
        .resource_spans
        .iter()
        .map(|r| {
            r.resource
                .as_ref()
                .and_then(|res| res.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.as_ref())
                .map_or_else(String::new, |v| match v {
                    any_value::Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
        })
        .collect()
}
