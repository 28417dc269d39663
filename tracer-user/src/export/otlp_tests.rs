//! End-to-end tests of the OTLP sink against real in-process receivers (gRPC and HTTP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};

use super::{
    BatchConfig, BatchExporter, OtlpCompression, OtlpConfig, OtlpProtocol, RetryConfig, SinkConfig,
    SpanSink, build_sink,
};
use crate::model::{
    AttrValue, Attribute, ExportItem, ProcessResource, SpanKind, SpanRecord, SpanStatus,
};
use otlp_receiver::{AttemptLog, Behaviour, Protocol, Receiver};

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
        attributes: smallvec::smallvec![
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

/// The one OTLP receiver (the `otlp-receiver` crate) for `protocol`, on `addr` (a free port when
/// None), answering `script` first and healthy after, keeping every decoded request.
fn start_receiver(
    protocol: OtlpProtocol,
    addr: Option<SocketAddr>,
    script: Vec<Behaviour>,
) -> Receiver {
    let mut config = otlp_receiver::Config::new(match protocol {
        OtlpProtocol::Grpc => Protocol::Grpc,
        _ => Protocol::HttpProtobuf,
    });
    if let Some(addr) = addr {
        config.bind = addr;
    }
    config.script = script;
    config.keep_requests = true;
    Receiver::start_with(config).expect("OTLP receiver starts")
}

/// A local address nothing listens on (bound, then released).
async fn unused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// (service.name, span) for every span in accepted requests, in arrival order.
fn accepted_spans(receiver: &Receiver) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for request in receiver.attempts().into_iter().filter(|r| r.accepted) {
        for rs in request.traces.into_iter().flat_map(|b| b.resource_spans) {
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
async fn wait_for_spans(receiver: &Receiver, n: usize, timeout: Duration) -> Vec<(String, Span)> {
    let until = Instant::now() + timeout;
    loop {
        let spans = accepted_spans(receiver);
        if spans.len() >= n || Instant::now() >= until {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn round_trip(protocol: OtlpProtocol, compression: Option<OtlpCompression>) -> Receiver {
    let receiver = start_receiver(protocol, None, Vec::new());
    let mut cfg = config(protocol, receiver.addr());
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
    assert_eq!(stats.export_batches, 1, "one request per batch");
    assert_eq!(stats.export_retries, 0);
    assert_sample_received(accepted_spans(&receiver));
    for request in receiver.attempts() {
        let body = request.traces.expect("decoded body");
        assert_eq!(
            body.resource_spans.len(),
            2,
            "one ResourceSpans per process resource"
        );
        assert!(
            request
                .headers
                .iter()
                .any(|(k, v)| k == "x-tenant" && v == "team-a"),
            "{:?}",
            request.headers
        );
        // The agent's mark, so that no tracer makes spans of this request (see `crate::capture::own`).
        let user_agent = request
            .headers
            .iter()
            .find(|(k, _)| k == "user-agent")
            .map(|(_, v)| v.as_str());
        assert!(
            user_agent.is_some_and(|ua| ua.starts_with(&crate::capture::own::user_agent())),
            "{:?}",
            request.headers
        );
    }
    receiver
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_round_trip() {
    let receiver = round_trip(OtlpProtocol::Grpc, None).await;
    for request in receiver.attempts() {
        // The configured 5 s timeout travels as the gRPC deadline.
        let timeout = request
            .headers
            .iter()
            .find(|(k, _)| k == "grpc-timeout")
            .map(|(_, v)| v.clone());
        assert_eq!(
            timeout.as_deref(),
            Some("5000000u"),
            "{:?}",
            request.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_round_trip() {
    let receiver = round_trip(OtlpProtocol::Grpc, Some(OtlpCompression::Gzip)).await;
    for request in receiver.attempts() {
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
    for request in receiver.attempts() {
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
    for request in receiver.attempts() {
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

    let receiver = start_receiver(protocol, Some(addr), Vec::new());
    let spans = wait_for_spans(&receiver, 3, PATIENCE).await;
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
    script: Vec<Behaviour>,
) -> (super::ExportStatsSnapshot, Receiver) {
    let receiver = start_receiver(protocol, None, script);
    let cfg = config(protocol, receiver.addr());
    let sink = SpanSink::Otlp(BatchExporter::start(&cfg).unwrap());
    sink.submit(sample_items().remove(0));
    let stats = sink.shutdown(PATIENCE).await;
    (stats, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_is_retried_honouring_retry_after() {
    let script = vec![
        Behaviour::Refuse {
            status: 503,
            retry_after: Some(Duration::from_secs(1)),
        },
        Behaviour::Refuse {
            status: 429,
            retry_after: None,
        },
    ];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::HttpProtobuf, script).await;
    let seen = receiver.attempts();
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
    let script = vec![Behaviour::Refuse {
        status: 400,
        retry_after: None,
    }];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::HttpProtobuf, script).await;
    assert_eq!(receiver.attempts().len(), 1);
    assert_eq!(stats.export_retries, 0);
    assert_eq!(stats.spans_exported, 0);
    assert_eq!(stats.spans_dropped_export_failed, 1);
    assert_eq!(stats.export_batches_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_transient_failures_exhaust_attempts() {
    let script = vec![
        Behaviour::Refuse {
            status: 502,
            retry_after: None
        };
        10
    ];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::HttpProtobuf, script).await;
    assert_eq!(receiver.attempts().len(), 5, "max_attempts");
    assert_eq!(stats.export_retries, 4);
    assert_eq!(stats.spans_dropped_export_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried() {
    let script = vec![
        Behaviour::GrpcStatus(tonic::Code::Unavailable),
        Behaviour::GrpcStatus(tonic::Code::DeadlineExceeded),
    ];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::Grpc, script).await;
    assert_eq!(receiver.attempts().len(), 3);
    assert_eq!(stats.export_retries, 2);
    assert_eq!(stats.spans_exported, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_invalid_argument_is_not_retried() {
    let script = vec![Behaviour::GrpcStatus(tonic::Code::InvalidArgument)];
    let (stats, receiver) = export_one_with_script(OtlpProtocol::Grpc, script).await;
    assert_eq!(receiver.attempts().len(), 1);
    assert_eq!(stats.export_retries, 0);
    assert_eq!(stats.spans_dropped_export_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_a_partial_batch() {
    let receiver = start_receiver(OtlpProtocol::Grpc, None, Vec::new());
    let mut cfg = config(OtlpProtocol::Grpc, receiver.addr());
    cfg.batch.schedule_delay = Duration::from_secs(3600);
    cfg.batch.max_export_batch_size = 256;
    let sink = build_sink(&SinkConfig::Otlp(cfg)).await.unwrap();
    for item in sample_items() {
        sink.submit(item);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.attempts().is_empty(),
        "partial batch waits for the schedule delay"
    );
    let stats = sink.shutdown(PATIENCE).await;
    assert_eq!(stats.spans_exported, 3);
    assert_eq!(stats.spans_dropped_shutdown, 0);
    assert_sample_received(accepted_spans(&receiver));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batch_is_sent_without_waiting_for_the_delay() {
    let receiver = start_receiver(OtlpProtocol::HttpProtobuf, None, Vec::new());
    let mut cfg = config(OtlpProtocol::HttpProtobuf, receiver.addr());
    cfg.batch.schedule_delay = Duration::from_secs(3600);
    cfg.batch.max_export_batch_size = 3;
    let sink = build_sink(&SinkConfig::Otlp(cfg)).await.unwrap();
    for item in sample_items() {
        sink.submit(item);
    }
    assert_sample_received(wait_for_spans(&receiver, 3, PATIENCE).await);
    sink.shutdown(PATIENCE).await;
}

/// Batches handed over as the event thread hands them (vectors of any size, reused after each
/// hand-over) arrive whole, once and in order, in export batches of their own size limit: the
/// queue holds the hand-over's vectors and splits one that passes an export batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_batches_arrive_once_and_in_order() {
    let receiver = start_receiver(OtlpProtocol::HttpProtobuf, None, Vec::new());
    let mut cfg = config(OtlpProtocol::HttpProtobuf, receiver.addr());
    cfg.batch.schedule_delay = Duration::from_millis(50);
    cfg.batch.max_export_batch_size = 7;
    let sink = build_sink(&SinkConfig::Otlp(cfg)).await.unwrap();
    let template = sample_items().remove(0);
    let mut out = Vec::new();
    let mut next = 0u32;
    for size in [1usize, 5, 7, 16, 3, 0, 9, 2] {
        for _ in 0..size {
            let mut item = template.clone();
            item.span.span_id = [0; 8];
            item.span.span_id[..4].copy_from_slice(&next.to_be_bytes());
            item.span.span_id[7] = 1;
            next += 1;
            out.push(item);
        }
        sink.submit_batch(&mut out);
        assert!(out.is_empty(), "the hand-over empties the batch");
    }
    let spans = wait_for_spans(&receiver, next as usize, PATIENCE).await;
    let ids: Vec<u32> = spans
        .iter()
        .map(|(_, s)| u32::from_be_bytes([s.span_id[0], s.span_id[1], s.span_id[2], s.span_id[3]]))
        .collect();
    assert_eq!(ids, (0..next).collect::<Vec<_>>());
    assert!(
        receiver.attempts().iter().all(|r| r
            .traces
            .iter()
            .flat_map(|t| &t.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum::<usize>()
            <= 7),
        "no export passes its batch size"
    );
    let stats = sink.shutdown(PATIENCE).await;
    assert_eq!(stats.spans_exported, u64::from(next));
    assert_eq!(
        stats.spans_dropped_queue_full + stats.spans_dropped_shutdown,
        0
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_https_is_refused_at_start_not_sent_in_clear() {
    let mut cfg = config(OtlpProtocol::Grpc, unused_addr().await);
    cfg.endpoint = "https://user:secret@collector.invalid:4317".into();
    let error = build_sink(&SinkConfig::Otlp(cfg))
        .await
        .expect_err("no TLS for gRPC in this build");
    let text = error.to_string();
    assert!(text.contains("http/protobuf"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gzip_round_trip() {
    let receiver = round_trip(OtlpProtocol::HttpProtobuf, Some(OtlpCompression::Gzip)).await;
    for request in receiver.attempts() {
        assert!(
            request
                .headers
                .iter()
                .any(|(k, v)| k == "content-encoding" && v == "gzip"),
            "{:?}",
            request.headers
        );
    }
}

/// Exports the three sample spans (one request) to a receiver answering a partial success.
async fn partial_success(protocol: OtlpProtocol, rejected: i64) -> super::ExportStatsSnapshot {
    let receiver = start_receiver(protocol, None, vec![Behaviour::PartialSuccess(rejected)]);
    let sink = build_sink(&SinkConfig::Otlp(config(protocol, receiver.addr())))
        .await
        .unwrap();
    for item in sample_items() {
        sink.submit(item);
    }
    let stats = sink.shutdown(PATIENCE).await;
    assert_eq!(
        receiver.attempts().len(),
        1,
        "a partial success is not retried"
    );
    assert_eq!(stats.spans_enqueued, 3);
    assert_eq!(stats.export_batches, 1);
    assert_eq!(stats.export_retries, 0);
    assert_eq!(stats.spans_dropped_shutdown, 0, "{stats:?}");
    assert_eq!(
        stats.spans_exported + stats.spans_dropped_rejected,
        3,
        "every span is accounted for once: {stats:?}"
    );
    stats
}

async fn rejected_spans_are_not_counted_as_exported(protocol: OtlpProtocol) {
    let stats = partial_success(protocol, 2).await;
    assert_eq!(stats.spans_exported, 1, "{protocol:?}: {stats:?}");
    assert_eq!(stats.spans_dropped_rejected, 2, "{protocol:?}: {stats:?}");
    // A receiver claiming more rejections than the request held: capped at the request.
    let stats = partial_success(protocol, 1000).await;
    assert_eq!(stats.spans_exported, 0, "{protocol:?}: {stats:?}");
    assert_eq!(stats.spans_dropped_rejected, 3, "{protocol:?}: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_partial_success_counts_rejected_spans_as_dropped() {
    rejected_spans_are_not_counted_as_exported(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_partial_success_counts_rejected_spans_as_dropped() {
    rejected_spans_are_not_counted_as_exported(OtlpProtocol::HttpProtobuf).await;
}

/// The receiver answers in protobuf JSON as the Collector does, `"rejectedSpans":"2"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_partial_success_counts_rejected_spans_as_dropped() {
    rejected_spans_are_not_counted_as_exported(OtlpProtocol::HttpJson).await;
}

/// `n` spans alternating between two processes, each carrying `blob` bytes in an attribute.
fn large_items(n: u8, blob: usize) -> Vec<ExportItem> {
    let resources = [resource(100, "frontend"), resource(200, "cart")];
    (0..n)
        .map(|i| {
            let resource = Arc::clone(&resources[usize::from(i % 2)]);
            let mut span = record(
                resource.pid,
                i + 1,
                None,
                SpanKind::Server,
                SpanStatus::Unset,
            );
            span.attributes
                .push(crate::model::Attribute::str("test.blob", "x".repeat(blob)));
            ExportItem { span, resource }
        })
        .collect()
}

/// Decodes each request, checks it against the cap, and returns the span ids in request order.
fn span_ids_of(requests: Vec<super::otlp::EncodedRequest>, cap: usize) -> Vec<Vec<u8>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let mut ids = Vec::new();
    for request in requests {
        let body = request.body.expect("encodes");
        assert!(
            body.len() <= cap,
            "request of {} bytes > cap {cap}",
            body.len()
        );
        let decoded = ExportTraceServiceRequest::decode(body).expect("valid request");
        let spans: Vec<Span> = decoded
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect();
        assert_eq!(
            spans.len() as u64,
            request.spans,
            "span count of the request"
        );
        ids.extend(spans.into_iter().map(|s| s.span_id));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_cut_into_requests_below_the_cap() {
    use super::otlp::{MAX_REQUEST_BYTES, OtlpTransport};
    let mut transport =
        OtlpTransport::new(&config(OtlpProtocol::HttpProtobuf, unused_addr().await)).unwrap();
    // 12 spans of 700 KiB (about 8.2 MiB): at least three requests.
    let items = large_items(12, 700 * 1024);
    let requests = transport.encode(&items);
    assert!(requests.len() >= 3, "{} requests", requests.len());
    let mut ids = span_ids_of(requests, MAX_REQUEST_BYTES);
    ids.sort();
    let want: Vec<Vec<u8>> = (1..=12u8).map(|i| vec![i; 8]).collect();
    assert_eq!(ids, want, "every span in exactly one request");

    // A small batch stays one request.
    assert_eq!(transport.encode(&sample_items()).len(), 1);

    // Many small spans under a small cap: cut (and re-cut) between spans, nothing lost.
    transport.set_max_request_bytes(2_000);
    let items = large_items(100, 100);
    let requests = transport.encode(&items);
    assert!(requests.len() >= 5, "{} requests", requests.len());
    let mut ids = span_ids_of(requests, 2_000);
    ids.sort();
    let want: Vec<Vec<u8>> = (1..=100u8).map(|i| vec![i; 8]).collect();
    assert_eq!(ids, want);

    // One span larger than the cap still goes, alone.
    let requests = transport.encode(&large_items(3, 4_000));
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.spans == 1));
}

/// The Collector's gRPC receiver (and tonic's, here) refuses messages over 4 MiB by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_batch_over_the_receive_limit_is_sent_in_parts() {
    let receiver = start_receiver(OtlpProtocol::Grpc, None, Vec::new());
    let mut cfg = config(OtlpProtocol::Grpc, receiver.addr());
    cfg.batch.schedule_delay = Duration::from_secs(3600);
    let sink = build_sink(&SinkConfig::Otlp(cfg)).await.unwrap();
    for item in large_items(8, 1024 * 1024) {
        sink.submit(item);
    }
    let stats = sink.shutdown(PATIENCE).await;
    assert_eq!(stats.spans_exported, 8, "{stats:?}");
    assert_eq!(stats.spans_dropped_export_failed, 0, "{stats:?}");
    assert_eq!(stats.export_batches_failed, 0, "{stats:?}");
    assert!(stats.export_batches >= 3, "{stats:?}");
    assert_eq!(accepted_spans(&receiver).len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gzip_body_is_compressed_once_at_encoding() {
    use super::otlp::OtlpTransport;
    let mut cfg = config(OtlpProtocol::HttpProtobuf, unused_addr().await);
    cfg.compression = Some(OtlpCompression::Gzip);
    let mut transport = OtlpTransport::new(&cfg).unwrap();
    let mut requests = transport.encode(&sample_items());
    assert_eq!(requests.len(), 1);
    let body = requests.remove(0).body.unwrap();
    assert_eq!(body.get(..2), Some(&[0x1f, 0x8b][..]), "gzip magic");
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain).unwrap();
    let decoded = {
        use prost::Message as _;
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
            plain.as_slice(),
        )
        .unwrap()
    };
    assert_eq!(decoded.resource_spans.len(), 2);

    // gRPC compresses in its own framing: the body stays plain protobuf.
    let mut cfg = config(OtlpProtocol::Grpc, unused_addr().await);
    cfg.compression = Some(OtlpCompression::Gzip);
    let mut transport = OtlpTransport::new(&cfg).unwrap();
    let body = transport.encode(&sample_items()).remove(0).body.unwrap();
    assert_ne!(body.get(..2), Some(&[0x1f, 0x8b][..]));
}

/// A retried gzip request is the same compressed body, still readable by the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gzip_retry_resends_a_readable_body() {
    let receiver = start_receiver(
        OtlpProtocol::HttpProtobuf,
        None,
        vec![Behaviour::Refuse {
            status: 503,
            retry_after: None,
        }],
    );
    let mut cfg = config(OtlpProtocol::HttpProtobuf, receiver.addr());
    cfg.compression = Some(OtlpCompression::Gzip);
    let sink = build_sink(&SinkConfig::Otlp(cfg)).await.unwrap();
    for item in sample_items() {
        sink.submit(item);
    }
    let stats = sink.shutdown(PATIENCE).await;
    assert_eq!(stats.export_retries, 1);
    assert_eq!(stats.spans_exported, 3);
    let seen = receiver.attempts();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|r| r.traces.is_some()),
        "both attempts decoded"
    );
    assert_sample_received(accepted_spans(&receiver));
}

/// A TCP proxy to `upstream` that closes its first connection once the receiver has logged a
/// request (so the call is cut after it was sent, before any answer); later connections pass.
async fn proxy_cutting_the_first_call(
    upstream: SocketAddr,
    log: AttemptLog,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let cut = std::mem::take(&mut first);
            let log = log.clone();
            tokio::spawn(async move {
                let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                if cut {
                    let seen = async {
                        while log.attempts().is_empty() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! {
                        _ = relay => {},
                        () = seen => {},
                    }
                } else {
                    let _ = relay.await;
                }
            });
        }
    });
    (addr, task)
}

/// A gRPC call whose connection drops after the request went out (no grpc-status received) is
/// retried, like the same failure over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connection_dropped_mid_call_is_retried() {
    let receiver = start_receiver(OtlpProtocol::Grpc, None, vec![Behaviour::Stall]);
    let (proxy, proxy_task) = proxy_cutting_the_first_call(receiver.addr(), receiver.log()).await;
    let sink = build_sink(&SinkConfig::Otlp(config(OtlpProtocol::Grpc, proxy)))
        .await
        .unwrap();
    for item in sample_items() {
        sink.submit(item);
    }
    let stats = sink.shutdown(PATIENCE).await;
    proxy_task.abort();
    assert_eq!(receiver.attempts().len(), 2, "cut call, then retried");
    assert_eq!(stats.export_retries, 1, "{stats:?}");
    assert_eq!(stats.spans_exported, 3, "{stats:?}");
    assert_eq!(stats.spans_dropped_export_failed, 0, "{stats:?}");
    assert_sample_received(accepted_spans(&receiver));
}
