//! The tracer binary under test: where to find it, `AgentConfig` to start `tracer agent` with
//! arguments and environment, and the `Agent` guard that waits for `probes attached` and
//! stops the agent with SIGTERM (SIGKILL if stuck) when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::process::{ChildGuard, LineWait, free_port};
use crate::receiver::OtlpReceiver;
use crate::settle::{wait_for_metrics, wait_settled};
use crate::span::ObservedSpan;

/// What the agent prints on stderr once its probes are attached.
pub const READY_LINE: &str = "tracer: probes attached";
/// How long an agent may take to attach its probes.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent may take to flush and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables of the test process that must not leak into the agent.
const INHERITED_OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// Said on every failure to start: these tests never skip.
const NEEDS: &str = "the end-to-end tests need root, BTF and tracefs; they fail rather than skip \
                     when probes cannot load";

/// The tracer binary: `$TRACER_BIN`, else `<workspace>/target/debug/tracer`. Panics when missing.
pub fn tracer_bin() -> PathBuf {
    let path = match std::env::var_os("TRACER_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tracer"),
    };
    if !path.is_file() {
        panic!(
            "tracer binary not found at {}: build it with `cargo build -p tracer-user` or set \
             TRACER_BIN (`cargo xtask test` does both)",
            path.display()
        );
    }
    path
}

/// A `tracer` command with the test process's OTEL_* variables removed.
pub fn tracer_command() -> Command {
    let mut command = Command::new(tracer_bin());
    for var in INHERITED_OTEL_VARS {
        command.env_remove(var);
    }
    command
}

/// Arguments and environment for one `tracer agent`.
#[derive(Clone, Debug, Default)]
pub struct AgentConfig {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl AgentConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// `--port PORT` for each port.
    pub fn ports(mut self, ports: &[u16]) -> Self {
        for port in ports {
            self.args.push("--port".to_owned());
            self.args.push(port.to_string());
        }
        self
    }

    /// `--pid PID`.
    pub fn pid(mut self, pid: u32) -> Self {
        self.args.push("--pid".to_owned());
        self.args.push(pid.to_string());
        self
    }

    /// `--format json` (spans as JSON lines on stdout).
    pub fn json(self) -> Self {
        self.arg("--format").arg("json")
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Points the exporter at `receiver` through the standard environment variables.
    pub fn export_to(mut self, receiver: &OtlpReceiver) -> Self {
        self.env.extend(receiver.exporter_env());
        self
    }

    /// The `tracer` command line after the binary.
    pub fn command_line(&self) -> Vec<String> {
        std::iter::once("agent".to_owned())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// The `--metrics-addr` given, if any.
    fn metrics_arg(&self) -> Option<SocketAddr> {
        let at = self.args.iter().position(|a| a == "--metrics-addr")?;
        self.args.get(at + 1)?.parse().ok()
    }

    /// Starts the agent and waits for its probes; panics with its stderr when they do not attach.
    /// Every agent serves `/metrics` (on a free loopback port unless `--metrics-addr` was given),
    /// which [`Agent::wait_settled`] reads.
    pub fn start(mut self) -> Agent {
        let metrics = match self.metrics_arg() {
            Some(addr) => addr,
            None => {
                let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
                self = self.arg("--metrics-addr").arg(addr.to_string());
                addr
            }
        };
        let mut command = tracer_command();
        command.args(self.command_line());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = ChildGuard::spawn("tracer agent", command);
        match child
            .stderr()
            .wait_for_line(READY_TIMEOUT, |line| line.contains(READY_LINE))
        {
            LineWait::Found(_) => Agent {
                child,
                config: self,
                metrics,
            },
            LineWait::Closed => {
                let status = child
                    .wait_timeout(Duration::from_secs(10))
                    .map_or_else(|| "still running".to_owned(), |s| s.to_string());
                panic!(
                    "`tracer {}` exited ({status}) before printing {READY_LINE:?}; {NEEDS}\n{}",
                    self.command_line().join(" "),
                    child.output_report()
                );
            }
            LineWait::TimedOut => {
                child.terminate(Duration::from_secs(5));
                panic!(
                    "`tracer {}` did not print {READY_LINE:?} within {READY_TIMEOUT:?}; {NEEDS}\n{}",
                    self.command_line().join(" "),
                    child.output_report()
                );
            }
        }
    }
}

/// A running agent. Dropping it stops it (SIGTERM, then SIGKILL after a grace period).
pub struct Agent {
    child: ChildGuard,
    config: AgentConfig,
    metrics: SocketAddr,
}

/// How an agent ended.
#[derive(Debug)]
pub struct AgentExit {
    pub command_line: String,
    /// `None` if it could not be reaped even after SIGKILL.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl AgentExit {
    /// Panics with the agent's stderr unless it exited with status 0.
    pub fn assert_success(&self) {
        if !self.status.is_some_and(|s| s.success()) {
            panic!(
                "`tracer {}` ended with {:?} instead of exit status 0\n--- stderr ---\n{}",
                self.command_line, self.status, self.stderr
            );
        }
    }

    /// The spans of the agent's `--format json` output.
    pub fn json_spans(&self) -> Vec<ObservedSpan> {
        json_spans(&self.stdout, &self.stderr)
    }
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn command_line(&self) -> String {
        self.config.command_line().join(" ")
    }

    pub fn stderr_text(&self) -> String {
        self.child.stderr().text()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.child.stdout().lines()
    }

    /// Spans printed so far with `--format json`.
    pub fn json_spans(&self) -> Vec<ObservedSpan> {
        json_spans(&self.stdout_lines(), &self.stderr_text())
    }

    /// Where the agent serves `/metrics`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// Waits until the agent has caught up with everything its probes saw before this call
    /// (records read, reorder window empty, spans delivered or counted) and returns that
    /// `/metrics` page: the barrier before asserting that something did not happen.
    pub fn wait_settled(&mut self) -> String {
        self.assert_running();
        let page = wait_settled(self.metrics, || self.child.output_report());
        self.assert_running();
        page
    }

    /// Waits (up to `timeout`) until the agent logs a line containing `text`; panics with the
    /// agent's output otherwise.
    pub fn wait_log_line(&mut self, what: &str, text: &str, timeout: Duration) {
        self.assert_running();
        match self
            .child
            .stderr()
            .wait_for_line(timeout, |line| line.contains(text))
        {
            LineWait::Found(_) => {}
            LineWait::Closed | LineWait::TimedOut => panic!(
                "waited {timeout:?} for {what} (a log line containing {text:?})\n{}",
                self.child.output_report()
            ),
        }
    }

    /// Waits until `condition` holds on a `/metrics` page taken after this call; returns it.
    pub fn wait_metrics(&mut self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        self.assert_running();
        wait_for_metrics(self.metrics, what, condition, || self.child.output_report())
    }

    /// Panics with the agent's output if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_exit() {
            panic!(
                "`tracer {}` exited early with {status}\n{}",
                self.command_line(),
                self.child.output_report()
            );
        }
    }

    /// Sends SIGTERM and waits for the agent to flush and exit (SIGKILL after `STOP_TIMEOUT`).
    pub fn stop(mut self) -> AgentExit {
        let status = self.child.terminate(STOP_TIMEOUT);
        self.child.stdout().wait_closed(Duration::from_secs(5));
        self.child.stderr().wait_closed(Duration::from_secs(5));
        AgentExit {
            command_line: self.command_line(),
            status,
            stdout: self.stdout_lines(),
            stderr: self.stderr_text(),
        }
    }
}

/// Parses every JSON-object line of `stdout`; panics on a malformed one.
fn json_spans(stdout: &[String], stderr: &str) -> Vec<ObservedSpan> {
    stdout
        .iter()
        .filter(|line| line.trim_start().starts_with('{'))
        .map(|line| {
            ObservedSpan::from_json_line(line).unwrap_or_else(|e| {
                panic!(
                    "agent printed a malformed span line ({e}): {line}\n--- stderr ---\n{stderr}"
                )
            })
        })
        .collect()
}
