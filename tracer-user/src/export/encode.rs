//! OTLP trace encoding straight from our span records: `ExportTraceServiceRequest` protobuf bytes
//! written field by field into a reused buffer (no SDK `SpanData`, no intermediate message
//! structs), one `ResourceSpans` per process resource, one `ScopeSpans` (scope [`SCOPE_NAME`]).
//!
//! Nested messages are length-prefixed, so every length is computed before its message is written
//! (`*_len` functions mirror the `put_*` writers field for field). Proto3 rules as prost applies
//! them: empty strings/bytes and zero scalars are left out, `oneof` members and present
//! sub-messages are always written. The OTLP/JSON form ([`traces_json`]) decodes these bytes into
//! the `opentelemetry-proto` structs and serialises them with its serde support (hex ids, enum
//! integers, 64-bit integers as strings), so both forms come from one field mapping.

use std::borrow::Borrow;
use std::mem::MaybeUninit;
use std::sync::Arc;

use prost::encoding::{WireType, encoded_len_varint, key_len};

use crate::idhash::IdHashMap;
use crate::model::{AttrValue, ExportItem, ProcessResource, SpanKind, SpanRecord, SpanStatus};

/// Instrumentation scope name on every exported span.
pub const SCOPE_NAME: &str = "tracer";
/// Instrumentation scope version on every exported span.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The resource attribute added from [`ProcessResource::service_name`] when missing.
const SERVICE_NAME: &str = "service.name";

/// `Span.flags` bit: the flags say whether the parent is remote (OTLP `SpanFlags`).
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// `Span.flags` bit: the parent is remote.
const FLAG_IS_REMOTE: u32 = 0x200;
/// W3C `sampled` trace flag.
const FLAG_SAMPLED: u32 = 0x01;

/// `Span.SpanKind` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;

/// Field numbers (opentelemetry/proto/{collector/trace,trace,common,resource}/v1).
mod tag {
    pub const REQUEST_RESOURCE_SPANS: u32 = 1;
    pub const RESOURCE_SPANS_RESOURCE: u32 = 1;
    pub const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
    pub const RESOURCE_ATTRIBUTES: u32 = 1;
    pub const SCOPE_SPANS_SCOPE: u32 = 1;
    pub const SCOPE_SPANS_SPANS: u32 = 2;
    pub const SCOPE_NAME: u32 = 1;
    pub const SCOPE_VERSION: u32 = 2;
    pub const SPAN_TRACE_ID: u32 = 1;
    pub const SPAN_SPAN_ID: u32 = 2;
    pub const SPAN_TRACE_STATE: u32 = 3;
    pub const SPAN_PARENT_SPAN_ID: u32 = 4;
    pub const SPAN_NAME: u32 = 5;
    pub const SPAN_KIND: u32 = 6;
    pub const SPAN_START: u32 = 7;
    pub const SPAN_END: u32 = 8;
    pub const SPAN_ATTRIBUTES: u32 = 9;
    pub const SPAN_STATUS: u32 = 15;
    pub const SPAN_FLAGS: u32 = 16;
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
    pub const KV_KEY: u32 = 1;
    pub const KV_VALUE: u32 = 2;
    pub const ANY_STRING: u32 = 1;
    pub const ANY_BOOL: u32 = 2;
    pub const ANY_INT: u32 = 3;
}

/// The one-byte key of a field numbered below 16.
const fn key_byte(tag: u32, wire_type: WireType) -> u8 {
    (tag << 3 | wire_type as u32) as u8
}

/// Encoded size of a length-delimited field holding `len` bytes.
#[inline]
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Encoded size of a proto3 string/bytes field (left out when empty).
#[inline]
fn optional_bytes_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { delimited_len(tag, len) }
}

/// A cursor over the spare capacity reserved for one `ResourceSpans`, whose exact size is
/// computed before it is written: each write is a bounds check and a store (no capacity check
/// and length update per byte as `Vec::push` does, no zeroing as `resize` does). A write past the
/// end is dropped and leaves the position beyond the region; [`Writer::commit`] only extends the
/// vector when the writes filled the region exactly.
struct Writer<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    at: usize,
}

impl Writer<'_> {
    #[inline(always)]
    fn byte(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.at) {
            slot.write(byte);
        }
        self.at += 1;
    }

    /// A fixed-size run of bytes (one store for small `N`).
    #[inline(always)]
    fn array<const N: usize>(&mut self, bytes: [u8; N]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + N) {
            dst.write_copy_of_slice(&bytes);
        }
        self.at += N;
    }

    #[inline(always)]
    fn slice(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + bytes.len()) {
            dst.write_copy_of_slice(bytes);
        }
        self.at += bytes.len();
    }

    /// A base-128 varint: one byte inline (field keys, most lengths), longer ones out of line.
    #[inline(always)]
    fn varint(&mut self, value: u64) {
        if value < 0x80 {
            self.byte(value as u8);
        } else {
            self.long_varint(value);
        }
    }

    #[inline(never)]
    fn long_varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.byte((value as u8) | 0x80);
            value >>= 7;
        }
        self.byte(value as u8);
    }

    /// A field key (constant-folded to one byte for the field numbers below 16 used here).
    #[inline(always)]
    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.varint(u64::from(tag << 3 | wire_type as u32));
    }

    #[inline(always)]
    fn delimited_header(&mut self, tag: u32, len: usize) {
        self.key(tag, WireType::LengthDelimited);
        self.varint(len as u64);
    }

    #[inline(always)]
    fn bytes(&mut self, tag: u32, bytes: &[u8]) {
        self.delimited_header(tag, bytes.len());
        self.slice(bytes);
    }

    #[inline(always)]
    fn optional_bytes(&mut self, tag: u32, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.bytes(tag, bytes);
        }
    }

    #[inline(always)]
    fn varint_field(&mut self, tag: u32, value: u64) {
        self.key(tag, WireType::Varint);
        self.varint(value);
    }

    #[inline(always)]
    fn fixed64(&mut self, tag: u32, value: u64) {
        if value != 0 {
            self.key(tag, WireType::SixtyFourBit);
            self.array(value.to_le_bytes());
        }
    }
}

fn fixed64_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 8 }
}

/// `AnyValue` body size (the `oneof` member is always written).
#[inline]
fn any_value_len(value: &AttrValue) -> usize {
    match value {
        AttrValue::Str(s) => delimited_len(tag::ANY_STRING, s.len()),
        AttrValue::Bool(_) => key_len(tag::ANY_BOOL) + 1,
        AttrValue::Int(i) => key_len(tag::ANY_INT) + encoded_len_varint(*i as u64),
    }
}

#[inline]
fn put_any_value(value: &AttrValue, w: &mut Writer<'_>) {
    match value {
        AttrValue::Str(s) => w.bytes(tag::ANY_STRING, s.as_bytes()),
        AttrValue::Bool(b) => w.varint_field(tag::ANY_BOOL, u64::from(*b)),
        // int64 is encoded as its two's-complement 64-bit varint.
        AttrValue::Int(i) => w.varint_field(tag::ANY_INT, *i as u64),
    }
}

/// `KeyValue` body size.
#[inline]
fn key_value_len(key: &str, value: &AttrValue) -> usize {
    optional_bytes_len(tag::KV_KEY, key.len()) + delimited_len(tag::KV_VALUE, any_value_len(value))
}

/// Writes one `KeyValue` as field `field` (numbered below 16) of the enclosing message. Most attributes (a
/// non-empty key, a short string or any integer or bool) fit a `KeyValue` under 128 bytes, where
/// every length is one byte: their fixed bytes go out as two 4-byte runs around the key.
#[inline(always)]
fn put_key_value(field: u32, key: &str, value: &AttrValue, w: &mut Writer<'_>) {
    let value_len = any_value_len(value);
    let kv_len =
        optional_bytes_len(tag::KV_KEY, key.len()) + delimited_len(tag::KV_VALUE, value_len);
    if !key.is_empty() && kv_len < 0x80 {
        // kv_len < 128 bounds the key and value lengths too: each fits one varint byte.
        w.array([
            key_byte(field, WireType::LengthDelimited),
            kv_len as u8,
            key_byte(tag::KV_KEY, WireType::LengthDelimited),
            key.len() as u8,
        ]);
        w.slice(key.as_bytes());
        match value {
            AttrValue::Str(s) => {
                w.array([
                    key_byte(tag::KV_VALUE, WireType::LengthDelimited),
                    value_len as u8,
                    key_byte(tag::ANY_STRING, WireType::LengthDelimited),
                    s.len() as u8,
                ]);
                w.slice(s.as_bytes());
            }
            AttrValue::Bool(b) => w.array([
                key_byte(tag::KV_VALUE, WireType::LengthDelimited),
                value_len as u8,
                key_byte(tag::ANY_BOOL, WireType::Varint),
                u8::from(*b),
            ]),
            AttrValue::Int(i) => {
                w.array([
                    key_byte(tag::KV_VALUE, WireType::LengthDelimited),
                    value_len as u8,
                    key_byte(tag::ANY_INT, WireType::Varint),
                ]);
                w.varint(*i as u64);
            }
        }
        return;
    }
    w.delimited_header(field, kv_len);
    w.optional_bytes(tag::KV_KEY, key.as_bytes());
    w.delimited_header(tag::KV_VALUE, value_len);
    put_any_value(value, w);
}

/// `KeyValue` body size for a string value.
fn string_key_value_len(key: &str, value: &str) -> usize {
    optional_bytes_len(tag::KV_KEY, key.len())
        + delimited_len(tag::KV_VALUE, delimited_len(tag::ANY_STRING, value.len()))
}

/// Writes one `KeyValue` with a string value as field `field` of the enclosing message.
fn put_string_key_value(field: u32, key: &str, value: &str, w: &mut Writer<'_>) {
    w.delimited_header(field, string_key_value_len(key, value));
    w.optional_bytes(tag::KV_KEY, key.as_bytes());
    w.delimited_header(tag::KV_VALUE, delimited_len(tag::ANY_STRING, value.len()));
    w.bytes(tag::ANY_STRING, value.as_bytes());
}

fn flags(span: &SpanRecord) -> u32 {
    let mut flags = FLAG_HAS_IS_REMOTE;
    if span.sampled {
        flags |= FLAG_SAMPLED;
    }
    if parent_is_remote(span) {
        flags |= FLAG_IS_REMOTE;
    }
    flags
}

/// A SERVER span's parent comes from another process (headers or the peer's CLIENT span); a
/// CLIENT span's parent is the SERVER span of the same process.
fn parent_is_remote(span: &SpanRecord) -> bool {
    span.parent_span_id.is_some() && span.kind == SpanKind::Server
}

fn kind(span: &SpanRecord) -> u64 {
    match span.kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    }
}

/// The end time never precedes the start time.
fn end_ns(span: &SpanRecord) -> u64 {
    span.end_unix_ns.max(span.start_unix_ns)
}

fn status_len(status: &SpanStatus) -> usize {
    match status {
        SpanStatus::Unset => 0,
        SpanStatus::Error { description } => {
            optional_bytes_len(tag::STATUS_MESSAGE, description.len())
                + key_len(tag::STATUS_CODE)
                + encoded_len_varint(STATUS_ERROR)
        }
    }
}

fn trace_state(span: &SpanRecord) -> &str {
    span.trace_state.as_deref().unwrap_or("")
}

/// `Span` body size.
fn span_len(span: &SpanRecord) -> usize {
    let attributes: usize = span
        .attributes
        .iter()
        .map(|a| delimited_len(tag::SPAN_ATTRIBUTES, key_value_len(a.key, &a.value)))
        .sum();
    delimited_len(tag::SPAN_TRACE_ID, span.trace_id.len())
        + delimited_len(tag::SPAN_SPAN_ID, span.span_id.len())
        + optional_bytes_len(tag::SPAN_TRACE_STATE, trace_state(span).len())
        + span
            .parent_span_id
            .map_or(0, |p| delimited_len(tag::SPAN_PARENT_SPAN_ID, p.len()))
        + key_len(tag::SPAN_FLAGS)
        + 4
        + optional_bytes_len(tag::SPAN_NAME, span.name.len())
        + key_len(tag::SPAN_KIND)
        + encoded_len_varint(kind(span))
        + fixed64_len(tag::SPAN_START, span.start_unix_ns)
        + fixed64_len(tag::SPAN_END, end_ns(span))
        + attributes
        // The status message is always present (code UNSET when nothing is wrong).
        + delimited_len(tag::SPAN_STATUS, status_len(&span.status))
}

/// The key and length bytes of a fixed-size id field (ids are 16 or 8 bytes: one length byte).
fn id_header(tag: u32, len: usize) -> [u8; 2] {
    [
        (tag << 3 | WireType::LengthDelimited as u32) as u8,
        len as u8,
    ]
}

fn put_span(span: &SpanRecord, len: usize, w: &mut Writer<'_>) {
    w.delimited_header(tag::SCOPE_SPANS_SPANS, len);
    w.array(id_header(tag::SPAN_TRACE_ID, span.trace_id.len()));
    w.array(span.trace_id);
    w.array(id_header(tag::SPAN_SPAN_ID, span.span_id.len()));
    w.array(span.span_id);
    w.optional_bytes(tag::SPAN_TRACE_STATE, trace_state(span).as_bytes());
    if let Some(parent) = &span.parent_span_id {
        w.array(id_header(tag::SPAN_PARENT_SPAN_ID, parent.len()));
        w.array(*parent);
    }
    w.key(tag::SPAN_FLAGS, WireType::ThirtyTwoBit);
    w.array(flags(span).to_le_bytes());
    w.optional_bytes(tag::SPAN_NAME, span.name.as_bytes());
    w.varint_field(tag::SPAN_KIND, kind(span));
    w.fixed64(tag::SPAN_START, span.start_unix_ns);
    w.fixed64(tag::SPAN_END, end_ns(span));
    for attribute in &span.attributes {
        put_key_value(tag::SPAN_ATTRIBUTES, attribute.key, &attribute.value, w);
    }
    w.delimited_header(tag::SPAN_STATUS, status_len(&span.status));
    if let SpanStatus::Error { description } = &span.status {
        w.optional_bytes(tag::STATUS_MESSAGE, description.as_bytes());
        w.varint_field(tag::STATUS_CODE, STATUS_ERROR);
    }
}

/// Whether the resource lacks `service.name` among its attributes (then it is added from the
/// dedicated field).
fn needs_service_name(resource: &ProcessResource) -> bool {
    !resource.attributes.iter().any(|(key, _)| {
        let key: &str = key;
        key == SERVICE_NAME
    })
}

fn resource_len(resource: &ProcessResource) -> usize {
    let mut len: usize = resource
        .attributes
        .iter()
        .map(|(k, v)| delimited_len(tag::RESOURCE_ATTRIBUTES, key_value_len(k, v)))
        .sum();
    if needs_service_name(resource) {
        len += delimited_len(
            tag::RESOURCE_ATTRIBUTES,
            string_key_value_len(SERVICE_NAME, &resource.service_name),
        );
    }
    len
}

fn put_resource(resource: &ProcessResource, len: usize, w: &mut Writer<'_>) {
    w.delimited_header(tag::RESOURCE_SPANS_RESOURCE, len);
    for (key, value) in &resource.attributes {
        put_key_value(tag::RESOURCE_ATTRIBUTES, key, value, w);
    }
    if needs_service_name(resource) {
        put_string_key_value(
            tag::RESOURCE_ATTRIBUTES,
            SERVICE_NAME,
            &resource.service_name,
            w,
        );
    }
}

fn scope_len() -> usize {
    optional_bytes_len(tag::SCOPE_NAME, SCOPE_NAME.len())
        + optional_bytes_len(tag::SCOPE_VERSION, SCOPE_VERSION.len())
}

fn put_scope(w: &mut Writer<'_>) {
    w.delimited_header(tag::SCOPE_SPANS_SCOPE, scope_len());
    w.optional_bytes(tag::SCOPE_NAME, SCOPE_NAME.as_bytes());
    w.optional_bytes(tag::SCOPE_VERSION, SCOPE_VERSION.as_bytes());
}

/// Marks the end of a group's chain of items.
const END: u32 = u32::MAX;

/// One process resource's spans in a batch: a chain through [`TraceEncoder::next`].
#[derive(Debug)]
struct Group {
    first: u32,
    last: u32,
    /// Next group with the same pid (another resource after an exec, or an equal copy).
    same_pid: Option<usize>,
    /// Sum of the encoded `spans` fields.
    spans_len: usize,
}

/// Encodes batches of spans; keeps its scratch tables between batches so steady-state encoding
/// allocates nothing beyond the output buffer's growth.
#[derive(Debug, Default)]
pub struct TraceEncoder {
    groups: Vec<Group>,
    /// Per item: the next item of the same group, or [`END`].
    next: Vec<u32>,
    /// Per item: its encoded `Span` body size.
    span_lens: Vec<usize>,
    /// pid -> first group with that pid.
    by_pid: IdHashMap<u32, usize>,
}

impl TraceEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one `ExportTraceServiceRequest` holding `items` to `out`: one `ResourceSpans` per
    /// process resource (same pid and equal contents), in order of first appearance, spans in
    /// batch order. Batches beyond `u32::MAX - 1` items are the caller's mistake and are cut.
    pub fn encode<B: Borrow<ExportItem>>(&mut self, items: &[B], out: &mut Vec<u8>) {
        let items = &items[..items.len().min(END as usize - 1)];
        self.group(items);
        for group in &self.groups {
            let Some(first) = items.get(group.first as usize) else {
                continue;
            };
            let resource: &Arc<ProcessResource> = &first.borrow().resource;
            let resource_len = resource_len(resource);
            let scope_spans_len =
                delimited_len(tag::SCOPE_SPANS_SCOPE, scope_len()) + group.spans_len;
            let resource_spans_len = delimited_len(tag::RESOURCE_SPANS_RESOURCE, resource_len)
                + delimited_len(tag::RESOURCE_SPANS_SCOPE_SPANS, scope_spans_len);
            let size = delimited_len(tag::REQUEST_RESOURCE_SPANS, resource_spans_len);
            out.reserve(size);
            let mut w = Writer {
                buf: out.spare_capacity_mut().get_mut(..size).unwrap_or_default(),
                at: 0,
            };
            w.delimited_header(tag::REQUEST_RESOURCE_SPANS, resource_spans_len);
            put_resource(resource, resource_len, &mut w);
            w.delimited_header(tag::RESOURCE_SPANS_SCOPE_SPANS, scope_spans_len);
            put_scope(&mut w);
            let mut at = group.first;
            while let (Some(item), Some(&len)) =
                (items.get(at as usize), self.span_lens.get(at as usize))
            {
                put_span(&item.borrow().span, len, &mut w);
                at = self.next.get(at as usize).copied().unwrap_or(END);
            }
            let written = w.at;
            if written == size {
                // SAFETY: the writes are contiguous from the start of the `size`-byte region and
                // a write past its end is dropped but still advances the position, so a final
                // position of exactly `size` means every byte of the region was written.
                unsafe { out.set_len(out.len() + size) };
            } else {
                debug_assert_eq!(written, size, "a length function and its writer disagree");
                tracing::error!(
                    written,
                    size,
                    "OTLP encoding: a resource's spans were left out"
                );
            }
        }
    }

    /// Fills the group tables for `items`.
    fn group<B: Borrow<ExportItem>>(&mut self, items: &[B]) {
        self.groups.clear();
        self.by_pid.clear();
        self.next.clear();
        self.next.resize(items.len(), END);
        self.span_lens.clear();
        for (index, item) in items.iter().enumerate() {
            let item = item.borrow();
            let index = index as u32;
            let len = span_len(&item.span);
            self.span_lens.push(len);
            let spans_len = delimited_len(tag::SCOPE_SPANS_SPANS, len);
            let mut candidate = self.by_pid.get(&item.resource.pid).copied();
            let mut last_same_pid = None;
            let found = loop {
                let Some(g) = candidate else { break None };
                let Some(group) = self.groups.get(g) else {
                    break None;
                };
                let same = items.get(group.first as usize).is_some_and(|first| {
                    let first = first.borrow();
                    Arc::ptr_eq(&first.resource, &item.resource) || first.resource == item.resource
                });
                if same {
                    break Some(g);
                }
                last_same_pid = Some(g);
                candidate = group.same_pid;
            };
            match found {
                Some(g) => {
                    if let Some(group) = self.groups.get_mut(g) {
                        if let Some(link) = self.next.get_mut(group.last as usize) {
                            *link = index;
                        }
                        group.last = index;
                        group.spans_len += spans_len;
                    }
                }
                None => {
                    let g = self.groups.len();
                    self.groups.push(Group {
                        first: index,
                        last: index,
                        same_pid: None,
                        spans_len,
                    });
                    match last_same_pid.and_then(|p| self.groups.get_mut(p)) {
                        Some(previous) => previous.same_pid = Some(g),
                        None => {
                            self.by_pid.insert(item.resource.pid, g);
                        }
                    }
                }
            }
        }
    }

    /// Number of `ResourceSpans` the last [`encode`](Self::encode) wrote.
    pub fn last_resource_count(&self) -> usize {
        self.groups.len()
    }
}

/// Encodes `items` as one protobuf `ExportTraceServiceRequest` (see [`TraceEncoder::encode`]).
pub fn encode_traces(items: &[ExportItem], out: &mut Vec<u8>) {
    TraceEncoder::new().encode(items, out);
}

/// Why the OTLP/JSON form could not be produced (never expected: the bytes are our own).
#[derive(Debug, thiserror::Error)]
pub enum JsonEncodeError {
    #[error("re-reading the encoded request: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("serialising the request: {0}")]
    Json(#[from] serde_json::Error),
}

/// The OTLP/JSON form of a protobuf `ExportTraceServiceRequest` made by [`TraceEncoder`].
pub fn traces_json(protobuf: &[u8]) -> Result<Vec<u8>, JsonEncodeError> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let request = ExportTraceServiceRequest::decode(protobuf)?;
    Ok(serde_json::to_vec(&request)?)
}
