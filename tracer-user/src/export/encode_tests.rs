//! The direct encoder against the replaced SDK path: the same records must decode to the same
//! `ExportTraceServiceRequest` (resource attribute order aside: the SDK's `Resource` keeps them in
//! a hash map), over many generated batches with empty, huge and non-ASCII strings, every
//! attribute type, error statuses, roots and children, tracestate, and resources that share pids.

// The `.into()`s on model strings keep these tests building if the model's string types change.
#![allow(clippy::useless_conversion)]

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::convert::sdk_request;
use super::encode::{SCOPE_NAME, SCOPE_VERSION, TraceEncoder, encode_traces, traces_json};
use crate::model::{
    AttrValue, Attribute, ExportItem, ProcessResource, SpanKind, SpanRecord, SpanStatus,
};

const KEYS: [&str; 8] = [
    "http.request.method",
    "url.path",
    "http.response.status_code",
    "server.address",
    "x.flag",
    "network.peer.port",
    "k",
    "a.very.long.attribute.key.name.that.goes.on.and.on",
];

fn string(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => String::new(),
        1 => "GET".to_string(),
        2 => "héllo ✓ 日本語 \u{1F600} \0 nul".to_string(),
        // Lengths whose varint prefix takes 2 and 3 bytes.
        3 => "x".repeat(rng.random_range(128..20_000)),
        4 => "ü".repeat(rng.random_range(8_192..70_000)),
        _ => format!("/item/{}", rng.random::<u32>()),
    }
}

fn value(rng: &mut StdRng) -> AttrValue {
    match rng.random_range(0..7) {
        0 => AttrValue::Bool(rng.random()),
        1 => AttrValue::Int(0),
        2 => AttrValue::Int(i64::MIN),
        3 => AttrValue::Int(i64::MAX),
        4 => AttrValue::Int(rng.random_range(-1_000_000..1_000_000)),
        _ => AttrValue::Str(string(rng).into()),
    }
}

fn span(rng: &mut StdRng, pid: u32) -> SpanRecord {
    let mut keys: Vec<&'static str> = KEYS.to_vec();
    let count = rng.random_range(0..=KEYS.len());
    let attributes = (0..count)
        .map(|_| {
            let key = keys.swap_remove(rng.random_range(0..keys.len()));
            Attribute {
                key,
                value: value(rng),
            }
        })
        .collect();
    let start: u64 = match rng.random_range(0..4) {
        0 => 0,
        1 => u64::MAX / 2,
        _ => rng.random_range(1_600_000_000_000_000_000..1_800_000_000_000_000_000),
    };
    let end = match rng.random_range(0..4) {
        0 => start.saturating_sub(5),
        1 => 0,
        _ => start.saturating_add(rng.random_range(0..10_000_000_000)),
    };
    let trace_state = match rng.random_range(0..4) {
        0 => Some("vendor=abc,other=1".to_string()),
        1 => Some("k=v".to_string()),
        _ => None,
    };
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    rng.fill(&mut trace_id);
    rng.fill(&mut span_id);
    if rng.random_range(0..10) == 0 {
        trace_id = [0; 16];
    }
    SpanRecord {
        trace_id,
        span_id,
        parent_span_id: rng.random::<bool>().then(|| rng.random()),
        trace_state,
        sampled: rng.random(),
        name: string(rng).into(),
        kind: if rng.random() {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        start_unix_ns: start,
        end_unix_ns: end,
        attributes,
        status: if rng.random_range(0..3) == 0 {
            SpanStatus::Error {
                description: string(rng).into(),
            }
        } else {
            SpanStatus::Unset
        },
        pid,
    }
}

fn resource(rng: &mut StdRng, pid: u32) -> Arc<ProcessResource> {
    let service: String = match rng.random_range(0..3) {
        0 => format!("svc-{pid}"),
        1 => "dé✓".to_string(),
        _ => String::new(),
    };
    let mut attributes = vec![("process.pid".to_string(), AttrValue::Int(i64::from(pid)))];
    if rng.random() {
        attributes.push((
            "service.name".to_string(),
            AttrValue::Str(service.clone().into()),
        ));
    }
    if rng.random() {
        attributes.push(("host.name".to_string(), AttrValue::Str(string(rng).into())));
        attributes.push(("x.bool".to_string(), AttrValue::Bool(rng.random())));
    }
    Arc::new(ProcessResource {
        pid,
        service_name: service.into(),
        attributes,
    })
}

/// A batch over a few processes: some resources are equal copies (separate `Arc`s), some share a
/// pid with different contents (an exec).
fn batch(rng: &mut StdRng) -> Vec<ExportItem> {
    let mut resources: Vec<Arc<ProcessResource>> = Vec::new();
    for _ in 0..rng.random_range(1..6) {
        let pid = rng.random_range(1..4);
        let r = resource(rng, pid);
        if rng.random() {
            resources.push(Arc::new((*r).clone()));
        }
        resources.push(r);
    }
    (0..rng.random_range(0..40))
        .map(|_| {
            let r = &resources[rng.random_range(0..resources.len())];
            ExportItem {
                span: span(rng, r.pid),
                resource: Arc::clone(r),
            }
        })
        .collect()
}

/// Resource attributes in key order (the SDK's `Resource` does not keep insertion order).
fn normalised(mut request: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
    for rs in &mut request.resource_spans {
        if let Some(resource) = &mut rs.resource {
            resource.attributes.sort_by(|a, b| a.key.cmp(&b.key));
        }
    }
    request
}

fn direct(items: &[ExportItem]) -> ExportTraceServiceRequest {
    let mut bytes = Vec::new();
    encode_traces(items, &mut bytes);
    ExportTraceServiceRequest::decode(bytes.as_slice()).expect("our bytes decode")
}

#[test]
fn direct_encoding_matches_the_sdk_path() {
    let mut rng = StdRng::seed_from_u64(0x07e1_9e4c);
    let mut encoder = TraceEncoder::new();
    let mut bytes = Vec::new();
    let mut spans = 0;
    for round in 0..300 {
        let items = batch(&mut rng);
        spans += items.len();
        bytes.clear();
        // One encoder reused across batches, as the exporter does.
        encoder.encode(&items, &mut bytes);
        let ours = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("our bytes decode");
        let theirs = sdk_request(&items);
        assert_eq!(
            ours.resource_spans.len(),
            encoder.last_resource_count(),
            "round {round}"
        );
        assert!(
            normalised(ours) == normalised(theirs),
            "round {round}: direct and SDK requests differ"
        );
    }
    assert!(spans > 3_000, "the generator made spans: {spans}");
}

#[test]
fn the_fields_the_receiver_sees() {
    let resource = Arc::new(ProcessResource {
        pid: 7,
        service_name: "checkout".into(),
        attributes: vec![("process.pid".to_string(), AttrValue::Int(7))],
    });
    let span = SpanRecord {
        trace_id: [0x4b; 16],
        span_id: [1, 2, 3, 4, 5, 6, 7, 8],
        parent_span_id: Some([9; 8]),
        trace_state: Some("vendor=abc".into()),
        sampled: true,
        name: "GET /a".into(),
        kind: SpanKind::Server,
        start_unix_ns: 1_700_000_000_000_000_000,
        end_unix_ns: 1_700_000_000_250_000_000,
        attributes: smallvec::smallvec![
            Attribute::int("http.response.status_code", 503),
            Attribute {
                key: "x.flag",
                value: AttrValue::Bool(false),
            },
        ],
        status: SpanStatus::Error {
            description: "503".into(),
        },
        pid: 7,
    };
    let request = direct(&[ExportItem {
        span: span.clone(),
        resource: Arc::clone(&resource),
    }]);
    let rs = &request.resource_spans[0];
    let keys: Vec<&str> = rs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["process.pid", "service.name"],
        "service.name added when missing"
    );
    let scope = rs.scope_spans[0].scope.as_ref().unwrap();
    assert_eq!(
        (scope.name.as_str(), scope.version.as_str()),
        (SCOPE_NAME, SCOPE_VERSION)
    );
    let s = &rs.scope_spans[0].spans[0];
    assert_eq!(
        s.flags, 0x301,
        "sampled, has-is-remote, is-remote (SERVER with a parent)"
    );
    assert_eq!(s.kind, 2);
    assert_eq!(s.parent_span_id, vec![9; 8]);
    assert_eq!(
        s.status.as_ref().map(|st| (st.code, st.message.as_str())),
        Some((2, "503"))
    );

    let mut client = span;
    client.kind = SpanKind::Client;
    client.sampled = false;
    client.status = SpanStatus::Unset;
    let request = direct(&[ExportItem {
        span: client,
        resource,
    }]);
    let s = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(s.flags, 0x100, "local parent, not sampled");
    assert_eq!(s.kind, 3);
    assert_eq!(
        s.status.as_ref().map(|st| st.code),
        Some(0),
        "status present, UNSET"
    );
}

#[test]
fn groups_follow_resources_not_just_pids() {
    let make = |pid: u32, name: &str| {
        Arc::new(ProcessResource {
            pid,
            service_name: name.into(),
            attributes: vec![(
                "service.name".into(),
                AttrValue::Str(name.to_string().into()),
            )],
        })
    };
    let item = |r: &Arc<ProcessResource>, byte: u8| {
        let mut rng = StdRng::seed_from_u64(u64::from(byte));
        let mut span = span(&mut rng, r.pid);
        span.span_id = [byte; 8];
        ExportItem {
            span,
            resource: Arc::clone(r),
        }
    };
    let (a, a_copy, a_after_exec, b) = (make(1, "a"), make(1, "a"), make(1, "a2"), make(2, "b"));
    let request = direct(&[
        item(&a, 1),
        item(&b, 2),
        item(&a_copy, 3),
        item(&a_after_exec, 4),
        item(&b, 5),
    ]);
    let summary: Vec<(String, Vec<u8>)> = request
        .resource_spans
        .iter()
        .map(|rs| {
            let service = rs.resource.as_ref().unwrap().attributes[0]
                .value
                .as_ref()
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap();
            let ids = rs.scope_spans[0]
                .spans
                .iter()
                .map(|s| s.span_id[0])
                .collect();
            (service, ids)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a".to_string(), vec![1, 3]),
            ("b".to_string(), vec![2, 5]),
            ("a2".to_string(), vec![4]),
        ]
    );
}

#[test]
fn an_empty_batch_is_an_empty_request() {
    let mut bytes = vec![1, 2, 3];
    encode_traces(&[], &mut bytes);
    assert_eq!(bytes, [1, 2, 3], "appends nothing");
}

#[test]
fn json_follows_the_otlp_json_rules() {
    let mut rng = StdRng::seed_from_u64(3);
    let resource = resource(&mut rng, 9);
    let mut span = span(&mut rng, 9);
    span.trace_id = [0xab; 16];
    span.span_id = [0x0c; 8];
    span.kind = SpanKind::Server;
    span.start_unix_ns = 1_700_000_000_000_000_001;
    span.end_unix_ns = 1_700_000_000_000_000_002;
    span.attributes = smallvec::smallvec![Attribute::int("http.response.status_code", 503)];
    span.status = SpanStatus::Error {
        description: "boom".into(),
    };
    let items = [ExportItem { span, resource }];
    let mut bytes = Vec::new();
    encode_traces(&items, &mut bytes);
    let json = traces_json(&bytes).expect("json");
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let s = &value["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(s["traceId"], "abababababababababababababababab", "{s}");
    assert_eq!(s["spanId"], "0c0c0c0c0c0c0c0c");
    assert_eq!(s["kind"], 2, "enums as integers");
    assert_eq!(
        s["startTimeUnixNano"], "1700000000000000001",
        "64-bit as strings"
    );
    assert_eq!(s["attributes"][0]["value"]["intValue"], "503");
    assert_eq!(s["status"]["code"], 2);
    assert_eq!(s["status"]["message"], "boom");
    let back: ExportTraceServiceRequest = serde_json::from_slice(&json).unwrap();
    assert!(
        back == direct(&items),
        "JSON and protobuf carry the same request"
    );
}

/// Every attribute kind, on both sides of the encoder's short `KeyValue` path (a `KeyValue`
/// under 128 bytes, every length one byte) and its general path, decodes to the values given.
#[test]
fn every_attribute_kind_decodes_to_its_value() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    // Key "k" and a 120-byte string make a 127-byte KeyValue (short path); 121 bytes make 128.
    let short_limit = "s".repeat(120);
    let long_limit = "l".repeat(121);
    let huge = "h".repeat(20_000);
    let attributes = vec![
        Attribute::str("http.request.method", "GET"),
        Attribute::str("k", short_limit),
        Attribute::str("k", long_limit),
        Attribute::str("url.path", huge.clone()),
        Attribute::str("url.query", ""),
        Attribute::str("", "empty key"),
        Attribute::int("server.port", 8080),
        Attribute::int("zero", 0),
        Attribute::int("neg", -1),
        Attribute::int("min", i64::MIN),
        Attribute::int("max", i64::MAX),
        Attribute::int("", 5),
        Attribute {
            key: "t",
            value: AttrValue::Bool(true),
        },
        Attribute {
            key: "f",
            value: AttrValue::Bool(false),
        },
        Attribute {
            key: "a.very.long.attribute.key.name.that.goes.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on",
            value: AttrValue::Bool(true),
        },
    ];
    let expected: Vec<(String, Value)> = attributes
        .iter()
        .map(|a| {
            let value = match &a.value {
                AttrValue::Str(s) => Value::StringValue(s.to_string()),
                AttrValue::Int(i) => Value::IntValue(*i),
                AttrValue::Bool(b) => Value::BoolValue(*b),
            };
            (a.key.to_string(), value)
        })
        .collect();
    let resource = Arc::new(ProcessResource {
        pid: 3,
        service_name: "svc".into(),
        attributes: vec![
            ("process.pid".to_string(), AttrValue::Int(3)),
            ("x.bool".to_string(), AttrValue::Bool(true)),
            ("host.name".to_string(), AttrValue::Str(huge.clone().into())),
        ],
    });
    let span = SpanRecord {
        trace_id: [7; 16],
        span_id: [8; 8],
        parent_span_id: None,
        trace_state: None,
        sampled: true,
        name: "GET".into(),
        kind: SpanKind::Client,
        start_unix_ns: 1,
        end_unix_ns: 2,
        attributes: attributes.into(),
        status: SpanStatus::Unset,
        pid: 3,
    };
    let request = direct(&[ExportItem { span, resource }]);
    let rs = &request.resource_spans[0];
    let decoded: Vec<(String, Value)> = rs.scope_spans[0].spans[0]
        .attributes
        .iter()
        .map(|kv| {
            let value = kv.value.as_ref().and_then(|v| v.value.clone());
            (kv.key.clone(), value.expect("every attribute has a value"))
        })
        .collect();
    assert_eq!(decoded, expected);
    let resource: Vec<(String, Option<Value>)> = rs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().and_then(|v| v.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        resource,
        [
            ("process.pid".to_string(), Some(Value::IntValue(3))),
            ("x.bool".to_string(), Some(Value::BoolValue(true))),
            ("host.name".to_string(), Some(Value::StringValue(huge))),
            (
                "service.name".to_string(),
                Some(Value::StringValue("svc".into()))
            ),
        ]
    );
}
