//! Load from wrk: a duration-bounded run against one loopback URL, saturating (closed loop) or
//! paced (a fixed pause per connection before each request), summarised by our Lua script.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::step;

/// Marker of the summary line printed by `xtask/bench/wrk_report.lua`.
const RESULT_MARKER: &str = "BENCH_RESULT ";

/// How to load the server.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub connections: u32,
    pub duration: Duration,
    /// Pause before each request on a connection (paced load); `None` saturates.
    pub delay_ms: Option<u32>,
    /// CPU to pin wrk to.
    pub cpu: Option<usize>,
}

/// wrk's summary of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub mean_us: u64,
    pub max_us: u64,
}

impl WrkResult {
    pub fn requests_per_second(&self) -> f64 {
        if self.duration_us == 0 {
            0.0
        } else {
            self.requests as f64 * 1e6 / self.duration_us as f64
        }
    }
}

/// Parses the summary line out of wrk's output.
pub fn parse(output: &str) -> Option<WrkResult> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix(RESULT_MARKER))?;
    let mut result = WrkResult::default();
    for pair in line.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        let slot = match key {
            "requests" => &mut result.requests,
            "duration_us" => &mut result.duration_us,
            "errors" => &mut result.errors,
            "p50_us" => &mut result.p50_us,
            "p90_us" => &mut result.p90_us,
            "p99_us" => &mut result.p99_us,
            "mean_us" => &mut result.mean_us,
            "max_us" => &mut result.max_us,
            _ => continue,
        };
        *slot = value;
    }
    Some(result)
}

/// Runs wrk (one thread) against `url` and returns its summary.
pub fn run(wrk: &Path, script: &Path, url: &str, load: Load) -> Result<WrkResult> {
    let mut command = match load.cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(wrk);
            c
        }
        None => Command::new(wrk),
    };
    command
        .args(["-t1", "-c", &load.connections.to_string()])
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .args(["--timeout", "5s", "-s"])
        .arg(script)
        .arg(url);
    match load.delay_ms {
        Some(ms) => command.env("BENCH_DELAY_MS", ms.to_string()),
        None => command.env_remove("BENCH_DELAY_MS"),
    };
    step::announce("bench: wrk", &command);
    let output = command
        .output()
        .with_context(|| format!("running `{}`", step::render(&command)))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk exited with {}: {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let result = parse(&stdout)
        .with_context(|| format!("no {RESULT_MARKER}line in wrk's output:\n{stdout}"))?;
    if result.requests == 0 {
        bail!("wrk completed no request against {url}:\n{stdout}");
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_is_parsed_among_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/\n  1 threads and 16 connections\n\
                   BENCH_RESULT requests=123456 duration_us=10000000 bytes=99 errors=2 p50_us=110 \
                   p90_us=200 p99_us=950 mean_us=130 max_us=12000\n";
        let r = parse(out).unwrap();
        assert_eq!(r.requests, 123_456);
        assert_eq!((r.p50_us, r.p99_us, r.errors), (110, 950, 2));
        assert!((r.requests_per_second() - 12_345.6).abs() < 1e-6);
        assert_eq!(parse("Running 10s test\n"), None);
        assert_eq!(parse("BENCH_RESULT requests=x\n"), None);
    }
}
