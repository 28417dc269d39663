//! OTLP export from the real agent: gRPC and HTTP/protobuf, configured by the standard
//! environment variables or by flags, with one resource per traced process.

use tracer_tests::query::{at_least, client_spans, server_spans, the_only};
use tracer_tests::{
    AgentConfig, ObservedSpan, OtlpProtocol, OtlpReceiver, PythonServer, TracedSession, curl,
    free_port,
};

/// Runs one curl against a fresh Python server while `agent` exports to `receiver`, and checks
/// the two spans and their resources arrived.
fn assert_exported(receiver: &OtlpReceiver, agent: AgentConfig, service: &str) {
    let port = free_port();
    let server = PythonServer::start(port, service);
    let agent = agent.ports(&[port]).start();
    let run = curl(&[&server.url("/ok?export=1")]);
    assert_eq!(run.status, 200);
    let arrived = receiver.wait_for(tracer_tests::SPAN_TIMEOUT, at_least(port, 1, 1));
    let exit = agent.stop();
    let spans: Vec<ObservedSpan> = match arrived {
        Ok(_) => receiver.spans(),
        Err(timed_out) => panic!(
            "{timed_out}\nreceiver stats {:?}\n--- agent stderr ---\n{}",
            receiver.stats(),
            exit.stderr
        ),
    };
    exit.assert_success();
    assert_eq!(
        receiver.stats().rejected_requests,
        0,
        "the receiver refused some exports"
    );
    let server_span = the_only(server_spans(&spans, port), "SERVER span", &spans);
    let client_span = the_only(client_spans(&spans, port), "CLIENT span", &spans);
    assert_eq!(server_span.service_name(), Some(service));
    assert_eq!(
        server_span.resource_int("process.pid"),
        Some(i64::from(server.pid()))
    );
    assert_eq!(server_span.attr_str("url.query"), Some("export=1"));
    assert_eq!(client_span.service_name(), Some("curl"));
    assert_eq!(
        client_span.resource_int("process.pid"),
        Some(i64::from(run.pid))
    );
}

#[test]
fn grpc_export_configured_by_environment() {
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
    assert_exported(
        &receiver,
        AgentConfig::new().export_to(&receiver),
        "e2e-otlp-grpc-env",
    );
}

#[test]
fn http_protobuf_export_configured_by_environment() {
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    assert_exported(
        &receiver,
        AgentConfig::new().export_to(&receiver),
        "e2e-otlp-http-env",
    );
}

#[test]
fn grpc_export_configured_by_flags() {
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
    let agent = AgentConfig::new()
        .arg("--otlp-endpoint")
        .arg(receiver.endpoint())
        .arg("--otlp-protocol")
        .arg("grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    assert_exported(&receiver, agent, "e2e-otlp-grpc-flags");
}

#[test]
fn http_protobuf_export_configured_by_flags() {
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let agent = AgentConfig::new()
        .arg("--otlp-endpoint")
        .arg(receiver.endpoint())
        .arg("--otlp-protocol")
        .arg("http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    assert_exported(&receiver, agent, "e2e-otlp-http-flags");
}

#[test]
fn traces_endpoint_variable_is_used_as_is() {
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let agent = AgentConfig::new()
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.traces_url())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    assert_exported(&receiver, agent, "e2e-otlp-traces-endpoint");
}

#[test]
fn spans_of_different_processes_carry_their_own_resource() {
    let port_a = free_port();
    let port_b = free_port();
    let server_a = PythonServer::start(port_a, "e2e-otlp-service-a");
    let server_b = PythonServer::start(port_b, "e2e-otlp-service-b");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port_a, port_b]);
    assert_eq!(curl(&[&server_a.url("/ok")]).status, 200);
    assert_eq!(curl(&[&server_b.url("/ok")]).status, 200);
    session.wait_for("both servers' spans", |spans| {
        at_least(port_a, 1, 1)(spans) && at_least(port_b, 1, 1)(spans)
    });
    let spans = session.finish();
    let a = the_only(server_spans(&spans, port_a), "SERVER span of A", &spans);
    let b = the_only(server_spans(&spans, port_b), "SERVER span of B", &spans);
    assert_eq!(a.service_name(), Some("e2e-otlp-service-a"));
    assert_eq!(
        a.resource_int("process.pid"),
        Some(i64::from(server_a.pid()))
    );
    assert_eq!(b.service_name(), Some("e2e-otlp-service-b"));
    assert_eq!(
        b.resource_int("process.pid"),
        Some(i64::from(server_b.pid()))
    );
    assert_ne!(a.trace_id, b.trace_id, "separate requests, separate traces");
}
