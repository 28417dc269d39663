//! Span sinks: OTLP (gRPC, HTTP/protobuf, HTTP/JSON) with batching and retry, terminal text, JSON lines.
//!
//! The pipeline hands each finished span to a [`SpanSink`] with the non-blocking
//! [`SpanSink::submit`]; [`SpanSink::shutdown`] flushes within a deadline. Every sink counts what it
//! accepted, delivered and dropped in [`ExportStats`].

mod batch;
mod config;
mod encode;
mod grpc;
mod http_client;
mod json;
mod metrics_otlp;
mod otlp;
mod queue;
mod retry;
mod stats;
mod stream;
mod terminal;
pub mod top;

/// The replaced SDK conversion (`SpanData` -> opentelemetry-proto), kept as the reference the
/// direct encoder is checked against.
#[cfg(test)]
mod convert;
#[cfg(test)]
mod encode_tests;
#[cfg(test)]
mod otlp_tests;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use batch::BatchExporter;
pub use config::{
    BatchConfig, ConfigError, EnvLookup, OtlpCompression, OtlpConfig, OtlpOverrides, OtlpProtocol,
    RetryConfig, otlp_configured,
};
pub use encode::{
    JsonEncodeError, SCOPE_NAME, SCOPE_VERSION, TraceEncoder, encode_traces, traces_json,
};
pub use json::{JsonFormatter, JsonSink, write_span_line};
pub use metrics_otlp::{MetricsExportConfig, MetricsExporter, Temporality};
pub use stats::{ExportStats, ExportStatsSnapshot};
pub use stream::{BoxedWriter, StreamSink};
pub use terminal::{
    TerminalFormatter, TerminalOptions, TerminalSink, colour_for_stdout, render_trace,
};

use crate::model::ExportItem;

/// Why a sink could not be built.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("invalid OTLP configuration: {0}")]
    Config(#[from] ConfigError),
    /// Shown without URL credentials (built from the redacted endpoint).
    #[error("invalid OTLP endpoint {}", crate::telemetry::redact::urls_in(.0))]
    Endpoint(String),
    #[error("cannot build the OTLP HTTP client: {0}")]
    HttpClient(String),
    #[error("invalid OTLP header: {0}")]
    Header(String),
    #[error("cannot open stdout for span output: {0}")]
    Stdout(#[from] std::io::Error),
}

/// Which sink to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkConfig {
    /// Export over OTLP.
    Otlp(OtlpConfig),
    /// Human-readable trace trees on stdout.
    Terminal(TerminalOptions),
    /// JSON lines on stdout.
    Json,
}

/// A running sink.
#[derive(Debug)]
pub enum SpanSink {
    Otlp(BatchExporter),
    Terminal(TerminalSink),
    Json(JsonSink),
}

impl SpanSink {
    /// Hands a span to the sink without waiting; a full queue drops it and counts the drop.
    pub fn submit(&self, item: ExportItem) {
        match self {
            SpanSink::Otlp(s) => s.submit(item),
            SpanSink::Terminal(s) => s.submit(item),
            SpanSink::Json(s) => s.submit(item),
        }
    }

    /// Hands a batch of spans to the sink without waiting (one queue lock, one wake-up of the
    /// sink's worker); `items` is left empty, its capacity kept for the next batch.
    pub fn submit_batch(&self, items: &mut Vec<ExportItem>) {
        if items.is_empty() {
            return;
        }
        match self {
            SpanSink::Otlp(s) => s.submit_batch(items),
            SpanSink::Terminal(s) => s.submit_batch(items),
            SpanSink::Json(s) => s.submit_batch(items),
        }
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        match self {
            SpanSink::Otlp(s) => s.stats(),
            SpanSink::Terminal(s) => s.stats(),
            SpanSink::Json(s) => s.stats(),
        }
    }

    /// Delivers everything queued (and held), giving up after `deadline`; returns final counters.
    pub async fn shutdown(self, deadline: Duration) -> ExportStatsSnapshot {
        match self {
            SpanSink::Otlp(s) => s.shutdown(deadline).await,
            SpanSink::Terminal(s) => s.shutdown(deadline).await,
            SpanSink::Json(s) => s.shutdown(deadline).await,
        }
    }
}

/// Starts the configured sink on the current tokio runtime. An unreachable OTLP endpoint is not
/// an error here (export retries and counts instead).
pub async fn build_sink(cfg: &SinkConfig) -> Result<SpanSink, ExportError> {
    Ok(match cfg {
        SinkConfig::Otlp(otlp) => SpanSink::Otlp(BatchExporter::start(otlp)?),
        SinkConfig::Terminal(options) => SpanSink::Terminal(TerminalSink::stdout(options.clone())?),
        SinkConfig::Json => SpanSink::Json(JsonSink::stdout()?),
    })
}
