//! The OTLP/HTTP side of the receiver: a small HTTP/1.1 server taking `POST /v1/traces` with a
//! protobuf (or OTLP JSON) `ExportTraceServiceRequest`, optionally gzip-compressed.

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;

use bytes::Bytes;
use flate2::read::GzDecoder;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::span::ObservedSpan;
use crate::store::SpanStore;

/// The OTLP/HTTP traces path.
pub const TRACES_PATH: &str = "/v1/traces";
/// The OTLP/HTTP metrics path.
pub const METRICS_PATH: &str = "/v1/metrics";
/// Largest accepted body, compressed or not.
const MAX_BODY_BYTES: usize = 64 << 20;

/// An accepted export request.
enum Export {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// Body encodings OTLP/HTTP allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("no such path {0}")]
    NotFound(String),
    #[error("method {0} not allowed")]
    MethodNotAllowed(Method),
    #[error("unsupported content type {0:?}")]
    UnsupportedMediaType(Option<String>),
    #[error("unsupported content encoding {0:?}")]
    UnsupportedEncoding(String),
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("reading the body: {0}")]
    Read(String),
    #[error("decoding the body: {0}")]
    Decode(String),
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound(_) => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::UnsupportedMediaType(_) | Rejection::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Read(_) | Rejection::Decode(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Serves OTLP/HTTP on `listener` until `stopped` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    store: SpanStore,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| handle(request, store.clone()));
                        if let Err(e) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            eprintln!("OTLP HTTP receiver: connection error: {e}");
                        }
                    });
                }
                Err(e) => {
                    eprintln!("OTLP HTTP receiver: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
        }
    }
}

async fn handle(
    request: Request<Incoming>,
    store: SpanStore,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match read_export(request).await {
        Ok((export, encoding)) => {
            match export {
                Export::Traces(export) => store.record(ObservedSpan::from_otlp(&export)),
                Export::Metrics(export) => store.record_metrics(export),
            }
            success_response(encoding)
        }
        Err(rejection) => {
            eprintln!("OTLP HTTP receiver: refused a request: {rejection}");
            store.record_rejection();
            let mut response = Response::new(Full::new(Bytes::from(rejection.to_string())));
            *response.status_mut() = rejection.status();
            response
        }
    };
    Ok(response)
}

async fn read_export(request: Request<Incoming>) -> Result<(Export, Encoding), Rejection> {
    let metrics = match request.uri().path() {
        TRACES_PATH => false,
        METRICS_PATH => true,
        other => return Err(Rejection::NotFound(other.to_owned())),
    };
    if request.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed(request.method().clone()));
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let encoding = match content_type.as_deref() {
        Some("application/x-protobuf" | "application/protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        _ => return Err(Rejection::UnsupportedMediaType(content_type)),
    };
    let gzipped = match request.headers().get(CONTENT_ENCODING).map(|v| v.to_str()) {
        None => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("gzip") => true,
        Some(other) => {
            return Err(Rejection::UnsupportedEncoding(format!("{other:?}")));
        }
    };
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Rejection::TooLarge
            } else {
                Rejection::Read(e.to_string())
            }
        })?
        .to_bytes();
    let body = if gzipped { gunzip(&body)? } else { body };
    let decode_error = |e: &dyn std::fmt::Display| Rejection::Decode(e.to_string());
    let export = match (encoding, metrics) {
        (Encoding::Protobuf, false) => {
            Export::Traces(ExportTraceServiceRequest::decode(body).map_err(|e| decode_error(&e))?)
        }
        (Encoding::Json, false) => {
            Export::Traces(serde_json::from_slice(&body).map_err(|e| decode_error(&e))?)
        }
        (Encoding::Protobuf, true) => Export::Metrics(
            ExportMetricsServiceRequest::decode(body).map_err(|e| decode_error(&e))?,
        ),
        (Encoding::Json, true) => {
            Export::Metrics(serde_json::from_slice(&body).map_err(|e| decode_error(&e))?)
        }
    };
    Ok((export, encoding))
}

fn gunzip(compressed: &[u8]) -> Result<Bytes, Rejection> {
    let mut out = Vec::new();
    GzDecoder::new(compressed)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Rejection::Read(format!("gzip: {e}")))?;
    if out.len() > MAX_BODY_BYTES {
        return Err(Rejection::TooLarge);
    }
    Ok(Bytes::from(out))
}

fn success_response(encoding: Encoding) -> Response<Full<Bytes>> {
    let (body, content_type) = match encoding {
        Encoding::Protobuf => (
            ExportTraceServiceResponse {
                partial_success: None,
            }
            .encode_to_vec(),
            "application/x-protobuf",
        ),
        Encoding::Json => (b"{}".to_vec(), "application/json"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use prost::Message;

    use crate::receiver::{OtlpProtocol, OtlpReceiver};
    use crate::test_data::sample_request;

    /// Sends one HTTP/1.1 request on a fresh connection and returns the status code and body.
    fn post(
        receiver: &OtlpReceiver,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(receiver.addr()).expect("connect to receiver");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            receiver.addr(),
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(body).expect("write body");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read response");
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let body_start = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(response.len(), |p| p + 4);
        (
            status,
            response.get(body_start..).unwrap_or_default().to_vec(),
        )
    }

    #[test]
    fn protobuf_post_is_collected() {
        let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
        let body = sample_request("http-svc", 99).encode_to_vec();
        let (status, response) = post(
            &receiver,
            "/v1/traces",
            &[("Content-Type", "application/x-protobuf")],
            &body,
        );
        assert_eq!(status, 200);
        assert!(
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
                response.as_slice()
            )
            .is_ok()
        );
        let spans = receiver.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service_name(), Some("http-svc"));
        assert_eq!(spans[0].resource_int("process.pid"), Some(99));
        assert_eq!(spans[0].attr_str("url.path"), Some("/ok"));
        assert_eq!(receiver.stats().export_requests, 1);
    }

    #[test]
    fn gzip_protobuf_post_is_collected() {
        let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder
            .write_all(&sample_request("gz", 5).encode_to_vec())
            .expect("compress");
        let body = encoder.finish().expect("finish gzip");
        let (status, _) = post(
            &receiver,
            "/v1/traces",
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "gzip"),
            ],
            &body,
        );
        assert_eq!(status, 200);
        assert_eq!(
            receiver
                .spans()
                .first()
                .and_then(|s| s.service_name().map(str::to_owned)),
            Some("gz".to_owned())
        );
    }

    #[test]
    fn otlp_json_post_is_collected() {
        let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
        let body = serde_json::to_vec(&sample_request("json-svc", 3)).expect("serialize OTLP JSON");
        let (status, response) = post(
            &receiver,
            "/v1/traces",
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(status, 200);
        assert_eq!(response, b"{}");
        let spans = receiver.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service_name(), Some("json-svc"));
        assert_eq!(spans[0].trace_id, "01".repeat(16));
    }

    #[test]
    fn wrong_path_type_or_body_is_refused_and_counted() {
        let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
        let body = sample_request("x", 1).encode_to_vec();
        assert_eq!(
            post(
                &receiver,
                "/v1/logs",
                &[("Content-Type", "application/x-protobuf")],
                &body
            )
            .0,
            404
        );
        assert_eq!(
            post(
                &receiver,
                "/v1/traces",
                &[("Content-Type", "text/plain")],
                &body
            )
            .0,
            415
        );
        assert_eq!(
            post(
                &receiver,
                "/v1/traces",
                &[("Content-Type", "application/x-protobuf")],
                b"\xff\xff\xff"
            )
            .0,
            400
        );
        assert!(receiver.spans().is_empty());
        let stats = receiver.stats();
        assert_eq!((stats.export_requests, stats.rejected_requests), (0, 3));
    }
}
