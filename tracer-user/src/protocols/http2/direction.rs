//! One direction of an HTTP/2 connection: reassembles frames from captured records (frames split
//! across records, many in one, gaps of known length), follows header blocks (HEADERS or
//! PUSH_PROMISE + CONTINUATION) into the HPACK decoder, and turns frames into [`H2Event`]s.
//!
//! Gaps: inside a DATA payload (or padding, or a PING/WINDOW_UPDATE/PRIORITY payload) they are
//! harmless, the frame length keeps us in sync; inside a header block the block is lost
//! (`HeadersLost`, the HPACK table forgets what it held); inside a frame header the frame
//! boundary is lost and the direction desyncs, skipping bytes until the frames from some offset
//! are all plausible and add up exactly to the record's remaining bytes (see
//! [`frame::exact_run`]).

use super::events::{H2Event, H2Limits, H2WireStats, PREFACE};
use super::frame::{self, FRAME_HEADER_LEN, FrameHeader};
use super::hpack::Decoder;

/// Header block buffer capacity kept between blocks (larger buffers are released).
const KEPT_BLOCK_CAPACITY: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting the client preface; `matched` bytes of it seen.
    Preface { matched: usize },
    /// Reading a frame header (`head_len` bytes of it in `head`).
    FrameHeader,
    /// Inside the payload of `frame`.
    Payload,
    /// Frame boundary unknown: skipping until an exact run of frames (see [`frame::exact_run`]).
    Desynced,
}

/// The header block being followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    None,
    /// Fragments are collecting in `block_buf`. `push`: a PUSH_PROMISE block (decoded for the
    /// table, not reported).
    Collecting {
        stream_id: u32,
        end_stream: bool,
        push: bool,
    },
    /// Lost (and reported); its remaining CONTINUATION frames are skipped.
    Lost {
        stream_id: u32,
    },
}

/// Progress through the current frame's payload.
#[derive(Clone, Copy, Debug, Default)]
struct FrameState {
    header: Option<FrameHeader>,
    /// Payload bytes consumed.
    offset: usize,
    /// Pad length, once read (PADDED frames).
    pad: usize,
    /// The pad length byte fell in a gap, or the padding does not fit.
    pad_unknown: bool,
    /// Fixed fields before the body (RST_STREAM error code, GOAWAY ids, priority, promised id).
    fixed: [u8; 8],
    fixed_lost: bool,
    /// A gap fell where the frame's content mattered (SETTINGS entries).
    body_lost: bool,
    /// Partial SETTINGS entry.
    entry: [u8; 6],
    entry_len: usize,
    header_table_size: Option<u32>,
    max_frame_size: Option<u32>,
}

impl FrameState {
    fn header(&self) -> FrameHeader {
        self.header.unwrap_or(FrameHeader {
            len: 0,
            ty: 0xff,
            flags: 0,
            stream_id: 0,
            reserved: false,
        })
    }

    fn len(&self) -> usize {
        self.header().len as usize
    }

    /// 1 when the payload starts with a pad length byte.
    fn pad_field(&self) -> usize {
        let header = self.header();
        let padded_type = matches!(
            header.ty,
            frame::DATA | frame::HEADERS | frame::PUSH_PROMISE
        );
        usize::from(padded_type && header.has(frame::FLAG_PADDED))
    }

    /// Fixed fields after the pad length byte.
    fn fixed_len(&self) -> usize {
        let header = self.header();
        match header.ty {
            frame::HEADERS if header.has(frame::FLAG_PRIORITY) => 5,
            frame::PUSH_PROMISE | frame::RST_STREAM => 4,
            frame::GOAWAY => 8,
            _ => 0,
        }
    }

    fn body_start(&self) -> usize {
        (self.pad_field() + self.fixed_len()).min(self.len())
    }

    /// End of the body (before padding); the frame end while the pad length is unknown.
    fn body_end(&self) -> usize {
        self.len().saturating_sub(self.pad).max(self.body_start())
    }

    fn fixed_u32(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.fixed[at],
            self.fixed[at + 1],
            self.fixed[at + 2],
            self.fixed[at + 3],
        ])
    }
}

/// Timestamp and thread of the record being fed.
#[derive(Clone, Copy)]
struct Ctx {
    tid: u32,
    ts_ns: u64,
}

/// One direction of an HTTP/2 connection: frame reassembly across records and the HPACK decoder.
#[derive(Debug)]
pub struct H2Direction {
    limits: H2Limits,
    stats: H2WireStats,
    state: State,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    frame: FrameState,
    block: Block,
    block_buf: Vec<u8>,
    hpack: Decoder,
    /// Largest payload the receiver of this direction accepts (its SETTINGS_MAX_FRAME_SIZE,
    /// forwarded by the connection): a larger frame of an unknown type is read as a desync.
    max_frame_size: u32,
    /// SETTINGS_MAX_FRAME_SIZE last announced by the sender of this direction.
    announced_max_frame_size: Option<u32>,
}

impl H2Direction {
    /// `expect_preface`: this direction carries the client preface first (client -> server) and
    /// the connection was seen from its start. `table_known`: false for a connection adopted
    /// mid-stream (its HPACK dynamic table is unknown); such a direction also waits for a
    /// exact run of frames before it trusts a frame boundary.
    pub fn new(limits: H2Limits, expect_preface: bool, table_known: bool) -> Self {
        let state = if expect_preface {
            State::Preface { matched: 0 }
        } else if table_known {
            State::FrameHeader
        } else {
            State::Desynced
        };
        H2Direction {
            limits,
            stats: H2WireStats::default(),
            state,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            frame: FrameState::default(),
            block: Block::None,
            block_buf: Vec::new(),
            hpack: Decoder::new(limits.max_table_bytes, table_known),
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            announced_max_frame_size: None,
        }
    }

    /// Feeds one record: `payload` is what was captured, `true_len` what was transferred (the
    /// `true_len - payload.len()` bytes after `payload` were not captured: a gap of known length).
    pub fn feed(
        &mut self,
        payload: &[u8],
        true_len: u32,
        tid: u32,
        ts_ns: u64,
        out: &mut Vec<H2Event>,
    ) {
        let ctx = Ctx { tid, ts_ns };
        let mut gap = (true_len as usize).saturating_sub(payload.len());
        let mut data = payload;
        while !data.is_empty() {
            let used = self.step(data, gap, ctx, out);
            data = data.get(used..).unwrap_or_default();
        }
        while gap > 0 {
            let used = self.step_gap(gap, ctx, out);
            gap -= used.min(gap);
        }
    }

    /// Records of this direction were lost before the next one (dropped by the kernel, unknown
    /// length): the frame boundary and any header block in flight are lost. Desyncs (emitting
    /// `Desync`) unless already resynchronising; the next record that starts an exact run
    /// of frames resyncs.
    pub fn on_records_lost(&mut self, ts_ns: u64, out: &mut Vec<H2Event>) {
        if self.state != State::Desynced {
            self.desync(Ctx { tid: 0, ts_ns }, out);
        }
    }

    /// SETTINGS_HEADER_TABLE_SIZE announced by the receiver of this direction (capped at
    /// `max_table_bytes`).
    pub fn set_max_table_size(&mut self, bytes: u32) {
        let capped = (bytes as usize).min(self.limits.max_table_bytes);
        self.hpack.set_max_table_size(capped as u32);
    }

    /// SETTINGS_MAX_FRAME_SIZE announced by the receiver of this direction (never below the
    /// protocol's default).
    pub fn set_max_frame_size(&mut self, bytes: u32) {
        self.max_frame_size = bytes.max(frame::DEFAULT_MAX_FRAME_SIZE);
    }

    /// SETTINGS_MAX_FRAME_SIZE the sender of this direction announced last, if any.
    pub fn announced_max_frame_size(&self) -> Option<u32> {
        self.announced_max_frame_size
    }

    pub fn stats(&self) -> &H2WireStats {
        &self.stats
    }

    /// Heap bytes held (buffers, dynamic table), for the connection table's memory bound.
    pub fn memory_bytes(&self) -> usize {
        self.block_buf.capacity() + self.hpack.memory_bytes()
    }

    /// Whether the HPACK dynamic table is entirely known.
    pub fn table_known(&self) -> bool {
        self.hpack.table_known()
    }

    /// Whether the direction currently follows frame boundaries.
    pub fn in_sync(&self) -> bool {
        self.state != State::Desynced
    }

    /// Consumes a prefix of `data` (at least one byte, or changes state); `gap` uncaptured
    /// bytes follow `data` in this record.
    fn step(&mut self, data: &[u8], gap: usize, ctx: Ctx, out: &mut Vec<H2Event>) -> usize {
        match self.state {
            State::Preface { matched } => {
                let want = &PREFACE[matched..];
                let n = want.len().min(data.len());
                if data[..n] != want[..n] {
                    self.desync(ctx, out);
                    return 0;
                }
                self.state = if matched + n == PREFACE.len() {
                    State::FrameHeader
                } else {
                    State::Preface {
                        matched: matched + n,
                    }
                };
                n
            }
            State::FrameHeader => {
                let n = (FRAME_HEADER_LEN - self.head_len).min(data.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
                self.head_len += n;
                if self.head_len == FRAME_HEADER_LEN {
                    self.head_len = 0;
                    let header = FrameHeader::parse(&self.head);
                    self.on_frame_header(header, ctx, out);
                }
                n
            }
            State::Payload => {
                let n = (self.frame.len() - self.frame.offset).min(data.len());
                self.consume(Some(&data[..n]), n, ctx, out);
                n
            }
            State::Desynced => {
                let rest = data.len() + gap;
                let start = (0..data.len()).find(|&p| frame::exact_run(&data[p..], rest - p));
                match start {
                    Some(p) => {
                        self.stats.bytes_skipped += p as u64;
                        self.state = State::FrameHeader;
                        self.head_len = 0;
                        p
                    }
                    None => {
                        self.stats.bytes_skipped += data.len() as u64;
                        data.len()
                    }
                }
            }
        }
    }

    /// Consumes up to `gap` uncaptured bytes; returns how many.
    fn step_gap(&mut self, gap: usize, ctx: Ctx, out: &mut Vec<H2Event>) -> usize {
        match self.state {
            State::Preface { matched } => {
                // The preface has a fixed length: a gap inside it keeps us in sync.
                let n = (PREFACE.len() - matched).min(gap);
                self.state = if matched + n == PREFACE.len() {
                    State::FrameHeader
                } else {
                    State::Preface {
                        matched: matched + n,
                    }
                };
                n
            }
            State::FrameHeader => {
                // A frame header not captured: the next frame boundary is unknown.
                self.desync(ctx, out);
                0
            }
            State::Payload => {
                let n = (self.frame.len() - self.frame.offset).min(gap);
                self.consume(None, n, ctx, out);
                n
            }
            State::Desynced => {
                self.stats.bytes_skipped += gap as u64;
                gap
            }
        }
    }

    fn desync(&mut self, ctx: Ctx, out: &mut Vec<H2Event>) {
        self.stats.desyncs += 1;
        out.push(H2Event::Desync { ts_ns: ctx.ts_ns });
        if matches!(self.block, Block::Collecting { .. }) {
            self.lose_block(ctx, out);
        } else {
            // Skipped bytes may hold header blocks: their inserts cannot be placed.
            self.forget_table();
        }
        self.block = Block::None;
        self.release_block_buf();
        self.state = State::Desynced;
        self.head_len = 0;
        self.frame = FrameState::default();
    }

    fn forget_table(&mut self) {
        self.hpack.lose_track();
        self.stats.table_unknown += 1;
    }

    fn release_block_buf(&mut self) {
        self.block_buf.clear();
        if self.block_buf.capacity() > KEPT_BLOCK_CAPACITY {
            self.block_buf = Vec::new();
        }
    }

    /// The block being collected is lost: counted, reported (unless a PUSH_PROMISE), and the
    /// HPACK table forgets what it held.
    fn lose_block(&mut self, ctx: Ctx, out: &mut Vec<H2Event>) {
        if let Block::Collecting {
            stream_id, push, ..
        } = self.block
        {
            self.stats.header_blocks_lost += 1;
            self.forget_table();
            if !push {
                out.push(H2Event::HeadersLost {
                    stream_id,
                    ts_ns: ctx.ts_ns,
                });
            }
            self.block = Block::Lost { stream_id };
            self.release_block_buf();
        }
    }

    fn on_frame_header(&mut self, header: FrameHeader, ctx: Ctx, out: &mut Vec<H2Event>) {
        if header.is_known_type() && !header.is_well_formed() {
            // No conforming peer sends this: more likely we are not where we think we are.
            self.desync(ctx, out);
            return;
        }
        if !header.is_known_type() && header.len > self.max_frame_size {
            // Larger than the receiver accepts: not a frame (e.g. a preface where frames were
            // expected, read as a 5 MB frame), and following it would skip real frames.
            self.desync(ctx, out);
            return;
        }
        self.stats.frames += 1;
        let expecting_continuation = !matches!(self.block, Block::None);
        match header.ty {
            frame::CONTINUATION => match self.block {
                Block::Collecting { stream_id, .. } | Block::Lost { stream_id }
                    if stream_id == header.stream_id => {}
                _ => {
                    // A CONTINUATION whose HEADERS we did not follow (skipped while desynced,
                    // or interleaved with another stream's block): that block is lost.
                    self.lose_block(ctx, out);
                    self.stats.header_blocks_lost += 1;
                    self.forget_table();
                    out.push(H2Event::HeadersLost {
                        stream_id: header.stream_id,
                        ts_ns: ctx.ts_ns,
                    });
                    self.block = Block::Lost {
                        stream_id: header.stream_id,
                    };
                }
            },
            _ if expecting_continuation => {
                // RFC 9113 §6.10: nothing may interleave with a header block.
                self.lose_block(ctx, out);
                self.block = Block::None;
            }
            _ => {}
        }
        if matches!(header.ty, frame::HEADERS | frame::PUSH_PROMISE) {
            self.block_buf.clear();
            self.block = Block::Collecting {
                stream_id: header.stream_id,
                end_stream: header.ty == frame::HEADERS && header.has(frame::FLAG_END_STREAM),
                push: header.ty == frame::PUSH_PROMISE,
            };
        }
        self.frame = FrameState {
            header: Some(header),
            ..FrameState::default()
        };
        if header.len == 0 {
            self.finish_frame(ctx, out);
        } else {
            self.state = State::Payload;
        }
    }

    /// Consumes `n` payload bytes of the current frame: `data` when captured, `None` for a gap.
    fn consume(&mut self, data: Option<&[u8]>, n: usize, ctx: Ctx, out: &mut Vec<H2Event>) {
        let mut f = self.frame;
        let start = f.offset;
        let end = start + n;
        let pad_field = f.pad_field();
        if pad_field == 1 && start == 0 && n > 0 {
            match data {
                Some(bytes) => {
                    f.pad = usize::from(bytes[0]);
                    if f.pad > f.len() - f.body_start() {
                        f.pad_unknown = true;
                        f.pad = 0;
                    }
                }
                None => f.pad_unknown = true,
            }
            if f.pad_unknown && matches!(self.block, Block::Collecting { .. }) {
                // Where the fragment ends is unknown.
                self.lose_block(ctx, out);
            }
        }
        let fixed_end = f.body_start();
        let (a, b) = (start.max(pad_field), end.min(fixed_end));
        if a < b {
            match data {
                Some(bytes) => f.fixed[a - pad_field..b - pad_field]
                    .copy_from_slice(&bytes[a - start..b - start]),
                None => f.fixed_lost = true,
            }
        }
        let (a, b) = (start.max(fixed_end), end.min(f.body_end()));
        if a < b {
            let body = data.map(|bytes| &bytes[a - start..b - start]);
            self.body(&mut f, body, b - a, ctx, out);
        }
        f.offset = end;
        self.frame = f;
        if f.offset >= f.len() {
            self.finish_frame(ctx, out);
        }
    }

    /// Body bytes (after pad length and fixed fields, before padding) of the current frame.
    fn body(
        &mut self,
        f: &mut FrameState,
        data: Option<&[u8]>,
        n: usize,
        ctx: Ctx,
        out: &mut Vec<H2Event>,
    ) {
        match f.header().ty {
            frame::HEADERS | frame::PUSH_PROMISE | frame::CONTINUATION => {
                if !matches!(self.block, Block::Collecting { .. }) {
                    return;
                }
                match data {
                    None => self.lose_block(ctx, out),
                    Some(_) if self.block_buf.len() + n > self.limits.max_header_block_bytes => {
                        self.stats.frames_too_large += 1;
                        self.lose_block(ctx, out);
                    }
                    Some(bytes) => self.block_buf.extend_from_slice(bytes),
                }
            }
            frame::SETTINGS => match data {
                None => f.body_lost = true,
                Some(bytes) => {
                    for &byte in bytes {
                        f.entry[f.entry_len] = byte;
                        f.entry_len += 1;
                        if f.entry_len == f.entry.len() {
                            f.entry_len = 0;
                            let id = u16::from_be_bytes([f.entry[0], f.entry[1]]);
                            let value = u32::from_be_bytes([
                                f.entry[2], f.entry[3], f.entry[4], f.entry[5],
                            ]);
                            if id == frame::SETTINGS_HEADER_TABLE_SIZE {
                                f.header_table_size = Some(value);
                            } else if id == frame::SETTINGS_MAX_FRAME_SIZE {
                                f.max_frame_size = Some(value);
                            }
                        }
                    }
                }
            },
            _ => {}
        }
    }

    fn finish_frame(&mut self, ctx: Ctx, out: &mut Vec<H2Event>) {
        let f = self.frame;
        let header = f.header();
        self.state = State::FrameHeader;
        match header.ty {
            frame::DATA => out.push(H2Event::Data {
                stream_id: header.stream_id,
                len: (f.len() - f.pad_field() - f.pad) as u32,
                end_stream: header.has(frame::FLAG_END_STREAM),
                ts_ns: ctx.ts_ns,
                tid: ctx.tid,
            }),
            frame::HEADERS | frame::PUSH_PROMISE | frame::CONTINUATION
                if header.has(frame::FLAG_END_HEADERS) =>
            {
                self.finish_block(ctx, out);
            }
            frame::RST_STREAM if !f.fixed_lost => out.push(H2Event::RstStream {
                stream_id: header.stream_id,
                error_code: f.fixed_u32(0),
                ts_ns: ctx.ts_ns,
                tid: ctx.tid,
            }),
            frame::GOAWAY if !f.fixed_lost => out.push(H2Event::GoAway {
                last_stream_id: f.fixed_u32(0) & 0x7fff_ffff,
                error_code: f.fixed_u32(4),
                ts_ns: ctx.ts_ns,
            }),
            frame::SETTINGS if !header.has(frame::FLAG_ACK) && !f.body_lost => {
                if f.max_frame_size.is_some() {
                    self.announced_max_frame_size = f.max_frame_size;
                }
                out.push(H2Event::Settings {
                    header_table_size: f.header_table_size,
                    ts_ns: ctx.ts_ns,
                })
            }
            frame::SETTINGS if header.has(frame::FLAG_ACK) => {}
            frame::RST_STREAM | frame::GOAWAY | frame::SETTINGS => {
                self.stats.control_frames_lost += 1;
            }
            _ => {}
        }
        self.frame = FrameState::default();
    }

    fn finish_block(&mut self, ctx: Ctx, out: &mut Vec<H2Event>) {
        let block = std::mem::replace(&mut self.block, Block::None);
        let Block::Collecting {
            stream_id,
            end_stream,
            push,
        } = block
        else {
            return;
        };
        match self
            .hpack
            .decode(&self.block_buf, self.limits.max_header_list_bytes)
        {
            Ok(decoded) => {
                self.stats.header_blocks += 1;
                self.stats.fields_undecoded += u64::from(decoded.undecoded);
                if decoded.truncated {
                    self.stats.header_lists_truncated += 1;
                }
                if !push {
                    out.push(H2Event::Headers {
                        stream_id,
                        end_stream,
                        fields: decoded.fields,
                        undecoded: decoded.undecoded,
                        truncated: decoded.truncated,
                        ts_ns: ctx.ts_ns,
                        tid: ctx.tid,
                    });
                }
            }
            Err(_) => {
                self.block = block;
                self.lose_block(ctx, out);
                self.block = Block::None;
            }
        }
        self.release_block_buf();
    }
}

/// Fuzzing harness: `data` is a script of records fed to one direction; checks that nothing
/// panics and memory stays within the limits.
///
/// Layout: byte 0 picks the setup (bit 0: expect the preface, bit 1: table known, bit 2: tiny
/// limits). Then records: a length byte `n`, a gap byte `g` (`g * 16` uncaptured bytes when its
/// bit 7 is clear, `(g & 0x7f) * 4096` when set), then `n` captured bytes (fewer if the script
/// ends). A `0xff` length byte sets the table size from the following byte (`* 256`), `0xfe`
/// reports records lost.
#[doc(hidden)]
pub fn fuzz_entry(data: &[u8]) {
    let Some((&setup, mut script)) = data.split_first() else {
        return;
    };
    let limits = if setup & 4 != 0 {
        H2Limits {
            max_header_list_bytes: 64,
            max_table_bytes: 128,
            max_header_block_bytes: 32,
        }
    } else {
        H2Limits::default()
    };
    let mut direction = H2Direction::new(limits, setup & 1 != 0, setup & 2 != 0);
    let mut out = Vec::new();
    let mut ts = 0u64;
    while let Some((&n, rest)) = script.split_first() {
        ts += 1;
        if n == 0xfe {
            direction.on_records_lost(ts, &mut out);
            script = rest;
            continue;
        }
        if n == 0xff {
            let Some((&size, rest)) = rest.split_first() else {
                break;
            };
            direction.set_max_table_size(u32::from(size) * 256);
            script = rest;
            continue;
        }
        let Some((&g, rest)) = rest.split_first() else {
            break;
        };
        let take = usize::from(n).min(rest.len());
        let (payload, rest) = rest.split_at(take);
        script = rest;
        let gap = if g & 0x80 == 0 {
            u32::from(g) * 16
        } else {
            u32::from(g & 0x7f) * 4096
        };
        direction.feed(payload, take as u32 + gap, 1, ts, &mut out);
        for event in out.drain(..) {
            if let H2Event::Headers { fields, .. } = event {
                let bytes: usize = fields
                    .iter()
                    .map(|h| h.name.len() + h.value.len() + 32)
                    .sum();
                assert!(
                    bytes <= limits.max_header_list_bytes,
                    "header list over its bound"
                );
            }
        }
        // Block buffer (doubling growth), Huffman name scratch, table entries and their texts.
        let bound = 4 * limits.max_header_block_bytes.max(KEPT_BLOCK_CAPACITY)
            + 8 * limits.max_table_bytes
            + 4096;
        assert!(direction.memory_bytes() <= bound, "memory over its bound");
    }
}
