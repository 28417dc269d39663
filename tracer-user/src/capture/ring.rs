//! The kernel ring buffer's reader: records read through ONE mapping of the ring's data pages.
//!
//! The kernel maps a BPF ring buffer's data pages twice in a row (in its own address space and in
//! any process that maps the whole area), so a record that runs past the end reads on in the
//! second copy. aya's `RingBuf` maps both copies: an 8 MiB ring then counts 16 MiB in the
//! agent's resident set from the moment it is mapped (the kernel inserts every page at mmap
//! time). The memory is the same 8 MiB either way (the kernel's pages, charged once to the
//! cgroup; `Pss` already showed it once): this reader maps the producer page and the data pages
//! once, so RSS says what the ring costs, and copies the rare record that wraps past the end
//! into a reused buffer, in two parts.
//!
//! The protocol is the kernel's (`kernel/bpf/ringbuf.c`, the same since 5.8): positions are
//! byte counts that only grow; a record is an 8-byte header (`len` with the busy and discard
//! bits, then the page offset the kernel uses) at `pos & mask`, 8-byte aligned, then `len`
//! bytes, padded to 8. The producer commits a record by clearing its busy bit (a fully ordered
//! exchange) and publishes its position with a release store; the reader loads both with
//! acquire, and hands a record's space back by storing the consumer position with release after
//! reading it. The kernel allows a shorter mapping than the whole area (it checks only that the
//! range lies inside it) and refuses a writable mapping of anything but the consumer page.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{self, AtomicU32, AtomicUsize, Ordering};

use aya::maps::{Map, MapData};

/// The record header's bits and size (`BPF_RINGBUF_*` in the kernel's uapi `linux/bpf.h`).
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_BYTES: usize = 8;

/// Why the ring buffer could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("the map is not a ring buffer")]
    NotARingBuffer,
    #[error("the ring buffer's size {0} is not a power of two multiple of the page size")]
    BadSize(u64),
    #[error("mapping the ring buffer's {what}: {source}")]
    Mmap {
        what: &'static str,
        source: std::io::Error,
    },
}

/// One shared mapping of a map's pages, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(
        fd: RawFd,
        len: usize,
        prot: libc::c_int,
        offset: usize,
        what: &'static str,
    ) -> Result<Self, RingError> {
        let offset = libc::off_t::try_from(offset).map_err(|_| RingError::Mmap {
            what,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: a fresh mapping at an address the kernel picks; the fd is a ring buffer map's.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(RingError::Mmap {
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap returned, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Where the ring's three parts are: the consumer position (written by us), the producer
/// position and the data pages (written by the kernel), `size` bytes, a power of two.
#[derive(Clone, Copy)]
struct RingMemory {
    consumer_pos: *const AtomicUsize,
    producer_pos: *const AtomicUsize,
    data: *const u8,
    size: usize,
}

/// The reading side of a ring: where we are, and the producer position last seen.
struct Cursor {
    memory: RingMemory,
    pos: usize,
    producer_cache: usize,
    /// A record was consumed since the producer position was last loaded: the next load is
    /// preceded by a full fence, so the producer either sees our position (and wakes us) or we
    /// see its record.
    needs_wakeup: bool,
    /// A record that wraps past the end of the data pages, copied out (reused).
    wrapped: Vec<u8>,
}

/// A record read from the ring; its space goes back to the kernel when it is dropped.
pub struct RingItem<'a> {
    data: &'a [u8],
    len: usize,
    memory: RingMemory,
    pos: &'a mut usize,
    needs_wakeup: &'a mut bool,
}

impl std::ops::Deref for RingItem<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.data
    }
}

impl Drop for RingItem<'_> {
    fn drop(&mut self) {
        consume(self.memory, self.pos, self.len);
        *self.needs_wakeup = true;
    }
}

/// Moves the consumer position past a record of `len` bytes and publishes it.
fn consume(memory: RingMemory, pos: &mut usize, len: usize) {
    *pos = pos.wrapping_add((HEADER_BYTES + len).next_multiple_of(8));
    // SAFETY: `consumer_pos` points into the consumer page, mapped for as long as the reader.
    // Release: the kernel reuses the space only after an acquire load of this position.
    unsafe { &*memory.consumer_pos }.store(*pos, Ordering::Release);
}

impl Cursor {
    fn new(memory: RingMemory) -> Self {
        // SAFETY: both positions point into pages mapped for as long as the reader.
        let pos = unsafe { &*memory.consumer_pos }.load(Ordering::Acquire);
        let producer_cache = unsafe { &*memory.producer_pos }.load(Ordering::Acquire);
        Cursor {
            memory,
            pos,
            producer_cache,
            needs_wakeup: false,
            wrapped: Vec::new(),
        }
    }

    /// The producer's position now: every record committed before this call lies before it.
    fn producer_mark(&self) -> usize {
        // SAFETY: see `new`. Acquire pairs with the kernel's release store of the position.
        unsafe { &*self.memory.producer_pos }.load(Ordering::Acquire)
    }

    /// Whether every record before `mark` (a [`Cursor::producer_mark`]) has been read.
    fn has_read_to(&self, mark: usize) -> bool {
        // Positions wrap at usize::MAX; the ring is far smaller than half of it.
        (self.pos.wrapping_sub(mark) as isize) >= 0
    }

    /// Whether a record (committed or not) lies between us and the producer.
    fn data_available(&mut self) -> bool {
        if self.pos == self.producer_cache {
            if self.needs_wakeup {
                atomic::fence(Ordering::SeqCst);
                self.needs_wakeup = false;
            }
            // SAFETY: see `new`. Acquire pairs with the kernel's release store of the position.
            self.producer_cache = unsafe { &*self.memory.producer_pos }.load(Ordering::Acquire);
        }
        // Positions only grow (wrapping at usize::MAX): unequal means behind.
        self.pos != self.producer_cache
    }

    /// The next committed record, or `None` when the ring is empty or the next record is still
    /// being written. Discarded records are skipped.
    fn next(&mut self) -> Option<RingItem<'_>> {
        let RingMemory { data, size, .. } = self.memory;
        let mask = size - 1;
        loop {
            if !self.data_available() {
                return None;
            }
            let offset = self.pos & mask;
            // SAFETY: `offset` is 8-aligned (positions advance in multiples of 8) and below
            // `size`, a multiple of 8: the header lies inside the data pages. Acquire pairs with
            // the kernel's fully ordered exchange that commits the record.
            let header = unsafe { &*data.add(offset).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if header & BUSY_BIT != 0 {
                if !self.needs_wakeup {
                    return None;
                }
                // As in `data_available`: a retry sees the commit or the producer sees our
                // position.
                atomic::fence(Ordering::SeqCst);
                self.needs_wakeup = false;
                continue;
            }
            // The length is below the ring's size (the kernel refuses larger records); masking
            // keeps the copies below inside the data pages whatever the header says.
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize & mask;
            if header & DISCARD_BIT != 0 {
                consume(self.memory, &mut self.pos, len);
                self.needs_wakeup = true;
                continue;
            }
            let start = (offset + HEADER_BYTES) & mask;
            let first = len.min(size - start);
            // SAFETY: [start, start + first) and [0, len - first) lie inside the data pages
            // (`first <= size - start`, `len - first < size`); the kernel does not write a
            // committed record's bytes until the consumer position passes them.
            let bytes: &[u8] = unsafe {
                let head = std::slice::from_raw_parts(data.add(start), first);
                if first == len {
                    head
                } else {
                    self.wrapped.clear();
                    self.wrapped.extend_from_slice(head);
                    self.wrapped
                        .extend_from_slice(std::slice::from_raw_parts(data, len - first));
                    &self.wrapped
                }
            };
            return Some(RingItem {
                data: bytes,
                len,
                memory: self.memory,
                pos: &mut self.pos,
                needs_wakeup: &mut self.needs_wakeup,
            });
        }
    }
}

/// The agent's reader of the kernel's ring buffer map.
pub struct RingReader {
    cursor: Cursor,
    // Field order: the mappings are unmapped before the map's fd is closed.
    _consumer: Mapping,
    _producer: Mapping,
    map: MapData,
}

// SAFETY: the raw pointers point into mappings the reader owns; it is used by one thread at a
// time (`next` takes `&mut self`).
unsafe impl Send for RingReader {}

impl RingReader {
    /// Maps the consumer page read-write, and the producer page and the data pages (once)
    /// read-only.
    pub fn new(map: Map) -> Result<Self, RingError> {
        let Map::RingBuf(map) = map else {
            return Err(RingError::NotARingBuffer);
        };
        // The kernel sized the ring in pages of this size; 4 KiB is the guess if sysconf fails.
        let page = crate::memory::page_size().unwrap_or(4096);
        let size = map.info().map(|i| i.max_entries()).unwrap_or(0) as usize;
        if size == 0 || !size.is_power_of_two() || !size.is_multiple_of(page) {
            return Err(RingError::BadSize(size as u64));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(
            fd,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            0,
            "consumer page",
        )?;
        let producer = Mapping::new(fd, page + size, libc::PROT_READ, page, "data pages")?;
        let memory = RingMemory {
            consumer_pos: consumer.ptr.cast(),
            producer_pos: producer.ptr.cast(),
            // SAFETY: the data pages follow the producer page inside the same mapping.
            data: unsafe { producer.ptr.add(page) },
            size,
        };
        Ok(RingReader {
            cursor: Cursor::new(memory),
            _consumer: consumer,
            _producer: producer,
            map,
        })
    }

    /// The next committed record; its space is handed back when the item is dropped.
    #[expect(
        clippy::should_implement_trait,
        reason = "not an iterator: the item borrows the reader"
    )]
    pub fn next(&mut self) -> Option<RingItem<'_>> {
        self.cursor.next()
    }

    /// A mark of the producer's position now: once [`RingReader::has_read_to`] it, every record
    /// committed before this call has been read (a record still being written ahead of it holds
    /// the reader back, so "fewer records than asked for" does not mean that).
    pub fn producer_mark(&self) -> usize {
        self.cursor.producer_mark()
    }

    /// Whether every record before `mark` has been read.
    pub fn has_read_to(&self, mark: usize) -> bool {
        self.cursor.has_read_to(mark)
    }
}

impl AsRawFd for RingReader {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
