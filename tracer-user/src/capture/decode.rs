//! Kernel records -> typed events. Pure and total: any byte slice either decodes or yields a
//! [`DecodeError`]; nothing here trusts a length it has not checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{
    CONN_CLOSE_LEN, CONN_OPEN_LEN, DATA_HEADER_LEN, EVENT_HEADER_LEN, MAX_CAPTURE, direction, kind,
    role,
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
        payload: &'a [u8],
    },
    ConnClose {
        header: RecordHeader,
    },
}

impl KernelEvent<'_> {
    pub fn header(&self) -> &RecordHeader {
        match self {
            KernelEvent::ConnOpen { header, .. }
            | KernelEvent::Data { header, .. }
            | KernelEvent::ConnClose { header } => header,
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
    let ip = match family {
        2 => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        10 => IpAddr::V6(Ipv6Addr::from(addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn header_at(b: &[u8]) -> RecordHeader {
    // Offsets follow `tracer_common::EventHeader` (checked by the layout asserts there).
    RecordHeader {
        tgid: u32_at(b, 4),
        tid: u32_at(b, 8),
        fd: u32_at(b, 12) as i32,
        conn_id: u64_at(b, 16),
        ts_ns: u64_at(b, 24),
    }
}

/// Logs the shape of a data record at TRACE level (target `tracer::records`): its connection,
/// direction, lengths, and its first 9 bytes read as an HTTP/2 frame header (length, type,
/// flags; numbers only, no payload). For tests and for debugging the kernel's capture.
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
            "data record"
        );
    }
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let Some(&kind_byte) = record.first() else {
        return Err(DecodeError::Short {
            len: 0,
            need: EVENT_HEADER_LEN,
        });
    };
    let need = match kind_byte {
        kind::CONN_OPEN => CONN_OPEN_LEN,
        kind::DATA => DATA_HEADER_LEN,
        kind::CONN_CLOSE => CONN_CLOSE_LEN,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if record.len() < need {
        return Err(DecodeError::Short {
            len: record.len(),
            need,
        });
    }
    let header = header_at(record);
    match kind_byte {
        kind::CONN_OPEN => {
            let b = EVENT_HEADER_LEN;
            let role = match record[b] {
                role::SERVER => Some(Role::Server),
                role::CLIENT => Some(Role::Client),
                _ => None,
            };
            let family = u16_at(record, b + 2);
            let local_port = u16_at(record, b + 4);
            let peer_port = u16_at(record, b + 6);
            let local = socket_addr(family, addr16_at(record, b + 8), local_port);
            let peer = socket_addr(family, addr16_at(record, b + 24), peer_port);
            Ok(KernelEvent::ConnOpen {
                header,
                role,
                local,
                peer,
            })
        }
        kind::DATA => {
            let b = EVENT_HEADER_LEN;
            let direction = match record[b] {
                direction::INGRESS => Direction::Ingress,
                direction::EGRESS => Direction::Egress,
                other => return Err(DecodeError::UnknownDirection(other)),
            };
            let role = match record[b + 2] {
                role::SERVER => Some(Role::Server),
                role::CLIENT => Some(Role::Client),
                _ => None,
            };
            let true_len = u32_at(record, b + 4);
            let captured = u32_at(record, b + 8) as usize;
            let syscall_ns = u32_at(record, b + 12);
            let loss_before = record[b + 3] & tracer_common::DATA_FLAG_LOSS_BEFORE != 0;
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
                payload,
            })
        }
        _ => Ok(KernelEvent::ConnClose { header }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{ConnOpenEvent, DataEventHeader, EventHeader};

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
        };
        let b = bytes_of(&ev);
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
            }
        );
    }

    #[test]
    fn decodes_sniffed_open_without_addresses() {
        let ev = ConnOpenEvent {
            header: hdr(kind::CONN_OPEN),
            ..Default::default()
        };
        match decode(&bytes_of(&ev)).unwrap() {
            KernelEvent::ConnOpen {
                role, local, peer, ..
            } => {
                assert_eq!((role, local, peer), (None, None, None));
            }
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
