//! The bench's outputs: `docs/BENCHMARKS.md` (tables for people: the host-wide targets per agent
//! binary first, then the trend across commits, then every figure with its spread) and a JSON
//! document with every round and figure, both stamped with the machine, date and commit.

use std::fmt::Write as _;

use super::agent::DropCounters;
use super::criterion::PipelineFigure;
use super::history;
use super::json::Json;
use super::perf::PerfSummary;
use super::procfs::Machine;
use super::rounds::{
    self, Capture, Comparison, CostSummary, LoadKind, Round, Scenario, Spread, kib_to_mb,
};

/// Targets of the host-wide scenario (reported against, never asserted).
pub const TARGET_RATIO: f64 = 0.85;
pub const TARGET_COMPLETENESS: f64 = 1.0;
pub const TARGET_CPU_PER_10K: f64 = 0.10;
pub const TARGET_P50_DELTA_US: f64 = 30.0;
pub const TARGET_RSS_MB: f64 = 32.0;
/// Pipeline with OTLP encoding, exchanges per second on one core.
pub const TARGET_PIPELINE_PER_SEC: f64 = 400_000.0;

/// Above this median share of the machine used by other work, the report warns.
pub const NOISY_OTHERS_SHARE: f64 = 0.2;

/// One agent binary of the run.
#[derive(Clone, Debug, Default)]
pub struct AgentInfo {
    pub label: &'static str,
    /// `tracer --version`.
    pub version: String,
    /// Built from the workspace by this run.
    pub built: bool,
    /// Not a debug build (judged by its path).
    pub release: bool,
}

/// How the run was set up.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    pub date: String,
    pub commit: String,
    pub dirty: bool,
    pub machine: Machine,
    pub scenarios: Vec<Scenario>,
    pub agents: Vec<AgentInfo>,
    pub round_secs: u64,
    pub rounds: usize,
    pub paced_secs: u64,
    pub paced_rounds: usize,
    pub paced_connections: u32,
    pub paced_delay_ms: u32,
    pub nginx_connections: u32,
    pub python_connections: u32,
    /// (server CPU, wrk CPU) when pinned.
    pub pinning: Option<(usize, usize)>,
    /// Extra agent arguments (empty: the agent's defaults).
    pub agent_args: String,
    pub load_at_start: f64,
    pub duration_secs: f64,
    pub json_path: String,
    /// Where drop counters were read (`metrics` or `stderr`).
    pub counters_source: String,
    /// OTLP export requests the receiver answered, and refused (refusals would mean spans it
    /// could not count).
    pub export_requests: u64,
    pub export_requests_refused: u64,
}

/// The perf summary of one agent binary's profiled round.
#[derive(Clone, Debug)]
pub struct Profile {
    pub scenario: Scenario,
    pub label: &'static str,
    pub summary: PerfSummary,
}

/// Everything measured in one run.
pub struct Results<'a> {
    pub info: &'a RunInfo,
    pub rounds: &'a [Round],
    pub comparisons: &'a [Comparison],
    pub costs: &'a [CostSummary],
    pub pipeline: &'a [PipelineFigure],
    pub profiles: &'a [Profile],
    /// Every run of the history, this one last.
    pub history: Vec<serde_json::Value>,
}

fn find_cmp<'r>(
    r: &'r Results<'_>,
    scenario: Scenario,
    load: LoadKind,
    capture: Capture,
) -> Option<&'r Comparison> {
    r.comparisons
        .iter()
        .find(|c| c.scenario == scenario && c.load == load && c.capture == capture)
}

fn find_cost<'r>(
    r: &'r Results<'_>,
    scenario: Scenario,
    load: LoadKind,
    capture: Capture,
) -> Option<&'r CostSummary> {
    r.costs
        .iter()
        .find(|c| c.scenario == scenario && c.load == load && c.capture == capture)
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

fn fmt_opt(value: Option<f64>, f: impl Fn(f64) -> String) -> String {
    value
        .filter(|v| v.is_finite())
        .map_or_else(|| "n/a".to_string(), f)
}

fn pct(v: f64) -> String {
    format!("{:.2} %", v * 100.0)
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn signed_us(d: f64) -> String {
    format!("{}{}", if d >= 0.0 { "+" } else { "−" }, d.abs().round())
}

/// More than one round, and not all equal.
fn varies(s: Spread) -> bool {
    s.count > 1 && s.min != s.max
}

/// `median (min–max)`, or just the value for one round.
fn spread(s: Spread, f: impl Fn(f64) -> String) -> String {
    if !varies(s) {
        f(s.median)
    } else {
        format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
    }
}

fn spread_opt(s: Option<Spread>, f: impl Fn(f64) -> String) -> String {
    s.map_or_else(|| "n/a".to_string(), |s| spread(s, f))
}

fn delta_spread(s: Spread) -> String {
    format!("{} µs", spread(s, signed_us))
}

fn ratio3(v: f64) -> String {
    format!("{v:.3}")
}

fn us1(v: f64) -> String {
    format!("{v:.1}")
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| v.to_string())
}

fn pipeline_rate(r: &Results<'_>, group: &str, input: &str) -> Option<f64> {
    r.pipeline
        .iter()
        .find(|p| p.group == group && p.input == input)
        .map(PipelineFigure::spans_per_second)
}

/// The Markdown report.
pub fn markdown(r: &Results<'_>) -> String {
    let i = r.info;
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` (rerun it to refresh this page); every round and figure is \
         also in `{}`, and each run's summary is appended to `docs/bench/history.json` (the trend \
         table below).\n",
        i.json_path
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| date (UTC) | {} |", i.date);
    let _ = writeln!(
        md,
        "| commit | `{}`{} |",
        i.commit,
        if i.dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    );
    let m = &i.machine;
    let _ = writeln!(
        md,
        "| machine | {}, {} CPUs, {:.1} GiB |",
        m.cpu_model, m.cpus, m.memory_gib
    );
    let _ = writeln!(md, "| system | {}, Linux {} |", m.os, m.kernel);
    let _ = writeln!(
        md,
        "| host load average at start | {:.2} (the machine may be shared) |",
        i.load_at_start
    );
    let _ = writeln!(md, "| run time | {:.0} s |", i.duration_secs);
    let _ = writeln!(
        md,
        "| scenarios | {} |",
        i.scenarios
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for a in &i.agents {
        let _ = writeln!(
            md,
            "| agent `{}` | {}{}{} |",
            a.label,
            a.version,
            if a.built {
                ", built from this commit"
            } else {
                ""
            },
            if a.release { "" } else { ", **debug build**" }
        );
    }
    let _ = writeln!(
        md,
        "| agent options | {} |",
        if i.agent_args.is_empty() {
            "defaults".to_string()
        } else {
            format!("`{}`", i.agent_args)
        }
    );
    let _ = writeln!(
        md,
        "| OTLP export requests received / refused | {} / {} |",
        i.export_requests, i.export_requests_refused
    );
    let _ = writeln!(md);
    let pin = match i.pinning {
        Some((server, wrk)) => format!(
            "The server is pinned to CPU {server} and wrk to CPU {wrk}; the agent and bpftrace are not pinned"
        ),
        None => "Nothing is pinned".to_string(),
    };
    let _ = writeln!(
        md,
        "Method: loopback only, keep-alive. Saturation rounds: `wrk -t1` for {} s ({} connections to nginx, {} to \
         Python). Paced rounds: {} connections each pausing {} ms before every request, {} s. Each round number \
         runs untraced first, then every agent binary (their order rotates from one round number to the next), \
         then bpftrace: {} saturation and {} paced rounds of each. {pin}. Scenarios: `host-wide` runs \
         `tracer agent` with no `--pid`/`--port` filter, as the DaemonSet does, so wrk (CLIENT) and nginx (SERVER) \
         are both traced, and so is any other traffic on the host (its spans are counted per round as \
         `other spans`; the agent's CPU includes their cost); `pid` runs `tracer agent --pid <nginx pids> \
         --port <nginx port>` (server side only); `python` does the same for a Python server. The agent exports \
         OTLP/HTTP to a counting receiver in the harness, which counts only the spans whose `server.port` is the \
         server's; it is started before and stopped after each of its rounds, and its CPU is the utime+stime \
         delta of its process from just before the load to after the last span arrived. Ratios and deltas \
         pair each round with the untraced round of the same number and show the median with (min–max) over \
         the pairs. Drop counters come from the agent's {}.\n",
        i.round_secs,
        i.nginx_connections,
        i.python_connections,
        i.paced_connections,
        i.paced_delay_ms,
        i.paced_secs,
        i.rounds,
        i.paced_rounds,
        i.counters_source,
    );

    let others = rounds::others_share(r.rounds);
    let _ = writeln!(
        md,
        "Other work on the machine during the load: {} of its CPU capacity, median (min–max) over the rounds.\n",
        spread_opt(others, |v| format!("{:.0} %", v * 100.0))
    );
    if others.is_some_and(|o| o.median > NOISY_OTHERS_SHARE) {
        let _ = writeln!(
            md,
            "> **A shared, busy machine**: other work used more than {:.0} % of the CPUs during most rounds; \
             ratios and latency deltas vary widely between rounds (see the min–max) and are not a verdict.\n",
            NOISY_OTHERS_SHARE * 100.0
        );
    }
    if i.agents.iter().any(|a| !a.release) {
        let _ = writeln!(
            md,
            "> **A debug build was measured**: its CPU, latency and memory figures say nothing about a \
             release build's.\n"
        );
    }
    targets(&mut md, r);
    propagation(&mut md, r);

    let _ = writeln!(md, "## Trend across runs\n");
    let _ = writeln!(
        md,
        "From `docs/bench/history.json` (one row per run and agent binary; medians; `+` after a commit: \
         uncommitted changes; host load: the 1-minute load average when the run started; others' CPU: the \
         median share of the machine other work used during the load). Compare rows of the same machine and settings.\n"
    );
    md.push_str(&history::trend_markdown(&r.history));
    let _ = writeln!(md);

    overhead(&mut md, r);
    cpu_per_request(&mut md, r);
    kernel_side(&mut md, r);
    completeness(&mut md, r);
    peer(&mut md, r);
    pipeline(&mut md, r);
    profiles(&mut md, r);
    raw_rounds(&mut md, r);
    md
}

/// Propagation on against off: the `host-wide-prop` scenario's figures beside `host-wide`'s, each
/// against its own untraced rounds of the same run.
fn propagation(md: &mut String, r: &Results<'_>) {
    let (off, on) = (Scenario::HostWide, Scenario::HostWidePropagation);
    if !(r.info.scenarios.contains(&off) && r.info.scenarios.contains(&on)) {
        return;
    }
    let _ = writeln!(
        md,
        "## Context propagation on vs off (host-wide)\n\n`host-wide-prop` is `host-wide` with \
         `--context-propagation tcp-options`: the kernel decides each HTTP/1 request's identity \
         and scans SERVER heads for `traceparent`. nginx and wrk talk over loopback, which \
         carries no option: this is the mode's cost on the data path, not the option writing's. \
         Medians (min–max) over rounds.\n"
    );
    let _ = writeln!(
        md,
        "| agent | figure | off | on | on − off |\n|---|---|---|---|---|"
    );
    for a in &r.info.agents {
        let c = Capture::Tracer(a.label);
        let cost = |s, load| find_cost(r, s, load, c).map(|x| x.cpu_seconds_per_10k());
        for load in [LoadKind::Paced, LoadKind::Saturation] {
            let (x, y) = (cost(off, load), cost(on, load));
            let cell = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3} CPU-s"));
            let delta = match (x, y) {
                (Some(x), Some(y)) => format!("{:+.3} CPU-s", y - x),
                _ => "n/a".to_string(),
            };
            let _ = writeln!(
                md,
                "| `{}` | agent CPU per 10,000 requests ({}) | {} | {} | {delta} |",
                a.label,
                load.label(),
                cell(x),
                cell(y)
            );
        }
        let p50 = |s| find_cmp(r, s, LoadKind::Paced, c).map(|x| x.p50_delta_us);
        let (x, y) = (p50(off), p50(on));
        let cell = |v: Option<Spread>| v.map_or("n/a".to_string(), delta_spread);
        let delta = match (x, y) {
            (Some(x), Some(y)) => format!("{:+.0} µs", y.median - x.median),
            _ => "n/a".to_string(),
        };
        let _ = writeln!(
            md,
            "| `{}` | p50 latency delta against untraced (paced) | {} | {} | {delta} |",
            a.label,
            cell(x),
            cell(y)
        );
    }
    let _ = writeln!(md);
}

/// One target row: a cell per agent binary.
fn target_row(
    md: &mut String,
    agents: &[AgentInfo],
    figure: &str,
    target: &str,
    cell: impl Fn(Capture) -> (String, Option<bool>),
) {
    let cells: Vec<String> = agents
        .iter()
        .map(|a| {
            let (text, ok) = cell(Capture::Tracer(a.label));
            match ok {
                Some(_) => format!("{text} — {}", met(ok)),
                None => text,
            }
        })
        .collect();
    let target = if target.is_empty() { "—" } else { target };
    let _ = writeln!(md, "| {figure} | {target} | {} |", cells.join(" | "));
}

fn targets(md: &mut String, r: &Results<'_>) {
    let agents = &r.info.agents;
    let hw = Scenario::HostWide;
    let _ = writeln!(
        md,
        "## Targets: host-wide, both ends traced\n\nMedian (min–max) over rounds; `yes`/**no**: the \
         median meets the target.\n"
    );
    let _ = writeln!(
        md,
        "| figure | target | {} |",
        agents
            .iter()
            .map(|a| format!("`{}`", a.label))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(agents.len()));
    if !r.info.scenarios.contains(&hw) {
        let _ = writeln!(
            md,
            "| (host-wide scenario not run) | | {}",
            "|".repeat(agents.len())
        );
    }
    let na = || ("n/a".to_string(), None);
    target_row(
        md,
        agents,
        "throughput ratio, traced / untraced (saturation)",
        &format!("≥ {TARGET_RATIO}"),
        |c| {
            find_cmp(r, hw, LoadKind::Saturation, c).map_or_else(na, |c| {
                (
                    spread(c.ratio, ratio3),
                    Some(c.ratio.median >= TARGET_RATIO),
                )
            })
        },
    );
    target_row(
        md,
        agents,
        "p50 latency delta (paced)",
        &format!("≤ {TARGET_P50_DELTA_US} µs"),
        |c| {
            find_cmp(r, hw, LoadKind::Paced, c).map_or_else(na, |c| {
                (
                    delta_spread(c.p50_delta_us),
                    Some(c.p50_delta_us.median <= TARGET_P50_DELTA_US),
                )
            })
        },
    );
    target_row(md, agents, "p99 latency delta (paced)", "", |c| {
        find_cmp(r, hw, LoadKind::Paced, c)
            .map_or_else(na, |c| (delta_spread(c.p99_delta_us), None))
    });
    for (load, target) in [
        (LoadKind::Paced, format!("≤ {TARGET_CPU_PER_10K:.2} CPU-s")),
        (LoadKind::Saturation, String::new()),
    ] {
        target_row(
            md,
            agents,
            &format!("agent CPU per 10,000 requests ({})", load.label()),
            &target,
            |c| {
                find_cost(r, hw, load, c).map_or_else(na, |cost| {
                    let total = cost.cpu_seconds_per_10k();
                    let text = match cost.cpu_per_10k {
                        Some(s) if varies(s) => {
                            format!("{total:.3} ({:.3}–{:.3}) CPU-s", s.min, s.max)
                        }
                        _ => format!("{total:.3} CPU-s"),
                    };
                    let ok = (load == LoadKind::Paced && total.is_finite())
                        .then_some(total <= TARGET_CPU_PER_10K);
                    (text, ok)
                })
            },
        );
    }
    target_row(
        md,
        agents,
        "nginx + wrk CPU per request, traced − untraced (paced)",
        "",
        |c| {
            find_cmp(r, hw, LoadKind::Paced, c).map_or_else(na, |c| {
                (
                    c.traced_cpu_delta_us
                        .map_or("n/a".to_string(), |s| spread(s, signed_us) + " µs"),
                    None,
                )
            })
        },
    );
    target_row(
        md,
        agents,
        "machine CPU per request, traced − untraced (paced)",
        "",
        |c| {
            find_cmp(r, hw, LoadKind::Paced, c).map_or_else(na, |c| {
                (
                    c.system_cpu_delta_us
                        .map_or("n/a".to_string(), |s| spread(s, signed_us) + " µs"),
                    None,
                )
            })
        },
    );
    for (what, client) in [("SERVER", false), ("CLIENT", true)] {
        target_row(
            md,
            agents,
            &format!("{what} spans / requests (paced)"),
            "100 %",
            |c| {
                let v = find_cost(r, hw, LoadKind::Paced, c).and_then(|cost| {
                    if client {
                        cost.client_completeness()
                    } else {
                        cost.completeness()
                    }
                });
                (fmt_opt(v, pct), v.map(|v| v >= TARGET_COMPLETENESS))
            },
        );
    }
    target_row(
        md,
        agents,
        "agent peak RSS (VmHWM)",
        &format!("≤ {TARGET_RSS_MB} MB"),
        |c| {
            let rss = r
                .costs
                .iter()
                .filter(|x| x.scenario == hw && x.capture == c)
                .map(CostSummary::peak_rss_mb)
                .reduce(f64::max);
            (
                fmt_opt(rss, |v| format!("{v:.1} MB")),
                rss.map(|v| v <= TARGET_RSS_MB),
            )
        },
    );
    target_row(md, agents, "kernel / userspace drops", "0", |c| {
        let costs: Vec<&CostSummary> = r
            .costs
            .iter()
            .filter(|x| x.scenario == hw && x.capture == c)
            .collect();
        if costs.is_empty() {
            return na();
        }
        let kernel = costs.iter().map(|c| c.kernel_drops).sum::<Option<u64>>();
        let user = costs.iter().map(|c| c.userspace_drops).sum::<Option<u64>>();
        (format!("{} / {}", count(kernel), count(user)), None)
    });
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Pipeline (workspace source at this commit, criterion, one core): target ≥ {}k exchanges/s with OTLP encoding.\n",
        TARGET_PIPELINE_PER_SEC / 1000.0
    );
    let _ = writeln!(md, "| benchmark | measured | met |\n|---|---|---|");
    for input in ["server", "client_server"] {
        let rate = pipeline_rate(r, "pipeline_otlp", input);
        let _ = writeln!(
            md,
            "| `pipeline_otlp/{input}` | {} | {} |",
            fmt_opt(rate, |v| format!("{:.0}k exchanges/s", v / 1000.0)),
            met(rate.map(|v| v >= TARGET_PIPELINE_PER_SEC))
        );
    }
    let _ = writeln!(md);
}

fn overhead(md: &mut String, r: &Results<'_>) {
    let _ = writeln!(md, "## Overhead on the traced server\n");
    let _ = writeln!(
        md,
        "Medians over the rounds with (min–max); ratio and deltas pair each round with the untraced round of \
         the same number, scenario and load.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | load | capture | rounds | req/s untraced | req/s captured | ratio | p50 untraced | p50 Δ | p99 untraced | p99 Δ |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let rps = |v: f64| format!("{v:.0}");
    for c in r.comparisons {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} + {} | {} | {} | {} | {} | {} | {} | {} |",
            c.scenario.label(),
            c.load.label(),
            c.capture.label(),
            c.base_rounds,
            c.rounds,
            spread(c.base_rps, rps),
            spread(c.rps, rps),
            spread(c.ratio, ratio3),
            us(c.base_p50_us.median),
            delta_spread(c.p50_delta_us),
            us(c.base_p99_us.median),
            delta_spread(c.p99_delta_us),
        );
    }
    let _ = writeln!(md);
}

fn cpu_per_request(md: &mut String, r: &Results<'_>) {
    let _ = writeln!(md, "## CPU per request: traced processes and the machine\n");
    let _ = writeln!(
        md,
        "eBPF programs run in the context of the traced processes and are charged to them, so the agent's own \
         CPU is not all of the cost. `server + client`: utime+stime of the server's processes (nginx master and \
         worker) plus wrk's (in the pid scenarios wrk is not traced, but its CPU is shown for comparison), per \
         request handled, during the load. `machine`: busy time of all CPUs from /proc/stat per request: it \
         includes the agent and eBPF, and also any other work on a shared machine. µs per request, median \
         (min–max); Δ pairs each round with its untraced neighbour.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | load | capture | server + client untraced | server + client captured | Δ | machine untraced | machine captured | Δ |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for c in r.comparisons {
        let d = |s: Option<Spread>| s.map_or("n/a".to_string(), |s| spread(s, signed_us));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.scenario.label(),
            c.load.label(),
            c.capture.label(),
            spread_opt(c.base_traced_cpu_us, us1),
            spread_opt(c.traced_cpu_us, us1),
            d(c.traced_cpu_delta_us),
            spread_opt(c.base_system_cpu_us, us1),
            spread_opt(c.system_cpu_us, us1),
            d(c.system_cpu_delta_us),
        );
    }
    let _ = writeln!(md);
}

/// Programs shown per agent in the kernel-side table and the JSON.
const TOP_PROGRAMS: usize = 6;

fn kernel_side(md: &mut String, r: &Results<'_>) {
    let measured: Vec<_> = r
        .costs
        .iter()
        .filter(|c| c.ebpf_ns_per_request_all().is_some())
        .collect();
    if measured.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Kernel side: eBPF run time per request
"
    );
    let _ = writeln!(
        md,
        "Run time of the agent's own eBPF programs during the load (the kernel's `run_time_ns`, counted \
         while the bench holds eBPF statistics on), over requests handled: CPU charged to the traced \
         processes, not to the agent. Host-wide it includes every other process's syscalls on the machine. \
         ns per request, all rounds (per-round min–max); the most expensive programs (named as the kernel \
         keeps them: at most 15 characters) with their runs per request and ns per run.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | load | agent | eBPF ns per request | top programs: ns/req (runs/req × ns/run) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for c in measured {
        let requests = c.ebpf_requests.max(1) as f64;
        let top = c
            .ebpf_programs
            .iter()
            .take(TOP_PROGRAMS)
            .map(|p| {
                format!(
                    "`{}` {:.0} ({:.2} × {:.0})",
                    p.name,
                    p.run_time_ns as f64 / requests,
                    p.run_cnt as f64 / requests,
                    p.run_time_ns as f64 / p.run_cnt.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let per_round = match c.ebpf_ns_per_request {
            Some(s) if varies(s) => format!(" ({:.0}–{:.0})", s.min, s.max),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0}{per_round} | {top} |",
            c.scenario.label(),
            c.load.label(),
            c.capture.label(),
            c.ebpf_ns_per_request_all().unwrap_or(f64::NAN),
        );
    }
    let _ = writeln!(md);
}

fn completeness(md: &mut String, r: &Results<'_>) {
    let _ = writeln!(md, "## Completeness and agent cost\n");
    let _ = writeln!(
        md,
        "Requests are nginx's access-log lines (wrk's count for Python, which can be a few short of what \
        the server answered when wrk stops). In parentheses: requests nginx answered that wrk never read (in \
        flight when its run ended; wrk exits without reading them or closing its sockets): the agent ends their \
        CLIENT spans as `connection_closed` when /proc shows those sockets gone (within about 2 s of the exit), so \
        they count as CLIENT spans too. SERVER (CLIENT) completeness = SERVER (CLIENT) spans of the \
        server's port received / requests; CLIENT spans are expected host-wide only. CPU-s per 10k: all rounds' \
        agent CPU over all rounds' requests, with the per-round (min–max). Peak RSS is VmHWM, which counts mapped \
        file pages too: the binary's code and the BPF ring buffer (its data pages once; agents that read the ring \
        through aya's RingBuf map them twice, which doubles the ring's share of RSS but not of memory); anon RSS \
        is the heap and stacks at the end of the round.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | load | agent | req/s | requests | SERVER spans | SERVER completeness | CLIENT spans | CLIENT completeness | kernel drops | userspace drops | CPU-s per 10k req | peak RSS | anon RSS |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in r.costs.iter().filter(|c| c.capture.is_tracer()) {
        let per_round = match c.cpu_per_10k {
            Some(s) if varies(s) => {
                format!(" ({:.3}–{:.3})", s.min, s.max)
            }
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {}{} | {} | {} | {} | {} | {} | {} | {:.3}{per_round} | {:.1} MB | {:.1} MB |",
            c.scenario.label(),
            c.load.label(),
            c.capture.label(),
            c.rps,
            c.requests,
            match (c.requests_from_log, c.unread_by_client) {
                (false, _) => " (wrk)".to_string(),
                (true, 0) => String::new(),
                (true, n) => format!(" ({n} unread by wrk)"),
            },
            count(c.server_spans),
            fmt_opt(c.completeness(), pct),
            count(c.client_spans),
            fmt_opt(c.client_completeness(), pct),
            count(c.kernel_drops),
            count(c.userspace_drops),
            c.cpu_seconds_per_10k(),
            c.peak_rss_mb(),
            c.anon_rss_mb()
        );
    }
    let _ = writeln!(md);
}

fn peer(md: &mut String, r: &Results<'_>) {
    let _ = writeln!(
        md,
        "## Peer baseline: bpftrace printing the captured bytes (pid scenario)\n"
    );
    let _ = writeln!(
        md,
        "`xtask/bench/capture.bt` follows the nginx worker's reads and writes and prints their bytes \
        (no connection tracking, no HTTP parsing, no spans) to a file: what a hand-rolled capture costs next to the \
        agent, which does all of that.\n"
    );
    let _ = writeln!(
        md,
        "| load | capture | ratio | p99 Δ | CPU-s per 10k req | peak RSS | events lost | output |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let mut captures: Vec<Capture> = r
        .info
        .agents
        .iter()
        .map(|a| Capture::Tracer(a.label))
        .collect();
    captures.push(Capture::Bpftrace);
    let mut any = false;
    for load in [LoadKind::Saturation, LoadKind::Paced] {
        for capture in &captures {
            let (Some(c), Some(cost)) = (
                find_cmp(r, Scenario::Pid, load, *capture),
                find_cost(r, Scenario::Pid, load, *capture),
            ) else {
                continue;
            };
            any = true;
            let lost = match capture {
                Capture::Tracer(_) => format!(
                    "{} kernel + {} userspace",
                    count(cost.kernel_drops),
                    count(cost.userspace_drops)
                ),
                _ => count(cost.lost_events),
            };
            let output = match capture {
                Capture::Tracer(_) => format!("{} spans", count(cost.server_spans)),
                _ => cost.printed_bytes.map_or("n/a".to_string(), |b| {
                    format!("{:.1} MB of text", b as f64 / 1e6)
                }),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.3} | {:.1} MB | {lost} | {output} |",
                load.label(),
                capture.label(),
                spread(c.ratio, ratio3),
                delta_spread(c.p99_delta_us),
                cost.cpu_seconds_per_10k(),
                cost.peak_rss_mb()
            );
        }
    }
    if !any {
        let _ = writeln!(md, "| (not run) | | | | | | | |");
    }
    let _ = writeln!(md);
}

fn pipeline(md: &mut String, r: &Results<'_>) {
    let _ = writeln!(md, "## Pipeline without a kernel (criterion, one core)\n");
    let _ = writeln!(
        md,
        "`tracer-user/benches/pipeline`: recorded kernel records of 64 keep-alive connections × 32 GET \
        requests (nginx-like 612-byte responses), decoded and run through `Pipeline` into spans. An exchange is \
        one request and its response as one traced process sees them, and becomes one span. `server`: only the \
        server is traced (one exchange per request); `client_server`: client and server on one host (two \
        exchanges per request, the SERVER span linked to its CLIENT span by connection pairing). \
        `reorder_pipeline` adds the agent's 20 ms reorder window; `pipeline_otlp` adds OTLP protobuf encoding \
        in batches of 512. Run time varies with other work on a shared machine; instruction counts \
        (callgrind) do not.\n"
    );
    let _ = writeln!(
        md,
        "| benchmark | stream | exchanges per iteration | mean time per iteration | exchanges (spans)/s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for p in r.pipeline {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} ms | {:.0}k |",
            p.group,
            p.input,
            p.spans_per_iteration,
            p.mean_ns_per_iteration / 1e6,
            p.spans_per_second() / 1000.0
        );
    }
    if r.pipeline.is_empty() {
        let _ = writeln!(md, "| (not run) | | | | |");
    }
    let _ = writeln!(md);
}

fn profiles(md: &mut String, r: &Results<'_>) {
    if r.profiles.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Profile (`--perf`)\n");
    let _ = writeln!(
        md,
        "`perf record -a -g` during one extra paced round per agent binary (not in the tables above), summarised \
         by `perf report --stdio --no-children`; full reports in `target/bench/perf-<agent>.txt`. `[k]`: \
         kernel, `[.]`: user space; eBPF programs appear as `bpf_prog_*` in the traced processes.\n"
    );
    for p in r.profiles {
        let s = &p.summary;
        let _ = writeln!(
            md,
            "### `{}` ({} scenario)\n\n| % of the agent | agent symbol | % of nginx + wrk | nginx / wrk symbol | % of all samples | command |\n|---|---|---|---|---|---|",
            p.label,
            p.scenario.label()
        );
        let rows = s.agent.len().max(s.traced.len()).max(s.commands.len());
        let cell = |lines: &[super::perf::PerfLine], i: usize| {
            lines.get(i).map_or(" | ".to_string(), |l| {
                format!("{:.1} % | `{}`", l.percent, l.what.replace('|', "\\|"))
            })
        };
        for i in 0..rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                cell(&s.agent, i),
                cell(&s.traced, i),
                cell(&s.commands, i)
            );
        }
        let _ = writeln!(md);
    }
}

fn raw_rounds(md: &mut String, r: &Results<'_>) {
    let _ = writeln!(md, "## Rounds\n");
    let _ = writeln!(
        md,
        "`others' CPU`: the share of the machine's capacity that other work used during the load (all CPUs' \
         busy time minus the server's, wrk's and the capture's): a round disturbed by other work on a shared \
         machine shows here. `host load`: the 1-minute load average at the end of the round.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | load | capture | # | req/s | p50 | p99 | wrk errors | requests | server + client µs/req | machine µs/req | capture CPU-s | SERVER / CLIENT spans | other spans | peak RSS | others' CPU | host load |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for round in r.rounds {
        let (cpu, rss, spans, other) = round.cost.as_ref().map_or_else(Default::default, |c| {
            (
                format!("{:.2}", c.cpu_seconds),
                format!("{:.1} MB", kib_to_mb(c.peak_rss_kib)),
                c.spans
                    .map_or(String::new(), |s| format!("{} / {}", s.server, s.client)),
                c.other_spans.map_or(String::new(), |o| o.to_string()),
            )
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} | {cpu} | {spans} | {other} | {rss} | {} | {:.2} |",
            round.scenario.label(),
            round.load.label(),
            round.capture.label(),
            round.index + 1,
            round.wrk.requests_per_second(),
            us(round.wrk.p50_us as f64),
            us(round.wrk.p99_us as f64),
            round.wrk.errors,
            round.requests,
            round.traced_cpu_us_per_request(),
            round.system_cpu_us_per_request(),
            fmt_opt(Some(round.load_cpu.others_share()), |v| format!(
                "{:.0} %",
                v * 100.0
            )),
            round.host_load
        );
    }
}

fn drops_json(d: &DropCounters) -> Json {
    Json::object([
        ("kernel", Json::num(d.kernel as f64)),
        ("userspace", Json::num(d.userspace as f64)),
        ("source", Json::str(d.source)),
        (
            "detail",
            Json::object(
                d.detail
                    .iter()
                    .map(|(k, v)| (k.clone(), Json::num(*v as f64))),
            ),
        ),
    ])
}

fn spread_json(s: Option<Spread>) -> Json {
    s.map_or(Json::Null, |s| {
        Json::object([
            ("min", Json::num(s.min)),
            ("median", Json::num(s.median)),
            ("max", Json::num(s.max)),
            ("count", Json::num(s.count as f64)),
        ])
    })
}

fn opt_u64(v: Option<u64>) -> Json {
    Json::opt(v.map(|v| v as f64))
}

/// The JSON document.
pub fn json(r: &Results<'_>) -> Json {
    let i = r.info;
    let m = &i.machine;
    let rounds = r.rounds.iter().map(|round| {
        let cost = round.cost.as_ref().map_or(Json::Null, |c| {
            Json::object([
                ("cpu_seconds", Json::num(c.cpu_seconds)),
                ("peak_rss_kib", Json::num(c.peak_rss_kib as f64)),
                ("anon_rss_kib", Json::num(c.anon_rss_kib as f64)),
                (
                    "spans",
                    c.spans.map_or(Json::Null, |s| {
                        Json::object([
                            ("server", Json::num(s.server as f64)),
                            ("client", Json::num(s.client as f64)),
                            ("other", Json::num(s.other as f64)),
                        ])
                    }),
                ),
                ("other_spans", opt_u64(c.other_spans)),
                ("drops", c.drops.as_ref().map_or(Json::Null, drops_json)),
                ("lost_events", opt_u64(c.lost_events)),
                ("printed_bytes", opt_u64(c.printed_bytes)),
            ])
        });
        Json::object([
            ("scenario", Json::str(round.scenario.label())),
            ("server", Json::str(round.scenario.server())),
            ("load", Json::str(round.load.label())),
            ("capture", Json::str(round.capture.label())),
            ("index", Json::num(round.index as f64)),
            (
                "requests_per_second",
                Json::num(round.wrk.requests_per_second()),
            ),
            ("wrk_requests", Json::num(round.wrk.requests as f64)),
            ("duration_us", Json::num(round.wrk.duration_us as f64)),
            ("errors", Json::num(round.wrk.errors as f64)),
            ("p50_us", Json::num(round.wrk.p50_us as f64)),
            ("p90_us", Json::num(round.wrk.p90_us as f64)),
            ("p99_us", Json::num(round.wrk.p99_us as f64)),
            ("mean_us", Json::num(round.wrk.mean_us as f64)),
            ("max_us", Json::num(round.wrk.max_us as f64)),
            ("requests", Json::num(round.requests as f64)),
            (
                "requests_from_access_log",
                Json::Bool(round.requests_from_log),
            ),
            ("host_load", Json::num(round.host_load)),
            (
                "server_cpu_seconds",
                Json::num(round.load_cpu.server_seconds),
            ),
            (
                "client_cpu_seconds",
                Json::num(round.load_cpu.client_seconds),
            ),
            (
                "machine_cpu_seconds",
                Json::num(round.load_cpu.system_seconds),
            ),
            (
                "capture_cpu_seconds_during_load",
                Json::num(round.load_cpu.capture_seconds),
            ),
            ("others_cpu_share", Json::num(round.load_cpu.others_share())),
            ("capture_cost", cost),
        ])
    });
    let comparisons = r.comparisons.iter().map(|c| {
        Json::object([
            ("scenario", Json::str(c.scenario.label())),
            ("load", Json::str(c.load.label())),
            ("capture", Json::str(c.capture.label())),
            ("rounds", Json::num(c.rounds as f64)),
            ("baseline_rounds", Json::num(c.base_rounds as f64)),
            ("baseline_rps", spread_json(Some(c.base_rps))),
            ("rps", spread_json(Some(c.rps))),
            ("throughput_ratio", spread_json(Some(c.ratio))),
            ("baseline_p50_us", spread_json(Some(c.base_p50_us))),
            ("p50_us", spread_json(Some(c.p50_us))),
            ("p50_delta_us", spread_json(Some(c.p50_delta_us))),
            ("baseline_p99_us", spread_json(Some(c.base_p99_us))),
            ("p99_us", spread_json(Some(c.p99_us))),
            ("p99_delta_us", spread_json(Some(c.p99_delta_us))),
            (
                "baseline_server_client_cpu_us_per_request",
                spread_json(c.base_traced_cpu_us),
            ),
            (
                "server_client_cpu_us_per_request",
                spread_json(c.traced_cpu_us),
            ),
            (
                "server_client_cpu_us_per_request_delta",
                spread_json(c.traced_cpu_delta_us),
            ),
            (
                "baseline_machine_cpu_us_per_request",
                spread_json(c.base_system_cpu_us),
            ),
            ("machine_cpu_us_per_request", spread_json(c.system_cpu_us)),
            (
                "machine_cpu_us_per_request_delta",
                spread_json(c.system_cpu_delta_us),
            ),
        ])
    });
    let costs = r.costs.iter().map(|c| {
        Json::object([
            ("scenario", Json::str(c.scenario.label())),
            ("load", Json::str(c.load.label())),
            ("capture", Json::str(c.capture.label())),
            ("rounds", Json::num(c.rounds as f64)),
            ("rps", Json::num(c.rps)),
            ("requests", Json::num(c.requests as f64)),
            ("requests_from_access_log", Json::Bool(c.requests_from_log)),
            (
                "requests_unread_by_client",
                Json::num(c.unread_by_client as f64),
            ),
            ("server_spans", opt_u64(c.server_spans)),
            ("completeness", Json::opt(c.completeness())),
            ("client_spans", opt_u64(c.client_spans)),
            ("client_completeness", Json::opt(c.client_completeness())),
            ("kernel_drops", opt_u64(c.kernel_drops)),
            ("userspace_drops", opt_u64(c.userspace_drops)),
            ("lost_events", opt_u64(c.lost_events)),
            ("cpu_seconds", Json::num(c.cpu_seconds)),
            (
                "cpu_seconds_per_10k_requests",
                Json::num(c.cpu_seconds_per_10k()),
            ),
            (
                "cpu_seconds_per_10k_requests_per_round",
                spread_json(c.cpu_per_10k),
            ),
            ("peak_rss_mb", Json::num(c.peak_rss_mb())),
            ("anon_rss_mb", Json::num(c.anon_rss_mb())),
            (
                "ebpf_ns_per_request",
                Json::opt(c.ebpf_ns_per_request_all()),
            ),
            (
                "ebpf_ns_per_request_per_round",
                spread_json(c.ebpf_ns_per_request),
            ),
            (
                "ebpf_top_programs",
                Json::Array(
                    c.ebpf_programs
                        .iter()
                        .take(TOP_PROGRAMS)
                        .map(|p| {
                            let requests = c.ebpf_requests.max(1) as f64;
                            Json::object([
                                ("name", Json::str(p.name.clone())),
                                ("ns_per_request", Json::num(p.run_time_ns as f64 / requests)),
                                ("runs_per_request", Json::num(p.run_cnt as f64 / requests)),
                                (
                                    "ns_per_run",
                                    Json::num(p.run_time_ns as f64 / p.run_cnt.max(1) as f64),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ),
        ])
    });
    let pipeline = r.pipeline.iter().map(|p| {
        Json::object([
            ("group", Json::str(p.group.clone())),
            ("stream", Json::str(p.input.clone())),
            ("spans_per_iteration", Json::num(p.spans_per_iteration)),
            ("mean_ns_per_iteration", Json::num(p.mean_ns_per_iteration)),
            ("spans_per_second", Json::num(p.spans_per_second())),
        ])
    });
    Json::object([
        ("date", Json::str(i.date.clone())),
        ("commit", Json::str(i.commit.clone())),
        ("uncommitted_changes", Json::Bool(i.dirty)),
        (
            "machine",
            Json::object([
                ("cpu_model", Json::str(m.cpu_model.clone())),
                ("cpus", Json::num(m.cpus as f64)),
                ("memory_gib", Json::num(m.memory_gib)),
                ("kernel", Json::str(m.kernel.clone())),
                ("os", Json::str(m.os.clone())),
                ("load_at_start", Json::num(i.load_at_start)),
            ]),
        ),
        (
            "settings",
            Json::object([
                ("round_secs", Json::num(i.round_secs as f64)),
                ("rounds", Json::num(i.rounds as f64)),
                ("paced_secs", Json::num(i.paced_secs as f64)),
                ("paced_rounds", Json::num(i.paced_rounds as f64)),
                (
                    "paced_connections",
                    Json::num(f64::from(i.paced_connections)),
                ),
                ("paced_delay_ms", Json::num(f64::from(i.paced_delay_ms))),
                (
                    "nginx_connections",
                    Json::num(f64::from(i.nginx_connections)),
                ),
                (
                    "python_connections",
                    Json::num(f64::from(i.python_connections)),
                ),
                ("server_cpu", Json::opt(i.pinning.map(|p| p.0 as f64))),
                ("wrk_cpu", Json::opt(i.pinning.map(|p| p.1 as f64))),
                ("counters_source", Json::str(i.counters_source.clone())),
                ("agent_args", Json::str(i.agent_args.clone())),
            ]),
        ),
        ("export_requests", Json::num(i.export_requests as f64)),
        (
            "export_requests_refused",
            Json::num(i.export_requests_refused as f64),
        ),
        ("duration_secs", Json::num(i.duration_secs)),
        (
            "scenarios",
            Json::Array(i.scenarios.iter().map(|s| Json::str(s.label())).collect()),
        ),
        (
            "agents",
            Json::Array(
                i.agents
                    .iter()
                    .map(|a| {
                        Json::object([
                            ("label", Json::str(a.label)),
                            ("version", Json::str(a.version.clone())),
                            ("built_by_run", Json::Bool(a.built)),
                            ("release_build", Json::Bool(a.release)),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("comparisons", Json::Array(comparisons.collect())),
        ("costs", Json::Array(costs.collect())),
        ("pipeline", Json::Array(pipeline.collect())),
        ("rounds", Json::Array(rounds.collect())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::bench::receiver::SpanCounts;
    use crate::task::bench::rounds::{self, CaptureCost, LoadCpu};
    use crate::task::bench::wrk::WrkResult;

    fn round(
        load: LoadKind,
        capture: Capture,
        index: usize,
        rps: u64,
        p50: u64,
        spans: Option<(u64, u64)>,
    ) -> Round {
        Round {
            scenario: Scenario::HostWide,
            load,
            capture,
            index,
            wrk: WrkResult {
                requests: rps * 10,
                duration_us: 10_000_000,
                p50_us: p50,
                p99_us: p50 * 4,
                ..WrkResult::default()
            },
            requests: rps * 10,
            requests_from_log: true,
            cost: spans.map(|(server, client)| CaptureCost {
                cpu_seconds: rps as f64 * 10.0 / 10_000.0 * 0.08,
                peak_rss_kib: 30_000,
                spans: Some(SpanCounts {
                    server,
                    client,
                    other: 0,
                }),
                // 5 µs of eBPF per request.
                ebpf: Some(vec![crate::task::bench::bpfstats::ProgramCost {
                    name: "sys_exit_writev".into(),
                    run_time_ns: rps * 10 * 5_000,
                    run_cnt: rps * 10,
                }]),
                ..CaptureCost::default()
            }),
            load_cpu: LoadCpu {
                server_seconds: 1.0,
                client_seconds: 1.0,
                system_seconds: 3.0,
                ..LoadCpu::default()
            },
            host_load: 0.5,
        }
    }

    #[test]
    fn targets_have_a_column_per_agent_binary() {
        let (old, new) = (Capture::Tracer("baseline"), Capture::Tracer("current"));
        let mut rs = Vec::new();
        for i in 0..2 {
            rs.push(round(
                LoadKind::Saturation,
                Capture::Untraced,
                i,
                30_000,
                400,
                None,
            ));
            rs.push(round(
                LoadKind::Saturation,
                old,
                i,
                10_000,
                900,
                Some((1, 1)),
            ));
            rs.push(round(
                LoadKind::Saturation,
                new,
                i,
                28_500,
                420,
                Some((1, 1)),
            ));
            rs.push(round(
                LoadKind::Paced,
                Capture::Untraced,
                i,
                3_000,
                100,
                None,
            ));
            rs.push(round(
                LoadKind::Paced,
                old,
                i,
                3_000,
                300,
                Some((30_000, 29_000)),
            ));
            rs.push(round(
                LoadKind::Paced,
                new,
                i,
                3_000,
                120,
                Some((30_000, 30_000)),
            ));
        }
        let info = RunInfo {
            scenarios: vec![Scenario::HostWide],
            agents: vec![
                AgentInfo {
                    label: "baseline",
                    version: "tracer 0.1.0".into(),
                    built: false,
                    release: true,
                },
                AgentInfo {
                    label: "current",
                    version: "tracer 0.1.0".into(),
                    built: true,
                    release: true,
                },
            ],
            ..RunInfo::default()
        };
        let comparisons = rounds::comparisons(&rs);
        let costs = rounds::costs(&rs);
        let results = Results {
            info: &info,
            rounds: &rs,
            comparisons: &comparisons,
            costs: &costs,
            pipeline: &[],
            profiles: &[],
            history: Vec::new(),
        };
        let md = markdown(&results);
        let row = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no `{start}` row in\n{md}"))
                .to_string()
        };
        assert!(row("| figure |").contains("| `baseline` | `current` |"));
        let ratio = row("| throughput ratio");
        assert!(
            ratio.contains("| 0.333 — **no** | 0.950 — yes |"),
            "{ratio}"
        );
        let p50 = row("| p50 latency delta");
        assert!(p50.contains("+200 µs — **no** | +20 µs — yes"), "{p50}");
        let client = row("| CLIENT spans / requests");
        assert!(
            client.contains("96.67 % — **no** | 100.00 % — yes"),
            "{client}"
        );
        let cpu = row("| agent CPU per 10,000 requests (paced)");
        assert!(cpu.contains("0.080 CPU-s — yes"), "{cpu}");
        assert!(row("| agent peak RSS").contains("30.7 MB — yes"));
        // Paired deltas of CPU per request: nothing changes between rounds here.
        assert!(row("| nginx + wrk CPU per request").contains("+0 µs"));
        assert!(md.contains("no run recorded yet"));
        // The JSON has the spreads.
        let json = json(&results).render();
        assert!(json.contains("\"throughput_ratio\": {"), "{json}");
        assert!(json.contains("\"client_completeness\""));
        let ebpf = md
            .lines()
            .find(|l| l.starts_with("| host-wide | paced | current |") && l.contains("`sys_"))
            .unwrap_or_else(|| panic!("no eBPF row in\n{md}"));
        assert!(
            ebpf.contains("| 5000 | `sys_exit_writev` 5000 (1.00 × 5000) |"),
            "{ebpf}"
        );
        assert!(json.contains("\"ebpf_ns_per_request\": 5000"), "{json}");
    }
}
