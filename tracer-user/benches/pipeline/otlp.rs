//! OTLP protobuf encoding of finished spans, the way the agent's batch exporter does it: batches
//! of at most [`MAX_BATCH`] spans in arrival order, grouped by process resource, each group
//! converted to SDK `SpanData` and encoded as one `ExportTraceServiceRequest`.
//!
//! The agent's own record -> `SpanData` conversion is private to its export module, so the
//! conversion below mirrors it field for field (ids, flags, kind, times, attributes, status).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prost::Message;
use tracer::model::{AttrValue, ExportItem, ProcessResource, SpanKind, SpanRecord, SpanStatus};

/// Spans per export request (the OTLP batch default, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub const MAX_BATCH: usize = 512;

fn value_of(value: &AttrValue) -> Value {
    match value {
        AttrValue::Str(s) => Value::from(s.clone()),
        AttrValue::Int(i) => Value::I64(*i),
        AttrValue::Bool(b) => Value::Bool(*b),
    }
}

fn span_data(record: &SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let flags = if record.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let trace_state = record
        .trace_state
        .as_deref()
        .and_then(|raw| raw.parse::<TraceState>().ok())
        .unwrap_or(TraceState::NONE);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(record.trace_id),
            SpanId::from_bytes(record.span_id),
            flags,
            false,
            trace_state,
        ),
        parent_span_id: record
            .parent_span_id
            .map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: record.parent_span_id.is_some() && record.kind == SpanKind::Server,
        span_kind: match record.kind {
            SpanKind::Server => opentelemetry::trace::SpanKind::Server,
            SpanKind::Client => opentelemetry::trace::SpanKind::Client,
        },
        name: record.name.clone().into(),
        start_time: UNIX_EPOCH + Duration::from_nanos(record.start_unix_ns),
        end_time: UNIX_EPOCH + Duration::from_nanos(record.end_unix_ns.max(record.start_unix_ns)),
        attributes: record
            .attributes
            .iter()
            .map(|a| KeyValue::new(a.key, value_of(&a.value)))
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match &record.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Error { description } => Status::error(description.clone()),
        },
        instrumentation_scope: scope.clone(),
    }
}

fn otel_resource(resource: &ProcessResource) -> Resource {
    let attributes = resource
        .attributes
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), value_of(value)));
    Resource::builder_empty()
        .with_attributes(attributes)
        .build()
}

/// Encodes every span; returns the protobuf bytes produced (so the work cannot be optimised
/// away) and the number of spans encoded.
pub fn encode_all(items: &[ExportItem]) -> (usize, usize) {
    let scope = InstrumentationScope::builder("tracer")
        .with_version("bench")
        .build();
    let mut bytes = 0;
    let mut spans = 0;
    for batch in items.chunks(MAX_BATCH) {
        let mut groups: HashMap<u32, (Arc<ProcessResource>, Vec<SpanData>)> = HashMap::new();
        for item in batch {
            groups
                .entry(item.resource.pid)
                .or_insert_with(|| (Arc::clone(&item.resource), Vec::new()))
                .1
                .push(span_data(&item.span, &scope));
        }
        for (resource, group) in groups.into_values() {
            spans += group.len();
            let resource = ResourceAttributesWithSchema::from(&otel_resource(&resource));
            let request = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(group, &resource),
            };
            bytes += request.encode_to_vec().len();
        }
    }
    (bytes, spans)
}
