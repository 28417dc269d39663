//! The contract between the HTTP/2 wire layer (frames, HPACK: one [`H2Direction`] per direction of
//! a connection) and the exchange layer (streams -> exchanges). The wire layer never guesses: a
//! header it cannot decode is counted, a header block it cannot follow is reported lost.

use crate::model::Header;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bounds of one direction's wire state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Limits {
    /// Decoded header list kept per block (names + values + 32 per field, as SETTINGS_MAX_HEADER_LIST_SIZE
    /// counts); fields past it are dropped and the block marked `truncated`.
    pub max_header_list_bytes: usize,
    /// HPACK dynamic table size at most, whatever SETTINGS or size updates say.
    pub max_table_bytes: usize,
    /// Header block fragments (HEADERS + CONTINUATION) buffered before the block is given up.
    pub max_header_block_bytes: usize,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            max_header_list_bytes: 64 * 1024,
            max_table_bytes: 64 * 1024,
            max_header_block_bytes: 64 * 1024,
        }
    }
}

/// What one direction's frames meant, in wire order. `ts_ns`/`tid` are those of the record that
/// completed the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Event {
    /// A complete header block (HEADERS + CONTINUATION*), decoded. Pseudo-header fields
    /// (`:method`, `:path`, `:scheme`, `:authority`, `:status`) come first, as on the wire.
    Headers {
        stream_id: u32,
        end_stream: bool,
        fields: Vec<Header>,
        /// Fields that could not be decoded (unknown dynamic-table index, bad Huffman): never guessed.
        undecoded: u32,
        /// Fields were dropped at `max_header_list_bytes`.
        truncated: bool,
        ts_ns: u64,
        tid: u32,
    },
    /// A header block of this stream was lost (a capture gap inside it, or it exceeded
    /// `max_header_block_bytes`): nothing of it is known.
    HeadersLost { stream_id: u32, ts_ns: u64 },
    /// DATA frame: payload length (without padding) as sent, whether or not the bytes were captured.
    Data {
        stream_id: u32,
        len: u32,
        end_stream: bool,
        ts_ns: u64,
        tid: u32,
    },
    RstStream {
        stream_id: u32,
        error_code: u32,
        ts_ns: u64,
        tid: u32,
    },
    GoAway {
        last_stream_id: u32,
        error_code: u32,
        ts_ns: u64,
    },
    /// SETTINGS (not ACK) sent in this direction: SETTINGS_HEADER_TABLE_SIZE applies to the
    /// HPACK decoder of the OTHER direction (the exchange layer forwards it with
    /// [`H2Direction::set_max_table_size`]).
    Settings {
        header_table_size: Option<u32>,
        ts_ns: u64,
    },
    /// The direction lost its place in the frame sequence; every stream whose header block was in
    /// flight in this direction is unreliable. The wire layer resynchronises by itself.
    Desync { ts_ns: u64 },
}

/// Counters of one direction (merge with [`H2WireStats::merge`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2WireStats {
    pub frames: u64,
    pub header_blocks: u64,
    pub header_blocks_lost: u64,
    pub fields_undecoded: u64,
    pub header_lists_truncated: u64,
    pub desyncs: u64,
    pub bytes_skipped: u64,
    /// Times the HPACK dynamic table became unknown (an insert we could not follow).
    pub table_unknown: u64,
    /// Header blocks given up for exceeding `max_header_block_bytes` (also in
    /// `header_blocks_lost`).
    pub frames_too_large: u64,
    /// RST_STREAM, GOAWAY or SETTINGS frames whose payload was not captured (no event emitted).
    pub control_frames_lost: u64,
}

impl H2WireStats {
    pub fn merge(&mut self, other: &H2WireStats) {
        self.frames += other.frames;
        self.header_blocks += other.header_blocks;
        self.header_blocks_lost += other.header_blocks_lost;
        self.fields_undecoded += other.fields_undecoded;
        self.header_lists_truncated += other.header_lists_truncated;
        self.desyncs += other.desyncs;
        self.bytes_skipped += other.bytes_skipped;
        self.table_unknown += other.table_unknown;
        self.frames_too_large += other.frames_too_large;
        self.control_frames_lost += other.control_frames_lost;
    }
}

pub use super::direction::H2Direction;

/// Whether `bytes` start with the client connection preface.
pub fn starts_with_preface(bytes: &[u8]) -> bool {
    bytes.starts_with(PREFACE)
}

/// Whether `bytes` start with a plausible run of HTTP/2 frames (at least two valid frame headers
/// in a row, or one valid frame covering all of `bytes`): adoption of connections seen mid-stream
/// and resynchronisation.
pub fn looks_like_h2_frames(bytes: &[u8]) -> bool {
    super::frame::plausible_run(bytes, bytes.len())
}
