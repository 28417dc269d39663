//! Command-line interface: `tracer agent`, `tracer run` and `tracer top`, with the options they share.

pub mod agent;
pub mod run;
pub mod top;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Zero-code distributed tracing for HTTP/1.x services on Linux.
///
/// Kernel probes (eBPF syscall tracepoints) capture HTTP traffic of unmodified programs; every
/// request/response exchange becomes an OpenTelemetry span: SERVER for connections a process
/// accepted, CLIENT for connections it opened. Parents come from traceparent, b3 and
/// X-Amzn-Trace-Id headers. Spans are exported over OTLP when an endpoint is configured
/// (OTEL_EXPORTER_OTLP_ENDPOINT or --otlp-endpoint), otherwise printed live in the terminal.
///
/// Needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE) and a kernel with BTF.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Agent(agent::AgentArgs),
    Run(run::RunArgs),
    Top(top::TopArgs),
}

/// How spans are printed when no OTLP endpoint is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Trace trees for people, grouped by trace, with durations and statuses.
    Text,
    /// One JSON object per span per line.
    Json,
}

/// Options shared by every tracing command.
#[derive(Clone, Debug, Args)]
pub struct TraceArgs {
    /// Trace only this process (repeatable). Its children, those already running and those it
    /// starts later, are followed.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace only connections whose local or peer port is PORT (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Span output when no OTLP endpoint is configured.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// OTLP endpoint (overrides OTEL_EXPORTER_OTLP_ENDPOINT), e.g. http://collector:4317.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<crate::telemetry::redact::Secret>,

    /// OTLP protocol: grpc or http/protobuf (overrides OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Extra OTLP headers, k1=v1,k2=v2 (merged over OTEL_EXPORTER_OTLP_HEADERS).
    #[arg(long, value_name = "HEADERS")]
    pub otlp_headers: Option<crate::telemetry::redact::Secret>,

    /// Payload bytes captured per syscall (max 16384); HTTP/1 headers beyond it are not seen. On
    /// HTTP/2 connections the kernel follows the frames instead (headers kept, DATA not copied).
    #[arg(long, default_value_t = tracer_common::DEFAULT_CAPTURE, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(64..=tracer_common::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,

    /// Kernel ring buffer size in MiB (rounded up to a power of two). Its pages are resident (in
    /// the agent's RSS) from start-up; raise it if /metrics shows ringbuf_full drops.
    #[arg(long, default_value_t = 8, value_name = "MIB",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub ring_buffer_mib: u32,

    /// Diagnostics of the eBPF programs (why a connection was adopted, a record dropped), logged
    /// under the target `tracer::kernel` (also set RUST_LOG, e.g. `tracer=debug`). Fixed when the
    /// programs load; `off` removes the log statements, so they cost nothing.
    #[arg(long, value_enum, default_value_t = crate::capture::kernel_log::KernelLogLevel::Off,
          value_name = "LEVEL")]
    pub kernel_log_level: crate::capture::kernel_log::KernelLogLevel,

    /// Connections tracked at once (kernel and userspace tables).
    #[arg(long, default_value_t = tracer_common::DEFAULT_MAX_CONNECTIONS, value_name = "N",
          value_parser = clap::value_parser!(u32).range(64..=4_194_304))]
    pub max_connections: u32,

    /// MiB the agent may hold in unfinished request/response heads and pending requests, over
    /// all connections; past it the least recently active connections' buffers are dropped and
    /// those connections are not parsed again until they close (counted in
    /// tracer_buffer_budget_sheds_total).
    #[arg(long, default_value_t = 64, value_name = "MIB",
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_buffer_mib: u32,

    /// Seconds a request waits for its response before it is reported as timed out.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub request_timeout: u64,

    /// Milliseconds records wait to be put in causal order across CPUs (links between a client
    /// and a server on this host need it); also the minimum delay before a span is emitted.
    #[arg(long, default_value_t = 20, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub reorder_window_ms: u64,

    /// Longest milliseconds a server's request waits, past the reorder window, for the write of
    /// its same-host traced client (recorded when the write returns, which a preempted client
    /// does late): the wait ends as soon as that write is read; past it the SERVER span is a
    /// root (counted). Raise it on machines much slower than real time (emulated VMs).
    #[arg(long, default_value_t = 1000, value_name = "MS", env = "TRACER_CLIENT_WAIT_MS",
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub client_wait_ms: u64,

    /// Serve Prometheus metrics (/metrics) and health checks (/healthz, /readyz) on this address,
    /// e.g. 127.0.0.1:9464. Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Export each traced process's command line as process.command_line. Off by default
    /// (arguments carry passwords and tokens); when on, values of password-, token- and key-like
    /// flags, URL credentials and signed query values are replaced by REDACTED.
    #[arg(long)]
    pub export_command_line: bool,

    /// Kubernetes node whose pods are watched for span metadata (default: $NODE_NAME, else the
    /// host name). Metadata is on when KUBECONFIG is set or the agent runs in a pod.
    #[arg(long, value_name = "NODE")]
    pub k8s_node_name: Option<String>,

    /// Do not adopt connections opened before the agent started (no sniffing of unknown fds).
    #[arg(long)]
    pub no_sniff: bool,

    /// Capture TLS plaintext (HTTPS), on by default: attach uprobes to every OpenSSL copy
    /// processes map (libssl.so.3, best effort 1.1, binaries exporting OpenSSL's symbols) and to
    /// Go's crypto/tls, and trace their HTTPS as HTTP. `--tls=false` or TRACER_TLS=0 turns it
    /// off (as --no-tls does).
    #[arg(
        long,
        env = "TRACER_TLS",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub tls: bool,

    /// Do not capture TLS plaintext (wins over --tls and TRACER_TLS).
    #[arg(long)]
    pub no_tls: bool,

    /// Also make spans of other programs' OTLP exports (POST /v1/traces|metrics|logs, gRPC
    /// opentelemetry.proto.collector.*). Off by default: a collector forwarding to a backend is
    /// telemetry, not application traffic. A tracer's own requests are never traced.
    #[arg(long)]
    pub include_telemetry: bool,

    /// Do not output spans (no OTLP traces, nothing printed); RED metrics are still aggregated
    /// and exported. With --no-metrics too, the agent only serves its own counters.
    #[arg(long)]
    pub no_spans: bool,

    /// Do not aggregate RED metrics (the http.*/rpc.* duration histograms): nothing on /metrics
    /// but the agent's own counters, no OTLP metrics export.
    #[arg(long)]
    pub no_metrics: bool,

    /// Series per RED histogram (over all processes) before further attribute sets go to the
    /// overflow series (otel.metric.overflow=true), counted in tracer_red_overflow_points_total.
    #[arg(long, default_value_t = crate::telemetry::red::DEFAULT_SERIES_LIMIT as u32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub metrics_cardinality_limit: u32,

    /// Seconds between log lines summarising drops (only printed when something was dropped).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub summary_interval: u64,

    /// Trace ids of the traces the tracer starts: `random`, or `xray` for AWS X-Ray (first 8 hex
    /// digits are the trace's start in Unix seconds; X-Ray drops other ids). Ids that arrive in
    /// headers are always kept.
    #[arg(long, env = "TRACER_ID_GENERATOR", value_enum,
          default_value_t = crate::telemetry::ids::IdGenerator::Random, value_name = "GENERATOR")]
    pub id_generator: crate::telemetry::ids::IdGenerator,

    /// Carry trace context across hosts: `tcp-options` WRITES a TCP header option (RFC 6994
    /// experimental kind 253, 28 bytes: trace id + span id) on the segment that starts each
    /// traced cleartext HTTP/1 request, and reads it where the request arrives, so an agent on
    /// the other host links its SERVER span to this CLIENT span with no header in the payload.
    /// Span identities of those requests are then decided in the kernel. Needs CAP_NET_ADMIN
    /// (a cgroup sock_ops program on the cgroup v2 root), cgroup v2 and kernel >= 5.10; where
    /// that is missing the agent says so and runs without it. Both hosts need the agent.
    #[arg(long, env = "TRACER_CONTEXT_PROPAGATION", value_enum,
          default_value_t = crate::capture::propagation::ContextPropagation::None,
          value_name = "MODE")]
    pub context_propagation: crate::capture::propagation::ContextPropagation,
}

impl TraceArgs {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TraceArgs,
    }

    /// TLS capture is on unless asked off; `--tls` stays accepted (explicit on).
    #[test]
    fn tls_capture_is_on_by_default() {
        let tls = |args: &[&str]| {
            let parsed =
                Wrapper::try_parse_from(std::iter::once("tracer").chain(args.iter().copied()))
                    .expect("parses");
            parsed.args.tls && !parsed.args.no_tls
        };
        assert!(tls(&[]));
        assert!(tls(&["--tls"]));
        assert!(tls(&["--tls", "--port", "80"]));
        assert!(!tls(&["--tls=false"]));
        assert!(!tls(&["--tls=0"]));
        assert!(!tls(&["--no-tls"]));
        assert!(!tls(&["--tls", "--no-tls"]));
    }

    #[test]
    fn debug_never_shows_otlp_credentials() {
        let parsed = Wrapper::try_parse_from([
            "tracer",
            "--otlp-endpoint",
            "http://u:pw1@collector:4318",
            "--otlp-headers",
            "x-api-key=pw2",
        ])
        .expect("parses");
        let shown = format!("{parsed:?}");
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert_eq!(
            parsed.args.otlp_endpoint.as_ref().map(|s| s.expose()),
            Some("http://u:pw1@collector:4318")
        );
    }
}
