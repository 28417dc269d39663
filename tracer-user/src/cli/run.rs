//! `tracer run -- CMD ARGS...`: start a command and trace it and its children.

use clap::Args;

use super::TraceArgs;

/// Start CMD, trace it and every process it forks, and exit with CMD's status after flushing.
///
/// Example:
///   tracer run -- python3 -m http.server 8000
#[derive(Clone, Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    #[command(flatten)]
    pub trace: TraceArgs,

    /// The command to run, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}
