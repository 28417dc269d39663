//! Reading the agent's metrics port as a scraper or a health probe would: one `GET` per
//! connection with a deadline on the whole answer, and sample lookup in Prometheus text.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// An HTTP answer: status code, head (lower-cased) and body.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` with `Connection: close`; the whole answer must arrive within `deadline` (else an
/// error of kind `TimedOut`).
pub fn http_get(addr: SocketAddr, path: &str, deadline: Duration) -> std::io::Result<HttpAnswer> {
    let until = Instant::now() + deadline;
    let mut stream = TcpStream::connect_timeout(&addr, deadline)?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no complete answer to GET {path} within {deadline:?}"),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no complete answer to GET {path} within {deadline:?}"),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no HTTP head in {text:?}"),
        ));
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line in {head:?}"),
            )
        })?;
    Ok(HttpAnswer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

/// The body of `GET /metrics` on the agent's metrics port; panics unless it answers 200.
pub fn scrape(addr: SocketAddr) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: tracer\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.take(16 << 20).read_to_string(&mut answer)?;
        Ok(answer)
    };
    let answer = attempt().unwrap_or_else(|e| panic!("scraping {addr}/metrics: {e}"));
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.to_owned(),
        _ => panic!("unexpected answer from {addr}/metrics:\n{answer}"),
    }
}

/// The value of the sample `name{labels}` (labels exactly as rendered, e.g. `reason="busy"`; empty
/// for none) in Prometheus text.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{series} ")))
        .and_then(|value| value.trim().parse().ok())
}
