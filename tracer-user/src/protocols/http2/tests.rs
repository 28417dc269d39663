//! The HTTP/2 wire layer on records as the kernel captures them: splits, merges, gaps, adoption.

use super::frame::*;
use super::*;
use crate::model::Header;

fn frame(ty: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// RFC 7541 C.3.1: :method GET, :scheme http, :path /, :authority www.example.com (inserted).
fn request_block() -> Vec<u8> {
    hex("828684410f7777772e6578616d706c652e636f6d")
}

/// :status 200, content-type application/grpc (inserted).
fn response_block() -> Vec<u8> {
    let mut block = vec![0x88, 0x5f, 16];
    block.extend_from_slice(b"application/grpc");
    block
}

fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = entries
        .iter()
        .flat_map(|(id, value)| [id.to_be_bytes().to_vec(), value.to_be_bytes().to_vec()].concat())
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

/// A client's first flight: preface, SETTINGS, WINDOW_UPDATE, a request with a body.
fn client_flight() -> Vec<u8> {
    [
        PREFACE.to_vec(),
        settings(&[(1, 8192), (4, 65535)]),
        frame(WINDOW_UPDATE, 0, 0, &[0, 0x0f, 0, 1]),
        frame(HEADERS, FLAG_END_HEADERS, 1, &request_block()),
        frame(DATA, FLAG_END_STREAM, 1, b"hello"),
    ]
    .concat()
}

/// Events with timestamps and thread ids zeroed, for comparisons across record splits.
fn normalized(events: Vec<H2Event>) -> Vec<H2Event> {
    events
        .into_iter()
        .map(|event| match event {
            H2Event::Headers {
                stream_id,
                end_stream,
                fields,
                undecoded,
                truncated,
                ..
            } => H2Event::Headers {
                stream_id,
                end_stream,
                fields,
                undecoded,
                truncated,
                ts_ns: 0,
                tid: 0,
            },
            H2Event::HeadersLost { stream_id, .. } => H2Event::HeadersLost {
                stream_id,
                ts_ns: 0,
            },
            H2Event::Data {
                stream_id,
                len,
                end_stream,
                ..
            } => H2Event::Data {
                stream_id,
                len,
                end_stream,
                ts_ns: 0,
                tid: 0,
            },
            H2Event::RstStream {
                stream_id,
                error_code,
                ..
            } => H2Event::RstStream {
                stream_id,
                error_code,
                ts_ns: 0,
                tid: 0,
            },
            H2Event::GoAway {
                last_stream_id,
                error_code,
                ..
            } => H2Event::GoAway {
                last_stream_id,
                error_code,
                ts_ns: 0,
            },
            H2Event::Settings {
                header_table_size, ..
            } => H2Event::Settings {
                header_table_size,
                ts_ns: 0,
            },
            H2Event::Desync { .. } => H2Event::Desync { ts_ns: 0 },
        })
        .collect()
}

fn feed_all(direction: &mut H2Direction, records: &[(&[u8], u32)]) -> Vec<H2Event> {
    let mut out = Vec::new();
    for (i, (payload, true_len)) in records.iter().enumerate() {
        direction.feed(payload, *true_len, 7, i as u64 + 1, &mut out);
    }
    out
}

fn client() -> H2Direction {
    H2Direction::new(H2Limits::default(), true, true)
}

fn server() -> H2Direction {
    H2Direction::new(H2Limits::default(), false, true)
}

fn fields(event: &H2Event) -> Vec<(String, String)> {
    match event {
        H2Event::Headers { fields, .. } => fields
            .iter()
            .map(|Header { name, value }| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect(),
        other => panic!("not headers: {other:?}"),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn request_fields() -> Vec<(String, String)> {
    pairs(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ])
}

#[test]
fn a_client_flight_in_one_record() {
    let bytes = client_flight();
    let mut direction = client();
    let events = feed_all(&mut direction, &[(&bytes, bytes.len() as u32)]);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        events[0],
        H2Event::Settings {
            header_table_size: Some(8192),
            ts_ns: 1
        }
    );
    assert_eq!(fields(&events[1]), request_fields());
    assert!(matches!(
        events[1],
        H2Event::Headers {
            stream_id: 1,
            end_stream: false,
            undecoded: 0,
            truncated: false,
            ts_ns: 1,
            tid: 7,
            ..
        }
    ));
    assert_eq!(
        events[2],
        H2Event::Data {
            stream_id: 1,
            len: 5,
            end_stream: true,
            ts_ns: 1,
            tid: 7
        }
    );
    let stats = direction.stats();
    assert_eq!((stats.frames, stats.header_blocks), (4, 1));
    assert_eq!(
        (stats.desyncs, stats.bytes_skipped, stats.table_unknown),
        (0, 0, 0)
    );
}

#[test]
fn split_at_every_offset_gives_the_same_events() {
    let bytes = [
        client_flight(),
        frame(HEADERS, 0, 3, &request_block()[..3]),
        frame(CONTINUATION, 0, 3, &request_block()[3..6]),
        frame(CONTINUATION, FLAG_END_HEADERS, 3, &request_block()[6..]),
        frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]),
        frame(PING, 0, 0, &[1; 8]),
        frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0, b'x']),
    ]
    .concat();
    let whole = normalized(feed_all(&mut client(), &[(&bytes, bytes.len() as u32)]));
    assert_eq!(whole.len(), 6, "{whole:?}");
    assert_eq!(
        fields(&whole[3]),
        pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ])
    );
    assert_eq!(
        whole[4],
        H2Event::RstStream {
            stream_id: 3,
            error_code: 8,
            ts_ns: 0,
            tid: 0
        }
    );
    assert_eq!(
        whole[5],
        H2Event::GoAway {
            last_stream_id: 3,
            error_code: 0,
            ts_ns: 0
        }
    );
    for split in 0..=bytes.len() {
        let (a, b) = bytes.split_at(split);
        let events = feed_all(&mut client(), &[(a, a.len() as u32), (b, b.len() as u32)]);
        assert_eq!(normalized(events), whole, "split at {split}");
    }
    let mut direction = client();
    let mut out = Vec::new();
    for byte in &bytes {
        direction.feed(std::slice::from_ref(byte), 1, 0, 0, &mut out);
    }
    assert_eq!(normalized(out), whole, "one byte per record");
}

#[test]
fn padding_and_priority_on_headers_and_data() {
    let mut headers = vec![3u8]; // pad length
    headers.extend_from_slice(&[0x80, 0, 0, 0, 16]); // exclusive dependency on 0, weight
    headers.extend_from_slice(&response_block());
    headers.extend_from_slice(&[0; 3]);
    let mut data = vec![2u8];
    data.extend_from_slice(b"abcd");
    data.extend_from_slice(&[0; 2]);
    let bytes = [
        frame(
            HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
            1,
            &headers,
        ),
        frame(DATA, FLAG_PADDED | FLAG_END_STREAM, 1, &data),
    ]
    .concat();
    let events = feed_all(&mut server(), &[(&bytes, bytes.len() as u32)]);
    assert_eq!(
        fields(&events[0]),
        pairs(&[(":status", "200"), ("content-type", "application/grpc")])
    );
    assert!(matches!(
        events[1],
        H2Event::Data {
            stream_id: 1,
            len: 4,
            end_stream: true,
            ..
        }
    ));
}

#[test]
fn a_gap_in_data_keeps_sync() {
    let body = vec![b'z'; 1000];
    let first = [
        frame(HEADERS, FLAG_END_HEADERS, 1, &response_block()),
        frame(DATA, 0, 1, &body),
    ]
    .concat();
    // Only the DATA frame header and 10 payload bytes are captured; the rest is a gap.
    let captured = &first[..first.len() - 990];
    let second = [
        frame(DATA, FLAG_END_STREAM, 1, b""),
        frame(
            HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &hex("88 be"),
        ),
    ]
    .concat();
    // And a record that is nothing but a gap: a DATA payload sent as length only.
    let third_header = frame(DATA, FLAG_END_STREAM, 5, b"");
    let mut third = third_header.clone();
    third[2] = 200; // length 200, none of it captured
    let mut direction = server();
    let events = feed_all(
        &mut direction,
        &[
            (captured, first.len() as u32),
            (&second, second.len() as u32),
            (&third, 9 + 200),
            (&[], 0),
        ],
    );
    let kinds: Vec<_> = normalized(events.clone());
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert!(matches!(
        kinds[1],
        H2Event::Data {
            stream_id: 1,
            len: 1000,
            end_stream: false,
            ..
        }
    ));
    assert!(matches!(
        kinds[2],
        H2Event::Data {
            stream_id: 1,
            len: 0,
            end_stream: true,
            ..
        }
    ));
    assert_eq!(
        fields(&kinds[3]),
        pairs(&[(":status", "200"), ("content-type", "application/grpc")])
    );
    assert!(matches!(
        kinds[4],
        H2Event::Data {
            stream_id: 5,
            len: 200,
            end_stream: true,
            ..
        }
    ));
    assert_eq!(direction.stats().desyncs, 0);
    assert_eq!(direction.stats().bytes_skipped, 0);
    // The DATA event of the gapped frame carries the record that completed it.
    assert!(matches!(events[1], H2Event::Data { ts_ns: 1, .. }));
}

#[test]
fn a_gap_in_headers_loses_that_block_and_guesses_nothing() {
    let first = frame(HEADERS, FLAG_END_HEADERS, 1, &request_block());
    // The last 4 bytes of the block (the end of "www.example.com") were not captured.
    let captured = &first[..first.len() - 4];
    // The next request references the lost insert (62) and static entries.
    let second = frame(
        HEADERS,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        3,
        &hex("82 86 84 be"),
    );
    let mut direction = client_without_preface();
    let events = feed_all(
        &mut direction,
        &[
            (captured, first.len() as u32),
            (&second, second.len() as u32),
        ],
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[0],
        H2Event::HeadersLost {
            stream_id: 1,
            ts_ns: 1
        }
    );
    assert_eq!(
        fields(&events[1]),
        pairs(&[(":method", "GET"), (":scheme", "http"), (":path", "/")])
    );
    assert!(matches!(
        events[1],
        H2Event::Headers {
            stream_id: 3,
            undecoded: 1,
            ..
        }
    ));
    let stats = direction.stats();
    assert_eq!((stats.header_blocks_lost, stats.header_blocks), (1, 1));
    assert_eq!(
        (stats.fields_undecoded, stats.table_unknown, stats.desyncs),
        (1, 1, 0)
    );
}

fn client_without_preface() -> H2Direction {
    H2Direction::new(H2Limits::default(), false, true)
}

#[test]
fn a_gap_in_a_frame_header_desyncs_then_resyncs_on_frames() {
    let first = [
        frame(HEADERS, FLAG_END_HEADERS, 1, &response_block()),
        frame(DATA, 0, 1, b"abc"),
    ]
    .concat();
    // The record ends 4 bytes into the DATA frame header.
    let captured = &first[..first.len() - 8];
    let garbage_then_frames = [
        b"\xff\xfe".to_vec(),
        frame(DATA, FLAG_END_STREAM, 1, b"de"),
        frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &hex("88")),
    ]
    .concat();
    let mut direction = server();
    let events = feed_all(
        &mut direction,
        &[
            (captured, first.len() as u32),
            (&garbage_then_frames, garbage_then_frames.len() as u32),
        ],
    );
    let events = normalized(events);
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(events[0], H2Event::Headers { stream_id: 1, .. }));
    assert_eq!(events[1], H2Event::Desync { ts_ns: 0 });
    assert!(matches!(
        events[2],
        H2Event::Data {
            stream_id: 1,
            len: 2,
            end_stream: true,
            ..
        }
    ));
    assert_eq!(fields(&events[3]), pairs(&[(":status", "200")]));
    let stats = direction.stats();
    assert_eq!(stats.desyncs, 1);
    // 3 payload bytes + 5 header bytes in the gap, 2 garbage bytes.
    assert_eq!(stats.bytes_skipped, 8 + 2);
    assert!(!direction.table_known());
}

#[test]
fn adoption_mid_stream_decodes_static_fields_and_counts_the_rest() {
    // Client -> server, connection opened before the agent: the first record starts with
    // frames, and the block references a dynamic entry we never saw (62).
    let request = [
        frame(
            HEADERS,
            FLAG_END_HEADERS,
            41,
            &hex("82 87 be 44 0a 2f 61 2f 42 2f 4d 65 74 68 6f"),
        ),
        frame(DATA, FLAG_END_STREAM, 41, &[0; 5]),
    ]
    .concat();
    assert!(looks_like_h2_frames(&request));
    let mut client = H2Direction::new(H2Limits::default(), false, false);
    let events = feed_all(&mut client, &[(&request, request.len() as u32)]);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        fields(&events[0]),
        pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/a/B/Metho")
        ])
    );
    assert!(matches!(events[0], H2Event::Headers { undecoded: 1, .. }));
    // Server -> client: :status 200 from the static table, two dynamic entries unknown.
    let response = frame(HEADERS, FLAG_END_HEADERS, 41, &hex("88 c0 bf"));
    let mut server = H2Direction::new(H2Limits::default(), false, false);
    let events = feed_all(&mut server, &[(&response, response.len() as u32)]);
    assert_eq!(fields(&events[0]), pairs(&[(":status", "200")]));
    assert!(matches!(events[0], H2Event::Headers { undecoded: 2, .. }));
    assert_eq!(server.stats().fields_undecoded, 2);
    assert_eq!(server.stats().desyncs, 0);
}

#[test]
fn adoption_waits_for_a_plausible_run() {
    // The first record starts inside a DATA payload: nothing is parsed from it.
    let junk = b"\x00\x00\x05\x01\x05\x00\x00\x00\x01\x88\x88\x88\x88\x88 and more payload bytes";
    let mut server = H2Direction::new(H2Limits::default(), false, false);
    let events = feed_all(&mut server, &[(junk, junk.len() as u32 + 5000)]);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(server.stats().bytes_skipped, junk.len() as u64 + 5000);
    let next = frame(HEADERS, FLAG_END_HEADERS, 1, &hex("88"));
    let events = feed_all(&mut server, &[(&next, next.len() as u32)]);
    assert_eq!(fields(&events[0]), pairs(&[(":status", "200")]));
}

#[test]
fn control_frames_and_unknown_types() {
    let bytes = [
        frame(0x42, 0xff, 9, &[1, 2, 3]), // unknown type: skipped by its length
        frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 9]),
        frame(SETTINGS, FLAG_ACK, 0, &[]),
        settings(&[(4, 1 << 20)]),
        frame(WINDOW_UPDATE, 0, 1, &[0, 0, 1, 0]),
        frame(PING, FLAG_ACK, 0, &[0; 8]),
        frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]),
    ]
    .concat();
    let mut direction = server();
    let events = normalized(feed_all(&mut direction, &[(&bytes, bytes.len() as u32)]));
    assert_eq!(
        events,
        vec![
            H2Event::Settings {
                header_table_size: None,
                ts_ns: 0
            },
            H2Event::RstStream {
                stream_id: 1,
                error_code: 8,
                ts_ns: 0,
                tid: 0
            },
        ]
    );
    assert_eq!(direction.stats().frames, 7);
}

#[test]
fn a_lost_rst_stream_payload_is_counted() {
    let bytes = frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]);
    let mut direction = server();
    let events = feed_all(&mut direction, &[(&bytes[..10], bytes.len() as u32)]);
    assert!(events.is_empty());
    assert_eq!(direction.stats().control_frames_lost, 1);
    assert_eq!(direction.stats().desyncs, 0);
}

#[test]
fn push_promise_blocks_update_the_table_without_an_event() {
    let mut promise = vec![0, 0, 0, 2];
    promise.extend_from_slice(&request_block());
    let bytes = [
        frame(PUSH_PROMISE, FLAG_END_HEADERS, 1, &promise),
        frame(HEADERS, FLAG_END_HEADERS, 1, &hex("88 be")),
    ]
    .concat();
    let events = feed_all(&mut server(), &[(&bytes, bytes.len() as u32)]);
    assert_eq!(events.len(), 1);
    assert_eq!(
        fields(&events[0]),
        pairs(&[(":status", "200"), (":authority", "www.example.com")])
    );
}

#[test]
fn an_interrupted_header_block_is_lost() {
    let bytes = [
        frame(HEADERS, 0, 1, &request_block()[..4]),
        frame(DATA, 0, 1, b"x"), // protocol error: nothing may interleave
        frame(CONTINUATION, FLAG_END_HEADERS, 1, &request_block()[4..]),
        frame(HEADERS, FLAG_END_HEADERS, 3, &hex("82")),
    ]
    .concat();
    let mut direction = client_without_preface();
    let events = normalized(feed_all(&mut direction, &[(&bytes, bytes.len() as u32)]));
    assert_eq!(
        events[0],
        H2Event::HeadersLost {
            stream_id: 1,
            ts_ns: 0
        }
    );
    assert!(matches!(events[1], H2Event::Data { stream_id: 1, .. }));
    // The orphan CONTINUATION is reported once more for its stream, never decoded.
    assert_eq!(
        events[2],
        H2Event::HeadersLost {
            stream_id: 1,
            ts_ns: 0
        }
    );
    assert_eq!(fields(&events[3]), pairs(&[(":method", "GET")]));
    assert_eq!(events.len(), 4);
}

#[test]
fn oversized_header_blocks_are_lost_and_counted() {
    let limits = H2Limits {
        max_header_block_bytes: 8,
        ..H2Limits::default()
    };
    let bytes = [
        frame(HEADERS, 0, 1, &request_block()[..6]),
        frame(CONTINUATION, FLAG_END_HEADERS, 1, &request_block()[6..]),
        frame(HEADERS, FLAG_END_HEADERS, 3, &hex("82")),
    ]
    .concat();
    let mut direction = H2Direction::new(limits, false, true);
    let events = normalized(feed_all(&mut direction, &[(&bytes, bytes.len() as u32)]));
    assert_eq!(
        events[0],
        H2Event::HeadersLost {
            stream_id: 1,
            ts_ns: 0
        }
    );
    assert_eq!(fields(&events[1]), pairs(&[(":method", "GET")]));
    assert_eq!(direction.stats().frames_too_large, 1);
    assert_eq!(direction.stats().header_blocks_lost, 1);
}

#[test]
fn a_wrong_preface_desyncs() {
    let bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut direction = client();
    let events = feed_all(&mut direction, &[(bytes, bytes.len() as u32)]);
    assert_eq!(events, vec![H2Event::Desync { ts_ns: 1 }]);
    assert_eq!(direction.stats().bytes_skipped, bytes.len() as u64);
}

#[test]
fn a_gap_inside_the_preface_keeps_sync() {
    let bytes = client_flight();
    let mut direction = client();
    let events = feed_all(
        &mut direction,
        &[
            (&bytes[..10], 24),
            (&bytes[24..], (bytes.len() - 24) as u32),
        ],
    );
    assert_eq!(events.len(), 3);
    assert_eq!(direction.stats().desyncs, 0);
}

#[test]
fn detection_helpers() {
    let flight = client_flight();
    assert!(starts_with_preface(&flight));
    assert!(!starts_with_preface(&flight[1..]));
    assert!(looks_like_h2_frames(&flight[24..]));
    let server_first = [
        settings(&[(3, 100)]),
        frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]),
    ]
    .concat();
    assert!(looks_like_h2_frames(&server_first));
    assert!(!looks_like_h2_frames(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!looks_like_h2_frames(&flight));
}

#[test]
fn the_fuzz_harness_runs_its_seeds_shapes() {
    let mut script = vec![0b011u8];
    let flight = client_flight();
    for chunk in flight.chunks(40) {
        script.push(chunk.len() as u8);
        script.push(0);
        script.extend_from_slice(chunk);
    }
    fuzz_entry(&script);
    fuzz_entry(&[0b100, 5, 0x81, 0, 0, 0, 1]);
    fuzz_entry(&[]);
}

/// The committed fuzz seeds run through both harnesses on stable (the fuzz pass needs nightly).
#[test]
fn the_fuzz_seeds_pass_their_harnesses() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for (target, entry) in [
        ("h2_frames", fuzz_entry as fn(&[u8])),
        ("hpack", hpack::fuzz_entry as fn(&[u8])),
    ] {
        let dir = seeds.join(target);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(files.len() >= 5, "{target}: {} seeds", files.len());
        for file in files {
            entry(&std::fs::read(&file).unwrap());
        }
    }
}

#[test]
fn lost_records_desync_until_a_run_of_frames() {
    let first = frame(HEADERS, FLAG_END_HEADERS, 1, &request_block()[..6]);
    let mut direction = client_without_preface();
    let mut out = Vec::new();
    // The block is still collecting when records are lost: it is reported lost.
    direction.feed(
        &first[..first.len() - 2],
        first.len() as u32 - 2,
        1,
        1,
        &mut out,
    );
    direction.on_records_lost(2, &mut out);
    assert_eq!(
        out,
        vec![
            H2Event::Desync { ts_ns: 2 },
            H2Event::HeadersLost {
                stream_id: 1,
                ts_ns: 2
            },
        ]
    );
    assert!(!direction.in_sync());
    // Losing more while resynchronising adds nothing; a record of frames resyncs.
    out.clear();
    direction.on_records_lost(3, &mut out);
    assert!(out.is_empty());
    let next = frame(HEADERS, FLAG_END_HEADERS, 3, &hex("82 86 84"));
    direction.feed(&next, next.len() as u32, 1, 4, &mut out);
    assert_eq!(
        fields(&out[0]),
        pairs(&[(":method", "GET"), (":scheme", "http"), (":path", "/")])
    );
    assert_eq!(direction.stats().desyncs, 1);
}

/// A false resync: after a desync, a record whose first bytes look like two plausible frame
/// headers but whose frames do not add up to the record (payload bytes after them) must not
/// resync, or the bytes after would be read as frames and could invent a stream. The next
/// record of whole frames resyncs.
#[test]
fn a_resync_needs_whole_frames_to_the_end_of_the_record() {
    let mut direction = client_without_preface();
    let mut out = Vec::new();
    direction.on_records_lost(1, &mut out);
    out.clear();
    // SETTINGS ACK + PING, then 9 bytes that would read as HEADERS on stream 5, then 3 more
    // bytes no frame accounts for.
    let misleading = [
        frame(SETTINGS, FLAG_ACK, 0, &[]),
        frame(PING, 0, 0, &[0; 8]),
        frame(HEADERS, FLAG_END_HEADERS, 5, &hex("82 86 84")),
        vec![0xaa; 3],
    ]
    .concat();
    direction.feed(&misleading, misleading.len() as u32, 1, 2, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(!direction.in_sync());
    let next = [
        frame(SETTINGS, FLAG_ACK, 0, &[]),
        frame(HEADERS, FLAG_END_HEADERS, 7, &hex("82 86 84")),
    ]
    .concat();
    direction.feed(&next, next.len() as u32, 1, 3, &mut out);
    assert!(direction.in_sync());
    assert!(
        matches!(out[..], [H2Event::Headers { stream_id: 7, .. }]),
        "{out:?}"
    );
}

/// Bytes read as a frame of an unknown type larger than the receiver accepts (the client
/// preface where frames were expected reads as a 5 MB frame of type 0x20) desync instead of
/// swallowing the frames after them; once the receiver's SETTINGS raise the limit, such a
/// frame is followed.
#[test]
fn an_unknown_frame_larger_than_the_receiver_accepts_desyncs() {
    let mut direction = server();
    let mut out = Vec::new();
    let bytes = [PREFACE.to_vec(), frame(SETTINGS, 0, 0, &[])].concat();
    direction.feed(&bytes, bytes.len() as u32, 1, 1, &mut out);
    assert_eq!(direction.stats().desyncs, 1, "{out:?}");
    // The SETTINGS after the preface are an exact run: the direction resyncs on them.
    assert!(direction.in_sync());

    let big = frame(0x20, 0, 0, &vec![0; DEFAULT_MAX_FRAME_SIZE as usize + 1]);
    let after = frame(HEADERS, FLAG_END_HEADERS, 1, &hex("88"));
    let record = [big.clone(), after.clone()].concat();
    let mut direction = server();
    out.clear();
    direction.feed(&record, record.len() as u32, 1, 1, &mut out);
    assert_eq!(direction.stats().desyncs, 1);
    let mut direction = server();
    direction.set_max_frame_size(1 << 20);
    out.clear();
    direction.feed(&record, record.len() as u32, 1, 1, &mut out);
    assert_eq!(direction.stats().desyncs, 0);
    assert!(
        matches!(out[..], [H2Event::Headers { stream_id: 1, .. }]),
        "{out:?}"
    );
    // At the default limit exactly, an unknown frame is followed.
    let at_limit = frame(0x20, 0, 0, &vec![0; DEFAULT_MAX_FRAME_SIZE as usize]);
    let mut direction = server();
    out.clear();
    direction.feed(&at_limit, at_limit.len() as u32, 1, 1, &mut out);
    assert_eq!(direction.stats().desyncs, 0);
}

/// SETTINGS_MAX_FRAME_SIZE announced in one direction raises the limit of the other.
#[test]
fn settings_max_frame_size_raises_the_other_directions_limit() {
    let mut conn = Http2Connection::new(
        Some(crate::model::Role::Server),
        Http2Limits::default(),
        true,
    );
    let mut out = Vec::new();
    // The server announces 1 MiB frames: the client may now send big unknown frames.
    let server_settings = settings(&[(SETTINGS_MAX_FRAME_SIZE, 1 << 20)]);
    conn.on_record(
        crate::model::Direction::Egress,
        &server_settings,
        server_settings.len() as u32,
        1,
        1,
        &mut out,
    );
    let big = frame(0x20, 0, 0, &vec![0; DEFAULT_MAX_FRAME_SIZE as usize + 1]);
    let bytes = [PREFACE.to_vec(), big].concat();
    conn.on_record(
        crate::model::Direction::Ingress,
        &bytes,
        bytes.len() as u32,
        1,
        2,
        &mut out,
    );
    assert_eq!(conn.stats().wire.desyncs, 0);
}
