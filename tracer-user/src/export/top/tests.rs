//! Unit tests of the `tracer top` aggregation: rows, bounds and overflow, errors, rate, drill-in
//! and service edges.

use super::*;
use crate::model::{Attribute, ProcessResource, SpanRecord};

const NOW: u64 = 1_700_000_000 * 1_000_000_000;

fn resource(pid: u32, name: &str) -> Arc<ProcessResource> {
    Arc::new(ProcessResource {
        pid,
        service_name: name.to_string(),
        attributes: vec![],
    })
}

struct SpanSpec {
    kind: SpanKind,
    path: &'static str,
    status: i64,
    millis: u64,
    trace: u8,
    span: u8,
    parent: Option<u8>,
}

fn server(path: &'static str, status: i64, millis: u64, trace: u8, span: u8) -> SpanSpec {
    SpanSpec {
        kind: SpanKind::Server,
        path,
        status,
        millis,
        trace,
        span,
        parent: None,
    }
}

fn item(res: &Arc<ProcessResource>, s: SpanSpec) -> ExportItem {
    let mut attributes = vec![
        Attribute::str(semconv::HTTP_REQUEST_METHOD, "GET"),
        Attribute::int(semconv::HTTP_RESPONSE_STATUS_CODE, s.status),
    ];
    match s.kind {
        SpanKind::Server => attributes.push(Attribute::str(semconv::URL_PATH, s.path)),
        SpanKind::Client => {
            attributes.push(Attribute::str(
                semconv::URL_FULL,
                format!("http://10.0.0.9:8080{}", s.path),
            ));
            attributes.push(Attribute::str(semconv::SERVER_ADDRESS, "10.0.0.9"));
            attributes.push(Attribute::int(semconv::SERVER_PORT, 8080));
        }
    }
    let error = match s.kind {
        SpanKind::Server => s.status >= 500,
        SpanKind::Client => s.status >= 400,
    };
    ExportItem {
        span: SpanRecord {
            trace_id: [s.trace; 16],
            span_id: [s.span; 8],
            parent_span_id: s.parent.map(|p| [p; 8]),
            trace_state: None,
            sampled: true,
            name: Text::Static("GET"),
            kind: s.kind,
            start_unix_ns: NOW - s.millis * 1_000_000,
            end_unix_ns: NOW,
            attributes: attributes.into(),
            status: if error {
                SpanStatus::Error {
                    description: String::new(),
                }
            } else {
                SpanStatus::Unset
            },
            pid: res.pid,
        },
        resource: Arc::clone(res),
    }
}

fn row<'a>(snapshot: &'a TopSnapshot, service: &str, route: &str) -> &'a RowView {
    snapshot
        .rows
        .iter()
        .find(|r| r.service == service && r.route == route)
        .unwrap_or_else(|| panic!("no row {service} {route} in {:#?}", snapshot.rows))
}

#[test]
fn rows_group_by_template_and_count_errors_and_quantiles() {
    let top = Top::new(TopLimits::default());
    let api = resource(1, "api");
    let mut batch = Vec::new();
    for i in 0..6u8 {
        batch.push(item(
            &api,
            server("/users/17", 200, 10 + u64::from(i), i, i),
        ));
    }
    batch.push(item(
        &api,
        server("/users/42?token=secret", 500, 100, 50, 50),
    ));
    batch.push(item(&api, server("/users/43", 503, 200, 51, 51)));
    top.record_batch_at(&batch, NOW);
    let snap = top.snapshot_at(NOW);
    assert_eq!(snap.rows.len(), 1, "{:#?}", snap.rows);
    let r = row(&snap, "api", "/users/{id}");
    assert_eq!((r.count, r.errors, r.method.as_str()), (8, 2, "GET"));
    assert_eq!(r.error_percent(), 25.0);
    // Rate over the 10 s window: 8 requests in it.
    assert!((r.rate - 0.8).abs() < 1e-9, "{}", r.rate);
    assert!(
        (r.p50 - 13.0).abs() / 13.0 <= sketch::RELATIVE_ACCURACY,
        "{}",
        r.p50
    );
    assert!(
        (r.p99 - 100.0).abs() / 100.0 <= sketch::RELATIVE_ACCURACY,
        "{}",
        r.p99
    );
    // Outside the window the rate drops to zero, the totals stay.
    let later = top.snapshot_at(NOW + 11 * 1_000_000_000);
    assert_eq!(later.rows[0].rate, 0.0);
    assert_eq!(later.rows[0].count, 8);
    assert!(snap.rows.iter().all(|r| !r.route.contains("secret")));
}

#[test]
fn rows_are_bounded_and_the_rest_is_counted_in_one_overflow_row() {
    let top = Top::new(TopLimits {
        rows: 3,
        ..Default::default()
    });
    let api = resource(1, "api");
    let paths = ["/a", "/b", "/c", "/d", "/e", "/a", "/d"];
    let batch: Vec<ExportItem> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| item(&api, server(p, 200, 5, i as u8, i as u8)))
        .collect();
    top.record_batch_at(&batch, NOW);
    let snap = top.snapshot_at(NOW);
    assert_eq!(snap.rows.len(), 4, "three rows and the overflow row");
    assert_eq!(row(&snap, "api", "/a").count, 2);
    let overflow: Vec<_> = snap.rows.iter().filter(|r| r.overflow).collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].count, 3, "/d, /e, /d");
    assert_eq!(snap.stats.overflow_spans, 3);
    assert_eq!(snap.stats.spans, 7);
    // More new keys still land in the same overflow row.
    top.record_batch_at(&[item(&api, server("/f", 200, 5, 9, 9))], NOW);
    let snap = top.snapshot_at(NOW);
    assert_eq!(snap.rows.len(), 4);
    assert_eq!(snap.stats.overflow_spans, 4);
}

#[test]
fn grpc_rows_are_keyed_by_rpc_method() {
    let top = Top::new(TopLimits::default());
    let svc = resource(1, "greeter");
    let mut it = item(&svc, server("/ignored", 200, 3, 1, 1));
    it.span.attributes = smallvec::smallvec![
        Attribute::str(semconv::RPC_SYSTEM_NAME, "grpc"),
        Attribute::str(semconv::RPC_METHOD, "helloworld.Greeter/SayHello"),
    ];
    top.record_batch_at(&[it], NOW);
    let snap = top.snapshot_at(NOW);
    let r = row(&snap, "greeter", "helloworld.Greeter/SayHello");
    assert_eq!((r.method.as_str(), r.count), ("gRPC", 1));
}

#[test]
fn drill_in_shows_whole_recent_traces_and_the_slowest() {
    let top = Top::new(TopLimits::default());
    let api = resource(1, "api");
    let back = resource(2, "backend");
    // Trace 1: the backend's SERVER span and the api's CLIENT span end before the api's SERVER.
    let mut client = item(
        &api,
        SpanSpec {
            kind: SpanKind::Client,
            path: "/inner",
            status: 200,
            millis: 8,
            trace: 1,
            span: 11,
            parent: Some(10),
        },
    );
    client.span.attributes.push(Attribute::str("x", "y"));
    let batch = vec![
        item(
            &back,
            SpanSpec {
                kind: SpanKind::Server,
                path: "/inner",
                status: 200,
                millis: 7,
                trace: 1,
                span: 12,
                parent: Some(11),
            },
        ),
        client,
        item(&api, server("/outer", 200, 9, 1, 10)),
    ];
    top.record_batch_at(&batch, NOW);
    top.record_batch_at(&[item(&api, server("/outer", 200, 50, 2, 20))], NOW);
    top.record_batch_at(&[item(&api, server("/outer", 200, 20, 3, 30))], NOW);
    let snap = top.snapshot_at(NOW);
    let outer = row(&snap, "api", "/outer");
    let drill = top.drill_in(outer.id);
    assert_eq!(drill.recent.len(), 3);
    assert_eq!(drill.recent[0][0].span.trace_id, [3; 16], "newest first");
    assert_eq!(drill.recent[1][0].span.trace_id, [2; 16]);
    assert_eq!(drill.recent[2].len(), 3, "the whole first trace");
    let slowest: Vec<u64> = drill.slowest.iter().map(|s| s.0 / 1_000_000).collect();
    assert_eq!(slowest, [50, 20, 9], "slowest first");
    // A fourth span: the ring keeps the newest three traces, the slowest list the three slowest.
    top.record_batch_at(&[item(&api, server("/outer", 200, 30, 4, 40))], NOW);
    let drill4 = top.drill_in(outer.id);
    let slowest: Vec<u64> = drill4.slowest.iter().map(|s| s.0 / 1_000_000).collect();
    assert_eq!(slowest, [50, 30, 20]);
    let recent: Vec<u8> = drill4
        .recent
        .iter()
        .map(|t| t[0].span.trace_id[0])
        .collect();
    assert_eq!(recent, [4, 3, 2]);
    let tree = crate::export::render_trace(&drill.recent[2], false);
    assert_eq!(tree.lines().count(), 3, "{tree}");
    assert!(tree.contains("└─"), "{tree}");
}

#[test]
fn kept_traces_are_bounded_per_second_and_counted() {
    let top = Top::new(TopLimits {
        traces: TraceLimits {
            traces: 4,
            spans_per_trace: 2,
            admit_per_second: 3,
        },
        ..Default::default()
    });
    let api = resource(1, "api");
    let batch: Vec<ExportItem> = (0..5u8)
        .map(|i| item(&api, server("/x", 200, 1, i, i)))
        .collect();
    top.record_batch_at(&batch, NOW);
    let snap = top.snapshot_at(NOW);
    assert_eq!(snap.stats.traces.spans_not_kept, 2);
    let next_second = NOW + 1_000_000_000;
    let batch: Vec<ExportItem> = (5..8u8)
        .map(|i| item(&api, server("/x", 200, 1, i, i)))
        .collect();
    top.record_batch_at(&batch, next_second);
    let snap = top.snapshot_at(next_second);
    assert_eq!(
        snap.stats.traces.traces_evicted, 2,
        "six admitted, four kept"
    );
    // Spans of a kept trace past its bound are counted.
    let batch: Vec<ExportItem> = (30..33u8)
        .map(|i| item(&api, server("/x", 200, 1, 7, i)))
        .collect();
    top.record_batch_at(&batch, next_second);
    assert_eq!(
        top.snapshot_at(next_second)
            .stats
            .traces
            .spans_past_trace_bound,
        2
    );
}

#[test]
fn edges_pair_client_and_server_in_either_order_and_name_untraced_peers() {
    let top = Top::new(TopLimits::default());
    let web = resource(1, "web");
    let db = resource(2, "db");
    let client = |span: u8, status: i64| SpanSpec {
        kind: SpanKind::Client,
        path: "/q",
        status,
        millis: 20,
        trace: span,
        span,
        parent: None,
    };
    let child = |span: u8, parent: u8| SpanSpec {
        kind: SpanKind::Server,
        path: "/q",
        status: 200,
        millis: 15,
        trace: parent,
        span,
        parent: Some(parent),
    };
    // Server first, then client; client first, then server; a client with no traced server.
    top.record_batch_at(&[item(&db, child(101, 1)), item(&web, client(1, 200))], NOW);
    top.record_batch_at(&[item(&web, client(2, 500))], NOW);
    top.record_batch_at(&[item(&db, child(102, 2))], NOW);
    top.record_batch_at(&[item(&web, client(3, 200))], NOW);
    let snap = top.snapshot_at(NOW);
    assert_eq!(snap.edges.len(), 1, "{:#?}", snap.edges);
    let e = &snap.edges[0];
    assert_eq!(
        (e.client.as_str(), e.server.as_str(), e.count, e.errors),
        ("web", "db", 2, 1)
    );
    assert!((e.p99 - 20.0).abs() / 20.0 <= sketch::RELATIVE_ACCURACY);
    // After the wait, the unpaired client becomes an edge to its peer's address.
    let later = top.snapshot_at(NOW + (edges::PAIR_WAIT_SECONDS + 1) * 1_000_000_000);
    let virtual_edge = later
        .edges
        .iter()
        .find(|e| e.virtual_server)
        .expect("an edge to the untraced peer");
    assert_eq!(
        (
            virtual_edge.client.as_str(),
            virtual_edge.server.as_str(),
            virtual_edge.count
        ),
        ("web", "10.0.0.9:8080", 1)
    );
    assert_eq!(
        later.edges.iter().map(|e| e.count).sum::<u64>(),
        3,
        "each request once"
    );
}

#[test]
fn at_exit_waiting_client_spans_go_to_their_peers_address() {
    let top = Top::new(TopLimits::default());
    let web = resource(1, "web");
    let call = SpanSpec {
        kind: SpanKind::Client,
        path: "/q",
        status: 503,
        millis: 4,
        trace: 7,
        span: 7,
        parent: None,
    };
    top.record_batch_at(&[item(&web, call)], NOW);
    assert!(top.snapshot_at(NOW).edges.is_empty(), "still waiting");
    top.finish();
    let snap = top.snapshot_at(NOW);
    assert_eq!(snap.edges.len(), 1);
    let e = &snap.edges[0];
    assert_eq!(
        (e.server.as_str(), e.virtual_server, e.count, e.errors),
        ("10.0.0.9:8080", true, 1, 1)
    );
}
