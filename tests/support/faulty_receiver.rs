//! `FaultyReceiver`: an OTLP/HTTP (protobuf) trace endpoint whose behaviour a test switches at run
//! time (healthy, down with its port closed, slow, refusing with a status and `Retry-After`),
//! logging every export attempt it sees so that tests can check an exporter's retries and backoff.

use std::convert::Infallible;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::read::GzDecoder;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::http_receiver::TRACES_PATH;
use crate::process::free_port;
use crate::span::ObservedSpan;
use crate::store::{SpanStore, WaitTimedOut};

/// Largest accepted body, compressed or not.
const MAX_BODY_BYTES: usize = 64 << 20;
/// Export attempts kept in the log; later ones are counted in `attempts_dropped`.
pub const MAX_LOGGED_ATTEMPTS: usize = 100_000;
/// How long `set` waits for the server to apply a new behaviour.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server keeps trying to re-bind its port when coming back up.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// What the receiver does with the next export requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers 200 and keeps the spans.
    Healthy,
    /// Answers 200 and only counts the spans (for floods that would not fit in memory).
    Discard,
    /// Port closed: no listener, and every open connection is closed.
    Down,
    /// Answers 200 (keeping the spans) only after this delay.
    Slow(Duration),
    /// Answers `status` with an optional `Retry-After` (whole seconds); keeps nothing.
    Refuse {
        status: u16,
        retry_after: Option<Duration>,
    },
}

/// One export request the receiver decoded.
#[derive(Clone, Debug)]
pub struct ExportAttempt {
    /// When the whole body had arrived.
    pub at: Instant,
    /// The status answered (for `Slow`, answered after the delay).
    pub status: u16,
    /// Span ids in the request, in order.
    pub span_ids: Vec<String>,
    /// `service.name` of each resource in the request.
    pub services: Vec<String>,
}

impl ExportAttempt {
    /// Identifies the batch: a retry of the same batch carries the same span ids.
    pub fn batch_key(&self) -> String {
        let mut ids = self.span_ids.clone();
        ids.sort();
        ids.join(",")
    }
}

/// Counters of a receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultyStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// HTTP requests received (decodable or not).
    pub requests: u64,
    /// Requests refused as malformed (wrong path, method, type or body).
    pub malformed: u64,
    /// Spans in requests answered 200 (kept or discarded).
    pub spans_accepted: u64,
    /// Attempts not logged because the log was full.
    pub attempts_dropped: u64,
}

/// The behaviour the server should apply, numbered so that `set` can wait for it.
#[derive(Clone, Debug)]
struct Control {
    generation: u64,
    behaviour: Behaviour,
}

#[derive(Default)]
struct AttemptLog {
    attempts: Vec<ExportAttempt>,
    dropped: u64,
}

/// Server progress as seen by `set`.
#[derive(Default)]
struct Applied {
    generation: u64,
    failure: Option<String>,
}

#[derive(Default)]
struct Shared {
    store: SpanStore,
    log: Mutex<AttemptLog>,
    applied: Mutex<Applied>,
    applied_changed: Condvar,
    connections: AtomicU64,
    requests: AtomicU64,
    malformed: AtomicU64,
    spans_accepted: AtomicU64,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, AttemptLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark_applied(&self, generation: u64) {
        self.applied().generation = generation;
        self.applied_changed.notify_all();
    }

    fn mark_failed(&self, failure: String) {
        self.applied().failure = Some(failure);
        self.applied_changed.notify_all();
    }

    fn record_attempt(&self, attempt: ExportAttempt) {
        let mut log = self.log();
        if log.attempts.len() >= MAX_LOGGED_ATTEMPTS {
            log.dropped += 1;
        } else {
            log.attempts.push(attempt);
        }
    }
}

/// A running receiver on a fixed 127.0.0.1 port. Dropping it stops the server and joins its
/// thread.
pub struct FaultyReceiver {
    port: u16,
    shared: Arc<Shared>,
    control: watch::Sender<Control>,
    next_generation: AtomicU64,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultyReceiver {
    /// Starts the receiver on a free port, behaving as `initial` (with `Down`, nothing listens
    /// until the behaviour changes). Panics with the reason when it cannot start.
    pub fn start(initial: Behaviour) -> FaultyReceiver {
        let port = free_port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("faulty receiver: building its runtime: {e}"));
        let shared = Arc::new(Shared::default());
        let (control, control_rx) = watch::channel(Control {
            generation: 1,
            behaviour: initial,
        });
        let (shutdown, stopped) = oneshot::channel();
        let served = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("faulty-otlp-{port}"))
            .spawn(move || runtime.block_on(control_loop(port, control_rx, served, stopped)))
            .unwrap_or_else(|e| panic!("faulty receiver: spawning its thread: {e}"));
        let receiver = FaultyReceiver {
            port,
            shared,
            control,
            next_generation: AtomicU64::new(2),
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        receiver.wait_applied(1);
        receiver
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Base endpoint, e.g. `http://127.0.0.1:20123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Environment pointing an OTLP/HTTP protobuf exporter here, with a short batch delay.
    pub fn exporter_env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), self.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
                "http/protobuf".to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
        ]
    }

    /// The current behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.control.borrow().behaviour.clone()
    }

    /// Switches behaviour and returns once the server applies it: after `Down`, the port is
    /// closed and every connection is gone; after any other, the port accepts connections.
    pub fn set(&self, behaviour: Behaviour) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.control.send_replace(Control {
            generation,
            behaviour,
        });
        self.wait_applied(generation);
    }

    fn wait_applied(&self, generation: u64) {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let mut applied = self.shared.applied();
        loop {
            if let Some(failure) = &applied.failure {
                panic!("faulty receiver on port {}: {failure}", self.port);
            }
            if applied.generation >= generation {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "faulty receiver on port {} did not apply {:?} within {APPLY_TIMEOUT:?}",
                    self.port,
                    self.behaviour()
                );
            }
            applied = self
                .shared
                .applied_changed
                .wait_timeout(applied, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Spans of requests answered 200 while healthy or slow.
    pub fn spans(&self) -> Vec<ObservedSpan> {
        self.shared.store.spans()
    }

    /// Blocks until `condition` holds on the kept spans or `timeout` passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        condition: impl FnMut(&[ObservedSpan]) -> bool,
    ) -> Result<Vec<ObservedSpan>, WaitTimedOut> {
        self.shared.store.wait_for(timeout, condition)
    }

    /// Every decoded export request so far, in arrival order.
    pub fn attempts(&self) -> Vec<ExportAttempt> {
        self.shared.log().attempts.clone()
    }

    /// Decoded export requests that arrived at or after `since`.
    pub fn attempts_since(&self, since: Instant) -> Vec<ExportAttempt> {
        self.shared
            .log()
            .attempts
            .iter()
            .filter(|a| a.at >= since)
            .cloned()
            .collect()
    }

    pub fn stats(&self) -> FaultyStats {
        FaultyStats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            requests: self.shared.requests.load(Ordering::Relaxed),
            malformed: self.shared.malformed.load(Ordering::Relaxed),
            spans_accepted: self.shared.spans_accepted.load(Ordering::Relaxed),
            attempts_dropped: self.shared.log().dropped,
        }
    }
}

impl Drop for FaultyReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Applies each behaviour in turn: binds the port when up, serves connections, and when told to go
/// down closes the listener and every connection before acknowledging.
async fn control_loop(
    port: u16,
    mut control: watch::Receiver<Control>,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        let current = control.borrow_and_update().clone();
        if current.behaviour == Behaviour::Down {
            connections.abort_all();
            while connections.join_next().await.is_some() {}
            shared.mark_applied(current.generation);
            tokio::select! {
                _ = &mut stopped => return,
                changed = control.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let listener = match bind(port).await {
            Ok(listener) => listener,
            Err(e) => {
                shared.mark_failed(format!("binding 127.0.0.1:{port}: {e}"));
                return;
            }
        };
        shared.mark_applied(current.generation);
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    connections.abort_all();
                    return;
                }
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = control.borrow().clone();
                    if next.behaviour == Behaviour::Down {
                        // The outer loop closes the connections and acknowledges.
                        break;
                    }
                    control.borrow_and_update();
                    shared.mark_applied(next.generation);
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        let shared = Arc::clone(&shared);
                        let control = control.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |request| {
                                let behaviour = control.borrow().behaviour.clone();
                                handle(request, behaviour, Arc::clone(&shared))
                            });
                            // Errors are the peer going away, which is its right.
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Err(e) => {
                        eprintln!("faulty receiver: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
    }
}

/// Binds 127.0.0.1:`port`, retrying while the address is still in use.
async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn handle(
    request: Request<Incoming>,
    behaviour: Behaviour,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Agents also export RED metrics (at least once, at shutdown): accepted, not counted, so the
    // counters describe trace exports only.
    if request.uri().path() == crate::http_receiver::METRICS_PATH {
        return Ok(text_response(StatusCode::OK, ""));
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let export = match read_export(request).await {
        Ok(export) => export,
        Err((status, reason)) => {
            shared.malformed.fetch_add(1, Ordering::Relaxed);
            return Ok(text_response(status, &reason));
        }
    };
    let spans = ObservedSpan::from_otlp(&export);
    let (status, retry_after, delay) = match &behaviour {
        Behaviour::Healthy | Behaviour::Discard => (200, None, Duration::ZERO),
        Behaviour::Slow(delay) => (200, None, *delay),
        Behaviour::Refuse {
            status,
            retry_after,
        } => (*status, *retry_after, Duration::ZERO),
        // A request that raced the switch to down.
        Behaviour::Down => (503, None, Duration::ZERO),
    };
    shared.record_attempt(ExportAttempt {
        at: Instant::now(),
        status,
        span_ids: spans.iter().map(|s| s.span_id.clone()).collect(),
        services: export
            .resource_spans
            .iter()
            .map(|r| {
                r.resource
                    .as_ref()
                    .and_then(|res| res.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| v.value.as_ref())
                    .map_or_else(String::new, |v| match v {
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            s,
                        ) => s.clone(),
                        other => format!("{other:?}"),
                    })
            })
            .collect(),
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if status != 200 {
        let mut response = text_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "refused on purpose",
        );
        if let Some(after) = retry_after
            && let Ok(value) = after.as_secs().to_string().parse()
        {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        return Ok(response);
    }
    shared
        .spans_accepted
        .fetch_add(spans.len() as u64, Ordering::Relaxed);
    if behaviour != Behaviour::Discard {
        shared.store.record(spans);
    }
    let mut response = Response::new(Full::new(Bytes::from(
        ExportTraceServiceResponse {
            partial_success: None,
        }
        .encode_to_vec(),
    )));
    if let Ok(value) = "application/x-protobuf".parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    Ok(response)
}

fn text_response(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    if let Ok(value) = "text/plain".parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

/// The protobuf export request in `request`, or the status and reason to refuse it with.
async fn read_export(
    request: Request<Incoming>,
) -> Result<ExportTraceServiceRequest, (StatusCode, String)> {
    if request.uri().path() != TRACES_PATH {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no such path {}", request.uri().path()),
        ));
    }
    if request.method() != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed", request.method()),
        ));
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !content_type.starts_with("application/x-protobuf")
        && !content_type.starts_with("application/protobuf")
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {content_type:?}"),
        ));
    }
    let gzipped = request
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
        .to_bytes();
    let body = if gzipped {
        let mut out = Vec::new();
        GzDecoder::new(body.as_ref())
            .take(MAX_BODY_BYTES as u64)
            .read_to_end(&mut out)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("gzip: {e}")))?;
        Bytes::from(out)
    } else {
        body
    };
    ExportTraceServiceRequest::decode(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("decoding the body: {e}")))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpStream;

    use super::*;
    use crate::test_data::sample_request;

    /// Posts one export request on a fresh connection: the status and `Retry-After`, or `None`
    /// when nothing accepts the connection or it is reset (a receiver switched to `Down` may
    /// still complete a handshake from its backlog before closing).
    fn post(receiver: &FaultyReceiver, body: &[u8]) -> Option<(u16, Option<String>)> {
        let mut stream = TcpStream::connect(receiver.addr()).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let head = format!(
            "POST {TRACES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).ok()?;
        stream.write_all(body).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let retry_after = response
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .map(str::to_owned);
        Some((status, retry_after))
    }

    #[test]
    fn behaviours_switch_at_run_time() {
        let receiver = FaultyReceiver::start(Behaviour::Down);
        let body = sample_request("svc", 7).encode_to_vec();
        assert_eq!(post(&receiver, &body), None, "down: port closed");

        receiver.set(Behaviour::Refuse {
            status: 429,
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(post(&receiver, &body), Some((429, Some("3".to_owned()))));
        receiver.set(Behaviour::Refuse {
            status: 503,
            retry_after: None,
        });
        assert_eq!(post(&receiver, &body), Some((503, None)));
        assert!(receiver.spans().is_empty(), "refused spans are not kept");

        receiver.set(Behaviour::Healthy);
        assert_eq!(post(&receiver, &body), Some((200, None)));
        assert_eq!(receiver.spans().len(), 1);

        receiver.set(Behaviour::Slow(Duration::from_millis(300)));
        let started = Instant::now();
        assert_eq!(post(&receiver, &body), Some((200, None)));
        assert!(started.elapsed() >= Duration::from_millis(300));

        receiver.set(Behaviour::Discard);
        assert_eq!(post(&receiver, &body), Some((200, None)));
        assert_eq!(
            receiver.spans().len(),
            2,
            "discarded spans are only counted"
        );

        let attempts = receiver.attempts();
        let statuses: Vec<u16> = attempts.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [429, 503, 200, 200, 200]);
        assert!(attempts.iter().all(|a| a.services == ["svc"]));
        assert_eq!(attempts[0].batch_key(), attempts[1].batch_key());
        let stats = receiver.stats();
        assert_eq!(stats.requests, 5);
        assert_eq!(stats.spans_accepted, 3);
        assert_eq!(stats.malformed, 0);

        receiver.set(Behaviour::Down);
        assert_eq!(post(&receiver, &body), None, "down again");
    }

    #[test]
    fn going_down_closes_open_connections() {
        let receiver = FaultyReceiver::start(Behaviour::Healthy);
        let mut idle = TcpStream::connect(receiver.addr()).expect("connect");
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        // Wait until the server has accepted it, so that going down must close it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while receiver.stats().connections == 0 {
            assert!(Instant::now() < deadline, "connection never accepted");
            std::thread::sleep(Duration::from_millis(10));
        }
        receiver.set(Behaviour::Down);
        let mut buf = [0u8; 16];
        let read = idle.read(&mut buf);
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "connection closed by the switch: {read:?}"
        );
        receiver.set(Behaviour::Healthy);
        let body = sample_request("back", 1).encode_to_vec();
        assert_eq!(post(&receiver, &body), Some((200, None)), "same port again");
    }

    #[test]
    fn malformed_requests_are_counted() {
        let receiver = FaultyReceiver::start(Behaviour::Healthy);
        assert_eq!(post(&receiver, b"\xff\xff\xff"), Some((400, None)));
        let stats = receiver.stats();
        assert_eq!((stats.requests, stats.malformed), (1, 1));
        assert!(receiver.attempts().is_empty());
    }
}
