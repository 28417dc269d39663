//! The bench's outputs: `docs/BENCHMARKS.md` (tables for people, targets first) and a JSON
//! document with every round and figure, both stamped with the machine, date and commit.

use std::fmt::Write as _;

use super::agent::DropCounters;
use super::criterion::PipelineFigure;
use super::json::Json;
use super::procfs::Machine;
use super::rounds::{Capture, Comparison, CostSummary, LoadKind, Round, kib_to_mb};

/// Targets of the issue (reported against, never asserted).
pub const TARGET_RATIO: f64 = 0.97;
pub const TARGET_COMPLETENESS: f64 = 1.0;
pub const TARGET_CPU_PER_10K: f64 = 0.05;
pub const TARGET_RSS_MB: f64 = 40.0;
pub const TARGET_PIPELINE_PER_SEC: f64 = 500_000.0;

/// How the run was set up.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    pub date: String,
    pub commit: String,
    pub dirty: bool,
    pub machine: Machine,
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

/// Everything measured in one run.
pub struct Results<'a> {
    pub info: &'a RunInfo,
    pub rounds: &'a [Round],
    pub comparisons: &'a [Comparison],
    pub costs: &'a [CostSummary],
    pub pipeline: &'a [PipelineFigure],
}

fn find_cmp<'r>(
    r: &'r Results<'_>,
    server: &str,
    load: LoadKind,
    capture: Capture,
) -> Option<&'r Comparison> {
    r.comparisons
        .iter()
        .find(|c| c.server == server && c.load == load && c.capture == capture)
}

fn find_cost<'r>(
    r: &'r Results<'_>,
    server: &str,
    load: LoadKind,
    capture: Capture,
) -> Option<&'r CostSummary> {
    r.costs
        .iter()
        .find(|c| c.server == server && c.load == load && c.capture == capture)
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

fn delta_us(base: f64, with: f64) -> String {
    let d = with - base;
    let rel = if base > 0.0 {
        format!(" ({:+.0} %)", d / base * 100.0)
    } else {
        String::new()
    };
    format!(
        "{}{} µs{rel}",
        if d >= 0.0 { "+" } else { "−" },
        d.abs().round()
    )
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
         also in `{}`.\n",
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
         Python); untraced, tracer and bpftrace rounds alternate, {} of each. Paced rounds: {} connections each \
         pausing {} ms before every request, {} s, {} of each. {pin}. The tracer runs \
         `tracer agent --pid <server pids> --port <server port>` (release build) exporting OTLP/HTTP to a \
         counting receiver in the harness; it is started before and stopped after each of its rounds, and its CPU \
         is the utime+stime delta of its process from just before the load to after the last span arrived. \
         Drop counters come from the agent's {}.\n",
        i.round_secs,
        i.nginx_connections,
        i.python_connections,
        i.rounds,
        i.paced_connections,
        i.paced_delay_ms,
        i.paced_secs,
        i.paced_rounds,
        i.counters_source,
    );

    // Targets.
    let sat = find_cmp(r, "nginx", LoadKind::Saturation, Capture::Tracer);
    let paced_cost = find_cost(r, "nginx", LoadKind::Paced, Capture::Tracer);
    let sat_cost = find_cost(r, "nginx", LoadKind::Saturation, Capture::Tracer);
    let max_rss = r
        .costs
        .iter()
        .filter(|c| c.capture == Capture::Tracer)
        .map(CostSummary::peak_rss_mb)
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| figure | target | measured | met |\n|---|---|---|---|"
    );
    let ratio = sat.map(Comparison::ratio);
    let _ = writeln!(
        md,
        "| nginx throughput ratio, traced / untraced (saturation) | ≥ {TARGET_RATIO} | {} | {} |",
        fmt_opt(ratio, |v| format!("{v:.3}")),
        met(ratio.map(|v| v >= TARGET_RATIO))
    );
    let completeness = paced_cost.and_then(CostSummary::completeness);
    let _ = writeln!(
        md,
        "| span completeness below saturation (nginx, paced) | 100 % | {} | {} |",
        fmt_opt(completeness, pct),
        met(completeness.map(|v| v >= TARGET_COMPLETENESS))
    );
    for (label, cost) in [("paced", paced_cost), ("saturation", sat_cost)] {
        let v = cost.map(CostSummary::cpu_seconds_per_10k);
        let _ = writeln!(
            md,
            "| agent CPU per 10,000 requests (nginx, {label}) | ≤ {TARGET_CPU_PER_10K} CPU-s | {} | {} |",
            fmt_opt(v, |v| format!("{v:.3} CPU-s")),
            met(v.filter(|v| v.is_finite()).map(|v| v <= TARGET_CPU_PER_10K))
        );
    }
    let _ = writeln!(
        md,
        "| agent peak RSS (any round) | ≤ {TARGET_RSS_MB} MB | {} | {} |",
        fmt_opt(max_rss, |v| format!("{v:.1} MB")),
        met(max_rss.map(|v| v <= TARGET_RSS_MB))
    );
    for (input, what) in [("server", "server side"), ("client_server", "both ends")] {
        let rate = pipeline_rate(r, "pipeline", input);
        let _ = writeln!(
            md,
            "| pipeline throughput, one core, {what} traced (`pipeline/{input}`) | ≥ 500k exchanges/s | {} | {} |",
            fmt_opt(rate, |v| format!("{:.0}k exchanges/s", v / 1000.0)),
            met(rate.map(|v| v >= TARGET_PIPELINE_PER_SEC))
        );
    }
    let _ = writeln!(md);

    // Overhead.
    let _ = writeln!(md, "## Overhead on a traced server\n");
    let _ = writeln!(
        md,
        "Medians over the rounds; deltas are against the untraced rounds of the same server and load.\n"
    );
    let _ = writeln!(
        md,
        "| server | load | capture | rounds | req/s untraced | req/s captured | ratio | p50 untraced | p50 Δ | p99 untraced | p99 Δ |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for c in r.comparisons {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} + {} | {:.0} | {:.0} | {:.3} | {} | {} | {} | {} |",
            c.server,
            c.load.label(),
            c.capture.label(),
            c.base_rounds,
            c.rounds,
            c.base_rps,
            c.rps,
            c.ratio(),
            us(c.base_p50_us),
            delta_us(c.base_p50_us, c.p50_us),
            us(c.base_p99_us),
            delta_us(c.base_p99_us, c.p99_us)
        );
    }
    let _ = writeln!(md);

    // Completeness and agent cost.
    let _ = writeln!(md, "## Completeness and agent cost\n");
    let _ = writeln!(
        md,
        "Requests are nginx's access-log lines (wrk's count for Python, which can be a few short of what \
        the server answered when wrk stops). Completeness = SERVER spans received / requests. Peak RSS is VmHWM, which counts mapped \
        file pages too: the binary's code and the BPF ring buffer (`--ring-buffer-mib`, default 16 MiB, \
        whose data pages are mapped twice); anon RSS is the heap and stacks at the end of the round.\n"
    );
    let _ = writeln!(
        md,
        "| server | load | req/s | requests | SERVER spans | completeness | kernel drops | userspace drops | CPU-s per 10k req | peak RSS | anon RSS |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for c in r.costs.iter().filter(|c| c.capture == Capture::Tracer) {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {}{} | {} | {} | {} | {} | {:.3} | {:.1} MB | {:.1} MB |",
            c.server,
            c.load.label(),
            c.rps,
            c.requests,
            if c.requests_from_log { "" } else { " (wrk)" },
            count(c.server_spans),
            fmt_opt(c.completeness(), pct),
            count(c.kernel_drops),
            count(c.userspace_drops),
            c.cpu_seconds_per_10k(),
            c.peak_rss_mb(),
            c.anon_rss_mb()
        );
    }
    let _ = writeln!(md);

    // Peer baseline.
    let _ = writeln!(
        md,
        "## Peer baseline: bpftrace printing the captured bytes\n"
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
    for load in [LoadKind::Saturation, LoadKind::Paced] {
        for capture in [Capture::Tracer, Capture::Bpftrace] {
            let (Some(c), Some(cost)) = (
                find_cmp(r, "nginx", load, capture),
                find_cost(r, "nginx", load, capture),
            ) else {
                continue;
            };
            let lost = match capture {
                Capture::Tracer => format!(
                    "{} kernel + {} userspace",
                    count(cost.kernel_drops),
                    count(cost.userspace_drops)
                ),
                _ => count(cost.lost_events),
            };
            let output = match capture {
                Capture::Tracer => format!("{} spans", count(cost.server_spans)),
                _ => cost.printed_bytes.map_or("n/a".to_string(), |b| {
                    format!("{:.1} MB of text", b as f64 / 1e6)
                }),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} | {} | {:.3} | {:.1} MB | {lost} | {output} |",
                load.label(),
                capture.label(),
                c.ratio(),
                delta_us(c.base_p99_us, c.p99_us),
                cost.cpu_seconds_per_10k(),
                cost.peak_rss_mb()
            );
        }
    }
    let _ = writeln!(md);

    // Pipeline.
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

    // Raw rounds.
    let _ = writeln!(md, "## Rounds\n");
    let _ = writeln!(
        md,
        "| server | load | capture | # | req/s | p50 | p99 | wrk errors | requests | CPU-s | peak RSS | host load |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for round in r.rounds {
        let (cpu, rss) = round
            .cost
            .as_ref()
            .map_or(("".to_string(), "".to_string()), |c| {
                (
                    format!("{:.2}", c.cpu_seconds),
                    format!("{:.1} MB", kib_to_mb(c.peak_rss_kib)),
                )
            });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {cpu} | {rss} | {:.2} |",
            round.server,
            round.load.label(),
            round.capture.label(),
            round.index + 1,
            round.wrk.requests_per_second(),
            us(round.wrk.p50_us as f64),
            us(round.wrk.p99_us as f64),
            round.wrk.errors,
            round.requests,
            round.host_load
        );
    }
    md
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
                ("drops", c.drops.as_ref().map_or(Json::Null, drops_json)),
                ("lost_events", opt_u64(c.lost_events)),
                ("printed_bytes", opt_u64(c.printed_bytes)),
            ])
        });
        Json::object([
            ("server", Json::str(round.server)),
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
            ("capture_cost", cost),
        ])
    });
    let comparisons = r.comparisons.iter().map(|c| {
        Json::object([
            ("server", Json::str(c.server)),
            ("load", Json::str(c.load.label())),
            ("capture", Json::str(c.capture.label())),
            ("rounds", Json::num(c.rounds as f64)),
            ("baseline_rounds", Json::num(c.base_rounds as f64)),
            ("baseline_rps", Json::num(c.base_rps)),
            ("rps", Json::num(c.rps)),
            ("throughput_ratio", Json::num(c.ratio())),
            ("baseline_p50_us", Json::num(c.base_p50_us)),
            ("p50_us", Json::num(c.p50_us)),
            ("p50_delta_us", Json::num(c.p50_us - c.base_p50_us)),
            ("baseline_p99_us", Json::num(c.base_p99_us)),
            ("p99_us", Json::num(c.p99_us)),
            ("p99_delta_us", Json::num(c.p99_us - c.base_p99_us)),
        ])
    });
    let costs = r.costs.iter().map(|c| {
        Json::object([
            ("server", Json::str(c.server)),
            ("load", Json::str(c.load.label())),
            ("capture", Json::str(c.capture.label())),
            ("rounds", Json::num(c.rounds as f64)),
            ("rps", Json::num(c.rps)),
            ("requests", Json::num(c.requests as f64)),
            ("requests_from_access_log", Json::Bool(c.requests_from_log)),
            ("server_spans", opt_u64(c.server_spans)),
            ("completeness", Json::opt(c.completeness())),
            ("kernel_drops", opt_u64(c.kernel_drops)),
            ("userspace_drops", opt_u64(c.userspace_drops)),
            ("lost_events", opt_u64(c.lost_events)),
            ("cpu_seconds", Json::num(c.cpu_seconds)),
            (
                "cpu_seconds_per_10k_requests",
                Json::num(c.cpu_seconds_per_10k()),
            ),
            ("peak_rss_mb", Json::num(c.peak_rss_mb())),
            ("anon_rss_mb", Json::num(c.anon_rss_mb())),
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
        ("comparisons", Json::Array(comparisons.collect())),
        ("costs", Json::Array(costs.collect())),
        ("pipeline", Json::Array(pipeline.collect())),
        ("rounds", Json::Array(rounds.collect())),
    ])
}
