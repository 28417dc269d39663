//! End-to-end tests of the OTLP sink against real in-process receivers (gRPC and HTTP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};

use super::test_receivers::{
    Receiver, Recorder, Reply, listen, start_grpc, start_http, unused_addr,
};
use super::{
    BatchConfig, BatchExporter, OtlpCompression, OtlpConfig, OtlpProtocol, RetryConfig, SinkConfig,
    SpanSink, build_sink,
};
use crate::model::{
    AttrValue, Attribute, ExportItem, ProcessResource, SpanKind, SpanRecord, SpanStatus,
};

const PATIENCE: Duration = Duration::from_secs(30);
const BASE_NS: u64 = 1_700_000_000_123_456_789;

fn endpoint(protocol: OtlpProtocol, addr: SocketAddr) -> String {
    match protocol {
        OtlpProtocol::Grpc => format!("http://{addr}"),
        _ => format!("http://{addr}/v1/traces"),
    }
}

fn config(protocol: OtlpProtocol, addr: SocketAddr) -> OtlpConfig {
    OtlpConfig {
        protocol,
        endpoint: endpoint(protocol, addr),
        headers: vec![("x-tenant".into(), "team-a".into())],
        timeout: Duration::from_secs(5),
        compression: None,
        batch: BatchConfig {
            schedule_delay: Duration::from_millis(50),
            max_queue_size: 256,
            max_export_batch_size: 64,
        },
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            max_attempts: 5,
        },
    }
}

fn resource(pid: u32, service: &str) -> Arc<ProcessResource> {
    Arc::new(ProcessResource {
        pid,
        service_name: service.into(),
        attributes: vec![
            (
                "service.name".into(),
                AttrValue::Str(service.to_string().into()),
            ),
            ("process.pid".into(), AttrValue::Int(i64::from(pid))),
        ],
    })
}

fn record(
    pid: u32,
    span_byte: u8,
    parent: Option<u8>,
    kind: SpanKind,
    status: SpanStatus,
) -> SpanRecord {
    let start = BASE_NS + u64::from(span_byte) * 1_000;
    SpanRecord {
        trace_id: [0x5a; 16],
        span_id: [span_byte; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        trace_state: Some("vendor=1".into()),
        sampled: true,
        name: "GET".into(),
        kind,
        start_unix_ns: start,
        end_unix_ns: start + 2_500_000,
        attributes: vec![
            Attribute::str("http.request.method", "GET"),
            Attribute::str("url.path", format!("/item/{span_byte}")),
            Attribute::int("http.response.status_code", 200),
            Attribute {
                key: "test.flag",
                value: AttrValue::Bool(true),
            },
        ],
        status,
        pid,
    }
}

/// Three spans from two processes: a server root, its client child (frontend), and a server
/// span in another process with an error status.
fn sample_items() -> Vec<ExportItem> {
    let frontend = resource(100, "frontend");
    let cart = resource(200, "cart");
    vec![
        ExportItem {
            span: record(100, 1, None, SpanKind::Server, SpanStatus::Unset),
            resource: Arc::clone(&frontend),
        },
        ExportItem {
            span: record(
                200,
                3,
                Some(2),
                SpanKind::Server,
                SpanStatus::Error {
                    description: "boom".into(),
                },
            ),
            resource: cart,
        },
        ExportItem {
            span: record(100, 2, Some(1), SpanKind::Client, SpanStatus::Unset),
            resource: frontend,
        },
    ]
}

fn attr_str(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

fn attr_int(span: &Span, key: &str) -> Option<i64> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        })
}

/// Checks the received spans against `sample_items`.
fn assert_sample_received(mut spans: Vec<(String, Span)>) {
    assert_eq!(spans.len(), 3, "{spans:?}");
    spans.sort_by_key(|(_, s)| s.span_id.clone());
    let (svc1, root) = &spans[0];
    let (svc2, child) = &spans[1];
    let (svc3, remote) = &spans[2];
    assert_eq!(
        (svc1.as_str(), svc2.as_str(), svc3.as_str()),
        ("frontend", "frontend", "cart")
    );

    assert_eq!(root.trace_id, vec![0x5a; 16]);
    assert_eq!(root.span_id, vec![1; 8]);
    assert!(root.parent_span_id.is_empty(), "root has no parent");
    assert_eq!(root.kind, span::SpanKind::Server as i32);
    assert_eq!(root.name, "GET");
    assert_eq!(root.start_time_unix_nano, BASE_NS + 1_000);
    assert_eq!(root.end_time_unix_nano, BASE_NS + 1_000 + 2_500_000);
    assert_eq!(root.trace_state, "vendor=1");
    assert_eq!(root.flags & 0xff, 1, "sampled flag");
    assert_eq!(attr_str(root, "url.path").as_deref(), Some("/item/1"));
    assert_eq!(attr_int(root, "http.response.status_code"), Some(200));
    assert!(
        root.status
            .as_ref()
            .is_none_or(|s| s.code == status::StatusCode::Unset as i32)
    );

    assert_eq!(child.parent_span_id, vec![1; 8]);
    assert_eq!(child.kind, span::SpanKind::Client as i32);
    assert_eq!(
        attr_str(child, "http.request.method").as_deref(),
        Some("GET")
    );

    assert_eq!(remote.parent_span_id, vec![2; 8]);
    let remote_status = remote.status.as_ref().expect("error status");
    assert_eq!(remote_status.code, status::StatusCode::Error as i32);
    assert_eq!(remote_status.message, "boom");
}

async fn start_receiver(
    protocol: OtlpProtocol,
    listener: tokio::net::TcpListener,
    recorder: Recorder,
) -> Receiver {
    match protocol {
        OtlpProtocol::Grpc => start_grpc(listener, recorder),
        _ => start_http(listener, recorder),
    }
}

async fn round_trip(protocol: OtlpProtocol, compression: Option<OtlpCompression>) -> Receiver {
    let receiver = start_receiver(protocol, listen(None).await, Recorder::default()).await;
    let mut cfg = config(protocol, receiver.addr);
    cfg.compression = compression;
    let sink = build_sink(&SinkConfig::Otlp(cfg))
        .await
        .expect("sink builds");
    for item in sample_items() {
        sink.submit(item);
    }
    let stats = sink.shutdown(PATIENCE).await;
    assert_eq!(stats.spans_enqueued, 3);
    assert_eq!(stats.spans_exported, 3, "{stats:?}");
    assert_eq!(stats.export_batches, 2, "one request per process resource");
    assert_eq!(stats.export_retries, 0);
    assert_sample_received(receiver.recorder.accepted_spans());
    for request in receiver.recorder.seen() {
        let body = request.body.expect("decoded body");
        assert_eq!(body.resource_spans.len(), 1, "one resource per request");
        assert!(
            request
                .headers
                .iter()
                .any(|(k, v)| k == "x-tenant" && v == "team-a"),
            "{:?}",
            request.headers
        );
        // The agent's mark, so that no tracer makes spans of this request (see `crate::own`).
        let user_agent = request
            .headers
            .iter()
            .find(|(k, _)| k == "user-agent")
            .map(|(_, v)| v.as_str());
        assert!(
            user_agent.is_some_and(|ua| ua.starts_with(&crate::own::user_agent())),
            "{:?}",
            request.headers
        );
    }
    receiver
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_round_trip() {
    round_trip(OtlpProtocol::Grpc, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_round_trip() {
    let receiver = round_trip(OtlpProtocol::Grpc, Some(OtlpCompression::Gzip)).await;
    for request in receiver.recorder.seen() {
        assert!(
            request
                .headers
                .iter()
                .any(|(k, v)| k == "grpc-encoding" && v == "gzip"),
            "{:?}",
            request.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_round_trip() {
    let receiver = round_trip(OtlpProtocol::HttpProtobuf, None).await;
    for request in receiver.recorder.seen() {
        assert_eq!(request.path, "/v1/traces");
        assert!(
            request
                .headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/x-protobuf"),
            "{:?}",
            request.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_round_trip() {
    let receiver = round_trip(OtlpProtocol::HttpJson, None).await;
    for request in receiver.recorder.seen() {
        assert!(
            request
                .headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/json"),
            "{:?}",
            request.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_are_counted() {
    let mut cfg = config(OtlpProtocol::HttpProtobuf, unused_addr().await);
    cfg.batch = BatchConfig {
        schedule_delay: Duration::from_millis(10),
        max_queue_size: 4,
        max_export_batch_size: 2,
    };
    // The first batch fails and then waits a long time before retrying, so nothing drains.
    cfg.retry = RetryConfig {
        initial_backoff: Duration::from_secs(600),
        max_backoff: Duration::from_secs(600),
        max_attempts: 100,
    };
    let exporter = BatchExporter::start(&cfg).unwrap();
    let item = &sample_items()[0];
    for _ in 0..100 {
        exporter.submit(item.clone());
    }
    let live = exporter.stats().snapshot();
    assert_eq!(live.spans_enqueued, 100, "submit never refuses: {live:?}");
    assert!(
        live.spans_dropped_queue_full >= 94,
        "at most queue (4) + one batch (2) kept, the oldest evicted: {live:?}"
    );

    let stats = exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.spans_exported, 0);
    assert_eq!(
        stats.spans_dropped_export_failed
            + stats.spans_dropped_shutdown
            + stats.spans_dropped_queue_full,
        stats.spans_enqueued,
        "every accepted span is accounted for: {stats:?}"
    );
}

async fn receiver_down_at_start_then_up(protocol: OtlpProtocol) {
    let addr = unused_addr().await;
    let mut cfg = config(protocol, addr);
    cfg.retry = RetryConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(300),
        max_attempts: 1000,
    };
    let sink = build_sink(&SinkConfig::Otlp(cfg))
        .await
        .expect("unreachable endpoint is not fatal");
    for item in sample_items() {
        sink.submit(item);
    }
    let stats = sink.stats();
    let until = Instant::now() + PATIENCE;
    while stats.snapshot().export_retries == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stats.snapshot().export_retries >= 1,
        "export failed and is being retried"
    );
    assert_eq!(stats.snapshot().spans_exported, 0);

    let receiver = start_receiver(protocol, listen(Some(addr)).await, Recorder::default()).await;
    let spans = receiver.recorder.wait_for_spans(3, PATIENCE).await;
    assert_sample_received(spans);
    let final_stats = sink.shutdown(PATIENCE).await;
    assert_eq!(final_stats.spans_exported, 3);
    assert_eq!(final_stats.spans_dropped_export_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_receiver_down_at_start_then_up() {
    receiver_down_at_start_then_up(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_receiver_down_at_start_then_up() {
    receiver_down_at_start_then_up(OtlpProtocol::HttpProtobuf).await;
}

/// Exports one span to a receiver following `script`; returns final stats and the receiver.
async fn export_one_with_script(
    protocol: OtlpProtocol,
    script: Vec<Reply>,
) -> (super::ExportStatsSnapshot, Receiver) {
    let receiver =
        start_receiver(protocol, listen(None).await, Recorder::with_script(script)).await;
    let cfg = config(protocol, receiver.addr);
    let sink = SpanSink::Otlp(BatchExporter::start(&cfg).unwrap());
    sink.submit(sample_items().remove(0));
    let stats = sink.shutdown(PATIENCE).await;
    (stats, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_is_retried_honouring_retry_after() {
    let script = vec![
        Reply::Http {
            status: 503,
            retry_after: Some(1),
        },
        Reply::Http {
            status: 429,
            retry_after: None,
        },
    ];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::HttpProtobuf, script).await;
    let seen = receiver.recorder.seen();
    assert_eq!(seen.len(), 3, "503, 429, then accepted");
    assert!(seen[2].accepted);
    assert!(
        seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(900),
        "Retry-After: 1 waited at least about a second"
    );
    assert_eq!(stats.export_retries, 2);
    assert_eq!(stats.spans_exported, 1);
    assert_eq!(stats.spans_dropped_export_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_400_is_not_retried() {
    let script = vec![Reply::Http {
        status: 400,
        retry_after: None,
    }];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::HttpProtobuf, script).await;
    assert_eq!(receiver.recorder.seen().len(), 1);
    assert_eq!(stats.export_retries, 0);
    assert_eq!(stats.spans_exported, 0);
    assert_eq!(stats.spans_dropped_export_failed, 1);
    assert_eq!(stats.export_batches_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_transient_failures_exhaust_attempts() {
    let script = vec![
        Reply::Http {
            status: 502,
            retry_after: None
        };
        10
    ];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::HttpProtobuf, script).await;
    assert_eq!(receiver.recorder.seen().len(), 5, "max_attempts");
    assert_eq!(stats.export_retries, 4);
    assert_eq!(stats.spans_dropped_export_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried() {
    let script = vec![
        Reply::Grpc(tonic::Code::Unavailable),
        Reply::Grpc(tonic::Code::DeadlineExceeded),
    ];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::Grpc, script).await;
    assert_eq!(receiver.recorder.seen().len(), 3);
    assert_eq!(stats.export_retries, 2);
    assert_eq!(stats.spans_exported, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_invalid_argument_is_not_retried() {
    let script = vec![Reply::Grpc(tonic::Code::InvalidArgument)];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::Grpc, script).await;
    assert_eq!(receiver.recorder.seen().len(), 1);
    assert_eq!(stats.export_retries, 0);
    assert_eq!(stats.spans_dropped_export_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_a_partial_batch() {
    let receiver = start_grpc(listen(None).await, Recorder::default());
    let mut cfg = config(OtlpProtocol::Grpc, receiver.addr);
    cfg.batch.schedule_delay = Duration::from_secs(3600);
    cfg.batch.max_export_batch_size = 256;
    let sink = build_sink(&SinkConfig::Otlp(cfg)).await.unwrap();
    for item in sample_items() {
        sink.submit(item);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.recorder.seen().is_empty(),
        "partial batch waits for the schedule delay"
    );
    let stats = sink.shutdown(PATIENCE).await;
    assert_eq!(stats.spans_exported, 3);
    assert_eq!(stats.spans_dropped_shutdown, 0);
    assert_sample_received(receiver.recorder.accepted_spans());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batch_is_sent_without_waiting_for_the_delay() {
    let receiver = start_http(listen(None).await, Recorder::default());
    let mut cfg = config(OtlpProtocol::HttpProtobuf, receiver.addr);
    cfg.batch.schedule_delay = Duration::from_secs(3600);
    cfg.batch.max_export_batch_size = 3;
    let sink = build_sink(&SinkConfig::Otlp(cfg)).await.unwrap();
    for item in sample_items() {
        sink.submit(item);
    }
    assert_sample_received(receiver.recorder.wait_for_spans(3, PATIENCE).await);
    sink.shutdown(PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_bounds_an_unreachable_endpoint() {
    let mut cfg = config(OtlpProtocol::Grpc, unused_addr().await);
    cfg.retry = RetryConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(100),
        max_attempts: u32::MAX,
    };
    let sink = build_sink(&SinkConfig::Otlp(cfg)).await.unwrap();
    for item in sample_items() {
        sink.submit(item);
    }
    let stats = sink.shutdown(Duration::from_millis(500)).await;
    assert_eq!(stats.spans_exported, 0);
    assert_eq!(
        stats.spans_dropped_export_failed + stats.spans_dropped_shutdown,
        3,
        "{stats:?}"
    );
}
