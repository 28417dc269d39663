//! `FaultyReceiver`: the one OTLP receiver (the `otlp-receiver` crate) over HTTP/protobuf, with
//! its behaviour switched at run time (healthy, down with its port closed, slow, refusing with a
//! status and `Retry-After`), logging every trace export attempt so that tests can check an
//! exporter's retries and backoff. Metrics exports are accepted and left out of the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use otlp_receiver::{
    Attempt as ExportAttempt, Behaviour, MAX_LOGGED_ATTEMPTS, Stats as FaultyStats,
};
use otlp_receiver::{Config, Hooks, Protocol, Receiver, Signal};

use crate::span::ObservedSpan;
use crate::store::{SpanStore, WaitTimedOut};

/// A running receiver on a fixed 127.0.0.1 port. Dropping it stops the server and joins its
/// thread.
pub struct FaultyReceiver {
    receiver: Receiver,
    store: SpanStore,
}

impl FaultyReceiver {
    /// Starts the receiver on a free port, behaving as `initial` (with `Down`, nothing listens
    /// until the behaviour changes). Panics with the reason when it cannot start.
    pub fn start(initial: Behaviour) -> FaultyReceiver {
        let store = SpanStore::new();
        let spans = store.clone();
        let mut config = Config::new(Protocol::HttpProtobuf);
        config.behaviour = initial;
        config.hooks = Hooks {
            traces: Some(Arc::new(move |request| {
                spans.record(ObservedSpan::from_otlp(request));
            })),
            ..Hooks::default()
        };
        let receiver =
            Receiver::start_with(config).unwrap_or_else(|e| panic!("faulty receiver: {e}"));
        FaultyReceiver { receiver, store }
    }

    pub fn port(&self) -> u16 {
        self.receiver.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.receiver.addr()
    }

    /// Base endpoint, e.g. `http://127.0.0.1:20123`.
    pub fn endpoint(&self) -> String {
        self.receiver.endpoint()
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
        self.receiver.behaviour()
    }

    /// Switches behaviour and returns once the server applies it: after `Down`, the port is
    /// closed and every connection is gone; after any other, the port accepts connections.
    pub fn set(&self, behaviour: Behaviour) {
        self.receiver.set(behaviour);
    }

    /// Spans of requests answered 200 while healthy or slow.
    pub fn spans(&self) -> Vec<ObservedSpan> {
        self.store.spans()
    }

    /// Blocks until `condition` holds on the kept spans or `timeout` passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        condition: impl FnMut(&[ObservedSpan]) -> bool,
    ) -> Result<Vec<ObservedSpan>, WaitTimedOut> {
        self.store.wait_for(timeout, condition)
    }

    /// Every decoded trace export request so far, in arrival order.
    pub fn attempts(&self) -> Vec<ExportAttempt> {
        let mut attempts = self.receiver.attempts();
        attempts.retain(|a| a.signal == Signal::Traces);
        attempts
    }

    /// Decoded trace export requests that arrived at or after `since`.
    pub fn attempts_since(&self, since: Instant) -> Vec<ExportAttempt> {
        let mut attempts = self.attempts();
        attempts.retain(|a| a.at >= since);
        attempts
    }

    pub fn stats(&self) -> FaultyStats {
        self.receiver.stats()
    }
}
