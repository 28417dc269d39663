//! OTLP over gRPC: a tonic channel (connected lazily) calling
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` with the already-encoded request
//! bytes ([`RawCodec`]: no message structs on the way out), metadata from the configured headers
//! (the `User-Agent` mark first; tonic appends its own token after it), `grpc-timeout`, and gzip
//! (`grpc-encoding`) when configured. Failures come back as `tonic::Status` and are classified by
//! their code.

use std::time::Duration;

use bytes::{BufMut as _, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::ExportError;
use super::config::{OtlpCompression, OtlpConfig};
use super::otlp::{AttemptFailure, header_map};
use super::retry::classify_grpc_status;

/// The OTLP trace export method.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends encoded `ExportTraceServiceRequest`s over one lazily connected channel.
pub struct GrpcSender {
    client: tonic::client::Grpc<Channel>,
    metadata: MetadataMap,
    timeout: Duration,
    /// The export method ([`EXPORT_PATH`] unless set by [`GrpcSender::with_path`]).
    path: &'static str,
}

/// Without metadata values (they may be credentials).
impl std::fmt::Debug for GrpcSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .metadata
            .keys()
            .map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => k.as_str().to_owned(),
                tonic::metadata::KeyRef::Binary(k) => k.as_str().to_owned(),
            })
            .collect();
        f.debug_struct("GrpcSender")
            .field("metadata", &keys)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GrpcSender {
    /// Builds the channel without connecting: an unreachable endpoint shows up as failed
    /// (retried) exports, not here.
    pub fn new(cfg: &OtlpConfig, headers: &[(String, String)]) -> Result<Self, ExportError> {
        let metadata = MetadataMap::from_headers(header_map(headers)?);
        let shown = crate::telemetry::redact::url(&cfg.endpoint);
        let endpoint = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| ExportError::Endpoint(format!("{shown}: {e}")))?;
        if endpoint.uri().scheme_str() == Some("https") {
            return Err(ExportError::Endpoint(format!(
                "{shown}: OTLP/gRPC over TLS is not supported by this build; use \
                 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf for an https endpoint"
            )));
        }
        let channel = endpoint
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .connect_lazy();
        let mut client = tonic::client::Grpc::new(channel);
        if cfg.compression == Some(OtlpCompression::Gzip) {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(GrpcSender {
            client,
            metadata,
            timeout: cfg.timeout,
            path: EXPORT_PATH,
        })
    }

    /// Calls another OTLP export method (the metrics service); its response has the same
    /// partial-success layout (field 1: rejected count, field 2: message).
    pub fn with_path(mut self, path: &'static str) -> Self {
        self.path = path;
        self
    }

    /// Sends one encoded request; returns the spans the receiver reported as rejected.
    pub async fn send(&mut self, body: Bytes) -> Result<u64, AttemptFailure> {
        self.client
            .ready()
            .await
            .map_err(|e| AttemptFailure::transient(format!("gRPC channel not ready: {e}")))?;
        let mut request = Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(self.timeout);
        let path = PathAndQuery::from_static(self.path);
        match self.client.unary(request, path, RawCodec).await {
            Ok(response) => Ok(rejected_spans(&response.into_inner())),
            Err(status) => Err(failure(&status)),
        }
    }
}

/// The attempt failure for a gRPC status: classified by code; the message is the receiver's
/// text, bounded and with URLs redacted.
fn failure(status: &Status) -> AttemptFailure {
    let text: String = status.message().chars().take(200).collect();
    AttemptFailure {
        class: classify_grpc_status(status),
        message: format!(
            "gRPC export failed with {:?}: {}",
            status.code(),
            crate::telemetry::redact::urls_in(&text)
        ),
    }
}

fn rejected_spans(response: &ExportTraceServiceResponse) -> u64 {
    let Some(partial) = &response.partial_success else {
        return 0;
    };
    super::otlp::warn_partial_success(partial.rejected_spans, &partial.error_message);
    u64::try_from(partial.rejected_spans).unwrap_or(0)
}

/// Request bytes out as they are, `ExportTraceServiceResponse` in.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable export response: {e}")))
    }
}
