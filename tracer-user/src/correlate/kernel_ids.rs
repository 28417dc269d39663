//! Span identities the kernel decided (`--context-propagation tcp-options`), matched to the
//! requests they belong to by connection, direction and stream offset, never by request order:
//! an identity record names the stream offset of its request's first byte; the data record that
//! starts at that offset is the one the HTTP parser names as the request's first (its
//! timestamp is the request's `start_ns`). One missed identity (ring buffer full, a request the
//! kernel did not see start) therefore leaves one request to userspace, never shifts the others.

use std::collections::VecDeque;

use crate::idhash::IdHashMap;
use crate::model::Direction;

/// Identities waiting for their data record, per connection and direction.
const MAX_WAITING_PER_DIRECTION: usize = 64;
/// Identities matched to a record and waiting for their request's head: beyond it the oldest
/// is dropped (counted), never the whole table.
const MAX_MATCHED: usize = 65536;

/// What the kernel decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelIdentity {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent came in a TCP option (a SERVER request).
    pub from_option: bool,
}

/// Counts of the matching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelIdStats {
    /// Identity records received.
    pub received: u64,
    /// Identities matched to the record starting at their offset.
    pub matched: u64,
    /// Identities dropped: their offset was passed without a record starting there, the stream
    /// had a hole, or a connection's waiting queue was full.
    pub unmatched: u64,
    /// Matched identities dropped, oldest first, to make room in the full table of identities
    /// waiting for their request's head (their requests keep userspace's identities).
    pub evicted: u64,
}

#[derive(Default)]
struct Stream {
    /// Bytes seen so far per direction (ingress, egress).
    offsets: [u64; 2],
    /// A hole in the stream: offsets are no longer trusted.
    broken: bool,
    waiting: [VecDeque<(u64, KernelIdentity)>; 2],
}

/// The matching state (see the module docs).
pub struct KernelIds {
    streams: IdHashMap<u64, Stream>,
    matched: IdHashMap<(u64, u64), KernelIdentity>,
    /// `matched`'s keys, oldest first (keys already taken are skipped when evicting).
    matched_order: VecDeque<(u64, u64)>,
    /// Bound of `matched` (`MAX_MATCHED`; smaller in tests).
    max_matched: usize,
    stats: KernelIdStats,
}

impl Default for KernelIds {
    fn default() -> Self {
        KernelIds::with_capacity(MAX_MATCHED)
    }
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl KernelIds {
    /// A matching state holding at most `max_matched` matched identities.
    pub fn with_capacity(max_matched: usize) -> Self {
        KernelIds {
            streams: IdHashMap::default(),
            matched: IdHashMap::default(),
            matched_order: VecDeque::new(),
            max_matched: max_matched.max(1),
            stats: KernelIdStats::default(),
        }
    }

    /// Keeps a matched identity, dropping the oldest one still held when the table is full.
    fn keep_matched(&mut self, key: (u64, u64), identity: KernelIdentity) {
        while self.matched.len() >= self.max_matched {
            let Some(oldest) = self.matched_order.pop_front() else {
                break;
            };
            if self.matched.remove(&oldest).is_some() {
                self.stats.evicted += 1;
            }
        }
        if self.matched.insert(key, identity).is_none() {
            self.matched_order.push_back(key);
        }
        // Keys taken since leave stale entries behind: compact before they outgrow the table.
        if self.matched_order.len() > 2 * self.max_matched {
            let matched = &self.matched;
            self.matched_order.retain(|k| matched.contains_key(k));
        }
    }

    pub fn stats(&self) -> KernelIdStats {
        self.stats
    }

    /// An identity record: the request starting at `offset` of `direction` on `conn_id`.
    pub fn identity(
        &mut self,
        conn_id: u64,
        direction: Direction,
        offset: u64,
        identity: KernelIdentity,
    ) {
        self.stats.received += 1;
        let stream = self.streams.entry(conn_id).or_default();
        let d = index(direction);
        if stream.broken || offset < stream.offsets[d] {
            self.stats.unmatched += 1;
            return;
        }
        let waiting = &mut stream.waiting[d];
        if waiting.len() >= MAX_WAITING_PER_DIRECTION {
            waiting.pop_front();
            self.stats.unmatched += 1;
        }
        waiting.push_back((offset, identity));
    }

    /// A data record of `true_len` bytes at the current offset of `direction` (timestamp
    /// `ts_ns`): an identity waiting for this offset belongs to the request starting here.
    pub fn data(
        &mut self,
        conn_id: u64,
        direction: Direction,
        ts_ns: u64,
        true_len: u32,
        loss_before: bool,
    ) {
        let Some(stream) = self.streams.get_mut(&conn_id) else {
            // No identity ever came for this connection: count its bytes from here only if
            // one may (a connection the kernel decides for reports from its first request).
            let mut stream = Stream::default();
            stream.offsets[index(direction)] = u64::from(true_len);
            stream.broken = loss_before;
            self.streams.insert(conn_id, stream);
            return;
        };
        let d = index(direction);
        if loss_before {
            stream.broken = true;
        }
        if stream.broken {
            for waiting in &mut stream.waiting {
                self.stats.unmatched += waiting.len() as u64;
                waiting.clear();
            }
            return;
        }
        let here = stream.offsets[d];
        let mut found = None;
        while let Some(&(offset, identity)) = stream.waiting[d].front() {
            if offset > here {
                break;
            }
            stream.waiting[d].pop_front();
            if offset < here {
                self.stats.unmatched += 1;
                continue;
            }
            self.stats.matched += 1;
            found = Some(identity);
        }
        stream.offsets[d] = here + u64::from(true_len);
        if let Some(identity) = found {
            self.keep_matched((conn_id, ts_ns), identity);
        }
    }

    /// The identity of the request on `conn_id` whose first record has timestamp `start_ns`.
    pub fn take(&mut self, conn_id: u64, start_ns: u64) -> Option<KernelIdentity> {
        if self.matched.is_empty() {
            return None;
        }
        self.matched.remove(&(conn_id, start_ns))
    }

    pub fn conn_closed(&mut self, conn_id: u64) {
        if let Some(stream) = self.streams.remove(&conn_id) {
            for waiting in &stream.waiting {
                self.stats.unmatched += waiting.len() as u64;
            }
        }
        if !self.matched.is_empty() {
            self.matched.retain(|(c, _), _| *c != conn_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> KernelIdentity {
        KernelIdentity {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            from_option: false,
        }
    }

    #[test]
    fn identities_match_the_record_at_their_offset_not_the_next_request() {
        let mut k = KernelIds::default();
        k.data(1, Direction::Ingress, 10, 100, false);
        // The identity of the request at offset 100 is lost; the one at 250 must not shift.
        k.identity(1, Direction::Ingress, 250, id(2));
        k.data(1, Direction::Ingress, 20, 150, false);
        k.data(1, Direction::Ingress, 30, 50, false);
        assert_eq!(k.take(1, 20), None);
        assert_eq!(k.take(1, 30), Some(id(2)));
        // Egress offsets are their own.
        k.identity(1, Direction::Egress, 0, id(3));
        k.data(1, Direction::Egress, 40, 10, false);
        assert_eq!(k.take(1, 40), Some(id(3)));
        assert_eq!(k.stats().matched, 2);
    }

    #[test]
    fn a_full_table_drops_its_oldest_identity_not_all_of_them() {
        let mut k = KernelIds::with_capacity(3);
        for conn in 1..=5u64 {
            k.identity(conn, Direction::Ingress, 0, id(conn as u8));
            k.data(conn, Direction::Ingress, 100 + conn, 10, false);
        }
        // The two oldest were dropped to make room; the three newest are all still there.
        assert_eq!(k.stats().evicted, 2);
        assert_eq!(k.take(1, 101), None);
        assert_eq!(k.take(2, 102), None);
        for conn in 3..=5u64 {
            assert_eq!(k.take(conn, 100 + conn), Some(id(conn as u8)));
        }
        // Taken keys are skipped, not counted, when room is made later.
        for conn in 6..=12u64 {
            k.identity(conn, Direction::Ingress, 0, id(conn as u8));
            k.data(conn, Direction::Ingress, 100 + conn, 10, false);
        }
        assert_eq!(k.stats().evicted, 2 + 4);
        assert_eq!(k.take(12, 112), Some(id(12)));
        assert!(k.matched_order.len() <= 2 * 3 + 1);
    }

    #[test]
    fn a_hole_in_the_stream_drops_waiting_identities() {
        let mut k = KernelIds::default();
        k.identity(1, Direction::Ingress, 0, id(1));
        k.data(1, Direction::Ingress, 5, 10, false);
        k.identity(1, Direction::Ingress, 10, id(2));
        k.data(1, Direction::Ingress, 6, 10, true);
        k.identity(1, Direction::Ingress, 20, id(3));
        k.data(1, Direction::Ingress, 7, 10, false);
        assert_eq!(k.take(1, 5), Some(id(1)));
        assert_eq!(k.take(1, 6), None);
        assert_eq!(k.take(1, 7), None);
        assert_eq!(k.stats().unmatched, 2);
    }
}
