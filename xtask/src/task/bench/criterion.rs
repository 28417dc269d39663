//! The kernel-free pipeline benchmark (`tracer-user/benches/pipeline`, criterion): run it, then
//! read each benchmark's mean time per iteration and spans per iteration from criterion's files.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use super::json::number_at;
use crate::step;

/// Benchmark groups and inputs of `benches/pipeline`, as (group, input).
pub const BENCHMARKS: &[(&str, &str)] = &[
    ("pipeline", "server"),
    ("pipeline", "client_server"),
    ("reorder_pipeline", "server"),
    ("reorder_pipeline", "client_server"),
    ("pipeline_otlp", "server"),
    ("pipeline_otlp", "client_server"),
];

/// One benchmark's result.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineFigure {
    pub group: String,
    pub input: String,
    pub spans_per_iteration: f64,
    pub mean_ns_per_iteration: f64,
}

impl PipelineFigure {
    pub fn spans_per_second(&self) -> f64 {
        if self.mean_ns_per_iteration > 0.0 {
            self.spans_per_iteration * 1e9 / self.mean_ns_per_iteration
        } else {
            0.0
        }
    }
}

/// Builds the bench binary without running it (part of the build step).
pub fn build(root: &Path) -> Result<()> {
    let mut command = step::cargo();
    command.current_dir(root).args([
        "bench",
        "-p",
        "tracer-user",
        "--bench",
        "pipeline",
        "--no-run",
    ]);
    step::run("bench: build pipeline benchmark", command)
}

/// Runs every pipeline benchmark, pinned to `cpu` when given, and reads the results.
pub fn run(
    root: &Path,
    target_dir: &Path,
    measurement_secs: u64,
    cpu: Option<usize>,
) -> Result<Vec<PipelineFigure>> {
    let started = SystemTime::now();
    let mut command = match cpu {
        Some(cpu) => {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", &cpu.to_string()])
                .arg(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c
        }
        None => step::cargo(),
    };
    command
        .current_dir(root)
        .args(["bench", "-p", "tracer-user", "--bench", "pipeline", "--"])
        .args([
            "--warm-up-time",
            "1",
            "--measurement-time",
            &measurement_secs.max(1).to_string(),
        ]);
    step::run("bench: pipeline (criterion)", command)?;
    BENCHMARKS
        .iter()
        .map(|(group, input)| read(target_dir, group, input, started))
        .collect()
}

fn read(
    target_dir: &Path,
    group: &str,
    input: &str,
    not_before: SystemTime,
) -> Result<PipelineFigure> {
    let dir = target_dir
        .join("criterion")
        .join(group)
        .join(input)
        .join("new");
    let estimates_path = dir.join("estimates.json");
    let fresh = std::fs::metadata(&estimates_path)
        .and_then(|m| m.modified())
        .is_ok_and(|modified| modified >= not_before);
    if !fresh {
        bail!(
            "criterion wrote no fresh result for {group}/{input} at {}",
            estimates_path.display()
        );
    }
    let estimates = std::fs::read_to_string(&estimates_path)
        .with_context(|| format!("reading {}", estimates_path.display()))?;
    let benchmark = std::fs::read_to_string(dir.join("benchmark.json"))
        .with_context(|| format!("reading {}", dir.join("benchmark.json").display()))?;
    let mean = number_at(&estimates, &["mean", "point_estimate"])
        .with_context(|| format!("no mean in {}", estimates_path.display()))?;
    let spans = number_at(&benchmark, &["throughput", "Elements"])
        .with_context(|| format!("no element throughput for {group}/{input}"))?;
    Ok(PipelineFigure {
        group: group.to_string(),
        input: input.to_string(),
        spans_per_iteration: spans,
        mean_ns_per_iteration: mean,
    })
}
