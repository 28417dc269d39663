//! `cargo xtask test`: setup, build the agent, run every test against it, then clippy and the
//! format check.

use anyhow::Result;
use clap::Args;

use crate::step;
use crate::task::{build, image, setup};
use crate::workspace;

/// The image of the agent under test.
const TEST_IMAGE: &str = "localhost/tracer:e2e";

#[derive(Args)]
pub struct TestArgs {
    /// Tests run at once in each test binary (end-to-end tests each start an agent and peers).
    #[arg(long, default_value_t = 2)]
    pub test_threads: usize,
}

pub fn run(args: &TestArgs) -> Result<()> {
    setup::run()?;
    build::build_agent(false)?;
    let root = workspace::root();
    // The image tests/container.rs runs as the manifest's pod: this very build, packaged.
    image::build_image(&workspace::tracer_binary(false), TEST_IMAGE)?;

    let mut tests = step::cargo();
    tests
        .current_dir(&root)
        .env("TRACER_BIN", workspace::tracer_binary(false))
        .env("TRACER_IMAGE", TEST_IMAGE)
        .args([
            "test",
            "--workspace",
            "--",
            &format!("--test-threads={}", args.test_threads.max(1)),
        ]);
    step::run("test", tests)?;

    // A short fuzzing pass over the parsers of captured bytes (longer runs: `fuzz/run.sh 600`).
    let mut fuzz = std::process::Command::new("bash");
    fuzz.current_dir(&root).args(["fuzz/run.sh", "20"]);
    step::run("fuzz (20 s per target)", fuzz)?;

    let mut manifests = std::process::Command::new("bash");
    manifests.current_dir(&root).arg("k8s/validate.sh");
    step::run("kubernetes manifests", manifests)?;

    // Lint without rebuilding the eBPF object for the check profile (the test build above used
    // the real one).
    let mut clippy = step::cargo();
    clippy.current_dir(&root).env("AYA_BUILD_SKIP", "1").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    step::run("clippy", clippy)?;

    let mut fmt = step::cargo();
    fmt.current_dir(&root).args(["fmt", "--all", "--check"]);
    step::run("fmt", fmt)
}
