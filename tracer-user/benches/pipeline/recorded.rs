//! Recorded kernel event streams built in memory: keep-alive GET exchanges on many connections,
//! each record serialized byte for byte as the eBPF programs write it to the ring buffer.

use tracer_common::{
    ConnCloseEvent, ConnOpenEvent, DataEventHeader, EventHeader, direction, kind, role, syscall,
};

/// Process ids of the recorded server (one event-loop worker) and client (one load thread).
pub const SERVER_PID: u32 = 4242;
pub const CLIENT_PID: u32 = 5151;
/// Port the recorded server listens on.
pub const SERVER_PORT: u16 = 8080;
/// First ephemeral port of the recorded client's connections.
const FIRST_CLIENT_PORT: u16 = 40_000;
/// Nanoseconds between a request being written and the server reading it, and so on.
const STEP_NS: u64 = 10_000;
/// Payload bytes copied per syscall (the agent's default capture size).
const CAPTURE_BYTES: usize = tracer_common::DEFAULT_CAPTURE as usize;

/// A keep-alive GET as a load generator sends it.
const REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
User-Agent: bench/1.0\r\nAccept: */*\r\n\r\n";

/// What to record.
#[derive(Clone, Copy, Debug)]
pub struct StreamShape {
    /// Connections open at once (their exchanges interleave).
    pub connections: u32,
    /// Keep-alive requests on each connection.
    pub requests_per_connection: u32,
    /// Also record the client's side of every connection (both ends traced on one host).
    pub client_side: bool,
}

impl StreamShape {
    /// Spans the stream must produce: one per exchange and traced side.
    pub fn expected_spans(&self) -> u64 {
        let sides = if self.client_side { 2 } else { 1 };
        u64::from(self.connections) * u64::from(self.requests_per_connection) * sides
    }
}

/// Ring-buffer records in arrival order.
pub struct RecordedStream {
    pub shape: StreamShape,
    pub records: Vec<Vec<u8>>,
}

/// An nginx-like response to [`REQUEST`]: head and a 612-byte static body in one write.
fn response() -> Vec<u8> {
    let body = vec![b'x'; 612];
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 21 Nov 2025 17:00:00 GMT\r\n\
         Content-Type: text/html\r\nContent-Length: {}\r\n\
         Last-Modified: Fri, 21 Nov 2025 16:00:00 GMT\r\nConnection: keep-alive\r\n\
         ETag: \"691f0d40-264\"\r\nAccept-Ranges: bytes\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The bytes of a plain-data ABI record.
fn bytes_of<T: Copy>(record: &T) -> Vec<u8> {
    // SAFETY: `T` is one of the `#[repr(C)]` ABI structs of `tracer_common`, all plain data with
    // explicit padding, so every byte of it is initialised.
    unsafe {
        std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()).to_vec()
    }
}

/// The server's and the client's addresses: two pods of one host (not loopback: loopback
/// tuples pair only within a known network namespace, and the recorded pids have no /proc).
const SERVER_IP: [u8; 4] = [10, 0, 0, 1];
const CLIENT_IP: [u8; 4] = [10, 0, 0, 2];

fn ipv4(ip: [u8; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip);
    addr
}

/// One side of one recorded connection.
#[derive(Clone, Copy)]
struct Side {
    pid: u32,
    fd: i32,
    conn_id: u64,
    role: u8,
    local_port: u16,
    peer_port: u16,
}

impl Side {
    fn header(&self, record_kind: u8, ts_ns: u64) -> EventHeader {
        EventHeader {
            kind: record_kind,
            _pad: [0; 3],
            tgid: self.pid,
            tid: self.pid,
            fd: self.fd,
            conn_id: self.conn_id,
            ts_ns,
        }
    }

    fn open(&self, ts_ns: u64) -> Vec<u8> {
        bytes_of(&ConnOpenEvent {
            header: self.header(kind::CONN_OPEN, ts_ns),
            role: self.role,
            _pad: 0,
            family: 2,
            local_port: self.local_port,
            peer_port: self.peer_port,
            local_addr: ipv4(if self.role == role::SERVER {
                SERVER_IP
            } else {
                CLIENT_IP
            }),
            peer_addr: ipv4(if self.role == role::SERVER {
                CLIENT_IP
            } else {
                SERVER_IP
            }),
            comm: *b"recorded\0\0\0\0\0\0\0\0",
            // Unknown: the namespace comes from /proc, as for a kernel whose BTF lacks it.
            netns: 0,
            _pad2: 0,
        })
    }

    fn data(&self, dir: u8, bytes: &[u8], ts_ns: u64) -> Vec<u8> {
        let captured = bytes.len().min(CAPTURE_BYTES);
        let meta = DataEventHeader {
            header: self.header(kind::DATA, ts_ns),
            direction: dir,
            syscall: if dir == direction::INGRESS {
                syscall::RECVFROM
            } else {
                syscall::WRITEV
            },
            role: self.role,
            flags: 0,
            true_len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            captured_len: u32::try_from(captured).unwrap_or(u32::MAX),
            syscall_ns: 2_000,
        };
        let mut record = bytes_of(&meta);
        record.extend_from_slice(&bytes[..captured]);
        record
    }

    fn close(&self, ts_ns: u64) -> Vec<u8> {
        bytes_of(&ConnCloseEvent {
            header: self.header(kind::CONN_CLOSE, ts_ns),
        })
    }
}

/// Builds the stream: every connection opens, then request rounds interleave across the
/// connections (each connection has one request in flight at a time, as under a closed-loop load
/// generator), then every connection closes.
pub fn record(shape: StreamShape) -> RecordedStream {
    let response = response();
    let mut ts = 1_000_000_000u64;
    let mut tick = || {
        ts += STEP_NS;
        ts
    };
    let pairs: Vec<(Side, Side)> = (0..shape.connections)
        .map(|i| {
            let client_port = FIRST_CLIENT_PORT.wrapping_add(i as u16);
            let fd = 10 + i as i32;
            let server = Side {
                pid: SERVER_PID,
                fd,
                conn_id: 2_000_000 + u64::from(i),
                role: role::SERVER,
                local_port: SERVER_PORT,
                peer_port: client_port,
            };
            let client = Side {
                pid: CLIENT_PID,
                fd,
                conn_id: 1_000_000 + u64::from(i),
                role: role::CLIENT,
                local_port: client_port,
                peer_port: SERVER_PORT,
            };
            (server, client)
        })
        .collect();
    let mut records = Vec::new();
    for (server, client) in &pairs {
        if shape.client_side {
            records.push(client.open(tick()));
        }
        records.push(server.open(tick()));
    }
    for _ in 0..shape.requests_per_connection {
        for (server, client) in &pairs {
            if shape.client_side {
                records.push(client.data(direction::EGRESS, REQUEST, tick()));
            }
            records.push(server.data(direction::INGRESS, REQUEST, tick()));
            records.push(server.data(direction::EGRESS, &response, tick()));
            if shape.client_side {
                records.push(client.data(direction::INGRESS, &response, tick()));
            }
        }
    }
    for (server, client) in &pairs {
        if shape.client_side {
            records.push(client.close(tick()));
        }
        records.push(server.close(tick()));
    }
    RecordedStream { shape, records }
}
