//! Both directions of one connection: routes records to the per-direction message streams, learns
//! the role of sniffed connections, chooses body framing, and pairs requests with their final
//! responses in FIFO order (pipelining, interim responses, upgrades, lost messages).

use std::collections::VecDeque;

use crate::model::{Direction, Exchange, ExchangeOutcome, HttpRequest, HttpResponse, Role};

use super::framing::{self, BodyFraming, FramingHeaders, RequestMethod};
use super::head::ParsedHead;
use super::start_line::Accept;
use super::stream::{BodyKind, MessageStream, RecordCursor, StreamEvent};
use super::{HttpLimits, HttpStats};

/// A request waiting for its final response.
#[derive(Debug)]
struct PendingExchange {
    sequence: u64,
    /// `None` stands in for a request whose head was lost: it still takes its response.
    request: Option<HttpRequest>,
    method: RequestMethod,
    start_ns: u64,
    request_tid: u32,
    /// Last request byte so far (final once `request_complete`).
    request_end_ns: u64,
    request_complete: bool,
    response_tid: Option<u32>,
    /// The final response head, once seen.
    response: Option<HttpResponse>,
    /// Stamp of the last response byte, once the final response is complete.
    response_end_ns: Option<u64>,
    /// What the entry counts against the agent's byte budget (its size and its request's heap
    /// bytes, which do not change once parsed): read on every record of the connection.
    budget_bytes: usize,
}

/// Heap bytes a parsed request holds (for the agent's byte budget).
fn request_bytes(request: &HttpRequest) -> usize {
    request.method.heap_bytes()
        + request.target.heap_bytes()
        + request
            .headers
            .iter()
            .map(|h| std::mem::size_of_val(h) + h.name.heap_bytes() + h.value.len())
            .sum::<usize>()
}

/// A request whose head has been parsed and whose exchange has not completed yet.
#[derive(Clone, Copy, Debug)]
pub struct RequestStart<'a> {
    pub sequence: u64,
    pub start_ns: u64,
    /// Thread that read (server) or wrote (client) the first request bytes.
    pub tid: u32,
    pub request: &'a HttpRequest,
    /// HTTP/2 stream id (`None` for HTTP/1.x): both ends of a connection see the same ids, so
    /// the linker pairs a same-host client and server by it instead of in FIFO order.
    pub stream_id: Option<u32>,
}

/// Where a head came from: the record of its first byte and the record of its last.
#[derive(Clone, Copy, Debug)]
struct HeadArrival {
    first_ts: u64,
    first_tid: u32,
    end_ts: u64,
}

/// Which pending entry a stream's current body belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyOwner {
    /// The body is not tracked (no stream body, or it belongs to nothing kept).
    Nobody,
    Request(u64),
    Response(u64),
}

/// HTTP/1.x state of one connection (both directions).
#[derive(Debug)]
pub struct HttpConnection {
    role: Option<Role>,
    limits: HttpLimits,
    ingress: MessageStream,
    egress: MessageStream,
    ingress_owner: BodyOwner,
    egress_owner: BodyOwner,
    pending: VecDeque<PendingExchange>,
    next_sequence: u64,
    /// The connection left HTTP/1.x (upgrade, tunnel, HTTP/2).
    stopped: bool,
    stats: HttpStats,
}

impl HttpConnection {
    /// A connection whose role is known (accepted or connected) or `None` when adopted
    /// mid-stream; the role is then inferred from the first request that parses.
    pub fn new(role: Option<Role>, limits: HttpLimits) -> Self {
        HttpConnection {
            role,
            limits: limits.sanitized(),
            ingress: MessageStream::new(),
            egress: MessageStream::new(),
            ingress_owner: BodyOwner::Nobody,
            egress_owner: BodyOwner::Nobody,
            pending: VecDeque::new(),
            next_sequence: 0,
            stopped: false,
            stats: HttpStats::default(),
        }
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
        let gap = u64::from(true_len).saturating_sub(captured.len() as u64);
        let mut input = RecordCursor::new(captured, gap, ts_ns, tid);
        loop {
            let accept = self.accept(dir);
            let stream = match dir {
                Direction::Ingress => &mut self.ingress,
                Direction::Egress => &mut self.egress,
            };
            let Some(event) = stream.poll(&mut input, accept, &self.limits, &mut self.stats) else {
                break;
            };
            self.handle(dir, event, ts_ns, out);
            if self.stopped {
                break;
            }
        }
    }

    /// The connection closed: close-delimited bodies end here; every pending request is handed
    /// out (`ConnectionClosed` unless its final response was complete).
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        for dir in [Direction::Ingress, Direction::Egress] {
            let Some(body) = self.stream(dir).body_in_progress() else {
                continue;
            };
            if body.ends_at_close {
                self.on_message_end(dir, body.body_len, ts_ns);
            } else {
                self.record_partial_body(dir, body.body_len, body.last_ts);
            }
        }
        self.emit_ready(out);
        self.flush(ExchangeOutcome::ConnectionClosed, ts_ns, out);
        self.ingress.reset();
        self.egress.reset();
        self.ingress_owner = BodyOwner::Nobody;
        self.egress_owner = BodyOwner::Nobody;
    }

    /// Idle expiry: every pending request is handed out (`Expired` unless its final response was
    /// complete). The streams keep their framing state; bodies that continue later are counted
    /// and dropped.
    pub fn on_expire(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        for dir in [Direction::Ingress, Direction::Egress] {
            if let Some(body) = self.stream(dir).body_in_progress() {
                self.record_partial_body(dir, body.body_len, body.last_ts);
            }
        }
        self.flush(ExchangeOutcome::Expired, ts_ns, out);
        self.ingress_owner = BodyOwner::Nobody;
        self.egress_owner = BodyOwner::Nobody;
    }

    /// Records of this connection were lost before the next one (the kernel's ring buffer was
    /// full): whatever is pending could be paired with the wrong message across the hole, so it
    /// is discarded (exchanges whose final response was complete are still handed out) and both
    /// directions resynchronise on the next start line. Returns the sequence numbers discarded.
    pub fn on_loss(&mut self, out: &mut Vec<Exchange>) -> Vec<u64> {
        let mut discarded = Vec::new();
        while let Some(entry) = self.pending.pop_front() {
            match entry.response_end_ns {
                Some(end_ns) if entry.request_complete => {
                    self.emit(entry, ExchangeOutcome::Complete, end_ns, out)
                }
                _ => {
                    self.stats.lost_to_drops += 1;
                    discarded.push(entry.sequence);
                }
            }
        }
        self.ingress.reset();
        self.egress.reset();
        self.ingress_owner = BodyOwner::Nobody;
        self.egress_owner = BodyOwner::Nobody;
        discarded
    }

    /// The role, if known or inferred.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Counters of this connection.
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// Bytes buffered for incomplete heads (at most `max_head_bytes` per direction).
    pub fn buffered_bytes(&self) -> usize {
        self.ingress.buffered_bytes() + self.egress.buffered_bytes()
    }

    /// Heap bytes this connection holds: head buffers being filled and pending requests.
    /// O(pending). The small capacity an idle stream keeps between messages is left out (it is
    /// bounded per connection by the table's connection limit), so an idle keep-alive connection
    /// is never shed.
    pub fn memory_bytes(&self) -> usize {
        let pending: usize = self.pending.iter().map(|p| p.budget_bytes).sum();
        self.ingress.buffer_capacity() + self.egress.buffer_capacity() + pending
    }

    /// The agent's byte budget is exhausted: forget buffered head bytes and every pending
    /// request that is not complete (complete ones are still handed out), and stop parsing this
    /// connection until it closes. Resynchronising instead would search the middle of a body
    /// for a start line, and a body that carries HTTP (`$batch`, `application/http`, a proxied
    /// page) would pair a fake message with a real one. Returns the sequence numbers discarded.
    pub fn shed(&mut self, out: &mut Vec<Exchange>) -> Vec<u64> {
        let lost_before = self.stats.lost_to_drops;
        let discarded = self.on_loss(out);
        // Counted by the caller as budget evictions, not as kernel losses.
        self.stats.lost_to_drops = lost_before;
        self.stop();
        self.pending = VecDeque::new();
        discarded
    }

    /// Requests waiting for their final response.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Sequence number the next request will get.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Pending requests whose head has been parsed, with sequence >= `from`: what the linker
    /// needs to name a span before its exchange completes.
    pub fn pending_heads_from(&self, from: u64) -> impl Iterator<Item = RequestStart<'_>> {
        self.pending
            .iter()
            .filter(move |p| p.sequence >= from)
            .filter_map(|p| {
                p.request.as_ref().map(|request| RequestStart {
                    sequence: p.sequence,
                    start_ns: p.start_ns,
                    tid: p.request_tid,
                    request,
                    stream_id: None,
                })
            })
    }

    /// Whether the connection left HTTP/1.x (upgrade, tunnel, HTTP/2): records are ignored.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn stream(&mut self, dir: Direction) -> &mut MessageStream {
        match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }

    fn owner(&mut self, dir: Direction) -> &mut BodyOwner {
        match dir {
            Direction::Ingress => &mut self.ingress_owner,
            Direction::Egress => &mut self.egress_owner,
        }
    }

    /// The direction requests travel in, once the role is known.
    fn request_direction(&self) -> Option<Direction> {
        self.role.map(|role| match role {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
        })
    }

    fn accept(&self, dir: Direction) -> Accept {
        match self.request_direction() {
            None => Accept::BOTH,
            Some(requests) if requests == dir => Accept::REQUESTS,
            Some(_) => Accept::RESPONSES,
        }
    }

    fn handle(&mut self, dir: Direction, event: StreamEvent, ts: u64, out: &mut Vec<Exchange>) {
        match event {
            StreamEvent::Head {
                head: ParsedHead::Request(request, headers),
                first_ts,
                first_tid,
            } => {
                let arrival = HeadArrival {
                    first_ts,
                    first_tid,
                    end_ts: ts,
                };
                self.on_request_head(dir, request, &headers, arrival, out);
            }
            StreamEvent::Head {
                head: ParsedHead::Response(response, headers),
                first_tid,
                ..
            } => {
                self.on_response_head(dir, response, &headers, first_tid, ts, out);
            }
            StreamEvent::MessageEnd { body_len, ts } => {
                self.on_message_end(dir, body_len, ts);
                self.emit_ready(out);
            }
            StreamEvent::HeadLost => self.on_head_lost(dir, ts, out),
            StreamEvent::BodyLost { body_len, ts } => self.on_body_lost(dir, body_len, ts, out),
            StreamEvent::Http2Preface => {
                tracing::debug!("HTTP/2 preface: no longer parsing this connection");
                self.stop();
            }
        }
    }

    fn on_request_head(
        &mut self,
        dir: Direction,
        request: HttpRequest,
        headers: &FramingHeaders,
        arrival: HeadArrival,
        out: &mut Vec<Exchange>,
    ) {
        let HeadArrival {
            first_ts,
            first_tid,
            end_ts: ts,
        } = arrival;
        match self.request_direction() {
            None => {
                let role = match dir {
                    Direction::Ingress => Role::Server,
                    Direction::Egress => Role::Client,
                };
                tracing::trace!(?role, "role inferred from the first request");
                self.role = Some(role);
            }
            Some(requests) if requests != dir => {
                // Accepted as a candidate before the role was learnt from the other direction.
                self.lose_sync(dir);
                return;
            }
            Some(_) => {}
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let method = RequestMethod::of(&request.method);
        let budget_bytes = std::mem::size_of::<PendingExchange>() + request_bytes(&request);
        let admitted = self.admit(PendingExchange {
            sequence,
            budget_bytes,
            request: Some(request),
            method,
            start_ns: first_ts,
            request_tid: first_tid,
            request_end_ns: ts,
            request_complete: false,
            response_tid: None,
            response: None,
            response_end_ns: None,
        });
        let owner = if admitted {
            BodyOwner::Request(sequence)
        } else {
            BodyOwner::Nobody
        };
        match framing::request_framing(headers) {
            BodyFraming::Length(n) => self.expect_body(dir, BodyKind::Length(n), owner, ts),
            BodyFraming::Chunked => self.expect_body(dir, BodyKind::Chunked, owner, ts),
            BodyFraming::Invalid => {
                self.lose_sync(dir);
                self.complete_request(sequence, None, ts);
            }
            BodyFraming::Empty | BodyFraming::UntilClose | BodyFraming::Tunnel => {
                self.complete_request(sequence, None, ts);
            }
        }
        self.emit_ready(out);
    }

    fn on_response_head(
        &mut self,
        dir: Direction,
        response: HttpResponse,
        headers: &FramingHeaders,
        first_tid: u32,
        ts: u64,
        out: &mut Vec<Exchange>,
    ) {
        let status = response.status;
        let target = match self.request_direction() {
            Some(requests) if requests != dir => self
                .pending
                .front_mut()
                .filter(|entry| entry.response_end_ns.is_none()),
            _ => None,
        };
        let Some(entry) = target else {
            // Nothing to pair with: frame it as well as possible and skip it.
            self.stats.unpaired_responses += 1;
            if status == 101 {
                self.stop_upgraded();
                return;
            }
            match framing::response_framing(headers, status, RequestMethod::default()) {
                BodyFraming::Length(n) => {
                    self.expect_body(dir, BodyKind::Length(n), BodyOwner::Nobody, ts)
                }
                BodyFraming::Chunked => {
                    self.expect_body(dir, BodyKind::Chunked, BodyOwner::Nobody, ts)
                }
                BodyFraming::UntilClose => {
                    self.expect_body(dir, BodyKind::UntilClose, BodyOwner::Nobody, ts);
                }
                BodyFraming::Invalid => self.lose_sync(dir),
                BodyFraming::Empty | BodyFraming::Tunnel => {}
            }
            return;
        };
        entry.response_tid.get_or_insert(first_tid);
        if (100..200).contains(&status) && status != 101 {
            // Interim response (e.g. 100 Continue): the final one is still to come.
            return;
        }
        let sequence = entry.sequence;
        let method = entry.method;
        entry.response = Some(response);
        if status == 101 {
            entry.response_end_ns = Some(ts);
            self.finish_request_at_stop(ts);
            self.emit_ready(out);
            self.stop_upgraded();
            return;
        }
        let owner = BodyOwner::Response(sequence);
        match framing::response_framing(headers, status, method) {
            BodyFraming::Length(n) => self.expect_body(dir, BodyKind::Length(n), owner, ts),
            BodyFraming::Chunked => self.expect_body(dir, BodyKind::Chunked, owner, ts),
            BodyFraming::UntilClose => self.expect_body(dir, BodyKind::UntilClose, owner, ts),
            BodyFraming::Empty => {
                if let Some(entry) = self.pending.front_mut() {
                    entry.response_end_ns = Some(ts);
                }
            }
            BodyFraming::Tunnel => {
                if let Some(entry) = self.pending.front_mut() {
                    entry.response_end_ns = Some(ts);
                }
                self.finish_request_at_stop(ts);
                self.emit_ready(out);
                self.stop_upgraded();
                return;
            }
            BodyFraming::Invalid => {
                self.lose_sync(dir);
                self.emit_front_desynced(ts, out);
                return;
            }
        }
        self.emit_ready(out);
    }

    /// The body of the current message on `dir` ended.
    fn on_message_end(&mut self, dir: Direction, body_len: u64, ts: u64) {
        match std::mem::replace(self.owner(dir), BodyOwner::Nobody) {
            BodyOwner::Nobody => {}
            BodyOwner::Request(sequence) => self.complete_request(sequence, Some(body_len), ts),
            BodyOwner::Response(sequence) => {
                if let Some(entry) = self.pending.front_mut().filter(|e| e.sequence == sequence) {
                    if let Some(response) = entry.response.as_mut() {
                        response.body_len = body_len;
                    }
                    entry.response_end_ns = Some(ts);
                }
            }
        }
    }

    fn on_head_lost(&mut self, dir: Direction, ts: u64, out: &mut Vec<Exchange>) {
        *self.owner(dir) = BodyOwner::Nobody;
        match self.request_direction() {
            None => {}
            Some(requests) if requests == dir => {
                // Keep the lost request's place so its response is not paired with the next one.
                let sequence = self.next_sequence;
                self.next_sequence += 1;
                self.admit(PendingExchange {
                    sequence,
                    budget_bytes: std::mem::size_of::<PendingExchange>(),
                    request: None,
                    method: RequestMethod::default(),
                    start_ns: ts,
                    request_tid: 0,
                    request_end_ns: ts,
                    request_complete: true,
                    response_tid: None,
                    response: None,
                    response_end_ns: None,
                });
            }
            Some(_) => self.emit_front_desynced(ts, out),
        }
    }

    fn on_body_lost(&mut self, dir: Direction, body_len: u64, ts: u64, out: &mut Vec<Exchange>) {
        match std::mem::replace(self.owner(dir), BodyOwner::Nobody) {
            BodyOwner::Nobody => {}
            BodyOwner::Request(sequence) => {
                self.complete_request(sequence, Some(body_len), ts);
                self.emit_ready(out);
            }
            BodyOwner::Response(sequence) => {
                if let Some(entry) = self.pending.front_mut().filter(|e| e.sequence == sequence)
                    && let Some(response) = entry.response.as_mut()
                {
                    response.body_len = body_len;
                }
                self.emit_front_desynced(ts, out);
            }
        }
    }

    /// Stores how much of a body was seen before a close or expiry cut it short.
    fn record_partial_body(&mut self, dir: Direction, body_len: u64, last_ts: u64) {
        match *self.owner(dir) {
            BodyOwner::Nobody => {}
            BodyOwner::Request(sequence) => {
                if let Some(entry) = self
                    .pending
                    .iter_mut()
                    .rev()
                    .find(|e| e.sequence == sequence)
                {
                    if let Some(request) = entry.request.as_mut() {
                        request.body_len = body_len;
                    }
                    entry.request_end_ns = last_ts;
                }
            }
            BodyOwner::Response(sequence) => {
                if let Some(entry) = self.pending.front_mut().filter(|e| e.sequence == sequence)
                    && let Some(response) = entry.response.as_mut()
                {
                    response.body_len = body_len;
                }
            }
        }
    }

    /// Queues a pending exchange unless the queue is full.
    fn admit(&mut self, entry: PendingExchange) -> bool {
        if self.pending.len() >= self.limits.max_pending_requests {
            tracing::trace!(
                sequence = entry.sequence,
                "pending requests full: request dropped"
            );
            self.stats.pending_overflow += 1;
            return false;
        }
        self.pending.push_back(entry);
        true
    }

    fn lose_sync(&mut self, dir: Direction) {
        let stream = match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        };
        stream.lose_sync(&mut self.stats);
        *self.owner(dir) = BodyOwner::Nobody;
    }

    fn expect_body(&mut self, dir: Direction, kind: BodyKind, owner: BodyOwner, ts: u64) {
        let limits = self.limits;
        self.stream(dir).expect_body(kind, ts, &limits);
        *self.owner(dir) = owner;
    }

    /// Marks a request complete; `body_len` when its body was followed.
    fn complete_request(&mut self, sequence: u64, body_len: Option<u64>, ts: u64) {
        if let Some(entry) = self
            .pending
            .iter_mut()
            .rev()
            .find(|e| e.sequence == sequence)
        {
            if let (Some(request), Some(body_len)) = (entry.request.as_mut(), body_len) {
                request.body_len = body_len;
            }
            entry.request_end_ns = ts;
            entry.request_complete = true;
        }
    }

    /// Before stopping: a request still sending its body is taken as complete as it stands.
    fn finish_request_at_stop(&mut self, ts: u64) {
        for dir in [Direction::Ingress, Direction::Egress] {
            if let BodyOwner::Request(sequence) = *self.owner(dir) {
                let body = self.stream(dir).body_in_progress();
                let body_len = body.map(|b| b.body_len);
                let end = body.map_or(ts, |b| b.last_ts);
                self.complete_request(sequence, body_len, end);
            }
        }
    }

    fn stop_upgraded(&mut self) {
        tracing::debug!("protocol switched: no longer parsing this connection");
        self.stats.upgrades += 1;
        self.stop();
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.ingress.stop();
        self.egress.stop();
        self.ingress_owner = BodyOwner::Nobody;
        self.egress_owner = BodyOwner::Nobody;
    }

    /// The response stream lost the front exchange's response: hand it out as desynced.
    fn emit_front_desynced(&mut self, ts: u64, out: &mut Vec<Exchange>) {
        let Some(front) = self.pending.front() else {
            return;
        };
        if front.response_end_ns.is_some() {
            return;
        }
        if let Some(entry) = self.pending.pop_front() {
            for dir in [Direction::Ingress, Direction::Egress] {
                if *self.owner(dir) == BodyOwner::Request(entry.sequence) {
                    *self.owner(dir) = BodyOwner::Nobody;
                }
            }
            self.emit(entry, ExchangeOutcome::StreamDesync, ts, out);
        }
        self.emit_ready(out);
    }

    /// Hands out, in order, the exchanges at the front whose request and response are complete.
    fn emit_ready(&mut self, out: &mut Vec<Exchange>) {
        while let Some(front) = self.pending.front() {
            let Some(end_ns) = front.response_end_ns.filter(|_| front.request_complete) else {
                break;
            };
            if let Some(entry) = self.pending.pop_front() {
                self.emit(entry, ExchangeOutcome::Complete, end_ns, out);
            }
        }
    }

    /// Hands out every pending exchange: complete ones as such, the others with `outcome`.
    fn flush(&mut self, outcome: ExchangeOutcome, ts: u64, out: &mut Vec<Exchange>) {
        while let Some(entry) = self.pending.pop_front() {
            match entry.response_end_ns {
                Some(end_ns) => self.emit(entry, ExchangeOutcome::Complete, end_ns, out),
                None => self.emit(entry, outcome, ts, out),
            }
        }
    }

    fn emit(
        &mut self,
        entry: PendingExchange,
        outcome: ExchangeOutcome,
        end_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        let Some(request) = entry.request else {
            // A lost request's place: whatever response it took is dropped with it.
            if entry.response.is_some() || entry.response_tid.is_some() {
                self.stats.unpaired_responses += 1;
            }
            return;
        };
        self.stats.exchanges += 1;
        out.push(Exchange {
            request,
            response: entry.response,
            outcome,
            start_ns: entry.start_ns,
            request_end_ns: entry.request_end_ns,
            end_ns: end_ns.max(entry.start_ns),
            request_tid: entry.request_tid,
            response_tid: entry.response_tid,
            sequence: entry.sequence,
        });
    }
}
