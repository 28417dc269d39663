//! `OtlpReceiver`: the one OTLP receiver (the `otlp-receiver` crate, gRPC or HTTP/protobuf, on a
//! 127.0.0.1 ephemeral port, its own thread and runtime) keeping what it accepts as
//! [`ObservedSpan`]s and metrics requests in a [`SpanStore`], so that tests stay synchronous.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use otlp_receiver::{Config, Hooks, Receiver};
pub use otlp_receiver::{Protocol as OtlpProtocol, ReceiverError};

use crate::span::ObservedSpan;
use crate::store::{SpanStore, StoreStats, WaitTimedOut};

/// A running receiver. Dropping it stops the server and joins its thread.
pub struct OtlpReceiver {
    receiver: Receiver,
    store: SpanStore,
}

impl OtlpReceiver {
    /// Starts a receiver on 127.0.0.1; it accepts connections as soon as this returns.
    pub fn start(protocol: OtlpProtocol) -> Result<Self, ReceiverError> {
        Self::start_on(protocol, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a receiver on `bind` (e.g. a container network's gateway, for an agent in a pod).
    pub fn start_on(protocol: OtlpProtocol, bind: SocketAddr) -> Result<Self, ReceiverError> {
        let store = SpanStore::new();
        let (spans, metrics) = (store.clone(), store.clone());
        let mut config = Config::new(protocol);
        config.bind = bind;
        // Spans are kept in the store; an attempt log of every flood would only cost memory.
        config.log_attempts = false;
        config.hooks = Hooks {
            traces: Some(Arc::new(move |request| {
                spans.record(ObservedSpan::from_otlp(request));
            })),
            metrics: Some(Arc::new(move |request| {
                metrics.record_metrics(request.clone());
            })),
            raw: None,
        };
        Ok(OtlpReceiver {
            receiver: Receiver::start_with(config)?,
            store,
        })
    }

    /// `start`, panicking with the reason on failure (for tests).
    pub fn start_or_panic(protocol: OtlpProtocol) -> Self {
        Self::start(protocol).unwrap_or_else(|e| panic!("OTLP {protocol:?} receiver: {e}"))
    }

    pub fn protocol(&self) -> OtlpProtocol {
        self.receiver.protocol()
    }

    pub fn addr(&self) -> SocketAddr {
        self.receiver.addr()
    }

    /// Base endpoint, e.g. `http://127.0.0.1:40123` (what `OTEL_EXPORTER_OTLP_ENDPOINT` takes).
    pub fn endpoint(&self) -> String {
        self.receiver.endpoint()
    }

    /// The full traces URL for HTTP (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` takes it as is).
    pub fn traces_url(&self) -> String {
        self.receiver.traces_url()
    }

    /// Environment that points an exporter at this receiver, with a short batch delay.
    pub fn exporter_env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), self.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
                self.protocol().as_env_value().to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
        ]
    }

    /// Everything received so far.
    pub fn spans(&self) -> Vec<ObservedSpan> {
        self.store.spans()
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            rejected_requests: self.receiver.stats().malformed,
            ..self.store.stats()
        }
    }

    /// Every OTLP metrics export request received so far (oldest first).
    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.store.metric_requests()
    }

    /// Blocks until `condition` holds on the metrics requests received or `timeout` passes.
    pub fn wait_for_metrics(
        &self,
        timeout: Duration,
        condition: impl FnMut(&[ExportMetricsServiceRequest]) -> bool,
    ) -> Result<Vec<ExportMetricsServiceRequest>, Vec<ExportMetricsServiceRequest>> {
        self.store.wait_for_metrics(timeout, condition)
    }

    /// Blocks until `condition` holds on the received spans or `timeout` passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        condition: impl FnMut(&[ObservedSpan]) -> bool,
    ) -> Result<Vec<ObservedSpan>, WaitTimedOut> {
        self.store.wait_for(timeout, condition)
    }
}
