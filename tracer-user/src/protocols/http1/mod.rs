//! HTTP/1.x framing of captured byte streams and pairing of requests with responses.
//!
//! Each connection is an [`HttpConnection`]: two independent per-direction message streams
//! (`stream`) that find and parse message heads (`start_line`, `head`) and count bodies by their
//! framing (`framing`, `chunked`), plus a FIFO of pending requests that pairs every request with
//! its final response (`connection`). Captured records may be truncated (a "gap" of bytes the
//! kernel did not copy); gaps inside bodies are counted, gaps inside heads lose that message and
//! the stream resynchronises on the next plausible start line. Memory per connection is bounded
//! by [`HttpLimits`]; every loss is counted in [`HttpStats`].

mod chunked;
mod connection;
mod framing;
mod head;
mod response_scan;
mod start_line;
mod stream;

#[cfg(test)]
mod kernel_scan_tests;
#[cfg(test)]
mod tests;

pub use connection::{HttpConnection, RequestStart};

/// Whether `bytes` begin with (a prefix of) an HTTP/1.x request line, or the HTTP/2 preface.
pub fn may_start_request(bytes: &[u8]) -> bool {
    !matches!(
        start_line::classify(bytes, start_line::Accept::REQUESTS, usize::MAX),
        start_line::StartLine::NotStart
    )
}

use crate::model::{Direction, Exchange, Role};

/// Bounds on what one connection may buffer and keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest message head (start line + headers + blank line) that is parsed; larger heads are
    /// dropped and counted. Also the most bytes buffered per direction.
    pub max_head_bytes: usize,
    /// Headers kept per message (later ones are still used for body framing, then dropped).
    pub max_headers: usize,
    /// Headers kept per response, at most `max_headers` (all are still used for body framing).
    /// Nothing downstream reads response headers, and copying them took about a fifth of the
    /// pipeline's time, so none are kept by default.
    pub max_response_headers: usize,
    /// Longest header value kept; longer values keep their prefix.
    pub max_header_value_bytes: usize,
    /// Requests waiting for their response (pipelining depth); more are dropped and counted.
    pub max_pending_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_response_headers: 0,
            max_header_value_bytes: 8 * 1024,
            max_pending_requests: 64,
        }
    }
}

impl HttpLimits {
    /// Smallest head size accepted: anything lower is raised to this so a start line fits.
    pub const MIN_HEAD_BYTES: usize = 64;

    /// The limits with values too small to work raised to their minimum.
    pub fn sanitized(self) -> Self {
        HttpLimits {
            max_head_bytes: self.max_head_bytes.max(Self::MIN_HEAD_BYTES),
            max_pending_requests: self.max_pending_requests.max(1),
            ..self
        }
    }
}

/// Counters of one connection (merge them with [`HttpStats::merge`] for totals).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Message heads parsed (requests, interim and final responses).
    pub messages_parsed: u64,
    /// Exchanges handed out.
    pub exchanges: u64,
    /// Bytes skipped while out of sync: non-HTTP bytes, the rest of lost messages, and gap bytes
    /// that fell where no message could be followed.
    pub bytes_skipped: u64,
    /// Times a stream lost sync (garbage where a message should start, a gap inside a head, a
    /// malformed head or body framing).
    pub desyncs: u64,
    /// Messages whose start line was recognised but whose head was lost (gap, malformed, too
    /// large). Included in `desyncs`.
    pub messages_lost: u64,
    /// Heads dropped for exceeding `max_head_bytes`.
    pub heads_too_large: u64,
    /// Requests dropped because `max_pending_requests` were already waiting.
    pub pending_overflow: u64,
    /// Responses with no parsed request to pair with (connection adopted mid-stream, request
    /// lost or dropped); their bytes are framed and skipped.
    pub unpaired_responses: u64,
    /// Connections that switched protocol (`101`, or a `CONNECT` tunnel): parsing stopped.
    pub upgrades: u64,
    /// Connections that turned out to carry HTTP/2 (prior-knowledge preface): parsing stopped.
    pub http2_connections: u64,
    /// Exchanges discarded because records of their connection were lost in the kernel.
    pub lost_to_drops: u64,
}

impl HttpStats {
    /// Adds every counter of `other` to `self`.
    pub fn merge(&mut self, other: &HttpStats) {
        self.messages_parsed += other.messages_parsed;
        self.exchanges += other.exchanges;
        self.bytes_skipped += other.bytes_skipped;
        self.desyncs += other.desyncs;
        self.messages_lost += other.messages_lost;
        self.heads_too_large += other.heads_too_large;
        self.pending_overflow += other.pending_overflow;
        self.unpaired_responses += other.unpaired_responses;
        self.upgrades += other.upgrades;
        self.http2_connections += other.http2_connections;
        self.lost_to_drops += other.lost_to_drops;
    }
}

/// Fuzzing harness: interprets `data` as a script of records and drives one connection to its
/// end, checking invariants (bounded buffering, request-ordered output, sane timestamps).
///
/// Layout: byte 0 picks the role (`% 3`: unknown, server, client) and, with bit 7, tiny limits.
/// Then a sequence of operations, each starting with an op byte: `op >> 5 == 7` closes,
/// `op >> 5 == 6` expires, anything else is a record whose direction is `op & 1`, followed by a
/// length byte `n` (captured bytes taken from the script, fewer if it ends) and a gap byte `g`
/// (bytes not captured: `g * ((op >> 1) & 0xf)`).
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
    let limits = if setup & 0x80 != 0 {
        HttpLimits {
            max_head_bytes: 0,
            max_headers: 2,
            max_response_headers: 2,
            max_header_value_bytes: 4,
            max_pending_requests: 2,
        }
    } else {
        HttpLimits::default()
    };
    let head_bound = limits.sanitized().max_head_bytes;
    let mut conn = HttpConnection::new(role, limits);
    let mut out = Vec::new();
    let mut ts = 0u64;
    while let Some((&op, rest)) = script.split_first() {
        ts += 1;
        script = rest;
        match op >> 5 {
            7 => conn.on_close(ts, &mut out),
            6 => conn.on_expire(ts, &mut out),
            _ => {
                let dir = if op & 1 == 0 {
                    Direction::Ingress
                } else {
                    Direction::Egress
                };
                let (len, gap_unit, rest) = match script {
                    [len, gap, rest @ ..] => (usize::from(*len), u32::from(*gap), rest),
                    [len] => (usize::from(*len), 0, &[][..]),
                    [] => (0, 0, &[][..]),
                };
                let take = len.min(rest.len());
                let (captured, rest) = rest.split_at(take);
                script = rest;
                let gap = gap_unit * u32::from((op >> 1) & 0xf);
                let true_len = u32::try_from(take).unwrap_or(u32::MAX).saturating_add(gap);
                conn.on_record(dir, captured, true_len, u32::from(op), ts, &mut out);
            }
        }
        assert!(
            conn.buffered_bytes() <= 2 * head_bound,
            "buffered {} bytes, bound {}",
            conn.buffered_bytes(),
            2 * head_bound
        );
    }
    conn.on_close(ts + 1, &mut out);
    check_exchanges(&out);
}

/// Fuzz entry for the `head_scan` target: the cheaper response head scan against the full parse
/// on the same bytes (see `head::fuzz_response_scan`).
pub fn fuzz_head_scan(data: &[u8]) {
    head::fuzz_response_scan(data);
}

/// Invariants every output sequence must hold (used by the fuzz harness and tests).
fn check_exchanges(out: &[Exchange]) {
    let mut previous: Option<u64> = None;
    for exchange in out {
        if let Some(previous) = previous {
            assert!(
                exchange.sequence > previous,
                "exchanges out of request order"
            );
        }
        previous = Some(exchange.sequence);
        assert!(
            exchange.start_ns <= exchange.request_end_ns,
            "request ends before it starts"
        );
        assert!(
            exchange.start_ns <= exchange.end_ns,
            "exchange ends before it starts"
        );
    }
}
