//! A short reorder window between the ring buffer and the pipeline: records are released in
//! causal-time order once they are older than the window, so that a client's write is handled
//! before the server's read of the same bytes even when the two CPUs recorded them the other way
//! round. Bounded: past `max_records`, or past `max_bytes` of held record bytes (record lengths;
//! a buffer is at most twice its record or 64 bytes, so allocations stay within about
//! 2 x `max_bytes` + 64 B x `max_records`), the oldest are released early (and counted). This
//! bound is separate from the connections' `--max-buffer-mib`. Buffers come in power-of-two size
//! classes, each with its own pool of spares, so a steady flow of mixed record sizes allocates
//! nothing (one pool for all sizes kept missing and freeing: malloc was a tenth of the agent).
//!
//! Records arrive nearly in causal order, so the window is a FIFO of records that came in order
//! plus a small heap of stragglers (records older than the newest one held), merged on release:
//! an in-order record costs a push and a pop at the ends of a deque instead of two heap sifts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// One buffered record: its raw bytes and what the reader already made of them (`meta`, e.g.
/// the decoded header, so that a record is decoded once).
#[derive(Debug)]
struct Held<M> {
    causal_ts: u64,
    /// Arrival order: ties keep the ring buffer's order.
    arrival: u64,
    bytes: Vec<u8>,
    meta: M,
}

impl<M> Held<M> {
    fn key(&self) -> (u64, u64) {
        (self.causal_ts, self.arrival)
    }
}

/// Ordered by (causal time, arrival); arrival numbers are unique.
impl<M> PartialEq for Held<M> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<M> Eq for Held<M> {}

impl<M> PartialOrd for Held<M> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<M> Ord for Held<M> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Held records in causal order (ties in arrival order): the ones that arrived in order in a
/// FIFO, the others in a heap. Every record in `in_order` is at least as late as the one before
/// it, and arrival numbers only grow, so its front is its minimum.
struct HeldQueue<M> {
    in_order: VecDeque<Held<M>>,
    stragglers: BinaryHeap<Reverse<Held<M>>>,
}

impl<M> Default for HeldQueue<M> {
    fn default() -> Self {
        HeldQueue {
            in_order: VecDeque::new(),
            stragglers: BinaryHeap::new(),
        }
    }
}

impl<M> HeldQueue<M> {
    fn len(&self) -> usize {
        self.in_order.len() + self.stragglers.len()
    }

    fn is_empty(&self) -> bool {
        self.in_order.is_empty() && self.stragglers.is_empty()
    }

    fn push(&mut self, held: Held<M>) {
        match self.in_order.back() {
            Some(last) if held.causal_ts < last.causal_ts => self.stragglers.push(Reverse(held)),
            _ => self.in_order.push_back(held),
        }
    }

    /// Whether the oldest record is a straggler (`None`: empty).
    fn oldest_is_straggler(&self) -> Option<bool> {
        match (self.in_order.front(), self.stragglers.peek()) {
            (None, None) => None,
            (Some(_), None) => Some(false),
            (None, Some(_)) => Some(true),
            (Some(a), Some(Reverse(b))) => Some(b.key() < a.key()),
        }
    }

    fn peek(&self) -> Option<&Held<M>> {
        match self.oldest_is_straggler()? {
            true => self.stragglers.peek().map(|Reverse(h)| h),
            false => self.in_order.front(),
        }
    }

    fn pop(&mut self) -> Option<Held<M>> {
        match self.oldest_is_straggler()? {
            true => self.stragglers.pop().map(|Reverse(h)| h),
            false => self.in_order.pop_front(),
        }
    }
}

/// Counters of the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    pub held: u64,
    /// Released before their time because the window was full.
    pub forced_early: u64,
    /// Records kept past the window because the pipeline waited for a record still in the
    /// kernel (see [`ReorderWindow::release_ready_waiting`]).
    pub waits: u64,
    /// Of those, released because the wait's bound expired rather than because the awaited
    /// record came.
    pub waits_expired: u64,
}

/// What the pipeline says about the oldest record due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Processed: release it.
    Taken,
    /// Not yet: it waits for a record still to come (only offered while the wait is allowed).
    Wait,
}

/// `M`: what the reader keeps with each record (see [`ReorderWindow::push_with`]).
pub struct ReorderWindow<M = ()> {
    window_ns: u64,
    max_records: usize,
    heap: HeldQueue<M>,
    arrivals: u64,
    forced_early: u64,
    /// Arrival number of the record the pipeline is waiting on, and the counts of waits.
    waiting: Option<u64>,
    /// Longest a due record may wait past its causal time (see `release_ready_waiting`).
    max_wait_ns: u64,
    waits: u64,
    waits_expired: u64,
    /// Spare buffers by size class (`size_class`), reused to avoid an allocation per record.
    spare: [Vec<Vec<u8>>; SIZE_CLASSES],
    /// Record bytes held, and their bound.
    held_bytes: usize,
    max_bytes: usize,
    /// Bytes allocated by the spare buffers.
    spare_bytes: usize,
}

/// Most bytes kept in spare buffers.
const MAX_SPARE_BYTES: usize = 2 * 1024 * 1024;
/// Most spare buffers kept per size class.
const MAX_SPARES_PER_CLASS: usize = 1024;
/// Capacity of the smallest size class (opens and closes fit); each next class doubles it.
const SMALLEST_CLASS: usize = 64;
/// Size classes: 64 B to 16 KiB (larger records get a buffer of their own, freed on release).
const SIZE_CLASSES: usize = 9;

/// The size class of a record of `len` bytes and its buffers' capacity; None past the largest.
fn size_class(len: usize) -> Option<(usize, usize)> {
    let capacity = len.max(SMALLEST_CLASS).checked_next_power_of_two()?;
    let class = (capacity / SMALLEST_CLASS).trailing_zeros() as usize;
    (class < SIZE_CLASSES).then_some((class, capacity))
}

impl<M> ReorderWindow<M> {
    pub fn new(window_ns: u64, max_records: usize) -> Self {
        ReorderWindow {
            window_ns,
            max_records: max_records.max(1),
            heap: HeldQueue::default(),
            arrivals: 0,
            forced_early: 0,
            waiting: None,
            max_wait_ns: 0,
            waits: 0,
            waits_expired: 0,
            spare: Default::default(),
            held_bytes: 0,
            max_bytes: usize::MAX,
            spare_bytes: 0,
        }
    }

    /// Also bounds the bytes held (records are released early past it).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// How long a due record may wait for one still in the kernel, past its causal time.
    pub fn with_max_wait(mut self, max_wait_ns: u64) -> Self {
        self.max_wait_ns = max_wait_ns;
        self
    }

    /// Record bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    pub fn stats(&self) -> ReorderStats {
        ReorderStats {
            held: self.heap.len() as u64,
            forced_early: self.forced_early,
            waits: self.waits,
            waits_expired: self.waits_expired,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Buffers a record with what the reader made of it (`meta`, handed back on release). If
    /// the window is full, the oldest record is released into `release`.
    pub fn push_with(
        &mut self,
        causal_ts: u64,
        record: &[u8],
        meta: M,
        release: &mut impl FnMut(&[u8], &M),
    ) {
        while self.heap.len() >= self.max_records
            || (self.held_bytes + record.len() > self.max_bytes && !self.heap.is_empty())
        {
            let Some(old) = self.heap.pop() else {
                break;
            };
            self.forced_early += 1;
            self.held_bytes -= old.bytes.len();
            release(&old.bytes, &old.meta);
            self.recycle(old.bytes);
        }
        let mut bytes = match size_class(record.len()) {
            Some((class, capacity)) => match self.spare[class].pop() {
                Some(spare) => {
                    self.spare_bytes -= spare.capacity();
                    spare
                }
                None => Vec::with_capacity(capacity),
            },
            None => Vec::with_capacity(record.len()),
        };
        bytes.clear();
        bytes.extend_from_slice(record);
        self.held_bytes += bytes.len();
        self.arrivals += 1;
        self.heap.push(Held {
            causal_ts,
            arrival: self.arrivals,
            bytes,
            meta,
        });
    }

    /// Releases, in causal order, every record older than the window at `now_ns`
    /// (`u64::MAX` releases all).
    pub fn release_ready_with(&mut self, now_ns: u64, release: &mut impl FnMut(&[u8], &M)) {
        let horizon = now_ns.saturating_sub(self.window_ns);
        while let Some(top) = self.heap.peek() {
            if top.causal_ts > horizon && now_ns != u64::MAX {
                break;
            }
            if let Some(held) = self.heap.pop() {
                self.held_bytes -= held.bytes.len();
                release(&held.bytes, &held.meta);
                self.recycle(held.bytes);
            }
        }
    }

    /// Like [`ReorderWindow::release_ready`], but each due record is first offered: `offer`
    /// gets the record's bytes, what was kept with it, and whether it may still wait (up to `max_wait_ns` past its
    /// causal time, see [`ReorderWindow::with_max_wait`]), and answers [`Offer::Wait`] to keep it,
    /// and everything after it, in the
    /// window: a server's read whose client write is still in the kernel (a write is recorded
    /// when it returns, which a preempted client may do long after the server read its bytes).
    /// Once the bound has passed the record is offered with `false` and must be taken. Waits and
    /// expired waits are counted.
    pub fn release_ready_waiting(
        &mut self,
        now_ns: u64,
        offer: &mut impl FnMut(&[u8], &M, bool) -> Offer,
    ) {
        let max_wait_ns = self.max_wait_ns;
        let horizon = now_ns.saturating_sub(self.window_ns);
        while let Some(top) = self.heap.peek() {
            if top.causal_ts > horizon {
                break;
            }
            let may_wait = top.causal_ts.saturating_add(max_wait_ns) > now_ns;
            let was_waiting = self.waiting == Some(top.arrival);
            let answer = offer(&top.bytes, &top.meta, may_wait);
            debug_assert!(may_wait || answer == Offer::Taken, "a record past its wait");
            if answer == Offer::Wait && may_wait {
                if !was_waiting {
                    self.waiting = Some(top.arrival);
                    self.waits += 1;
                }
                break;
            }
            if was_waiting {
                self.waiting = None;
                if !may_wait {
                    self.waits_expired += 1;
                }
            }
            if let Some(held) = self.heap.pop() {
                self.held_bytes -= held.bytes.len();
                self.recycle(held.bytes);
            }
        }
    }

    /// Causal time of the oldest held record, if any: every record older has been released.
    pub fn oldest_held_ts(&self) -> Option<u64> {
        self.heap.peek().map(|h| h.causal_ts)
    }

    /// Monotonic time at which the oldest held record becomes ready, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.heap
            .peek()
            .map(|h| h.causal_ts.saturating_add(self.window_ns))
    }

    fn recycle(&mut self, bytes: Vec<u8>) {
        // Keep bounded pools of class-sized buffers; others (large records) are freed.
        let Some((class, capacity)) = size_class(bytes.capacity()) else {
            return;
        };
        if capacity == bytes.capacity()
            && self.spare[class].len() < MAX_SPARES_PER_CLASS
            && self.spare_bytes + capacity <= MAX_SPARE_BYTES
        {
            self.spare_bytes += capacity;
            self.spare[class].push(bytes);
        }
    }
}

/// A window of bare records (nothing kept with them).
impl ReorderWindow<()> {
    /// Buffers a record. If the window is full, the oldest record is released into `release`.
    pub fn push(&mut self, causal_ts: u64, record: &[u8], release: &mut impl FnMut(&[u8])) {
        self.push_with(causal_ts, record, (), &mut |bytes, ()| release(bytes));
    }

    /// Releases, in causal order, every record older than the window at `now_ns`
    /// (`u64::MAX` releases all).
    pub fn release_ready(&mut self, now_ns: u64, release: &mut impl FnMut(&[u8])) {
        self.release_ready_with(now_ns, &mut |bytes, ()| release(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(w: &mut ReorderWindow, now: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        w.release_ready(now, &mut |b| out.push(b.to_vec()));
        out
    }

    #[test]
    fn releases_in_causal_order_after_the_window() {
        let mut w = ReorderWindow::new(10, 100);
        let mut early = Vec::new();
        w.push(105, b"server-read", &mut |b| early.push(b.to_vec()));
        w.push(100, b"client-write", &mut |b| early.push(b.to_vec()));
        w.push(105, b"second-at-105", &mut |b| early.push(b.to_vec()));
        assert!(early.is_empty());
        assert!(collect(&mut w, 109).is_empty(), "nothing is old enough yet");
        assert_eq!(collect(&mut w, 110), vec![b"client-write".to_vec()]);
        assert_eq!(
            collect(&mut w, 200),
            vec![b"server-read".to_vec(), b"second-at-105".to_vec()],
            "ties keep arrival order"
        );
        assert!(w.is_empty());
    }

    /// A due record the pipeline waits on holds back everything after it until the awaited
    /// record arrives (released first, being older), or until the wait's bound: counted either way.
    #[test]
    fn a_waiting_record_holds_the_window_until_its_predecessor_or_the_bound() {
        let mut w = ReorderWindow::new(10, 100).with_max_wait(1_000);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut offer = |b: &[u8], _: &(), may_wait: bool| {
            if may_wait && b == b"server-read" && !out.iter().any(|o| o == b"client-write") {
                return Offer::Wait;
            }
            out.push(b.to_vec());
            Offer::Taken
        };
        w.push(100, b"server-read", &mut |_| panic!("not full"));
        w.push(101, b"server-child", &mut |_| panic!("not full"));
        w.release_ready_waiting(200, &mut offer);
        assert_eq!(w.len(), 2, "both wait");
        assert_eq!(w.next_deadline(), Some(110));
        // The client's write, older than the read, is recorded late.
        w.push(90, b"client-write", &mut |_| panic!("not full"));
        w.release_ready_waiting(210, &mut offer);
        assert!(w.is_empty());
        assert_eq!(w.stats().waits, 1);
        assert_eq!(w.stats().waits_expired, 0);
        assert_eq!(
            out,
            vec![
                b"client-write".to_vec(),
                b"server-read".to_vec(),
                b"server-child".to_vec()
            ]
        );

        // The awaited record never comes: released at the bound, counted.
        let mut released = Vec::new();
        let mut offer = |b: &[u8], _: &(), may_wait: bool| {
            if may_wait {
                return Offer::Wait;
            }
            released.push(b.to_vec());
            Offer::Taken
        };
        w.push(1_000, b"server-read", &mut |_| panic!("not full"));
        w.release_ready_waiting(1_500, &mut offer);
        w.release_ready_waiting(1_999, &mut offer);
        assert_eq!(w.len(), 1);
        w.release_ready_waiting(2_000, &mut offer);
        assert!(w.is_empty());
        assert_eq!(released, vec![b"server-read".to_vec()]);
        assert_eq!((w.stats().waits, w.stats().waits_expired), (2, 1));
    }

    /// Mostly in order with stragglers (as the ring buffer delivers them): released in
    /// (causal time, arrival) order, as a full sort would give.
    #[test]
    fn stragglers_merge_back_in_causal_order() {
        let mut w = ReorderWindow::new(50, 1_000);
        let mut released: Vec<(u64, u64)> = Vec::new();
        let mut pushed: Vec<(u64, u64)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut now = 0u64;
        for arrival in 0..5_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += seed % 3;
            // One record in four is up to 40 ns older than the newest (a write's start).
            let ts = if seed.is_multiple_of(4) {
                now.saturating_sub(seed % 41)
            } else {
                now
            };
            pushed.push((ts, arrival));
            let mut record = ts.to_le_bytes().to_vec();
            record.extend_from_slice(&arrival.to_le_bytes());
            let mut take = |b: &[u8]| {
                let ts = u64::from_le_bytes(b[..8].try_into().unwrap());
                let arrival = u64::from_le_bytes(b[8..16].try_into().unwrap());
                released.push((ts, arrival));
            };
            w.push(ts, &record, &mut take);
            if arrival.is_multiple_of(16) {
                w.release_ready(now, &mut take);
            }
        }
        w.release_ready(u64::MAX, &mut |b: &[u8]| {
            let ts = u64::from_le_bytes(b[..8].try_into().unwrap());
            let arrival = u64::from_le_bytes(b[8..16].try_into().unwrap());
            released.push((ts, arrival));
        });
        assert_eq!(released.len(), pushed.len());
        // A window wider than the disorder releases everything in fully sorted order.
        let mut sorted = pushed.clone();
        sorted.sort();
        assert_eq!(released, sorted);
    }

    #[test]
    fn bounded_and_counts_early_releases() {
        let mut w = ReorderWindow::new(1_000, 2);
        let mut early = Vec::new();
        for (ts, b) in [(3u64, b"c"), (1, b"a"), (2, b"b")] {
            w.push(ts, b, &mut |x| early.push(x.to_vec()));
        }
        assert_eq!(
            early,
            vec![b"a".to_vec()],
            "the oldest goes first when full"
        );
        assert_eq!(w.stats().forced_early, 1);
        assert_eq!(w.len(), 2);
        assert_eq!(w.next_deadline(), Some(1_002));
        assert_eq!(
            collect(&mut w, u64::MAX),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn bounded_in_bytes_too() {
        let mut w = ReorderWindow::new(1_000, 1_000).with_max_bytes(3 * 1024);
        let mut early = Vec::new();
        for ts in 0..10u64 {
            w.push(ts, &[ts as u8; 1024], &mut |x| early.push(x[0]));
            assert!(w.held_bytes() <= 3 * 1024, "{}", w.held_bytes());
        }
        assert_eq!(early, (0..7).collect::<Vec<u8>>(), "oldest first");
        assert_eq!(w.stats().forced_early, 7);
        let rest: Vec<u8> = collect(&mut w, u64::MAX).iter().map(|b| b[0]).collect();
        assert_eq!(rest, vec![7, 8, 9]);
        assert_eq!(w.held_bytes(), 0);
    }

    #[test]
    fn size_classes_double_from_64_bytes_to_16_kib() {
        assert_eq!(size_class(0), Some((0, 64)));
        assert_eq!(size_class(64), Some((0, 64)));
        assert_eq!(size_class(65), Some((1, 128)));
        assert_eq!(size_class(900), Some((4, 1024)));
        assert_eq!(size_class(16 * 1024), Some((8, 16 * 1024)));
        assert_eq!(size_class(16 * 1024 + 1), None);
    }

    /// Mixed record sizes reuse their class's buffers: after the first round, nothing new is
    /// allocated (the spare pools hold exactly the buffers the first round made).
    #[test]
    fn mixed_sizes_reuse_class_buffers() {
        let mut w = ReorderWindow::new(10, 1_000);
        let sizes = [40usize, 900, 120, 3000, 40];
        for round in 0..3u64 {
            for (i, len) in sizes.iter().enumerate() {
                w.push(round * 100 + i as u64, &vec![7u8; *len], &mut |_| {});
            }
            w.release_ready(u64::MAX, &mut |_| {});
            let pooled: usize = w.spare.iter().map(Vec::len).sum();
            assert_eq!(
                pooled,
                sizes.len(),
                "round {round}: every buffer back in its pool"
            );
            assert_eq!(w.spare_bytes, 64 + 1024 + 128 + 4096 + 64);
        }
    }

    /// Small records after large ones: the byte bound counts record lengths, not the capacity
    /// of the reused buffers, so nothing is released early.
    #[test]
    fn byte_bound_counts_record_lengths() {
        let mut w = ReorderWindow::new(1_000, 1_000).with_max_bytes(64 * 1024);
        let mut early = 0;
        for ts in 0..4u64 {
            w.push(ts, &[1u8; 15 * 1024], &mut |_| early += 1);
        }
        w.release_ready(u64::MAX, &mut |_| {});
        for ts in 10..1_000u64 {
            w.push(ts, &[2u8; 32], &mut |_| early += 1);
        }
        assert_eq!(early, 0, "32 KiB of records stay within a 64 KiB bound");
        assert_eq!(w.held_bytes(), 990 * 32);
    }
}
