//! The committed history of bench runs (`docs/bench/history.json`): one summary per run (date,
//! commit, machine, and per agent binary the target figures of each scenario), appended by every
//! run, and the trend table `docs/BENCHMARKS.md` shows from it so a regression is visible.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::report::Results;
use super::rounds::{Capture, LoadKind, Scenario, Spread};

/// Rows of the trend table (the most recent ones).
const TREND_ROWS: usize = 30;

fn spread(s: Option<Spread>) -> Value {
    match s {
        Some(s) => {
            json!({ "min": finite(s.min), "median": finite(s.median), "max": finite(s.max) })
        }
        None => Value::Null,
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

fn opt(v: Option<f64>) -> Value {
    v.map_or(Value::Null, finite)
}

/// The figures of one agent in one scenario.
fn scenario_figures(r: &Results<'_>, scenario: Scenario, capture: Capture) -> Option<Value> {
    let cmp = |load| {
        r.comparisons
            .iter()
            .find(|c| c.scenario == scenario && c.load == load && c.capture == capture)
    };
    let cost = |load| {
        r.costs
            .iter()
            .find(|c| c.scenario == scenario && c.load == load && c.capture == capture)
    };
    let (sat, paced) = (cmp(LoadKind::Saturation), cmp(LoadKind::Paced));
    let (sat_cost, paced_cost) = (cost(LoadKind::Saturation), cost(LoadKind::Paced));
    if sat.is_none() && paced.is_none() && sat_cost.is_none() && paced_cost.is_none() {
        return None;
    }
    let all_costs: Vec<_> = [sat_cost, paced_cost].into_iter().flatten().collect();
    let sum = |f: &dyn Fn(&super::rounds::CostSummary) -> Option<u64>| {
        all_costs.iter().map(|c| f(c)).sum::<Option<u64>>()
    };
    Some(json!({
        "saturation_ratio": spread(sat.map(|c| c.ratio)),
        "paced_p50_delta_us": spread(paced.map(|c| c.p50_delta_us)),
        "paced_p99_delta_us": spread(paced.map(|c| c.p99_delta_us)),
        "agent_cpu_s_per_10k_paced": opt(paced_cost.map(|c| c.cpu_seconds_per_10k())),
        "agent_cpu_s_per_10k_saturation": opt(sat_cost.map(|c| c.cpu_seconds_per_10k())),
        "completeness_server_paced": opt(paced_cost.and_then(|c| c.completeness())),
        "completeness_client_paced": opt(paced_cost.and_then(|c| c.client_completeness())),
        "completeness_server_saturation": opt(sat_cost.and_then(|c| c.completeness())),
        "completeness_client_saturation": opt(sat_cost.and_then(|c| c.client_completeness())),
        "traced_cpu_us_per_request_delta_paced":
            spread(paced.and_then(|c| c.traced_cpu_delta_us)),
        "system_cpu_us_per_request_delta_paced":
            spread(paced.and_then(|c| c.system_cpu_delta_us)),
        "peak_rss_mb": opt(all_costs.iter().map(|c| c.peak_rss_mb()).reduce(f64::max)),
        "anon_rss_mb": opt(all_costs.iter().map(|c| c.anon_rss_mb()).reduce(f64::max)),
        "ebpf_ns_per_request_paced": opt(paced_cost.and_then(|c| c.ebpf_ns_per_request_all())),
        "ebpf_ns_per_request_saturation":
            opt(sat_cost.and_then(|c| c.ebpf_ns_per_request_all())),
        "kernel_drops": sum(&|c| c.kernel_drops),
        "userspace_drops": sum(&|c| c.userspace_drops),
    }))
}

/// The summary of one run.
pub fn entry(r: &Results<'_>) -> Value {
    let i = r.info;
    let agents: Vec<Value> = i
        .agents
        .iter()
        .map(|a| {
            let capture = Capture::Tracer(a.label);
            let scenarios: Map<String, Value> = i
                .scenarios
                .iter()
                .filter_map(|s| Some((s.label().to_string(), scenario_figures(r, *s, capture)?)))
                .collect();
            json!({
                "label": a.label,
                "version": a.version,
                "built_by_run": a.built,
                "release_build": a.release,
                "scenarios": scenarios,
            })
        })
        .collect();
    let pipeline: Map<String, Value> = r
        .pipeline
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p.group, p.input),
                finite(p.spans_per_second()),
            )
        })
        .collect();
    json!({
        "date": i.date,
        "commit": i.commit,
        "uncommitted_changes": i.dirty,
        "machine": {
            "cpu_model": i.machine.cpu_model,
            "cpus": i.machine.cpus,
            "kernel": i.machine.kernel,
            "load_at_start": finite(i.load_at_start),
            "others_cpu_share": spread(super::rounds::others_share(r.rounds)),
        },
        "settings": {
            "round_secs": i.round_secs,
            "rounds": i.rounds,
            "paced_secs": i.paced_secs,
            "paced_rounds": i.paced_rounds,
            "agent_args": i.agent_args,
        },
        "pipeline_exchanges_per_second": pipeline,
        "agents": agents,
    })
}

/// The history's entries; none when the file does not exist.
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))? {
        Value::Array(entries) => Ok(entries),
        _ => bail!("{} is not a JSON array", path.display()),
    }
}

/// Appends `entry` to the history at `path` and returns all entries.
pub fn append(path: &Path, entry: Value) -> Result<Vec<Value>> {
    let mut entries = read(path)?;
    entries.push(entry);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(&Value::Array(entries.clone()))?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(entries)
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer)?.as_f64()
}

fn cell(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_string(), f)
}

/// The trend table: one row per run and agent binary, oldest first.
pub fn trend_markdown(entries: &[Value]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| date (UTC) | commit | host load | others' CPU | agent | host-wide sat. ratio | host-wide paced p50 Δ | host-wide CPU-s/10k paced | host-wide CPU-s/10k sat. | host-wide SERVER / CLIENT spans | host-wide peak RSS | host-wide eBPF ns/req sat. | pid sat. ratio | pid CPU-s/10k paced | pipeline+OTLP, both ends |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut rows = Vec::new();
    for e in entries {
        let date = e.get("date").and_then(Value::as_str).unwrap_or("?");
        let commit = e.get("commit").and_then(Value::as_str).unwrap_or("?");
        let dirty = e
            .get("uncommitted_changes")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let load = num(e, "/machine/load_at_start");
        let others = num(e, "/machine/others_cpu_share/median");
        let pipeline = num(
            e,
            "/pipeline_exchanges_per_second/pipeline_otlp~1client_server",
        );
        for a in e
            .get("agents")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let label = a.get("label").and_then(Value::as_str).unwrap_or("?");
            let version = a.get("version").and_then(Value::as_str).unwrap_or("");
            let release = a
                .get("release_build")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let h = |k: &str| num(a, &format!("/scenarios/host-wide/{k}"));
            let p = |k: &str| num(a, &format!("/scenarios/pid/{k}"));
            let completeness = match (
                h("completeness_server_paced"),
                h("completeness_client_paced"),
            ) {
                (None, None) => "–".to_string(),
                (s, c) => format!(
                    "{} / {}",
                    cell(s, |v| format!("{:.2} %", v * 100.0)),
                    cell(c, |v| format!("{:.2} %", v * 100.0))
                ),
            };
            rows.push(format!(
                "| {} | `{}`{} | {} | {} | {}{}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                date.get(..16).unwrap_or(date),
                commit,
                if dirty { "+" } else { "" },
                cell(load, |v| format!("{v:.1}")),
                cell(others, |v| format!("{:.0} %", v * 100.0)),
                label,
                if version.is_empty() {
                    String::new()
                } else {
                    format!(" ({version})")
                },
                if release { "" } else { ", debug build" },
                cell(h("saturation_ratio/median"), |v| format!("{v:.3}")),
                cell(h("paced_p50_delta_us/median"), |v| format!("{v:+.0} µs")),
                cell(h("agent_cpu_s_per_10k_paced"), |v| format!("{v:.3}")),
                cell(h("agent_cpu_s_per_10k_saturation"), |v| format!("{v:.3}")),
                completeness,
                cell(h("peak_rss_mb"), |v| format!("{v:.1} MB")),
                cell(h("ebpf_ns_per_request_saturation"), |v| format!("{v:.0}")),
                cell(p("saturation_ratio/median"), |v| format!("{v:.3}")),
                cell(p("agent_cpu_s_per_10k_paced"), |v| format!("{v:.3}")),
                cell(pipeline, |v| format!("{:.0}k/s", v / 1000.0)),
            ));
        }
    }
    if rows.is_empty() {
        let _ = writeln!(md, "| (no run recorded yet) | | | | | | | | | | | | | | |");
    }
    let skip = rows.len().saturating_sub(TREND_ROWS);
    for row in &rows[skip..] {
        let _ = writeln!(md, "{row}");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_entry(commit: &str, ratio: f64) -> Value {
        json!({
            "date": "2026-11-27T05:00:00Z",
            "commit": commit,
            "uncommitted_changes": false,
            "machine": { "load_at_start": 1.25, "others_cpu_share": { "median": 0.05 } },
            "pipeline_exchanges_per_second": { "pipeline_otlp/client_server": 420000.0 },
            "agents": [
                {
                    "label": "baseline",
                    "version": "tracer 0.1.0",
                    "release_build": true,
                    "scenarios": {
                        "host-wide": {
                            "saturation_ratio": { "min": 0.3, "median": 0.34, "max": 0.4 },
                            "paced_p50_delta_us": { "min": 200.0, "median": 212.0, "max": 230.0 },
                            "agent_cpu_s_per_10k_paced": 1.2,
                            "completeness_server_paced": 1.0,
                            "completeness_client_paced": 0.995,
                            "peak_rss_mb": 36.5,
                            "ebpf_ns_per_request_saturation": 7012.4
                        }
                    }
                },
                {
                    "label": "current",
                    "version": "tracer 0.1.0",
                    "release_build": false,
                    "scenarios": {
                        "host-wide": { "saturation_ratio": { "min": ratio, "median": ratio, "max": ratio } },
                        "pid": { "agent_cpu_s_per_10k_paced": 0.05 }
                    }
                }
            ]
        })
    }

    #[test]
    fn trend_has_a_row_per_run_and_binary() {
        let md = trend_markdown(&[sample_entry("aaaa", 0.9), sample_entry("bbbb", 0.95)]);
        let rows: Vec<&str> = md.lines().skip(2).collect();
        assert_eq!(rows.len(), 4, "{md}");
        assert!(
            rows[0].contains("`aaaa` | 1.2 | 5 % | baseline (tracer 0.1.0)"),
            "{}",
            rows[0]
        );
        assert!(
            rows[0].contains("| 0.340 | +212 µs | 1.200 |"),
            "{}",
            rows[0]
        );
        assert!(rows[0].contains("100.00 % / 99.50 %"), "{}", rows[0]);
        assert!(rows[0].contains("36.5 MB | 7012 |") && rows[0].contains("420k/s"));
        assert!(rows[1].contains("debug build") && rows[1].contains("| 0.900 |"));
        assert!(rows[3].contains("| 0.950 |") && rows[3].contains("| 0.050 |"));
        assert!(trend_markdown(&[]).contains("no run recorded yet"));
    }

    #[test]
    fn append_keeps_earlier_runs() {
        let dir = std::env::temp_dir().join(format!("xtask-history-{}", std::process::id()));
        let path = dir.join("history.json");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(read(&path).unwrap().is_empty());
        append(&path, sample_entry("aaaa", 0.9)).unwrap();
        let all = append(&path, sample_entry("bbbb", 0.95)).unwrap();
        assert_eq!(all.len(), 2);
        let again = read(&path).unwrap();
        assert_eq!(again, all);
        assert_eq!(again[1]["commit"], "bbbb");
        std::fs::write(&path, "{}").unwrap();
        assert!(read(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
