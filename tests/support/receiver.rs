//! `OtlpReceiver`: an in-process OTLP trace endpoint (gRPC or HTTP/protobuf) on a 127.0.0.1
//! ephemeral port, served by its own thread and runtime so that tests stay synchronous.

use std::net::{SocketAddr, TcpListener};

use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::span::ObservedSpan;
use crate::store::{SpanStore, StoreStats, WaitTimedOut};
use crate::{grpc_receiver, http_receiver};

/// The wire protocol a receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL` / `--otlp-protocol` selecting it.
    pub fn as_env_value(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Why a receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("binding the receiver's address: {0}")]
    Bind(#[source] std::io::Error),
    #[error("building the receiver runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("spawning the receiver thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running receiver. Dropping it stops the server and joins its thread.
pub struct OtlpReceiver {
    protocol: OtlpProtocol,
    addr: SocketAddr,
    store: SpanStore,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts a receiver on 127.0.0.1; it accepts connections as soon as this returns.
    pub fn start(protocol: OtlpProtocol) -> Result<Self, ReceiverError> {
        Self::start_on(protocol, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a receiver on `bind` (e.g. a container network's gateway, for an agent in a pod).
    pub fn start_on(protocol: OtlpProtocol, bind: SocketAddr) -> Result<Self, ReceiverError> {
        let listener = TcpListener::bind(bind).map_err(ReceiverError::Bind)?;
        listener
            .set_nonblocking(true)
            .map_err(ReceiverError::Bind)?;
        let addr = listener.local_addr().map_err(ReceiverError::Bind)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ReceiverError::Runtime)?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(ReceiverError::Bind)?
        };
        let store = SpanStore::new();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let served_store = store.clone();
        let thread = std::thread::Builder::new()
            .name(format!("otlp-{}-{}", protocol.as_env_value(), addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let stopped = async {
                        // A dropped sender also means stop.
                        let _ = stopped.await;
                    };
                    match protocol {
                        OtlpProtocol::Grpc => {
                            grpc_receiver::serve(listener, served_store, stopped).await
                        }
                        OtlpProtocol::HttpProtobuf => {
                            http_receiver::serve(listener, served_store, stopped).await
                        }
                    }
                });
            })
            .map_err(ReceiverError::Thread)?;
        Ok(OtlpReceiver {
            protocol,
            addr,
            store,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `start`, panicking with the reason on failure (for tests).
    pub fn start_or_panic(protocol: OtlpProtocol) -> Self {
        Self::start(protocol).unwrap_or_else(|e| panic!("OTLP {protocol:?} receiver: {e}"))
    }

    pub fn protocol(&self) -> OtlpProtocol {
        self.protocol
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base endpoint, e.g. `http://127.0.0.1:40123` (what `OTEL_EXPORTER_OTLP_ENDPOINT` takes).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full traces URL for HTTP (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` takes it as is).
    pub fn traces_url(&self) -> String {
        format!("http://{}{}", self.addr, http_receiver::TRACES_PATH)
    }

    /// Environment that points an exporter at this receiver, with a short batch delay.
    pub fn exporter_env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), self.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
                self.protocol.as_env_value().to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
        ]
    }

    /// Everything received so far.
    pub fn spans(&self) -> Vec<ObservedSpan> {
        self.store.spans()
    }

    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// Every OTLP metrics export request received so far (oldest first).
    pub fn metric_requests(
        &self,
    ) -> Vec<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest> {
        self.store.metric_requests()
    }

    /// Blocks until `condition` holds on the metrics requests received or `timeout` passes.
    pub fn wait_for_metrics(
        &self,
        timeout: Duration,
        condition: impl FnMut(
            &[opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest],
        ) -> bool,
    ) -> Result<
        Vec<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>,
        Vec<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>,
    > {
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

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
