//! Kernel records -> typed events. Pure and total: any byte slice either decodes or yields a
//! [`DecodeError`]; nothing here trusts a length it has not checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use std::mem::offset_of;

use tracer_common::{
    AddressFamily, CONN_CLOSE_LEN, CONN_OPEN_LEN, ConnOpenEvent, ConnRole, DATA_HEADER_LEN,
    DataDirection, DataEventHeader, EVENT_HEADER_LEN, EventHeader, MAX_CAPTURE, RecordKind,
};

use crate::model::{Direction, Role};

/// Fields every record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub conn_id: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}

/// A decoded kernel record; `Data` borrows its payload from the ring buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent<'a> {
    ConnOpen {
        header: RecordHeader,
        /// `None` for connections adopted by sniffing.
        role: Option<Role>,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        /// Inode of the connection's network namespace as the kernel named it; `None` when it
        /// could not (userspace reads `/proc` instead).
        netns: Option<u64>,
    },
    Data {
        header: RecordHeader,
        direction: Direction,
        /// The role as the kernel knows it (`None` for sniffed connections).
        role: Option<Role>,
        /// Bytes the syscall transferred for this segment (`payload` is a prefix of them).
        true_len: u32,
        /// Syscall duration (enter to exit), saturating.
        syscall_ns: u32,
        /// Records of this connection were lost before this one (kernel ring buffer full).
        loss_before: bool,
        /// The payload is plaintext a TLS library's uprobe captured (`DATA_FLAG_TLS`), not the
        /// socket's bytes.
        tls: bool,
        payload: &'a [u8],
    },
    ConnClose {
        header: RecordHeader,
    },
    /// The identity the kernel gave a request (`--context-propagation`): see
    /// `tracer_common::IdentityEvent`.
    Identity {
        header: RecordHeader,
        direction: Direction,
        /// `tracer_common::propagation::IDENTITY_*` bits.
        flags: u8,
        /// Stream offset of the request's first byte in `direction`.
        offset: u64,
        trace_id: [u8; 16],
        span_id: [u8; 8],
        parent_span_id: Option<[u8; 8]>,
    },
}

impl KernelEvent<'_> {
    pub fn header(&self) -> &RecordHeader {
        match self {
            KernelEvent::ConnOpen { header, .. }
            | KernelEvent::Data { header, .. }
            | KernelEvent::ConnClose { header }
            | KernelEvent::Identity { header, .. } => header,
        }
    }

    /// When the event causally happened: bytes written exist from the write's START (a reader on
    /// another CPU may see them before the writer's exit is recorded); everything else at the
    /// recorded time. Ordering by this puts a client's request before the server's read of it.
    pub fn causal_ts(&self) -> u64 {
        match self {
            KernelEvent::Data {
                header,
                direction: Direction::Egress,
                syscall_ns,
                ..
            } => header.ts_ns.saturating_sub(u64::from(*syscall_ns)),
            other => other.header().ts_ns,
        }
    }
}

/// What the reorder window keeps of a decoded record next to its bytes, so that a data record
/// (the bulk of them) is decoded once: its fields without the payload, joined back with the
/// bytes by [`DecodedRecord::event`]. Opens, closes and kernel identities (a few per connection
/// or request) are decoded again from their bytes, which keeps this small (it is moved with every
/// held record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedRecord {
    Data {
        header: RecordHeader,
        direction: Direction,
        role: Option<Role>,
        true_len: u32,
        syscall_ns: u32,
        loss_before: bool,
        tls: bool,
        /// Captured payload bytes.
        payload_len: u32,
    },
    /// Decoded again on release.
    Other,
}

impl DecodedRecord {
    pub fn of(event: &KernelEvent<'_>) -> Self {
        match *event {
            KernelEvent::Data {
                header,
                direction,
                role,
                true_len,
                syscall_ns,
                loss_before,
                tls,
                payload,
            } => DecodedRecord::Data {
                header,
                direction,
                role,
                true_len,
                syscall_ns,
                loss_before,
                tls,
                payload_len: payload.len() as u32,
            },
            KernelEvent::ConnOpen { .. }
            | KernelEvent::ConnClose { .. }
            | KernelEvent::Identity { .. } => DecodedRecord::Other,
        }
    }

    /// The event again, its payload borrowed from `record`, the bytes this was decoded from (a
    /// shorter slice yields a shorter payload, never a panic). `None` only if `record` is not
    /// the record this was made of and does not decode.
    pub fn event<'a>(&self, record: &'a [u8]) -> Option<KernelEvent<'a>> {
        match *self {
            DecodedRecord::Data {
                header,
                direction,
                role,
                true_len,
                syscall_ns,
                loss_before,
                tls,
                payload_len,
            } => {
                let end = DATA_HEADER_LEN.saturating_add(payload_len as usize);
                let payload = record
                    .get(DATA_HEADER_LEN..end.min(record.len()))
                    .unwrap_or(&[]);
                Some(KernelEvent::Data {
                    header,
                    direction,
                    role,
                    true_len,
                    syscall_ns,
                    loss_before,
                    tls,
                    payload,
                })
            }
            DecodedRecord::Other => decode(record).ok(),
        }
    }
}

/// Why a record was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte layout of its kind")]
    Short { len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("data record claims {captured} captured bytes but carries {carried}")]
    BadCapturedLen { captured: usize, carried: usize },
    #[error("unknown direction {0}")]
    UnknownDirection(u8),
    #[error("unknown connection role {0}")]
    UnknownRole(u8),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        v.copy_from_slice(s);
    }
    u16::from_ne_bytes(v)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_ne_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_ne_bytes(v)
}

fn addr16_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut v = [0u8; 16];
    if let Some(s) = b.get(at..at + 16) {
        v.copy_from_slice(s);
    }
    v
}

fn socket_addr(family: u16, addr: [u8; 16], port: u16) -> Option<SocketAddr> {
    if port == 0 && addr == [0; 16] {
        return None;
    }
    let family = u8::try_from(family)
        .ok()
        .and_then(|f| AddressFamily::try_from(f).ok())?;
    let ip = match family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::from(addr)),
        AddressFamily::Unspecified | AddressFamily::Unix => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The role a record carries: `None` when the kernel does not know it (sniffed connections).
/// `Ignored` never leaves the kernel; seeing it, or an unknown value, rejects the record.
fn role_at(b: &[u8], at: usize) -> Result<Option<Role>, DecodeError> {
    let raw = b.get(at).copied().unwrap_or_default();
    match ConnRole::try_from(raw) {
        Ok(ConnRole::Server) => Ok(Some(Role::Server)),
        Ok(ConnRole::Client) => Ok(Some(Role::Client)),
        Ok(ConnRole::Unknown) => Ok(None),
        Ok(ConnRole::Ignored) | Err(_) => Err(DecodeError::UnknownRole(raw)),
    }
}

/// Field offsets come from the `#[repr(C)]` ABI structs themselves (`offset_of!`), after the
/// caller checked the record is at least the struct's length.
fn header_at(b: &[u8]) -> RecordHeader {
    RecordHeader {
        tgid: u32_at(b, offset_of!(EventHeader, tgid)),
        tid: u32_at(b, offset_of!(EventHeader, tid)),
        fd: u32_at(b, offset_of!(EventHeader, fd)) as i32,
        conn_id: u64_at(b, offset_of!(EventHeader, conn_id)),
        ts_ns: u64_at(b, offset_of!(EventHeader, ts_ns)),
    }
}

/// Frame headers listed by [`trace_record`] at most: the log line stays bounded.
const TRACED_FRAMES: usize = 64;

/// The record's bytes read as consecutive HTTP/2 frames from its first byte, as `type:flags`
/// pairs joined by commas (`-` when there is none), at most [`TRACED_FRAMES`]; and whether the
/// last frame goes on past the record (`true_len`: its copied bytes and its gap), so that the
/// next record of the direction starts inside a frame. A header cut by the record's end is
/// listed when its type and flags are in it. A record the kernel walked holds every frame
/// header and every payload it kept, so this is the record's frames when the record before it
/// did not go on; otherwise it means nothing.
fn frame_list(payload: &[u8], true_len: u64) -> (String, bool) {
    let mut out = String::new();
    let mut at = 0usize;
    let mut goes_on = false;
    for _ in 0..TRACED_FRAMES {
        if at >= payload.len() {
            break;
        }
        let h = &payload[at..payload.len().min(at.saturating_add(9))];
        if h.len() >= 5 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{}:{}", h[3], h[4]));
        }
        if h.len() < 9 {
            goes_on = true;
            break;
        }
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        at = at.saturating_add(9).saturating_add(len);
        goes_on = at as u64 > true_len;
    }
    if out.is_empty() {
        out.push('-');
    }
    (out, goes_on)
}

/// Logs the shape of a data record at TRACE level (target `tracer::records`): its connection,
/// direction, lengths, its first 9 bytes read as an HTTP/2 frame header (length, type, flags),
/// and the types and flags of the frames that follow ([`frame_list`]); numbers only, no
/// payload. For tests and for debugging the kernel's capture.
pub fn trace_record(event: &KernelEvent<'_>) {
    if !tracing::enabled!(target: "tracer::records", tracing::Level::TRACE) {
        return;
    }
    if let KernelEvent::Data {
        header,
        direction,
        role,
        true_len,
        payload,
        ..
    } = event
    {
        let (frame_len, frame_type, frame_flags) = match payload.get(..5) {
            Some(h) if payload.len() >= 9 => (
                i64::from(u32::from_be_bytes([0, h[0], h[1], h[2]])),
                i64::from(h[3]),
                i64::from(h[4]),
            ),
            _ => (-1, -1, -1),
        };
        let (frames, goes_on) = frame_list(payload, u64::from(*true_len));
        tracing::trace!(
            target: "tracer::records",
            conn = header.conn_id,
            tgid = header.tgid,
            fd = header.fd,
            direction = ?direction,
            role = ?role,
            true_len = *true_len,
            captured = payload.len(),
            frame_len,
            frame_type,
            frame_flags,
            frames = %frames,
            frames_go_on = goes_on,
            "data record"
        );
    }
}

/// The name (`comm`) of the thread that opened the connection of a connection-open record, if
/// `record` is one and names it: the process's name when its `/proc` is gone by the time the
/// agent reads it.
pub fn conn_open_comm(record: &[u8]) -> Option<String> {
    if record.first().copied() != Some(RecordKind::ConnOpen as u8) || record.len() < CONN_OPEN_LEN {
        return None;
    }
    let comm = record.get(offset_of!(ConnOpenEvent, comm)..CONN_OPEN_LEN)?;
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    let name = String::from_utf8_lossy(comm.get(..len)?).into_owned();
    (!name.is_empty()).then_some(name)
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let Some(&kind_byte) = record.first() else {
        return Err(DecodeError::Short {
            len: 0,
            need: EVENT_HEADER_LEN,
        });
    };
    let kind = RecordKind::try_from(kind_byte).map_err(DecodeError::UnknownKind)?;
    let need = match kind {
        RecordKind::ConnOpen => CONN_OPEN_LEN,
        RecordKind::Data => DATA_HEADER_LEN,
        RecordKind::ConnClose => CONN_CLOSE_LEN,
        RecordKind::Identity => tracer_common::IDENTITY_LEN,
    };
    if record.len() < need {
        return Err(DecodeError::Short {
            len: record.len(),
            need,
        });
    }
    let header = header_at(record);
    match kind {
        RecordKind::ConnOpen => {
            let role = role_at(record, offset_of!(ConnOpenEvent, role))?;
            let family = u16_at(record, offset_of!(ConnOpenEvent, family));
            let local_port = u16_at(record, offset_of!(ConnOpenEvent, local_port));
            let peer_port = u16_at(record, offset_of!(ConnOpenEvent, peer_port));
            let local = socket_addr(
                family,
                addr16_at(record, offset_of!(ConnOpenEvent, local_addr)),
                local_port,
            );
            let peer = socket_addr(
                family,
                addr16_at(record, offset_of!(ConnOpenEvent, peer_addr)),
                peer_port,
            );
            let netns = u32_at(record, offset_of!(ConnOpenEvent, netns));
            Ok(KernelEvent::ConnOpen {
                header,
                role,
                local,
                peer,
                netns: (netns != 0).then_some(u64::from(netns)),
            })
        }
        RecordKind::Data => {
            let raw_direction = record[offset_of!(DataEventHeader, direction)];
            let direction = match DataDirection::try_from(raw_direction) {
                Ok(DataDirection::Ingress) => Direction::Ingress,
                Ok(DataDirection::Egress) => Direction::Egress,
                Err(other) => return Err(DecodeError::UnknownDirection(other)),
            };
            let role = role_at(record, offset_of!(DataEventHeader, role))?;
            let true_len = u32_at(record, offset_of!(DataEventHeader, true_len));
            let captured = u32_at(record, offset_of!(DataEventHeader, captured_len)) as usize;
            let syscall_ns = u32_at(record, offset_of!(DataEventHeader, syscall_ns));
            let flags = record[offset_of!(DataEventHeader, flags)];
            let loss_before = flags & tracer_common::DATA_FLAG_LOSS_BEFORE != 0;
            let tls = flags & tracer_common::DATA_FLAG_TLS != 0;
            let carried = record.len() - DATA_HEADER_LEN;
            if captured > carried || captured > MAX_CAPTURE || captured as u64 > true_len as u64 {
                return Err(DecodeError::BadCapturedLen { captured, carried });
            }
            let payload = &record[DATA_HEADER_LEN..DATA_HEADER_LEN + captured];
            Ok(KernelEvent::Data {
                header,
                direction,
                role,
                true_len,
                syscall_ns,
                loss_before,
                tls,
                payload,
            })
        }
        RecordKind::ConnClose => Ok(KernelEvent::ConnClose { header }),
        RecordKind::Identity => {
            use tracer_common::IdentityEvent;
            let direction =
                match DataDirection::try_from(record[offset_of!(IdentityEvent, direction)]) {
                    Ok(DataDirection::Ingress) => Direction::Ingress,
                    Ok(DataDirection::Egress) => Direction::Egress,
                    Err(other) => return Err(DecodeError::UnknownDirection(other)),
                };
            let flags = record[offset_of!(IdentityEvent, flags)];
            let bytes = |at: usize, out: &mut [u8]| {
                let len = out.len();
                out.copy_from_slice(&record[at..at + len]);
            };
            let mut trace_id = [0u8; 16];
            bytes(offset_of!(IdentityEvent, trace_id), &mut trace_id);
            let mut span_id = [0u8; 8];
            bytes(offset_of!(IdentityEvent, span_id), &mut span_id);
            let mut parent = [0u8; 8];
            bytes(offset_of!(IdentityEvent, parent_span_id), &mut parent);
            let has_parent = flags & tracer_common::propagation::IDENTITY_HAS_PARENT != 0;
            Ok(KernelEvent::Identity {
                header,
                direction,
                flags,
                offset: u64_at(record, offset_of!(IdentityEvent, offset)),
                trace_id,
                span_id,
                parent_span_id: (has_parent && parent != [0; 8]).then_some(parent),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{direction, kind, role};

    #[test]
    fn frame_list_walks_whole_frame_headers_from_the_first_byte() {
        // HEADERS (3 bytes, END_HEADERS), DATA (2 bytes), trailers HEADERS (16 bytes, cut).
        let mut bytes = vec![0, 0, 3, 1, 4, 0, 0, 0, 1, 0xa, 0xb, 0xc];
        bytes.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 1, 7, 7]);
        bytes.extend_from_slice(&[0, 0, 16, 1, 5, 0, 0, 0, 1]);
        let n = bytes.len() as u64;
        // The trailers' payload is in the record's gap: nothing goes on; past it, it does.
        assert_eq!(frame_list(&bytes, n + 16), ("1:4,0:0,1:5".into(), false));
        assert_eq!(frame_list(&bytes, n), ("1:4,0:0,1:5".into(), true));
        // A cut header: listed when its type and flags are in the record, going on either way.
        assert_eq!(frame_list(&bytes[..5], 5), ("1:4".into(), true));
        assert_eq!(frame_list(&bytes[..4], 4), ("-".into(), true));
        assert_eq!(frame_list(&[], 0), ("-".into(), false));
        // A huge length does not overflow; the list is bounded.
        assert_eq!(
            frame_list(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 1], 10),
            ("0:0".into(), true)
        );
        let many = [0u8; 9 * 100];
        let (list, _) = frame_list(&many, 900);
        assert_eq!(list.split(',').count(), TRACED_FRAMES);
    }

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) plain-data ABI struct in these tests.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
    }

    fn hdr(kind_: u8) -> EventHeader {
        EventHeader {
            kind: kind_,
            _pad: [0; 3],
            tgid: 10,
            tid: 11,
            fd: 5,
            conn_id: 77,
            ts_ns: 99,
        }
    }

    #[test]
    fn decodes_conn_open_v4() {
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[10, 1, 2, 3]);
        let ev = ConnOpenEvent {
            header: hdr(kind::CONN_OPEN),
            role: role::SERVER,
            _pad: 0,
            family: 2,
            local_port: 8080,
            peer_port: 40000,
            local_addr: local,
            peer_addr: peer,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            netns: 4026531840,
            _pad2: 0,
        };
        let b = bytes_of(&ev);
        assert_eq!(conn_open_comm(&b).as_deref(), Some("curl"));
        let got = decode(&b).unwrap();
        assert_eq!(
            got,
            KernelEvent::ConnOpen {
                header: RecordHeader {
                    tgid: 10,
                    tid: 11,
                    fd: 5,
                    conn_id: 77,
                    ts_ns: 99
                },
                role: Some(Role::Server),
                local: Some("127.0.0.1:8080".parse().unwrap()),
                peer: Some("10.1.2.3:40000".parse().unwrap()),
                netns: Some(4026531840),
            }
        );
    }

    #[test]
    fn decodes_sniffed_open_without_addresses() {
        let ev = ConnOpenEvent {
            header: hdr(kind::CONN_OPEN),
            ..Default::default()
        };
        assert_eq!(
            conn_open_comm(&bytes_of(&ev)),
            None,
            "no name, none invented"
        );
        let full = ConnOpenEvent {
            comm: *b"a-sixteen-byte-n",
            ..ev
        };
        assert_eq!(
            conn_open_comm(&bytes_of(&full)).as_deref(),
            Some("a-sixteen-byte-n")
        );
        let short = bytes_of(&full);
        assert_eq!(conn_open_comm(&short[..short.len() - 1]), None);
        match decode(&bytes_of(&ev)).unwrap() {
            KernelEvent::ConnOpen {
                role,
                local,
                peer,
                netns,
                ..
            } => {
                assert_eq!((role, local, peer, netns), (None, None, None, None));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// What the reorder window keeps of a record joined back with the record's bytes is the
    /// event decoding them again gives, for every kind.
    #[test]
    fn a_decoded_record_rejoins_its_bytes() {
        let data = DataEventHeader {
            header: hdr(kind::DATA),
            direction: direction::INGRESS,
            syscall: 2,
            role: role::SERVER,
            flags: tracer_common::DATA_FLAG_TLS,
            true_len: 9,
            captured_len: 5,
            syscall_ns: 7,
        };
        let mut data = bytes_of(&data);
        data.extend_from_slice(b"HTTP/");
        let open = bytes_of(&ConnOpenEvent {
            header: hdr(kind::CONN_OPEN),
            role: role::CLIENT,
            family: 2,
            local_port: 1,
            peer_port: 2,
            ..Default::default()
        });
        let close = bytes_of(&hdr(kind::CONN_CLOSE));
        for record in [&data, &open, &close] {
            let event = decode(record).unwrap();
            let kept = DecodedRecord::of(&event);
            assert_eq!(kept.event(record), Some(event));
        }
        // A shorter slice than the one decoded gives a shorter payload, not a panic.
        let kept = DecodedRecord::of(&decode(&data).unwrap());
        match kept.event(&data[..data.len() - 2]) {
            Some(KernelEvent::Data { payload, .. }) => assert_eq!(payload, b"HTT"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_data_with_payload_prefix() {
        let meta = DataEventHeader {
            header: hdr(kind::DATA),
            direction: direction::EGRESS,
            syscall: 2,
            role: role::CLIENT,
            flags: tracer_common::DATA_FLAG_LOSS_BEFORE,
            true_len: 100,
            captured_len: 4,
            syscall_ns: 0,
        };
        let mut b = bytes_of(&meta);
        b.extend_from_slice(b"GET ");
        match decode(&b).unwrap() {
            KernelEvent::Data {
                direction,
                role,
                true_len,
                payload,
                header,
                loss_before,
                ..
            } => {
                assert!(loss_before);
                assert_eq!(direction, Direction::Egress);
                assert_eq!(role, Some(Role::Client));
                assert_eq!(true_len, 100);
                assert_eq!(payload, b"GET ");
                assert_eq!(header.conn_id, 77);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A uprobe record (plaintext at the TLS library boundary) decodes as data with `tls` set;
    /// a syscall record has it clear.
    #[test]
    fn decodes_the_tls_plaintext_flag() {
        for (flags, tls) in [
            (tracer_common::DATA_FLAG_TLS, true),
            (
                tracer_common::DATA_FLAG_TLS | tracer_common::DATA_FLAG_LOSS_BEFORE,
                true,
            ),
            (0, false),
        ] {
            let meta = DataEventHeader {
                header: hdr(kind::DATA),
                direction: direction::INGRESS,
                syscall: tracer_common::syscall::SSL_READ,
                role: role::SERVER,
                flags,
                true_len: 4,
                captured_len: 4,
                syscall_ns: 0,
            };
            let mut b = bytes_of(&meta);
            b.extend_from_slice(b"GET ");
            match decode(&b).unwrap() {
                KernelEvent::Data { tls: got, .. } => assert_eq!(got, tls, "flags {flags}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_lies_about_lengths() {
        let meta = DataEventHeader {
            header: hdr(kind::DATA),
            true_len: 2,
            captured_len: 4,
            ..Default::default()
        };
        let mut b = bytes_of(&meta);
        b.extend_from_slice(b"GET ");
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadCapturedLen { .. })
        ));
        let meta = DataEventHeader {
            header: hdr(kind::DATA),
            true_len: 9,
            captured_len: 9,
            ..Default::default()
        };
        let b = bytes_of(&meta);
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadCapturedLen { .. })
        ));
    }

    #[test]
    fn rejects_roles_that_never_leave_the_kernel() {
        for raw in [role::IGNORED, 7] {
            let meta = DataEventHeader {
                header: hdr(kind::DATA),
                role: raw,
                ..Default::default()
            };
            assert_eq!(decode(&bytes_of(&meta)), Err(DecodeError::UnknownRole(raw)));
            let open = ConnOpenEvent {
                header: hdr(kind::CONN_OPEN),
                role: raw,
                ..Default::default()
            };
            assert_eq!(decode(&bytes_of(&open)), Err(DecodeError::UnknownRole(raw)));
        }
    }

    #[test]
    fn wire_enums_round_trip_their_raw_values() {
        for raw in 0..=u8::MAX {
            if let Ok(kind) = RecordKind::try_from(raw) {
                assert_eq!(kind as u8, raw);
            }
            if let Ok(role) = ConnRole::try_from(raw) {
                assert_eq!(role as u8, raw);
            }
            if let Ok(direction) = DataDirection::try_from(raw) {
                assert_eq!(direction as u8, raw);
            }
            if let Ok(family) = AddressFamily::try_from(raw) {
                assert_eq!(family as u8, raw);
            }
        }
        assert_eq!(RecordKind::try_from(0), Err(0));
        assert_eq!(DataDirection::try_from(2), Err(2));
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert!(matches!(decode(&[]), Err(DecodeError::Short { .. })));
        assert!(matches!(
            decode(&[kind::CONN_OPEN, 0, 0]),
            Err(DecodeError::Short { .. })
        ));
        assert_eq!(decode(&[42; 64]), Err(DecodeError::UnknownKind(42)));
    }

    #[test]
    fn never_panics_on_any_prefix_or_mutation() {
        let meta = DataEventHeader {
            header: hdr(kind::DATA),
            true_len: 8,
            captured_len: 8,
            ..Default::default()
        };
        let mut b = bytes_of(&meta);
        b.extend_from_slice(b"HTTP/1.1");
        for cut in 0..=b.len() {
            let _ = decode(&b[..cut]);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut m = b.clone();
            let i = (state as usize) % m.len();
            m[i] = (state >> 32) as u8;
            m[0] = [kind::CONN_OPEN, kind::DATA, kind::CONN_CLOSE][(state >> 40) as usize % 3];
            let _ = decode(&m);
        }
    }
}

/// The kernel's HTTP/2 sniff (`tracer_common::h2`, which must stay `no_std` and verifier-sized)
/// and the wire layer's plausibility rules (`protocols::http2::frame`) state one fact twice:
/// they must judge every frame header alike.
#[cfg(test)]
mod h2_rules_agree {
    use crate::protocols::http2::frame::FrameHeader;

    #[test]
    fn kernel_and_wire_layer_judge_frame_headers_alike() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..200_000u32 {
            let r = next().to_le_bytes();
            // Small lengths, every type and flag combination, stream 0/1/reserved bit.
            let len = if i % 2 == 0 {
                u32::from(r[0] % 24)
            } else {
                u32::from(r[0]) << 8 | u32::from(r[1])
            };
            let stream: u32 = match r[2] % 3 {
                0 => 0,
                1 => 1 + u32::from(r[3]),
                _ => 0x8000_0001,
            };
            let mut h = [0u8; 9];
            h[..3].copy_from_slice(&len.to_be_bytes()[1..]);
            h[3] = r[4] % 12;
            h[4] = r[5];
            h[5..].copy_from_slice(&stream.to_be_bytes());
            assert_eq!(
                tracer_common::h2::plausible_frame(&h).is_some(),
                FrameHeader::parse(&h).is_plausible(),
                "{h:02x?}"
            );
        }
    }
}
