//! `cargo xtask`: the project's own setup, build, run and test entry points.

mod step;
mod task;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer tasks for the tracer workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and running the tracer needs (idempotent): the nightly rust-src
    /// component, bpf-linker, nginx/curl/python3 for the tests, and a mounted tracefs; plus qemu,
    /// virtme-ng and the extra kernel `cargo xtask test` boots in a VM.
    Setup,
    /// Set up, then build the agent (`tracer`).
    Build(task::build::BuildArgs),
    /// Set up, build the agent in release mode and run `tracer agent` host-wide (text output
    /// unless agent arguments are given after `--`).
    Run(task::run::RunArgs),
    /// Set up, build, then run every test (unit and end-to-end, as root against real probes),
    /// clippy with warnings denied, and the format check.
    Test(task::test::TestArgs),
    /// Build the agent, start an uninstrumented topology (curl → Python hub → two Python
    /// backends and nginx), trace three requests and print one trace tree per request.
    Demo,
    /// Benchmark the agent: host-wide (no filter, nginx and wrk both traced) and --pid scenarios
    /// under wrk, untraced rounds interleaved with each agent binary's (--agent-bin,
    /// --baseline-bin) and bpftrace's; overhead, completeness, drops, the agent's, the traced
    /// processes' and the machine's CPU per request, memory, and the kernel-free pipeline
    /// (criterion). Writes docs/BENCHMARKS.md, JSON, and appends to docs/bench/history.json.
    Bench(task::bench::BenchArgs),
    /// Build the agent's container image from k8s/Containerfile with podman (FROM scratch: the
    /// binary and the libraries it links), tagged as k8s/kustomization.yaml deploys it.
    Image(task::image::ImageArgs),
    /// Long run outside CI: the release agent traces a churn of short-lived curl processes
    /// against nginx for an hour (`--minutes N`) and reports its RSS over time.
    Soak(task::soak::SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => task::setup::run().and_then(|()| task::kernel::setup_vm()),
        Task::Build(args) => task::build::run(&args),
        Task::Run(args) => task::run::run(&args),
        Task::Test(args) => task::test::run(&args),
        Task::Demo => task::demo::run(),
        Task::Bench(args) => task::bench::run(&args),
        Task::Image(args) => task::image::run(&args),
        Task::Soak(args) => task::soak::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
