//! Real in-process OTLP receivers for tests: a tonic `TraceServiceServer` (gRPC) and a minimal
//! HTTP/1.1 server decoding `ExportTraceServiceRequest` bodies (protobuf or JSON, gzip or not).
//! Both follow a script of replies (accept, or fail with a given status) and record what they
//! received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the receiver answers to the next request.
#[derive(Clone, Debug)]
pub enum Reply {
    Accept,
    /// Accept, answering that this many spans were rejected (OTLP partial success; over HTTP/JSON
    /// with the count as a string, as the Collector writes int64).
    PartialSuccess(i64),
    /// Record the request but never answer (gRPC; the test cuts the connection meanwhile).
    Stall,
    Grpc(tonic::Code),
    Http {
        status: u16,
        retry_after: Option<u32>,
    },
}

/// One request as seen by a receiver.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub at: Instant,
    pub accepted: bool,
    /// Lowercased header / metadata names and values.
    pub headers: Vec<(String, String)>,
    pub path: String,
    pub body: Option<ExportTraceServiceRequest>,
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Reply>,
    seen: Vec<SeenRequest>,
}

/// Recorded requests plus the reply script, shared with the server task.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Shared>>);

impl Recorder {
    pub fn with_script(script: Vec<Reply>) -> Self {
        Recorder(Arc::new(Mutex::new(Shared {
            script: script.into(),
            seen: Vec::new(),
        })))
    }

    fn next_reply(&self) -> Reply {
        self.0
            .lock()
            .unwrap()
            .script
            .pop_front()
            .unwrap_or(Reply::Accept)
    }

    fn record(&self, request: SeenRequest) {
        self.0.lock().unwrap().seen.push(request);
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.0.lock().unwrap().seen.clone()
    }

    /// (service.name, span) for every span in accepted requests, in arrival order.
    pub fn accepted_spans(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for request in self.seen().into_iter().filter(|r| r.accepted) {
            for rs in request.body.into_iter().flat_map(|b| b.resource_spans) {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                    assert_eq!(scope, "tracer", "instrumentation scope name");
                    for span in ss.spans {
                        out.push((service.clone(), span));
                    }
                }
            }
        }
        out
    }

    /// Polls until `n` spans were accepted or `timeout` passes; returns the accepted spans.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<(String, Span)> {
        let until = Instant::now() + timeout;
        loop {
            let spans = self.accepted_spans();
            if spans.len() >= n || Instant::now() >= until {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    pub recorder: Recorder,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// A local address nothing listens on (bound, then released).
pub async fn unused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

pub async fn listen(addr: Option<SocketAddr>) -> TcpListener {
    let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    TcpListener::bind(addr).await.unwrap()
}

struct GrpcCollector {
    recorder: Recorder,
}

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let reply = self.recorder.next_reply();
        let accepted = matches!(reply, Reply::Accept | Reply::PartialSuccess(_));
        self.recorder.record(SeenRequest {
            at: Instant::now(),
            accepted,
            headers,
            path: String::new(),
            body: Some(request.into_inner()),
        });
        match reply {
            Reply::Accept => Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            })),
            Reply::PartialSuccess(rejected) => {
                Ok(tonic::Response::new(ExportTraceServiceResponse {
                    partial_success: Some(partial_success(rejected)),
                }))
            }
            Reply::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(tonic::Status::deadline_exceeded("stalled"))
            }
            Reply::Grpc(code) => Err(tonic::Status::new(code, "scripted failure")),
            Reply::Http { .. } => Err(tonic::Status::internal("HTTP reply scripted for gRPC")),
        }
    }
}

fn partial_success(rejected: i64) -> ExportTracePartialSuccess {
    ExportTracePartialSuccess {
        rejected_spans: rejected,
        error_message: "scripted".into(),
    }
}

/// Starts a gRPC receiver (accepting gzip) on `listener`.
pub fn start_grpc(listener: TcpListener, recorder: Recorder) -> Receiver {
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = TraceServiceServer::new(GrpcCollector {
        recorder: recorder.clone(),
    })
    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let task = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Receiver {
        addr,
        recorder,
        stop: Some(stop),
        task,
    }
}

/// Starts a minimal HTTP/1.1 OTLP receiver on `listener`.
pub fn start_http(listener: TcpListener, recorder: Recorder) -> Receiver {
    let addr = listener.local_addr().unwrap();
    let conn_recorder = recorder.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_http_connection(stream, conn_recorder.clone()));
        }
    });
    Receiver {
        addr,
        recorder,
        stop: None,
        task,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve_http_connection(mut stream: TcpStream, recorder: Recorder) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let mut body: Vec<u8> = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        if header("content-encoding").as_deref() == Some("gzip") {
            let mut plain = Vec::new();
            let inflated = std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(body.as_slice()),
                &mut plain,
            );
            body = if inflated.is_ok() { plain } else { Vec::new() };
        }

        let content_type = header("content-type").unwrap_or_default();
        let decoded = if content_type.starts_with("application/json") {
            serde_json::from_slice::<ExportTraceServiceRequest>(&body).ok()
        } else {
            ExportTraceServiceRequest::decode(body.as_slice()).ok()
        };
        let reply = recorder.next_reply();
        let accepted =
            matches!(reply, Reply::Accept | Reply::PartialSuccess(_)) && decoded.is_some();
        recorder.record(SeenRequest {
            at: Instant::now(),
            accepted,
            headers,
            path,
            body: decoded,
        });
        let response = match reply {
            Reply::Accept if accepted => {
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
                    .to_string()
            }
            Reply::PartialSuccess(rejected) if accepted => {
                let (kind, body) = if content_type.starts_with("application/json") {
                    (
                        "application/json",
                        format!(
                            "{{\"partialSuccess\":{{\"rejectedSpans\":\"{rejected}\",\"errorMessage\":\"scripted\"}}}}"
                        )
                        .into_bytes(),
                    )
                } else {
                    let response = ExportTraceServiceResponse {
                        partial_success: Some(partial_success(rejected)),
                    };
                    ("application/x-protobuf", response.encode_to_vec())
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(&body).await.is_err()
                {
                    return;
                }
                continue;
            }
            Reply::Accept | Reply::PartialSuccess(_) => "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_string(),
            Reply::Http { status, retry_after } => {
                let retry = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
                format!("HTTP/1.1 {status} Scripted\r\n{retry}content-length: 0\r\n\r\n")
            }
            Reply::Grpc(_) | Reply::Stall => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_string(),
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
