//! `tracer agent`: trace the whole host (or the given pids/ports) until SIGINT/SIGTERM.

use clap::Args;

use super::TraceArgs;

/// Trace every process on this host until SIGINT or SIGTERM, then flush and exit 0.
///
/// Examples:
///   tracer agent                                   # live traces in the terminal
///   tracer agent --port 8080 --format json         # JSON lines for one service
///   OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc tracer agent
#[derive(Clone, Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct AgentArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
}
