//! The HTTP half of the metrics endpoint: `GET /metrics`, `/healthz` and `/readyz` served by
//! hyper's HTTP/1 server, one task per connection.
//!
//! A connection that is slow or idle costs only its own task: hyper closes it when a request
//! head does not arrive within [`REQUEST_TIMEOUT`] (also between keep-alive requests), so idle
//! clients never delay a health check. Heads are bounded ([`MAX_REQUEST_HEAD_BYTES`]), and so is
//! the number of connections held at once ([`MAX_CONCURRENT_CONNECTIONS`]; more are closed at
//! once). Every refusal is counted in [`MetricsState`]'s server counters, which `/metrics`
//! renders.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::MetricsState;

/// Largest request head (request line + headers) the server reads (hyper's smallest buffer).
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields in a request head.
const MAX_REQUEST_HEADERS: usize = 64;
/// Time a client gets to send a request head, on a new connection and between requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections held at once; more are closed at once and counted (`reason="busy"`). Well above
/// what scrapers and probes need, low enough to bound the memory idle connections take.
pub const MAX_CONCURRENT_CONNECTIONS: usize = 256;
/// Pause after a failed `accept` (for example out of file descriptors) before the next one.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` and serves until the returned task is aborted (see [`super::serve`]), closing
/// connections whose next request head does not arrive within `timeout`.
pub(super) async fn serve_with_timeout(
    addr: SocketAddr,
    state: Arc<MetricsState>,
    timeout: Duration,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "metrics server listening");
    let task = tokio::spawn(accept_loop(listener, state, timeout));
    Ok((local, task))
}

async fn accept_loop(listener: TcpListener, state: Arc<MetricsState>, timeout: Duration) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_CONNECTIONS));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS)
        .half_close(true);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics server: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            state.server.rejected_busy.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "metrics server busy; closing connection");
            drop(stream);
            continue;
        };
        let state = Arc::clone(&state);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            service_fn({
                let state = Arc::clone(&state);
                move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(answer(&request, &state)) }
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                count_failure(&state, &error);
                tracing::debug!(%peer, %error, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Counts why hyper gave up on a connection (it has already answered 400 or 431 where HTTP
/// allows an answer).
fn count_failure(state: &MetricsState, error: &hyper::Error) {
    let counter = if error.is_timeout() {
        &state.server.rejected_timeout
    } else if error.is_parse_too_large() {
        &state.server.rejected_too_large
    } else if error.is_parse() || error.is_parse_status() {
        &state.server.rejected_malformed
    } else {
        return;
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The response to one request. The method is checked before any body is built: a `POST
/// /metrics` costs no render.
fn answer(request: &Request<Incoming>, state: &MetricsState) -> Response<Full<Bytes>> {
    state.server.requests_served.fetch_add(1, Ordering::Relaxed);
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    // hyper sends no body for HEAD and keeps the Content-Length of the GET answer.
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            super::exposition::CONTENT_TYPE,
            state.render(),
        ),
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".to_string()),
        _ if state.is_ready() => (StatusCode::OK, TEXT, "ready\n".to_string()),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready\n".to_string(),
        ),
    };
    with_body(status, content_type, body)
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_body(status, TEXT, body.to_string())
}

fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{AgentSnapshot, serve};
    use std::sync::PoisonError;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The sample value of `name` (with exactly `labels`) in a Prometheus text body.
    fn value(body: &str, name: &str, labels: &str) -> f64 {
        let series = if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{labels}}}")
        };
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("{series} missing from:\n{body}"))
            .parse()
            .expect("numeric sample")
    }

    /// Sends raw bytes, half-closes, and reads the whole answer.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        stream.shutdown().await.expect("half-close");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answer in time")
            .expect("read answer");
        String::from_utf8(answer).expect("utf-8 answer")
    }

    async fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        split_response(&exchange(addr, request.as_bytes()).await)
    }

    /// Head (lower-cased) and body; checks the body against Content-Length.
    fn split_response(answer: &str) -> (String, String) {
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        let head = head.to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content length")
            .parse()
            .expect("numeric length");
        assert_eq!(body.len(), length, "body matches Content-Length");
        (head, body.to_string())
    }

    async fn start_with_timeout(
        timeout: Duration,
    ) -> (SocketAddr, JoinHandle<()>, Arc<MetricsState>) {
        let state = MetricsState::new();
        let addr = "127.0.0.1:0".parse().expect("addr");
        let (addr, task) = serve_with_timeout(addr, Arc::clone(&state), timeout)
            .await
            .expect("bind");
        assert_ne!(addr.port(), 0);
        (addr, task, state)
    }

    async fn start() -> (SocketAddr, JoinHandle<()>, Arc<MetricsState>) {
        start_with_timeout(REQUEST_TIMEOUT).await
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let (addr, task, state) = start().await;
        state.update(AgentSnapshot {
            events_read: 201,
            ..Default::default()
        });

        let (head, body) = get(addr, "/metrics").await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert_eq!(value(&body, "tracer_events_read_total", ""), 201.0);
        assert_eq!(value(&body, "tracer_ready", ""), 0.0);

        let (head, body) = get(addr, "/healthz").await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert_eq!(body, "ok\n");

        let (head, _) = get(addr, "/readyz").await;
        assert!(head.starts_with("http/1.1 503 "), "{head}");
        state.set_ready(true);
        let (head, _) = get(addr, "/readyz?verbose").await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        state.set_ready(false);
        let (head, _) = get(addr, "/readyz").await;
        assert!(head.starts_with("http/1.1 503 "), "{head}");

        let (head, _) = get(addr, "/nope").await;
        assert!(head.starts_with("http/1.1 404 "), "{head}");
        let (head, _) = get(addr, "/").await;
        assert!(head.starts_with("http/1.1 404 "), "{head}");

        let answer = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nallow: get, head\r\n"),
            "{answer}"
        );

        let answer = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\n"),
            "HEAD carries no body: {answer}"
        );

        // Two requests on one keep-alive connection.
        let answer = exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");

        // The server's own counters moved with the requests above.
        let (_, body) = get(addr, "/metrics").await;
        assert_eq!(
            value(&body, "tracer_metrics_requests_total", ""),
            12.0,
            "eleven before, and this scrape"
        );
        task.abort();
    }

    /// A refused method is answered without building the body: with the snapshot locked (so a
    /// render would block), `POST /metrics` still gets its 405 at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_methods_are_answered_without_rendering() {
        let (addr, task, state) = start().await;
        let held = state
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A blocking client on this thread: the server's workers stay free to answer.
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        std::io::Write::write_all(
            &mut stream,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
        let mut answer = [0u8; 16];
        let read = std::io::Read::read(&mut stream, &mut answer);
        drop(held);
        let len = *read.as_ref().unwrap_or(&0);
        let answer = String::from_utf8_lossy(answer.get(..len).unwrap_or_default()).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 405 "),
            "no 405 while a render would block: {read:?} {answer:?}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn rejects_garbage_and_oversized_heads() {
        let (addr, task, _state) = start().await;

        let answer = exchange(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let answer = exchange(addr, b"GET /metrics HTTP/9.9\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

        // A head that never ends within the bound: answered 431, not buffered without limit.
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        big.resize(MAX_REQUEST_HEAD_BYTES + 4096, b'a');
        let answer = exchange(addr, &big).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

        // A client that closes without sending anything gets nothing and breaks nothing.
        drop(TcpStream::connect(addr).await.expect("connect"));

        let (head, body) = get(addr, "/metrics").await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        let rejected = |reason: &str| {
            value(
                &body,
                "tracer_metrics_requests_rejected_total",
                &format!("reason=\"{reason}\""),
            )
        };
        assert_eq!(rejected("malformed"), 2.0);
        assert_eq!(rejected("head_too_large"), 1.0);
        task.abort();
    }

    #[tokio::test]
    async fn idle_and_slow_clients_neither_block_others_nor_stay_forever() {
        let timeout = Duration::from_millis(300);
        let (addr, task, _state) = start_with_timeout(timeout).await;
        let started = std::time::Instant::now();
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("partial head");
        let mut idle = Vec::new();
        for _ in 0..64 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Others are served at once while the slow and idle clients hold their connections.
        let (head, _) = get(addr, "/healthz").await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
        assert!(
            started.elapsed() >= timeout,
            "closed only after the timeout"
        );
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "slow client's connection closed: {read:?}"
        );
        for stream in &mut idle {
            let mut rest = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "idle connection closed by the server");
        }
        let (_, body) = get(addr, "/metrics").await;
        let timeouts = value(
            &body,
            "tracer_metrics_requests_rejected_total",
            "reason=\"timeout\"",
        );
        assert!(timeouts >= 1.0, "timeouts counted: {timeouts}");
        task.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_counted() {
        let (addr, task, _state) = start().await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONCURRENT_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut refused = TcpStream::connect(addr).await.expect("connect");
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(4), refused.read_to_end(&mut answer)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection over the cap closed at once: {read:?} {answer:?}"
        );
        drop(idle);
        // The held permits return once the server sees the idle clients close.
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        let body = loop {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
                .await
                .expect("send");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            if !answer.is_empty() {
                break split_response(&String::from_utf8(answer).expect("utf-8")).1;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "permits never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let busy = value(
            &body,
            "tracer_metrics_requests_rejected_total",
            "reason=\"busy\"",
        );
        assert!(busy >= 1.0, "busy refusals counted: {busy}");
        task.abort();
    }

    #[tokio::test]
    async fn bind_failure_is_an_error_not_a_panic() {
        let (addr, task, state) = start().await;
        assert!(serve(addr, state).await.is_err(), "port already taken");
        task.abort();
    }
}
