//! The wire layer against a real HTTP/2 implementation: frames written by the `h2` crate's codec
//! (the frame writer and HPACK encoder hyper and tonic use: Huffman, dynamic-table indexing,
//! size updates, never-indexed values, CONTINUATION) decode to exactly the headers it was given,
//! whatever the record boundaries.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::frame::{self as h2f, Frame, Headers, Pseudo, StreamId};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use super::*;

/// An in-memory connection end that keeps what is written.
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

/// Deterministic xorshift64* numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A header value: mostly visible ASCII, some obs-text bytes and tabs inside.
    fn value(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len)
            .map(|i| match self.below(20) {
                0 => 0x80 + self.below(128) as u8,
                1 if i > 0 && i + 1 < len => b'\t',
                _ => 0x21 + self.below(94) as u8,
            })
            .collect()
    }
}

const NAMES: [&str; 12] = [
    "content-type",
    "user-agent",
    "te",
    "grpc-timeout",
    "grpc-encoding",
    "traceparent",
    "tracestate",
    "x-custom-header",
    "authorization",
    "cookie",
    "grpc-status",
    "x-a",
];

/// A random header block as h2 sends it, and the fields it must decode to (in wire order).
fn random_headers(rng: &mut Rng, stream_id: u32) -> (Headers, Vec<(String, Vec<u8>)>) {
    let mut expected = Vec::new();
    let pseudo = if rng.below(2) == 0 {
        let method = [Method::GET, Method::POST, Method::PUT][rng.below(3)].clone();
        let path: String = (0..rng.below(40))
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        let host = ["svc.local:50051", "example.com", "10.0.0.7:8080"][rng.below(3)];
        let uri: Uri = format!("http://{host}/{path}").parse().unwrap();
        expected.push((":method".to_owned(), method.as_str().as_bytes().to_vec()));
        expected.push((":scheme".to_owned(), b"http".to_vec()));
        expected.push((":authority".to_owned(), host.as_bytes().to_vec()));
        expected.push((":path".to_owned(), format!("/{path}").into_bytes()));
        Pseudo::request(method, uri, None)
    } else {
        let status = [200u16, 204, 404, 503, 307][rng.below(5)];
        expected.push((":status".to_owned(), status.to_string().into_bytes()));
        Pseudo::response(StatusCode::from_u16(status).unwrap())
    };
    let mut fields = HeaderMap::new();
    for _ in 0..rng.below(8) {
        let name = HeaderName::from_static(NAMES[rng.below(NAMES.len())]);
        let mut value = HeaderValue::from_bytes(&rng.value(60)).unwrap();
        value.set_sensitive(rng.below(5) == 0);
        fields.append(name, value);
    }
    for (name, value) in &fields {
        expected.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
    }
    let mut headers = Headers::new(StreamId::from(stream_id), pseudo, fields);
    if rng.below(3) == 0 {
        headers.set_end_stream();
    }
    (headers, expected)
}

fn write(codec: &mut h2::Codec<Wire, Bytes>, frame: Frame<Bytes>) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(codec.poll_ready(&mut cx).is_ready());
    codec.buffer(frame).unwrap();
    assert!(matches!(codec.flush(&mut cx), Poll::Ready(Ok(()))));
}

#[test]
fn blocks_written_by_the_h2_crate_decode_exactly_at_any_record_boundaries() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut codec: h2::Codec<Wire, Bytes> = h2::Codec::new(Wire::default());
    let mut expected = Vec::new();
    let mut next_stream = 1u32;
    let mut blocks = 0;
    for round in 0..400 {
        match rng.below(12) {
            0 => {
                // A smaller frame size forces CONTINUATION frames (RFC minimum is for peers;
                // the writer splits at whatever it is given).
                codec.set_max_send_frame_size([16_384, 40, 200][rng.below(3)]);
            }
            1 => {
                // The peer announced a table size: the encoder sends a size update next.
                codec.set_send_header_table_size([0, 256, 4096][rng.below(3)]);
            }
            2 => {
                let mut data = h2f::Data::new(
                    StreamId::from(next_stream.saturating_sub(2).max(1)),
                    Bytes::from(rng.value(30)),
                );
                let len = data.payload().len();
                data.set_end_stream(round % 2 == 0);
                expected.push(format!("data {len}"));
                write(&mut codec, data.into());
            }
            3 => write(&mut codec, h2f::Ping::new([round as u8; 8]).into()),
            4 => write(
                &mut codec,
                h2f::WindowUpdate::new(StreamId::from(0), 1 + round as u32).into(),
            ),
            5 => {
                expected.push(format!("rst {next_stream} 8"));
                write(
                    &mut codec,
                    h2f::Reset::new(StreamId::from(next_stream), h2::Reason::CANCEL).into(),
                );
            }
            _ => {
                let (headers, fields) = random_headers(&mut rng, next_stream);
                expected.push(format!("headers {next_stream} {fields:?}"));
                next_stream += 2;
                blocks += 1;
                write(&mut codec, headers.into());
            }
        }
    }
    let bytes = std::mem::take(&mut codec.get_mut().0);
    assert!(blocks > 150, "{blocks} header blocks");
    let (mut at, mut continuations) = (0, 0);
    while let Some(header) = bytes.get(at..).and_then(frame::FrameHeader::peek) {
        continuations += usize::from(header.ty == frame::CONTINUATION);
        at += frame::FRAME_HEADER_LEN + header.len as usize;
    }
    assert_eq!(at, bytes.len());
    assert!(continuations > 20, "{continuations} CONTINUATION frames");

    let describe = |events: Vec<H2Event>| -> Vec<String> {
        events
            .into_iter()
            .map(|event| match event {
                H2Event::Headers {
                    stream_id,
                    fields,
                    undecoded,
                    truncated,
                    ..
                } => {
                    assert_eq!((undecoded, truncated), (0, false));
                    let fields: Vec<(String, Vec<u8>)> = fields
                        .into_iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect();
                    format!("headers {stream_id} {fields:?}")
                }
                H2Event::Data { len, .. } => format!("data {len}"),
                H2Event::RstStream {
                    stream_id,
                    error_code,
                    ..
                } => format!("rst {stream_id} {error_code}"),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    };

    // One record, then random record boundaries (as many writes of any size would give).
    let mut direction = H2Direction::new(H2Limits::default(), false, true);
    let mut out = Vec::new();
    direction.feed(&bytes, bytes.len() as u32, 1, 1, &mut out);
    assert_eq!(describe(out), expected);
    assert_eq!(direction.stats().fields_undecoded, 0);
    assert_eq!(direction.stats().header_blocks, blocks);

    let mut direction = H2Direction::new(H2Limits::default(), false, true);
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (record, tail) = rest.split_at(rng.below(300).min(rest.len()).max(1));
        direction.feed(record, record.len() as u32, 1, 1, &mut out);
        rest = tail;
    }
    assert_eq!(describe(out), expected);
}

/// Every byte value through the h2 encoder's Huffman code and back: control bytes in `:path`
/// (which h2 does not validate), obs-text bytes in a header value.
#[test]
fn every_byte_value_round_trips() {
    let ascii: Vec<u8> = (0u8..0x80).collect();
    let high: Vec<u8> = (0x80u8..=0xff).chain(b"x".iter().copied()).collect();
    let mut pseudo = Pseudo::request(Method::GET, Uri::from_static("http://a/"), None);
    pseudo.path = Some(h2f::BytesStr::try_from(Bytes::from(ascii.clone())).unwrap());
    let mut fields = HeaderMap::new();
    fields.insert("x-high", HeaderValue::from_bytes(&high).unwrap());
    let mut codec: h2::Codec<Wire, Bytes> = h2::Codec::new(Wire::default());
    write(
        &mut codec,
        Headers::new(StreamId::from(1), pseudo, fields).into(),
    );
    let bytes = std::mem::take(&mut codec.get_mut().0);
    let mut direction = H2Direction::new(H2Limits::default(), false, true);
    let mut out = Vec::new();
    direction.feed(&bytes, bytes.len() as u32, 1, 1, &mut out);
    let [H2Event::Headers { fields, .. }] = &out[..] else {
        panic!("{out:?}");
    };
    let path = fields.iter().find(|h| h.name == ":path").unwrap();
    assert_eq!(path.value, ascii);
    let value = fields.iter().find(|h| h.name == "x-high").unwrap();
    assert_eq!(value.value, high);
}
