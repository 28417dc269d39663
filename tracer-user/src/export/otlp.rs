//! One OTLP export request: builds the `opentelemetry-otlp` span exporter (gRPC via tonic or
//! HTTP protobuf/JSON via reqwest) from [`OtlpConfig`], and sends one resource's spans at a time,
//! reporting failures with a retry classification.
//!
//! The exporter's built-in retry is disabled; the batch worker retries so it can count retries and
//! honour the shutdown deadline. Neither transport builds its own runtime: both run on the caller's
//! tokio runtime, and the gRPC channel connects lazily, so an unreachable endpoint at start is not
//! an error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::{
    Compression, Protocol, RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig,
    WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};

use super::ExportError;
use super::config::{OtlpCompression, OtlpConfig, OtlpProtocol};
use super::http_client::{HttpAttemptOutcome, ObservedHttpClient, OutcomeSlot, take_outcome};
use super::retry::{FailureClass, classify_grpc_error_text, classify_http_status};

/// Extra time beyond the configured timeout before an attempt is abandoned locally.
const ATTEMPT_GRACE: Duration = Duration::from_secs(5);

/// A failed export attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptFailure {
    pub class: FailureClass,
    pub message: String,
}

/// The exporter plus what is needed to classify its failures.
#[derive(Debug)]
pub struct OtlpTransport {
    exporter: SpanExporter,
    protocol: OtlpProtocol,
    timeout: Duration,
    /// Present for HTTP transports.
    http_outcome: Option<OutcomeSlot>,
}

impl OtlpTransport {
    /// Builds the exporter. Must run inside a tokio runtime (the gRPC channel spawns its worker).
    pub fn new(cfg: &OtlpConfig) -> Result<Self, ExportError> {
        let compression = cfg
            .compression
            .map(|OtlpCompression::Gzip| Compression::Gzip);
        // Every request carries the agent's mark, so no tracer ever makes spans of it.
        let headers = marked_headers(&cfg.headers);
        let (exporter, http_outcome) = match cfg.protocol {
            OtlpProtocol::Grpc => {
                let mut builder = SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_protocol(Protocol::Grpc)
                    .with_timeout(cfg.timeout)
                    .with_metadata(grpc_metadata(&headers)?)
                    .with_retry_policy(RetryPolicy::disabled());
                if let Some(c) = compression {
                    builder = builder.with_compression(c);
                }
                (builder.build()?, None)
            }
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                let (client, slot) = ObservedHttpClient::new(cfg.timeout)
                    .map_err(|e| ExportError::HttpClient(e.to_string()))?;
                let protocol = if cfg.protocol == OtlpProtocol::HttpJson {
                    Protocol::HttpJson
                } else {
                    Protocol::HttpBinary
                };
                let headers: HashMap<String, String> = headers.into_iter().collect();
                let mut builder = SpanExporter::builder()
                    .with_http()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_protocol(protocol)
                    .with_timeout(cfg.timeout)
                    .with_headers(headers)
                    .with_http_client(client)
                    .with_retry_policy(RetryPolicy::disabled());
                if let Some(c) = compression {
                    builder = builder.with_compression(c);
                }
                (builder.build()?, Some(slot))
            }
        };
        Ok(OtlpTransport {
            exporter,
            protocol: cfg.protocol,
            timeout: cfg.timeout,
            http_outcome,
        })
    }

    /// Sends `spans` (all from the process described by `resource`) in one request.
    /// Returns the request latency on success.
    pub async fn export(
        &mut self,
        resource: &Resource,
        spans: Vec<SpanData>,
    ) -> Result<Duration, AttemptFailure> {
        self.exporter.set_resource(resource);
        if let Some(slot) = &self.http_outcome {
            take_outcome(slot);
        }
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.timeout + ATTEMPT_GRACE, self.exporter.export(spans)).await;
        match result {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(self.classify(&error)),
            Err(_) => Err(AttemptFailure {
                class: FailureClass::Transient { retry_after: None },
                message: format!(
                    "export did not finish within {:?}",
                    self.timeout + ATTEMPT_GRACE
                ),
            }),
        }
    }

    fn classify(&self, error: &OTelSdkError) -> AttemptFailure {
        let message = error.to_string();
        let class = match error {
            OTelSdkError::Timeout(_) => FailureClass::Transient { retry_after: None },
            OTelSdkError::AlreadyShutdown => FailureClass::Permanent,
            OTelSdkError::InternalFailure(text) => match self.protocol {
                OtlpProtocol::Grpc => classify_grpc_error_text(text),
                OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                    match self.http_outcome.as_ref().and_then(take_outcome) {
                        Some(HttpAttemptOutcome::Status { code, retry_after }) => {
                            classify_http_status(code, retry_after)
                        }
                        Some(HttpAttemptOutcome::Transport) => {
                            FailureClass::Transient { retry_after: None }
                        }
                        // Failed before sending (encoding, body size): retrying cannot help.
                        None => FailureClass::Permanent,
                    }
                }
            },
        };
        AttemptFailure { class, message }
    }
}

/// The configured headers with `User-Agent` replaced by the agent's mark (the configured value,
/// if any, kept after it). The key is spelled as the exporter's default so it replaces it.
fn marked_headers(configured: &[(String, String)]) -> Vec<(String, String)> {
    let theirs = configured
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        .map(|(_, v)| v.as_str());
    let mut headers: Vec<(String, String)> = configured
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("user-agent"))
        .cloned()
        .collect();
    headers.push((
        "User-Agent".to_owned(),
        crate::own::marked_user_agent(theirs),
    ));
    headers
}

/// Builds gRPC metadata from validated header pairs (validated again by the `http` builder).
fn grpc_metadata(headers: &[(String, String)]) -> Result<MetadataMap, ExportError> {
    let mut builder = opentelemetry_http::Request::builder();
    for (key, value) in headers {
        builder = builder.header(key.as_str(), value.as_str());
    }
    let request = builder
        .body(())
        .map_err(|e| ExportError::Header(e.to_string()))?;
    Ok(MetadataMap::from_headers(request.into_parts().0.headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_carries_headers_and_rejects_invalid_ones() {
        let headers = vec![("x-tenant".to_string(), "team-a".to_string())];
        let metadata = grpc_metadata(&headers).unwrap();
        assert_eq!(
            metadata.get("x-tenant").and_then(|v| v.to_str().ok()),
            Some("team-a")
        );
        assert!(grpc_metadata(&[("bad key".to_string(), "v".to_string())]).is_err());
        assert!(grpc_metadata(&[("k".to_string(), "line\nbreak".to_string())]).is_err());
    }

    #[test]
    fn every_export_carries_the_agent_mark() {
        let plain = marked_headers(&[("x-tenant".to_string(), "a".to_string())]);
        assert_eq!(
            plain,
            vec![
                ("x-tenant".to_string(), "a".to_string()),
                ("User-Agent".to_string(), crate::own::user_agent()),
            ]
        );
        let theirs = marked_headers(&[("user-agent".to_string(), "acme/1".to_string())]);
        assert_eq!(
            theirs,
            vec![(
                "User-Agent".to_string(),
                format!("{} acme/1", crate::own::user_agent())
            )]
        );
        let metadata = grpc_metadata(&plain).unwrap();
        assert_eq!(
            metadata.get("user-agent").and_then(|v| v.to_str().ok()),
            Some(crate::own::user_agent().as_str())
        );
    }
}
