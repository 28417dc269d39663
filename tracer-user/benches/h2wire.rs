//! The HTTP/2 wire layer alone: a gRPC conversation written by the `h2` crate's codec (unary
//! calls on one connection, the HPACK dynamic table warm as in steady state), one record per
//! write, fed to the two directions. Reports calls per second and heap allocations per call.

#[path = "pipeline/counting.rs"]
mod counting;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use h2::frame::{Data, Headers, Pseudo, StreamId};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use tracer::protocols::http2::{H2Direction, H2Event, H2Limits};

const CALLS: usize = 1000;

#[derive(Default)]
struct Wire(Vec<u8>);

impl tokio::io::AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Wire {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Writes `frames` as one record (one write syscall).
fn record(codec: &mut h2::Codec<Wire, Bytes>, frames: Vec<h2::frame::Frame<Bytes>>) -> Vec<u8> {
    let mut cx = Context::from_waker(Waker::noop());
    for frame in frames {
        assert!(codec.poll_ready(&mut cx).is_ready());
        codec.buffer(frame).unwrap();
    }
    assert!(codec.flush(&mut cx).is_ready());
    std::mem::take(&mut codec.get_mut().0)
}

/// The records of `CALLS` unary calls: (client -> server, server -> client).
fn conversation() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut client: h2::Codec<Wire, Bytes> = h2::Codec::new(Wire::default());
    let mut server: h2::Codec<Wire, Bytes> = h2::Codec::new(Wire::default());
    let (mut requests, mut responses) = (Vec::new(), Vec::new());
    for call in 0..CALLS {
        let id = StreamId::from(1 + 2 * call as u32);
        let uri = Uri::from_static("http://greeter.default.svc:50051/helloworld.Greeter/SayHello");
        let mut fields = HeaderMap::new();
        fields.insert("te", HeaderValue::from_static("trailers"));
        fields.insert("content-type", HeaderValue::from_static("application/grpc"));
        fields.insert(
            "user-agent",
            HeaderValue::from_static("grpc-python/1.76.0 grpc-c/51.0.0"),
        );
        fields.insert(
            "grpc-accept-encoding",
            HeaderValue::from_static("identity, deflate, gzip"),
        );
        fields.insert("grpc-timeout", HeaderValue::from_static("999m"));
        let traceparent = format!("00-{:032x}-{:016x}-01", call as u128 * 7919 + 1, call + 1);
        fields.insert("traceparent", HeaderValue::from_str(&traceparent).unwrap());
        let headers = Headers::new(id, Pseudo::request(Method::POST, uri, None), fields);
        let mut data = Data::new(id, Bytes::from_static(b"\0\0\0\0\x07\n\x05world"));
        data.set_end_stream(true);
        requests.push(record(&mut client, vec![headers.into(), data.into()]));

        let mut fields = HeaderMap::new();
        fields.insert("content-type", HeaderValue::from_static("application/grpc"));
        fields.insert(
            "grpc-accept-encoding",
            HeaderValue::from_static("identity, deflate, gzip"),
        );
        let headers = Headers::new(id, Pseudo::response(StatusCode::OK), fields);
        let data = Data::new(id, Bytes::from_static(b"\0\0\0\0\x0d\n\x0bHello world"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static(""));
        let mut trailers = Headers::trailers(id, trailers);
        trailers.set_end_stream();
        responses.push(record(
            &mut server,
            vec![headers.into(), data.into(), trailers.into()],
        ));
    }
    (requests, responses)
}

/// Feeds every record; returns the number of header blocks decoded.
fn run(records: &[Vec<u8>], out: &mut Vec<H2Event>) -> usize {
    let mut direction = H2Direction::new(H2Limits::default(), false, true);
    let mut blocks = 0;
    for (i, record) in records.iter().enumerate() {
        direction.feed(record, record.len() as u32, 1, i as u64, out);
        blocks += out
            .drain(..)
            .filter(|e| matches!(e, H2Event::Headers { .. }))
            .count();
    }
    assert_eq!(direction.stats().fields_undecoded, 0);
    blocks
}

fn wire(c: &mut Criterion) {
    let (requests, responses) = conversation();
    let mut out = Vec::new();
    for (name, records, blocks_per_call) in
        [("requests", &requests, 1), ("responses", &responses, 2)]
    {
        let (allocations, blocks) = counting::count(|| run(records, &mut out));
        assert_eq!(blocks, CALLS * blocks_per_call);
        let bytes: usize = records.iter().map(Vec::len).sum();
        eprintln!(
            "h2wire/{name}: {CALLS} calls, {bytes} bytes ({} per call), {:.1} allocations per call",
            bytes / CALLS,
            allocations as f64 / CALLS as f64
        );
        let mut group = c.benchmark_group("h2wire");
        group.throughput(Throughput::Elements(CALLS as u64));
        group.bench_function(name, |b| b.iter(|| black_box(run(records, &mut out))));
        group.finish();
    }
}

criterion_group!(benches, wire);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
