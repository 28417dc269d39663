//! The OTLP/gRPC side of the receiver: a real `TraceServiceServer` that stores what it is sent.

use std::future::Future;

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
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::span::ObservedSpan;
use crate::store::SpanStore;

/// Largest accepted export message.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

struct TraceCollector {
    store: SpanStore,
}

#[tonic::async_trait]
impl TraceService for TraceCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.store
            .record(ObservedSpan::from_otlp(request.get_ref()));
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct MetricsCollector {
    store: SpanStore,
}

#[tonic::async_trait]
impl MetricsService for MetricsCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.store.record_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves OTLP/gRPC on `listener` until `stopped` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    store: SpanStore,
    stopped: impl Future<Output = ()>,
) {
    let metrics = MetricsServiceServer::new(MetricsCollector {
        store: store.clone(),
    })
    .accept_compressed(CompressionEncoding::Gzip)
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let service = TraceServiceServer::new(TraceCollector { store })
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let result = Server::builder()
        .add_service(service)
        .add_service(metrics)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), stopped)
        .await;
    if let Err(e) = result {
        eprintln!("OTLP gRPC receiver stopped with an error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use crate::receiver::{OtlpProtocol, OtlpReceiver};
    use crate::span::{AttrValue, ObservedKind};
    use crate::test_data::sample_request;

    #[test]
    fn grpc_export_is_collected_with_its_resource() {
        let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
        let endpoint = receiver.endpoint();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut client = TraceServiceClient::connect(endpoint)
                .await
                .expect("connect to receiver");
            client
                .export(sample_request("svc-a", 7))
                .await
                .expect("first export");
            let second =
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        resource: Some(Resource::default()),
                        scope_spans: vec![ScopeSpans {
                            spans: vec![Span {
                                name: "POST".to_owned(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                };
            client.export(second).await.expect("second export");
        });
        let spans = receiver
            .wait_for(Duration::from_secs(10), |spans| spans.len() == 2)
            .expect("two spans collected");
        assert_eq!(spans[0].service_name(), Some("svc-a"));
        assert_eq!(spans[0].resource_int("process.pid"), Some(7));
        assert_eq!(spans[0].kind, ObservedKind::Server);
        assert_eq!(
            spans[0].attr("http.request.method"),
            Some(&AttrValue::from("GET"))
        );
        assert_eq!(spans[1].name, "POST");
        assert_eq!(spans[1].service_name(), None);
        assert_eq!(receiver.stats().export_requests, 2);
    }

    #[test]
    fn grpc_gzip_export_is_collected() {
        let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
        let endpoint = receiver.endpoint();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut client = TraceServiceClient::connect(endpoint)
                .await
                .expect("connect to receiver")
                .send_compressed(tonic::codec::CompressionEncoding::Gzip);
            client
                .export(sample_request("zipped", 1))
                .await
                .expect("export");
        });
        let spans = receiver.spans();
        assert_eq!(
            spans.len(),
            1,
            "the export call returned, so the span must be stored"
        );
        assert_eq!(spans[0].service_name(), Some("zipped"));
    }
}
