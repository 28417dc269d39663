//! Span counting straight from the protobuf bytes of an `ExportTraceServiceRequest`
//! (`resource_spans[].scope_spans[].spans[]`: kind and the `server.port` attribute), without
//! decoding it into generated types: the bench counts millions of spans at next to no cost.

use std::collections::BTreeMap;

/// `Span.kind` values (opentelemetry.proto.trace.v1.Span.SpanKind).
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// The attribute naming the server's port on SERVER and CLIENT spans alike.
const SERVER_PORT_KEY: &[u8] = b"server.port";

/// Spans seen so far, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanCounts {
    pub server: u64,
    pub client: u64,
    pub other: u64,
}

/// Why a body could not be walked.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    UnsupportedWireType(u64),
}

/// One field of a protobuf message: its number and, for length-delimited fields, the bytes.
enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
    Fixed,
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at).ok_or(WireError::Truncated)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Truncated)
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, WireError> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < buf.len() {
        let key = read_varint(buf, &mut at)?;
        let number = (key >> 3) as u32;
        let field = match key & 7 {
            0 => Field::Varint(number, read_varint(buf, &mut at)?),
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                at = at
                    .checked_add(width)
                    .filter(|end| *end <= buf.len())
                    .ok_or(WireError::Truncated)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut at)?)
                    .map_err(|_| WireError::Truncated)?;
                let end = at
                    .checked_add(len)
                    .filter(|end| *end <= buf.len())
                    .ok_or(WireError::Truncated)?;
                let bytes = &buf[at..end];
                at = end;
                Field::Bytes(number, bytes)
            }
            other => return Err(WireError::UnsupportedWireType(other)),
        };
        out.push(field);
    }
    Ok(out)
}

/// The length-delimited fields numbered `number` of a message.
fn submessages(buf: &[u8], number: u32) -> Result<Vec<&[u8]>, WireError> {
    Ok(fields(buf)?
        .into_iter()
        .filter_map(|f| match f {
            Field::Bytes(n, bytes) if n == number => Some(bytes),
            _ => None,
        })
        .collect())
}

impl SpanCounts {
    fn add_kind(&mut self, kind: u64) {
        match kind {
            KIND_SERVER => self.server += 1,
            KIND_CLIENT => self.client += 1,
            _ => self.other += 1,
        }
    }

    pub fn add(&mut self, other: SpanCounts) {
        self.server += other.server;
        self.client += other.client;
        self.other += other.other;
    }
}

/// Spans of one export request: all of them, and those with a `server.port` by port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub total: SpanCounts,
    pub by_port: BTreeMap<u16, SpanCounts>,
}

/// The integer value (`AnyValue.int_value`) of a `KeyValue` whose key is `key`.
fn int_attribute(key_value: &[u8], key: &[u8]) -> Result<Option<i64>, WireError> {
    let mut named = false;
    let mut value = None;
    for field in fields(key_value)? {
        match field {
            Field::Bytes(1, k) => named = k == key,
            Field::Bytes(2, any_value) => value = Some(any_value),
            _ => {}
        }
    }
    let Some(any_value) = value.filter(|_| named) else {
        return Ok(None);
    };
    Ok(fields(any_value)?.into_iter().find_map(|f| match f {
        Field::Varint(3, v) => Some(v as i64),
        _ => None,
    }))
}

/// Counts the spans of one `ExportTraceServiceRequest` by kind, in total and by `server.port`.
pub fn count_spans_by_port(request: &[u8]) -> Result<RequestCounts, WireError> {
    let mut counts = RequestCounts::default();
    for resource_spans in submessages(request, 1)? {
        for scope_spans in submessages(resource_spans, 2)? {
            for span in submessages(scope_spans, 2)? {
                let mut kind = 0;
                let mut port = None;
                for field in fields(span)? {
                    match field {
                        Field::Varint(6, k) => kind = k,
                        Field::Bytes(9, attribute) if port.is_none() => {
                            port = int_attribute(attribute, SERVER_PORT_KEY)?
                                .and_then(|p| u16::try_from(p).ok());
                        }
                        _ => {}
                    }
                }
                counts.total.add_kind(kind);
                if let Some(port) = port {
                    counts.by_port.entry(port).or_default().add_kind(kind);
                }
            }
        }
    }
    Ok(counts)
}

/// Counts the spans of one `ExportTraceServiceRequest` by kind.
pub fn count_spans(request: &[u8]) -> Result<SpanCounts, WireError> {
    Ok(count_spans_by_port(request)?.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn len_field(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(number) << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn span(kind: Option<u64>) -> Vec<u8> {
        span_with_port(kind, None)
    }

    /// A `KeyValue` attribute with an int or a string value.
    fn attribute(key: &str, int: Option<i64>, text: Option<&str>) -> Vec<u8> {
        let mut any_value = Vec::new();
        if let Some(text) = text {
            len_field(1, text.as_bytes(), &mut any_value);
        }
        if let Some(int) = int {
            varint(3 << 3, &mut any_value);
            varint(int as u64, &mut any_value);
        }
        let mut kv = Vec::new();
        len_field(1, key.as_bytes(), &mut kv);
        len_field(2, &any_value, &mut kv);
        kv
    }

    fn span_with_port(kind: Option<u64>, port: Option<i64>) -> Vec<u8> {
        let mut s = Vec::new();
        len_field(1, &[0xab; 16], &mut s); // trace_id
        len_field(5, b"GET", &mut s); // name
        if let Some(kind) = kind {
            varint(6 << 3, &mut s);
            varint(kind, &mut s);
        }
        len_field(
            9,
            &attribute("http.request.method", None, Some("GET")),
            &mut s,
        );
        len_field(9, &attribute("client.port", Some(40000), None), &mut s);
        if let Some(port) = port {
            len_field(9, &attribute("server.port", Some(port), None), &mut s);
        }
        varint(7 << 3 | 1, &mut s); // start_time_unix_nano (fixed64)
        s.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
        s
    }

    fn request() -> Vec<u8> {
        let mut scope_a = Vec::new();
        len_field(1, b"\x0a\x06tracer", &mut scope_a); // scope
        len_field(2, &span(Some(KIND_SERVER)), &mut scope_a);
        len_field(2, &span(Some(KIND_CLIENT)), &mut scope_a);
        len_field(2, &span(Some(KIND_SERVER)), &mut scope_a);
        let mut scope_b = Vec::new();
        len_field(2, &span(None), &mut scope_b);
        let mut resource_a = Vec::new();
        len_field(1, b"\x0a\x00", &mut resource_a); // resource
        len_field(2, &scope_a, &mut resource_a);
        len_field(2, &scope_b, &mut resource_a);
        len_field(3, b"schema", &mut resource_a);
        let mut resource_b = Vec::new();
        len_field(
            2,
            &{
                let mut s = Vec::new();
                len_field(2, &span(Some(KIND_CLIENT)), &mut s);
                s
            },
            &mut resource_b,
        );
        let mut request = Vec::new();
        len_field(1, &resource_a, &mut request);
        len_field(1, &resource_b, &mut request);
        request
    }

    #[test]
    fn counts_spans_by_kind_across_resources_and_scopes() {
        let counts = count_spans(&request()).unwrap();
        assert_eq!(
            counts,
            SpanCounts {
                server: 2,
                client: 2,
                other: 1
            }
        );
        assert_eq!(count_spans(&[]).unwrap(), SpanCounts::default());
    }

    #[test]
    fn spans_are_also_counted_by_server_port() {
        let mut scope = Vec::new();
        for (kind, port) in [
            (KIND_SERVER, Some(8080)),
            (KIND_CLIENT, Some(8080)),
            (KIND_CLIENT, Some(8080)),
            (KIND_SERVER, Some(9090)),
            (KIND_SERVER, None),
            (KIND_SERVER, Some(70_000)),
            (KIND_CLIENT, Some(-1)),
        ] {
            len_field(2, &span_with_port(Some(kind), port), &mut scope);
        }
        let mut resource = Vec::new();
        len_field(2, &scope, &mut resource);
        let mut request = Vec::new();
        len_field(1, &resource, &mut request);
        let counts = count_spans_by_port(&request).unwrap();
        assert_eq!(
            counts.total,
            SpanCounts {
                server: 4,
                client: 3,
                other: 0
            }
        );
        assert_eq!(
            counts.by_port.get(&8080),
            Some(&SpanCounts {
                server: 1,
                client: 2,
                other: 0
            })
        );
        assert_eq!(counts.by_port.get(&9090).map(|c| c.server), Some(1));
        // No port, or a value that is no port: counted in the total only.
        assert_eq!(counts.by_port.len(), 2);
    }

    #[test]
    fn truncated_or_odd_bodies_are_errors_not_panics() {
        let body = request();
        for cut in 1..body.len() {
            let _ = count_spans(&body[..cut]);
        }
        assert_eq!(
            count_spans(&body[..body.len() - 1]),
            Err(WireError::Truncated)
        );
        assert_eq!(count_spans(&[0x0b]), Err(WireError::UnsupportedWireType(3)));
    }
}
