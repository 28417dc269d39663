//! The replaced OTLP path, kept for tests only: our span and resource records converted into the
//! OpenTelemetry SDK types (`SpanData`, `Resource`) that `opentelemetry-otlp` consumed, and from
//! there into the `opentelemetry-proto` request it sent. The direct encoder (`encode.rs`) is checked
//! against this output field for field.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;

use crate::model::{AttrValue, ExportItem, ProcessResource, SpanKind, SpanRecord, SpanStatus};

use super::encode::{SCOPE_NAME, SCOPE_VERSION};

/// The instrumentation scope naming this tracer.
pub fn tracer_scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(SCOPE_VERSION)
        .build()
}

fn otel_value(value: &AttrValue) -> Value {
    match value {
        AttrValue::Str(s) => Value::from(s.to_string()),
        AttrValue::Int(i) => Value::I64(*i),
        AttrValue::Bool(b) => Value::Bool(*b),
    }
}

fn unix_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Converts one finished span. An unparseable `trace_state` is dropped (never fails the span).
pub fn span_data(record: &SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let trace_state = match record.trace_state.as_deref() {
        Some(raw) => TraceState::from_str(raw).unwrap_or_else(|error| {
            tracing::debug!(%error, "dropping invalid tracestate on export");
            TraceState::NONE
        }),
        None => TraceState::NONE,
    };
    let flags = if record.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let span_context = SpanContext::new(
        TraceId::from_bytes(record.trace_id),
        SpanId::from_bytes(record.span_id),
        flags,
        false,
        trace_state,
    );
    let kind = match record.kind {
        SpanKind::Server => opentelemetry::trace::SpanKind::Server,
        SpanKind::Client => opentelemetry::trace::SpanKind::Client,
    };
    let status = match &record.status {
        SpanStatus::Unset => Status::Unset,
        SpanStatus::Error { description } => Status::error(description.to_string()),
    };
    let parent_span_id = record
        .parent_span_id
        .map_or(SpanId::INVALID, SpanId::from_bytes);
    SpanData {
        span_context,
        parent_span_id,
        // A SERVER span's parent comes from another process (headers or the peer's CLIENT span);
        // a CLIENT span's parent is the SERVER span of the same process.
        parent_span_is_remote: record.parent_span_id.is_some() && record.kind == SpanKind::Server,
        span_kind: kind,
        name: Cow::Owned(record.name.to_string()),
        start_time: unix_time(record.start_unix_ns),
        end_time: unix_time(record.end_unix_ns.max(record.start_unix_ns)),
        attributes: record
            .attributes
            .iter()
            .map(|a| KeyValue::new(a.key, otel_value(&a.value)))
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// Converts a process resource; `service.name` is added from the dedicated field when missing.
pub fn otel_resource(resource: &ProcessResource) -> Resource {
    let mut attributes: Vec<KeyValue> = resource
        .attributes
        .iter()
        .map(|(key, value)| KeyValue::new(key.to_string(), otel_value(value)))
        .collect();
    if !resource
        .attributes
        .iter()
        .any(|(key, _)| key == "service.name")
    {
        attributes.push(KeyValue::new(
            "service.name",
            resource.service_name.to_string(),
        ));
    }
    Resource::builder_empty()
        .with_attributes(attributes)
        .build()
}

/// The request the replaced path sent for one batch: spans grouped by process resource (same pid
/// and equal contents, in order of first appearance), each group converted through the SDK's
/// `group_spans_by_resource_and_scope`, all groups in one request.
pub fn sdk_request(items: &[ExportItem]) -> ExportTraceServiceRequest {
    let scope = tracer_scope();
    let mut groups: Vec<(Arc<ProcessResource>, Vec<SpanData>)> = Vec::new();
    for item in items {
        let data = span_data(&item.span, &scope);
        match groups
            .iter_mut()
            .find(|(r, _)| r.pid == item.resource.pid && **r == *item.resource)
        {
            Some((_, spans)) => spans.push(data),
            None => groups.push((Arc::clone(&item.resource), vec![data])),
        }
    }
    let mut resource_spans = Vec::new();
    for (resource, spans) in groups {
        let resource = ResourceAttributesWithSchema::from(&otel_resource(&resource));
        resource_spans.extend(group_spans_by_resource_and_scope(spans, &resource));
    }
    ExportTraceServiceRequest { resource_spans }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attribute;
    use opentelemetry::Key;

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: [0x4b; 16],
            span_id: [0x01, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some([9; 8]),
            trace_state: Some("vendor=abc,other=1".into()),
            sampled: true,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_000_250_000_000,
            attributes: smallvec::smallvec![
                Attribute::str("url.path", "/a"),
                Attribute::int("http.response.status_code", 503),
                Attribute {
                    key: "x.flag",
                    value: AttrValue::Bool(true),
                },
            ],
            status: SpanStatus::Error {
                description: "503".into(),
            },
            pid: 42,
        }
    }

    #[test]
    fn span_fields_are_carried_over() {
        let data = span_data(&record(), &tracer_scope());
        assert_eq!(
            data.span_context.trace_id(),
            TraceId::from_bytes([0x4b; 16])
        );
        assert_eq!(
            data.span_context.span_id(),
            SpanId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8])
        );
        assert!(data.span_context.is_sampled());
        assert_eq!(data.span_context.trace_state().get("vendor"), Some("abc"));
        assert_eq!(data.parent_span_id, SpanId::from_bytes([9; 8]));
        assert!(data.parent_span_is_remote);
        assert_eq!(data.span_kind, opentelemetry::trace::SpanKind::Server);
        assert_eq!(data.name, "GET");
        assert_eq!(
            data.end_time.duration_since(data.start_time).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            data.start_time
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
            1_700_000_000_000_000_000
        );
        assert_eq!(data.attributes.len(), 3);
        assert_eq!(data.attributes[1].key.as_str(), "http.response.status_code");
        assert_eq!(data.attributes[1].value, Value::I64(503));
        assert_eq!(data.attributes[2].value, Value::Bool(true));
        assert_eq!(data.status, Status::error("503"));
        assert_eq!(data.instrumentation_scope.name(), "tracer");
    }

    #[test]
    fn root_unsampled_client_span_and_bad_tracestate() {
        let mut r = record();
        r.parent_span_id = None;
        r.sampled = false;
        r.kind = SpanKind::Client;
        r.status = SpanStatus::Unset;
        r.trace_state = Some("not a valid=tracestate==".into());
        r.end_unix_ns = r.start_unix_ns - 1;
        let data = span_data(&r, &tracer_scope());
        assert_eq!(data.parent_span_id, SpanId::INVALID);
        assert!(!data.parent_span_is_remote);
        assert!(!data.span_context.is_sampled());
        assert_eq!(data.span_kind, opentelemetry::trace::SpanKind::Client);
        assert_eq!(data.status, Status::Unset);
        assert_eq!(data.span_context.trace_state().header(), "");
        assert!(data.end_time >= data.start_time, "end never precedes start");
    }

    #[test]
    fn resource_gets_service_name() {
        let res = ProcessResource {
            pid: 7,
            service_name: "checkout".into(),
            attributes: vec![("process.pid".into(), AttrValue::Int(7))],
        };
        let otel = otel_resource(&res);
        assert_eq!(
            otel.get(&Key::new("service.name")),
            Some(Value::from("checkout"))
        );
        assert_eq!(otel.get(&Key::new("process.pid")), Some(Value::I64(7)));

        let res = ProcessResource {
            pid: 7,
            service_name: "ignored".into(),
            attributes: vec![("service.name".into(), AttrValue::Str("explicit".into()))],
        };
        assert_eq!(
            otel_resource(&res).get(&Key::new("service.name")),
            Some(Value::from("explicit"))
        );
    }
}
