//! Plain data passed between pipeline stages: connection metadata, HTTP exchanges, finished spans
//! and per-process resources. No behaviour lives here beyond small helpers.

use std::net::SocketAddr;
use std::sync::Arc;

/// Which side of a connection the traced process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The process accepted the connection: its exchanges become SERVER spans.
    Server,
    /// The process connected: its exchanges become CLIENT spans.
    Client,
}

/// Data direction from the traced process's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the process read.
    Ingress,
    /// Bytes the process wrote.
    Egress,
}

/// What the agent knows about one traced connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    /// Unique per connection (survives fd reuse).
    pub conn_id: u64,
    pub pid: u32,
    pub fd: i32,
    /// `None` until known (sniffed connections learn it from the first message).
    pub role: Option<Role>,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

/// HTTP protocol version of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http10,
    Http11,
}

impl HttpVersion {
    /// The `network.protocol.version` value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "1.0",
            HttpVersion::Http11 => "1.1",
        }
    }
}

/// One header as captured. Values are kept as bytes (they may not be UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A request head and what is known of its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// The request target as sent (origin-form path?query, absolute-form, or `*`).
    pub target: String,
    pub version: HttpVersion,
    /// Headers in arrival order, bounded in count and size by the framer.
    pub headers: Vec<Header>,
    /// Body bytes seen (true length, including bytes not captured).
    pub body_len: u64,
}

/// A response head and what is known of its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub version: HttpVersion,
    pub status: u16,
    pub headers: Vec<Header>,
    pub body_len: u64,
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// The full response was seen.
    Complete,
    /// The connection closed before a (complete) response was seen.
    ConnectionClosed,
    /// The connection sat idle past the expiry deadline with the response missing or incomplete.
    Expired,
    /// The stream lost sync (capture gap inside a message head, unparseable bytes) before the
    /// response completed.
    StreamDesync,
}

/// A request paired with its final response: the unit that becomes one span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub request: HttpRequest,
    /// The final (non-1xx) response, if one was seen.
    pub response: Option<HttpResponse>,
    pub outcome: ExchangeOutcome,
    /// Kernel monotonic ns of the record carrying the first request byte.
    pub start_ns: u64,
    /// Kernel monotonic ns of the record carrying the last request byte.
    pub request_end_ns: u64,
    /// Kernel monotonic ns of the record carrying the last response byte (or the close / expiry
    /// time when the response never completed).
    pub end_ns: u64,
    /// Thread that read (server) or wrote (client) the first request bytes.
    pub request_tid: u32,
    /// Thread that wrote (server) or read (client) the first response bytes, when seen.
    pub response_tid: Option<u32>,
    /// Position of this request on its connection (0 for the first request).
    pub sequence: u64,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A key/value attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub key: &'static str,
    pub value: AttrValue,
}

impl Attribute {
    pub fn str(key: &'static str, value: impl Into<String>) -> Self {
        Attribute {
            key,
            value: AttrValue::Str(value.into()),
        }
    }
    pub fn int(key: &'static str, value: i64) -> Self {
        Attribute {
            key,
            value: AttrValue::Int(value),
        }
    }
}

/// SERVER or CLIENT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Server,
    Client,
}

/// Span status per the HTTP semantic conventions (Ok is never set by instrumentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error { description: String },
}

/// A finished span, ready for export.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C tracestate carried from the incoming request, when valid.
    pub trace_state: Option<String>,
    pub sampled: bool,
    pub name: String,
    pub kind: SpanKind,
    /// Wall-clock Unix-epoch nanoseconds.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<Attribute>,
    pub status: SpanStatus,
    /// The traced process; its resource travels beside the span.
    pub pid: u32,
}

/// The OTel resource of one traced process (service.name, process.*, host.name, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessResource {
    pub pid: u32,
    pub service_name: String,
    /// All resource attributes, including `service.name`.
    pub attributes: Vec<(String, AttrValue)>,
}

/// A span together with the resource of the process that produced it.
#[derive(Clone, Debug)]
pub struct ExportItem {
    pub span: SpanRecord,
    pub resource: Arc<ProcessResource>,
}

/// Lowercase hex of a byte slice (ids in logs and terminal output).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}
