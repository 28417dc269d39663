//! HTTP/2 frame headers (RFC 9113 §4.1): parsing the 9-byte header, the frame types and flags,
//! and the plausibility rules that decide whether bytes are a run of frames (adoption of
//! connections seen mid-stream, resynchronisation after a capture gap).

/// Size of a frame header on the wire.
pub const FRAME_HEADER_LEN: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
/// SETTINGS and PING: acknowledgement (same bit as END_STREAM).
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

/// SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
/// SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2).
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
/// The largest frame payload a peer accepts until its SETTINGS raise it (RFC 9113 §4.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;

/// Frame headers checked by [`plausible_run`] at most (more valid headers add little).
const MAX_RUN_CHECKED: usize = 4;

/// A parsed frame header. `stream_id` has the reserved bit cleared (RFC 9113 says ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub ty: u8,
    pub flags: u8,
    pub stream_id: u32,
    /// The reserved bit of the stream id was set (never by a conforming sender).
    pub reserved: bool,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        let raw_id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        FrameHeader {
            len: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]),
            ty: bytes[3],
            flags: bytes[4],
            stream_id: raw_id & 0x7fff_ffff,
            reserved: raw_id & 0x8000_0000 != 0,
        }
    }

    /// The first frame header of `bytes`, when 9 bytes are there.
    pub fn peek(bytes: &[u8]) -> Option<FrameHeader> {
        let head: &[u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader::parse(head))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// One of the ten frame types RFC 9113 defines.
    pub fn is_known_type(&self) -> bool {
        self.ty <= CONTINUATION
    }

    /// Whether a conforming peer could send this header of a known type: stream-id rules, the
    /// fixed payload sizes, padding and priority fields that fit in the payload. Unknown types
    /// and a set reserved bit are not judged here (see [`FrameHeader::is_plausible`]).
    pub fn is_well_formed(&self) -> bool {
        let len = self.len;
        let on_stream = self.stream_id != 0;
        let pad = u32::from(self.has(FLAG_PADDED));
        match self.ty {
            DATA => on_stream && len >= pad,
            HEADERS => on_stream && len >= pad + if self.has(FLAG_PRIORITY) { 5 } else { 0 },
            PRIORITY => on_stream && len == 5,
            RST_STREAM => on_stream && len == 4,
            SETTINGS => !on_stream && len.is_multiple_of(6) && !(self.has(FLAG_ACK) && len != 0),
            PUSH_PROMISE => on_stream && len >= pad + 4,
            PING => !on_stream && len == 8,
            GOAWAY => !on_stream && len >= 8,
            WINDOW_UPDATE => len == 4,
            CONTINUATION => on_stream,
            _ => true,
        }
    }

    /// Flags a conforming sender may set on this type (unused flags "MUST be left unset").
    fn defined_flags(&self) -> u8 {
        match self.ty {
            DATA => FLAG_END_STREAM | FLAG_PADDED,
            HEADERS => FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
            PUSH_PROMISE => FLAG_END_HEADERS | FLAG_PADDED,
            CONTINUATION => FLAG_END_HEADERS,
            SETTINGS | PING => FLAG_ACK,
            _ => 0,
        }
    }

    /// The strict test used where bytes are not yet known to be frames: a known type, well
    /// formed, reserved bit clear and no undefined flag set.
    pub fn is_plausible(&self) -> bool {
        self.is_known_type()
            && !self.reserved
            && self.flags & !self.defined_flags() == 0
            && self.is_well_formed()
    }
}

/// Whether `bytes` start a plausible run of frames, `bytes` being the first captured bytes of
/// `total_len` transferred ones (`total_len >= bytes.len()`): every complete frame header met (up
/// to a few) is plausible, and either two of them were met or the first frame ends exactly at
/// `total_len`.
pub fn plausible_run(bytes: &[u8], total_len: usize) -> bool {
    let mut at = 0usize;
    let mut seen = 0usize;
    while seen < MAX_RUN_CHECKED {
        let Some(header) = bytes.get(at..).and_then(FrameHeader::peek) else {
            break;
        };
        if !header.is_plausible() {
            return false;
        }
        seen += 1;
        at = at + FRAME_HEADER_LEN + header.len as usize;
        if seen == 1 && at == total_len {
            return true;
        }
        if at >= bytes.len() {
            break;
        }
    }
    seen >= 2
}

/// Whether a desynchronised direction may resume at the start of `bytes`, the first captured
/// bytes of the `total_len` left in the record (`total_len >= bytes.len()`): every frame from
/// here is plausible and their lengths add up exactly to `total_len` (only the last frame may
/// extend past the captured bytes, and no frame header may fall in the uncaptured tail).
/// Stricter than [`plausible_run`]: a false resync would invent frames, and a stream, out of
/// payload bytes.
pub fn exact_run(bytes: &[u8], total_len: usize) -> bool {
    let mut at = 0usize;
    while at < total_len {
        let Some(header) = bytes.get(at..).and_then(FrameHeader::peek) else {
            return false;
        };
        if !header.is_plausible() {
            return false;
        }
        at = at + FRAME_HEADER_LEN + header.len as usize;
    }
    at == total_len && total_len > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn frame(ty: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.push(ty);
        out.push(flags);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parses_a_header_and_clears_the_reserved_bit() {
        let bytes = [0x01, 0x02, 0x03, HEADERS, 0x25, 0x80, 0, 0, 7];
        let header = FrameHeader::parse(&bytes);
        assert_eq!(header.len, 0x010203);
        assert_eq!(header.ty, HEADERS);
        assert_eq!(header.stream_id, 7);
        assert!(header.reserved);
        assert!(header.has(FLAG_END_STREAM) && header.has(FLAG_END_HEADERS));
        assert!(header.has(FLAG_PRIORITY) && !header.has(FLAG_PADDED));
        assert!(!header.is_plausible(), "reserved bit set");
        assert_eq!(FrameHeader::peek(&bytes[..8]), None);
    }

    #[test]
    fn stream_id_and_size_rules() {
        let ok = |ty, flags, id, len: usize| {
            FrameHeader::peek(&frame(ty, flags, id, &vec![0; len]))
                .unwrap()
                .is_plausible()
        };
        assert!(ok(SETTINGS, 0, 0, 12));
        assert!(!ok(SETTINGS, 0, 0, 7));
        assert!(!ok(SETTINGS, 0, 1, 6));
        assert!(!ok(SETTINGS, FLAG_ACK, 0, 6));
        assert!(ok(SETTINGS, FLAG_ACK, 0, 0));
        assert!(ok(PING, 0, 0, 8) && !ok(PING, 0, 0, 7) && !ok(PING, 0, 3, 8));
        assert!(ok(GOAWAY, 0, 0, 8) && !ok(GOAWAY, 0, 1, 8) && !ok(GOAWAY, 0, 0, 7));
        assert!(ok(RST_STREAM, 0, 1, 4) && !ok(RST_STREAM, 0, 0, 4) && !ok(RST_STREAM, 0, 1, 5));
        assert!(ok(WINDOW_UPDATE, 0, 0, 4) && ok(WINDOW_UPDATE, 0, 5, 4));
        assert!(!ok(WINDOW_UPDATE, 0, 5, 3));
        assert!(ok(PRIORITY, 0, 1, 5) && !ok(PRIORITY, 0, 0, 5) && !ok(PRIORITY, 0, 1, 4));
        assert!(ok(DATA, FLAG_END_STREAM, 1, 0) && !ok(DATA, 0, 0, 3));
        assert!(!ok(DATA, FLAG_PADDED, 1, 0));
        assert!(ok(HEADERS, FLAG_PRIORITY, 1, 5) && !ok(HEADERS, FLAG_PRIORITY, 1, 4));
        assert!(!ok(HEADERS, 0, 0, 3));
        assert!(ok(PUSH_PROMISE, FLAG_END_HEADERS, 1, 4) && !ok(PUSH_PROMISE, 0, 1, 3));
        assert!(ok(CONTINUATION, FLAG_END_HEADERS, 1, 3) && !ok(CONTINUATION, 0, 0, 3));
        assert!(!ok(0x0a, 0, 0, 0), "unknown type");
        assert!(!ok(DATA, 0x40, 1, 0), "undefined flag");
    }

    #[test]
    fn runs_need_two_frames_or_an_exact_cover() {
        let settings = frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]);
        let ack = frame(SETTINGS, FLAG_ACK, 0, &[]);
        assert!(plausible_run(&settings, settings.len()));
        assert!(!plausible_run(&settings[..10], settings.len() + 1));
        let two = [settings.clone(), ack.clone()].concat();
        assert!(plausible_run(&two, two.len()));
        // The second header is only partly there and the first does not cover everything.
        assert!(!plausible_run(&two[..settings.len() + 4], two.len()));
        // The first frame's payload extends past the captured bytes but ends the record.
        let data = frame(DATA, 0, 1, &[7; 100]);
        assert!(plausible_run(&data[..9], data.len()));
        assert!(!plausible_run(&data[..9], data.len() + 1));
        // A plausible frame followed by garbage.
        let garbage = [settings.clone(), vec![0xff; 9]].concat();
        assert!(!plausible_run(&garbage, garbage.len()));
        assert!(!plausible_run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27));
        assert!(!plausible_run(&[], 0));
    }

    #[test]
    fn a_resync_needs_frames_that_add_up_to_the_record() {
        let settings = frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]);
        let ack = frame(SETTINGS, FLAG_ACK, 0, &[]);
        let two = [settings.clone(), ack.clone()].concat();
        assert!(exact_run(&two, two.len()));
        // Two plausible headers followed by bytes no frame accounts for: a plausible run, not
        // an exact one.
        let trailing = [two.clone(), vec![0; 4]].concat();
        assert!(plausible_run(&trailing, trailing.len()));
        assert!(!exact_run(&trailing, trailing.len()));
        // The last frame's payload may run into the uncaptured tail, to its exact end.
        let data = frame(DATA, 0, 1, &[7; 100]);
        let run = [settings.clone(), data.clone()].concat();
        let captured = &run[..settings.len() + 9];
        assert!(exact_run(captured, run.len()));
        assert!(!exact_run(captured, run.len() + 1));
        assert!(!exact_run(captured, run.len() - 1));
        // A frame header in the uncaptured tail cannot be checked.
        let three = [settings.clone(), ack.clone(), ack.clone()].concat();
        assert!(!exact_run(&three[..two.len() + 4], three.len()));
        // Any implausible header anywhere in the run rejects it.
        let bad = [two.clone(), vec![0, 0, 0, 0x0a, 0, 0, 0, 0, 0]].concat();
        assert!(!exact_run(&bad, bad.len()));
        assert!(!exact_run(&[], 0));
    }
}
