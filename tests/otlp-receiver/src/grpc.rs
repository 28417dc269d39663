//! OTLP/gRPC: the trace and metrics services (gzip accepted), answering per the behaviour.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::log::{Answered, Export, Signal};
use crate::{Control, Core, MAX_BODY_BYTES, Verdict};

#[derive(Clone)]
struct Collector {
    core: Arc<Core>,
    control: watch::Receiver<Control>,
}

fn metadata(request: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    request
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The gRPC code OTLP exporters treat as they treat this HTTP status.
fn code_of_status(status: u16) -> tonic::Code {
    match status {
        429 => tonic::Code::ResourceExhausted,
        502..=504 => tonic::Code::Unavailable,
        400 => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let shared = &self.core.shared;
        shared.count_request(Signal::Traces);
        let headers = metadata(request.metadata());
        let request = request.into_inner();
        if let Some(raw) = &shared.hooks.raw {
            raw(Signal::Traces, &request.encode_to_vec());
        }
        let export = if shared.decode {
            Export::Traces(request)
        } else {
            Export::Undecoded(Signal::Traces)
        };
        let mut answered = Answered {
            path: String::new(),
            headers,
            status: 200,
            grpc_code: None,
            accepted: false,
            keep: false,
        };
        match Verdict::of(&self.core.next_behaviour(&self.control)) {
            Verdict::Accept {
                keep,
                delay,
                rejected,
            } => {
                answered.accepted = true;
                answered.keep = keep;
                shared.log_attempt(&answered, &export);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                shared.deliver(&answered, &export);
                Ok(tonic::Response::new(ExportTraceServiceResponse {
                    partial_success: rejected.map(|rejected| ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: "scripted".into(),
                    }),
                }))
            }
            Verdict::Refuse { status, .. } => {
                let code = code_of_status(status);
                answered.grpc_code = Some(code);
                shared.record(&answered, &export);
                Err(tonic::Status::new(code, "refused on purpose"))
            }
            Verdict::Grpc(code) => {
                answered.grpc_code = Some(code);
                shared.record(&answered, &export);
                Err(tonic::Status::new(code, "scripted failure"))
            }
            Verdict::Stall => {
                shared.record(&answered, &export);
                std::future::pending::<()>().await;
                unreachable!("a pending future never completes")
            }
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let shared = &self.core.shared;
        shared.count_request(Signal::Metrics);
        let headers = metadata(request.metadata());
        let request = request.into_inner();
        if let Some(raw) = &shared.hooks.raw {
            raw(Signal::Metrics, &request.encode_to_vec());
        }
        let export = if shared.decode {
            Export::Metrics(request)
        } else {
            Export::Undecoded(Signal::Metrics)
        };
        let answered = Answered {
            path: String::new(),
            headers,
            status: 200,
            grpc_code: None,
            accepted: true,
            keep: true,
        };
        shared.record(&answered, &export);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves both services until aborted.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    core: Arc<Core>,
    control: watch::Receiver<Control>,
) {
    let collector = Collector { core, control };
    let traces = TraceServiceServer::new(collector.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_BODY_BYTES);
    let metrics = MetricsServiceServer::new(collector)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_BODY_BYTES);
    let _ = Server::builder()
        .add_service(traces)
        .add_service(metrics)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await;
}
