//! `cargo xtask soak`: memory over a long run (outside CI). The release agent traces nginx while
//! short-lived curl processes (one request each, a new pid each) come and go for `--minutes`;
//! its RSS and per-process cache sizes are sampled from /proc and /metrics, and the growth after
//! warm-up is reported (flat is the goal: every per-process cache is bounded and forgets exited
//! processes). Writes the samples to target/soak/soak.txt.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::task::bench::agent::{AgentSpec, RunningAgent};
use crate::task::bench::procfs;
use crate::task::bench::receiver::CountingReceiver;
use crate::task::bench::servers::Server;
use crate::task::{build, setup};
use crate::workspace;

#[derive(Args)]
pub struct SoakArgs {
    /// How long the churn runs.
    #[arg(long, default_value_t = 60)]
    pub minutes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    pub sample_seconds: u64,
    /// curl processes started at once (each waits for its own exit).
    #[arg(long, default_value_t = 2)]
    pub parallel: u32,
}

/// One sample of the agent.
struct Sample {
    elapsed: Duration,
    rss_kib: u64,
    anon_kib: u64,
    curls: u64,
    spans: u64,
    resource_entries: u64,
    exited_removed: u64,
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| procfs::status_kib(&s, field))
        .unwrap_or(0)
}

/// The value of the sample line `name` (exactly, labels included) of a /metrics page.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub fn run(args: &SoakArgs) -> Result<()> {
    setup::run()?;
    build::build_agent(true)?;
    let nginx_bin = workspace::find_on_path("nginx")
        .or_else(|| {
            let p = PathBuf::from("/usr/sbin/nginx");
            p.is_file().then_some(p)
        })
        .context("nginx not found (cargo xtask setup installs it)")?;
    let dir = workspace::target_dir().join("soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bench_files = workspace::root().join("xtask").join("bench");
    let receiver = CountingReceiver::start()?;
    let nginx = Server::nginx(&nginx_bin, &bench_files, &dir, None)?;
    let spec = AgentSpec {
        binary: workspace::tracer_binary(true),
        pids: Vec::new(),
        port: Some(nginx.port),
        endpoint: receiver.endpoint(),
        extra_args: Vec::new(),
        metrics: true,
    };
    let agent = RunningAgent::start(&spec, &dir, "agent")?;
    let url = nginx.url();

    let stop = Arc::new(AtomicBool::new(false));
    let curls = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.parallel.max(1))
        .map(|_| {
            let (stop, curls, url) = (Arc::clone(&stop), Arc::clone(&curls), url.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let status = Command::new("curl")
                        .args(["-s", "-o", "/dev/null", "--max-time", "10", &url])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    if status.is_ok() {
                        curls.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let total = Duration::from_secs(args.minutes.max(1) * 60);
    let every = Duration::from_secs(args.sample_seconds.max(1));
    let mut samples = Vec::new();
    println!("soak: {} minutes, a sample every {every:?}", args.minutes);
    println!(" elapsed   RSS MiB  anon MiB    curls     spans  res.cache  exited");
    loop {
        let metrics = agent.metrics().unwrap_or_default();
        let sample = Sample {
            elapsed: started.elapsed(),
            rss_kib: status_field(agent.pid(), "VmRSS"),
            anon_kib: status_field(agent.pid(), "RssAnon"),
            curls: curls.load(Ordering::Relaxed),
            spans: receiver.counts().server + receiver.counts().client,
            resource_entries: metric(&metrics, "tracer_process_cache_entries{cache=\"resource\"}"),
            exited_removed: metric(
                &metrics,
                "tracer_process_cache_exited_total{cache=\"resource\"}",
            ),
        };
        println!(
            "{:>7}s {:>9.1} {:>9.1} {:>8} {:>9} {:>10} {:>7}",
            sample.elapsed.as_secs(),
            sample.rss_kib as f64 / 1024.0,
            sample.anon_kib as f64 / 1024.0,
            sample.curls,
            sample.spans,
            sample.resource_entries,
            sample.exited_removed
        );
        samples.push(sample);
        if started.elapsed() >= total {
            break;
        }
        std::thread::sleep(
            every
                .min(total.saturating_sub(started.elapsed()))
                .max(Duration::from_millis(100)),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let drops = agent.stop()?;
    nginx.stop()?;

    // Warm-up: the first fifth of the run (at least the first sample).
    let warm = samples
        .iter()
        .find(|s| s.elapsed >= total / 5)
        .or(samples.first())
        .context("no samples")?;
    let last = samples.last().context("no samples")?;
    let peak_after_warm = samples
        .iter()
        .filter(|s| s.elapsed >= warm.elapsed)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let minutes = last.elapsed.as_secs_f64() / 60.0;
    let report = format!(
        "soak: {:.1} min, {} curl processes ({:.0}/s), {} spans\n\
         RSS after warm-up ({}s): {:.1} MiB; at the end: {:.1} MiB; peak after warm-up: {:.1} MiB; \
         growth after warm-up: {:+.1} MiB\n\
         anon RSS after warm-up: {:.1} MiB; at the end: {:.1} MiB\n\
         drops: kernel {}, userspace {}\n",
        minutes,
        last.curls,
        last.curls as f64 / last.elapsed.as_secs_f64().max(1.0),
        last.spans,
        warm.elapsed.as_secs(),
        warm.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        peak_after_warm as f64 / 1024.0,
        (last.rss_kib as f64 - warm.rss_kib as f64) / 1024.0,
        warm.anon_kib as f64 / 1024.0,
        last.anon_kib as f64 / 1024.0,
        drops.kernel,
        drops.userspace
    );
    print!("{report}");
    let mut table =
        String::from("elapsed_s rss_kib anon_kib curls spans resource_entries exited_removed\n");
    for s in &samples {
        table.push_str(&format!(
            "{} {} {} {} {} {} {}\n",
            s.elapsed.as_secs(),
            s.rss_kib,
            s.anon_kib,
            s.curls,
            s.spans,
            s.resource_entries,
            s.exited_removed
        ));
    }
    std::fs::write(dir.join("soak.txt"), format!("{report}\n{table}"))?;
    if last.curls == 0 || last.spans == 0 {
        bail!(
            "the soak traced nothing: {} curls, {} spans",
            last.curls,
            last.spans
        );
    }
    Ok(())
}
