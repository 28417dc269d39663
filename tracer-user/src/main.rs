//! The `tracer` binary: parse the command line, run the agent, report errors in one line.

use std::process::ExitCode;

use clap::Parser;
use tracer::agent::{self, Until};
use tracer::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracer::memory::tune_allocator();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Agent(_) | Command::Run(_)) {
        tracer::capture::probes::make_loader_early();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TRACER_LOG")
                .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: `kubectl logs`, journald and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One worker: records are read and turned into spans on the agent's own event thread; the
    // runtime only carries signals, the traced command, /metrics, the exporter and k8s watches.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tracer: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Agent(args) => agent::run(args.trace, Until::Signal).await,
            Command::Run(args) => agent::run(args.trace, Until::Child(args.command)).await,
            Command::Top(args) => tracer::cli::top::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tracer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
