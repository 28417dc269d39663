//! The ring reader on synthetic ring memory laid out as the kernel's, with a producer that
//! writes records as `kernel/bpf/ringbuf.c` does (reserve with the busy bit, write, commit),
//! including records that wrap past the end of the data pages.

use super::*;

/// Ring memory owned by a test: the two positions and `size` data bytes (8-aligned).
struct TestRing {
    consumer_pos: Box<AtomicUsize>,
    producer_pos: Box<AtomicUsize>,
    data: Vec<u64>,
    size: usize,
}

impl TestRing {
    fn new(size: usize, start: usize) -> Self {
        assert!(size.is_power_of_two() && size >= 64);
        TestRing {
            consumer_pos: Box::new(AtomicUsize::new(start)),
            producer_pos: Box::new(AtomicUsize::new(start)),
            data: vec![0; size / 8],
            size,
        }
    }

    fn memory(&mut self) -> RingMemory {
        RingMemory {
            consumer_pos: &*self.consumer_pos,
            producer_pos: &*self.producer_pos,
            data: self.data.as_ptr().cast(),
            size: self.size,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        let size = self.size;
        // SAFETY: the Vec<u64> holds exactly `size` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast::<u8>(), size) }
    }

    /// Reserves a record (header with the busy bit) if it fits beside what the consumer has not
    /// handed back, as the kernel does; returns its position.
    fn reserve(&mut self, len: usize) -> Option<usize> {
        let pos = self.producer_pos.load(Ordering::Acquire);
        let cons = self.consumer_pos.load(Ordering::Acquire);
        let total = (HEADER_BYTES + len).next_multiple_of(8);
        if pos + total - cons > self.size - 1 {
            return None;
        }
        let mask = self.size - 1;
        let header = (len as u32) | BUSY_BIT;
        self.bytes()[pos & mask..(pos & mask) + 4].copy_from_slice(&header.to_ne_bytes());
        self.producer_pos.store(pos + total, Ordering::Release);
        Some(pos)
    }

    /// Writes a reserved record's bytes (wrapping like the kernel's second mapping would).
    fn write(&mut self, pos: usize, payload: &[u8]) {
        let mask = self.size - 1;
        for (i, &b) in payload.iter().enumerate() {
            let at = (pos + HEADER_BYTES + i) & mask;
            self.bytes()[at] = b;
        }
    }

    /// Clears the busy bit (and sets discard if asked).
    fn commit(&mut self, pos: usize, len: usize, discard: bool) {
        let mask = self.size - 1;
        let header = (len as u32) | if discard { DISCARD_BIT } else { 0 };
        let memory = self.memory();
        // SAFETY: the header lies inside the test's data.
        unsafe { &*memory.data.add(pos & mask).cast::<AtomicU32>() }
            .store(header, Ordering::Release);
    }

    fn submit(&mut self, payload: &[u8]) -> bool {
        match self.reserve(payload.len()) {
            Some(pos) => {
                self.write(pos, payload);
                self.commit(pos, payload.len(), false);
                true
            }
            None => false,
        }
    }
}

fn payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize * 31 + i * 7) as u8)
        .collect()
}

fn read_all(cursor: &mut Cursor) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(item) = cursor.next() {
        out.push(item.to_vec());
    }
    out
}

#[test]
fn reads_records_in_order_and_hands_their_space_back() {
    let mut ring = TestRing::new(4096, 0);
    let mut cursor = Cursor::new(ring.memory());
    assert!(cursor.next().is_none());
    for seq in 0..3 {
        assert!(ring.submit(&payload(seq, 10 + seq as usize)));
    }
    let got = read_all(&mut cursor);
    assert_eq!(
        got,
        (0..3)
            .map(|s| payload(s, 10 + s as usize))
            .collect::<Vec<_>>()
    );
    // 3 records of 8 + 10/11/12 bytes, each padded to 8: 24 bytes each.
    assert_eq!(ring.consumer_pos.load(Ordering::Acquire), 72);
    assert_eq!(ring.producer_pos.load(Ordering::Acquire), 72);
}

#[test]
fn a_record_holds_its_space_until_dropped() {
    let mut ring = TestRing::new(4096, 0);
    let mut cursor = Cursor::new(ring.memory());
    assert!(ring.submit(&payload(1, 100)));
    let item = cursor.next().expect("a record");
    assert_eq!(&*item, &payload(1, 100)[..]);
    assert_eq!(ring.consumer_pos.load(Ordering::Acquire), 0);
    drop(item);
    assert_eq!(ring.consumer_pos.load(Ordering::Acquire), 112);
}

#[test]
fn records_that_wrap_past_the_end_read_whole_many_times_over() {
    // A small ring and record sizes that fall on every alignment against its end: thousands of
    // laps, including headers in the last 8 bytes (record bytes start at offset 0) and records
    // split at every offset.
    let mut ring = TestRing::new(256, 0);
    let mut cursor = Cursor::new(ring.memory());
    let (mut sent, mut read, mut wrapped) = (0u32, 0u32, 0u32);
    let mask = 255;
    while read < 20_000 {
        // Fill what fits, then read everything.
        loop {
            let len = 1 + (sent as usize * 13) % 120;
            let pos = ring.producer_pos.load(Ordering::Acquire);
            if !ring.submit(&payload(sent, len)) {
                break;
            }
            if (pos & mask) + HEADER_BYTES + len > 256 {
                wrapped += 1;
            }
            sent += 1;
        }
        for record in read_all(&mut cursor) {
            let len = 1 + (read as usize * 13) % 120;
            assert_eq!(record, payload(read, len), "record {read}");
            read += 1;
        }
        assert_eq!(read, sent);
    }
    assert!(wrapped > 1000, "only {wrapped} wrapped records");
}

#[test]
fn a_record_still_being_written_stops_the_reader_until_committed() {
    let mut ring = TestRing::new(4096, 0);
    let mut cursor = Cursor::new(ring.memory());
    let first = ring.reserve(5).expect("room");
    assert!(ring.submit(&payload(2, 6)));
    assert!(cursor.next().is_none(), "the busy record is not skipped");
    ring.write(first, &payload(1, 5));
    ring.commit(first, 5, false);
    assert_eq!(read_all(&mut cursor), vec![payload(1, 5), payload(2, 6)]);
}

#[test]
fn a_mark_is_reached_only_past_every_record_committed_before_it() {
    let mut ring = TestRing::new(256, 0);
    let mut cursor = Cursor::new(ring.memory());
    let busy = ring.reserve(8).unwrap();
    assert!(ring.submit(&payload(2, 8)));
    let mark = cursor.producer_mark();
    // The record still being written holds the reader before the committed one.
    assert!(read_all(&mut cursor).is_empty());
    assert!(!cursor.has_read_to(mark));
    ring.write(busy, &payload(1, 8));
    ring.commit(busy, 8, false);
    assert_eq!(read_all(&mut cursor).len(), 2);
    assert!(cursor.has_read_to(mark));
    // Records committed after the mark do not move it.
    assert!(ring.submit(&payload(3, 8)));
    assert!(cursor.has_read_to(mark));
}

#[test]
fn discarded_records_are_skipped_and_handed_back() {
    let mut ring = TestRing::new(4096, 0);
    let mut cursor = Cursor::new(ring.memory());
    assert!(ring.submit(&payload(1, 3)));
    let gone = ring.reserve(40).expect("room");
    ring.commit(gone, 40, true);
    assert!(ring.submit(&payload(3, 9)));
    assert_eq!(read_all(&mut cursor), vec![payload(1, 3), payload(3, 9)]);
    assert_eq!(
        ring.consumer_pos.load(Ordering::Acquire),
        ring.producer_pos.load(Ordering::Acquire)
    );
}

#[test]
fn starts_where_the_consumer_position_stands() {
    // A ring already used (e.g. pinned): positions far from zero, not a multiple of the size.
    let start = 7 * 4096 + 4000;
    let mut ring = TestRing::new(4096, start);
    let mut cursor = Cursor::new(ring.memory());
    assert!(ring.submit(&payload(1, 200)));
    assert!(ring.submit(&payload(2, 50)));
    assert_eq!(read_all(&mut cursor), vec![payload(1, 200), payload(2, 50)]);
}

#[test]
fn a_full_ring_frees_room_as_records_are_read() {
    let mut ring = TestRing::new(1024, 0);
    let mut cursor = Cursor::new(ring.memory());
    let mut sent = 0;
    while ring.submit(&payload(sent, 100)) {
        sent += 1;
    }
    assert_eq!(sent, 9, "1024 bytes hold 9 records of 112");
    let item = cursor.next().expect("a record");
    assert!(
        !ring.submit(&payload(sent, 100)),
        "still full while the record is held"
    );
    drop(item);
    assert!(
        ring.submit(&payload(sent, 100)),
        "room once it is handed back"
    );
    assert_eq!(read_all(&mut cursor).len(), 9);
}
