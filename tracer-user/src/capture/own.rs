//! The agent's own footprint, so it never traces itself: the pid namespace by which the kernel
//! recognises the agent, the `User-Agent` product token on every request the agent sends, and
//! which exchanges are telemetry (the agent's own, or any OTLP export) rather than application
//! traffic.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::model::{Header, HttpRequest};

/// Product name of the `User-Agent` token on every request the agent sends (OTLP over HTTP and
/// gRPC, Kubernetes API). Any tracer, of any version, on any node drops exchanges carrying it.
pub const USER_AGENT_PRODUCT: &str = "tracer-agent";

/// This agent's product token, `tracer-agent/<version>`.
pub fn user_agent() -> String {
    format!("{USER_AGENT_PRODUCT}/{}", env!("CARGO_PKG_VERSION"))
}

/// The `User-Agent` to send: our token first, then the user's own value when one was configured.
pub fn marked_user_agent(configured: Option<&str>) -> String {
    match configured.map(str::trim).filter(|v| !v.is_empty()) {
        Some(theirs) if carries_token(theirs.as_bytes()) => theirs.to_owned(),
        Some(theirs) => format!("{} {theirs}", user_agent()),
        None => user_agent(),
    }
}

/// Whether a `User-Agent` value has our product token (`tracer-agent` or `tracer-agent/x.y`).
fn carries_token(value: &[u8]) -> bool {
    value.split(|b| b.is_ascii_whitespace()).any(|token| {
        let product = token.split(|b| *b == b'/').next().unwrap_or_default();
        product.eq_ignore_ascii_case(USER_AGENT_PRODUCT.as_bytes())
    })
}

/// Whether any `User-Agent` header carries the agent's mark.
pub fn carries_mark(headers: &[Header]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("user-agent"))
        .any(|h| carries_token(&h.value))
}

/// Why an exchange is telemetry rather than application traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Telemetry {
    /// Sent by a tracer agent (marked): never traced, whatever the options.
    Own,
    /// An OTLP export (`POST /v1/{traces,metrics,logs}` or a gRPC
    /// `/opentelemetry.proto.collector.*` call) by someone else, such as a collector forwarding
    /// to a backend: not traced unless asked for.
    Pipeline,
}

/// What kind of telemetry `request` is, if any. Runs for every request head: nothing is
/// allocated, and the `Content-Type` is looked at only for a `POST` under an OTLP-like path.
pub fn classify(request: &HttpRequest) -> Option<Telemetry> {
    if carries_mark(&request.headers) {
        return Some(Telemetry::Own);
    }
    is_otlp_export_with(&request.method, &request.target, || {
        is_protobuf(&request.headers)
    })
    .then_some(Telemetry::Pipeline)
}

/// Whether the media type of the first `Content-Type` header (parameters and case dropped) is
/// OTLP protobuf.
fn is_protobuf(headers: &[Header]) -> bool {
    let Some(header) = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
    else {
        return false;
    };
    let media = header
        .value
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default();
    media
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/x-protobuf")
}

/// The OTLP/HTTP signal paths.
const OTLP_HTTP_PATHS: [&str; 3] = ["/v1/traces", "/v1/metrics", "/v1/logs"];

/// OTLP export requests: HTTP `POST` to exactly `/v1/traces|metrics|logs` (origin or absolute
/// form), or under a path prefix (vendors mount the receiver under one) only when the body is
/// OTLP protobuf (`application/x-protobuf`): a JSON `POST /api/v1/logs` is an ordinary
/// application endpoint. Any gRPC method of the OTLP collector services is an export.
pub fn is_otlp_export(method: &str, target: &str, content_type: Option<String>) -> bool {
    is_otlp_export_with(method, target, || {
        content_type.as_deref() == Some("application/x-protobuf")
    })
}

/// [`is_otlp_export`] asking for the protobuf media type only when it decides.
fn is_otlp_export_with(method: &str, target: &str, is_protobuf: impl FnOnce() -> bool) -> bool {
    let path = path_of(target);
    if path.starts_with("/opentelemetry.proto.collector.") {
        return true;
    }
    if !method.eq_ignore_ascii_case("POST") {
        return false;
    }
    let path = path.strip_suffix('/').unwrap_or(path);
    if OTLP_HTTP_PATHS.contains(&path) {
        return true;
    }
    OTLP_HTTP_PATHS.iter().any(|suffix| path.ends_with(suffix)) && is_protobuf()
}

/// The path of a request target: origin-form `path?query`, or absolute-form `scheme://host/path`.
/// Byte searches: every delimiter is ASCII, so every cut is on a character boundary.
fn path_of(target: &str) -> &str {
    let end = target
        .bytes()
        .position(|b| matches!(b, b'?' | b'#'))
        .unwrap_or(target.len());
    let without_query = target.get(..end).unwrap_or_default();
    let bytes = without_query.as_bytes();
    let scheme_end = bytes
        .iter()
        .enumerate()
        .position(|(i, b)| *b == b':' && bytes.get(i + 1..i + 3) == Some(b"//"));
    match scheme_end {
        Some(at) => {
            let rest = without_query.get(at + 3..).unwrap_or_default();
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        None => without_query,
    }
}

/// Whether a connection accepted on this host with (local, peer) endpoints is the other end of
/// one of the agent's own connections (answered by the kernel's table of the agent's sockets).
pub type MirrorCheck = std::sync::Arc<dyn Fn(SocketAddr, SocketAddr) -> bool + Send + Sync>;

/// Inode of the initial pid namespace (`PROC_PID_INIT_INO`, fixed by the kernel since 3.8).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// How the kernel programs recognise the agent's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PidIdentity {
    /// The agent runs in the host's pid namespace: its pid is the tgid the kernel reports.
    Host { tgid: u32 },
    /// The agent runs in a child pid namespace (a container without hostPID, `unshare --pid`):
    /// its own pid means nothing to the kernel programs, which compare host tgids. They find the
    /// host tgid themselves, from the namespace (device and inode, kernel encoding) and this pid.
    Namespaced {
        ns_tgid: u32,
        ns_dev: u64,
        ns_ino: u64,
    },
}

impl PidIdentity {
    /// The agent's identity, from `/proc/self/ns/pid` (under `proc_root`).
    pub fn of_self(proc_root: &Path) -> PidIdentity {
        let pid = std::process::id();
        match std::fs::metadata(proc_root.join("self/ns/pid")) {
            Ok(meta) => Self::from_namespace(pid, meta.dev(), meta.ino()),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot read the agent's pid namespace; assuming the host's"
                );
                PidIdentity::Host { tgid: pid }
            }
        }
    }

    /// The identity of process `pid` whose pid namespace file has `st_dev` and `st_ino`.
    pub fn from_namespace(pid: u32, st_dev: u64, st_ino: u64) -> PidIdentity {
        if st_ino == PROC_PID_INIT_INO {
            return PidIdentity::Host { tgid: pid };
        }
        PidIdentity::Namespaced {
            ns_tgid: pid,
            ns_dev: kernel_dev(st_dev),
            ns_ino: st_ino,
        }
    }
}

/// A userspace `st_dev` in the kernel's internal `dev_t` encoding (major << 20 | minor), which
/// is what `bpf_get_ns_current_pid_tgid` compares against.
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = libc::major(st_dev) as u64;
    let minor = libc::minor(st_dev) as u64;
    (major << 20) | minor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::decode::{KernelEvent, RecordHeader};
    use crate::correlate::connections::TableLimits;
    use crate::model::{Direction, ExportItem, HttpVersion, Role};
    use crate::pipeline::{Pipeline, PipelineOptions, PipelineStats};
    use crate::telemetry::spans::Clock;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: crate::model::method_text(method),
            target: target.to_owned().into(),
            version: HttpVersion::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: (*n).to_owned().into(),
                    value: v.as_bytes().to_vec().into(),
                })
                .collect(),
            body_len: 0,
        }
    }

    #[test]
    fn our_mark_is_found_in_any_user_agent_position_and_any_version() {
        for ua in [
            "tracer-agent/0.1.0",
            "tracer-agent/9.9",
            "TRACER-AGENT",
            "tracer-agent/0.1.0 OTel-OTLP-Exporter-Rust/0.31.0",
            "tonic/0.14 tracer-agent/0.1.0",
            "kube-rs/1.0\ttracer-agent/0.1.0",
        ] {
            let r = request("GET", "/", &[("User-Agent", ua)]);
            assert_eq!(classify(&r), Some(Telemetry::Own), "{ua}");
        }
        for ua in [
            "curl/8.0",
            "tracer-agents/1.0",
            "my-tracer-agent/1.0",
            "Mozilla/5.0 (tracer-agent)",
        ] {
            let r = request("GET", "/", &[("user-agent", ua)]);
            assert_eq!(classify(&r), None, "{ua}");
        }
        let bytes = Header {
            name: "User-Agent".into(),
            value: vec![0xff, b' ', b't', 0xfe].into(),
        };
        assert!(!carries_mark(&[bytes]));
    }

    #[test]
    fn marked_user_agent_keeps_the_users_value_after_ours() {
        assert_eq!(marked_user_agent(None), user_agent());
        assert_eq!(marked_user_agent(Some("  ")), user_agent());
        assert_eq!(
            marked_user_agent(Some("acme/2")),
            format!("{} acme/2", user_agent())
        );
        assert_eq!(
            marked_user_agent(Some("tracer-agent/0.0.1")),
            "tracer-agent/0.0.1"
        );
    }

    #[test]
    fn otlp_export_paths_are_pipeline_telemetry() {
        for (method, target) in [
            ("POST", "/v1/traces"),
            ("POST", "/v1/metrics"),
            ("post", "/v1/logs"),
            ("POST", "/v1/traces/"),
            ("POST", "/v1/traces?x=1"),
            ("POST", "http://collector:4318/v1/traces"),
            (
                "POST",
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            ),
            (
                "POST",
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            ),
        ] {
            let r = request(method, target, &[("User-Agent", "otelcol/0.100")]);
            assert_eq!(classify(&r), Some(Telemetry::Pipeline), "{method} {target}");
        }
        for (method, target) in [
            ("GET", "/v1/traces"),
            ("POST", "/v1/tracesx"),
            ("POST", "/api/v1/trace"),
            ("POST", "/"),
            ("POST", "/v1/traces-and-more"),
            ("GET", "http://h/v1/users"),
            ("POST", "/grpc.health.v1.Health/Check"),
            ("POST", "/api/v1/logs"),
            ("POST", "/admin/v1/metrics"),
            ("POST", "/otlp/v1/traces"),
            ("POST", "http://h/api/v1/traces"),
        ] {
            let r = request(method, target, &[]);
            assert_eq!(classify(&r), None, "{method} {target}");
        }
        // Ordinary JSON APIs that happen to end like an OTLP path are application traffic.
        for target in ["/api/v1/logs", "/admin/v1/metrics", "/otlp/v1/traces"] {
            let r = request("POST", target, &[("Content-Type", "application/json")]);
            assert_eq!(classify(&r), None, "{target}");
        }
        // Under a prefix, only an OTLP protobuf body makes it an export.
        for target in [
            "/otlp/v1/traces",
            "/api/v2/otlp/v1/metrics/",
            "https://ingest.example/otlp/v1/logs?k=1",
        ] {
            let ct = [("Content-Type", "Application/X-Protobuf; charset=binary")];
            let r = request("POST", target, &ct);
            assert_eq!(classify(&r), Some(Telemetry::Pipeline), "{target}");
        }
        let r = request(
            "POST",
            "/otlp/v1/tracesx",
            &[("Content-Type", "application/x-protobuf")],
        );
        assert_eq!(classify(&r), None);
    }

    #[test]
    fn otlp_paths_are_cut_at_query_and_fragment_before_the_scheme_is_looked_for() {
        for (target, expected) in [
            ("/v1/traces#part", Some(Telemetry::Pipeline)),
            (
                "http://h:4318/v1/metrics?next=http://x/y",
                Some(Telemetry::Pipeline),
            ),
            ("/v1/logs?u=https://h/v1/traces", Some(Telemetry::Pipeline)),
            ("/app?u=https://h/v1/traces", None),
            ("http://h:4318", None),
            ("http://h:4318?x=/v1/traces", None),
        ] {
            let r = request("POST", target, &[]);
            assert_eq!(classify(&r), expected, "{target}");
        }
        // The media type is trimmed of its parameters and blanks, compared without case.
        for (content_type, expected) in [
            (
                " APPLICATION/x-protobuf ;charset=x",
                Some(Telemetry::Pipeline),
            ),
            ("application/x-protobuf2", None),
            ("application/json; x=application/x-protobuf", None),
        ] {
            let r = request("POST", "/otlp/v1/traces", &[("Content-Type", content_type)]);
            assert_eq!(classify(&r), expected, "{content_type}");
        }
    }

    /// Runs one server-side exchange per request through a pipeline; returns the span names.
    fn spans_of(requests: &[&str], include_telemetry: bool) -> (Vec<String>, PipelineStats) {
        let mut pipeline = Pipeline::new(
            PipelineOptions {
                limits: TableLimits::default(),
                proc_root: "/nonexistent-proc-for-tests".into(),
                host_name: "test-host".into(),
                ports: Vec::new(),
                include_telemetry,
            },
            Clock::from_offset(1_700_000_000_000_000_000),
        );
        let mut out: Vec<ExportItem> = Vec::new();
        let local: std::net::SocketAddr =
            "127.0.0.1:4318".parse().unwrap_or_else(|_| unreachable!());
        let peer: std::net::SocketAddr =
            "127.0.0.1:40000".parse().unwrap_or_else(|_| unreachable!());
        for (i, request) in requests.iter().enumerate() {
            let header = |ts_ns| RecordHeader {
                tgid: 7,
                tid: 7,
                fd: 3 + i as i32,
                conn_id: 100 + i as u64,
                ts_ns,
            };
            let t = 1_000_000 * (i as u64 + 1);
            let data = |ts, direction, payload: &'static [u8]| KernelEvent::Data {
                header: header(ts),
                direction,
                role: Some(Role::Server),
                true_len: payload.len() as u32,
                syscall_ns: 0,
                loss_before: false,
                tls: false,
                payload,
            };
            let request: &'static [u8] = Box::leak(request.as_bytes().to_vec().into_boxed_slice());
            let events = [
                KernelEvent::ConnOpen {
                    header: header(t),
                    role: Some(Role::Server),
                    local: Some(local),
                    peer: Some(peer),
                    netns: None,
                },
                data(t + 1, Direction::Ingress, request),
                data(
                    t + 2,
                    Direction::Egress,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                ),
                KernelEvent::ConnClose {
                    header: header(t + 3),
                },
            ];
            for event in events {
                pipeline.on_event(event, &mut out);
            }
        }
        let names = out
            .into_iter()
            .map(|item| String::from(item.span.name))
            .collect();
        (names, pipeline.stats())
    }

    const APP: &str = "GET /orders HTTP/1.1\r\nHost: app\r\n\r\n";
    const FORWARDED: &str = "POST /v1/traces HTTP/1.1\r\nHost: backend\r\n\
                             User-Agent: otelcol/0.100\r\nContent-Length: 0\r\n\r\n";
    const MARKED: &str = "POST /v1/traces HTTP/1.1\r\nHost: c\r\n\
                          User-Agent: tracer-agent/0.0.9 OTel-OTLP-Exporter-Rust/0.31.0\r\n\
                          Content-Length: 0\r\n\r\n";

    #[test]
    fn pipeline_drops_telemetry_exchanges_and_counts_them() {
        let (names, stats) = spans_of(&[APP, FORWARDED, MARKED], false);
        assert_eq!(names, vec!["GET".to_owned()]);
        assert_eq!(stats.telemetry_pipeline_dropped, 1);
        assert_eq!(stats.own_telemetry_dropped, 1);
        assert_eq!(stats.spans, 1);
    }

    #[test]
    fn include_telemetry_traces_other_exports_but_never_our_own() {
        let (names, stats) = spans_of(&[APP, FORWARDED, MARKED], true);
        assert_eq!(names, vec!["GET".to_owned(), "POST".to_owned()]);
        assert_eq!(stats.telemetry_pipeline_dropped, 0);
        assert_eq!(stats.own_telemetry_dropped, 1);
    }

    /// A server request (by thread 7) during which the same thread makes a client call; returns
    /// the exported spans' names and parents, and the stats.
    fn server_with_a_client_call(server_request: &'static [u8]) -> (Vec<String>, PipelineStats) {
        let mut pipeline = Pipeline::new(
            PipelineOptions {
                limits: TableLimits::default(),
                // Thread links need a process whose runtime is known: this test process (not Go).
                proc_root: "/proc".into(),
                host_name: "test-host".into(),
                ports: Vec::new(),
                include_telemetry: false,
            },
            Clock::from_offset(1_700_000_000_000_000_000),
        );
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().ok();
        let header = |fd, conn_id, ts_ns| RecordHeader {
            tgid: std::process::id(),
            tid: 7,
            fd,
            conn_id,
            ts_ns,
        };
        let data = |fd, conn_id, ts, direction, role, payload: &'static [u8]| KernelEvent::Data {
            header: header(fd, conn_id, ts),
            direction,
            role: Some(role),
            true_len: payload.len() as u32,
            syscall_ns: 0,
            loss_before: false,
            tls: false,
            payload,
        };
        let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let events = [
            KernelEvent::ConnOpen {
                header: header(3, 1, 1_000),
                role: Some(Role::Server),
                local: addr("127.0.0.1:4318"),
                peer: addr("127.0.0.1:40000"),
                netns: None,
            },
            data(
                3,
                1,
                2_000,
                Direction::Ingress,
                Role::Server,
                server_request,
            ),
            KernelEvent::ConnOpen {
                header: header(4, 2, 3_000),
                role: Some(Role::Client),
                local: addr("127.0.0.1:40001"),
                peer: addr("127.0.0.1:8080"),
                netns: None,
            },
            data(4, 2, 4_000, Direction::Egress, Role::Client, APP.as_bytes()),
            data(4, 2, 5_000, Direction::Ingress, Role::Client, ok),
            data(3, 1, 6_000, Direction::Egress, Role::Server, ok),
            KernelEvent::ConnClose {
                header: header(4, 2, 7_000),
            },
            KernelEvent::ConnClose {
                header: header(3, 1, 8_000),
            },
        ];
        let mut out: Vec<ExportItem> = Vec::new();
        for event in events {
            pipeline.on_event(event, &mut out);
        }
        let names = out
            .into_iter()
            .map(|item| String::from(item.span.name))
            .collect();
        (names, pipeline.stats())
    }

    #[test]
    fn calls_made_while_serving_dropped_telemetry_are_dropped_with_it() {
        // Control: an application request's client call is exported (linked by thread).
        let (names, stats) = server_with_a_client_call(APP.as_bytes());
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(stats.telemetry_descendants_dropped, 0);
        for request in [MARKED, FORWARDED] {
            let (names, stats) = server_with_a_client_call(request.as_bytes());
            assert!(
                names.is_empty(),
                "{names:?} exported under a dropped parent"
            );
            assert_eq!(stats.telemetry_descendants_dropped, 1);
        }
    }

    #[test]
    fn pid_identity_is_the_host_pid_only_in_the_initial_namespace() {
        assert_eq!(
            PidIdentity::from_namespace(42, 4, PROC_PID_INIT_INO),
            PidIdentity::Host { tgid: 42 }
        );
        // st_dev 0x0104 is major 1, minor 4 in userspace; the kernel encodes it 1 << 20 | 4.
        assert_eq!(
            PidIdentity::from_namespace(1, 0x0104, 4026532300),
            PidIdentity::Namespaced {
                ns_tgid: 1,
                ns_dev: (1 << 20) | 4,
                ns_ino: 4026532300
            }
        );
        // Minors above 255 use the split userspace encoding.
        let st_dev = libc::makedev(0, 300);
        assert_eq!(kernel_dev(st_dev), 300);
    }
}
