//! A minimal OTLP/HTTP receiver for the bench: accepts `POST /v1/traces` with protobuf bodies on
//! 127.0.0.1, answers 200, and counts the spans by kind by walking the protobuf wire format
//! (`ExportTraceServiceRequest.resource_spans[].scope_spans[].spans[].kind`) without generated
//! code, so xtask needs no protobuf dependency and counting costs next to nothing. Spans are
//! also counted by their `server.port` attribute: a host-wide agent on a shared machine traces
//! other work too, and the bench counts only the spans of its own server's port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// Largest request head and body accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
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

    fn add(&mut self, other: SpanCounts) {
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
#[cfg(test)]
pub fn count_spans(request: &[u8]) -> Result<SpanCounts, WireError> {
    Ok(count_spans_by_port(request)?.total)
}

#[derive(Debug, Default)]
struct Counters {
    server: AtomicU64,
    client: AtomicU64,
    other: AtomicU64,
    requests: AtomicU64,
    rejected: AtomicU64,
    by_port: Mutex<BTreeMap<u16, SpanCounts>>,
}

/// The running receiver; stops accepting when dropped.
pub struct CountingReceiver {
    port: u16,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl CountingReceiver {
    pub fn start() -> Result<CountingReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the OTLP receiver")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
            std::thread::spawn(move || accept_loop(&listener, &counters, &stop))
        };
        Ok(CountingReceiver {
            port,
            counters,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The base URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn counts(&self) -> SpanCounts {
        SpanCounts {
            server: self.counters.server.load(Ordering::Relaxed),
            client: self.counters.client.load(Ordering::Relaxed),
            other: self.counters.other.load(Ordering::Relaxed),
        }
    }

    /// Spans whose `server.port` is `port`, by kind.
    pub fn counts_for_port(&self, port: u16) -> SpanCounts {
        self.counters
            .by_port
            .lock()
            .map(|m| m.get(&port).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Export requests answered, and requests refused (unparseable or too large).
    pub fn requests(&self) -> (u64, u64) {
        (
            self.counters.requests.load(Ordering::Relaxed),
            self.counters.rejected.load(Ordering::Relaxed),
        )
    }
}

impl Drop for CountingReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, counters: &Arc<Counters>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let counters = Arc::clone(counters);
                std::thread::spawn(move || {
                    let _ = serve(stream, &counters);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Serves keep-alive requests on one connection until it closes or misbehaves.
fn serve(stream: TcpStream, counters: &Counters) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let body = match read_body(&mut reader, &head)? {
            Some(body) => body,
            None => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                respond(&mut writer, "413 Payload Too Large")?;
                return Ok(());
            }
        };
        let gzip = head
            .header("content-encoding")
            .is_some_and(|v| v.contains("gzip"));
        match (head.is_traces_post(), gzip, count_spans_by_port(&body)) {
            (true, false, Ok(counts)) => {
                if let Ok(mut by_port) = counters.by_port.lock() {
                    for (port, c) in &counts.by_port {
                        by_port.entry(*port).or_default().add(*c);
                    }
                }
                let total = counts.total;
                counters.server.fetch_add(total.server, Ordering::Relaxed);
                counters.client.fetch_add(total.client, Ordering::Relaxed);
                counters.other.fetch_add(total.other, Ordering::Relaxed);
                counters.requests.fetch_add(1, Ordering::Relaxed);
                respond(&mut writer, "200 OK")?;
            }
            _ => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                respond(&mut writer, "400 Bad Request")?;
            }
        }
    }
}

fn respond(writer: &mut TcpStream, status: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
    );
    writer.write_all(response.as_bytes())
}

/// A request line and headers (names lowercased).
struct Head {
    request_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_traces_post(&self) -> bool {
        let mut words = self.request_line.split_whitespace();
        words.next() == Some("POST") && words.next().is_some_and(|t| t.ends_with("/v1/traces"))
    }
}

/// Reads one request head; `None` at a clean end of the connection.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        total += n;
        if total > MAX_HEAD_BYTES {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        lines.push(line);
    }
    let request_line = lines.remove(0);
    let headers = lines
        .into_iter()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    Ok(Some(Head {
        request_line,
        headers,
    }))
}

/// Reads the body by Content-Length or chunked framing; `None` when it is too large.
fn read_body(reader: &mut impl BufRead, head: &Head) -> std::io::Result<Option<Vec<u8>>> {
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_text = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| std::io::ErrorKind::InvalidData)?;
            if body.len() + size > MAX_BODY_BYTES {
                return Ok(None);
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
            if size == 0 {
                return Ok(Some(body));
            }
        }
    }
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY_BYTES {
        return Ok(None);
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(Some(body))
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

    #[test]
    fn serves_keep_alive_posts_and_counts_them() {
        let receiver = CountingReceiver::start().unwrap();
        let port = receiver
            .endpoint()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = request();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        for _ in 0..2 {
            let head = format!(
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
        }
        // Chunked framing too.
        let mut chunked =
            b"POST /v1/traces HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let (a, b) = body.split_at(10);
        for part in [a, b] {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        stream.write_all(&chunked).unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(
            receiver.counts(),
            SpanCounts {
                server: 6,
                client: 6,
                other: 3
            }
        );
        assert_eq!(receiver.requests(), (3, 0));
    }
}
