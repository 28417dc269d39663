//! `cargo xtask build [--release]`: setup, then build the agent.

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::step;
use crate::task::setup;
use crate::workspace;

#[derive(Args)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn run(args: &BuildArgs) -> Result<()> {
    setup::run()?;
    build_agent(args.release)
}

/// `cargo build -p tracer-user [--release]` from the workspace root.
pub fn build_agent(release: bool) -> Result<()> {
    step::run("build", build_command(release))
}

fn build_command(release: bool) -> Command {
    let mut command = step::cargo();
    command
        .current_dir(workspace::root())
        .args(["build", "-p", "tracer-user"]);
    if release {
        command.arg("--release");
    }
    command
}
