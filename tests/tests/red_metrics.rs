//! RED metrics end to end: the agent measures every exchange of an uninstrumented Python server
//! and of the curl processes calling it in the semconv duration histograms, exports them to a real
//! OTLP metrics receiver and shows the same counts on its Prometheus page (read with the
//! Prometheus client library's parser). Also: spans and metrics can each be turned off, and the
//! delta temporality preference sends each measurement once. And the service graph (Tempo's
//! metric names) for curl -> hub -> backend with no trace headers: each request counted once per
//! edge, with curl (not traced) as a virtual client node.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, metric, number_data_point,
};
use tracer_tests::metrics_client::scrape;
use tracer_tests::peers::{PEER_START_TIMEOUT, peer_script, python};
use tracer_tests::span::hex;
use tracer_tests::{
    Agent, AgentConfig, ChildGuard, ObservedKind, OtlpProtocol, OtlpReceiver, PythonServer, curl,
    free_port, local_url, wait_for_port,
};

/// How long a test waits for the metrics it expects.
const WAIT: Duration = Duration::from_secs(60);
/// `OTEL_METRIC_EXPORT_INTERVAL` in these tests (ms).
const INTERVAL_MS: &str = "300";
/// The semconv boundaries the agent must use.
const BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Attributes a server duration point may carry (never a raw path or query).
const SERVER_KEYS: [&str; 6] = [
    "http.request.method",
    "http.response.status_code",
    "error.type",
    "url.scheme",
    "network.protocol.version",
    "http.route",
];

/// One histogram point as received.
#[derive(Clone, Debug)]
struct Point {
    service: String,
    attributes: BTreeMap<String, String>,
    count: u64,
    bucket_counts: Vec<u64>,
    explicit_bounds: Vec<f64>,
    exemplar_trace_ids: Vec<String>,
    temporality: i32,
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn point(service: &str, p: &HistogramDataPoint, temporality: i32) -> Point {
    Point {
        service: service.to_owned(),
        attributes: p
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                )
            })
            .collect(),
        count: p.count,
        bucket_counts: p.bucket_counts.clone(),
        explicit_bounds: p.explicit_bounds.clone(),
        exemplar_trace_ids: p.exemplars.iter().map(|e| hex(&e.trace_id)).collect(),
        temporality,
    }
}

/// The points of histogram `name` in one request.
fn points(request: &ExportMetricsServiceRequest, name: &str) -> Vec<Point> {
    let mut out = Vec::new();
    for rm in &request.resource_metrics {
        let service = rm
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for sm in &rm.scope_metrics {
            for m in sm.metrics.iter().filter(|m| m.name == name) {
                assert_eq!(m.unit, "s", "{name} is in seconds");
                let Some(metric::Data::Histogram(h)) = &m.data else {
                    panic!("{name} is not a histogram: {m:?}")
                };
                out.extend(
                    h.data_points
                        .iter()
                        .map(|p| point(&service, p, h.aggregation_temporality)),
                );
            }
        }
    }
    out
}

/// Server points of `service` in the last request that has any (cumulative: the latest state).
fn latest_server_points(requests: &[ExportMetricsServiceRequest], service: &str) -> Vec<Point> {
    requests
        .iter()
        .rev()
        .map(|r| {
            points(r, "http.server.request.duration")
                .into_iter()
                .filter(|p| p.service == service)
                .collect::<Vec<_>>()
        })
        .find(|p| !p.is_empty())
        .unwrap_or_default()
}

fn total(points: &[Point]) -> u64 {
    points.iter().map(|p| p.count).sum()
}

fn wait_metrics(
    receiver: &OtlpReceiver,
    agent: &mut Agent,
    what: &str,
    condition: impl FnMut(&[ExportMetricsServiceRequest]) -> bool,
) -> Vec<ExportMetricsServiceRequest> {
    match receiver.wait_for_metrics(WAIT, condition) {
        Ok(requests) => requests,
        Err(last) => {
            let seen: Vec<_> = last
                .iter()
                .flat_map(|r| points(r, "http.server.request.duration"))
                .collect();
            panic!(
                "waited {WAIT:?} for {what}; {} metrics request(s), server points {seen:#?}\n\
                 --- agent stderr ---\n{}",
                last.len(),
                agent.stderr_text()
            )
        }
    }
}

/// The samples of the OpenMetrics page as the Prometheus Python client's parser reads them:
/// (sample name, labels, value). Panics if the page does not parse.
fn parse_prometheus(page: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    const SCRIPT: &str = "import json, sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       print(json.dumps([s.name, s.labels, s.value]))\n";
    // The system interpreter: `cargo xtask setup` installs the parser there.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (cargo xtask setup installs python3-prometheus-client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write the page to the parser");
    let output = child.wait_with_output().expect("parser output");
    assert!(
        output.status.success(),
        "the Prometheus parser refused the page: {}\n{page}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<(String, BTreeMap<String, String>, f64)>(line)
                .unwrap_or_else(|e| panic!("parser line {line:?}: {e}"))
        })
        .collect()
}

#[test]
fn red_histograms_count_every_request_on_otlp_and_prometheus() {
    const SERVICE: &str = "red-shop";
    let port = free_port();
    let server = PythonServer::start(port, SERVICE);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .env("OTEL_METRIC_EXPORT_INTERVAL", INTERVAL_MS)
        .export_to(&receiver)
        .start();
    let mut sent = 0u64;
    let mut get = |path: &str, status: u16| {
        assert_eq!(curl(&[&server.url(path)]).status, status, "{path}");
        sent += 1;
    };
    for _ in 0..6 {
        get("/ok?user=42", 200);
    }
    for _ in 0..2 {
        get("/slow?ms=600", 200);
    }
    for _ in 0..2 {
        get("/status/404", 404);
    }
    for _ in 0..2 {
        get("/status/500", 500);
    }
    assert_eq!(sent, 12);

    let requests = wait_metrics(&receiver, &mut agent, "12 server requests", |r| {
        total(&latest_server_points(r, SERVICE)) == sent
    });
    let server_points = latest_server_points(&requests, SERVICE);
    let by_status = |status: &str| -> Vec<&Point> {
        server_points
            .iter()
            .filter(|p| {
                p.attributes
                    .get("http.response.status_code")
                    .map(String::as_str)
                    == Some(status)
            })
            .collect()
    };
    for p in &server_points {
        assert_eq!(
            p.temporality,
            AggregationTemporality::Cumulative as i32,
            "cumulative by default"
        );
        assert_eq!(p.explicit_bounds, BOUNDARIES, "semconv boundaries");
        assert_eq!(p.bucket_counts.len(), BOUNDARIES.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        for key in p.attributes.keys() {
            assert!(
                SERVER_KEYS.contains(&key.as_str()),
                "unexpected attribute {key} in {p:?}"
            );
        }
        assert_eq!(
            p.attributes.get("http.request.method").map(String::as_str),
            Some("GET")
        );
        assert_eq!(
            p.attributes.get("url.scheme").map(String::as_str),
            Some("http")
        );
        assert_eq!(
            p.attributes
                .get("network.protocol.version")
                .map(String::as_str),
            Some("1.1")
        );
        assert!(!p.exemplar_trace_ids.is_empty(), "no exemplar on {p:?}");
    }
    // One series per status: /ok and /slow share theirs (no raw path in the attributes).
    let ok = by_status("200");
    assert_eq!(ok.len(), 1, "{server_points:#?}");
    assert_eq!(ok[0].count, 8);
    // The two 600 ms requests fall in (0.5, 0.75]; the quick ones at or below 0.5 s.
    assert_eq!(
        ok[0].bucket_counts[8], 2,
        "slow requests in (0.5, 0.75]: {:?}",
        ok[0]
    );
    assert_eq!(
        ok[0].bucket_counts[..8].iter().sum::<u64>(),
        6,
        "{:?}",
        ok[0]
    );
    let not_found = by_status("404");
    assert_eq!((not_found.len(), not_found[0].count), (1, 2));
    assert_eq!(
        not_found[0].attributes.get("error.type"),
        None,
        "4xx is no server error"
    );
    let failed = by_status("500");
    assert_eq!((failed.len(), failed[0].count), (1, 2));
    assert_eq!(
        failed[0].attributes.get("error.type").map(String::as_str),
        Some("500")
    );

    // The curl processes' side: one client series per process, 12 requests over all of them.
    let client: Vec<Point> = points(
        requests.last().expect("a request"),
        "http.client.request.duration",
    )
    .into_iter()
    .filter(|p| p.attributes.get("server.port") == Some(&port.to_string()))
    .collect();
    assert_eq!(total(&client), sent, "client points {client:#?}");
    assert!(
        client
            .iter()
            .all(|p| p.attributes.contains_key("server.address"))
    );

    // Every exemplar names a span the receiver got.
    let exemplars: Vec<String> = server_points
        .iter()
        .chain(&client)
        .flat_map(|p| p.exemplar_trace_ids.clone())
        .collect();
    let spans = receiver
        .wait_for(WAIT, |spans| {
            exemplars
                .iter()
                .all(|id| spans.iter().any(|s| &s.trace_id == id))
        })
        .unwrap_or_else(|e| panic!("exemplar trace ids {exemplars:?} not all exported: {e}"));
    assert!(
        exemplars
            .iter()
            .all(|id| spans.iter().any(|s| &s.trace_id == id
                && matches!(s.kind, ObservedKind::Server | ObservedKind::Client))),
        "{exemplars:?}"
    );

    // The Prometheus page: the same counts, with target_info for the server process.
    agent.wait_settled();
    let page = scrape(agent.metrics_addr());
    let samples = parse_prometheus(&page);
    let sum_of = |name: &str, filter: &dyn Fn(&BTreeMap<String, String>) -> bool| -> f64 {
        samples
            .iter()
            .filter(|(n, labels, _)| n == name && filter(labels))
            .map(|(_, _, v)| v)
            .sum()
    };
    let ours =
        |l: &BTreeMap<String, String>| l.get("service_name").map(String::as_str) == Some(SERVICE);
    assert_eq!(
        sum_of("http_server_request_duration_seconds_count", &ours),
        12.0,
        "{page}"
    );
    assert_eq!(
        sum_of("http_server_request_duration_seconds_count", &|l| ours(l)
            && l.get("http_response_status_code").map(String::as_str)
                == Some("500")
            && l.get("error_type").map(String::as_str) == Some("500")),
        2.0
    );
    assert_eq!(
        sum_of("http_server_request_duration_seconds_bucket", &|l| ours(l)
            && l.get("http_response_status_code").map(String::as_str)
                == Some("200")
            && l.get("le").map(String::as_str) == Some("0.5")),
        6.0,
        "cumulative buckets"
    );
    assert_eq!(
        sum_of("http_client_request_duration_seconds_count", &|l| l
            .get("server_port")
            == Some(&port.to_string())),
        12.0
    );
    let target = samples
        .iter()
        .find(|(n, l, _)| n == "target_info" && l.get("job").map(String::as_str) == Some(SERVICE))
        .unwrap_or_else(|| panic!("no target_info for {SERVICE}:\n{page}"));
    assert_eq!(target.1.get("process_pid"), Some(&server.pid().to_string()));
    assert!(target.1.contains_key("instance"));
    assert_eq!(sum_of("tracer_red_overflow_points_total", &|_| true), 0.0);
    agent.stop().assert_success();
}

#[test]
fn spans_and_metrics_can_each_be_turned_off() {
    let port = free_port();
    let server = PythonServer::start(port, "red-switch");

    // --no-spans: metrics only.
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .arg("--no-spans")
        .env("OTEL_METRIC_EXPORT_INTERVAL", INTERVAL_MS)
        .export_to(&receiver)
        .start();
    for _ in 0..3 {
        curl(&[&server.url("/ok")]);
    }
    wait_metrics(&receiver, &mut agent, "3 server requests over gRPC", |r| {
        total(&latest_server_points(r, "red-switch")) == 3
    });
    agent.wait_settled();
    agent.stop().assert_success();
    assert!(receiver.spans().is_empty(), "--no-spans exported spans");
    assert_eq!(receiver.stats().export_requests, 0);

    // --no-metrics: spans only, and nothing but the agent's own counters on /metrics.
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .arg("--no-metrics")
        .env("OTEL_METRIC_EXPORT_INTERVAL", INTERVAL_MS)
        .export_to(&receiver)
        .start();
    for _ in 0..3 {
        curl(&[&server.url("/ok")]);
    }
    receiver
        .wait_for(WAIT, |spans| {
            spans
                .iter()
                .filter(|s| {
                    s.kind == ObservedKind::Server
                        && s.attr_int("server.port") == Some(i64::from(port))
                })
                .count()
                == 3
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.stderr_text()));
    let page = agent.wait_settled();
    assert!(
        !page.contains("http_server_request_duration_seconds"),
        "{page}"
    );
    assert!(
        !page.contains("traces_service_graph"),
        "the service graph is off with the RED metrics: {page}"
    );
    agent.stop().assert_success();
    assert!(
        receiver.metric_requests().is_empty(),
        "--no-metrics exported metrics"
    );
}

#[test]
fn delta_temporality_sends_each_request_once() {
    const SERVICE: &str = "red-delta";
    let port = free_port();
    let server = PythonServer::start(port, SERVICE);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .env("OTEL_METRIC_EXPORT_INTERVAL", INTERVAL_MS)
        .env("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
        .export_to(&receiver)
        .start();
    let all_server_points = |r: &[ExportMetricsServiceRequest]| -> Vec<Point> {
        r.iter()
            .flat_map(|r| points(r, "http.server.request.duration"))
            .filter(|p| p.service == SERVICE)
            .collect()
    };
    curl(&[&server.url("/ok")]);
    curl(&[&server.url("/ok")]);
    wait_metrics(&receiver, &mut agent, "the first two requests", |r| {
        total(&all_server_points(r)) >= 2
    });
    curl(&[&server.url("/ok")]);
    let requests = wait_metrics(&receiver, &mut agent, "the third request", |r| {
        total(&all_server_points(r)) >= 3
    });
    agent.wait_settled();
    agent.stop().assert_success();
    // Summed over every delta point sent (the last export at shutdown included), each request
    // counts once: cumulative points would add up to more.
    assert!(!requests.is_empty());
    let seen = all_server_points(&receiver.metric_requests());
    assert_eq!(total(&seen), 3, "{seen:#?}");
    assert!(
        seen.iter()
            .all(|p| p.temporality == AggregationTemporality::Delta as i32 && p.count > 0),
        "{seen:#?}"
    );
}

/// One service graph point as received: its labels and its value (a count, or a histogram's
/// count).
type EdgePoint = (BTreeMap<String, String>, u64);

/// The points of service graph metric `name` (a monotonic sum or a histogram) in one request.
fn edge_points(request: &ExportMetricsServiceRequest, name: &str) -> Vec<EdgePoint> {
    let labels = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        attrs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let mut out = Vec::new();
    for m in request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == name)
    {
        match &m.data {
            Some(metric::Data::Sum(sum)) => {
                assert!(sum.is_monotonic, "{name} is a counter");
                for p in &sum.data_points {
                    let Some(number_data_point::Value::AsInt(v)) = p.value else {
                        panic!("{name}: not an integer point {p:?}")
                    };
                    out.push((labels(&p.attributes), v as u64));
                }
            }
            Some(metric::Data::Histogram(h)) => {
                assert_eq!(m.unit, "s", "{name} is in seconds");
                for p in &h.data_points {
                    assert_eq!(
                        p.explicit_bounds,
                        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8],
                        "Tempo's default service graph buckets"
                    );
                    out.push((labels(&p.attributes), p.count));
                }
            }
            other => panic!("{name}: unexpected data {other:?}"),
        }
    }
    out
}

/// The value of the edge `client -> server` (`virtual_node`: with
/// `connection_type="virtual_node"`) among `points`; 0 when absent.
fn edge_value(points: &[EdgePoint], client: &str, server: &str, virtual_node: bool) -> u64 {
    points
        .iter()
        .filter(|(l, _)| {
            l.get("client").map(String::as_str) == Some(client)
                && l.get("server").map(String::as_str) == Some(server)
                && l.get("connection_type").map(String::as_str)
                    == virtual_node.then_some("virtual_node")
        })
        .map(|(_, v)| v)
        .sum()
}

/// curl (not traced: the agent follows the hubs and the backend by pid) -> hub -> backend, no
/// trace headers. Two hub processes of one service: one calls the backend's `/ok`, the other its
/// `/status/500` (and answers 502). Each request is counted exactly once on each edge: curl's
/// side as a virtual client node named by its address, hub -> backend from the two traced ends
/// (the backend's SERVER span joined with the hub's CLIENT span through the connection pair),
/// with both durations; the same numbers on the Prometheus page; and nothing else involving these
/// services (no second count of a request as client-only or server-only after the wait).
#[test]
fn service_graph_counts_each_request_once_per_edge_without_headers() {
    const HUB: &str = "sg-hub";
    const BACKEND: &str = "sg-backend";
    const OK: u64 = 5;
    const FAILING: u64 = 3;
    const SENT: u64 = OK + FAILING;
    let backend = PythonServer::start(free_port(), BACKEND);
    let start_hub = |backend_url: String| {
        let port = free_port();
        let mut command = std::process::Command::new(python());
        command
            .arg("-u")
            .arg(peer_script("hub.py"))
            .arg("serve")
            .args(["--port", &port.to_string(), "--backend", &backend_url])
            .env("OTEL_SERVICE_NAME", HUB);
        let hub = ChildGuard::spawn("hub", command);
        assert!(
            wait_for_port(port, PEER_START_TIMEOUT),
            "the hub did not listen on {port}\n{}",
            hub.output_report()
        );
        (hub, port)
    };
    let (hub_ok, ok_port) = start_hub(backend.url("/ok"));
    let (hub_failing, failing_port) = start_hub(backend.url("/status/500"));
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent = AgentConfig::new()
        .pid(hub_ok.pid())
        .pid(hub_failing.pid())
        .pid(backend.pid())
        .env("OTEL_METRIC_EXPORT_INTERVAL", INTERVAL_MS)
        .export_to(&receiver)
        .start();
    for id in 0..OK {
        let url = local_url(ok_port, &format!("/fanout?id={id}"));
        assert_eq!(curl(&[&url]).status, 200, "{}", hub_ok.output_report());
    }
    for id in 0..FAILING {
        let url = local_url(failing_port, &format!("/fanout?id={id}"));
        assert_eq!(curl(&[&url]).status, 502, "{}", hub_failing.output_report());
    }

    let last_total = |r: &[ExportMetricsServiceRequest]| -> Vec<EdgePoint> {
        r.last()
            .map(|r| edge_points(r, "traces_service_graph_request_total"))
            .unwrap_or_default()
    };
    if let Err(last) = receiver.wait_for_metrics(WAIT, |r| {
        let total = last_total(r);
        edge_value(&total, "127.0.0.1", HUB, true) == SENT
            && edge_value(&total, HUB, BACKEND, false) == SENT
    }) {
        panic!(
            "waited {WAIT:?} for {SENT} requests on both edges; last request_total points \
             {:#?}\n--- agent stderr ---\n{}",
            last_total(&last),
            agent.stderr_text()
        );
    }
    // Every span has met its other end or been counted alone: nothing is left to count twice.
    let pending_zero = |page: &str| page.lines().any(|l| l == "tracer_service_graph_pending 0");
    agent.wait_metrics("no span waiting for its other end", pending_zero);
    let page = agent.wait_settled();
    assert!(pending_zero(&page), "{page}");
    let samples = parse_prometheus(&page);
    agent.stop().assert_success();

    // The last export (at shutdown, cumulative) holds everything.
    let requests = receiver.metric_requests();
    let last = requests.last().expect("metrics requests");
    let ours = |points: Vec<EdgePoint>| -> Vec<EdgePoint> {
        points
            .into_iter()
            .filter(|(l, _)| {
                [HUB, BACKEND].iter().any(|s| {
                    l.get("client") == Some(&s.to_string())
                        || l.get("server") == Some(&s.to_string())
                })
            })
            .collect()
    };
    let total = ours(edge_points(last, "traces_service_graph_request_total"));
    let failed = ours(edge_points(
        last,
        "traces_service_graph_request_failed_total",
    ));
    let server_seconds = ours(edge_points(
        last,
        "traces_service_graph_request_server_seconds",
    ));
    let client_seconds = ours(edge_points(
        last,
        "traces_service_graph_request_client_seconds",
    ));
    assert_eq!(total.len(), 2, "exactly the two edges: {total:#?}");
    assert_eq!(
        edge_value(&total, "127.0.0.1", HUB, true),
        SENT,
        "{total:#?}"
    );
    assert_eq!(edge_value(&total, HUB, BACKEND, false), SENT, "{total:#?}");
    assert_eq!(
        edge_value(&failed, "127.0.0.1", HUB, true),
        FAILING,
        "{failed:#?}"
    );
    assert_eq!(
        edge_value(&failed, HUB, BACKEND, false),
        FAILING,
        "{failed:#?}"
    );
    // Both durations of the traced edge; only the server's of the virtual one.
    assert_eq!(edge_value(&server_seconds, HUB, BACKEND, false), SENT);
    assert_eq!(edge_value(&client_seconds, HUB, BACKEND, false), SENT);
    assert_eq!(edge_value(&server_seconds, "127.0.0.1", HUB, true), SENT);
    assert_eq!(
        edge_value(&client_seconds, "127.0.0.1", HUB, true),
        0,
        "curl is not traced: no client duration"
    );

    // The Prometheus page, read by the Prometheus client library's parser.
    let prom = |name: &str, client: &str, server: &str, virtual_node: bool| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.get("client").map(String::as_str) == Some(client)
                    && l.get("server").map(String::as_str) == Some(server)
                    && l.get("connection_type").map(String::as_str)
                        == virtual_node.then_some("virtual_node")
            })
            .map(|(_, _, v)| v)
            .sum()
    };
    let n = SENT as f64;
    let f = FAILING as f64;
    assert_eq!(
        prom("traces_service_graph_request_total", "127.0.0.1", HUB, true),
        n,
        "{page}"
    );
    assert_eq!(
        prom("traces_service_graph_request_total", HUB, BACKEND, false),
        n,
        "{page}"
    );
    assert_eq!(
        prom(
            "traces_service_graph_request_failed_total",
            "127.0.0.1",
            HUB,
            true
        ),
        f
    );
    assert_eq!(
        prom(
            "traces_service_graph_request_failed_total",
            HUB,
            BACKEND,
            false
        ),
        f
    );
    assert_eq!(
        prom(
            "traces_service_graph_request_server_seconds_count",
            HUB,
            BACKEND,
            false
        ),
        n
    );
    assert_eq!(
        prom(
            "traces_service_graph_request_client_seconds_count",
            HUB,
            BACKEND,
            false
        ),
        n
    );
    let edges_on_page = samples
        .iter()
        .filter(|(name, l, _)| {
            name == "traces_service_graph_request_total"
                && [HUB, BACKEND].iter().any(|s| {
                    l.get("client").map(String::as_str) == Some(s)
                        || l.get("server").map(String::as_str) == Some(s)
                })
        })
        .count();
    assert_eq!(edges_on_page, 2, "{page}");
}

/// Both ends traced and the client sends a `traceparent` (an instrumented client): the server's
/// span takes its parent from the header, not from curl's CLIENT span, yet the linker's
/// connection pair still joins the two and the request is counted once on curl -> backend, not
/// twice as two halves with virtual nodes.
#[test]
fn service_graph_counts_header_linked_requests_once_when_both_ends_are_traced() {
    const BACKEND: &str = "sg-header-backend";
    const SENT: u64 = 3;
    let port = free_port();
    let backend = PythonServer::start(port, BACKEND);
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .env("OTEL_METRIC_EXPORT_INTERVAL", INTERVAL_MS)
        .export_to(&receiver)
        .start();
    for i in 0..SENT {
        let header = format!(
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e47{i:02x}-00f067aa0ba902b{i:x}-01"
        );
        assert_eq!(curl(&["-H", &header, &backend.url("/ok")]).status, 200);
    }
    let last_total = |r: &[ExportMetricsServiceRequest]| -> Vec<EdgePoint> {
        r.last()
            .map(|r| edge_points(r, "traces_service_graph_request_total"))
            .unwrap_or_default()
    };
    if let Err(last) = receiver.wait_for_metrics(WAIT, |r| {
        edge_value(&last_total(r), "curl", BACKEND, false) == SENT
    }) {
        panic!(
            "waited {WAIT:?} for {SENT} requests on curl -> {BACKEND}; last request_total points \
             {:#?}\n--- agent stderr ---\n{}",
            last_total(&last),
            agent.stderr_text()
        );
    }
    let pending_zero = |page: &str| page.lines().any(|l| l == "tracer_service_graph_pending 0");
    agent.wait_metrics("no span waiting for its other end", pending_zero);
    agent.wait_settled();
    agent.stop().assert_success();
    let requests = receiver.metric_requests();
    let total = edge_points(
        requests.last().expect("metrics requests"),
        "traces_service_graph_request_total",
    );
    let involved: Vec<&EdgePoint> = total
        .iter()
        .filter(|(l, _)| {
            l.get("server").map(String::as_str) == Some(BACKEND)
                || l.get("client").map(String::as_str) == Some("curl")
        })
        .collect();
    assert_eq!(
        involved.len(),
        1,
        "one edge only, no virtual halves: {involved:#?}"
    );
    assert_eq!(
        edge_value(&total, "curl", BACKEND, false),
        SENT,
        "{total:#?}"
    );
    drop(backend);
}
