//! `cargo xtask bench`: the overhead, completeness and cost benchmark of the agent against real
//! servers on loopback (nginx and Python under wrk, untraced / traced / bpftrace rounds
//! alternating), plus the kernel-free pipeline benchmark (criterion). Writes
//! `docs/BENCHMARKS.md` and a JSON document with every figure; targets are reported, not
//! asserted.

pub(crate) mod agent;
mod criterion;
mod json;
mod peer;
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
use clap::Args;

use crate::step;
use crate::task::{build, setup};
use crate::workspace;

use agent::{AgentSpec, RunningAgent};
use peer::RunningBpftrace;
use receiver::{CountingReceiver, SpanCounts};
use rounds::{Capture, CaptureCost, LoadKind, Round};
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
const SETTLE_QUIET: Duration = Duration::from_millis(1500);

#[derive(Args)]
pub struct BenchArgs {
    /// Seconds of load per saturation round.
    #[arg(long, default_value_t = 10)]
    pub round_secs: u64,
    /// Saturation rounds per capture mode (untraced, tracer, bpftrace alternate).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of load per paced round.
    #[arg(long, default_value_t = 15)]
    pub paced_secs: u64,
    /// Paced rounds per capture mode.
    #[arg(long, default_value_t = 2)]
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
    /// Skip the Python server rounds.
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
    agent_binary: PathBuf,
    agent_args: Vec<String>,
    metrics: bool,
    ticks: f64,
    pinning: Option<(usize, usize)>,
}

/// Where a round's load goes and how heavy it is.
#[derive(Clone, Copy)]
struct LoadPlan {
    kind: LoadKind,
    load: wrk::Load,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let root = workspace::root();
    setup::run()?;
    bench_programs()?;
    build::build_agent(true)?;
    if !args.skip_criterion {
        criterion::build(&root)?;
    }

    let scratch = workspace::target_dir().join("bench").join("work");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let agent_binary = workspace::tracer_binary(true);
    let metrics = agent::has_metrics_flag(&agent_binary);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pinning = (!args.no_pin && cpus >= 2).then_some((0, 1));
    let bench = Bench {
        wrk: program("wrk")?,
        bpftrace: program("bpftrace")?,
        files: root.join("xtask").join("bench"),
        scratch,
        receiver: CountingReceiver::start()?,
        agent_binary,
        agent_args: args.agent_args.clone(),
        metrics,
        ticks: procfs::clock_ticks_per_second(),
        pinning,
    };
    let load_at_start = host_load();

    let mut rounds = Vec::new();
    nginx_rounds(&bench, args, &mut rounds)?;
    if !args.skip_python {
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

    let info = report::RunInfo {
        date: utc_now(),
        commit: git(&root, &["rev-parse", "--short=12", "HEAD"])
            .unwrap_or_else(|| "unknown".into()),
        dirty: git(&root, &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty()),
        machine: procfs::machine(),
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
        counters_source: if metrics {
            "`/metrics` endpoint".into()
        } else {
            "stderr summaries".into()
        },
        export_requests: bench.receiver.requests().0,
        export_requests_refused: bench.receiver.requests().1,
    };
    let comparisons = rounds::comparisons(&rounds);
    let costs = rounds::costs(&rounds);
    let results = report::Results {
        info: &info,
        rounds: &rounds,
        comparisons: &comparisons,
        costs: &costs,
        pipeline: &pipeline,
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

fn nginx_rounds(bench: &Bench, args: &BenchArgs, rounds: &mut Vec<Round>) -> Result<()> {
    let nginx = Server::nginx(
        &program("nginx")?,
        &bench.files,
        &bench.scratch,
        bench.pinning.map(|p| p.0),
    )?;
    let captures: &[Capture] = if args.skip_bpftrace {
        &[Capture::Untraced, Capture::Tracer]
    } else {
        &[Capture::Untraced, Capture::Tracer, Capture::Bpftrace]
    };
    let saturation = LoadPlan {
        kind: LoadKind::Saturation,
        load: wrk::Load {
            connections: args.nginx_connections,
            duration: Duration::from_secs(args.round_secs),
            delay_ms: None,
            cpu: bench.pinning.map(|p| p.1),
        },
    };
    let paced = LoadPlan {
        kind: LoadKind::Paced,
        load: wrk::Load {
            connections: args.paced_connections,
            duration: Duration::from_secs(args.paced_secs),
            delay_ms: Some(args.paced_delay_ms),
            cpu: bench.pinning.map(|p| p.1),
        },
    };
    warm_up(bench, &nginx, saturation)?;
    alternate(bench, &nginx, saturation, args.rounds, captures, rounds)?;
    alternate(bench, &nginx, paced, args.paced_rounds, captures, rounds)?;
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
        kind: LoadKind::Saturation,
        load: wrk::Load {
            connections: args.python_connections,
            duration: Duration::from_secs(args.round_secs),
            delay_ms: None,
            cpu: bench.pinning.map(|p| p.1),
        },
    };
    warm_up(bench, &python, saturation)?;
    alternate(
        bench,
        &python,
        saturation,
        args.rounds,
        &[Capture::Untraced, Capture::Tracer],
        rounds,
    )?;
    python.stop()
}

fn warm_up(bench: &Bench, server: &Server, plan: LoadPlan) -> Result<()> {
    let load = wrk::Load {
        duration: WARM_UP,
        ..plan.load
    };
    wrk::run(
        &bench.wrk,
        &bench.files.join("wrk_report.lua"),
        &server.url(),
        load,
    )?;
    Ok(())
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
        for capture in captures {
            let round = measure(bench, server, plan, *capture, index).with_context(|| {
                format!(
                    "{} {} round {} with {}",
                    server.name,
                    plan.kind.label(),
                    index + 1,
                    capture.label()
                )
            })?;
            step::note(
                "bench",
                &format!(
                    "{} {} {} #{}: {:.0} req/s, p50 {} µs, p99 {} µs{}",
                    server.name,
                    plan.kind.label(),
                    capture.label(),
                    index + 1,
                    round.wrk.requests_per_second(),
                    round.wrk.p50_us,
                    round.wrk.p99_us,
                    round.cost.as_ref().map_or(String::new(), |c| format!(
                        ", capture {:.2} CPU-s, {} KiB peak, spans {:?}",
                        c.cpu_seconds,
                        c.peak_rss_kib,
                        c.spans.map(|s| s.server)
                    )),
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

fn measure(
    bench: &Bench,
    server: &Server,
    plan: LoadPlan,
    capture: Capture,
    index: usize,
) -> Result<Round> {
    let name = format!(
        "{}-{}-{}-{}",
        server.name,
        plan.kind.label(),
        capture.label(),
        index + 1
    );
    let running = match capture {
        Capture::Untraced => Running::Nothing,
        Capture::Tracer => {
            let spec = AgentSpec {
                binary: bench.agent_binary.clone(),
                pids: server.pids().to_vec(),
                port: server.port,
                endpoint: bench.receiver.endpoint(),
                extra_args: bench.agent_args.clone(),
                metrics: bench.metrics,
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
    let spans_before = bench.receiver.counts();
    let cpu_before = match &running {
        Running::Nothing => None,
        Running::Agent(a) => Some(a.sample(bench.ticks)?),
        Running::Bpftrace(b) => Some(b.sample(bench.ticks)?),
    };

    let wrk = wrk::run(
        &bench.wrk,
        &bench.files.join("wrk_report.lua"),
        &server.url(),
        plan.load,
    )?;

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
            settle(&bench.receiver, spans_before, requests);
            let after = agent.sample(bench.ticks)?;
            let drops = agent.stop()?;
            let spans = minus(bench.receiver.counts(), spans_before);
            Some(CaptureCost {
                cpu_seconds: after.cpu_seconds - cpu_before.map_or(0.0, |s| s.cpu_seconds),
                peak_rss_kib: after.peak_rss_kib,
                anon_rss_kib: after.anon_rss_kib,
                spans: Some(spans),
                drops: Some(drops),
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
    Ok(Round {
        server: server.name,
        load: plan.kind,
        capture,
        index,
        wrk,
        requests,
        requests_from_log: logged.is_some(),
        cost,
        host_load: host_load(),
    })
}

fn minus(after: SpanCounts, before: SpanCounts) -> SpanCounts {
    SpanCounts {
        server: after.server.saturating_sub(before.server),
        client: after.client.saturating_sub(before.client),
        other: after.other.saturating_sub(before.other),
    }
}

/// Waits until the round's SERVER spans reach `expected`, or stop arriving.
fn settle(receiver: &CountingReceiver, before: SpanCounts, expected: u64) {
    let start = Instant::now();
    let mut last = receiver.counts();
    let mut last_change = Instant::now();
    while start.elapsed() < SETTLE_MAX {
        let now = receiver.counts();
        if minus(now, before).server >= expected {
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
