//! HTTP/2 streams -> exchanges: an [`Http2Connection`] holds both directions' wire state
//! ([`H2Direction`]) and assembles ONE exchange per stream, keyed by stream id so interleaved
//! streams never mix: request HEADERS (+ trailers) and DATA until END_STREAM, the final response
//! HEADERS (1xx interim ignored), DATA and trailers. RST_STREAM and GOAWAY end streams with an
//! outcome naming the h2 error, never an invented status; a lost request header block gives no
//! exchange at all (nothing is guessed), a lost response block ends its stream as desynchronised.
//! The exchange's `sequence` is its stream id: both ends of a connection see the same ids.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::events::{H2Direction, H2Event, H2Limits, H2WireStats};
use crate::model::{
    Direction, Exchange, ExchangeOutcome, Header, HttpRequest, HttpResponse, HttpVersion, Role,
    SharedStr, Text, method_text,
};
use crate::protocols::http1::RequestStart;

/// Bounds of one HTTP/2 connection's exchange state (the wire layer has its own, [`H2Limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Limits {
    /// Streams with a request head seen and no exchange handed out yet; beyond it the oldest
    /// (lowest id) is dropped and counted.
    pub max_open_streams: usize,
    /// Request headers kept per stream (pseudo-headers `:method` and `:path` are not counted).
    pub max_request_headers: usize,
    /// Longest request header value kept; longer values keep their prefix.
    pub max_header_value_bytes: usize,
    pub wire: H2Limits,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_open_streams: 1024,
            max_request_headers: 64,
            max_header_value_bytes: 8 * 1024,
            wire: H2Limits::default(),
        }
    }
}

/// Counters of HTTP/2 connections (merge with [`Http2Stats::merge`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Http2Stats {
    /// Connections recognised as HTTP/2 (preface, or frames on an adopted connection).
    pub connections: u64,
    /// Request heads decoded (streams opened).
    pub streams: u64,
    /// Exchanges handed out (including reset, refused and desynchronised streams).
    pub exchanges: u64,
    /// Streams ended by RST_STREAM before their response completed.
    pub streams_reset: u64,
    /// Streams ended by the server's GOAWAY (never processed).
    pub streams_refused: u64,
    /// Request header blocks lost or without `:method`/`:path` (undecodable): no exchange.
    pub requests_lost: u64,
    /// Open streams ended because their response header block was lost or the response
    /// direction lost sync (handed out with outcome `StreamDesync`).
    pub streams_desync: u64,
    /// Streams dropped because `max_open_streams` were open.
    pub streams_evicted: u64,
    /// Response frames of streams whose request head was never seen (adopted connections,
    /// lost or evicted requests): skipped.
    pub frames_unknown_stream: u64,
    /// Open streams discarded because records of their connection were lost in the kernel or
    /// the agent's byte budget shed them.
    pub streams_discarded: u64,
    /// Request heads with undecoded fields and no decodable `content-type`: dropped rather than
    /// called HTTP (the content-type that made them gRPC may be the undecoded field).
    pub requests_undecoded: u64,
    /// gRPC calls that completed without a decodable `grpc-status` while a response header
    /// block had undecoded fields (the status may be one of them): no status reported.
    pub grpc_status_undecoded: u64,
    /// Events of an adopted connection before its role was learnt: skipped.
    pub events_role_unknown: u64,
    /// Request heads on a stream id no client opens (even: server-initiated), or beyond
    /// [`MAX_STREAM_ID_JUMP`] past the highest id seen (a false resync read an id out of
    /// other bytes): dropped.
    pub requests_implausible_stream: u64,
    /// HTTP/2 connections whose client preface came in the direction contradicting the
    /// kernel's role (the preface writer is the client): not decoded.
    pub preface_role_conflicts: u64,
    /// Wire-layer counters of both directions.
    pub wire: H2WireStats,
}

impl Http2Stats {
    pub fn merge(&mut self, other: &Http2Stats) {
        self.connections += other.connections;
        self.streams += other.streams;
        self.exchanges += other.exchanges;
        self.streams_reset += other.streams_reset;
        self.streams_refused += other.streams_refused;
        self.requests_lost += other.requests_lost;
        self.streams_desync += other.streams_desync;
        self.streams_evicted += other.streams_evicted;
        self.frames_unknown_stream += other.frames_unknown_stream;
        self.streams_discarded += other.streams_discarded;
        self.requests_undecoded += other.requests_undecoded;
        self.grpc_status_undecoded += other.grpc_status_undecoded;
        self.events_role_unknown += other.events_role_unknown;
        self.requests_implausible_stream += other.requests_implausible_stream;
        self.preface_role_conflicts += other.preface_role_conflicts;
        self.wire.merge(&other.wire);
    }
}

/// One open stream: the request head is known.
#[derive(Debug)]
struct Stream {
    request: HttpRequest,
    start_ns: u64,
    request_tid: u32,
    request_end_ns: u64,
    response: Option<HttpResponse>,
    response_tid: Option<u32>,
}

impl Stream {
    /// Heap bytes this stream holds (its map slot, request and response).
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Stream>()
            + 16
            + request_bytes(&self.request)
            + self.response.as_ref().map_or(0, response_bytes)
    }
}

/// Which end of the stream's frames a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// HTTP/2 state of one connection (both directions).
#[derive(Debug)]
pub struct Http2Connection {
    role: Option<Role>,
    limits: Http2Limits,
    ingress: H2Direction,
    egress: H2Direction,
    /// Open streams by id (ids grow: the first is the oldest).
    streams: BTreeMap<u32, Stream>,
    /// Highest stream id whose request head was seen.
    max_stream_id: u32,
    /// Streams dropped at the bound since the last [`Http2Connection::take_discarded`].
    discarded: Vec<u64>,
    /// The byte budget shed this connection: records are ignored until it closes.
    stopped: bool,
    /// Wire counters of directions replaced after a loss.
    wire_before: H2WireStats,
    stats: Http2Stats,
    events: Vec<H2Event>,
    /// Running total of [`Stream::heap_bytes`] over `streams` (kept on insert, change and
    /// removal so [`Http2Connection::memory_bytes`] is O(1)).
    streams_bytes: usize,
}

/// Largest step between the highest request stream id seen and a new one (client ids grow by
/// 2 per stream: half a million streams lost in a capture gap). A 31-bit id read from bytes
/// that are not a frame header lands farther away nearly always.
pub const MAX_STREAM_ID_JUMP: u32 = 1 << 20;

/// Event list capacity kept between records (a larger one, after a burst, is released).
const KEPT_EVENTS: usize = 64;

impl Http2Connection {
    /// A connection whose first captured bytes were HTTP/2. `from_start`: the connection was
    /// seen from its beginning (the client preface and every HPACK table insert follow), else
    /// it was adopted mid-stream. `role` is `None` when unknown: it is then learnt from the
    /// first decoded header block (`:method` read -> server, written -> client; `:status` the
    /// opposite).
    pub fn new(role: Option<Role>, limits: Http2Limits, from_start: bool) -> Self {
        Self::with_state(role, limits, from_start, false)
    }

    /// A connection whose client preface came in the direction opposite to the kernel's role:
    /// which end is the client is contradictory, so nothing is decoded (counted in
    /// `preface_role_conflicts`); a wrong span would follow either guess.
    pub fn role_conflict(role: Option<Role>, limits: Http2Limits) -> Self {
        let mut conn = Self::with_state(role, limits, true, true);
        conn.stats.preface_role_conflicts = 1;
        conn
    }

    fn with_state(
        role: Option<Role>,
        limits: Http2Limits,
        from_start: bool,
        stopped: bool,
    ) -> Self {
        let (ingress_preface, egress_preface) = match (from_start, role) {
            (true, Some(Role::Server)) => (true, false),
            (true, Some(Role::Client)) => (false, true),
            _ => (false, false),
        };
        Http2Connection {
            role,
            limits,
            ingress: H2Direction::new(limits.wire, ingress_preface, from_start),
            egress: H2Direction::new(limits.wire, egress_preface, from_start),
            streams: BTreeMap::new(),
            max_stream_id: 0,
            discarded: Vec::new(),
            stopped,
            wire_before: H2WireStats::default(),
            stats: Http2Stats {
                connections: 1,
                ..Http2Stats::default()
            },
            events: Vec::new(),
            streams_bytes: 0,
        }
    }

    /// The role, if known or learnt.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Counters, wire layer included.
    pub fn stats(&self) -> Http2Stats {
        let mut stats = self.stats.clone();
        stats.wire = self.wire_before.clone();
        stats.wire.merge(self.ingress.stats());
        stats.wire.merge(self.egress.stats());
        stats
    }

    /// Feeds one record: `captured` is a prefix of the `true_len` bytes the syscall moved.
    /// Completed exchanges are pushed to `out`.
    pub fn on_record(
        &mut self,
        dir: Direction,
        captured: &[u8],
        true_len: u32,
        tid: u32,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        if self.stopped {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        match dir {
            Direction::Ingress => self
                .ingress
                .feed(captured, true_len, tid, ts_ns, &mut events),
            Direction::Egress => self
                .egress
                .feed(captured, true_len, tid, ts_ns, &mut events),
        }
        self.on_events(dir, &mut events, out);
        if events.capacity() > KEPT_EVENTS {
            events = Vec::new();
        }
        self.events = events;
    }

    /// Applies one direction's decoded events (drained) in wire order.
    pub fn on_events(
        &mut self,
        dir: Direction,
        events: &mut Vec<H2Event>,
        out: &mut Vec<Exchange>,
    ) {
        if self.stopped {
            events.clear();
            return;
        }
        for event in events.drain(..) {
            self.handle(dir, event, out);
        }
    }

    /// Streams with a request head and no exchange yet.
    pub fn pending_requests(&self) -> usize {
        self.streams.len()
    }

    /// One above the highest stream id seen: the linker's high-water mark.
    pub fn next_sequence(&self) -> u64 {
        u64::from(self.max_stream_id) + 1
    }

    /// Open streams with id >= `from`, for the linker.
    pub fn pending_heads_from(&self, from: u64) -> impl Iterator<Item = RequestStart<'_>> {
        let from = u32::try_from(from).unwrap_or(u32::MAX);
        self.streams.range(from..).map(|(id, s)| RequestStart {
            sequence: u64::from(*id),
            start_ns: s.start_ns,
            tid: s.request_tid,
            request: &s.request,
            stream_id: Some(*id),
        })
    }

    /// Sequences (stream ids) dropped at the open-stream bound since the last call: their
    /// identities are released by the caller.
    pub fn take_discarded(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.discarded)
    }

    /// Heap bytes held: the wire buffers and tables, the open streams (requests and responses
    /// so far) and the event list. O(1): the streams' total is kept as they change.
    pub fn memory_bytes(&self) -> usize {
        self.ingress.memory_bytes()
            + self.egress.memory_bytes()
            + self.streams_bytes
            + self.events.capacity() * std::mem::size_of::<H2Event>()
    }

    /// Inserts an open stream, accounting its bytes.
    fn insert_stream(&mut self, id: u32, stream: Stream) {
        self.streams_bytes += stream.heap_bytes();
        if let Some(old) = self.streams.insert(id, stream) {
            self.streams_bytes = self.streams_bytes.saturating_sub(old.heap_bytes());
        }
    }

    /// Removes an open stream, accounting its bytes.
    fn remove_stream(&mut self, id: u32) -> Option<Stream> {
        let stream = self.streams.remove(&id)?;
        self.streams_bytes = self.streams_bytes.saturating_sub(stream.heap_bytes());
        Some(stream)
    }

    /// Takes every open stream (the total drops to zero).
    fn take_streams(&mut self) -> BTreeMap<u32, Stream> {
        self.streams_bytes = 0;
        std::mem::take(&mut self.streams)
    }

    /// The connection closed: every open stream is handed out as `ConnectionClosed`.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        self.flush(ExchangeOutcome::ConnectionClosed, ts_ns, out);
    }

    /// The connection sat idle past the request timeout: every open stream is handed out as
    /// `Expired`.
    pub fn on_expire(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        self.flush(ExchangeOutcome::Expired, ts_ns, out);
    }

    /// Records of this connection were lost: the frame sequence and both HPACK tables are
    /// unknown from here. Open streams are discarded (their end may have been in the hole) and
    /// both directions restart as if adopted mid-stream. Returns the sequences discarded.
    pub fn on_loss(&mut self, _out: &mut Vec<Exchange>) -> Vec<u64> {
        let discarded = self.discard_all();
        self.wire_before.merge(self.ingress.stats());
        self.wire_before.merge(self.egress.stats());
        self.ingress = H2Direction::new(self.limits.wire, false, false);
        self.egress = H2Direction::new(self.limits.wire, false, false);
        discarded
    }

    /// The agent's byte budget is exhausted: forget every open stream and stop decoding this
    /// connection until it closes (its HPACK state is gone with the buffers).
    pub fn shed(&mut self, _out: &mut Vec<Exchange>) -> Vec<u64> {
        let discarded = self.discard_all();
        self.wire_before.merge(self.ingress.stats());
        self.wire_before.merge(self.egress.stats());
        self.ingress = H2Direction::new(self.limits.wire, false, false);
        self.egress = H2Direction::new(self.limits.wire, false, false);
        self.stopped = true;
        discarded
    }

    fn discard_all(&mut self) -> Vec<u64> {
        let streams = self.take_streams();
        self.stats.streams_discarded += streams.len() as u64;
        streams.into_keys().map(u64::from).collect()
    }

    fn flush(&mut self, outcome: ExchangeOutcome, ts_ns: u64, out: &mut Vec<Exchange>) {
        let streams = self.take_streams();
        for (id, stream) in streams {
            self.emit(id, stream, outcome, ts_ns, out);
        }
    }

    fn side(&self, dir: Direction) -> Option<Side> {
        let role = self.role?;
        Some(match (role, dir) {
            (Role::Server, Direction::Ingress) | (Role::Client, Direction::Egress) => Side::Request,
            _ => Side::Response,
        })
    }

    /// Learns the role of an adopted connection from a decoded header block.
    fn learn_role(&mut self, dir: Direction, fields: &[Header]) {
        if self.role.is_some() {
            return;
        }
        let is_request = fields.iter().any(|f| f.name == ":method");
        let is_response = fields.iter().any(|f| f.name == ":status");
        self.role = match (is_request, is_response, dir) {
            (true, false, Direction::Ingress) | (false, true, Direction::Egress) => {
                Some(Role::Server)
            }
            (true, false, Direction::Egress) | (false, true, Direction::Ingress) => {
                Some(Role::Client)
            }
            _ => None,
        };
    }

    fn handle(&mut self, dir: Direction, event: H2Event, out: &mut Vec<Exchange>) {
        match event {
            H2Event::Headers {
                stream_id,
                end_stream,
                fields,
                undecoded,
                ts_ns,
                tid,
                ..
            } => {
                self.learn_role(dir, &fields);
                let undecoded = undecoded > 0;
                match self.side(dir) {
                    // The request's END_STREAM changes nothing: the exchange ends with its response.
                    Some(Side::Request) => {
                        self.request_headers(stream_id, fields, undecoded, ts_ns, tid)
                    }
                    Some(Side::Response) => self.response_headers(
                        stream_id, end_stream, fields, undecoded, ts_ns, tid, out,
                    ),
                    None => self.stats.events_role_unknown += 1,
                }
            }
            H2Event::HeadersLost { stream_id, ts_ns } => match self.side(dir) {
                Some(Side::Request) if !self.streams.contains_key(&stream_id) => {
                    self.stats.requests_lost += 1;
                }
                Some(Side::Response) => match self.remove_stream(stream_id) {
                    Some(stream) => {
                        self.stats.streams_desync += 1;
                        self.emit(stream_id, stream, ExchangeOutcome::StreamDesync, ts_ns, out);
                    }
                    None => self.stats.frames_unknown_stream += 1,
                },
                // Lost request trailers: nothing of them was kept anyway.
                Some(Side::Request) => {}
                None => self.stats.events_role_unknown += 1,
            },
            H2Event::Data {
                stream_id,
                len,
                end_stream,
                ts_ns,
                tid,
            } => {
                let side = self.side(dir);
                let Some(stream) = self.streams.get_mut(&stream_id) else {
                    match side {
                        Some(Side::Response) => self.stats.frames_unknown_stream += 1,
                        None => self.stats.events_role_unknown += 1,
                        Some(Side::Request) => {}
                    }
                    return;
                };
                match side {
                    Some(Side::Request) => {
                        stream.request.body_len += u64::from(len);
                        stream.request_end_ns = ts_ns;
                    }
                    Some(Side::Response) => {
                        let Some(response) = stream.response.as_mut() else {
                            // DATA before the response head: a protocol error, nothing to count.
                            return;
                        };
                        response.body_len += u64::from(len);
                        stream.response_tid.get_or_insert(tid);
                        if end_stream && let Some(stream) = self.remove_stream(stream_id) {
                            self.emit(stream_id, stream, ExchangeOutcome::Complete, ts_ns, out);
                        }
                    }
                    None => {}
                }
            }
            H2Event::RstStream {
                stream_id,
                error_code,
                ts_ns,
                ..
            } => {
                let by_client = self.side(dir) == Some(Side::Request);
                if let Some(stream) = self.remove_stream(stream_id) {
                    self.stats.streams_reset += 1;
                    let outcome = ExchangeOutcome::StreamReset {
                        error_code,
                        by_client,
                    };
                    self.emit(stream_id, stream, outcome, ts_ns, out);
                }
            }
            H2Event::GoAway {
                last_stream_id,
                error_code,
                ts_ns,
            } => {
                // The server's GOAWAY names the last client stream it processes; a client's
                // names server-pushed streams, which carry no exchanges here.
                if self.side(dir) != Some(Side::Response) {
                    return;
                }
                let refused = self.streams.split_off(&last_stream_id.saturating_add(1));
                for (id, stream) in refused {
                    self.streams_bytes = self.streams_bytes.saturating_sub(stream.heap_bytes());
                    if id <= last_stream_id {
                        // Only when last_stream_id is u32::MAX (saturated): nothing is refused.
                        self.insert_stream(id, stream);
                        continue;
                    }
                    self.stats.streams_refused += 1;
                    self.emit(
                        id,
                        stream,
                        ExchangeOutcome::GoAway { error_code },
                        ts_ns,
                        out,
                    );
                }
            }
            H2Event::Settings {
                header_table_size, ..
            } => {
                if let Some(bytes) = header_table_size {
                    match dir {
                        Direction::Ingress => self.egress.set_max_table_size(bytes),
                        Direction::Egress => self.ingress.set_max_table_size(bytes),
                    }
                }
                // The sender's SETTINGS_MAX_FRAME_SIZE bounds what the other direction sends.
                let (sender, receiver) = match dir {
                    Direction::Ingress => (&self.ingress, &mut self.egress),
                    Direction::Egress => (&self.egress, &mut self.ingress),
                };
                if let Some(bytes) = sender.announced_max_frame_size() {
                    receiver.set_max_frame_size(bytes);
                }
            }
            H2Event::Desync { ts_ns } => {
                // A response-side desync may have swallowed any open stream's response head or
                // END_STREAM: they end now, marked. A request-side one only loses requests not
                // yet seen (never mis-attributed: responses are keyed by stream id).
                if self.side(dir) == Some(Side::Response) {
                    let streams = self.take_streams();
                    for (id, stream) in streams {
                        self.stats.streams_desync += 1;
                        self.emit(id, stream, ExchangeOutcome::StreamDesync, ts_ns, out);
                    }
                }
            }
        }
    }

    fn request_headers(
        &mut self,
        stream_id: u32,
        fields: Vec<Header>,
        undecoded: bool,
        ts_ns: u64,
        tid: u32,
    ) {
        if let Some(stream) = self.streams.get_mut(&stream_id) {
            // Request trailers: nothing of them is kept.
            stream.request_end_ns = ts_ns;
            return;
        }
        if stream_id == 0 || stream_id <= self.max_stream_id {
            // Stream 0 is the connection; a lower id than one seen is a closed stream.
            self.stats.frames_unknown_stream += 1;
            return;
        }
        if stream_id.is_multiple_of(2)
            || (self.max_stream_id > 0 && stream_id - self.max_stream_id > MAX_STREAM_ID_JUMP)
        {
            // Clients open odd ids only, and in order: this head was not a client's request
            // (bytes misread as a frame after a resync), so no stream is invented.
            self.stats.requests_implausible_stream += 1;
            return;
        }
        let Some(request) = request_from(fields, &self.limits) else {
            self.stats.requests_lost += 1;
            return;
        };
        if undecoded
            && !request
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-type"))
        {
            // The undecoded field may be the content-type that makes this a gRPC call: calling
            // it HTTP would be a wrong span, so none is made.
            self.stats.requests_undecoded += 1;
            return;
        }
        while self.streams.len() >= self.limits.max_open_streams.max(1) {
            let Some((oldest, old)) = self.streams.pop_first() else {
                break;
            };
            self.streams_bytes = self.streams_bytes.saturating_sub(old.heap_bytes());
            self.stats.streams_evicted += 1;
            self.discarded.push(u64::from(oldest));
        }
        self.stats.streams += 1;
        self.max_stream_id = stream_id;
        self.insert_stream(
            stream_id,
            Stream {
                request,
                start_ns: ts_ns,
                request_tid: tid,
                request_end_ns: ts_ns,
                response: None,
                response_tid: None,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn response_headers(
        &mut self,
        stream_id: u32,
        end_stream: bool,
        fields: Vec<Header>,
        undecoded: bool,
        ts_ns: u64,
        tid: u32,
        out: &mut Vec<Exchange>,
    ) {
        let Some(mut stream) = self.remove_stream(stream_id) else {
            self.stats.frames_unknown_stream += 1;
            return;
        };
        stream.response_tid.get_or_insert(tid);
        match stream.response.as_mut() {
            None => match status_of(&fields) {
                Some(status) if (100..200).contains(&status) => {
                    self.insert_stream(stream_id, stream);
                    return;
                }
                Some(status) => {
                    stream.response = Some(HttpResponse {
                        version: HttpVersion::Http2,
                        status,
                        headers: kept_response_fields(&fields).into_iter().collect(),
                        body_len: 0,
                        undecoded_fields: undecoded,
                    });
                }
                None => {
                    // No (decodable) :status: the response is unknown, never guessed.
                    self.stats.streams_desync += 1;
                    self.emit(stream_id, stream, ExchangeOutcome::StreamDesync, ts_ns, out);
                    return;
                }
            },
            Some(response) => {
                // Trailers (or further blocks): one grpc-status kept, the last one wins.
                if let Some(status) = kept_response_fields(&fields) {
                    response.headers.clear();
                    response.headers.push(status);
                }
                response.undecoded_fields |= undecoded;
            }
        }
        if end_stream {
            self.emit(stream_id, stream, ExchangeOutcome::Complete, ts_ns, out);
        } else {
            self.insert_stream(stream_id, stream);
        }
    }

    fn emit(
        &mut self,
        stream_id: u32,
        stream: Stream,
        outcome: ExchangeOutcome,
        end_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        self.stats.exchanges += 1;
        if outcome == ExchangeOutcome::Complete
            && let Some(response) = &stream.response
            && response.undecoded_fields
            && super::is_grpc(&stream.request)
            && !response
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(GRPC_STATUS))
        {
            self.stats.grpc_status_undecoded += 1;
        }
        out.push(Exchange {
            request: stream.request,
            response: stream.response,
            outcome,
            start_ns: stream.start_ns,
            request_end_ns: stream.request_end_ns.max(stream.start_ns),
            end_ns: end_ns.max(stream.start_ns),
            request_tid: stream.request_tid,
            response_tid: stream.response_tid,
            sequence: u64::from(stream_id),
        });
    }
}

/// Heap bytes a request holds.
fn request_bytes(request: &HttpRequest) -> usize {
    request.method.heap_bytes()
        + request.target.heap_bytes()
        + request
            .headers
            .iter()
            .map(|h| std::mem::size_of_val(h) + h.name.heap_bytes() + h.value.len())
            .sum::<usize>()
}

/// Request header names kept per stream (lowercase, as HTTP/2 sends them): what spans and
/// propagation read. Everything else (authorization, cookie, ...) is never held.
const KEPT_REQUEST_HEADERS: [&str; 16] = [
    ":authority",
    ":scheme",
    "host",
    "content-type",
    "user-agent",
    "te",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-amzn-trace-id",
    "grpc-trace-bin",
];

/// Whether a request header is kept ([`KEPT_REQUEST_HEADERS`]).
fn kept_request_header(name: &str) -> bool {
    KEPT_REQUEST_HEADERS
        .iter()
        .any(|kept| kept.eq_ignore_ascii_case(name))
}

/// The request of a decoded header block: `:method` and `:path` (`:authority` for CONNECT) are
/// required; the allowlisted fields ([`KEPT_REQUEST_HEADERS`]) are kept (bounded), their values
/// copied out of the block's buffer so the buffer is not held.
fn request_from(fields: Vec<Header>, limits: &Http2Limits) -> Option<HttpRequest> {
    let mut method: Option<Bytes> = None;
    let mut path: Option<Bytes> = None;
    let mut authority: Option<Bytes> = None;
    let mut headers = Vec::new();
    for field in fields {
        match field.name.as_str() {
            ":method" => method = Some(field.value),
            ":path" => path = Some(field.value),
            name if !kept_request_header(name) => {}
            // Pseudo-headers kept whatever the count bound.
            name if !name.starts_with(':') && headers.len() >= limits.max_request_headers => {}
            _ => {
                if field.name == ":authority" {
                    authority = Some(field.value.clone());
                }
                let len = field.value.len().min(limits.max_header_value_bytes);
                headers.push(Header {
                    name: field.name,
                    value: Bytes::copy_from_slice(&field.value[..len]),
                });
            }
        }
    }
    headers.shrink_to_fit();
    let method = std::str::from_utf8(&method?).ok()?.to_owned();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    // A copy: the decoded field may share a larger buffer.
    let lossy = |bytes: Bytes| match std::str::from_utf8(&bytes) {
        Ok(text) => SharedStr::from(text),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned().into(),
    };
    let target = match path {
        Some(path) if !path.is_empty() => lossy(path),
        _ if method == "CONNECT" => lossy(authority?),
        _ => return None,
    };
    Some(HttpRequest {
        method: method_text(&method),
        target,
        version: HttpVersion::Http2,
        headers,
        body_len: 0,
    })
}

/// `:status` as a number (three digits).
fn status_of(fields: &[Header]) -> Option<u16> {
    let value = &fields.iter().find(|f| f.name == ":status")?.value;
    if value.len() != 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Heap bytes a response holds.
fn response_bytes(response: &HttpResponse) -> usize {
    response.headers.capacity() * std::mem::size_of::<Header>()
        + response
            .headers
            .iter()
            .map(|h| h.name.heap_bytes() + h.value.len())
            .sum::<usize>()
}

/// The response field kept: the last `grpc-status` (the gRPC outcome), copied out of the
/// block's buffer so the buffer is not held. Nothing else downstream reads response headers,
/// and `grpc-message` is free text from the application.
fn kept_response_fields(fields: &[Header]) -> Option<Header> {
    let status = fields
        .iter()
        .rev()
        .find(|f| f.name.eq_ignore_ascii_case(GRPC_STATUS))?;
    Some(Header {
        name: Text::Static(GRPC_STATUS),
        value: Bytes::copy_from_slice(&status.value),
    })
}

/// The gRPC status trailer (or trailers-only response header).
pub const GRPC_STATUS: &str = "grpc-status";

/// Fuzzing harness of the exchange layer: interprets `data` as a script of wire events on one
/// connection and checks its invariants (open streams bounded, one exchange per stream id at
/// most, sane timestamps, nothing invented: a response only with a `:status`).
///
/// Layout: byte 0 picks the role (`% 3`: unknown, server, client) and, with bit 7, a bound of 4
/// open streams. Then operations of two bytes `op, arg`: direction `op & 1`, kind `(op >> 1) % 8`
/// (request-like headers, response-like headers, DATA, RST_STREAM, GOAWAY, lost block, desync,
/// close/expire/loss), stream id `arg % 16` (request heads: above the last one unless `arg` has
/// bit 7), flags from the high bits of `op` (bit 4: the block had an undecoded field).
#[doc(hidden)]
pub fn fuzz_entry(data: &[u8]) {
    let Some((&setup, mut script)) = data.split_first() else {
        return;
    };
    let role = match setup % 3 {
        0 => None,
        1 => Some(Role::Server),
        _ => Some(Role::Client),
    };
    let limits = Http2Limits {
        max_open_streams: if setup & 0x80 != 0 { 4 } else { 1024 },
        ..Http2Limits::default()
    };
    let mut conn = Http2Connection::new(role, limits, setup & 0x40 != 0);
    let mut out = Vec::new();
    let mut ts = 0u64;
    let mut last_request_id = 0u32;
    let field = |name: &'static str, value: &'static str| Header {
        name: Text::Static(name),
        value: Bytes::from_static(value.as_bytes()),
    };
    while let [op, arg, rest @ ..] = script {
        script = rest;
        ts += 1;
        let dir = if op & 1 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let stream_id = u32::from(*arg % 16);
        let end_stream = op & 0x80 != 0;
        let event = match (op >> 1) % 8 {
            0 => {
                let stream_id = if arg & 0x80 == 0 {
                    last_request_id + 1 + u32::from(arg % 3)
                } else {
                    stream_id
                };
                last_request_id = last_request_id.max(stream_id);
                let mut fields = vec![field(":method", "POST")];
                if op & 0x60 != 0x60 {
                    fields.push(field(":path", "/a.B/C"));
                }
                if op & 0x20 != 0 {
                    fields.push(field("content-type", "application/grpc"));
                }
                H2Event::Headers {
                    stream_id,
                    end_stream,
                    fields,
                    undecoded: u32::from(op & 0x10 != 0),
                    truncated: false,
                    ts_ns: ts,
                    tid: 1,
                }
            }
            1 => {
                let status = ["100", "200", "503", "2x0"][usize::from(*arg >> 6)];
                let mut fields = Vec::new();
                if op & 0x40 != 0 {
                    fields.push(field(":status", status));
                }
                if op & 0x20 != 0 {
                    fields.push(field("grpc-status", "5"));
                }
                H2Event::Headers {
                    stream_id,
                    end_stream,
                    fields,
                    undecoded: u32::from(op & 0x10 != 0),
                    truncated: false,
                    ts_ns: ts,
                    tid: 2,
                }
            }
            2 => H2Event::Data {
                stream_id,
                len: u32::from(*arg),
                end_stream,
                ts_ns: ts,
                tid: 3,
            },
            3 => H2Event::RstStream {
                stream_id,
                error_code: u32::from(*arg >> 4),
                ts_ns: ts,
                tid: 4,
            },
            4 => H2Event::GoAway {
                last_stream_id: stream_id,
                error_code: 0,
                ts_ns: ts,
            },
            5 => H2Event::HeadersLost {
                stream_id,
                ts_ns: ts,
            },
            6 => H2Event::Desync { ts_ns: ts },
            _ => {
                match arg % 3 {
                    0 => conn.on_close(ts, &mut out),
                    1 => conn.on_expire(ts, &mut out),
                    _ => {
                        conn.on_loss(&mut out);
                    }
                }
                continue;
            }
        };
        conn.on_events(dir, &mut vec![event], &mut out);
        assert!(
            conn.pending_requests() <= limits.max_open_streams,
            "open streams past the bound"
        );
        assert_eq!(
            conn.streams_bytes,
            conn.streams.values().map(Stream::heap_bytes).sum::<usize>(),
            "running memory total drifted"
        );
        let _ = conn.take_discarded();
    }
    conn.on_close(ts + 1, &mut out);
    let mut seen = std::collections::HashSet::new();
    for exchange in &out {
        assert!(
            seen.insert(exchange.sequence),
            "two exchanges of one stream"
        );
        assert!(
            exchange.start_ns <= exchange.end_ns,
            "ends before it starts"
        );
        assert!(exchange.start_ns <= exchange.request_end_ns);
        if let Some(response) = &exchange.response {
            assert!(
                response.status >= 200,
                "interim status kept as the response"
            );
            assert!(
                response.headers.len() <= 1,
                "more than one grpc-status kept"
            );
        }
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
