//! The protocol of one connection, chosen on its first captured bytes: the HTTP/2 client preface
//! (either role), or on a connection of unknown role (adopted mid-stream) a run of valid HTTP/2
//! frames, or on a server the HTTP/2 frames it writes before reading the preface (servers send
//! their SETTINGS first), or on a connection of known role whose records were lost before its
//! first captured one a run of frames (adopted mid-stream) -> HTTP/2; anything else stays on
//! the HTTP/1.x path unchanged. A run may end in an uncaptured payload: one frame whose
//! payload is the rest of the syscall's (partly captured) bytes counts.
//!
//! TLS: a connection whose first captured socket bytes are a TLS record header waits for
//! plaintext (its ciphertext is never framed); the first plaintext record a TLS library's uprobe
//! captured (`DATA_FLAG_TLS`) switches the connection to its plaintext stream for good: a fresh
//! framer (HTTP/1.x, or HTTP/2 on the preface / frames, as for socket bytes) and every later
//! socket record of the connection is ciphertext, skipped and counted.

use crate::model::{Direction, Exchange, Role};
use crate::protocols::http1::{HttpConnection, HttpLimits, HttpStats, RequestStart};
use crate::protocols::http2::frame::plausible_run;
use crate::protocols::http2::{Http2Connection, Http2Limits, Http2Stats, starts_with_preface};

/// HTTP/1.x or HTTP/2 state of one connection.
#[derive(Debug)]
pub struct ProtocolConnection {
    decided: bool,
    proto: Proto,
    http_limits: HttpLimits,
    h2_limits: Http2Limits,
    /// HTTP/1 counters of a connection that turned out to be HTTP/2 (bytes before the choice).
    http1_before: HttpStats,
    /// Records were lost before the protocol was chosen: the first captured bytes may be in
    /// the middle of the connection.
    lost_before_decided: bool,
    /// Whether the connection's bytes are TLS and where its plaintext is.
    tls: Tls,
    tls_stats: TlsStats,
}

/// TLS state of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Tls {
    /// No TLS seen: socket bytes are framed.
    #[default]
    No,
    /// The first socket bytes were a TLS record: ciphertext, skipped until plaintext comes.
    Waiting,
    /// Plaintext records arrived: they are framed, socket records (ciphertext) skipped.
    Plaintext,
}

/// TLS counters (monotonic, summed over connections).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Connections whose first captured socket bytes were a TLS record.
    pub ciphertext_connections: u64,
    /// Connections that switched to the plaintext a TLS library's uprobes captured.
    pub plaintext_connections: u64,
    /// Socket records of TLS connections never framed (ciphertext), and their bytes.
    pub ciphertext_records_skipped: u64,
    pub ciphertext_bytes_skipped: u64,
    /// Plaintext records framed, and their bytes (captured or gap).
    pub plaintext_records: u64,
    pub plaintext_bytes: u64,
    /// Connections whose socket bytes had been framed (not recognised as TLS: records lost at
    /// its start) when plaintext arrived: what that framer held was discarded.
    pub switched_after_framing: u64,
}

impl TlsStats {
    /// Adds every counter of `other` to `self`.
    pub fn merge(&mut self, other: &TlsStats) {
        self.ciphertext_connections += other.ciphertext_connections;
        self.plaintext_connections += other.plaintext_connections;
        self.ciphertext_records_skipped += other.ciphertext_records_skipped;
        self.ciphertext_bytes_skipped += other.ciphertext_bytes_skipped;
        self.plaintext_records += other.plaintext_records;
        self.plaintext_bytes += other.plaintext_bytes;
        self.switched_after_framing += other.switched_after_framing;
    }
}

/// Whether `bytes` start with a TLS record header (content type change_cipher_spec, alert,
/// handshake or application_data; version 3.x with x <= 4): never the start of HTTP/1.x (a
/// control byte) nor of HTTP/2 (the preface; a frame header would announce over a megabyte).
pub fn starts_with_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x17, 0x03, minor, ..] if *minor <= 0x04)
        || matches!(bytes, [0x14..=0x17, 0x03])
}

/// HTTP/1.x (nearly every connection) stays inline; HTTP/2's larger state is boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Proto {
    Http1(HttpConnection),
    Http2(Box<Http2Connection>),
}

/// Request heads of either protocol, for the linker (no allocation).
pub enum Heads<A, B> {
    Http1(A),
    Http2(B),
}

impl<'a, A, B> Iterator for Heads<A, B>
where
    A: Iterator<Item = RequestStart<'a>>,
    B: Iterator<Item = RequestStart<'a>>,
{
    type Item = RequestStart<'a>;
    fn next(&mut self) -> Option<RequestStart<'a>> {
        match self {
            Heads::Http1(a) => a.next(),
            Heads::Http2(b) => b.next(),
        }
    }
}

impl ProtocolConnection {
    pub fn new(role: Option<Role>, limits: HttpLimits, h2_limits: Http2Limits) -> Self {
        ProtocolConnection {
            decided: false,
            proto: Proto::Http1(HttpConnection::new(role, limits)),
            http_limits: limits,
            h2_limits,
            http1_before: HttpStats::default(),
            lost_before_decided: false,
            tls: Tls::No,
            tls_stats: TlsStats::default(),
        }
    }

    /// Whether the connection's plaintext comes from a TLS library's uprobes.
    pub fn is_tls_plaintext(&self) -> bool {
        self.tls == Tls::Plaintext
    }

    /// TLS counters of this connection.
    pub fn tls_stats(&self) -> &TlsStats {
        &self.tls_stats
    }

    /// Feeds one plaintext record a TLS library's uprobe captured (`DATA_FLAG_TLS`). The first
    /// one switches the connection to its plaintext stream: a fresh framer, whatever socket
    /// bytes came before. Returns the sequences of requests discarded by the switch (for the
    /// linker: only when ciphertext had been framed, see `TlsStats::switched_after_framing`).
    pub fn on_tls_record(
        &mut self,
        dir: Direction,
        captured: &[u8],
        true_len: u32,
        tid: u32,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) -> Vec<u64> {
        let mut discarded = Vec::new();
        if self.tls != Tls::Plaintext {
            if self.tls == Tls::No && self.decided {
                // Socket bytes were framed as cleartext: drop whatever they left pending.
                // Nothing framed from ciphertext becomes a span, and every sequence it used is
                // released before the fresh framer numbers its requests from zero again.
                self.tls_stats.switched_after_framing += 1;
                let mut dropped = Vec::new();
                discarded = self.on_loss(&mut dropped);
                discarded.extend(dropped.iter().map(|e| e.sequence));
                discarded.extend(self.take_discarded());
            }
            let role = self.role();
            let before = self.stats();
            self.proto = Proto::Http1(HttpConnection::new(role, self.http_limits));
            self.http1_before = before;
            self.decided = false;
            self.lost_before_decided = false;
            self.tls = Tls::Plaintext;
            self.tls_stats.plaintext_connections += 1;
        }
        self.tls_stats.plaintext_records += 1;
        self.tls_stats.plaintext_bytes += u64::from(true_len).max(captured.len() as u64);
        self.frame(dir, captured, true_len, tid, ts_ns, out);
        discarded
    }

    /// Whether the connection carries HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self.proto, Proto::Http2(_))
    }

    /// Feeds one record of socket bytes (see [`HttpConnection::on_record`]); the first record
    /// with captured bytes decides the protocol. On a TLS connection (its first bytes a TLS
    /// record, or plaintext records seen) the record is ciphertext: skipped, counted.
    pub fn on_record(
        &mut self,
        dir: Direction,
        captured: &[u8],
        true_len: u32,
        tid: u32,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        if self.tls == Tls::No && !self.decided && starts_with_tls_record(captured) {
            self.decided = true;
            self.tls = Tls::Waiting;
            self.tls_stats.ciphertext_connections += 1;
        }
        if self.tls != Tls::No {
            self.tls_stats.ciphertext_records_skipped += 1;
            self.tls_stats.ciphertext_bytes_skipped +=
                u64::from(true_len).max(captured.len() as u64);
            return;
        }
        self.frame(dir, captured, true_len, tid, ts_ns, out);
    }

    /// Frames bytes of the connection's application stream (socket bytes of a cleartext
    /// connection, or a TLS connection's plaintext).
    fn frame(
        &mut self,
        dir: Direction,
        captured: &[u8],
        true_len: u32,
        tid: u32,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        if !self.decided && !captured.is_empty() {
            self.decided = true;
            if let Proto::Http1(http1) = &self.proto {
                let role = http1.role();
                let preface = starts_with_preface(captured);
                let true_len = (true_len as usize).max(captured.len());
                let frames = !preface && plausible_run(captured, true_len);
                let h2 = match (role, dir) {
                    _ if preface => Some(true),
                    (None, _) if frames => Some(false),
                    (Some(Role::Server), Direction::Egress) if frames => Some(true),
                    (Some(_), _) if frames && self.lost_before_decided => Some(false),
                    _ => None,
                };
                if let Some(from_start) = h2 {
                    // Whoever writes the preface is the client.
                    let role = match (role, preface, dir) {
                        (None, true, Direction::Egress) => Some(Role::Client),
                        (None, true, Direction::Ingress) => Some(Role::Server),
                        (role, _, _) => role,
                    };
                    // A preface written by the end the kernel saw accept (or read by the end
                    // that connected) contradicts the kernel: neither guess is safe.
                    let conflict = preface
                        && matches!(
                            (role, dir),
                            (Some(Role::Server), Direction::Egress)
                                | (Some(Role::Client), Direction::Ingress)
                        );
                    self.http1_before.merge(http1.stats());
                    self.proto = Proto::Http2(Box::new(if conflict {
                        Http2Connection::role_conflict(role, self.h2_limits)
                    } else {
                        Http2Connection::new(role, self.h2_limits, from_start)
                    }));
                }
            }
        }
        match &mut self.proto {
            Proto::Http1(c) => c.on_record(dir, captured, true_len, tid, ts_ns, out),
            Proto::Http2(c) => c.on_record(dir, captured, true_len, tid, ts_ns, out),
        }
    }

    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        match &mut self.proto {
            Proto::Http1(c) => c.on_close(ts_ns, out),
            Proto::Http2(c) => c.on_close(ts_ns, out),
        }
    }

    pub fn on_expire(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        match &mut self.proto {
            Proto::Http1(c) => c.on_expire(ts_ns, out),
            Proto::Http2(c) => c.on_expire(ts_ns, out),
        }
    }

    pub fn on_loss(&mut self, out: &mut Vec<Exchange>) -> Vec<u64> {
        if !self.decided {
            self.lost_before_decided = true;
        }
        match &mut self.proto {
            Proto::Http1(c) => c.on_loss(out),
            Proto::Http2(c) => c.on_loss(out),
        }
    }

    pub fn shed(&mut self, out: &mut Vec<Exchange>) -> Vec<u64> {
        match &mut self.proto {
            Proto::Http1(c) => c.shed(out),
            Proto::Http2(c) => c.shed(out),
        }
    }

    pub fn role(&self) -> Option<Role> {
        match &self.proto {
            Proto::Http1(c) => c.role(),
            Proto::Http2(c) => c.role(),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        match &self.proto {
            Proto::Http1(c) => c.memory_bytes(),
            Proto::Http2(c) => c.memory_bytes(),
        }
    }

    pub fn pending_requests(&self) -> usize {
        match &self.proto {
            Proto::Http1(c) => c.pending_requests(),
            Proto::Http2(c) => c.pending_requests(),
        }
    }

    pub fn next_sequence(&self) -> u64 {
        match &self.proto {
            Proto::Http1(c) => c.next_sequence(),
            Proto::Http2(c) => c.next_sequence(),
        }
    }

    pub fn pending_heads_from(
        &self,
        from: u64,
    ) -> Heads<impl Iterator<Item = RequestStart<'_>>, impl Iterator<Item = RequestStart<'_>>> {
        match &self.proto {
            Proto::Http1(c) => Heads::Http1(c.pending_heads_from(from)),
            Proto::Http2(c) => Heads::Http2(c.pending_heads_from(from)),
        }
    }

    /// Sequences dropped without an exchange since the last call (HTTP/2's open-stream bound).
    pub fn take_discarded(&mut self) -> Vec<u64> {
        match &mut self.proto {
            Proto::Http1(_) => Vec::new(),
            Proto::Http2(c) => c.take_discarded(),
        }
    }

    /// HTTP/1.x counters (of the framer before a switch to HTTP/2 or to TLS plaintext too).
    pub fn stats(&self) -> HttpStats {
        let mut stats = self.http1_before.clone();
        if let Proto::Http1(c) = &self.proto {
            stats.merge(c.stats());
        }
        stats
    }

    /// HTTP/2 counters, for an HTTP/2 connection.
    pub fn http2_stats(&self) -> Option<Http2Stats> {
        match &self.proto {
            Proto::Http1(_) => None,
            Proto::Http2(c) => Some(c.stats()),
        }
    }
}

/// Fuzzing harness for the TLS switch: `data` is a script of socket and plaintext records for
/// one connection. Byte 0 picks the role (`% 3`: unknown, server, client). Each operation starts
/// with an op byte: `op >> 5 == 7` closes; anything else is a record whose direction is
/// `op & 1`, plaintext (`DATA_FLAG_TLS`) when `op & 0x40`, lost-before when `op & 0x10`,
/// followed by a length byte (captured bytes taken from the script) and a gap byte (`g * 64`).
/// Checks: once the connection follows plaintext, a socket record changes nothing (no exchange,
/// no buffered byte, no pending request), and every count stays consistent.
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
    let mut conn = ProtocolConnection::new(role, HttpLimits::default(), Http2Limits::default());
    let mut out = Vec::new();
    let mut ts = 0u64;
    let mut socket_records = 0u64;
    let mut plaintext_records = 0u64;
    while let Some((&op, rest)) = script.split_first() {
        ts += 1;
        script = rest;
        if op >> 5 == 7 {
            conn.on_close(ts, &mut out);
            continue;
        }
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
        let true_len = u32::try_from(take).unwrap_or(u32::MAX) + gap_unit * 64;
        if op & 0x10 != 0 {
            let _ = conn.on_loss(&mut out);
        }
        if op & 0x40 != 0 {
            plaintext_records += 1;
            let _ = conn.on_tls_record(dir, captured, true_len, 1, ts, &mut out);
            assert!(conn.is_tls_plaintext());
        } else {
            socket_records += 1;
            let following_plaintext = conn.is_tls_plaintext();
            let before = (out.len(), conn.memory_bytes(), conn.pending_requests());
            conn.on_record(dir, captured, true_len, 1, ts, &mut out);
            if following_plaintext {
                let after = (out.len(), conn.memory_bytes(), conn.pending_requests());
                assert_eq!(before, after, "ciphertext changed a plaintext connection");
            }
        }
        let tls = conn.tls_stats();
        assert_eq!(tls.plaintext_records, plaintext_records);
        assert!(tls.ciphertext_records_skipped <= socket_records);
        assert!(tls.plaintext_connections <= 1);
        assert!(tls.ciphertext_connections <= 1);
    }
    conn.on_close(ts + 1, &mut out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::http2::PREFACE;

    #[test]
    fn the_preface_selects_http2_in_either_role_and_http1_stays() {
        for role in [Some(Role::Client), Some(Role::Server), None] {
            let mut c =
                ProtocolConnection::new(role, HttpLimits::default(), Http2Limits::default());
            let dir = match role {
                Some(Role::Server) => Direction::Ingress,
                _ => Direction::Egress,
            };
            let mut out = Vec::new();
            c.on_record(dir, PREFACE, 24, 1, 1, &mut out);
            assert!(c.is_http2(), "{role:?}");
            assert_eq!(c.http2_stats().map(|s| s.connections), Some(1));
            // An adopted connection whose preface is seen: the writer is the client.
            assert_eq!(c.role(), role.or(Some(Role::Client)));
        }
        let mut c = ProtocolConnection::new(
            Some(Role::Server),
            HttpLimits::default(),
            Http2Limits::default(),
        );
        let mut out = Vec::new();
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        c.on_record(Direction::Ingress, get, get.len() as u32, 1, 1, &mut out);
        assert!(!c.is_http2());
        assert_eq!(c.pending_requests(), 1);
        // A preface later on an HTTP/1 connection does not switch it.
        c.on_record(Direction::Ingress, PREFACE, 24, 1, 2, &mut out);
        assert!(!c.is_http2());
        // A record of gap only decides nothing.
        let mut c = ProtocolConnection::new(None, HttpLimits::default(), Http2Limits::default());
        c.on_record(Direction::Ingress, b"", 100, 1, 1, &mut out);
        c.on_record(Direction::Ingress, PREFACE, 24, 1, 2, &mut out);
        assert!(c.is_http2());
        assert_eq!(c.role(), Some(Role::Server));
    }

    /// One HEADERS frame whose payload was not captured (the kernel copied only its header)
    /// is a run of frames: the syscall moved exactly that frame. Before the fix only the
    /// captured bytes were looked at and the adopted connection stayed HTTP/1.
    #[test]
    fn one_frame_with_an_uncaptured_payload_selects_http2() {
        let mut header = vec![0, 0x10, 0, 1, 0x4, 0, 0, 0, 1];
        let mut c = ProtocolConnection::new(None, HttpLimits::default(), Http2Limits::default());
        let mut out = Vec::new();
        c.on_record(Direction::Ingress, &header, 9 + 0x1000, 1, 1, &mut out);
        assert!(c.is_http2());
        // A payload shorter than the syscall moved is not one exact frame.
        header[1] = 0x08;
        let mut c = ProtocolConnection::new(None, HttpLimits::default(), Http2Limits::default());
        c.on_record(Direction::Ingress, &header, 9 + 0x1000, 1, 1, &mut out);
        assert!(!c.is_http2());
    }

    /// A connection of known role whose records were lost before its first captured one may
    /// start mid-stream in HTTP/2 frames: adopted (not from the start). Without the loss, a
    /// client's frames without a preface stay HTTP/1.
    #[test]
    fn a_known_role_connection_after_a_loss_is_adopted_on_frames() {
        let mut frames = vec![0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        frames.extend_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let len = frames.len() as u32;
        let mut out = Vec::new();
        let mut c = ProtocolConnection::new(
            Some(Role::Client),
            HttpLimits::default(),
            Http2Limits::default(),
        );
        c.on_record(Direction::Egress, &frames, len, 1, 1, &mut out);
        assert!(!c.is_http2());
        let mut c = ProtocolConnection::new(
            Some(Role::Client),
            HttpLimits::default(),
            Http2Limits::default(),
        );
        c.on_loss(&mut out);
        c.on_record(Direction::Egress, &frames, len, 1, 1, &mut out);
        assert!(c.is_http2());
        assert_eq!(c.role(), Some(Role::Client));
    }

    /// A preface in the direction contradicting the kernel's role (the end that accepted writes
    /// it, or the end that connected reads it): counted, and nothing of the connection is
    /// decoded (either guess of which end is the client could make wrong spans).
    #[test]
    fn a_preface_against_the_kernel_role_is_counted_and_not_decoded() {
        for (role, dir) in [
            (Role::Server, Direction::Egress),
            (Role::Client, Direction::Ingress),
        ] {
            let mut c =
                ProtocolConnection::new(Some(role), HttpLimits::default(), Http2Limits::default());
            let mut out = Vec::new();
            c.on_record(dir, PREFACE, 24, 1, 1, &mut out);
            assert!(c.is_http2());
            let stats = c.http2_stats().unwrap();
            assert_eq!(stats.preface_role_conflicts, 1, "{role:?}");
            assert_eq!(c.role(), Some(role));
            // Frames after it are not followed.
            let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
            let other = match dir {
                Direction::Egress => Direction::Ingress,
                Direction::Ingress => Direction::Egress,
            };
            c.on_record(other, &settings, 9, 1, 2, &mut out);
            assert_eq!(c.http2_stats().unwrap().wire.frames, 0);
        }
        // The preface where the role expects it is no conflict.
        let mut c = ProtocolConnection::new(
            Some(Role::Server),
            HttpLimits::default(),
            Http2Limits::default(),
        );
        let mut out = Vec::new();
        c.on_record(Direction::Ingress, PREFACE, 24, 1, 1, &mut out);
        assert_eq!(c.http2_stats().unwrap().preface_role_conflicts, 0);
    }
}
