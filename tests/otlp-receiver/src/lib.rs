//! The one OTLP receiver of the unit tests, the end-to-end tests and the bench: OTLP/gRPC (tonic)
//! or OTLP/HTTP (hyper; protobuf or JSON bodies, gzip or not), traces and metrics, on its own
//! thread and runtime so that callers stay synchronous. Its behaviour for trace requests is
//! switched at run time (healthy, count-only, down with its port closed, slow, refusing with a
//! status and `Retry-After`, a gRPC status, partial success, never answering), optionally per
//! request through a script. Every decoded request is logged as an [`Attempt`]; hooks hand the
//! accepted spans and metrics (or only the raw bytes, for counting without decoding) to the
//! caller. Metrics requests are always accepted: behaviours describe a trace collector.

mod grpc;
mod http;
mod log;
pub mod wire;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

/// The generated OTLP types and their codec, for callers that build requests.
pub use opentelemetry_proto as proto;
pub use prost;

pub use log::{
    Attempt, Hooks, MAX_LOGGED_ATTEMPTS, MetricsHook, RawHook, Signal, Stats, TracesHook,
};

/// The HTTP paths of the two signals (the OTLP defaults).
pub const TRACES_PATH: &str = "/v1/traces";
pub const METRICS_PATH: &str = "/v1/metrics";
/// Largest accepted body, compressed or not.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// How long `set` waits for the server to apply a new behaviour.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server keeps trying to re-bind its port when coming back up.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// The wire protocol a receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    /// OTLP/HTTP; each request's content type picks protobuf or JSON.
    HttpProtobuf,
}

impl Protocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL` selecting it (HTTP: protobuf).
    pub fn as_env_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// What the receiver does with trace requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers success and hands the spans to the hooks.
    Healthy,
    /// Answers success and only counts the spans (floods that would not fit in memory).
    Discard,
    /// Port closed: no listener, and every open HTTP connection is closed (over gRPC, connections
    /// tonic already accepted may linger).
    Down,
    /// Answers success (keeping the spans) only after this delay.
    Slow(Duration),
    /// Answers this HTTP status with an optional `Retry-After` (whole seconds); keeps nothing.
    /// Over gRPC the status maps to the code OTLP exporters treat alike (429 -> RESOURCE_EXHAUSTED,
    /// 502/503/504 -> UNAVAILABLE, 400 -> INVALID_ARGUMENT, else INTERNAL).
    Refuse {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Answers this gRPC status (over HTTP: 500).
    GrpcStatus(tonic::Code),
    /// Answers success saying this many spans were rejected (OTLP partial success; over
    /// HTTP/JSON with the count as a string, as the Collector writes int64); keeps the spans.
    PartialSuccess(i64),
    /// Logs the request and never answers.
    Stall,
}

/// How to start a receiver.
#[derive(Clone)]
pub struct Config {
    pub protocol: Protocol,
    /// Port 0 picks a free one (kept across `Down` and back).
    pub bind: SocketAddr,
    pub behaviour: Behaviour,
    /// Behaviours of the first requests, in order, before `behaviour` applies.
    pub script: Vec<Behaviour>,
    /// Attempts keep the decoded requests (unit tests of the exporter read them back).
    pub keep_requests: bool,
    /// Log attempts at all (off for long floods where only the counters matter).
    pub log_attempts: bool,
    /// Decode the bodies (off: only the raw hook and the counters see the requests).
    pub decode: bool,
    pub hooks: Hooks,
}

impl Config {
    /// A healthy receiver on 127.0.0.1 (free port) that logs attempts without their bodies.
    pub fn new(protocol: Protocol) -> Config {
        Config {
            protocol,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            behaviour: Behaviour::Healthy,
            script: Vec::new(),
            keep_requests: false,
            log_attempts: true,
            decode: true,
            hooks: Hooks::default(),
        }
    }
}

/// Why a receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("building the receiver runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("spawning the receiver thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the receiver on {0} did not start: {1}")]
    Start(SocketAddr, String),
}

/// The behaviour the server should apply, numbered so that `set` can wait for it.
#[derive(Clone, Debug)]
struct Control {
    generation: u64,
    behaviour: Behaviour,
}

/// Server progress as seen by `set`.
#[derive(Default)]
struct Applied {
    generation: u64,
    failure: Option<String>,
}

/// State the servers and the handle share.
pub(crate) struct Core {
    pub(crate) shared: log::Shared,
    script: Mutex<VecDeque<Behaviour>>,
    applied: Mutex<Applied>,
    applied_changed: Condvar,
}

impl Core {
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

    /// The behaviour for the next trace request: the script's next one, else the current one.
    pub(crate) fn next_behaviour(&self, current: &watch::Receiver<Control>) -> Behaviour {
        let scripted = self
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        scripted.unwrap_or_else(|| current.borrow().behaviour.clone())
    }
}

/// How one trace request is answered.
pub(crate) enum Verdict {
    Accept {
        keep: bool,
        delay: Duration,
        rejected: Option<i64>,
    },
    Refuse {
        status: u16,
        retry_after: Option<Duration>,
    },
    Grpc(tonic::Code),
    Stall,
}

impl Verdict {
    pub(crate) fn of(behaviour: &Behaviour) -> Verdict {
        let accept = |keep, delay, rejected| Verdict::Accept {
            keep,
            delay,
            rejected,
        };
        match behaviour {
            Behaviour::Healthy => accept(true, Duration::ZERO, None),
            Behaviour::Discard => accept(false, Duration::ZERO, None),
            Behaviour::Slow(delay) => accept(true, *delay, None),
            Behaviour::PartialSuccess(rejected) => accept(true, Duration::ZERO, Some(*rejected)),
            Behaviour::Refuse {
                status,
                retry_after,
            } => Verdict::Refuse {
                status: *status,
                retry_after: *retry_after,
            },
            Behaviour::GrpcStatus(code) => Verdict::Grpc(*code),
            // A request that raced the switch to down.
            Behaviour::Down => Verdict::Refuse {
                status: 503,
                retry_after: None,
            },
            Behaviour::Stall => Verdict::Stall,
        }
    }
}

/// A running receiver. Dropping it stops the server and joins its thread.
pub struct Receiver {
    protocol: Protocol,
    addr: SocketAddr,
    core: Arc<Core>,
    control: watch::Sender<Control>,
    next_generation: AtomicU64,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A healthy receiver on 127.0.0.1.
    pub fn start(protocol: Protocol) -> Result<Receiver, ReceiverError> {
        Receiver::start_with(Config::new(protocol))
    }

    /// Starts the receiver; it accepts connections as soon as this returns (unless `Down`).
    pub fn start_with(config: Config) -> Result<Receiver, ReceiverError> {
        let listener = std::net::TcpListener::bind(config.bind)
            .map_err(|e| ReceiverError::Bind(config.bind, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ReceiverError::Bind(config.bind, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ReceiverError::Bind(addr, e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ReceiverError::Runtime)?;
        let first = if config.behaviour == Behaviour::Down {
            drop(listener);
            None
        } else {
            let _context = runtime.enter();
            Some(
                tokio::net::TcpListener::from_std(listener)
                    .map_err(|e| ReceiverError::Bind(addr, e))?,
            )
        };
        let core = Arc::new(Core {
            shared: log::Shared::new(
                config.hooks,
                config.keep_requests,
                config.log_attempts,
                config.decode,
            ),
            script: Mutex::new(config.script.into()),
            applied: Mutex::default(),
            applied_changed: Condvar::new(),
        });
        let (control, control_rx) = watch::channel(Control {
            generation: 1,
            behaviour: config.behaviour,
        });
        let (shutdown, stopped) = oneshot::channel();
        let served = Arc::clone(&core);
        let protocol = config.protocol;
        let thread = std::thread::Builder::new()
            .name(format!("otlp-{}-{}", protocol.as_env_value(), addr.port()))
            .spawn(move || {
                runtime.block_on(control_loop(
                    protocol, addr, first, control_rx, served, stopped,
                ))
            })
            .map_err(ReceiverError::Thread)?;
        let receiver = Receiver {
            protocol,
            addr,
            core,
            control,
            next_generation: AtomicU64::new(2),
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        receiver
            .wait_applied(1)
            .map_err(|e| ReceiverError::Start(addr, e))?;
        Ok(receiver)
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Base endpoint, e.g. `http://127.0.0.1:40123` (what `OTEL_EXPORTER_OTLP_ENDPOINT` takes).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full traces URL for HTTP (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` takes it as is).
    pub fn traces_url(&self) -> String {
        format!("http://{}{TRACES_PATH}", self.addr)
    }

    /// The current behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.control.borrow().behaviour.clone()
    }

    /// Switches behaviour and returns once the server applies it: after `Down`, the port is
    /// closed and every HTTP connection is gone; after any other, the port accepts connections.
    /// Panics when the server cannot apply it (e.g. the port was taken meanwhile).
    pub fn set(&self, behaviour: Behaviour) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.control.send_replace(Control {
            generation,
            behaviour,
        });
        if let Err(e) = self.wait_applied(generation) {
            panic!("OTLP receiver on {}: {e}", self.addr);
        }
    }

    /// Behaviours for the next trace requests, in order, before the current one applies again.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.core
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(behaviours);
    }

    fn wait_applied(&self, generation: u64) -> Result<(), String> {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let mut applied = self.core.applied();
        loop {
            if let Some(failure) = &applied.failure {
                return Err(failure.clone());
            }
            if applied.generation >= generation {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{:?} not applied within {APPLY_TIMEOUT:?}",
                    self.behaviour()
                ));
            }
            applied = self
                .core
                .applied_changed
                .wait_timeout(applied, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Every logged request so far, in arrival order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.core.shared.attempts()
    }

    /// Logged requests that arrived at or after `since`.
    pub fn attempts_since(&self, since: Instant) -> Vec<Attempt> {
        let mut attempts = self.attempts();
        attempts.retain(|a| a.at >= since);
        attempts
    }

    /// Blocks until `condition` holds on the logged requests or `timeout` passes: Ok with them,
    /// or Err with the last ones seen.
    pub fn wait_attempts(
        &self,
        timeout: Duration,
        condition: impl FnMut(&[Attempt]) -> bool,
    ) -> Result<Vec<Attempt>, Vec<Attempt>> {
        self.core.shared.wait(timeout, condition)
    }

    /// A handle on the log that outlives borrows of the receiver (e.g. for a task watching it).
    pub fn log(&self) -> AttemptLog {
        AttemptLog(Arc::clone(&self.core))
    }

    pub fn stats(&self) -> Stats {
        self.core.shared.stats()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A cloneable view of a receiver's log.
#[derive(Clone)]
pub struct AttemptLog(Arc<Core>);

impl AttemptLog {
    pub fn attempts(&self) -> Vec<Attempt> {
        self.0.shared.attempts()
    }
}

/// Applies each behaviour in turn: serves while up, and when told to go down stops the server
/// (closing the listener and every HTTP connection) before acknowledging.
async fn control_loop(
    protocol: Protocol,
    addr: SocketAddr,
    mut first: Option<tokio::net::TcpListener>,
    mut control: watch::Receiver<Control>,
    core: Arc<Core>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let current = control.borrow_and_update().clone();
        if current.behaviour == Behaviour::Down {
            first = None;
            core.mark_applied(current.generation);
            tokio::select! {
                _ = &mut stopped => return,
                changed = control.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let listener = match first.take() {
            Some(listener) => listener,
            None => match bind(addr).await {
                Ok(listener) => listener,
                Err(e) => {
                    core.mark_failed(format!("binding {addr}: {e}"));
                    return;
                }
            },
        };
        let server = match protocol {
            Protocol::HttpProtobuf => {
                tokio::spawn(http::serve(listener, Arc::clone(&core), control.clone()))
            }
            Protocol::Grpc => {
                tokio::spawn(grpc::serve(listener, Arc::clone(&core), control.clone()))
            }
        };
        core.mark_applied(current.generation);
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    server.abort();
                    return;
                }
                changed = control.changed() => {
                    if changed.is_err() {
                        server.abort();
                        return;
                    }
                    let next = control.borrow().clone();
                    if next.behaviour == Behaviour::Down {
                        server.abort();
                        let _ = server.await;
                        // The outer loop acknowledges.
                        break;
                    }
                    control.borrow_and_update();
                    core.mark_applied(next.generation);
                }
            }
        }
    }
}

/// Binds `addr`, retrying while the address is still in use.
async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
