//! Plain data passed between pipeline stages: connection metadata, HTTP exchanges, finished spans
//! and per-process resources. No behaviour lives here beyond small helpers.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

/// A string of the span model: a `&'static str` for known values (methods, schemes, versions,
/// header names), shared for values interned across spans (addresses, hosts), owned otherwise.
/// Derefs to `&str`; equality, ordering and hashing are the string's.
#[derive(Clone)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }

    /// Heap bytes this value holds on its own (shared values count their length).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Text::Static(_) => 0,
            Text::Shared(s) => s.len(),
            Text::Owned(s) => s.capacity(),
        }
    }
}

/// What a text type that can lend its `&str` (`as_str`) offers on top: deref, display and
/// debug as the string, and equality with `str`, `&str` and `String`.
macro_rules! str_views {
    ($($ty:ty),+) => {$(
        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other.as_str()
            }
        }
    )+};
}

str_views!(Text, SharedStr);

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::Static("")
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Self {
        Text::Shared(s)
    }
}

impl From<std::borrow::Cow<'static, str>> for Text {
    fn from(s: std::borrow::Cow<'static, str>) -> Self {
        match s {
            std::borrow::Cow::Borrowed(s) => Text::Static(s),
            std::borrow::Cow::Owned(s) => Text::Owned(s),
        }
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        match t {
            Text::Owned(s) => s,
            other => other.as_str().to_owned(),
        }
    }
}

impl From<Text> for std::borrow::Cow<'static, str> {
    fn from(t: Text) -> Self {
        match t {
            Text::Static(s) => std::borrow::Cow::Borrowed(s),
            other => std::borrow::Cow::Owned(String::from(other)),
        }
    }
}

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
    /// Inode of the process's network namespace (`/proc/<pid>/ns/net`), `None` when unknown:
    /// loopback tuples pair client and server only within one namespace.
    pub netns: Option<u64>,
    /// The connection's bytes come from a TLS library's plaintext (uprobe records): its spans
    /// get the `https` scheme.
    pub tls: bool,
}

/// HTTP protocol version of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http10,
    Http11,
    /// HTTP/2 (one exchange per stream).
    Http2,
}

impl HttpVersion {
    /// The `network.protocol.version` value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "1.0",
            HttpVersion::Http11 => "1.1",
            HttpVersion::Http2 => "2",
        }
    }
}

/// One header as captured. Values are kept as bytes (they may not be UTF-8); the framer slices
/// all the values of one head from a single shared buffer, and common names are static.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: Text,
    pub value: bytes::Bytes,
}

/// UTF-8 text held in shared bytes: a zero-copy slice of a buffer the text was read from (an
/// HTTP/1 request target is a slice of its head's value arena) or a copy. Derefs to `&str`;
/// equality and ordering are the string's. A slice keeps its whole buffer alive: hold one only as
/// long as the message it came from.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedStr(bytes::Bytes);

impl SharedStr {
    /// `bytes` as text, if they are UTF-8.
    pub fn from_utf8(bytes: bytes::Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(SharedStr(bytes))
    }

    /// `bytes` as text, unchecked.
    ///
    /// # Safety
    /// `bytes` must be UTF-8 (e.g. a copy of a `str`).
    pub unsafe fn from_utf8_unchecked(bytes: bytes::Bytes) -> Self {
        SharedStr(bytes)
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks or is given UTF-8 (`from_utf8`, `&str`, `String`, the
        // caller of `from_utf8_unchecked`), and the bytes of a `Bytes` never change.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// Heap bytes this value holds on its own (a slice counts its length).
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(bytes::Bytes::from(s))
    }
}

/// The methods the HTTP semantic conventions know by name (case-sensitive).
pub const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `method` as [`Text`]: one of [`HTTP_METHODS`] without an allocation, else owned.
pub fn method_text(method: &str) -> Text {
    match HTTP_METHODS.iter().find(|known| **known == method) {
        Some(known) => Text::Static(known),
        None => Text::Owned(method.to_owned()),
    }
}

/// A request head and what is known of its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Known methods are static (see [`method_text`]).
    pub method: Text,
    /// The request target as sent (origin-form path?query, absolute-form, or `*`).
    pub target: SharedStr,
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
    /// HTTP/2: a header block of the response (head or trailers) had fields HPACK could not
    /// decode, so a header missing from `headers` may have been sent (never guessed).
    pub undecoded_fields: bool,
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
    /// HTTP/2: the stream was reset (RST_STREAM) before its response completed; the h2 error code
    /// and whether the client sent it.
    StreamReset { error_code: u32, by_client: bool },
    /// HTTP/2: the server's GOAWAY said the stream was never processed (id above last_stream_id).
    GoAway { error_code: u32 },
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
    Str(Text),
    Int(i64),
    Bool(bool),
}

/// The attributes of one span: the usual count inline (an HTTP span has 10 to 14), spilling to
/// the heap only past it, so building a span allocates no list.
pub type Attributes = smallvec::SmallVec<[Attribute; INLINE_ATTRIBUTES]>;

/// Attributes of one span kept without a heap allocation.
pub const INLINE_ATTRIBUTES: usize = 16;

/// A key/value attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub key: &'static str,
    pub value: AttrValue,
}

impl Attribute {
    pub fn str(key: &'static str, value: impl Into<Text>) -> Self {
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
    /// The method (known ones are static) or `HTTP`.
    pub name: Text,
    pub kind: SpanKind,
    /// Wall-clock Unix-epoch nanoseconds.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Attributes,
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
