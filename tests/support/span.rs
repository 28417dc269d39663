//! `ObservedSpan`: one span as the tests see it, whichever way it left the agent (OTLP over gRPC,
//! OTLP over HTTP, or a `--format json` line), with its resource attributes beside it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use serde_json::Value as Json;

/// An attribute value as received.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    /// Arrays, maps and bytes, rendered as text (the tracer does not emit them).
    Other(String),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => write!(f, "{s:?}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Double(d) => write!(f, "{d}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Other(o) => write!(f, "<{o}>"),
        }
    }
}

impl From<&str> for AttrValue {
    fn from(value: &str) -> Self {
        AttrValue::Str(value.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(value: String) -> Self {
        AttrValue::Str(value)
    }
}

impl From<i64> for AttrValue {
    fn from(value: i64) -> Self {
        AttrValue::Int(value)
    }
}

impl From<u16> for AttrValue {
    fn from(value: u16) -> Self {
        AttrValue::Int(i64::from(value))
    }
}

impl From<u32> for AttrValue {
    fn from(value: u32) -> Self {
        AttrValue::Int(i64::from(value))
    }
}

impl From<bool> for AttrValue {
    fn from(value: bool) -> Self {
        AttrValue::Bool(value)
    }
}

/// Span kind as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// Span status code as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedStatus {
    Unset,
    Ok,
    Error,
}

/// One received span and the resource of the process that produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits; `None` for a root span.
    pub parent_span_id: Option<String>,
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: ObservedKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: ObservedStatus,
    pub status_description: String,
    pub attributes: BTreeMap<String, AttrValue>,
    pub resource: BTreeMap<String, AttrValue>,
}

impl ObservedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(AttrValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        match self.resource.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn resource_int(&self, key: &str) -> Option<i64> {
        match self.resource.get(key) {
            Some(AttrValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// `service.name` of the producing process.
    pub fn service_name(&self) -> Option<&str> {
        self.resource_str("service.name")
    }

    /// End minus start (zero when the end is before the start).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_ns.saturating_sub(self.start_unix_ns))
    }

    /// One line describing the span, for assertion messages.
    pub fn summary(&self) -> String {
        let attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{kind:?} {name:?} trace={trace} span={span} parent={parent} status={status:?}{desc} \
             dur={dur:?} service={service:?} pid={pid:?} [{attrs}]",
            kind = self.kind,
            name = self.name,
            trace = self.trace_id,
            span = self.span_id,
            parent = self.parent_span_id.as_deref().unwrap_or("-"),
            status = self.status,
            desc = if self.status_description.is_empty() {
                String::new()
            } else {
                format!("({})", self.status_description)
            },
            dur = self.duration(),
            service = self.service_name(),
            pid = self.resource_int("process.pid"),
            attrs = attrs.join(" "),
        )
    }

    /// Every span of an OTLP export request, each carrying its `ResourceSpans`' resource.
    pub fn from_otlp(request: &ExportTraceServiceRequest) -> Vec<ObservedSpan> {
        let mut out = Vec::new();
        for resource_spans in &request.resource_spans {
            let resource = resource_spans
                .resource
                .as_ref()
                .map(|r| attributes_from_otlp(&r.attributes))
                .unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                for s in &scope_spans.spans {
                    let status = s.status.as_ref();
                    out.push(ObservedSpan {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: (!s.parent_span_id.is_empty())
                            .then(|| hex(&s.parent_span_id)),
                        trace_state: (!s.trace_state.is_empty()).then(|| s.trace_state.clone()),
                        name: s.name.clone(),
                        kind: kind_from_otlp(s.kind),
                        start_unix_ns: s.start_time_unix_nano,
                        end_unix_ns: s.end_time_unix_nano,
                        status: status
                            .map_or(ObservedStatus::Unset, |st| status_from_otlp(st.code)),
                        status_description: status.map(|st| st.message.clone()).unwrap_or_default(),
                        attributes: attributes_from_otlp(&s.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        out
    }

    /// Parses one line of the agent's `--format json` output.
    pub fn from_json_line(line: &str) -> Result<ObservedSpan, SpanJsonError> {
        let value: Json =
            serde_json::from_str(line).map_err(|e| SpanJsonError::Syntax(e.to_string()))?;
        let object = value.as_object().ok_or(SpanJsonError::NotAnObject)?;
        let field = |name: &'static str| object.get(name).ok_or(SpanJsonError::Missing(name));
        let string = |name: &'static str| {
            field(name)?
                .as_str()
                .map(str::to_owned)
                .ok_or(SpanJsonError::WrongType(name))
        };
        let number =
            |name: &'static str| field(name)?.as_u64().ok_or(SpanJsonError::WrongType(name));

        let parent_span_id = match field("parent_span_id")? {
            Json::Null => None,
            Json::String(s) => Some(s.clone()),
            _ => return Err(SpanJsonError::WrongType("parent_span_id")),
        };
        let kind = match string("kind")?.to_ascii_uppercase().as_str() {
            "SERVER" => ObservedKind::Server,
            "CLIENT" => ObservedKind::Client,
            "INTERNAL" => ObservedKind::Internal,
            "PRODUCER" => ObservedKind::Producer,
            "CONSUMER" => ObservedKind::Consumer,
            _ => return Err(SpanJsonError::WrongType("kind")),
        };
        let status_object = field("status")?
            .as_object()
            .ok_or(SpanJsonError::WrongType("status"))?;
        let status = match status_object.get("code") {
            Some(Json::String(code)) => {
                status_from_name(code).ok_or(SpanJsonError::WrongType("status.code"))?
            }
            Some(Json::Number(n)) => status_from_otlp(
                n.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or(SpanJsonError::WrongType("status.code"))?,
            ),
            _ => return Err(SpanJsonError::Missing("status.code")),
        };
        let status_description = match status_object.get("description") {
            None | Some(Json::Null) => String::new(),
            Some(Json::String(s)) => s.clone(),
            Some(_) => return Err(SpanJsonError::WrongType("status.description")),
        };
        let start_unix_ns = number("start_unix_ns")?;
        let end_unix_ns = number("end_unix_ns")?;
        let duration_ns = number("duration_ns")?;
        if end_unix_ns.checked_sub(start_unix_ns) != Some(duration_ns) {
            return Err(SpanJsonError::InconsistentDuration {
                start_unix_ns,
                end_unix_ns,
                duration_ns,
            });
        }
        let trace_state = match object.get("trace_state") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(SpanJsonError::WrongType("trace_state")),
        };
        Ok(ObservedSpan {
            trace_id: string("trace_id")?,
            span_id: string("span_id")?,
            parent_span_id,
            trace_state,
            name: string("name")?,
            kind,
            start_unix_ns,
            end_unix_ns,
            status,
            status_description,
            attributes: attributes_from_json(field("attributes")?, "attributes")?,
            resource: attributes_from_json(field("resource")?, "resource")?,
        })
    }
}

/// Why a JSON line is not a span.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpanJsonError {
    #[error("not JSON: {0}")]
    Syntax(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{0}` has the wrong type or value")]
    WrongType(&'static str),
    #[error(
        "duration_ns {duration_ns} != end_unix_ns {end_unix_ns} - start_unix_ns {start_unix_ns}"
    )]
    InconsistentDuration {
        start_unix_ns: u64,
        end_unix_ns: u64,
        duration_ns: u64,
    },
}

fn attributes_from_json(
    value: &Json,
    field: &'static str,
) -> Result<BTreeMap<String, AttrValue>, SpanJsonError> {
    let object = value.as_object().ok_or(SpanJsonError::WrongType(field))?;
    Ok(object
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Json::String(s) => AttrValue::Str(s.clone()),
                Json::Bool(b) => AttrValue::Bool(*b),
                Json::Number(n) => match n.as_i64() {
                    Some(i) => AttrValue::Int(i),
                    None => AttrValue::Double(n.as_f64().unwrap_or(f64::NAN)),
                },
                other => AttrValue::Other(other.to_string()),
            };
            (k.clone(), v)
        })
        .collect())
}

fn attributes_from_otlp(attributes: &[KeyValue]) -> BTreeMap<String, AttrValue> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), value_from_otlp(kv.value.as_ref())))
        .collect()
}

fn value_from_otlp(value: Option<&AnyValue>) -> AttrValue {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
        Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
        Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
        Some(other) => AttrValue::Other(format!("{other:?}")),
        None => AttrValue::Other("empty".to_owned()),
    }
}

fn kind_from_otlp(kind: i32) -> ObservedKind {
    match span::SpanKind::try_from(kind) {
        Ok(span::SpanKind::Internal) => ObservedKind::Internal,
        Ok(span::SpanKind::Server) => ObservedKind::Server,
        Ok(span::SpanKind::Client) => ObservedKind::Client,
        Ok(span::SpanKind::Producer) => ObservedKind::Producer,
        Ok(span::SpanKind::Consumer) => ObservedKind::Consumer,
        Ok(span::SpanKind::Unspecified) | Err(_) => ObservedKind::Unspecified,
    }
}

fn status_from_otlp(code: i32) -> ObservedStatus {
    match status::StatusCode::try_from(code) {
        Ok(status::StatusCode::Ok) => ObservedStatus::Ok,
        Ok(status::StatusCode::Error) => ObservedStatus::Error,
        Ok(status::StatusCode::Unset) | Err(_) => ObservedStatus::Unset,
    }
}

/// Accepts `ERROR`, `Error`, `STATUS_CODE_ERROR` and the like.
fn status_from_name(name: &str) -> Option<ObservedStatus> {
    let upper = name.to_ascii_uppercase();
    match upper.strip_prefix("STATUS_CODE_").unwrap_or(&upper) {
        "UNSET" => Some(ObservedStatus::Unset),
        "OK" => Some(ObservedStatus::Ok),
        "ERROR" => Some(ObservedStatus::Error),
        _ => None,
    }
}

/// Wall-clock nanoseconds since the Unix epoch (to bracket span timestamps).
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Lowercase hex of a byte slice.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn otlp_spans_keep_their_own_resource() {
        let span = |id: u8, kind: span::SpanKind| Span {
            trace_id: vec![0xab; 16],
            span_id: vec![id; 8],
            parent_span_id: if id == 1 { Vec::new() } else { vec![1; 8] },
            name: "GET".to_owned(),
            kind: kind as i32,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 3_500,
            attributes: vec![kv("server.port", any_value::Value::IntValue(8080))],
            status: Some(Status {
                message: "boom".to_owned(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        };
        let resource_spans = |service: &str, spans: Vec<Span>| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue(service.to_owned()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                resource_spans("curl", vec![span(1, span::SpanKind::Client)]),
                resource_spans("server", vec![span(2, span::SpanKind::Server)]),
            ],
        };
        let spans = ObservedSpan::from_otlp(&request);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].service_name(), Some("curl"));
        assert_eq!(spans[0].kind, ObservedKind::Client);
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[0].trace_id, "ab".repeat(16));
        assert_eq!(spans[1].service_name(), Some("server"));
        assert_eq!(spans[1].kind, ObservedKind::Server);
        assert_eq!(spans[1].parent_span_id.as_deref(), Some("0101010101010101"));
        assert_eq!(spans[1].attr_int("server.port"), Some(8080));
        assert_eq!(spans[1].status, ObservedStatus::Error);
        assert_eq!(spans[1].status_description, "boom");
        assert_eq!(spans[1].duration(), Duration::from_nanos(2_500));
    }

    #[test]
    fn json_line_parses_into_the_same_shape() {
        let line = r#"{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331",
            "parent_span_id":null,"name":"GET","kind":"SERVER","start_unix_ns":10,"end_unix_ns":25,
            "duration_ns":15,"status":{"code":"ERROR","description":"503"},
            "attributes":{"url.path":"/x","server.port":8080,"tls":false},
            "resource":{"service.name":"nginx","process.pid":42}}"#
            .replace('\n', "");
        let span = ObservedSpan::from_json_line(&line).expect("valid span line");
        assert_eq!(span.kind, ObservedKind::Server);
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.status, ObservedStatus::Error);
        assert_eq!(span.status_description, "503");
        assert_eq!(span.attr_str("url.path"), Some("/x"));
        assert_eq!(span.attr_int("server.port"), Some(8080));
        assert_eq!(span.attr("tls"), Some(&AttrValue::Bool(false)));
        assert_eq!(span.resource_int("process.pid"), Some(42));
        assert_eq!(span.service_name(), Some("nginx"));
    }

    #[test]
    fn json_line_with_wrong_duration_or_missing_field_is_rejected() {
        let good =
            r#"{"trace_id":"a","span_id":"b","parent_span_id":"c","name":"GET","kind":"CLIENT",
            "start_unix_ns":10,"end_unix_ns":25,"duration_ns":15,"status":{"code":"UNSET"},
            "attributes":{},"resource":{}}"#
                .replace('\n', "");
        assert!(ObservedSpan::from_json_line(&good).is_ok());
        let bad_duration = good.replace("\"duration_ns\":15", "\"duration_ns\":16");
        assert!(matches!(
            ObservedSpan::from_json_line(&bad_duration),
            Err(SpanJsonError::InconsistentDuration { .. })
        ));
        let no_kind = good.replace("\"kind\":\"CLIENT\",", "");
        assert_eq!(
            ObservedSpan::from_json_line(&no_kind),
            Err(SpanJsonError::Missing("kind"))
        );
        assert_eq!(
            ObservedSpan::from_json_line("[1]"),
            Err(SpanJsonError::NotAnObject)
        );
    }
}
