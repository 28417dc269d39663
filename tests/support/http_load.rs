//! A small HTTP/1.1 server and clients on std sockets, fast enough for tens of thousands of
//! exchanges: `/status/NNN?size=N` answers status NNN with an N-byte body.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest request or response head read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body the server sends.
const MAX_BODY: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Worker threads accepting on one listener; stopped and joined on drop.
pub struct LoadServer {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    workers: Vec<JoinHandle<()>>,
}

impl LoadServer {
    /// Listens on 127.0.0.1:`port` (0: any free port, see `port()`) with `workers` threads,
    /// each serving one connection at a time; with `keep_alive` false every response closes
    /// its connection.
    pub fn start(port: u16, workers: usize, keep_alive: bool) -> LoadServer {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("load server: binding {port}: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("load server: local address: {e}"))
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let workers = (0..workers.max(1))
            .map(|_| {
                let listener = listener.try_clone().expect("clone listener");
                let stop = Arc::clone(&stop);
                let served = Arc::clone(&served);
                std::thread::spawn(move || {
                    while let Ok((stream, _)) = listener.accept() {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        serve(stream, keep_alive, &served);
                    }
                })
            })
            .collect();
        LoadServer {
            port,
            stop,
            served,
            workers,
        }
    }

    /// Responses sent so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LoadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake every worker blocked in accept.
        for _ in &self.workers {
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn serve(mut stream: TcpStream, keep_alive: bool, served: &AtomicU64) {
    if stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buffer) else {
            return;
        };
        let head = buffer
            .get(..head_len)
            .map(|head| String::from_utf8_lossy(head).into_owned())
            .unwrap_or_default();
        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let close = !keep_alive
            || head
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n");
        buffer.drain(..head_len);
        let (status, size) = route(&target);
        let mut response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Length: {size}\r\nConnection: {}\r\n\r\n",
            reason(status),
            if close { "close" } else { "keep-alive" }
        )
        .into_bytes();
        response.resize(response.len() + size, b'x');
        if stream.write_all(&response).is_err() {
            return;
        }
        served.fetch_add(1, Ordering::Relaxed);
        if close {
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
    }
}

/// Status and body size for a request target.
fn route(target: &str) -> (u16, usize) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let status = match path.strip_prefix("/status/").map(str::parse::<u16>) {
        Some(Ok(code)) if (200..=599).contains(&code) && code != 204 && code != 304 => code,
        Some(_) => 400,
        None => 404,
    };
    let size = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("size="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
        .min(MAX_BODY);
    (status, size)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// Reads until `buffer` holds a whole head; its length including the blank line, or `None`
/// at end of stream, on error, or when the head is too large.
fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        if buffer.len() > MAX_HEAD {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(chunk.get(..n)?),
        }
    }
}

/// Status code and Content-Length of a response head.
fn parse_response_head(head: &[u8]) -> std::io::Result<(u16, usize)> {
    let bad =
        |what: &str| std::io::Error::other(format!("{what}: {:?}", String::from_utf8_lossy(head)));
    let text = std::str::from_utf8(head).map_err(|_| bad("not UTF-8"))?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let length = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    Ok((status, length))
}

/// One request on a fresh connection with `Connection: close`; the response status.
pub fn get_once(port: u16, target: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut response = Vec::new();
    stream
        .take(MAX_HEAD as u64 + MAX_BODY as u64)
        .read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    parse_response_head(response.get(..end).unwrap_or_default()).map(|(status, _)| status)
}

/// One keep-alive connection sending one request at a time.
pub struct KeepAliveClient {
    stream: TcpStream,
    port: u16,
    buffer: Vec<u8>,
}

impl KeepAliveClient {
    pub fn connect(port: u16) -> std::io::Result<KeepAliveClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(KeepAliveClient {
            stream,
            port,
            buffer: Vec::new(),
        })
    }

    /// Sends `GET target` and reads the whole response: its status and body length.
    pub fn get(&mut self, target: &str) -> std::io::Result<(u16, usize)> {
        self.stream.write_all(
            format!(
                "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
                self.port
            )
            .as_bytes(),
        )?;
        let head_len = read_head(&mut self.stream, &mut self.buffer)
            .ok_or_else(|| std::io::Error::other("connection ended before a response"))?;
        let (status, length) =
            parse_response_head(self.buffer.get(..head_len).unwrap_or_default())?;
        self.buffer.drain(..head_len);
        let mut chunk = [0u8; 16 * 1024];
        while self.buffer.len() < length {
            match self.stream.read(&mut chunk)? {
                0 => return Err(std::io::Error::other("connection ended inside a body")),
                n => self
                    .buffer
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
        self.buffer.drain(..length);
        Ok((status, length))
    }
}

#[cfg(test)]
#[test]
fn serves_status_paths_once_and_keep_alive() {
    // Port 0: the kernel picks a free one, so no other test can take it in between.
    let server = LoadServer::start(0, 2, true);
    let port = server.port();
    let mut client = KeepAliveClient::connect(port).expect("connect");
    assert_eq!(
        client.get("/status/404?size=5000").expect("get"),
        (404, 5000)
    );
    assert_eq!(client.get("/status/201").expect("get"), (201, 2));
    assert_eq!(client.get("/elsewhere").expect("get"), (404, 2));
    drop(client);
    assert_eq!(get_once(port, "/status/503").expect("get"), 503);
    // The server counts after it has answered: give its thread a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.served() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(server.served(), 4);
    drop(server);

    let closing = LoadServer::start(0, 1, false);
    let port = closing.port();
    for _ in 0..3 {
        assert_eq!(get_once(port, "/status/200").expect("get"), 200);
    }
    // As above: the count follows the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while closing.served() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(closing.served(), 3);
}
