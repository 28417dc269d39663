//! One direction of a connection as a sequence of HTTP/1.x messages: finds where messages start
//! (also mid-stream, after garbage or capture gaps), hands out parsed heads, and follows bodies by
//! the framing the connection chooses for each head. Knows nothing of pairing or roles.

use bytes::BytesMut;

use super::chunked::{ChunkProgress, ChunkedBody};
use super::head::{self, HeadParse, ParsedHead};
use super::start_line::{self, Accept, MessageKind, StartLine};
use super::{HttpLimits, HttpStats};

/// One captured record being consumed: `data` from `pos`, then `gap` uncaptured bytes.
#[derive(Debug)]
pub(crate) struct RecordCursor<'a> {
    pub data: &'a [u8],
    pub pos: usize,
    pub gap: u64,
    pub ts: u64,
    pub tid: u32,
}

impl<'a> RecordCursor<'a> {
    pub fn new(data: &'a [u8], gap: u64, ts: u64, tid: u32) -> Self {
        RecordCursor {
            data,
            pos: 0,
            gap,
            ts,
            tid,
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }
}

/// What the stream reports, one at a time.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// A head was parsed. The stream then assumes no body unless [`MessageStream::expect_body`]
    /// is called before the next poll.
    Head {
        head: ParsedHead,
        first_ts: u64,
        first_tid: u32,
    },
    /// The body of the current message ended; its last byte was in the record stamped `ts`.
    MessageEnd { body_len: u64, ts: u64 },
    /// A message whose start line was recognised was lost before its head could be parsed.
    HeadLost,
    /// The body framing of the current message was lost; it ends here, incomplete.
    BodyLost { body_len: u64, ts: u64 },
    /// The HTTP/2 connection preface: the stream stopped.
    Http2Preface,
}

/// How the current body ends.
#[derive(Clone, Debug)]
pub(crate) enum BodyKind {
    Length(u64),
    Chunked,
    UntilClose,
}

/// What a connection close or expiry finds of a body in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BodyInProgress {
    pub body_len: u64,
    /// Stamp of the last record that carried body bytes (or the head end).
    pub last_ts: u64,
    /// The body is close-delimited, so a close completes it.
    pub ends_at_close: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum LineEnd {
    /// Inside a line.
    #[default]
    InLine,
    /// Just after LF: at the start of a line.
    AfterLf,
    /// LF then CR.
    AfterLfCr,
}

/// A head being accumulated in the stream's buffer.
#[derive(Clone, Debug)]
struct HeadProgress {
    /// The message kind once the start line is complete and plausible.
    kind: Option<MessageKind>,
    line_end: LineEnd,
    /// The buffer holds the whole head, ready to parse.
    ready: bool,
    first_ts: u64,
    first_tid: u32,
    /// The candidate began where a message was expected, so failing is a fresh loss of sync.
    expected: bool,
}

#[derive(Clone, Debug)]
enum BodyCounter {
    Length { remaining: u64 },
    Chunked(ChunkedBody),
    UntilClose,
}

#[derive(Clone, Debug)]
struct BodyProgress {
    counter: BodyCounter,
    body_len: u64,
    last_ts: u64,
}

#[derive(Clone, Debug)]
enum StreamState {
    /// Between messages: the next byte should start one.
    Idle,
    Head(HeadProgress),
    Body(BodyProgress),
    /// Out of sync: searching for a plausible start line.
    Resync,
    /// The stream no longer carries HTTP/1.x.
    Stopped,
}

/// One direction's framer.
#[derive(Debug)]
pub(crate) struct MessageStream {
    state: StreamState,
    /// Head bytes gathered across records. Always ends at the current stream position and never
    /// holds more than `max_head_bytes`.
    buf: Vec<u8>,
    /// Arena of the kept header values of parsed heads (see [`head::parse_head_into`]).
    values: BytesMut,
}

/// Result of one step of the state machine.
enum Step {
    Event(StreamEvent),
    Continue,
}

/// Buffer capacity kept between messages; larger buffers are released once a head is done.
const RETAINED_BUFFER_BYTES: usize = 1024;

impl MessageStream {
    pub fn new() -> Self {
        MessageStream {
            state: StreamState::Idle,
            buf: Vec::new(),
            values: BytesMut::new(),
        }
    }

    /// Bytes held for an incomplete head.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes allocated for a head being buffered (what the agent's byte budget counts); the
    /// capacity an empty buffer keeps between messages is not counted.
    pub fn buffer_capacity(&self) -> usize {
        if self.buf.is_empty() {
            0
        } else {
            self.buf.capacity()
        }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.state, StreamState::Stopped)
    }

    /// Consumes `input` until it is exhausted (`None`) or something happens.
    pub fn poll(
        &mut self,
        input: &mut RecordCursor<'_>,
        accept: Accept,
        limits: &HttpLimits,
        stats: &mut HttpStats,
    ) -> Option<StreamEvent> {
        loop {
            let step = if self.head_ready() {
                self.finish_buffered_head(accept, limits, stats)
            } else if input.pos < input.data.len() {
                self.step_bytes(input, accept, limits, stats)
            } else if input.gap > 0 {
                self.step_gap(input, stats)
            } else {
                return None;
            };
            if let Step::Event(event) = step {
                return Some(event);
            }
        }
    }

    /// After a [`StreamEvent::Head`]: the body that follows and how it ends. `ts` stamps the
    /// record that carried the end of the head.
    pub fn expect_body(&mut self, kind: BodyKind, ts: u64, limits: &HttpLimits) {
        if matches!(self.state, StreamState::Stopped) {
            return;
        }
        let counter = match kind {
            BodyKind::Length(remaining) => BodyCounter::Length { remaining },
            BodyKind::Chunked => BodyCounter::Chunked(ChunkedBody::new(limits.max_head_bytes)),
            BodyKind::UntilClose => BodyCounter::UntilClose,
        };
        self.state = StreamState::Body(BodyProgress {
            counter,
            body_len: 0,
            last_ts: ts,
        });
    }

    /// The connection cannot follow this stream any more (contradictory framing): search for the
    /// next start line.
    pub fn lose_sync(&mut self, stats: &mut HttpStats) {
        if !matches!(self.state, StreamState::Stopped | StreamState::Resync) {
            stats.desyncs += 1;
            self.buf.clear();
            self.state = StreamState::Resync;
        }
    }

    /// The stream leaves HTTP/1.x for good.
    pub fn stop(&mut self) {
        self.buf = Vec::new();
        self.values = BytesMut::new();
        self.state = StreamState::Stopped;
    }

    /// The body being followed, if any.
    pub fn body_in_progress(&self) -> Option<BodyInProgress> {
        match &self.state {
            StreamState::Body(body) => Some(BodyInProgress {
                body_len: body.body_len,
                last_ts: body.last_ts,
                ends_at_close: matches!(body.counter, BodyCounter::UntilClose),
            }),
            _ => None,
        }
    }

    /// Forgets everything (the connection closed); a stopped stream stays stopped.
    pub fn reset(&mut self) {
        self.buf = Vec::new();
        if !self.is_stopped() {
            self.state = StreamState::Idle;
        }
    }

    fn step_bytes(
        &mut self,
        input: &mut RecordCursor<'_>,
        accept: Accept,
        limits: &HttpLimits,
        stats: &mut HttpStats,
    ) -> Step {
        match &mut self.state {
            StreamState::Idle => self.step_idle(input, accept, limits, stats),
            StreamState::Head(_) => self.step_head(input, accept, limits, stats),
            StreamState::Body(_) => self.step_body(input, stats),
            StreamState::Resync => {
                let rest = input.rest();
                match start_line::find_start(rest, 0, accept, limits.max_head_bytes) {
                    Some((offset, found)) => {
                        stats.bytes_skipped += offset as u64;
                        input.pos += offset;
                        self.begin_candidate(input, found, false, limits, stats)
                    }
                    None => {
                        stats.bytes_skipped += rest.len() as u64;
                        input.pos = input.data.len();
                        Step::Continue
                    }
                }
            }
            StreamState::Stopped => {
                input.pos = input.data.len();
                input.gap = 0;
                Step::Continue
            }
        }
    }

    fn step_idle(
        &mut self,
        input: &mut RecordCursor<'_>,
        accept: Accept,
        limits: &HttpLimits,
        stats: &mut HttpStats,
    ) -> Step {
        // Empty lines between messages are allowed (RFC 9112 section 2.2).
        let blank = input
            .rest()
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        input.pos += blank;
        let rest = input.rest();
        if rest.is_empty() {
            return Step::Continue;
        }
        // Fast path: a whole, well-formed head in this record needs no separate start-line check
        // (the parser checks the same grammar). Anything else goes the careful way.
        if let Some(kind) = likely_kind(rest, accept) {
            let window = rest.get(..limits.max_head_bytes).unwrap_or(rest);
            if let Ok(HeadParse::Complete { head, len }) =
                head::parse_head_into(window, kind, limits, &mut self.values)
            {
                return self.head_in_record(input, head, len, stats);
            }
        }
        match start_line::classify(rest, accept, limits.max_head_bytes) {
            StartLine::NotStart => {
                tracing::trace!("no start line where a message should begin: resync");
                stats.desyncs += 1;
                stats.bytes_skipped += 1;
                input.pos += 1;
                self.state = StreamState::Resync;
                Step::Continue
            }
            found => self.begin_candidate(input, found, true, limits, stats),
        }
    }

    /// A start line (or a prefix of one) begins at `input.pos`.
    fn begin_candidate(
        &mut self,
        input: &mut RecordCursor<'_>,
        found: StartLine,
        expected: bool,
        limits: &HttpLimits,
        stats: &mut HttpStats,
    ) -> Step {
        let mut progress = HeadProgress {
            kind: None,
            line_end: LineEnd::InLine,
            ready: false,
            first_ts: input.ts,
            first_tid: input.tid,
            expected,
        };
        match found {
            StartLine::Http2Preface => {
                stats.http2_connections += 1;
                self.stop();
                Step::Event(StreamEvent::Http2Preface)
            }
            StartLine::NotStart => {
                // Callers never pass this; skip a byte so the stream still advances.
                stats.bytes_skipped += 1;
                input.pos += 1;
                self.state = StreamState::Resync;
                Step::Continue
            }
            StartLine::Partial => {
                self.buf.clear();
                self.state = StreamState::Head(progress);
                Step::Continue
            }
            StartLine::Message(kind) => {
                // Fast path: the whole head is in this record; parse it in place.
                let rest = input.rest();
                let window = rest.get(..limits.max_head_bytes).unwrap_or(rest);
                match head::parse_head_into(window, kind, limits, &mut self.values) {
                    Ok(HeadParse::Complete { head, len }) => {
                        self.head_in_record(input, head, len, stats)
                    }
                    Ok(HeadParse::Partial) if window.len() < rest.len() => {
                        // No head end within the limit, so no message starts in the window.
                        stats.heads_too_large += 1;
                        stats.messages_lost += 1;
                        stats.desyncs += 1;
                        stats.bytes_skipped += window.len() as u64;
                        input.pos += window.len();
                        self.state = StreamState::Resync;
                        Step::Event(StreamEvent::HeadLost)
                    }
                    Ok(HeadParse::Partial) => {
                        progress.kind = Some(kind);
                        self.buf.clear();
                        self.state = StreamState::Head(progress);
                        Step::Continue
                    }
                    Err(error) => {
                        tracing::trace!(%error, "malformed head");
                        self.lose_head_in_record(input, stats)
                    }
                }
            }
        }
    }

    /// A head of `len` bytes at `input.pos` was parsed in place.
    fn head_in_record(
        &mut self,
        input: &mut RecordCursor<'_>,
        head: ParsedHead,
        len: usize,
        stats: &mut HttpStats,
    ) -> Step {
        input.pos += len;
        stats.messages_parsed += 1;
        self.state = StreamState::Idle;
        Step::Event(StreamEvent::Head {
            head,
            first_ts: input.ts,
            first_tid: input.tid,
        })
    }

    /// A recognised head starting at `input.pos` (nothing buffered) is lost: skip its first
    /// byte and search on.
    fn lose_head_in_record(&mut self, input: &mut RecordCursor<'_>, stats: &mut HttpStats) -> Step {
        stats.messages_lost += 1;
        stats.desyncs += 1;
        stats.bytes_skipped += 1;
        input.pos += 1;
        self.state = StreamState::Resync;
        Step::Event(StreamEvent::HeadLost)
    }

    /// Gathers head bytes into the buffer.
    fn step_head(
        &mut self,
        input: &mut RecordCursor<'_>,
        accept: Accept,
        limits: &HttpLimits,
        stats: &mut HttpStats,
    ) -> Step {
        let StreamState::Head(progress) = &mut self.state else {
            return Step::Continue;
        };
        let room = limits.max_head_bytes.saturating_sub(self.buf.len());
        let rest = input.rest();
        let Some(_) = progress.kind else {
            // Unverified start line: take bytes up to the end of the first line, then decide.
            let line = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |p| p + 1);
            let take = line.min(room);
            let taken = rest.get(..take).unwrap_or(rest);
            self.buf.extend_from_slice(taken);
            input.pos += take;
            let line_done = taken.last() == Some(&b'\n');
            let full = self.buf.len() >= limits.max_head_bytes;
            if !line_done && !full {
                return Step::Continue;
            }
            return match start_line::classify(&self.buf, accept, limits.max_head_bytes) {
                StartLine::Message(kind) => {
                    progress.kind = Some(kind);
                    progress.line_end = if line_done {
                        LineEnd::AfterLf
                    } else {
                        LineEnd::InLine
                    };
                    Step::Continue
                }
                StartLine::Http2Preface => {
                    stats.http2_connections += 1;
                    self.stop();
                    Step::Event(StreamEvent::Http2Preface)
                }
                StartLine::Partial | StartLine::NotStart => {
                    if progress.expected {
                        stats.desyncs += 1;
                    }
                    self.search_buffer(accept, limits, stats);
                    Step::Continue
                }
            };
        };
        let window = rest.get(..room).unwrap_or(rest);
        match scan_head_end(window, &mut progress.line_end) {
            Some(end) => {
                self.buf
                    .extend_from_slice(window.get(..end).unwrap_or(window));
                input.pos += end;
                progress.ready = true;
                Step::Continue
            }
            None => {
                self.buf.extend_from_slice(window);
                input.pos += window.len();
                if self.buf.len() >= limits.max_head_bytes {
                    tracing::trace!(limit = limits.max_head_bytes, "head too large");
                    stats.heads_too_large += 1;
                    stats.messages_lost += 1;
                    stats.desyncs += 1;
                    stats.bytes_skipped += self.buf.len() as u64;
                    self.release_buffer();
                    self.state = StreamState::Resync;
                    Step::Event(StreamEvent::HeadLost)
                } else {
                    Step::Continue
                }
            }
        }
    }

    /// Whether the buffer holds a complete head waiting to be parsed.
    fn head_ready(&self) -> bool {
        matches!(&self.state, StreamState::Head(progress) if progress.ready)
    }

    /// Parses the complete head in the buffer.
    fn finish_buffered_head(
        &mut self,
        accept: Accept,
        limits: &HttpLimits,
        stats: &mut HttpStats,
    ) -> Step {
        let StreamState::Head(progress) = &self.state else {
            return Step::Continue;
        };
        let (first_ts, first_tid) = (progress.first_ts, progress.first_tid);
        let parsed = match progress.kind {
            Some(kind) => head::parse_head_into(&self.buf, kind, limits, &mut self.values),
            None => Ok(HeadParse::Partial),
        };
        match parsed {
            Ok(HeadParse::Complete { head, len }) => {
                stats.bytes_skipped += self.buf.len().saturating_sub(len) as u64;
                stats.messages_parsed += 1;
                self.release_buffer();
                self.state = StreamState::Idle;
                Step::Event(StreamEvent::Head {
                    head,
                    first_ts,
                    first_tid,
                })
            }
            Ok(HeadParse::Partial) | Err(_) => {
                tracing::trace!("malformed head across records");
                stats.messages_lost += 1;
                stats.desyncs += 1;
                self.search_buffer(accept, limits, stats);
                Step::Event(StreamEvent::HeadLost)
            }
        }
    }

    /// The buffered candidate failed: look for another start line after its first byte. The
    /// buffer ends at the current input position, so a candidate found in it continues there.
    fn search_buffer(&mut self, accept: Accept, limits: &HttpLimits, stats: &mut HttpStats) {
        let StreamState::Head(progress) = &self.state else {
            self.release_buffer();
            self.state = StreamState::Resync;
            return;
        };
        let (first_ts, first_tid) = (progress.first_ts, progress.first_tid);
        let Some((offset, found)) =
            start_line::find_start(&self.buf, 1, accept, limits.max_head_bytes)
        else {
            stats.bytes_skipped += self.buf.len() as u64;
            self.release_buffer();
            self.state = StreamState::Resync;
            return;
        };
        stats.bytes_skipped += offset as u64;
        self.buf.drain(..offset);
        let mut next = HeadProgress {
            kind: None,
            line_end: LineEnd::InLine,
            ready: false,
            first_ts,
            first_tid,
            expected: false,
        };
        match found {
            StartLine::Message(kind) => {
                next.kind = Some(kind);
                if let Some(end) = scan_head_end(&self.buf, &mut next.line_end) {
                    // The buffer never extends past a head end, so this is its last byte.
                    stats.bytes_skipped += self.buf.len().saturating_sub(end) as u64;
                    self.buf.truncate(end);
                    next.ready = true;
                }
            }
            StartLine::Http2Preface => {
                stats.http2_connections += 1;
                self.stop();
                return;
            }
            StartLine::Partial | StartLine::NotStart => {}
        }
        self.state = StreamState::Head(next);
    }

    fn release_buffer(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > RETAINED_BUFFER_BYTES {
            self.buf.shrink_to(RETAINED_BUFFER_BYTES);
        }
    }

    fn step_body(&mut self, input: &mut RecordCursor<'_>, stats: &mut HttpStats) -> Step {
        let StreamState::Body(body) = &mut self.state else {
            return Step::Continue;
        };
        let rest = input.rest();
        body.last_ts = input.ts;
        match &mut body.counter {
            BodyCounter::Length { remaining } => {
                let take = usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                input.pos += take;
                body.body_len += take as u64;
                *remaining -= take as u64;
                if *remaining == 0 {
                    let event = StreamEvent::MessageEnd {
                        body_len: body.body_len,
                        ts: input.ts,
                    };
                    self.state = StreamState::Idle;
                    return Step::Event(event);
                }
                Step::Continue
            }
            BodyCounter::Chunked(chunks) => {
                let (consumed, progress) = chunks.feed(rest);
                input.pos += consumed;
                body.body_len += consumed as u64;
                match progress {
                    Ok(ChunkProgress::NeedMore) => Step::Continue,
                    Ok(ChunkProgress::Done) => {
                        let event = StreamEvent::MessageEnd {
                            body_len: body.body_len,
                            ts: input.ts,
                        };
                        self.state = StreamState::Idle;
                        Step::Event(event)
                    }
                    Err(error) => {
                        tracing::trace!(%error, "chunked body lost");
                        stats.desyncs += 1;
                        let event = StreamEvent::BodyLost {
                            body_len: body.body_len,
                            ts: input.ts,
                        };
                        self.state = StreamState::Resync;
                        Step::Event(event)
                    }
                }
            }
            BodyCounter::UntilClose => {
                input.pos += rest.len();
                body.body_len += rest.len() as u64;
                Step::Continue
            }
        }
    }

    /// The rest of the record was not captured.
    fn step_gap(&mut self, input: &mut RecordCursor<'_>, stats: &mut HttpStats) -> Step {
        let gap = input.gap;
        match &mut self.state {
            StreamState::Idle => {
                // Bytes after a complete message were lost: they began another message.
                input.gap = 0;
                stats.messages_lost += 1;
                stats.desyncs += 1;
                stats.bytes_skipped += gap;
                self.state = StreamState::Resync;
                Step::Event(StreamEvent::HeadLost)
            }
            StreamState::Head(progress) => {
                input.gap = 0;
                // A recognised start line, or bytes fitting one where a message was due: a
                // message was lost. A partial candidate met while resyncing is just garbage.
                let lost = progress.kind.is_some() || progress.expected;
                stats.bytes_skipped += gap + self.buf.len() as u64;
                self.release_buffer();
                self.state = StreamState::Resync;
                if lost {
                    stats.desyncs += 1;
                    stats.messages_lost += 1;
                    Step::Event(StreamEvent::HeadLost)
                } else {
                    Step::Continue
                }
            }
            StreamState::Body(body) => {
                body.last_ts = input.ts;
                match &mut body.counter {
                    BodyCounter::Length { remaining } => {
                        let take = gap.min(*remaining);
                        input.gap -= take;
                        body.body_len += take;
                        *remaining -= take;
                        if *remaining == 0 {
                            let event = StreamEvent::MessageEnd {
                                body_len: body.body_len,
                                ts: input.ts,
                            };
                            self.state = StreamState::Idle;
                            return Step::Event(event);
                        }
                        Step::Continue
                    }
                    BodyCounter::Chunked(chunks) => {
                        input.gap = 0;
                        match chunks.skip(gap) {
                            Ok(ChunkProgress::NeedMore) => {
                                body.body_len += gap;
                                Step::Continue
                            }
                            Ok(ChunkProgress::Done) => {
                                body.body_len += gap;
                                let event = StreamEvent::MessageEnd {
                                    body_len: body.body_len,
                                    ts: input.ts,
                                };
                                self.state = StreamState::Idle;
                                Step::Event(event)
                            }
                            Err(error) => {
                                tracing::trace!(%error, "chunked body lost");
                                stats.desyncs += 1;
                                stats.bytes_skipped += gap;
                                let event = StreamEvent::BodyLost {
                                    body_len: body.body_len,
                                    ts: input.ts,
                                };
                                self.state = StreamState::Resync;
                                Step::Event(event)
                            }
                        }
                    }
                    BodyCounter::UntilClose => {
                        input.gap = 0;
                        body.body_len += gap;
                        Step::Continue
                    }
                }
            }
            StreamState::Resync => {
                input.gap = 0;
                stats.bytes_skipped += gap;
                Step::Continue
            }
            StreamState::Stopped => {
                input.gap = 0;
                Step::Continue
            }
        }
    }
}

/// The message kind the bytes at a message boundary most likely start, if any is accepted.
fn likely_kind(bytes: &[u8], accept: Accept) -> Option<MessageKind> {
    if accept.responses && bytes.starts_with(b"HTTP/") {
        Some(MessageKind::Response)
    } else if accept.requests && bytes.first().copied().is_some_and(start_line::is_tchar) {
        Some(MessageKind::Request)
    } else {
        None
    }
}

/// Finds the end of a head (an empty line: LF then optional CR then LF), carrying the line-end
/// state across calls. Returns the offset just past the final LF.
fn scan_head_end(bytes: &[u8], state: &mut LineEnd) -> Option<usize> {
    for (i, &b) in bytes.iter().enumerate() {
        *state = match (*state, b) {
            (LineEnd::AfterLf | LineEnd::AfterLfCr, b'\n') => return Some(i + 1),
            (_, b'\n') => LineEnd::AfterLf,
            (LineEnd::AfterLf, b'\r') => LineEnd::AfterLfCr,
            _ => LineEnd::InLine,
        };
    }
    None
}
