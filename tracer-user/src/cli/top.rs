//! `tracer top`: the agent as `tracer agent` runs it (or `tracer top -- CMD` as `tracer run`),
//! with a live view of what it aggregates instead of printed spans: a full-screen table on a
//! terminal, a plain table every `--interval` otherwise.
//!
//! On a terminal the agent's own output (logs, and a traced command's stdout/stderr) goes to a
//! temporary log file while the view is up, and is printed to stderr when it closes. The
//! terminal is restored on quit, when the agent stops, and from a panic hook.

use std::fs::File;
use std::io::{IsTerminal as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use super::TraceArgs;
use crate::agent::{self, Hooks, Until};
use crate::export::top::view::{self, AgentDrops, SortBy};
use crate::export::top::{Top, TopLimits, tui};
use crate::telemetry::metrics::MetricsState;

/// Live view of what is served and called: rows, service edges, traces (like `agent`).
///
/// One row per service, span kind, method and route with count, rate, error % and
/// p50/p95/p99; the service edges; drill-in to recent and slowest traces. The host (or the
/// given pids/ports, or CMD) is traced as by `agent`/`run`; spans are exported over OTLP only
/// when an endpoint is configured, never printed.
///
/// Keys: ↑/↓ select, Enter traces of the row, Esc back, Tab service edges, s sort column,
/// ? help, q or Ctrl-C quit. Without a terminal on stdout, a plain table is printed every
/// --interval seconds (and once more at exit).
///
/// Examples:
///   tracer top                          # the whole host
///   tracer top --port 8080              # one service
///   tracer top -- python3 -m http.server 8000
#[derive(Clone, Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct TopArgs {
    #[command(flatten)]
    pub trace: TraceArgs,

    /// Seconds between plain tables when stdout is not a terminal (or with --plain).
    #[arg(long, default_value_t = 5, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,

    /// Rows whose p99 is at least this many milliseconds are highlighted as slow.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub slow_ms: u64,

    /// Rows kept (service, kind, method, route); spans of further keys are counted in one
    /// `(other)` row.
    #[arg(long, default_value_t = TopLimits::default().rows as u32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_rows: u32,

    /// Print the plain periodic table even on a terminal.
    #[arg(long)]
    pub plain: bool,

    /// A command to start and trace, after `--` (as `tracer run`); the view ends when it exits.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The original stdout and stderr while the view is up (-1 otherwise), for the panic hook.
static SAVED_STDOUT: AtomicI32 = AtomicI32::new(-1);
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
/// The terminal is in raw mode on the alternate screen.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Puts stdout and stderr back and the terminal in its normal mode; idempotent, safe in a panic
/// hook (no locks, no allocation on the way).
fn restore_terminal() {
    for (fd, saved) in [(1, &SAVED_STDOUT), (2, &SAVED_STDERR)] {
        let old = saved.swap(-1, Ordering::AcqRel);
        if old >= 0 {
            // SAFETY: `old` is a descriptor we duplicated and own; dup2 onto 1/2 and close it.
            unsafe {
                libc::dup2(old, fd);
                libc::close(old);
            }
        }
    }
    if TERMINAL_TAKEN.swap(false, Ordering::AcqRel) {
        let _ = crossterm::terminal::disable_raw_mode();
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
    }
}

fn dup(fd: i32) -> anyhow::Result<i32> {
    // SAFETY: F_DUPFD_CLOEXEC takes no pointers; a non-negative result is a new fd we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating a standard stream");
    }
    Ok(new)
}

/// stdout and stderr to `log` (the traced command inherits them), the view on a copy of the
/// terminal's stdout, which is returned.
fn divert_output(log: &File) -> anyhow::Result<File> {
    let view = dup(1)?;
    // SAFETY: a fresh fd from dup, owned by the File from here on.
    let view = unsafe { File::from_raw_fd(view) };
    SAVED_STDOUT.store(dup(1)?, Ordering::Release);
    SAVED_STDERR.store(dup(2)?, Ordering::Release);
    // SAFETY: dup2 of an open fd we own onto the standard streams.
    unsafe {
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(view)
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
}

/// Runs `tracer top`.
pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let top = Top::new(TopLimits {
        rows: args.max_rows as usize,
        ..Default::default()
    });
    let metrics = MetricsState::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(AtomicBool::new(false));
    let until = if args.command.is_empty() {
        Until::Signal
    } else {
        Until::Child(args.command.clone())
    };
    let hooks = Hooks {
        top: Some(Arc::clone(&top)),
        metrics: Some(Arc::clone(&metrics)),
        stop: Some(Arc::clone(&stop)),
        quiet: true,
    };
    // The status line's phase: `live` once the event thread runs, `stopped` after it.
    let ran = Arc::new(AtomicBool::new(false));
    let drops = {
        let (metrics, ran) = (Arc::clone(&metrics), Arc::clone(&ran));
        move || {
            let phase = match (metrics.is_ready(), ran.load(Ordering::Relaxed)) {
                (true, _) => {
                    ran.store(true, Ordering::Relaxed);
                    "live"
                }
                (false, true) => "stopped",
                (false, false) => "starting",
            };
            AgentDrops::from_snapshot(&metrics.snapshot(), phase)
        }
    };
    let started = Instant::now();
    let final_table = {
        let (top, drops) = (Arc::clone(&top), drops.clone());
        move || {
            top.finish();
            view::plain_table(
                &top.snapshot(),
                &drops(),
                SortBy::Count,
                started.elapsed().as_secs(),
            )
        }
    };

    if args.plain || !std::io::stdout().is_terminal() {
        let printer = {
            let (top, stopped, interval) = (
                Arc::clone(&top),
                Arc::clone(&stopped),
                Duration::from_secs(args.interval),
            );
            let drops = drops.clone();
            std::thread::Builder::new()
                .name("tracer-top".into())
                .spawn(move || {
                    let mut next = Instant::now() + interval;
                    while !stopped.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(50));
                        if Instant::now() >= next {
                            next += interval;
                            let table = view::plain_table(
                                &top.snapshot(),
                                &drops(),
                                SortBy::Count,
                                started.elapsed().as_secs(),
                            );
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "{table}");
                            let _ = out.flush();
                        }
                    }
                })
                .context("starting the table printer")?
        };
        let result = agent::run_with(args.trace, until, hooks).await;
        ran.store(true, Ordering::Relaxed);
        stopped.store(true, Ordering::Release);
        let _ = tokio::task::spawn_blocking(move || printer.join()).await;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", final_table());
        let _ = out.flush();
        return result;
    }

    // The full-screen view.
    let log_path = std::env::temp_dir().join(format!("tracer-top-{}.log", std::process::id()));
    let log = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("creating the log file {}", log_path.display()))?
    };
    install_panic_hook();
    let view_out = divert_output(&log)?;
    TERMINAL_TAKEN.store(true, Ordering::Release);
    let guard = match tui::TerminalGuard::enter(view_out) {
        Ok(guard) => guard,
        Err(err) => {
            restore_terminal();
            return Err(err).context("setting up the terminal");
        }
    };
    let view = {
        let (top, stopped, stop) = (Arc::clone(&top), Arc::clone(&stopped), Arc::clone(&stop));
        let slow_ms = args.slow_ms as f64;
        std::thread::Builder::new()
            .name("tracer-top".into())
            .spawn(move || {
                let stop_agent = Arc::clone(&stop);
                let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tui::run(guard, top, drops, &stopped, slow_ms, move || {
                        stop_agent.notify_one()
                    })
                }));
                match ended {
                    Ok(Ok(ended)) => Ok(ended),
                    Ok(Err(err)) => {
                        stop.notify_one();
                        Err(format!("the view failed: {err}"))
                    }
                    Err(_) => {
                        stop.notify_one();
                        Err("the view panicked".to_string())
                    }
                }
            })
            .context("starting the view")?
    };
    let result = agent::run_with(args.trace, until, hooks).await;
    ran.store(true, Ordering::Relaxed);
    stopped.store(true, Ordering::Release);
    let ended = tokio::task::spawn_blocking(move || view.join())
        .await
        .ok()
        .and_then(|joined| joined.ok());
    restore_terminal();
    // What the agent logged meanwhile.
    if let Ok(text) = std::fs::read_to_string(&log_path) {
        eprint!("{text}");
    }
    let _ = std::fs::remove_file(&log_path);
    match ended {
        Some(Ok(tui::Ended::Quit)) => {}
        Some(Ok(tui::Ended::AgentStopped)) => print!("{}", final_table()),
        Some(Err(err)) => eprintln!("tracer: {err}"),
        None => eprintln!("tracer: the view stopped unexpectedly"),
    }
    result
}
