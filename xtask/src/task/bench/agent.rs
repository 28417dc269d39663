//! The tracer agent under test: started for one round (given the server's pids and port, or
//! host-wide with no filter as a DaemonSet runs it, exporting OTLP over HTTP to the bench's
//! receiver), sampled from /proc, and stopped with SIGTERM. Its drop
//! counters come from `/metrics` when the agent has `--metrics-addr`, else from its stderr
//! summaries (`events or spans were dropped ...` and `tracer stopped ...`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::process::{Spawned, free_port};
use super::procfs::{self, ProcSample};

/// What the agent prints once its probes are attached.
const READY_LINE: &str = "tracer: probes attached";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment of the bench process that must not reach the agent.
const CLEARED_ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// Drops the agent reported, summed into kernel and userspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub kernel: u64,
    pub userspace: u64,
    /// Where they were read: `metrics` or `stderr`.
    pub source: &'static str,
    /// Every counter read, by name (non-zero ones only).
    pub detail: BTreeMap<String, u64>,
}

/// How to start the agent.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub binary: PathBuf,
    /// `--pid` filters; none traces the whole host.
    pub pids: Vec<u32>,
    /// `--port` filter; none traces every port.
    pub port: Option<u16>,
    pub endpoint: String,
    /// More agent arguments, as given.
    pub extra_args: Vec<String>,
    /// The agent has `--metrics-addr`.
    pub metrics: bool,
}

/// True when `tracer agent --help` lists `--metrics-addr`.
pub fn has_metrics_flag(binary: &Path) -> bool {
    Command::new(binary)
        .args(["agent", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--metrics-addr"))
}

/// `tracer --version` of a binary (its first line), or `unknown`.
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

pub struct RunningAgent {
    process: Spawned,
    metrics_port: Option<u16>,
}

impl RunningAgent {
    pub fn start(spec: &AgentSpec, dir: &Path, name: &str) -> Result<RunningAgent> {
        let mut command = Command::new(&spec.binary);
        command.arg("agent");
        for pid in &spec.pids {
            command.args(["--pid", &pid.to_string()]);
        }
        if let Some(port) = spec.port {
            command.args(["--port", &port.to_string()]);
        }
        command.args(["--summary-interval", "1"]);
        let metrics_port = if spec.metrics {
            Some(free_port()?)
        } else {
            None
        };
        if let Some(port) = metrics_port {
            command.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
        }
        command.args(&spec.extra_args);
        for var in CLEARED_ENV {
            command.env_remove(var);
        }
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &spec.endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_BSP_SCHEDULE_DELAY", "500")
            .env("TRACER_LOG", "tracer=info")
            .env("NO_COLOR", "1");
        let mut process = Spawned::start(name, command, dir)?;
        process.wait_for_output(READY_LINE, READY_TIMEOUT)?;
        Ok(RunningAgent {
            process,
            metrics_port,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn sample(&self, ticks_per_second: f64) -> Result<ProcSample> {
        procfs::sample(self.pid(), ticks_per_second)
    }

    /// The agent's `/metrics` page, when it serves one.
    pub fn metrics(&self) -> Option<String> {
        scrape(self.metrics_port?).ok()
    }

    /// Reads the drop counters (from `/metrics` while it runs), then stops the agent.
    pub fn stop(mut self) -> Result<DropCounters> {
        let scraped = match self.metrics_port {
            Some(port) => Some(scrape(port).context("scraping the agent's /metrics")?),
            None => None,
        };
        let status = self.process.stop(STOP_TIMEOUT)?;
        let stderr = std::fs::read_to_string(self.process.stderr_path()).unwrap_or_default();
        if !status.success() {
            bail!("the agent exited with {status}\n{}", self.process.output());
        }
        let mut drops = drops_from_stderr(&stderr);
        if let Some(text) = scraped {
            let shutdown = drops.detail.get("dropped_shutdown").copied().unwrap_or(0);
            drops = drops_from_metrics(&text);
            drops.userspace += shutdown;
            if shutdown > 0 {
                drops
                    .detail
                    .insert("spans_dropped_shutdown".into(), shutdown);
            }
        }
        Ok(drops)
    }
}

fn scrape(port: u16) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=integer` pairs of one log line.
fn integer_fields(line: &str) -> impl Iterator<Item = (String, u64)> + '_ {
    line.split_whitespace().filter_map(|word| {
        let (key, value) = word.split_once('=')?;
        Some((key.to_string(), value.trim_end_matches(',').parse().ok()?))
    })
}

/// Drop counters from the agent's stderr: the last drop summary (only printed when something
/// was dropped) and the final `tracer stopped` line.
pub fn drops_from_stderr(stderr: &str) -> DropCounters {
    let mut summary = BTreeMap::new();
    let mut stopped = BTreeMap::new();
    for line in stderr.lines().map(strip_ansi) {
        if line.contains("events or spans were dropped") {
            summary = integer_fields(&line).collect();
        } else if line.contains("tracer stopped") {
            stopped = integer_fields(&line).collect();
        }
    }
    let get = |map: &BTreeMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
    let kernel = summary
        .iter()
        .filter(|(k, _)| k.starts_with("kernel_"))
        .map(|(_, v)| v)
        .sum();
    let queue_full =
        get(&stopped, "dropped_queue_full").max(get(&summary, "spans_dropped_queue_full"));
    let export_failed =
        get(&stopped, "dropped_export_failed").max(get(&summary, "spans_dropped_export_failed"));
    let userspace = queue_full
        + export_failed
        + get(&stopped, "dropped_shutdown")
        + get(&summary, "decode_errors")
        + get(&summary, "connections_evicted");
    let detail = summary
        .into_iter()
        .chain(stopped)
        .filter(|(_, v)| *v > 0)
        .collect();
    DropCounters {
        kernel,
        userspace,
        source: "stderr",
        detail,
    }
}

/// Drop counters from a Prometheus exposition of the agent's metrics.
pub fn drops_from_metrics(text: &str) -> DropCounters {
    const USERSPACE_FAMILIES: &[&str] = &[
        "tracer_spans_dropped_total",
        "tracer_http_messages_dropped_total",
        "tracer_exchanges_dropped_total",
        "tracer_connections_dropped_total",
    ];
    // Exchanges left out by design (the agent's own telemetry, an OTLP pipeline's traffic): not
    // losses. A host-wide agent sees the bench's scrapes of its /metrics and its own exports.
    const BY_DESIGN: &[&str] = &[
        "reason=\"own_telemetry\"",
        "reason=\"telemetry_pipeline\"",
        "reason=\"telemetry_descendant\"",
    ];
    let mut drops = DropCounters {
        source: "metrics",
        ..DropCounters::default()
    };
    for line in text.lines().filter(|l| l.starts_with("tracer_")) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let value = value.max(0.0) as u64;
        let family = series.split('{').next().unwrap_or(series);
        let counted = if family == "tracer_events_dropped_total" {
            if series.contains("stage=\"kernel\"") {
                drops.kernel += value;
            } else {
                drops.userspace += value;
            }
            true
        } else if USERSPACE_FAMILIES.contains(&family) {
            if !BY_DESIGN.iter().any(|r| series.contains(r)) {
                drops.userspace += value;
            }
            true
        } else {
            false
        };
        if counted && value > 0 {
            drops.detail.insert(series.to_string(), value);
        }
    }
    drops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_summaries_give_the_last_totals() {
        let stderr = "tracer: probes attached; exporting OTLP\n\
            2025-11-21T17:00:01Z  WARN tracer::agent: events or spans were dropped (totals since start) kernel_ringbuf_full=3 kernel_conn_table_full=0 kernel_args_table_full=1 spans_dropped_queue_full=0 spans_dropped_export_failed=0 decode_errors=0 connections_evicted=0\n\
            \u{1b}[33m WARN\u{1b}[0m tracer::agent: events or spans were dropped (totals since start) kernel_ringbuf_full=7 kernel_conn_table_full=0 kernel_args_table_full=1 spans_dropped_queue_full=5 spans_dropped_export_failed=0 decode_errors=2 connections_evicted=0\n\
            INFO tracer::agent: tracer stopped spans=100 exported=93 dropped_queue_full=5 dropped_export_failed=0 dropped_shutdown=2\n";
        let drops = drops_from_stderr(stderr);
        assert_eq!(drops.kernel, 8);
        assert_eq!(drops.userspace, 5 + 2 + 2);
        assert_eq!(drops.detail.get("kernel_ringbuf_full"), Some(&7));
        assert_eq!(drops.detail.get("exported"), Some(&93));
        assert_eq!(
            drops_from_stderr("tracer: probes attached\n"),
            DropCounters {
                source: "stderr",
                ..Default::default()
            }
        );
    }

    #[test]
    fn metrics_split_kernel_from_userspace() {
        let text = "# TYPE tracer_events_dropped_total counter\n\
            tracer_events_dropped_total{stage=\"kernel\",reason=\"ringbuf_full\"} 4\n\
            tracer_events_dropped_total{stage=\"decode\",reason=\"malformed\"} 1\n\
            tracer_spans_dropped_total{reason=\"queue_full\"} 10\n\
            tracer_spans_exported_total 990\n\
            tracer_http_messages_dropped_total{reason=\"head_too_large\"} 0\n\
            tracer_exchanges_dropped_total{reason=\"own_telemetry\"} 5\n\
            tracer_exchanges_dropped_total{reason=\"telemetry_pipeline\"} 6\n\
            tracer_exchanges_dropped_total{reason=\"kernel_records_lost\"} 2\n";
        let drops = drops_from_metrics(text);
        // Own telemetry and pipeline traffic are left out by design, not lost.
        assert_eq!((drops.kernel, drops.userspace), (4, 13));
        assert_eq!(drops.detail.len(), 6);
    }
}
