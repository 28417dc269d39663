//! Pipeline throughput without a kernel: recorded event streams -> spans per second on one core
//! (decode + connections + HTTP framing + linking + span building), the same behind the agent's
//! reorder window, and the same followed by OTLP protobuf encoding of every span (the agent's
//! direct encoder, and the replaced SDK path for comparison; also encoding alone).
//!
//! Throughput is reported in spans (one per exchange and traced side). Every stream is checked
//! once before it is measured: it must yield exactly the spans it was built for.

mod counting;
mod otlp;
mod recorded;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use tracer::capture::decode::{DecodedRecord, decode};
use tracer::capture::reorder::ReorderWindow;
use tracer::correlate::connections::TableLimits;
use tracer::export::TraceEncoder;
use tracer::model::{ExportItem, SpanKind};
use tracer::pipeline::{Pipeline, PipelineOptions};
use tracer::telemetry::spans::Clock;

use recorded::{RecordedStream, StreamShape};

/// Wall-clock minus monotonic offset of the recorded host (any fixed value will do).
const CLOCK_OFFSET_NS: i128 = 1_700_000_000_000_000_000;
/// The agent's default reorder window and bound.
const REORDER_WINDOW_NS: u64 = 20_000_000;
const REORDER_MAX_RECORDS: usize = 65_536;
/// Records read per ring-buffer wake-up before the window is asked to release (the agent releases
/// after each drained batch).
const RECORDS_PER_RELEASE: usize = 256;

fn options() -> PipelineOptions {
    PipelineOptions {
        limits: TableLimits::default(),
        // No /proc for the recorded pids: resources fall back to what needs no lookup.
        proc_root: PathBuf::from("/nonexistent-proc-for-bench"),
        host_name: "bench-host".to_string(),
        ports: Vec::new(),
        include_telemetry: false,
    }
}

/// Decodes every record and runs it through a fresh pipeline.
fn run_pipeline(stream: &RecordedStream) -> Vec<ExportItem> {
    let mut pipeline = Pipeline::new(options(), Clock::from_offset(CLOCK_OFFSET_NS));
    let mut out = Vec::with_capacity(stream.shape.expected_spans() as usize);
    for record in &stream.records {
        if let Ok(event) = decode(record) {
            pipeline.on_event(event, &mut out);
        }
    }
    out
}

/// The agent's path: decode, hold in the reorder window with the decoded fields, pipeline.
fn run_agent_path(stream: &RecordedStream) -> Vec<ExportItem> {
    let mut pipeline = Pipeline::new(options(), Clock::from_offset(CLOCK_OFFSET_NS));
    let mut window = ReorderWindow::new(REORDER_WINDOW_NS, REORDER_MAX_RECORDS);
    let mut out = Vec::with_capacity(stream.shape.expected_spans() as usize);
    let mut process = |bytes: &[u8], decoded: &DecodedRecord| {
        if let Some(event) = decoded.event(bytes) {
            pipeline.on_event(event, &mut out);
        }
    };
    let mut now = 0;
    for batch in stream.records.chunks(RECORDS_PER_RELEASE) {
        for record in batch {
            if let Ok(event) = decode(record) {
                now = now.max(event.header().ts_ns);
                let decoded = DecodedRecord::of(&event);
                window.push_with(event.causal_ts(), record, decoded, &mut process);
            }
        }
        window.release_ready_with(now, &mut process);
    }
    window.release_ready_with(u64::MAX, &mut process);
    out
}

/// Fails the benchmark when a stream does not produce what it was built for.
fn check(stream: &RecordedStream, spans: &[ExportItem], what: &str) {
    let shape = stream.shape;
    assert_eq!(
        spans.len() as u64,
        shape.expected_spans(),
        "{what}: {shape:?} must yield one span per exchange and side"
    );
    let servers = spans
        .iter()
        .filter(|i| i.span.kind == SpanKind::Server)
        .count() as u64;
    let per_side = u64::from(shape.connections) * u64::from(shape.requests_per_connection);
    assert_eq!(servers, per_side, "{what}: SERVER spans");
    if shape.client_side {
        // Both ends on one host: every SERVER span is the child of its CLIENT span.
        let linked = spans
            .iter()
            .filter(|i| i.span.kind == SpanKind::Server && i.span.parent_span_id.is_some())
            .count() as u64;
        assert_eq!(
            linked, per_side,
            "{what}: SERVER spans linked to their CLIENT span"
        );
    }
}

fn shapes() -> [(&'static str, StreamShape); 2] {
    let base = StreamShape {
        connections: 64,
        requests_per_connection: 32,
        client_side: false,
    };
    [
        ("server", base),
        (
            "client_server",
            StreamShape {
                client_side: true,
                ..base
            },
        ),
    ]
}

/// Prints heap allocations per span (one per exchange and traced side) of both paths: over the
/// whole stream (connection set-up included), and in the steady state (the extra allocations of
/// a stream with twice the requests per connection, per extra span).
fn report_allocations(name: &str, shape: StreamShape) {
    let stream = recorded::record(shape);
    let longer = recorded::record(StreamShape {
        requests_per_connection: shape.requests_per_connection * 2,
        ..shape
    });
    let spans = shape.expected_spans() as f64;
    for (path, run) in [
        (
            "pipeline",
            run_pipeline as fn(&RecordedStream) -> Vec<ExportItem>,
        ),
        ("reorder_pipeline", run_agent_path),
    ] {
        let (whole, _) = counting::count(|| run(&stream));
        let (twice, _) = counting::count(|| run(&longer));
        println!(
            "allocations {path}/{name}: {:.2} per span over the stream, {:.2} per span in the steady state",
            whole as f64 / spans,
            (twice.saturating_sub(whole)) as f64 / spans
        );
    }
}

fn pipeline_benches(c: &mut Criterion) {
    for (name, shape) in shapes() {
        let stream = recorded::record(shape);
        check(&stream, &run_pipeline(&stream), "pipeline");
        check(&stream, &run_agent_path(&stream), "agent path");
        report_allocations(name, shape);
        let spans = shape.expected_spans();

        let mut group = c.benchmark_group("pipeline");
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(BenchmarkId::from_parameter(name), &stream, |b, s| {
            b.iter(|| black_box(run_pipeline(s)).len())
        });
        group.finish();

        let mut group = c.benchmark_group("reorder_pipeline");
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(BenchmarkId::from_parameter(name), &stream, |b, s| {
            b.iter(|| black_box(run_agent_path(s)).len())
        });
        group.finish();

        let items = run_pipeline(&stream);
        let mut encoder = TraceEncoder::new();
        let mut out = Vec::new();
        let (_, encoded) = otlp::encode_all(&mut encoder, &mut out, &items);
        assert_eq!(encoded as u64, spans, "OTLP encoding covers every span");
        let (_, encoded) = otlp::encode_all_sdk(&items);
        assert_eq!(encoded as u64, spans, "SDK-path encoding covers every span");

        // Encoding alone, from finished span records: the agent's encoder, then the replaced
        // SDK path, in the same run.
        let mut group = c.benchmark_group("otlp_encode");
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(BenchmarkId::new("direct", name), &items, |b, items| {
            b.iter(|| black_box(otlp::encode_all(&mut encoder, &mut out, items)))
        });
        group.bench_with_input(
            BenchmarkId::new("sdk_replaced", name),
            &items,
            |b, items| b.iter(|| black_box(otlp::encode_all_sdk(items))),
        );
        group.finish();

        // RED metrics at the hand-over: measuring finished spans in existing series.
        let red = tracer::telemetry::red::RedMetrics::new(Default::default());
        red.record_batch(&items);
        let mut group = c.benchmark_group("red_record");
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(BenchmarkId::from_parameter(name), &items, |b, items| {
            b.iter(|| red.record_batch(black_box(items)))
        });
        group.finish();

        // The service graph alone (also inside red_record): pairing halves and counting edges.
        let graph = tracer::telemetry::service_graph::ServiceGraph::new(Default::default());
        graph.record_batch(&items, std::time::Instant::now());
        graph.record_batch(&items, std::time::Instant::now());
        let mut group = c.benchmark_group("service_graph_record");
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(BenchmarkId::from_parameter(name), &items, |b, items| {
            b.iter(|| graph.record_batch(black_box(items), std::time::Instant::now()))
        });
        group.finish();

        // `tracer top` at the same hand-over: rows found in place. The replayed spans' traces
        // are all kept already, so this is the steady state with no trace admitted (admission
        // copies at most `TraceLimits::admit_per_second` traces a second).
        let top = tracer::export::top::Top::new(Default::default());
        top.record_batch(&items);
        top.record_batch(&items);
        let (allocations, ()) = counting::count(|| top.record_batch(&items));
        println!(
            "allocations top_record/{name}: {:.2} per span in the steady state",
            allocations as f64 / spans as f64
        );
        let mut group = c.benchmark_group("top_record");
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(BenchmarkId::from_parameter(name), &items, |b, items| {
            b.iter(|| top.record_batch(black_box(items)))
        });
        group.finish();

        let mut group = c.benchmark_group("pipeline_otlp");
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(BenchmarkId::from_parameter(name), &stream, |b, s| {
            b.iter(|| black_box(otlp::encode_all(&mut encoder, &mut out, &run_pipeline(s))))
        });
        group.finish();

        let mut group = c.benchmark_group("pipeline_otlp_sdk_replaced");
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(BenchmarkId::from_parameter(name), &stream, |b, s| {
            b.iter(|| black_box(otlp::encode_all_sdk(&run_pipeline(s))))
        });
        group.finish();
    }
}

/// `PIPELINE_RUN_ONCE=<server|client_server>:<pipeline|reorder_pipeline|pipeline_otlp|
/// red_record>:<requests per connection>` runs that path once over that stream and exits, for
/// instruction counts under an instruction-counting tool (`valgrind --tool=callgrind`): unlike
/// wall time on a shared machine, they do not vary from run to run. `red_record` runs the
/// pipeline, then measures its spans in the RED metrics and the service graph as the agent's
/// hand-over does, in batches of 64, twice (the second pass finds every series and edge).
fn run_once(spec: &str) {
    let mut parts = spec.split(':');
    let (Some(name), Some(path), Some(requests)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("PIPELINE_RUN_ONCE={spec}: expected <shape>:<path>:<requests per connection>");
    };
    let (_, shape) = shapes()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown shape {name}"));
    let shape = StreamShape {
        requests_per_connection: requests.parse().expect("requests per connection"),
        ..shape
    };
    let stream = recorded::record(shape);
    let spans = match path {
        "pipeline" | "pipeline_otlp" | "red_record" => run_pipeline(&stream),
        "reorder_pipeline" => run_agent_path(&stream),
        other => panic!("unknown path {other}"),
    };
    check(&stream, &spans, path);
    if path == "pipeline_otlp" {
        let (bytes, encoded) = otlp::encode_all(&mut TraceEncoder::new(), &mut Vec::new(), &spans);
        println!("{encoded} spans encoded, {bytes} bytes");
    }
    if path == "red_record" {
        let red = tracer::telemetry::red::RedMetrics::new(Default::default());
        for _ in 0..2 {
            for batch in spans.chunks(64) {
                red.record_batch(batch);
            }
        }
        println!("{} points", red.stats().points);
    }
    println!("{} spans", spans.len());
}

criterion_group!(benches, pipeline_benches);

fn main() {
    if let Ok(spec) = std::env::var("PIPELINE_RUN_ONCE") {
        run_once(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
