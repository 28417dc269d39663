//! OTLP over HTTP (http/protobuf and http/json): one `reqwest` client that POSTs encoded batches
//! and returns the outcome typed (status code and `Retry-After`, or a transport error).
//!
//! The client never follows redirects: a redirect would carry the configured headers (API keys,
//! tenant tokens) to whatever host the `Location` names. A 3xx answer is a failed export, counted
//! like any other. Transport errors are reported without their URL (it may carry credentials).

use std::io::Write as _;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;

use super::ExportError;
use super::config::{OtlpCompression, OtlpConfig, OtlpProtocol};
use super::otlp::{AttemptFailure, header_map};
use super::retry::{classify_http_status, parse_retry_after};

/// Most response-body bytes read for a partial-success answer (the rest is ignored).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Sends OTLP/HTTP requests to one endpoint.
pub struct HttpSender {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: http::HeaderMap,
    json: bool,
    gzip: bool,
}

/// Without header values or the URL's credentials.
impl std::fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSender")
            .field("url", &crate::telemetry::redact::url(self.url.as_str()))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("json", &self.json)
            .field("gzip", &self.gzip)
            .finish()
    }
}

impl HttpSender {
    /// A client whose requests (including reading the body) time out after the configured
    /// timeout and that does not follow redirects. Nothing is contacted here.
    pub fn new(cfg: &OtlpConfig, headers: &[(String, String)]) -> Result<Self, ExportError> {
        let mut headers = header_map(headers)?;
        let json = cfg.protocol == OtlpProtocol::HttpJson;
        let content_type = if json {
            "application/json"
        } else {
            "application/x-protobuf"
        };
        headers.insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        let gzip = cfg.compression == Some(OtlpCompression::Gzip);
        if gzip {
            headers.insert(CONTENT_ENCODING, http::HeaderValue::from_static("gzip"));
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                ExportError::HttpClient(crate::telemetry::redact::urls_in(&error_chain(&e)))
            })?;
        // The message may quote the URL: shown redacted.
        let url = reqwest::Url::parse(&cfg.endpoint).map_err(|e| {
            ExportError::HttpClient(format!(
                "invalid endpoint {}: {e}",
                crate::telemetry::redact::url(&cfg.endpoint)
            ))
        })?;
        Ok(HttpSender {
            client,
            url,
            headers,
            json,
            gzip,
        })
    }

    /// POSTs one encoded request (already gzip-compressed when configured: see
    /// [`OtlpTransport::encode`](super::otlp::OtlpTransport::encode)); returns the spans the
    /// receiver reported as rejected.
    pub async fn send(&self, body: Bytes) -> Result<u64, AttemptFailure> {
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let message = without_url(&e);
                tracing::debug!(error = %message, "OTLP HTTP request failed");
                AttemptFailure::transient(format!("HTTP export failed: {message}"))
            })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let class = classify_http_status(status.as_u16(), retry_after);
            return Err(AttemptFailure {
                class,
                message: format!("HTTP export failed with status {}", status.as_u16()),
            });
        }
        Ok(rejected_spans(&read_bounded(response).await, self.json))
    }
}

/// Gzip-compresses a request body.
pub fn gzip(body: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::default());
    encoder.write_all(body)?;
    encoder.finish().map(Bytes::from)
}

/// Up to [`MAX_RESPONSE_BODY`] bytes of the response body (a read error ends it early: the
/// export itself was accepted).
async fn read_bounded(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BODY.saturating_sub(body.len());
        body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        if body.len() >= MAX_RESPONSE_BODY {
            break;
        }
    }
    body
}

/// `partial_success.rejected_spans` of a success answer (0 when absent or unreadable).
pub fn rejected_spans(body: &[u8], json: bool) -> u64 {
    if body.is_empty() {
        return 0;
    }
    let (rejected, message) = if json {
        let Ok(response) = serde_json::from_slice::<JsonResponse>(body) else {
            return 0;
        };
        let Some(partial) = response.partial_success else {
            return 0;
        };
        (partial.rejected_spans.0, partial.error_message)
    } else {
        let Some(partial) = ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
        else {
            return 0;
        };
        (partial.rejected_spans, partial.error_message)
    };
    super::otlp::warn_partial_success(rejected, &message);
    u64::try_from(rejected).unwrap_or(0)
}

/// The OTLP/JSON `ExportTraceServiceResponse`, read leniently: protobuf JSON writes int64 as a
/// string (`"rejectedSpans":"7"`, as the Collector does) but parsers accept a number too, and
/// the proto field names are accepted besides the camelCase ones.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonResponse {
    #[serde(alias = "partial_success")]
    partial_success: Option<JsonPartialSuccess>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonPartialSuccess {
    #[serde(alias = "rejected_spans")]
    rejected_spans: JsonInt64,
    #[serde(alias = "error_message")]
    error_message: String,
}

/// A protobuf JSON int64: a number or a decimal string (0 when neither).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct JsonInt64(i64);

impl<'de> serde::Deserialize<'de> for JsonInt64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            Number(i64),
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        Ok(JsonInt64(match Form::deserialize(deserializer)? {
            Form::Number(n) => n,
            Form::Text(text) => text.trim().parse().unwrap_or(0),
            Form::Other(_) => 0,
        }))
    }
}

/// A reqwest error's text and causes, without the request URL reqwest adds to it.
fn without_url(error: &reqwest::Error) -> String {
    let text = error_chain(error);
    let text = match error.url() {
        Some(url) => text.replace(url.as_str(), "(url not shown)"),
        None => text,
    };
    crate::telemetry::redact::urls_in(&text)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    #[test]
    fn partial_success_is_read_from_protobuf_and_json() {
        let response = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 7,
                error_message: "too old".into(),
            }),
        };
        assert_eq!(rejected_spans(&response.encode_to_vec(), false), 7);
        let json = serde_json::to_vec(&response).unwrap();
        assert_eq!(rejected_spans(&json, true), 7);
        assert_eq!(rejected_spans(b"", false), 0);
        assert_eq!(rejected_spans(b"\xff\xff garbage", false), 0);
        assert_eq!(rejected_spans(b"{}", true), 0);
        assert_eq!(
            rejected_spans(b"{\"partialSuccess\":{\"rejectedSpans\":-3}}", true),
            0
        );
    }

    #[test]
    fn json_partial_success_int64_as_string_or_number() {
        // The Collector's protobuf JSON writes int64 as a string.
        let collector = br#"{"partialSuccess":{"rejectedSpans":"7","errorMessage":"too old"}}"#;
        assert_eq!(rejected_spans(collector, true), 7);
        let number = br#"{"partialSuccess":{"rejectedSpans":7}}"#;
        assert_eq!(rejected_spans(number, true), 7);
        let proto_names = br#"{"partial_success":{"rejected_spans":"12"}}"#;
        assert_eq!(rejected_spans(proto_names, true), 12);
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":"-3"}}"#, true),
            0
        );
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":"x"}}"#, true),
            0
        );
        assert_eq!(
            rejected_spans(br#"{"partialSuccess":{"rejectedSpans":1.5}}"#, true),
            0
        );
        assert_eq!(rejected_spans(br#"{"partialSuccess":{}}"#, true), 0);
        assert_eq!(rejected_spans(br#"{"partialSuccess":null}"#, true), 0);
        assert_eq!(rejected_spans(br#"[1,2]"#, true), 0);
    }

    #[test]
    fn gzip_round_trips() {
        let body = vec![7u8; 10_000];
        let packed = gzip(&body).unwrap();
        assert!(packed.len() < body.len());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&packed[..]), &mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
