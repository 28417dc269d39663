//! `cargo xtask bench`: the overhead, completeness and cost benchmark of the agent against real
//! servers on loopback, in scenarios: `host-wide` (nginx under wrk, the agent with no filter as
//! a DaemonSet runs it, both ends traced), `host-wide-prop` (the same with
//! `--context-propagation tcp-options`), `pid` (nginx, the agent given its pids and port) and
//! `python`; untraced rounds interleave with the rounds of each agent binary measured (the
//! built one, and any given with `--agent-bin`/`--baseline-bin`) and of the bpftrace peer. Plus
//! the kernel-free pipeline benchmark (criterion). Writes `docs/BENCHMARKS.md`, a JSON document
//! with every figure, and appends the run's summary to the committed history; targets are
//! reported, not asserted.

pub(crate) mod agent;
mod bpfstats;
mod criterion;
mod history;
mod json;
mod peer;
mod perf;
pub(crate) mod process;
pub(crate) mod procfs;
pub(crate) mod receiver;
mod report;
mod rounds;
pub(crate) mod servers;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::step;
use crate::task::{build, setup};
use crate::workspace;

use agent::{AgentSpec, RunningAgent};
use peer::RunningBpftrace;
use receiver::{CountingReceiver, SpanCounts};
use rounds::{Capture, CaptureCost, LoadCpu, LoadKind, Round, Scenario};
use servers::Server;

/// Programs the bench drives, and the Debian packages providing them.
const BENCH_PROGRAMS: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("bpftrace", "bpftrace"),
    ("nginx", "nginx"),
    ("taskset", "util-linux"),
];
/// Unrecorded load before the first round of a server (caches, page faults, nginx's workers).
const WARM_UP: Duration = Duration::from_secs(2);
/// After the load: how long spans may keep arriving, and how long without a new one means done.
const SETTLE_MAX: Duration = Duration::from_secs(15);
/// Longer than the agent takes to end the CLIENT spans of requests wrk left unread (about 2 s
/// after its exit: it finds wrk's sockets gone in /proc once they are quiet for a second).
const SETTLE_QUIET: Duration = Duration::from_millis(3000);

/// `--scenario` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// nginx and wrk both traced by an agent with no `--pid`/`--port` filter.
    HostWide,
    /// `host-wide` with `--context-propagation tcp-options`.
    HostWideProp,
    /// nginx traced by `--pid`/`--port` (server side only), with the bpftrace peer.
    Pid,
    /// The Python server traced by `--pid`/`--port`.
    Python,
    /// All of the above.
    All,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Scenarios to run (repeatable).
    #[arg(long = "scenario", value_enum, default_value = "all")]
    pub scenarios: Vec<ScenarioArg>,
    /// An agent binary to measure, as `LABEL=PATH` or `PATH` (repeatable); rounds of every binary
    /// interleave with the untraced rounds. Without it, the workspace's release build (built
    /// first) is measured, labelled `current`.
    #[arg(long = "agent-bin", value_name = "[LABEL=]PATH")]
    pub agent_bins: Vec<String>,
    /// An agent binary measured as `baseline`, in addition to the others.
    #[arg(long, value_name = "PATH")]
    pub baseline_bin: Option<PathBuf>,
    /// History file the run's summary is appended to (relative to the workspace root).
    #[arg(long, default_value = "docs/bench/history.json")]
    pub history: PathBuf,
    /// Do not append to the history (trial runs).
    #[arg(long)]
    pub no_history: bool,
    /// Seconds of load per saturation round.
    #[arg(long, default_value_t = 10)]
    pub round_secs: u64,
    /// Saturation rounds per capture mode (untraced, each agent binary, bpftrace alternate).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of load per paced round.
    #[arg(long, default_value_t = 15)]
    pub paced_secs: u64,
    /// Paced rounds per capture mode.
    #[arg(long, default_value_t = 3)]
    pub paced_rounds: usize,
    /// Connections of the paced load; each pauses --paced-delay-ms before every request.
    #[arg(long, default_value_t = 20)]
    pub paced_connections: u32,
    #[arg(long, default_value_t = 5)]
    pub paced_delay_ms: u32,
    /// Connections of the saturating load on nginx.
    #[arg(long, default_value_t = 32)]
    pub nginx_connections: u32,
    /// Connections of the saturating load on the Python server.
    #[arg(long, default_value_t = 8)]
    pub python_connections: u32,
    /// Criterion measurement seconds per pipeline benchmark.
    #[arg(long, default_value_t = 3)]
    pub criterion_secs: u64,
    /// Skip the Python server rounds (same as leaving `python` out of `--scenario`).
    #[arg(long)]
    pub skip_python: bool,
    /// Skip the bpftrace peer baseline.
    #[arg(long)]
    pub skip_bpftrace: bool,
    /// Skip the criterion pipeline benchmark.
    #[arg(long)]
    pub skip_criterion: bool,
    /// Extra argument for every `tracer agent` (repeatable), e.g. `--agent-arg=--ring-buffer-mib=4`.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Profile one extra host-wide (else pid) paced round per agent binary with `perf record -a
    /// -g`; its figures are kept out of the tables, its top symbols are reported.
    #[arg(long)]
    pub perf: bool,
    /// Do not pin the server and wrk to separate CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Markdown report (relative to the workspace root).
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    pub markdown: PathBuf,
    /// JSON results (relative to the workspace root).
    #[arg(long, default_value = "target/bench/results.json")]
    pub json: PathBuf,
}

/// Paths and tools every round uses.
struct Bench {
    wrk: PathBuf,
    bpftrace: PathBuf,
    files: PathBuf,
    scratch: PathBuf,
    receiver: CountingReceiver,
    agents: Vec<AgentBinary>,
    agent_args: Vec<String>,
    ticks: f64,
    pinning: Option<(usize, usize)>,
    /// `perf`, with `--perf`.
    perf: Option<PathBuf>,
    /// The scenario whose extra paced round is profiled.
    profiled: Option<Scenario>,
}

/// One agent binary under test.
#[derive(Clone, Debug)]
pub struct AgentBinary {
    /// Short name in tables and the history (`current`, `baseline`, ...).
    pub label: &'static str,
    pub path: PathBuf,
    /// `tracer --version`.
    pub version: String,
    /// It has `--metrics-addr`.
    pub metrics: bool,
    /// Built from the workspace by this run.
    pub built: bool,
}

/// `[LABEL=]PATH` of `--agent-bin`; a missing label becomes `agent<N>` (N from 1).
fn parse_agent_bin(text: &str, n: usize) -> (String, PathBuf) {
    match text.split_once('=') {
        Some((label, path)) if !label.is_empty() && !label.contains('/') => {
            (label.to_string(), PathBuf::from(path))
        }
        _ => (format!("agent{n}"), PathBuf::from(text)),
    }
}

/// A label safe in file names and tables: letters, digits, `.`, `_` and `-`.
fn clean_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The binaries a run measures: `--baseline-bin` first, then `--agent-bin`s, or the built
/// release binary when none is given. Labels must differ.
fn agent_binaries(args: &BenchArgs, root: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    if let Some(path) = &args.baseline_bin {
        out.push(("baseline".to_string(), root.join(path), false));
    }
    for (n, text) in args.agent_bins.iter().enumerate() {
        let (label, path) = parse_agent_bin(text, n + 1);
        out.push((clean_label(&label), root.join(path), false));
    }
    if args.agent_bins.is_empty() {
        out.push(("current".to_string(), workspace::tracer_binary(true), true));
    }
    for (i, (label, _, _)) in out.iter().enumerate() {
        if out[..i].iter().any(|(l, _, _)| l == label) {
            bail!(
                "two agent binaries are labelled `{label}`; label them with `--agent-bin LABEL=PATH`"
            );
        }
    }
    Ok(out)
}

/// The scenarios `--scenario` and `--skip-python` select, in run order.
fn selected_scenarios(args: &BenchArgs) -> Vec<Scenario> {
    Scenario::ALL
        .into_iter()
        .filter(|s| {
            args.scenarios.iter().any(|a| {
                *a == ScenarioArg::All
                    || matches!(
                        (a, s),
                        (ScenarioArg::HostWide, Scenario::HostWide)
                            | (ScenarioArg::HostWideProp, Scenario::HostWidePropagation)
                            | (ScenarioArg::Pid, Scenario::Pid)
                            | (ScenarioArg::Python, Scenario::Python)
                    )
            })
        })
        .filter(|s| !(args.skip_python && *s == Scenario::Python))
        .collect()
}

/// Where a round's load goes and how heavy it is.
#[derive(Clone, Copy)]
struct LoadPlan {
    scenario: Scenario,
    kind: LoadKind,
    load: wrk::Load,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let root = workspace::root();
    let scenarios = selected_scenarios(args);
    if scenarios.is_empty() {
        bail!("no scenario selected");
    }
    let binaries = agent_binaries(args, &root)?;
    setup::run()?;
    bench_programs()?;
    if binaries.iter().any(|(_, _, built)| *built) {
        build::build_agent(true)?;
    }
    if !args.skip_criterion {
        criterion::build(&root)?;
    }
    let mut agents = Vec::new();
    for (label, path, built) in binaries {
        if !path.is_file() {
            bail!("agent binary `{label}` not found at {}", path.display());
        }
        agents.push(AgentBinary {
            // Labels live for the whole run; leaking a few short strings keeps `Capture` Copy.
            label: Box::leak(label.into_boxed_str()),
            version: agent::version(&path),
            metrics: agent::has_metrics_flag(&path),
            path,
            built,
        });
    }
    for a in &agents {
        step::note(
            "bench",
            &format!("agent `{}`: {} ({})", a.label, a.version, a.path.display()),
        );
    }

    let scratch = workspace::target_dir().join("bench").join("work");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pinning = (!args.no_pin && cpus >= 2).then_some((0, 1));
    let bench = Bench {
        wrk: program("wrk")?,
        bpftrace: program("bpftrace")?,
        files: root.join("xtask").join("bench"),
        scratch,
        receiver: CountingReceiver::start()?,
        agents,
        agent_args: args.agent_args.clone(),
        ticks: procfs::clock_ticks_per_second(),
        pinning,
        perf: if args.perf {
            Some(program("perf")?)
        } else {
            None
        },
        profiled: scenarios
            .iter()
            .copied()
            .find(|s| *s == Scenario::HostWide)
            .or_else(|| scenarios.iter().copied().find(|s| *s == Scenario::Pid)),
    };
    let load_at_start = host_load();

    let mut rounds = Vec::new();
    let mut profiles = Vec::new();
    let nginx_scenarios: Vec<Scenario> = scenarios
        .iter()
        .copied()
        .filter(|s| s.server() == "nginx")
        .collect();
    if !nginx_scenarios.is_empty() {
        nginx_rounds(&bench, args, &nginx_scenarios, &mut rounds, &mut profiles)?;
    }
    if scenarios.contains(&Scenario::Python) {
        python_rounds(&bench, args, &mut rounds)?;
    }
    let pipeline = if args.skip_criterion {
        Vec::new()
    } else {
        criterion::run(
            &root,
            &workspace::target_dir(),
            args.criterion_secs,
            pinning.map(|p| p.1),
        )?
    };

    let all_metrics = bench.agents.iter().all(|a| a.metrics);
    let info = report::RunInfo {
        date: utc_now(),
        commit: git(&root, &["rev-parse", "--short=12", "HEAD"])
            .unwrap_or_else(|| "unknown".into()),
        dirty: git(&root, &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty()),
        machine: procfs::machine(),
        scenarios: scenarios.clone(),
        agents: bench
            .agents
            .iter()
            .map(|a| report::AgentInfo {
                label: a.label,
                version: a.version.clone(),
                built: a.built,
                release: !a.path.components().any(|c| c.as_os_str() == "debug"),
            })
            .collect(),
        round_secs: args.round_secs,
        rounds: args.rounds,
        paced_secs: args.paced_secs,
        paced_rounds: args.paced_rounds,
        paced_connections: args.paced_connections,
        paced_delay_ms: args.paced_delay_ms,
        nginx_connections: args.nginx_connections,
        python_connections: args.python_connections,
        pinning,
        agent_args: args.agent_args.join(" "),
        load_at_start,
        duration_secs: started.elapsed().as_secs_f64(),
        json_path: args.json.display().to_string(),
        counters_source: if all_metrics {
            "`/metrics` endpoint".into()
        } else {
            "`/metrics` endpoint, else stderr summaries".into()
        },
        export_requests: bench.receiver.requests().0,
        export_requests_refused: bench.receiver.requests().1,
    };
    let comparisons = rounds::comparisons(&rounds);
    let costs = rounds::costs(&rounds);
    let mut results = report::Results {
        info: &info,
        rounds: &rounds,
        comparisons: &comparisons,
        costs: &costs,
        pipeline: &pipeline,
        profiles: &profiles,
        history: Vec::new(),
    };
    let entry = history::entry(&results);
    let history_path = root.join(&args.history);
    results.history = if args.no_history {
        let mut earlier = history::read(&history_path)?;
        earlier.push(entry);
        earlier
    } else {
        let all = history::append(&history_path, entry)?;
        step::note("bench", &format!("appended to {}", history_path.display()));
        all
    };
    let markdown = report::markdown(&results);
    write(&root.join(&args.markdown), &markdown)?;
    write(&root.join(&args.json), &report::json(&results).render())?;
    println!("{markdown}");
    step::note(
        "bench",
        &format!("done in {:.0} s", started.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// The capture modes of a scenario's rounds.
fn captures(bench: &Bench, args: &BenchArgs, scenario: Scenario) -> Vec<Capture> {
    let mut out = vec![Capture::Untraced];
    out.extend(bench.agents.iter().map(|a| Capture::Tracer(a.label)));
    if scenario == Scenario::Pid && !args.skip_bpftrace {
        out.push(Capture::Bpftrace);
    }
    out
}

fn nginx_rounds(
    bench: &Bench,
    args: &BenchArgs,
    scenarios: &[Scenario],
    rounds: &mut Vec<Round>,
    profiles: &mut Vec<report::Profile>,
) -> Result<()> {
    let nginx = Server::nginx(
        &program("nginx")?,
        &bench.files,
        &bench.scratch,
        bench.pinning.map(|p| p.0),
    )?;
    let saturation = wrk::Load {
        connections: args.nginx_connections,
        duration: Duration::from_secs(args.round_secs),
        delay_ms: None,
        cpu: bench.pinning.map(|p| p.1),
    };
    let paced = wrk::Load {
        connections: args.paced_connections,
        duration: Duration::from_secs(args.paced_secs),
        delay_ms: Some(args.paced_delay_ms),
        cpu: bench.pinning.map(|p| p.1),
    };
    warm_up(bench, &nginx, saturation)?;
    for scenario in scenarios {
        let captures = captures(bench, args, *scenario);
        for (kind, load, count) in [
            (LoadKind::Saturation, saturation, args.rounds),
            (LoadKind::Paced, paced, args.paced_rounds),
        ] {
            let plan = LoadPlan {
                scenario: *scenario,
                kind,
                load,
            };
            alternate(bench, &nginx, plan, count, &captures, rounds)?;
        }
        if bench.perf.is_some() && bench.profiled == Some(*scenario) {
            let plan = LoadPlan {
                scenario: *scenario,
                kind: LoadKind::Paced,
                load: paced,
            };
            for agent in &bench.agents {
                let capture = Capture::Tracer(agent.label);
                let (_, summary) = measure(bench, &nginx, plan, capture, args.paced_rounds, true)
                    .with_context(|| format!("profiled round of {}", agent.label))?;
                if let Some(summary) = summary {
                    profiles.push(report::Profile {
                        scenario: *scenario,
                        label: agent.label,
                        summary,
                    });
                }
            }
        }
    }
    nginx.stop()
}

fn python_rounds(bench: &Bench, args: &BenchArgs, rounds: &mut Vec<Round>) -> Result<()> {
    let python = Server::python(
        &program("python3")?,
        &bench.files,
        &bench.scratch,
        bench.pinning.map(|p| p.0),
    )?;
    let saturation = LoadPlan {
        scenario: Scenario::Python,
        kind: LoadKind::Saturation,
        load: wrk::Load {
            connections: args.python_connections,
            duration: Duration::from_secs(args.round_secs),
            delay_ms: None,
            cpu: bench.pinning.map(|p| p.1),
        },
    };
    warm_up(bench, &python, saturation.load)?;
    let captures = captures(bench, args, Scenario::Python);
    alternate(bench, &python, saturation, args.rounds, &captures, rounds)?;
    python.stop()
}

fn warm_up(bench: &Bench, server: &Server, load: wrk::Load) -> Result<()> {
    let load = wrk::Load {
        duration: WARM_UP,
        ..load
    };
    wrk::run(
        &bench.wrk,
        &bench.files.join("wrk_report.lua"),
        &server.url(),
        load,
    )?;
    Ok(())
}

/// Round `index`'s order: untraced first, then the agents rotated by `index` (so no binary
/// always runs right after the untraced round), then the rest.
fn round_order(captures: &[Capture], index: usize) -> Vec<Capture> {
    let agents: Vec<Capture> = captures.iter().copied().filter(|c| c.is_tracer()).collect();
    let mut out: Vec<Capture> = captures
        .iter()
        .copied()
        .filter(|c| *c == Capture::Untraced)
        .collect();
    if !agents.is_empty() {
        let shift = index % agents.len();
        out.extend(agents[shift..].iter().chain(&agents[..shift]));
    }
    out.extend(
        captures
            .iter()
            .copied()
            .filter(|c| *c != Capture::Untraced && !c.is_tracer()),
    );
    out
}

/// `count` rounds of every capture mode, interleaved.
fn alternate(
    bench: &Bench,
    server: &Server,
    plan: LoadPlan,
    count: usize,
    captures: &[Capture],
    rounds: &mut Vec<Round>,
) -> Result<()> {
    for index in 0..count {
        for capture in round_order(captures, index) {
            let (round, _) =
                measure(bench, server, plan, capture, index, false).with_context(|| {
                    format!(
                        "{} {} round {} with {}",
                        plan.scenario.label(),
                        plan.kind.label(),
                        index + 1,
                        capture.label()
                    )
                })?;
            step::note(
                "bench",
                &format!(
                    "{} {} {} #{}: {:.0} req/s, p50 {} µs, p99 {} µs, server+wrk {:.1} µs/req, machine {:.1} µs/req{}",
                    plan.scenario.label(),
                    plan.kind.label(),
                    capture.label(),
                    index + 1,
                    round.wrk.requests_per_second(),
                    round.wrk.p50_us,
                    round.wrk.p99_us,
                    round.traced_cpu_us_per_request(),
                    round.system_cpu_us_per_request(),
                    round.cost.as_ref().map_or(String::new(), |c| format!(
                        ", capture {:.2} CPU-s, {} KiB peak, spans {:?}",
                        c.cpu_seconds, c.peak_rss_kib, c.spans
                    )) + &round
                        .ebpf_ns_per_request()
                        .map_or(String::new(), |ns| format!(", eBPF {ns:.0} ns/req")),
                ),
            );
            rounds.push(round);
        }
    }
    Ok(())
}

/// The capture running during one round.
enum Running {
    Nothing,
    Agent(RunningAgent),
    Bpftrace(RunningBpftrace),
}

/// CPU seconds of all of a server's processes.
fn server_cpu_seconds(server: &Server, ticks: f64) -> Result<f64> {
    server
        .pids()
        .iter()
        .map(|pid| procfs::sample(*pid, ticks).map(|s| s.cpu_seconds))
        .sum()
}

/// Reads (server, reaped children, machine) CPU seconds.
fn cpu_now(server: &Server, ticks: f64) -> Result<(f64, f64, f64)> {
    Ok((
        server_cpu_seconds(server, ticks)?,
        procfs::reaped_children_cpu_seconds(ticks)?,
        procfs::system_busy_seconds(ticks)?,
    ))
}

fn measure(
    bench: &Bench,
    server: &Server,
    plan: LoadPlan,
    capture: Capture,
    index: usize,
    profile: bool,
) -> Result<(Round, Option<perf::PerfSummary>)> {
    let name = format!(
        "{}-{}-{}-{}",
        plan.scenario.label(),
        plan.kind.label(),
        capture.label(),
        index + 1
    );
    let running = match capture {
        Capture::Untraced => Running::Nothing,
        Capture::Tracer(label) => {
            let agent = bench
                .agents
                .iter()
                .find(|a| a.label == label)
                .with_context(|| format!("no agent binary labelled `{label}`"))?;
            let host_wide = plan.scenario.host_wide();
            let spec = AgentSpec {
                binary: agent.path.clone(),
                pids: if host_wide {
                    Vec::new()
                } else {
                    server.pids().to_vec()
                },
                port: (!host_wide).then_some(server.port),
                endpoint: bench.receiver.endpoint(),
                extra_args: bench
                    .agent_args
                    .iter()
                    .cloned()
                    .chain(plan.scenario.agent_args().iter().map(|a| a.to_string()))
                    .collect(),
                metrics: agent.metrics,
            };
            Running::Agent(RunningAgent::start(&spec, &bench.scratch, &name)?)
        }
        Capture::Bpftrace => {
            let path = server
                .url()
                .splitn(4, '/')
                .nth(3)
                .map(|p| format!("/{p}"))
                .unwrap_or_else(|| "/".into());
            Running::Bpftrace(RunningBpftrace::start(
                &bench.bpftrace,
                &bench.files.join("capture.bt"),
                server.worker_pid(),
                server.port,
                &path,
                &bench.scratch,
                &name,
            )?)
        }
    };
    let logged_before = server.logged_requests()?;
    let spans_before = bench.receiver.counts_for_port(server.port);
    let all_spans_before = bench.receiver.counts();
    let cpu_before = match &running {
        Running::Nothing => None,
        Running::Agent(a) => Some(a.sample(bench.ticks)?),
        Running::Bpftrace(b) => Some(b.sample(bench.ticks)?),
    };
    let recording = match (&bench.perf, profile) {
        (Some(perf), true) => Some(perf::Recording::start(
            perf,
            &bench.scratch,
            &name,
            plan.load.duration,
        )?),
        _ => None,
    };
    let agent_pid = match &running {
        Running::Agent(a) => Some(a.pid()),
        _ => None,
    };
    // The kernel side: the agent's eBPF programs' run time over the load (statistics on only
    // for traced rounds: they cost a clock read per program run).
    let stats_on = agent_pid.map(|_| bpfstats::StatsOn::enable()).transpose()?;
    let ebpf_before = agent_pid.map(bpfstats::snapshot).transpose()?;
    let (server_before, children_before, system_before) = cpu_now(server, bench.ticks)?;
    let load_started = Instant::now();

    let wrk = wrk::run(
        &bench.wrk,
        &bench.files.join("wrk_report.lua"),
        &server.url(),
        plan.load,
    )?;
    let (server_after, children_after, system_after) = cpu_now(server, bench.ticks)?;
    let wall_seconds = load_started.elapsed().as_secs_f64();
    let ebpf = match (ebpf_before, agent_pid) {
        (Some(before), Some(pid)) => Some(bpfstats::between(&before, &bpfstats::snapshot(pid)?)),
        _ => None,
    };
    drop(stats_on);
    let capture_after_load = match &running {
        Running::Nothing => None,
        Running::Agent(a) => Some(a.sample(bench.ticks)?),
        Running::Bpftrace(b) => Some(b.sample(bench.ticks)?),
    };
    let recorded = recording.map(perf::Recording::finish).transpose()?;
    let load_cpu = LoadCpu {
        server_seconds: server_after - server_before,
        client_seconds: children_after - children_before,
        system_seconds: system_after - system_before,
        capture_seconds: match (cpu_before, capture_after_load) {
            (Some(before), Some(after)) => after.cpu_seconds - before.cpu_seconds,
            _ => 0.0,
        },
        wall_seconds,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
    };

    // nginx logs a request when it finishes it; give the last ones a moment.
    std::thread::sleep(Duration::from_millis(300));
    let logged = match (logged_before, server.logged_requests()?) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let requests = logged.unwrap_or(wrk.requests);
    let cost = match running {
        Running::Nothing => None,
        Running::Agent(agent) => {
            let expected = SpanCounts {
                server: requests,
                client: if plan.scenario.traces_client() {
                    requests
                } else {
                    0
                },
                other: 0,
            };
            settle(&bench.receiver, server.port, spans_before, expected);
            let after = agent.sample(bench.ticks)?;
            let drops = agent.stop()?;
            let spans = minus(bench.receiver.counts_for_port(server.port), spans_before);
            let all = minus(bench.receiver.counts(), all_spans_before);
            let total = |c: SpanCounts| c.server + c.client + c.other;
            Some(CaptureCost {
                cpu_seconds: after.cpu_seconds - cpu_before.map_or(0.0, |s| s.cpu_seconds),
                peak_rss_kib: after.peak_rss_kib,
                anon_rss_kib: after.anon_rss_kib,
                spans: Some(spans),
                other_spans: Some(total(all).saturating_sub(total(spans))),
                drops: Some(drops),
                ebpf,
                ..CaptureCost::default()
            })
        }
        Running::Bpftrace(bpftrace) => {
            let after = bpftrace.sample(bench.ticks)?;
            let (lost, printed) = bpftrace.stop()?;
            Some(CaptureCost {
                cpu_seconds: after.cpu_seconds - cpu_before.map_or(0.0, |s| s.cpu_seconds),
                peak_rss_kib: after.peak_rss_kib,
                anon_rss_kib: after.anon_rss_kib,
                lost_events: Some(lost),
                printed_bytes: Some(printed),
                ..CaptureCost::default()
            })
        }
    };
    let summary = match (recorded, &bench.perf, agent_pid) {
        (Some(recorded), Some(perf), Some(pid)) => {
            let path = workspace::target_dir()
                .join("bench")
                .join(format!("perf-{}.txt", capture.label()));
            Some(recorded.summarise(perf, pid, &path)?)
        }
        _ => None,
    };
    let round = Round {
        scenario: plan.scenario,
        load: plan.kind,
        capture,
        index,
        wrk,
        requests,
        requests_from_log: logged.is_some(),
        cost,
        load_cpu,
        host_load: host_load(),
    };
    Ok((round, summary))
}

fn minus(after: SpanCounts, before: SpanCounts) -> SpanCounts {
    SpanCounts {
        server: after.server.saturating_sub(before.server),
        client: after.client.saturating_sub(before.client),
        other: after.other.saturating_sub(before.other),
    }
}

/// Waits until the round's spans of `port` reach `expected` (SERVER, and CLIENT when expected),
/// or stop arriving.
fn settle(receiver: &CountingReceiver, port: u16, before: SpanCounts, expected: SpanCounts) {
    let start = Instant::now();
    let mut last = receiver.counts_for_port(port);
    let mut last_change = Instant::now();
    while start.elapsed() < SETTLE_MAX {
        let now = receiver.counts_for_port(port);
        let got = minus(now, before);
        if got.server >= expected.server && got.client >= expected.client {
            return;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= SETTLE_QUIET {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The 1-minute load average.
fn host_load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Output of a read-only git command, trimmed.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    step::note("bench", &format!("wrote {}", path.display()));
    Ok(())
}

/// A program from PATH, else /usr/sbin or /usr/bin.
fn program(name: &str) -> Result<PathBuf> {
    workspace::find_on_path(name)
        .or_else(|| {
            ["/usr/sbin", "/usr/bin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("`{name}` not found on PATH, in /usr/sbin or in /usr/bin"))
}

/// apt-get installs whatever of wrk, bpftrace, nginx and taskset is missing.
fn bench_programs() -> Result<()> {
    const STEP: &str = "bench: programs";
    let missing: Vec<&str> = BENCH_PROGRAMS
        .iter()
        .filter(|(name, _)| program(name).is_err())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        step::note(
            STEP,
            "wrk, bpftrace, nginx and taskset present; skipping apt-get",
        );
        return Ok(());
    }
    super::setup::apt_install(STEP, &missing)?;
    for (name, package) in BENCH_PROGRAMS {
        if program(name).is_err() {
            bail!("step `{STEP}` failed: `{name}` still missing after installing `{package}`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_bins_take_an_optional_label() {
        assert_eq!(
            parse_agent_bin("new=/tmp/x/tracer", 1),
            ("new".to_string(), PathBuf::from("/tmp/x/tracer"))
        );
        assert_eq!(
            parse_agent_bin("/tmp/a=b/tracer", 2),
            ("agent2".to_string(), PathBuf::from("/tmp/a=b/tracer"))
        );
        assert_eq!(clean_label("v1 (old)"), "v1--old-");
    }

    #[test]
    fn agents_rotate_between_rounds_and_untraced_stays_first() {
        let (a, b) = (Capture::Tracer("a"), Capture::Tracer("b"));
        let captures = [Capture::Untraced, a, b, Capture::Bpftrace];
        assert_eq!(round_order(&captures, 0), captures.to_vec());
        assert_eq!(
            round_order(&captures, 1),
            vec![Capture::Untraced, b, a, Capture::Bpftrace]
        );
        assert_eq!(round_order(&captures, 2), captures.to_vec());
        assert_eq!(
            round_order(&[Capture::Untraced], 3),
            vec![Capture::Untraced]
        );
    }
}
