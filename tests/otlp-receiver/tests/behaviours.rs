//! The receiver's own contract: behaviours switch at run time over HTTP and gRPC, scripts apply
//! to the next requests, hooks see what was accepted, malformed requests are counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use otlp_receiver::{Behaviour, Config, Hooks, Protocol, Receiver, Signal, TRACES_PATH};
use prost::Message;

fn sample_request(service: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".to_owned(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.to_owned())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "GET".to_owned(),
                    kind: span::SpanKind::Server as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Posts one request on a fresh connection: the status and `Retry-After`, or `None` when nothing
/// accepts the connection or it is reset.
fn post(receiver: &Receiver, content_type: &str, body: &[u8]) -> Option<(u16, Option<String>)> {
    let mut stream = TcpStream::connect(receiver.addr()).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let head = format!(
        "POST {TRACES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let retry_after = response
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .map(str::to_owned);
    Some((status, retry_after))
}

const PROTOBUF: &str = "application/x-protobuf";

#[test]
fn http_behaviours_switch_at_run_time() {
    let kept = Arc::new(Mutex::new(0usize));
    let mut config = Config::new(Protocol::HttpProtobuf);
    config.behaviour = Behaviour::Down;
    let counter = Arc::clone(&kept);
    config.hooks = Hooks {
        traces: Some(Arc::new(move |_| *counter.lock().unwrap() += 1)),
        ..Hooks::default()
    };
    let receiver = Receiver::start_with(config).expect("receiver");
    let body = sample_request("svc").encode_to_vec();
    assert_eq!(post(&receiver, PROTOBUF, &body), None, "down: port closed");

    receiver.set(Behaviour::Refuse {
        status: 429,
        retry_after: Some(Duration::from_secs(3)),
    });
    assert_eq!(
        post(&receiver, PROTOBUF, &body),
        Some((429, Some("3".to_owned())))
    );
    receiver.set(Behaviour::Healthy);
    assert_eq!(post(&receiver, PROTOBUF, &body), Some((200, None)));
    receiver.set(Behaviour::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(post(&receiver, PROTOBUF, &body), Some((200, None)));
    assert!(started.elapsed() >= Duration::from_millis(300));
    receiver.set(Behaviour::Discard);
    assert_eq!(post(&receiver, PROTOBUF, &body), Some((200, None)));
    assert_eq!(*kept.lock().unwrap(), 2, "discarded spans are only counted");

    let attempts = receiver.attempts();
    let statuses: Vec<u16> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [429, 200, 200, 200]);
    assert!(attempts.iter().all(|a| a.services == ["svc"]));
    assert_eq!(attempts[0].batch_key(), attempts[1].batch_key());
    let stats = receiver.stats();
    assert_eq!(
        (stats.requests, stats.spans_accepted, stats.malformed),
        (4, 3, 0)
    );

    receiver.set(Behaviour::Down);
    assert_eq!(post(&receiver, PROTOBUF, &body), None, "down again");
}

#[test]
fn going_down_closes_open_connections_and_comes_back_on_the_same_port() {
    let receiver = Receiver::start(Protocol::HttpProtobuf).expect("receiver");
    let mut idle = TcpStream::connect(receiver.addr()).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.stats().connections == 0 {
        assert!(Instant::now() < deadline, "connection never accepted");
        std::thread::sleep(Duration::from_millis(10));
    }
    receiver.set(Behaviour::Down);
    let mut buf = [0u8; 16];
    let read = idle.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed by the switch: {read:?}"
    );
    receiver.set(Behaviour::Healthy);
    let body = sample_request("back").encode_to_vec();
    assert_eq!(
        post(&receiver, PROTOBUF, &body),
        Some((200, None)),
        "same port"
    );
}

#[test]
fn scripts_apply_to_the_next_requests_then_the_behaviour_again() {
    let mut config = Config::new(Protocol::HttpProtobuf);
    config.script = vec![
        Behaviour::Refuse {
            status: 503,
            retry_after: None,
        },
        Behaviour::PartialSuccess(1),
    ];
    config.keep_requests = true;
    let receiver = Receiver::start_with(config).expect("receiver");
    let body = sample_request("svc").encode_to_vec();
    assert_eq!(post(&receiver, PROTOBUF, &body), Some((503, None)));
    assert_eq!(post(&receiver, PROTOBUF, &body), Some((200, None)));
    assert_eq!(post(&receiver, PROTOBUF, &body), Some((200, None)));
    let accepted: Vec<bool> = receiver.attempts().iter().map(|a| a.accepted).collect();
    assert_eq!(accepted, [false, true, true]);
    assert!(receiver.attempts().iter().all(|a| a.traces.is_some()));
}

#[test]
fn json_bodies_and_malformed_requests() {
    let receiver = Receiver::start(Protocol::HttpProtobuf).expect("receiver");
    let json = serde_json::to_vec(&sample_request("json-svc")).expect("json");
    assert_eq!(
        post(&receiver, "application/json", &json),
        Some((200, None))
    );
    assert_eq!(
        post(&receiver, PROTOBUF, b"\xff\xff\xff"),
        Some((400, None))
    );
    assert_eq!(post(&receiver, "text/plain", b"x"), Some((415, None)));
    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].services, ["json-svc"]);
    assert_eq!(receiver.stats().malformed, 2);
}

#[test]
fn raw_hook_counts_without_decoding() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut config = Config::new(Protocol::HttpProtobuf);
    config.decode = false;
    config.log_attempts = false;
    let sink = Arc::clone(&seen);
    config.hooks.raw = Some(Arc::new(move |signal, bytes: &[u8]| {
        sink.lock().unwrap().push((signal, bytes.len()));
    }));
    let receiver = Receiver::start_with(config).expect("receiver");
    let body = sample_request("svc").encode_to_vec();
    assert_eq!(post(&receiver, PROTOBUF, &body), Some((200, None)));
    assert_eq!(*seen.lock().unwrap(), [(Signal::Traces, body.len())]);
    assert!(receiver.attempts().is_empty());
}

#[test]
fn grpc_answers_per_behaviour_and_keeps_metadata() {
    let mut config = Config::new(Protocol::Grpc);
    config.script = vec![Behaviour::GrpcStatus(tonic::Code::Unavailable)];
    let receiver = Receiver::start_with(config).expect("receiver");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime.block_on(async {
        let mut client = TraceServiceClient::connect(receiver.endpoint())
            .await
            .expect("connect");
        let mut results = Vec::new();
        for _ in 0..2 {
            let mut request = tonic::Request::new(sample_request("grpc-svc"));
            request
                .metadata_mut()
                .insert("x-test", "yes".parse().expect("ascii"));
            results.push(client.export(request).await.map_err(|s| s.code()));
        }
        results
    });
    assert_eq!(results[0].as_ref().err(), Some(&tonic::Code::Unavailable));
    assert!(results[1].is_ok());
    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].grpc_code, Some(tonic::Code::Unavailable));
    assert!(attempts[1].accepted && attempts[1].grpc_code.is_none());
    assert_eq!(attempts[1].header("x-test"), Some("yes"));
    assert_eq!(attempts[1].services, ["grpc-svc"]);
}
