//! HPACK (RFC 7541) header block decoding for one direction of a connection: integers, string
//! literals (raw or Huffman), the static table and a dynamic table that may be only partly known.
//!
//! A decoder of our own rather than a maintained crate: those fail a whole header block on a
//! dynamic-table index they do not hold, and a connection adopted mid-stream (or one that lost a
//! header block to a capture gap) always has entries we never saw. Here such a field is counted
//! as undecoded and every other field of the block still decodes: static-table fields, literals,
//! and entries inserted since we lost track (indices count from the newest entry, so those are
//! placed exactly). Nothing is guessed. Bounded: the block is fully present before decoding,
//! strings must lie inside it, integers stop at `u32`, the emitted list stops at
//! `max_list_bytes`, and the table at `max_table_bytes` whatever the encoder announces.

mod huffman;
mod table;

use std::sync::Arc;

use bytes::Bytes;

use crate::model::{Header, Text};

pub use huffman::HuffmanError;
pub use table::{DEFAULT_TABLE_SIZE, ENTRY_OVERHEAD, STATIC_TABLE};
use table::{DynamicTable, Entry};

/// Why a header block could not be followed to its end (the rest of it, and so any table
/// insert in it, is unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("header block ends inside a representation")]
    Truncated,
    #[error("HPACK integer does not fit in 32 bits")]
    IntegerOverflow,
    #[error("indexed field with index 0")]
    ZeroIndex,
}

/// A decoded header block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodedBlock {
    pub fields: Vec<Header>,
    /// Fields that could not be decoded (index not held, bad Huffman, a name not UTF-8).
    pub undecoded: u32,
    /// Fields were dropped at the list bound.
    pub truncated: bool,
}

/// Field list capacity kept between blocks (a larger one is released).
const KEPT_PENDING_FIELDS: usize = 128;

/// Where a pending field's value lives until the block's value buffer is frozen.
#[derive(Debug)]
enum Value {
    /// A range of the block's value buffer.
    Buf(usize, usize),
    /// A static or dynamic table value.
    Shared(Bytes),
}

/// The HPACK decoder of one direction.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// SETTINGS_HEADER_TABLE_SIZE announced by the receiver (the limit for size updates).
    settings_limit: usize,
    /// Reused scratch for Huffman-coded names.
    name_buf: Vec<u8>,
    /// Reused list of a block's fields before its value buffer is frozen.
    pending: Vec<(Text, Value)>,
}

/// Header names kept as static text besides the static table's (lowercase, as HTTP/2 sends).
const KNOWN_NAMES: [&str; 24] = [
    "te",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-trace-bin",
    "grpc-previous-rpc-attempts",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-amzn-trace-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    "x-real-ip",
    "upgrade",
];

/// A literal header name: common names are static, others shared (they may enter the table).
fn name_text(bytes: &[u8]) -> Option<Text> {
    let name = std::str::from_utf8(bytes).ok()?;
    if let Some((known, _)) = STATIC_TABLE.iter().find(|(n, _)| *n == name) {
        return Some(Text::Static(known));
    }
    if let Some(known) = KNOWN_NAMES.iter().find(|n| **n == name) {
        return Some(Text::Static(known));
    }
    Some(Text::Shared(Arc::from(name)))
}

/// Reads an HPACK integer with an `prefix_bits`-bit prefix at `*pos` (RFC 7541 §5.1).
fn read_int(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Result<u32, BlockError> {
    let mask = (1u32 << prefix_bits) - 1;
    let first = *block.get(*pos).ok_or(BlockError::Truncated)?;
    *pos += 1;
    let mut value = u32::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*pos).ok_or(BlockError::Truncated)?;
        *pos += 1;
        let add = u64::from(byte & 0x7f) << shift;
        let sum = u64::from(value) + add;
        if shift > 28 || sum > u64::from(u32::MAX) {
            return Err(BlockError::IntegerOverflow);
        }
        value = sum as u32;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

/// Reads a string literal header (§5.2): whether it is Huffman-coded, and its bytes.
fn read_string<'a>(block: &'a [u8], pos: &mut usize) -> Result<(bool, &'a [u8]), BlockError> {
    let huffman = block.get(*pos).ok_or(BlockError::Truncated)? & 0x80 != 0;
    let len = read_int(block, pos, 7)? as usize;
    let end = pos.checked_add(len).ok_or(BlockError::Truncated)?;
    let bytes = block.get(*pos..end).ok_or(BlockError::Truncated)?;
    *pos = end;
    Ok((huffman, bytes))
}

/// Decodes a string literal into `out`; `None` (and `out` unchanged) when the Huffman code is bad.
fn decode_string(huffman: bool, raw: &[u8], out: &mut Vec<u8>) -> Option<(usize, usize)> {
    let start = out.len();
    if huffman {
        if huffman::decode(raw, out).is_err() {
            out.truncate(start);
            return None;
        }
    } else {
        out.extend_from_slice(raw);
    }
    Some((start, out.len()))
}

/// A pending block: fields so far and the list bound.
struct Block {
    pending: Vec<(Text, Value)>,
    values: Vec<u8>,
    list_bytes: usize,
    max_list_bytes: usize,
    undecoded: u32,
    truncated: bool,
}

impl Block {
    /// Keeps a field unless the list bound is reached (then this and every later field drop).
    fn emit(&mut self, name: Text, value: Value) {
        let value_len = match &value {
            Value::Buf(start, end) => end - start,
            Value::Shared(bytes) => bytes.len(),
        };
        let field_bytes = name.len() + value_len + ENTRY_OVERHEAD;
        if self.truncated || self.list_bytes + field_bytes > self.max_list_bytes {
            self.truncated = true;
            return;
        }
        self.list_bytes += field_bytes;
        self.pending.push((name, value));
    }
}

impl Decoder {
    /// `table_known`: false when earlier header blocks of this direction were never seen.
    pub fn new(max_table_bytes: usize, table_known: bool) -> Self {
        Decoder {
            table: DynamicTable::new(max_table_bytes, table_known),
            settings_limit: DEFAULT_TABLE_SIZE,
            name_buf: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The receiver's SETTINGS_HEADER_TABLE_SIZE. The table itself changes size only by the
    /// encoder's size updates (RFC 7541 §4.2 makes the encoder send one after a reduction), so
    /// this is kept as the announced limit; our own bound applies whatever is announced.
    pub fn set_max_table_size(&mut self, bytes: u32) {
        self.settings_limit = bytes as usize;
    }

    pub fn settings_limit(&self) -> usize {
        self.settings_limit
    }

    /// Whether the dynamic table is entirely known (see [`DynamicTable`]).
    pub fn table_known(&self) -> bool {
        self.table.is_complete()
    }

    /// A header block of this direction was lost: its table inserts cannot be placed, so every
    /// entry held so far is forgotten (entries inserted from now on are placed correctly).
    pub fn lose_track(&mut self) {
        self.table.lose_track();
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
            + self.name_buf.capacity()
            + self.pending.capacity() * std::mem::size_of::<(Text, Value)>()
    }

    /// Decodes one complete header block. On an error the table is left as far as the block
    /// was followed; the caller reports the block lost and calls [`Decoder::lose_track`].
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list_bytes: usize,
    ) -> Result<DecodedBlock, BlockError> {
        let mut out = Block {
            pending: std::mem::take(&mut self.pending),
            values: Vec::new(),
            list_bytes: 0,
            max_list_bytes,
            undecoded: 0,
            truncated: false,
        };
        let mut pos = 0usize;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = read_int(block, &mut pos, 7)?;
                if index == 0 {
                    return Err(BlockError::ZeroIndex);
                }
                match self.lookup(index as usize) {
                    Some((name, value)) => out.emit(name, Value::Shared(value)),
                    None => out.undecoded += 1,
                }
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing (§6.2.1).
                self.literal(block, &mut pos, 6, true, &mut out)?;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): honoured up to our own bound.
                let size = read_int(block, &mut pos, 5)?;
                self.table.resize(size as usize);
            } else {
                // Literal without indexing / never indexed (§6.2.2, §6.2.3).
                self.literal(block, &mut pos, 4, false, &mut out)?;
            }
        }
        let values = Bytes::from(out.values);
        let fields = out
            .pending
            .drain(..)
            .map(|(name, value)| Header {
                name,
                value: match value {
                    Value::Buf(start, end) => values.slice(start..end),
                    Value::Shared(bytes) => bytes,
                },
            })
            .collect();
        if out.pending.capacity() <= KEPT_PENDING_FIELDS {
            self.pending = out.pending;
        }
        Ok(DecodedBlock {
            fields,
            undecoded: out.undecoded,
            truncated: out.truncated,
        })
    }

    /// Static entries 1..=61, then the dynamic table; `None` when not held.
    fn lookup(&self, index: usize) -> Option<(Text, Bytes)> {
        if let Some((name, value)) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Some((Text::Static(name), Bytes::from_static(value.as_bytes())));
        }
        let entry = self.table.get(index - STATIC_TABLE.len())?;
        entry.field.clone()
    }

    fn lookup_name(&self, index: usize) -> Option<Text> {
        if let Some((name, _)) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Some(Text::Static(name));
        }
        let entry = self.table.get(index - STATIC_TABLE.len())?;
        entry.field.as_ref().map(|(name, _)| name.clone())
    }

    fn literal(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        prefix_bits: u32,
        insert: bool,
        out: &mut Block,
    ) -> Result<(), BlockError> {
        let name_index = read_int(block, pos, prefix_bits)? as usize;
        let name = if name_index == 0 {
            let (huffman, raw) = read_string(block, pos)?;
            if huffman {
                self.name_buf.clear();
                match huffman::decode(raw, &mut self.name_buf) {
                    Ok(()) => name_text(&self.name_buf),
                    Err(_) => None,
                }
            } else {
                name_text(raw)
            }
        } else {
            self.lookup_name(name_index)
        };
        let (huffman, raw) = read_string(block, pos)?;
        let value = decode_string(huffman, raw, &mut out.values);
        if insert {
            let value_len = value.map_or(raw.len(), |(start, end)| end - start);
            let name_len = name.as_ref().map_or(0, |n| n.len());
            let field = match (&name, value) {
                (Some(name), Some((start, end))) => Some((
                    name.clone(),
                    Bytes::copy_from_slice(&out.values[start..end]),
                )),
                _ => None,
            };
            // A placeholder's size is a lower bound: holding an entry the encoder evicted is
            // harmless (it will not name it), evicting one it holds only loses a lookup.
            self.table.insert(Entry {
                field,
                size: name_len + value_len + ENTRY_OVERHEAD,
            });
        }
        match (name, value) {
            (Some(name), Some((start, end))) => {
                out.emit(name, Value::Buf(start, end));
                if out.truncated {
                    out.values.truncate(start);
                }
            }
            (_, value) => {
                if let Some((start, _)) = value {
                    out.values.truncate(start);
                }
                out.undecoded += 1;
            }
        }
        Ok(())
    }
}

/// Fuzzing harness: `data` is a series of header blocks for one decoder; checks that nothing
/// panics and that lists and memory stay within their bounds.
///
/// Layout: byte 0 picks the setup (bit 0: table known, bit 1: tiny bounds); then blocks, each
/// a length byte and that many bytes (fewer if the script ends). A block that fails to decode
/// makes the decoder lose track, as the wire layer does.
#[doc(hidden)]
pub fn fuzz_entry(data: &[u8]) {
    let Some((&setup, mut script)) = data.split_first() else {
        return;
    };
    let (max_table, max_list) = if setup & 2 != 0 {
        (96, 80)
    } else {
        (64 * 1024, 64 * 1024)
    };
    let mut decoder = Decoder::new(max_table, setup & 1 != 0);
    while let Some((&len, rest)) = script.split_first() {
        let (block, rest) = rest.split_at(usize::from(len).min(rest.len()));
        script = rest;
        match decoder.decode(block, max_list) {
            Ok(decoded) => {
                let list: usize = decoded
                    .fields
                    .iter()
                    .map(|h| h.name.len() + h.value.len() + ENTRY_OVERHEAD)
                    .sum();
                assert!(list <= max_list, "list over its bound");
                assert!(
                    decoded.fields.len() + decoded.undecoded as usize <= block.len(),
                    "more fields than representations"
                );
            }
            Err(_) => decoder.lose_track(),
        }
        assert!(decoder.table.size() <= max_table, "table over its bound");
        assert!(
            decoder.memory_bytes()
                <= 8 * max_table
                    + 1024
                    + KEPT_PENDING_FIELDS * std::mem::size_of::<(Text, Value)>(),
            "memory over its bound"
        );
    }
}

#[cfg(test)]
mod tests;
