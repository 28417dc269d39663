//! The HPACK static table (RFC 7541 Appendix A) and the dynamic table of one decoder (§2.3.2,
//! §4): a FIFO of the newest inserts, evicted by size. Entries may be placeholders (an insert
//! whose name or value could not be decoded): their position is known, their content is not.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::model::Text;

/// RFC 7541 Appendix A; index 1 is `STATIC_TABLE[0]`.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Bytes of per-entry overhead RFC 7541 §4.1 counts.
pub const ENTRY_OVERHEAD: usize = 32;

/// The initial SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// One dynamic-table entry: its decoded name and value, or `None` for a placeholder.
#[derive(Clone, Debug)]
pub struct Entry {
    pub field: Option<(Text, Bytes)>,
    /// Size as RFC 7541 counts it (a lower bound for placeholders).
    pub size: usize,
}

/// The dynamic table as far as it is known: the newest inserts, in order. Lookups of entries
/// older than what is held answer `None`: after a loss (see [`DynamicTable::lose_track`]) the
/// table holds only what was inserted since, which is still placed correctly because indices
/// count from the newest entry and a conforming encoder only names entries it holds.
#[derive(Debug)]
pub struct DynamicTable {
    entries: VecDeque<Entry>,
    /// Sum of `entries` sizes.
    size: usize,
    /// Maximum size the encoder announced with its last size update.
    capacity: usize,
    /// Our own bound, whatever the encoder announces.
    max_bytes: usize,
    /// Whether `entries` is the whole table (false after adoption or a lost insert, until a
    /// size update to zero empties the table on both sides).
    complete: bool,
}

impl DynamicTable {
    pub fn new(max_bytes: usize, complete: bool) -> Self {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            capacity: DEFAULT_TABLE_SIZE,
            max_bytes,
            complete,
        }
    }

    fn bound(&self) -> usize {
        self.capacity.min(self.max_bytes)
    }

    fn evict_to(&mut self, bound: usize) {
        while self.size > bound {
            match self.entries.pop_back() {
                Some(entry) => self.size -= entry.size,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    /// Adds an entry (RFC 7541 §4.4: an entry larger than the table empties it).
    pub fn insert(&mut self, entry: Entry) {
        let bound = self.bound();
        if entry.size > bound {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(bound - entry.size);
        self.size += entry.size;
        self.entries.push_front(entry);
    }

    /// A dynamic table size update (§6.3).
    pub fn resize(&mut self, capacity: usize) {
        self.capacity = capacity;
        if capacity == 0 {
            self.complete = true;
        }
        self.evict_to(self.bound());
    }

    /// Inserts can no longer be placed (a header block was lost): forget every entry.
    pub fn lose_track(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.complete = false;
    }

    /// Entry `index` counted from 1 = newest; `None` when not held.
    pub fn get(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index.checked_sub(1)?)
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Size as RFC 7541 counts it.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Heap bytes held (entries and their texts).
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self
                .entries
                .iter()
                .filter_map(|e| e.field.as_ref())
                .map(|(name, value)| name.heap_bytes() + value.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &'static str, value: &'static str) -> Entry {
        Entry {
            field: Some((Text::Static(name), Bytes::from_static(value.as_bytes()))),
            size: name.len() + value.len() + ENTRY_OVERHEAD,
        }
    }

    #[test]
    fn evicts_oldest_first_and_empties_on_an_oversized_entry() {
        let mut table = DynamicTable::new(64 * 1024, true);
        table.resize(100);
        table.insert(entry("a", "1")); // 34
        table.insert(entry("b", "2")); // 34
        table.insert(entry("c", "3")); // 34 -> evicts "a"
        assert_eq!(table.len(), 2);
        assert_eq!(table.size(), 68);
        assert_eq!(table.get(1).unwrap().field.as_ref().unwrap().0, "c");
        assert_eq!(table.get(2).unwrap().field.as_ref().unwrap().0, "b");
        assert!(table.get(3).is_none() && table.get(0).is_none());
        table.insert(entry(
            "long-name-long-name-long-name",
            "long-value-long-value-long-value-long-value",
        ));
        assert_eq!((table.len(), table.size()), (0, 0));
    }

    #[test]
    fn our_bound_caps_what_the_encoder_announces() {
        let mut table = DynamicTable::new(70, true);
        table.resize(1 << 20);
        table.insert(entry("a", "1"));
        table.insert(entry("b", "2"));
        table.insert(entry("c", "3"));
        // Only the newest entries are held; older ones answer None (never a wrong entry).
        assert_eq!(table.len(), 2);
        assert!(table.get(3).is_none());
    }

    #[test]
    fn a_size_update_to_zero_makes_the_table_complete_again() {
        let mut table = DynamicTable::new(4096, false);
        table.insert(entry("a", "1"));
        assert!(!table.is_complete());
        table.resize(0);
        table.resize(4096);
        assert!(table.is_complete());
        assert_eq!(table.len(), 0);
        table.insert(entry("b", "2"));
        table.lose_track();
        assert!(!table.is_complete());
        assert_eq!(table.len(), 0);
    }
}
