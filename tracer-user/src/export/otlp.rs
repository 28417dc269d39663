//! One OTLP export request over the configured transport: the batch encoded straight from our
//! span records ([`TraceEncoder`]), sent by our own HTTP client ([`HttpSender`]: http/protobuf and
//! http/json) or gRPC client ([`GrpcSender`]), with the outcome typed: an HTTP status with its
//! `Retry-After`, a gRPC status code, or a transport error, classified for retry.
//!
//! Neither transport builds its own runtime: both run on the caller's tokio runtime, and both
//! connect lazily, so an unreachable endpoint at start is not an error.

use std::borrow::Borrow;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ExportError;
use super::config::{OtlpCompression, OtlpConfig, OtlpProtocol};
use super::encode::{TraceEncoder, traces_json};
use super::grpc::GrpcSender;
use super::http_client::{HttpSender, gzip};
use super::retry::FailureClass;
use crate::model::ExportItem;

/// Extra time beyond the configured timeout before an attempt is abandoned locally.
const ATTEMPT_GRACE: Duration = Duration::from_secs(5);

/// A failed export attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptFailure {
    pub class: FailureClass,
    pub message: String,
}

impl AttemptFailure {
    pub fn transient(message: String) -> Self {
        AttemptFailure {
            class: FailureClass::Transient { retry_after: None },
            message,
        }
    }

    pub fn permanent(message: String) -> Self {
        AttemptFailure {
            class: FailureClass::Permanent,
            message,
        }
    }
}

/// Largest encoded protobuf request (before compression) sent in one export call: below the
/// Collector's default 4 MiB gRPC receive limit, with room for framing. Larger batches are cut
/// into several requests, each exported (and retried) on its own.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024 + 512 * 1024;

/// One request's body, ready to send (compressed when configured for HTTP), and how many spans
/// it holds; or why it could not be encoded.
#[derive(Debug)]
pub struct EncodedRequest {
    pub spans: u64,
    pub body: Result<Bytes, AttemptFailure>,
}

/// A request the receiver accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub latency: Duration,
    /// Spans the receiver said it rejected (OTLP partial success).
    pub rejected_spans: u64,
}

#[derive(Debug)]
enum Sender {
    Http(HttpSender),
    Grpc(GrpcSender),
}

/// The encoder plus the configured sender.
#[derive(Debug)]
pub struct OtlpTransport {
    sender: Sender,
    protocol: OtlpProtocol,
    timeout: Duration,
    encoder: TraceEncoder,
    /// Reused protobuf output.
    scratch: Vec<u8>,
    /// Requests are cut to stay at or below this many protobuf bytes (one oversized span still
    /// goes alone).
    max_request_bytes: usize,
    /// HTTP with gzip: bodies are compressed once at encoding, not per attempt (gRPC compresses
    /// in tonic's framing).
    gzip_body: bool,
}

impl OtlpTransport {
    /// Builds the sender. Must run inside a tokio runtime (the gRPC channel spawns its worker).
    pub fn new(cfg: &OtlpConfig) -> Result<Self, ExportError> {
        // Every request carries the agent's mark, so no tracer ever makes spans of it.
        let headers = marked_headers(&cfg.headers);
        let sender = match cfg.protocol {
            OtlpProtocol::Grpc => Sender::Grpc(GrpcSender::new(cfg, &headers)?),
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                Sender::Http(HttpSender::new(cfg, &headers)?)
            }
        };
        Ok(OtlpTransport {
            sender,
            protocol: cfg.protocol,
            timeout: cfg.timeout,
            encoder: TraceEncoder::new(),
            scratch: Vec::new(),
            max_request_bytes: MAX_REQUEST_BYTES,
            gzip_body: cfg.protocol != OtlpProtocol::Grpc
                && cfg.compression == Some(OtlpCompression::Gzip),
        })
    }

    /// Encodes `items` as request bodies (protobuf, or JSON for http/json; gzip-compressed here
    /// for HTTP when configured), in batch order: one request unless its protobuf form would pass
    /// [`MAX_REQUEST_BYTES`], then as many as needed, cut between spans. Every item is in exactly
    /// one request. Bodies are reference-counted, so retries neither copy nor re-compress them.
    pub fn encode<B: Borrow<ExportItem>>(&mut self, items: &[B]) -> Vec<EncodedRequest> {
        let mut requests = Vec::with_capacity(1);
        // Ranges still to encode, the next one last.
        let mut pending = vec![(0, items.len())];
        while let Some((start, end)) = pending.pop() {
            let Some(chunk) = items.get(start..end).filter(|c| !c.is_empty()) else {
                continue;
            };
            self.scratch.clear();
            self.encoder.encode(chunk, &mut self.scratch);
            let size = self.scratch.len();
            if size > self.max_request_bytes && chunk.len() > 1 {
                // Cut where the size says the first part fits (spans are usually alike); a part
                // still too large is cut again.
                let keep =
                    (chunk.len() as u128 * self.max_request_bytes as u128 / size as u128) as usize;
                let keep = keep.clamp(1, chunk.len() - 1);
                pending.push((start + keep, end));
                pending.push((start, start + keep));
                continue;
            }
            requests.push(EncodedRequest {
                spans: chunk.len() as u64,
                body: self.body(),
            });
        }
        requests
    }

    /// Lowers the request size cap (tests).
    #[cfg(test)]
    pub fn set_max_request_bytes(&mut self, cap: usize) {
        self.max_request_bytes = cap;
    }

    /// The wire body of the request in `scratch`.
    fn body(&self) -> Result<Bytes, AttemptFailure> {
        let body = match self.protocol {
            OtlpProtocol::Grpc | OtlpProtocol::HttpProtobuf => {
                Bytes::copy_from_slice(&self.scratch)
            }
            OtlpProtocol::HttpJson => traces_json(&self.scratch)
                .map(Bytes::from)
                .map_err(|e| AttemptFailure::permanent(e.to_string()))?,
        };
        if self.gzip_body {
            return gzip(&body).map_err(|e| AttemptFailure::permanent(format!("gzip: {e}")));
        }
        Ok(body)
    }

    /// Sends one encoded request. Returns the request latency on success.
    pub async fn export(&mut self, body: Bytes) -> Result<Delivered, AttemptFailure> {
        let started = Instant::now();
        let limit = self.timeout + ATTEMPT_GRACE;
        let attempt = async {
            match &mut self.sender {
                Sender::Http(http) => http.send(body).await,
                Sender::Grpc(grpc) => grpc.send(body).await,
            }
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(rejected_spans)) => Ok(Delivered {
                latency: started.elapsed(),
                rejected_spans,
            }),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(AttemptFailure::transient(format!(
                "export did not finish within {limit:?}"
            ))),
        }
    }
}

/// Shortest time between two partial-success warnings (the first is logged at once).
pub const PARTIAL_SUCCESS_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Rate limit for a repeated warning: the first occurrence, then at most one per interval, with
/// the number of occurrences not logged in between.
#[derive(Debug, Default)]
pub struct WarnLimiter {
    state: std::sync::Mutex<WarnState>,
}

#[derive(Debug, Default)]
struct WarnState {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    pub const fn new() -> Self {
        WarnLimiter {
            state: std::sync::Mutex::new(WarnState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(occurrences suppressed since the last logged one)` when this occurrence at `now`
    /// should be logged, `None` when it is suppressed.
    pub fn admit(&self, now: Instant, interval: Duration) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

static PARTIAL_SUCCESS_WARNINGS: WarnLimiter = WarnLimiter::new();

/// Logs an OTLP partial success (rate-limited: first occurrence, then at most once a minute).
/// The receiver's text could echo anything: only a length-bounded, URL-redacted form is shown.
pub fn warn_partial_success(rejected_spans: i64, error_message: &str) {
    if rejected_spans <= 0 && error_message.is_empty() {
        return;
    }
    let Some(suppressed) =
        PARTIAL_SUCCESS_WARNINGS.admit(Instant::now(), PARTIAL_SUCCESS_LOG_INTERVAL)
    else {
        return;
    };
    let text: String = error_message.chars().take(200).collect();
    tracing::warn!(
        rejected_spans,
        message = %crate::telemetry::redact::urls_in(&text),
        similar_warnings_suppressed = suppressed,
        "OTLP receiver rejected part of a batch (counted as dropped, reason rejected_by_receiver; \
         logged at most once a minute)"
    );
}

/// The configured headers with `User-Agent` replaced by the agent's mark (the configured value,
/// if any, kept after it).
pub fn marked_headers(configured: &[(String, String)]) -> Vec<(String, String)> {
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
        crate::capture::own::marked_user_agent(theirs),
    ));
    headers
}

/// Validated header pairs as an HTTP header map.
pub fn header_map(headers: &[(String, String)]) -> Result<http::HeaderMap, ExportError> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (key, value) in headers {
        let name = http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|e| ExportError::Header(format!("{key}: {e}")))?;
        // The value may be a credential: never quoted in the error.
        let value = http::HeaderValue::from_str(value)
            .map_err(|e| ExportError::Header(format!("{key}: {e}")))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_carries_headers_and_rejects_invalid_ones() {
        let headers = vec![("x-tenant".to_string(), "team-a".to_string())];
        let map = header_map(&headers).unwrap();
        assert_eq!(
            map.get("x-tenant").and_then(|v| v.to_str().ok()),
            Some("team-a")
        );
        assert!(header_map(&[("bad key".to_string(), "v".to_string())]).is_err());
        let error = header_map(&[("k".to_string(), "secret\nbreak".to_string())]).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn partial_success_warnings_are_rate_limited() {
        let limiter = WarnLimiter::new();
        let minute = Duration::from_secs(60);
        let t0 = Instant::now();
        assert_eq!(
            limiter.admit(t0, minute),
            Some(0),
            "the first one is logged"
        );
        assert_eq!(limiter.admit(t0 + Duration::from_secs(1), minute), None);
        assert_eq!(limiter.admit(t0 + Duration::from_secs(59), minute), None);
        assert_eq!(
            limiter.admit(t0 + Duration::from_secs(60), minute),
            Some(2),
            "one a minute, saying how many were not logged"
        );
        assert_eq!(limiter.admit(t0 + Duration::from_secs(61), minute), None);
        assert_eq!(
            limiter.admit(t0 + Duration::from_secs(200), minute),
            Some(1)
        );
    }

    #[test]
    fn every_export_carries_the_agent_mark() {
        let plain = marked_headers(&[("x-tenant".to_string(), "a".to_string())]);
        assert_eq!(
            plain,
            vec![
                ("x-tenant".to_string(), "a".to_string()),
                ("User-Agent".to_string(), crate::capture::own::user_agent()),
            ]
        );
        let theirs = marked_headers(&[("user-agent".to_string(), "acme/1".to_string())]);
        assert_eq!(
            theirs,
            vec![(
                "User-Agent".to_string(),
                format!("{} acme/1", crate::capture::own::user_agent())
            )]
        );
        let map = header_map(&plain).unwrap();
        assert_eq!(
            map.get("user-agent").and_then(|v| v.to_str().ok()),
            Some(crate::capture::own::user_agent().as_str())
        );
    }
}
