//! `cargo xtask test`: setup, build the agent, run every test against it, then clippy and the
//! format check.

use anyhow::Result;
use clap::Args;

use crate::step;
use crate::task::{build, image, kernel, setup};
use crate::workspace;

/// The image of the agent under test.
const TEST_IMAGE: &str = "localhost/tracer:e2e";

#[derive(Args)]
pub struct TestArgs {
    /// Tests run at once in each test binary (end-to-end tests each start an agent and peers).
    #[arg(long, default_value_t = 2)]
    pub test_threads: usize,
    /// Instead of the host run: boot each given kernel in a VM (virtme-ng, qemu/KVM) and run the
    /// end-to-end tests inside against the same binaries, then print the matrix. A kernel is a
    /// Debian flavour (`amd64`, `rt-amd64`, `cloud-amd64`: its current release), a Debian
    /// release (`6.1.0-54-amd64`) or a kernel image path. Repeatable.
    #[arg(long = "kernel", value_name = "KERNEL")]
    pub kernels: Vec<String>,
    /// With --kernel: only these end-to-end test targets (e.g. `http_basic,linking`); all but
    /// the container and Kubernetes ones by default.
    #[arg(long, value_delimiter = ',', requires = "kernels")]
    pub tests: Vec<String>,
    /// With --kernel: an argument for every test executable (libtest name filters, `--skip X`),
    /// repeatable.
    #[arg(long = "test-arg", requires = "kernels", allow_hyphen_values = true)]
    pub test_args: Vec<String>,
    /// Skip the smoke subset that runs, after the host run, on one more kernel
    /// (`kernel::CI_KERNEL`) in a VM (a few minutes; CI runs it).
    #[arg(long)]
    pub no_kernel_smoke: bool,
    /// The smoke run is on by default now; kept so older command lines still work.
    #[arg(long, hide = true, conflicts_with = "no_kernel_smoke")]
    pub kernel_smoke: bool,
}

pub fn run(args: &TestArgs) -> Result<()> {
    setup::run()?;
    let kernel_smoke = args.kernels.is_empty() && !args.no_kernel_smoke;
    if kernel_smoke {
        // What `cargo xtask setup` installs for the VM, each part only when missing.
        kernel::setup_vm()?;
    }
    build::build_agent(false)?;
    if !args.kernels.is_empty() {
        return kernel_matrix(
            &args.kernels,
            &args.tests,
            &args.test_args,
            args.test_threads.max(1),
            kernel::VM_TIMEOUT,
        );
    }
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

    // The smoke subset on one more kernel than the host's, in a VM.
    if kernel_smoke {
        let smoke: Vec<String> = kernel::SMOKE_TESTS.iter().map(|t| t.to_string()).collect();
        let mut filters: Vec<String> = kernel::SMOKE_FILTERS
            .iter()
            .map(|t| t.to_string())
            .collect();
        // Whole names: a filter must not pick up other tests sharing its prefix.
        filters.push("--exact".to_owned());
        kernel_matrix(
            &[kernel::CI_KERNEL.to_owned()],
            &smoke,
            &filters,
            // One test at a time: the emulated guest has two slow vCPUs, and an agent starved of
            // them reads short-lived clients' /proc too late.
            1,
            kernel::SMOKE_VM_TIMEOUT,
        )?;
    }

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

/// Boots each kernel in a VM, runs the end-to-end `targets` inside, prints the matrix and fails
/// when any kernel did not pass.
fn kernel_matrix(
    kernels: &[String],
    targets: &[String],
    test_args: &[String],
    test_threads: usize,
    vm_timeout: std::time::Duration,
) -> Result<()> {
    kernel::vm_prerequisites()?;
    let executables = kernel::build_test_executables(targets)?;
    let agent = workspace::tracer_binary(false);
    let mut results = Vec::new();
    for spec in kernels {
        let image = kernel::kernel_image(&kernel::KernelSpec::parse(spec))?;
        results.push(kernel::run_in_vm(
            spec,
            &image,
            &agent,
            &executables,
            test_threads,
            test_args,
            vm_timeout,
        )?);
    }
    let table = kernel::markdown_table(&results);
    println!("\n{table}");
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} (logs in {})", r.spec, r.log_dir.display()))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("kernel matrix: failing kernels: {}", failed.join("; "));
    }
    Ok(())
}
