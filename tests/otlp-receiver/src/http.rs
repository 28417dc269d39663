//! OTLP/HTTP: POST bodies of protobuf or JSON, gzip or not, on `/v1/traces` and `/v1/metrics`
//! (any other path is taken for traces and logged with its path).

use std::convert::Infallible;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::read::GzDecoder;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::log::{Answered, Export, Signal};
use crate::{Control, Core, MAX_BODY_BYTES, METRICS_PATH, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// Accepts and serves connections until aborted (dropping every connection with it).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    core: Arc<Core>,
    control: watch::Receiver<Control>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    core.shared.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (core, control) = (Arc::clone(&core), control.clone());
                    connections.spawn(async move {
                        let service = service_fn(move |request| {
                            handle(request, Arc::clone(&core), control.clone())
                        });
                        // Errors are the peer going away, which is its right.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
}

async fn handle(
    request: Request<Incoming>,
    core: Arc<Core>,
    control: watch::Receiver<Control>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let signal = if path.ends_with(METRICS_PATH) {
        Signal::Metrics
    } else {
        Signal::Traces
    };
    let shared = &core.shared;
    shared.count_request(signal);
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (export, encoding) =
        match read_export(request, signal, shared.decode, shared.hooks.raw.as_ref()).await {
            Ok(read) => read,
            Err((status, reason)) => {
                shared.count_malformed();
                return Ok(text_response(status, &reason));
            }
        };
    let verdict = match signal {
        Signal::Traces => Verdict::of(&core.next_behaviour(&control)),
        Signal::Metrics => Verdict::of(&crate::Behaviour::Healthy),
    };
    let mut answered = Answered {
        path,
        headers,
        status: 200,
        grpc_code: None,
        accepted: false,
        keep: false,
    };
    let response = match verdict {
        Verdict::Accept {
            keep,
            delay,
            rejected,
        } => {
            answered.accepted = true;
            answered.keep = keep;
            // Logged on arrival; delivered only once answered (a client that gave up on a slow
            // answer did not get its spans accepted).
            shared.log_attempt(&answered, &export);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            shared.deliver(&answered, &export);
            return Ok(success_response(encoding, rejected));
        }
        Verdict::Refuse {
            status,
            retry_after,
        } => {
            answered.status = status;
            let mut response = text_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "refused on purpose",
            );
            if let Some(after) = retry_after
                && let Ok(value) = after.as_secs().to_string().parse()
            {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            response
        }
        Verdict::Grpc(_) => {
            answered.status = 500;
            text_response(StatusCode::INTERNAL_SERVER_ERROR, "gRPC status scripted")
        }
        Verdict::Stall => {
            shared.record(&answered, &export);
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes")
        }
    };
    shared.record(&answered, &export);
    Ok(response)
}

/// The export request in `request` (decoded unless told not to), or the status and reason to
/// refuse it with.
async fn read_export(
    request: Request<Incoming>,
    signal: Signal,
    decode: bool,
    raw: Option<&crate::RawHook>,
) -> Result<(Export, Encoding), (StatusCode, String)> {
    if request.method() != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed", request.method()),
        ));
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
        _ => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content type {content_type:?}"),
            ));
        }
    };
    let gzipped = match request.headers().get(CONTENT_ENCODING).map(|v| v.to_str()) {
        None => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("gzip") => true,
        Some(other) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content encoding {other:?}"),
            ));
        }
    };
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                (StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    let body = if gzipped { gunzip(&body)? } else { body };
    if let Some(raw) = raw
        && encoding == Encoding::Protobuf
    {
        raw(signal, &body);
    }
    if !decode {
        return Ok((Export::Undecoded(signal), encoding));
    }
    let bad =
        |e: &dyn std::fmt::Display| (StatusCode::BAD_REQUEST, format!("decoding the body: {e}"));
    let export = match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => {
            Export::Traces(ExportTraceServiceRequest::decode(body).map_err(|e| bad(&e))?)
        }
        (Signal::Traces, Encoding::Json) => {
            Export::Traces(serde_json::from_slice(&body).map_err(|e| bad(&e))?)
        }
        (Signal::Metrics, Encoding::Protobuf) => {
            Export::Metrics(ExportMetricsServiceRequest::decode(body).map_err(|e| bad(&e))?)
        }
        (Signal::Metrics, Encoding::Json) => {
            Export::Metrics(serde_json::from_slice(&body).map_err(|e| bad(&e))?)
        }
    };
    Ok((export, encoding))
}

fn gunzip(compressed: &[u8]) -> Result<Bytes, (StatusCode, String)> {
    let mut out = Vec::new();
    GzDecoder::new(compressed)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("gzip: {e}")))?;
    if out.len() > MAX_BODY_BYTES {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(Bytes::from(out))
}

fn success_response(encoding: Encoding, rejected: Option<i64>) -> Response<Full<Bytes>> {
    let (body, content_type) = match (encoding, rejected) {
        (Encoding::Protobuf, _) => (
            ExportTraceServiceResponse {
                partial_success: rejected.map(|rejected| ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: "scripted".into(),
                }),
            }
            .encode_to_vec(),
            "application/x-protobuf",
        ),
        (Encoding::Json, None) => (b"{}".to_vec(), "application/json"),
        (Encoding::Json, Some(rejected)) => (
            format!(
                "{{\"partialSuccess\":{{\"rejectedSpans\":\"{rejected}\",\"errorMessage\":\"scripted\"}}}}"
            )
            .into_bytes(),
            "application/json",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn text_response(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    if let Ok(value) = "text/plain".parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}
