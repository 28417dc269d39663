//! `--perf`: a system-wide `perf record -a -g` during one traced paced round per agent binary,
//! summarised with `perf report --stdio --no-children` into the top symbols of the agent, the
//! top symbols of the traced processes (nginx and wrk, where eBPF time is charged), and the
//! share of each command. The full reports go to `target/bench/perf-<label>.txt`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::process::Spawned;
use crate::step;

/// Sampling frequency (Hz per CPU): enough for a top list, light on a 2-core machine.
const FREQUENCY: &str = "999";
/// Rows kept per list.
pub const TOP: usize = 12;
/// Lines below this share are left out of the reports.
const PERCENT_LIMIT: &str = "0.3";

/// One line of a perf report: percent and what it is (command and/or symbol).
#[derive(Clone, Debug, PartialEq)]
pub struct PerfLine {
    pub percent: f64,
    pub what: String,
}

/// The summary of one profiled round.
#[derive(Clone, Debug, PartialEq)]
pub struct PerfSummary {
    /// Percent of the agent's samples, by symbol.
    pub agent: Vec<PerfLine>,
    /// Percent of nginx's and wrk's samples, by command and symbol.
    pub traced: Vec<PerfLine>,
    /// Percent of all samples, by command.
    pub commands: Vec<PerfLine>,
    /// The full text reports.
    pub report_path: PathBuf,
}

/// A running `perf record -a -g`.
pub struct Recording {
    process: Spawned,
    data: PathBuf,
}

impl Recording {
    /// Records every CPU for `duration` (perf runs `sleep`, so it stops by itself).
    pub fn start(perf: &Path, dir: &Path, name: &str, duration: Duration) -> Result<Recording> {
        let data = dir.join(format!("{name}.perf.data"));
        let mut command = Command::new(perf);
        command
            .args(["record", "-a", "-g", "-F", FREQUENCY, "-o"])
            .arg(&data)
            .args(["--", "sleep", &duration.as_secs().max(1).to_string()]);
        let process = Spawned::start(&format!("{name}-perf"), command, dir)?;
        Ok(Recording { process, data })
    }

    /// Waits for the recording to end.
    pub fn finish(mut self) -> Result<Recorded> {
        let status = self.process.wait(Duration::from_secs(60))?;
        if !status.success() {
            bail!(
                "perf record exited with {status}\n{}",
                self.process.output()
            );
        }
        Ok(Recorded { data: self.data })
    }
}

/// A finished recording.
pub struct Recorded {
    data: PathBuf,
}

impl Recorded {
    /// Summarises the recording (run after the round, so `perf report` disturbs nothing).
    pub fn summarise(self, perf: &Path, agent_pid: u32, report_path: &Path) -> Result<PerfSummary> {
        let report = |args: &[&str]| -> Result<String> {
            let mut command = Command::new(perf);
            command
                .args(["report", "--stdio", "--no-children", "-g", "none", "-i"])
                .arg(&self.data)
                .args(["--percent-limit", PERCENT_LIMIT])
                .args(args);
            step::announce("bench: perf report", &command);
            let output = command
                .output()
                .with_context(|| format!("running `{}`", step::render(&command)))?;
            if !output.status.success() {
                bail!(
                    "perf report failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        };
        let pid = agent_pid.to_string();
        let agent = report(&["--pid", &pid, "--percentage", "relative", "--sort", "sym"])?;
        let traced = report(&[
            "--comms",
            "nginx,wrk",
            "--percentage",
            "relative",
            "--sort",
            "comm,sym",
        ])?;
        let commands = report(&["--sort", "comm"])?;
        std::fs::write(
            report_path,
            format!(
                "# agent (pid {agent_pid}), by symbol\n{agent}\n# nginx and wrk, by command and symbol\n{traced}\n# all samples, by command\n{commands}"
            ),
        )
        .with_context(|| format!("writing {}", report_path.display()))?;
        let _ = std::fs::remove_file(&self.data);
        Ok(PerfSummary {
            agent: top_lines(&agent, TOP),
            traced: top_lines(&traced, TOP),
            commands: top_lines(&commands, TOP),
            report_path: report_path.to_path_buf(),
        })
    }
}

/// The first `n` sample lines (`  12.34%  what ...`) of a `perf report --stdio` text.
pub fn top_lines(text: &str, n: usize) -> Vec<PerfLine> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let (percent, rest) = l.trim().split_once('%')?;
            let percent: f64 = percent.trim().parse().ok()?;
            let what = rest.split_whitespace().collect::<Vec<_>>().join(" ");
            (!what.is_empty()).then_some(PerfLine { percent, what })
        })
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_are_read_and_headers_skipped() {
        let text = "# Samples: 8K of event 'cpu-clock:ppp'\n#\n# Overhead  Command  Symbol\n\
                    # ........  .......  ......\n#\n\
                    \x20   12.29%  tracer   [k] try_to_wake_up\n\
                    \x20    1.09%  nginx    [.] ngx_http_process_request_line   \n\
                    \n#\n# (Tip: ...)\n";
        let lines = top_lines(text, 10);
        assert_eq!(
            lines,
            vec![
                PerfLine {
                    percent: 12.29,
                    what: "tracer [k] try_to_wake_up".into()
                },
                PerfLine {
                    percent: 1.09,
                    what: "nginx [.] ngx_http_process_request_line".into()
                },
            ]
        );
        assert_eq!(top_lines(text, 1).len(), 1);
        assert!(top_lines("", 5).is_empty());
    }
}
