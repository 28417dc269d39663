//! The protocol of one connection, chosen on its first captured bytes: the HTTP/2 client preface
//! (either role), or on a connection of unknown role (adopted mid-stream) a run of valid HTTP/2
//! frames, or on a server the HTTP/2 frames it writes before reading the preface (servers send
//! their SETTINGS first), or on a connection of known role whose records were lost before its
//! first captured one a run of frames (adopted mid-stream) -> HTTP/2; anything else stays on
//! the HTTP/1.x path unchanged. A run may end in an uncaptured payload: one frame whose
//! payload is the rest of the syscall's (partly captured) bytes counts.

use crate::model::{Direction, Exchange, Role};
use crate::protocols::http1::{HttpConnection, HttpLimits, HttpStats, RequestStart};
use crate::protocols::http2::frame::plausible_run;
use crate::protocols::http2::{Http2Connection, Http2Limits, Http2Stats, starts_with_preface};

/// HTTP/1.x or HTTP/2 state of one connection.
#[derive(Debug)]
pub struct ProtocolConnection {
    decided: bool,
    proto: Proto,
    h2_limits: Http2Limits,
    /// HTTP/1 counters of a connection that turned out to be HTTP/2 (bytes before the choice).
    http1_before: HttpStats,
    /// Records were lost before the protocol was chosen: the first captured bytes may be in
    /// the middle of the connection.
    lost_before_decided: bool,
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
            h2_limits,
            http1_before: HttpStats::default(),
            lost_before_decided: false,
        }
    }

    /// Whether the connection carries HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self.proto, Proto::Http2(_))
    }

    /// Feeds one record (see [`HttpConnection::on_record`]); the first record with captured
    /// bytes decides the protocol.
    pub fn on_record(
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
                    self.http1_before = http1.stats().clone();
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

    /// HTTP/1.x counters.
    pub fn stats(&self) -> &HttpStats {
        match &self.proto {
            Proto::Http1(c) => c.stats(),
            Proto::Http2(_) => &self.http1_before,
        }
    }

    /// HTTP/2 counters, for an HTTP/2 connection.
    pub fn http2_stats(&self) -> Option<Http2Stats> {
        match &self.proto {
            Proto::Http1(_) => None,
            Proto::Http2(c) => Some(c.stats()),
        }
    }
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
