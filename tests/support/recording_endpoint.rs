//! `RecordingEndpoint`: an HTTP/1 server that records every request it gets (method, target,
//! headers) and answers each with one fixed response: `200` or a redirect to another URL. Tests
//! use it to see exactly what an exporter sends, and to whom.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::LOCATION;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// Largest request body read (the rest of a bigger body is not needed to record the request).
const MAX_BODY_BYTES: usize = 16 << 20;

/// How the endpoint answers every request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `200 OK` with an empty body.
    Ok,
    /// `307 Temporary Redirect` to this URL.
    Redirect(String),
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub target: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Log {
    requests: Mutex<Vec<RecordedRequest>>,
    arrived: Condvar,
}

/// A running endpoint on 127.0.0.1; stopped when dropped.
pub struct RecordingEndpoint {
    addr: SocketAddr,
    log: Arc<Log>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RecordingEndpoint {
    /// Starts on a free port; panics with the reason when it cannot.
    pub fn start(answer: Answer) -> RecordingEndpoint {
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("recording endpoint: bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("recording endpoint: local address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("recording endpoint: non-blocking: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("recording endpoint: runtime: {e}"));
        let log = Arc::new(Log::default());
        let (shutdown, stopped) = oneshot::channel();
        let served = Arc::clone(&log);
        let thread = std::thread::Builder::new()
            .name(format!("recording-{}", addr.port()))
            .spawn(move || runtime.block_on(serve(listener, answer, served, stopped)))
            .unwrap_or_else(|e| panic!("recording endpoint: thread: {e}"));
        RecordingEndpoint {
            addr,
            log,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `timeout` for at least `count` requests; returns what arrived either way.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = Instant::now() + timeout;
        let mut requests = self
            .log
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while requests.len() < count {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            requests = self
                .log
                .arrived
                .wait_timeout(requests, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        requests.clone()
    }
}

impl Drop for RecordingEndpoint {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: StdListener,
    answer: Answer,
    log: Arc<Log>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => panic!("recording endpoint: registering the listener: {e}"),
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => {
                connections.abort_all();
                return;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let answer = answer.clone();
                let log = Arc::clone(&log);
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        record(request, answer.clone(), Arc::clone(&log))
                    });
                    // Errors are the peer going away, which is its right.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn record(
    request: Request<Incoming>,
    answer: Answer,
    log: Arc<Log>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body_len = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => MAX_BODY_BYTES,
    };
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
    };
    log.requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(recorded);
    log.arrived.notify_all();
    let mut response = Response::new(Full::new(Bytes::new()));
    if let Answer::Redirect(location) = answer {
        *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        if let Ok(value) = location.parse() {
            response.headers_mut().insert(LOCATION, value);
        }
    }
    Ok(response)
}
