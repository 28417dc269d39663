//! `cargo xtask run [-- AGENT ARGS]`: setup, release build, then become `tracer agent`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

use crate::step;
use crate::task::{build, setup};
use crate::workspace;

#[derive(Args)]
pub struct RunArgs {
    /// Arguments for `tracer agent` (default: `--format text`, the whole host).
    #[arg(last = true)]
    pub agent_args: Vec<String>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    setup::run()?;
    build::build_agent(true)?;
    let binary = workspace::tracer_binary(true);
    let mut command = Command::new(&binary);
    command.arg("agent");
    if args.agent_args.is_empty() {
        command.args(["--format", "text"]);
    } else {
        command.args(&args.agent_args);
    }
    step::announce("run", &command);
    // exec only returns on failure; the agent then owns the terminal and its signals.
    let error = command.exec();
    bail!(
        "step `run` failed: could not execute {}: {error}",
        binary.display()
    )
}
