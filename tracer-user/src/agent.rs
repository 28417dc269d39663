//! The running agent: probes attached, then one event thread (`tracer-events`) that owns the ring
//! buffer, the reorder window, the pipeline and the probes and hands finished spans to the sink in
//! batches, while the tokio runtime keeps signals, the traced command, /metrics and the exporter;
//! periodic housekeeping and drop summaries, and an orderly shutdown that flushes every span.
//!
//! Wake-ups are bounded, never one per record: the kernel programs submit records without waking
//! the reader unless a record fills the ring past one of its eighths, and the event thread polls
//! on an adaptive interval ([`BUSY_POLL_MS`] while records flow, doubling to [`IDLE_POLL_MS`] when
//! idle, never past the reorder window's next deadline, never sooner than the busy interval for
//! it). On top of the reorder window that adds up to ~8 ms before a record is read, ~8 ms more
//! before it is released past its window deadline, and ~1 ms of rounding (about 17 ms under a
//! steady flow); the first records after a quiet spell may wait a whole idle interval (64 ms or
//! more). A connection open wakes the reader at once only if the reader has caught up with
//! everything before it (see `events_output_flags` in the eBPF maps).
//!
//! A panic on the event thread is caught there: the probes are detached and the sink is handed
//! back with the failure, so queued spans are delivered or counted and the agent exits non-zero.

use std::{
    collections::HashSet,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::capture::decode::{DecodedRecord, KernelEvent, decode};
use crate::capture::probes::{KernelCounters, ProbeOptions, Probes};
use crate::capture::reorder::ReorderWindow;
use crate::cli::{OutputFormat, TraceArgs};
use crate::correlate::connections::TableLimits;
use crate::export::{self, OtlpConfig, OtlpOverrides, SinkConfig, TerminalOptions};
use crate::model::ExportItem;
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::telemetry::metrics::{AgentSnapshot, MetricsState};
use crate::telemetry::red::{Handover, Limits, RedMetrics};
use crate::telemetry::spans::Clock;

/// Records handled per wake-up before housekeeping gets a turn.
const RECORDS_PER_WAKE: usize = 8192;
/// Spans handed to the sink at once at most (a batch also ends with every drain cycle).
const SPANS_PER_BATCH: usize = 512;
/// Poll interval while records flow: about 125 wake-ups a second under load. At 4 ms the thread
/// woke ~300 times a second and the wake-ups themselves (switches, epoll, timers) were ~7 % of the
/// agent's CPU; a fuller ring wakes it sooner (the kernel side's eighth-of-the-ring rule).
const BUSY_POLL_MS: u64 = 8;
/// Poll interval the event thread backs off to when idle (doubling from [`BUSY_POLL_MS`]).
const IDLE_POLL_MS: u64 = 64;
/// How long shutdown waits for the sink to deliver what is queued.
const FLUSH_DEADLINE: Duration = Duration::from_secs(15);
/// Records held before processing so that cross-CPU records come out in causal order.
const REORDER_MAX_RECORDS: usize = 65_536;
/// ... and at most this many bytes of them (a burst of full-size records would hold 512 MiB).
const REORDER_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Consecutive failed polls (other than EINTR) after which the event thread gives up.
const MAX_WAIT_ERRORS: u32 = 100;
/// After the traced command exits, records still in the ring buffer are read for this long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);

/// What ends the agent.
pub enum Until {
    /// SIGINT or SIGTERM.
    Signal,
    /// The command started by `tracer run` exits (or a signal arrives first).
    Child(Vec<String>),
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn otlp_overrides(args: &TraceArgs) -> OtlpOverrides {
    OtlpOverrides {
        endpoint: args.otlp_endpoint.as_ref().map(|s| s.expose().to_string()),
        protocol: args.otlp_protocol.clone(),
        headers: args.otlp_headers.as_ref().map(|s| s.expose().to_string()),
        ..Default::default()
    }
}

/// The OTLP metrics exporter of the RED histograms, when an endpoint is configured.
fn start_metrics_export(
    args: &TraceArgs,
    red: &Arc<RedMetrics>,
) -> anyhow::Result<Option<export::MetricsExporter>> {
    let Some(cfg) =
        export::MetricsExportConfig::from_env_and_overrides(&env_lookup, &otlp_overrides(args))?
    else {
        return Ok(None);
    };
    Ok(Some(export::MetricsExporter::start(cfg, Arc::clone(red))?))
}

fn sink_config(args: &TraceArgs) -> anyhow::Result<SinkConfig> {
    let overrides = otlp_overrides(args);
    if args.otlp_endpoint.is_some() || export::otlp_configured(&env_lookup) {
        let cfg = OtlpConfig::from_env_and_overrides(&env_lookup, &overrides)?;
        tracing::info!(endpoint = %crate::telemetry::redact::url(&cfg.endpoint), protocol = cfg.protocol.as_str(), "exporting spans over OTLP");
        return Ok(SinkConfig::Otlp(cfg));
    }
    Ok(match args.format {
        OutputFormat::Json => SinkConfig::Json,
        OutputFormat::Text => SinkConfig::Terminal(TerminalOptions {
            colour: export::colour_for_stdout(&env_lookup),
            ..Default::default()
        }),
    })
}

/// Pod metadata when a cluster is reachable; the agent runs without it otherwise.
async fn start_pod_metadata(node: Option<String>) -> Option<crate::telemetry::k8s::PodMetadata> {
    match crate::telemetry::k8s::PodMetadata::start(node).await {
        Ok(Some(pods)) => {
            tracing::info!("Kubernetes pod metadata enabled");
            Some(pods)
        }
        Ok(None) => None,
        Err(err) => {
            tracing::warn!(%err, "Kubernetes pod metadata unavailable; spans carry no k8s.* attributes");
            None
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A child process held before `exec` until its pid is in the kernel's filter.
///
/// `Command::spawn` returns only after `exec`, so the child cannot simply wait on a gate while
/// the agent waits on `spawn`: the child writes its pid to a pipe before blocking on the gate,
/// and `spawn` runs on a blocking thread meanwhile.
struct GatedChild {
    pid: u32,
    /// Resolves with the exit status once the command has been started and has exited.
    exit: tokio::task::JoinHandle<std::io::Result<std::process::ExitStatus>>,
}

fn pipe_pair() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe for the command");
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

async fn spawn_gated(command: &[String], probes: &mut Probes) -> anyhow::Result<GatedChild> {
    use std::os::unix::process::CommandExt;
    let Some((program, rest)) = command.split_first() else {
        bail!("no command given to run")
    };
    let (gate_read, gate_write) = pipe_pair()?;
    let (pid_read, pid_write) = pipe_pair()?;
    let (gate_r, gate_w, pid_w) = (
        gate_read.as_raw_fd(),
        gate_write.as_raw_fd(),
        pid_write.as_raw_fd(),
    );
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    // SAFETY: the closure only calls async-signal-safe functions (getpid, write, read, close).
    unsafe {
        cmd.pre_exec(move || {
            libc::close(gate_w);
            let pid = libc::getpid().to_ne_bytes();
            libc::write(pid_w, pid.as_ptr().cast(), pid.len());
            libc::close(pid_w);
            let mut byte = 0u8;
            // Blocks until the agent has put this pid in the filter (or the agent died: EOF).
            libc::read(gate_r, (&mut byte as *mut u8).cast(), 1);
            Ok(())
        });
    }
    let program_name = program.clone();
    let exit = tokio::task::spawn_blocking(move || {
        // The child inherits these fds by number: they must stay open until spawn returns.
        // Dropping them afterwards makes a failed fork show up as EOF on the pid pipe.
        let spawned = cmd.spawn();
        drop(pid_write);
        drop(gate_read);
        spawned?.wait()
    });
    let pid = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 4];
        // SAFETY: reading into a valid 4-byte buffer from a pipe we own.
        let n = unsafe { libc::read(pid_read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        (n == 4).then(|| i32::from_ne_bytes(buf))
    })
    .await
    .context("waiting for the command to start")?;
    let Some(pid) = pid.filter(|p| *p > 0) else {
        let err = match exit.await {
            Ok(Err(e)) => e.to_string(),
            _ => "it exited before it could be traced".to_string(),
        };
        bail!("cannot start {program_name}: {err}");
    };
    probes.add_pid(pid as u32)?;
    open_gate(gate_write);
    Ok(GatedChild {
        pid: pid as u32,
        exit,
    })
}

fn open_gate(gate: OwnedFd) {
    let byte = 1u8;
    // SAFETY: writing one byte from a valid buffer to a pipe we own.
    unsafe { libc::write(gate.as_raw_fd(), (&byte as *const u8).cast(), 1) };
}

fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// The exit code for a command that could not be started, as shells report it.
fn exec_failure_code(err: &std::io::Error) -> u8 {
    match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 1,
    }
}

/// What `tracer top` adds to a plain agent run (all off by default).
#[derive(Default)]
pub struct Hooks {
    /// Also fed every hand-over batch, beside the RED metrics.
    pub top: Option<Arc<crate::export::top::Top>>,
    /// The agent's counters (a fresh one when `None`), so the caller can read what /metrics shows.
    pub metrics: Option<Arc<MetricsState>>,
    /// Stops the agent like SIGINT does.
    pub stop: Option<Arc<tokio::sync::Notify>>,
    /// Spans go out only over OTLP (when configured); nothing is printed.
    pub quiet: bool,
}

/// Runs the agent until `until` says stop. Returns the process exit code.
pub async fn run(args: TraceArgs, until: Until) -> anyhow::Result<ExitCode> {
    run_with(args, until, Hooks::default()).await
}

/// [`run`] with `tracer top`'s hooks.
pub async fn run_with(args: TraceArgs, until: Until, hooks: Hooks) -> anyhow::Result<ExitCode> {
    let sink_cfg = sink_config(&args)?;
    // `tracer top` (quiet) sends spans only over OTLP, never to the terminal.
    let spans_out = !args.no_spans && (!hooks.quiet || matches!(sink_cfg, SinkConfig::Otlp(_)));
    let ring_bytes = args
        .ring_buffer_mib
        .max(1)
        .checked_next_power_of_two()
        .and_then(|m| m.checked_mul(1024 * 1024))
        .context("--ring-buffer-mib is too large")?;
    let probe_opts = ProbeOptions {
        capture_bytes: args.capture_bytes,
        pids: args.pids.clone(),
        pid_filter: !args.pids.is_empty() || matches!(until, Until::Child(_)),
        follow_forks: true,
        ports: args.ports.clone(),
        sniff_untracked: !args.no_sniff,
        ring_buffer_bytes: ring_bytes,
        max_connections: args.max_connections.max(64),
        kernel_log_level: args.kernel_log_level,
        tls: args.tls && !args.no_tls,
        context_propagation: args.context_propagation,
    };
    let metrics = hooks.metrics.clone().unwrap_or_default();
    if let Some(addr) = args.metrics_addr {
        let (bound, _server) = crate::telemetry::metrics::serve(addr, metrics.clone())
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    }
    // RED metrics: fed by the event thread's hand-over (telemetry/red.rs), read by /metrics and
    // the OTLP metrics exporter.
    let red = (!args.no_metrics).then(|| {
        RedMetrics::new(Limits {
            series_per_instrument: args.metrics_cardinality_limit as usize,
            ..Default::default()
        })
    });
    let metrics_exporter = match &red {
        Some(red) => {
            metrics.set_red(Arc::clone(red));
            start_metrics_export(&args, red)?
        }
        None => None,
    };
    let sink = export::build_sink(&sink_cfg).await?;
    let limits = TableLimits {
        max_connections: args.max_connections.max(64) as usize,
        request_timeout_ns: args.request_timeout().as_nanos() as u64,
        max_buffered_bytes: args.max_buffer_mib as usize * 1024 * 1024,
        ..Default::default()
    };
    let pipeline = Pipeline::new(
        PipelineOptions {
            limits,
            proc_root: PathBuf::from("/proc"),
            host_name: host_name(),
            ports: args.ports.clone(),
            include_telemetry: args.include_telemetry,
        },
        Clock::measure(),
    )
    .with_id_generator(args.id_generator);

    let mut pipeline = pipeline.with_command_line(if args.export_command_line {
        crate::telemetry::resource::CommandLine::Redacted
    } else {
        crate::telemetry::resource::CommandLine::Omitted
    });

    // Probes last: from the moment they attach, records arrive and must be read at once.
    let privileges = crate::capture::privilege::Privileges::of_self();
    let mut probes = Probes::load(&probe_opts)
        .map_err(|e| anyhow::anyhow!(crate::capture::privilege::describe(&e, &privileges)))?;
    for gap in crate::capture::privilege::degrading_gaps(&privileges) {
        tracing::warn!("{gap}");
    }
    // The Kubernetes API client connects only now, so the kernel programs know its sockets as the
    // agent's and never capture the API server's end on this host (loading its configuration
    // takes milliseconds; the ring buffer holds what arrives meanwhile).
    pipeline = pipeline.with_kernel_identities(probes.kernel_identities());
    if probes.kernel_identities() {
        // The given processes' threads are classified now: their first requests may already
        // need the kernel's same-thread rule.
        let mut runtimes = crate::correlate::runtime::RuntimeCache::new(PathBuf::from("/proc"), 64);
        for pid in &args.pids {
            if runtimes.threads(*pid, Some(*pid)) == crate::correlate::linker::Threads::Dedicated {
                probes.mark_dedicated(*pid);
            }
        }
    }
    pipeline = pipeline.with_pid_map(probes.proc_pid_map()?);
    pipeline = pipeline.with_agent_mirror(Some(probes.agent_mirror_check()?));
    let pods = start_pod_metadata(args.k8s_node_name.clone()).await;
    if let Some(pods) = &pods {
        metrics.set_pods(pods.clone());
    }
    pipeline = pipeline.with_pods(pods);
    pipeline = pipeline.with_service_graph(red.as_ref().map(|r| Arc::clone(r.service_graph())));
    let ring = probes.take_ring_buffer()?;
    let window = ReorderWindow::new(args.reorder_window_ms * 1_000_000, REORDER_MAX_RECORDS)
        .with_max_bytes(REORDER_MAX_BYTES)
        .with_max_wait(args.client_wait_ms * 1_000_000);
    let mut child = match &until {
        Until::Child(command) => {
            let gated = spawn_gated(command, &mut probes).await?;
            let shown = crate::telemetry::redact::command_line_args(command).join(" ");
            tracing::info!(pid = gated.pid, command = %shown, "tracing command");
            Some(gated)
        }
        Until::Signal => None,
    };
    // Start-up code is done: only what runs from now on stays resident.
    crate::memory::release_start_up_code();
    eprintln!(
        "tracer: probes attached; {}",
        match &sink_cfg {
            _ if args.no_spans => "not exporting spans (--no-spans)".to_string(),
            _ if !spans_out => "not printing spans".to_string(),
            SinkConfig::Otlp(c) => format!(
                "exporting OTLP ({}) to {}",
                c.protocol.as_str(),
                crate::telemetry::redact::url(&c.endpoint)
            ),
            SinkConfig::Terminal(_) => "printing spans to the terminal".to_string(),
            SinkConfig::Json => "printing spans as JSON lines".to_string(),
        }
    );

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let stop = Arc::new(StopSignal::new()?);
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<EventLoopEnd>();
    let event_loop = EventLoop {
        ring,
        window,
        pipeline,
        probes,
        sink: Handover {
            sink,
            red: red.clone(),
            spans: spans_out,
            top: hooks.top.clone(),
        },
        metrics: Arc::clone(&metrics),
        stop: Arc::clone(&stop),
        summary_every: args.summary_interval.max(1),
        out: Vec::with_capacity(SPANS_PER_BATCH),
        prefetched: HashSet::new(),
    };
    std::thread::Builder::new()
        .name("tracer-events".into())
        .spawn(move || {
            // A panic inside is caught there: the sink comes back with a failure marker.
            let _ = done_tx.send(event_loop.run());
        })
        .context("starting the event thread")?;
    metrics.set_ready(true);
    let mut exit_code = ExitCode::SUCCESS;

    let mut finished: Option<anyhow::Result<EventLoopEnd>> = None;
    tokio::select! {
        status = async {
            match child.as_mut() {
                Some(c) => (&mut c.exit).await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
                None => std::future::pending().await,
            }
        } => {
            child = None;
            match status {
                Ok(status) => {
                    exit_code = ExitCode::from(exit_code_of(status));
                    tracing::info!(%status, "command exited");
                }
                Err(err) => {
                    // The command could not be started (exec failed after the fork): exit like
                    // a shell would, 127 when it does not exist, 1 otherwise.
                    let program = match &until {
                        Until::Child(command) => command.first().map(String::as_str).unwrap_or(""),
                        Until::Signal => "",
                    };
                    eprintln!("tracer: error: cannot run {program}: {err}");
                    exit_code = ExitCode::from(exec_failure_code(&err));
                }
            }
            // Records of the command's last exchanges may still be on their way: the event
            // thread keeps reading for a moment.
            tokio::time::sleep(DRAIN_AFTER_EXIT).await;
        }
        _ = sigint.recv() => tracing::info!("SIGINT: flushing and exiting"),
        _ = sigterm.recv() => tracing::info!("SIGTERM: flushing and exiting"),
        _ = async {
            match &hooks.stop {
                Some(stop) => stop.notified().await,
                None => std::future::pending().await,
            }
        } => tracing::info!("stop requested: flushing and exiting"),
        // Even if the thread is gone, the command is still stopped and reaped below.
        end = &mut done_rx => finished = Some(end.context("the event thread stopped unexpectedly")),
    }
    // The event thread reads what the ring buffer already holds (those records belong to
    // exchanges that happened), releases the window and hands the last spans over, then gives
    // the sink and the probes back (detached beside the flush).
    stop.request();
    let end = match finished {
        Some(end) => end,
        None => match tokio::time::timeout(FLUSH_DEADLINE, done_rx).await {
            Ok(end) => end.context("the event thread stopped unexpectedly"),
            Err(_) => {
                tracing::error!(
                    deadline = ?FLUSH_DEADLINE,
                    "the event thread did not stop in time; spans it holds are lost"
                );
                Err(anyhow::anyhow!(
                    "the event thread did not stop within {FLUSH_DEADLINE:?}"
                ))
            }
        },
    };
    if let Some(c) = child.take() {
        // A signal stopped us before the command ended: pass it on, then reap.
        // SAFETY: signalling the child we started (not yet reaped), by its pid.
        unsafe { libc::kill(c.pid as i32, libc::SIGTERM) };
        if let Ok(Ok(Ok(status))) = tokio::time::timeout(Duration::from_secs(5), c.exit).await {
            exit_code = ExitCode::from(exit_code_of(status));
        }
    }
    let mut end = end?;
    let detaching = detach_beside(end.probes.take());
    // The spans' flush and the metrics' last export (with every span the event thread handed
    // over) run side by side, within the same deadline, and beside the probes' detach.
    let (final_stats, ()) = tokio::join!(end.sink.shutdown(FLUSH_DEADLINE), async {
        if let Some(exporter) = metrics_exporter {
            exporter.shutdown(FLUSH_DEADLINE).await;
        }
    });
    if let Some(detaching) = detaching {
        // Not bounded: the kernel does this work at exit anyway if we do not wait for it.
        let _ = tokio::task::spawn_blocking(move || detaching.join()).await;
    }
    tracing::info!(
        spans = end.spans,
        requests_pending = end.requests_pending,
        exported = final_stats.spans_exported,
        dropped_queue_full = final_stats.spans_dropped_queue_full,
        dropped_export_failed = final_stats.spans_dropped_export_failed,
        dropped_shutdown = final_stats.spans_dropped_shutdown,
        dropped_rejected_by_receiver = final_stats.spans_dropped_rejected,
        kernel_events = end.kernel.events_submitted,
        kernel_lost = end.kernel.lost(),
        "tracer stopped"
    );
    if let Some(err) = end.failure {
        return Err(err);
    }
    Ok(exit_code)
}

/// Tells the event thread to stop: a flag, and an eventfd its poll watches.
struct StopSignal {
    requested: std::sync::atomic::AtomicBool,
    event: OwnedFd,
}

impl StopSignal {
    fn new() -> anyhow::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("creating the stop eventfd");
        }
        Ok(StopSignal {
            requested: std::sync::atomic::AtomicBool::new(false),
            // SAFETY: a fresh fd from eventfd.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn request(&self) {
        self.requested.store(true, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a valid buffer to an eventfd we own.
        unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// Wake-ups of the event thread (poll returns), for /metrics: the rate shows the hand-off cost.
pub static EVENT_LOOP_WAKEUPS: AtomicU64 = AtomicU64::new(0);

/// What the event thread owns.
struct EventLoop {
    ring: crate::capture::ring::RingReader,
    window: ReorderWindow<DecodedRecord>,
    pipeline: Pipeline,
    probes: Probes,
    sink: Handover,
    metrics: Arc<MetricsState>,
    stop: Arc<StopSignal>,
    summary_every: u64,
    /// Spans built since the last hand-over (reused).
    out: Vec<ExportItem>,
    /// Processes whose /proc entry was read in the current drain cycle (reused).
    prefetched: HashSet<u32>,
}

/// What the event thread hands back when it stops.
struct EventLoopEnd {
    sink: crate::export::SpanSink,
    kernel: KernelCounters,
    spans: u64,
    /// Requests still waiting for their response when the agent stopped: never made spans
    /// (their end is unknown), reported in the stop line.
    requests_pending: usize,
    /// Why the loop ended early, if it did.
    failure: Option<anyhow::Error>,
    /// The probes, still attached: detached beside the flush (see [`detach_beside`]).
    probes: Option<Probes>,
}

/// Detaches the probes on a thread of their own, returning it to be joined. Detaching takes
/// ~60-130 ms per syscall tracepoint on recent kernels (6.x: each release waits for RCU grace
/// periods under a kernel-wide mutex, so releasing them from several threads does not help): ~4 s
/// for all of them, measured on an idle host, longer on a busy one. Done before the hand-over,
/// that wait held the last spans back and could pass the stop deadline.
fn detach_beside(probes: Option<Probes>) -> Option<std::thread::JoinHandle<()>> {
    let probes = probes?;
    let started = std::time::Instant::now();
    std::thread::Builder::new()
        .name("tracer-detach".into())
        .spawn(move || {
            drop(probes);
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "probes detached"
            );
        })
        // Could not start a thread: the closure, and the probes with it, are dropped here.
        .ok()
}

/// An epoll set: the ring buffer edge-triggered (so only the kernel's wake-ups count, not data
/// merely present) and the stop eventfd.
struct Waiter {
    epoll: OwnedFd,
}

impl Waiter {
    fn new(ring_fd: i32, stop_fd: i32) -> anyhow::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("creating the event thread's epoll");
        }
        // SAFETY: a fresh fd from epoll_create1.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for (watched, flags) in [
            (ring_fd, (libc::EPOLLIN | libc::EPOLLET) as u32),
            (stop_fd, libc::EPOLLIN as u32),
        ] {
            let mut ev = libc::epoll_event {
                events: flags,
                u64: watched as u64,
            };
            // SAFETY: valid epoll fd, fd to watch and event struct.
            if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, watched, &mut ev) }
                != 0
            {
                return Err(std::io::Error::last_os_error())
                    .context("watching the ring buffer with epoll");
            }
        }
        Ok(Waiter { epoll })
    }

    /// Sleeps until a kernel wake-up, a stop request or `timeout_ms`. An interrupted sleep
    /// (EINTR) is a short one; any other error is returned.
    fn wait(&self, timeout_ms: u64) -> std::io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let timeout = i32::try_from(timeout_ms).unwrap_or(i32::MAX);
        // SAFETY: valid epoll fd and event array of the given length.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout,
            )
        };
        EVENT_LOOP_WAKEUPS.fetch_add(1, Ordering::Relaxed);
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }
}

impl EventLoop {
    fn run(mut self) -> EventLoopEnd {
        let failure = match catch_panic(|| self.main_loop()) {
            Ok(result) => result.err(),
            Err(panic) => return self.after_panic(panic),
        };
        if let Some(err) = &failure {
            tracing::error!("event thread: {err:#}");
        }
        // Read what the ring buffer holds: the records of everything that happened before the
        // stop (a record is written when its syscall returns). The probes stay attached until
        // after the hand-over (`detach_beside`); what they record after this read belongs to
        // exchanges that began after the stop and is not read. Bounded, in case the records
        // keep coming faster than they are read.
        let kernel = self.probes.counters();
        self.metrics.set_ready(false);
        let EventLoop {
            mut ring,
            mut window,
            mut pipeline,
            probes,
            sink,
            mut out,
            mut prefetched,
            ..
        } = self;
        for _ in 0..64 {
            if drain(
                &mut ring,
                &mut window,
                &mut pipeline,
                &sink,
                &mut out,
                &mut prefetched,
            ) == 0
            {
                break;
            }
        }
        window.release_ready_with(u64::MAX, &mut |bytes, decoded| {
            if let Some(event) = decoded.event(bytes) {
                process(event, &mut pipeline, &sink, &mut out);
            }
        });
        sink.submit_batch(&mut out);
        EventLoopEnd {
            sink: sink.sink,
            kernel,
            spans: pipeline.stats().spans,
            requests_pending: pipeline.pending_requests(),
            failure,
            probes: Some(probes),
        }
    }

    /// After a panic in the loop: the pipeline's state is suspect, so nothing more is read or
    /// released; the probes are detached and the sink goes back to be shut down (what it holds
    /// is delivered or counted) with the failure, so the agent exits non-zero.
    fn after_panic(self, panic: String) -> EventLoopEnd {
        tracing::error!(%panic, "event thread panicked; spans still in the pipeline are lost");
        self.metrics.set_ready(false);
        let kernel = self.probes.counters();
        let EventLoop {
            probes,
            sink,
            pipeline,
            mut out,
            ..
        } = self;
        drop(probes);
        // Spans already built are whole: hand them over rather than lose them.
        sink.submit_batch(&mut out);
        EventLoopEnd {
            sink: sink.sink,
            kernel,
            spans: pipeline.stats().spans,
            requests_pending: pipeline.pending_requests(),
            failure: Some(anyhow::anyhow!("the event thread panicked: {panic}")),
            probes: None,
        }
    }

    fn main_loop(&mut self) -> anyhow::Result<()> {
        let waiter = Waiter::new(self.ring.as_raw_fd(), self.stop.event.as_raw_fd())?;
        let mut interval_ms = BUSY_POLL_MS;
        let mut next_tick = monotonic_now_ns() + 1_000_000_000;
        let mut seconds = 0u64;
        let mut reported = DropReport::default();
        let mut wait_errors = 0u32;
        loop {
            let drain_started = monotonic_now_ns();
            let ring_mark = self.ring.producer_mark();
            let drained = drain(
                &mut self.ring,
                &mut self.window,
                &mut self.pipeline,
                &self.sink,
                &mut self.out,
                &mut self.prefetched,
            );
            let now = monotonic_now_ns();
            // A server's request waits for its same-host client's (see `Offer`), bounded.
            self.window
                .release_ready_waiting(now, &mut |bytes, decoded, may_wait| {
                    let Some(event) = decoded.event(bytes) else {
                        return crate::capture::reorder::Offer::Taken;
                    };
                    offer(
                        event,
                        may_wait,
                        &mut self.pipeline,
                        &self.sink,
                        &mut self.out,
                    )
                });
            if self.ring.has_read_to(ring_mark) {
                // Every record committed before the drain began has been read, and released
                // unless the window still holds it.
                let held = self.window.oldest_held_ts().unwrap_or(u64::MAX);
                self.pipeline
                    .note_processed_before(drain_started.min(held), &mut self.out);
            }
            for (pid, fd) in self.pipeline.take_ignored_fds() {
                self.probes.ignore_connection(pid, fd);
            }
            for pid in self.pipeline.take_dedicated_pids() {
                self.probes.mark_dedicated(pid);
            }
            self.probes.go_tls_poll();
            let tick = now >= next_tick;
            if tick {
                // One tick per second on average; after a stall, one tick, not a burst of them.
                next_tick += 1_000_000_000;
                if next_tick <= now {
                    next_tick = now + 1_000_000_000;
                }
                self.pipeline.tick(now, &mut self.out);
                // Processes that started or loaded an OpenSSL copy since the last scan.
                self.probes.rescan_tls();
            }
            // One hand-over per cycle: one queue lock, one wake-up of the sink's worker.
            self.sink.submit_batch(&mut self.out);
            if tick {
                // After the hand-over, so a snapshot never shows spans built but not yet handed
                // to the sink: records read, reorder window empty and every enqueued span
                // settled then means the agent has caught up (tests wait on exactly that).
                self.metrics.update(snapshot(
                    &self.probes,
                    &self.pipeline,
                    &self.sink,
                    &self.window,
                ));
                seconds += 1;
                if seconds.is_multiple_of(self.summary_every) {
                    reported = report_drops(&self.probes, &self.pipeline, &self.sink, reported);
                }
            }
            if self.stop.requested() {
                return Ok(());
            }
            if drained >= RECORDS_PER_WAKE {
                // More is waiting: no sleep.
                interval_ms = BUSY_POLL_MS;
                continue;
            }
            interval_ms = if drained > 0 {
                BUSY_POLL_MS
            } else {
                (interval_ms * 2).min(IDLE_POLL_MS)
            };
            let mut wait_ns = interval_ms * 1_000_000;
            if let Some(deadline) = self.window.next_deadline() {
                // Held records are released on time, but never by waking sooner than the busy
                // interval: under a steady flow the oldest held record is always about to be
                // due, and waking for each would be a wake-up per millisecond.
                let due_in = deadline.saturating_sub(now).max(BUSY_POLL_MS * 1_000_000);
                wait_ns = wait_ns.min(due_in);
            }
            wait_ns = wait_ns.min(next_tick.saturating_sub(now));
            // Round up: waking a little after a deadline is fine, spinning before it is not.
            match waiter.wait(wait_ns.div_ceil(1_000_000)) {
                Ok(()) => wait_errors = 0,
                Err(err) => {
                    // Failing polls return at once: give up rather than spin.
                    wait_errors += 1;
                    if wait_errors == 1 {
                        tracing::warn!(%err, "waiting for ring buffer records failed");
                    }
                    if wait_errors >= MAX_WAIT_ERRORS {
                        return Err(err).context("waiting for ring buffer records keeps failing");
                    }
                }
            }
        }
    }
}

/// Runs `f`, turning a panic into its message (the panic hook has already printed it).
fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

/// Moves up to `RECORDS_PER_WAKE` records from the ring buffer into the reorder window; returns
/// how many were read. Spans built on the way collect in `out`, handed over every
/// `SPANS_PER_BATCH`.
fn drain(
    ring: &mut crate::capture::ring::RingReader,
    window: &mut ReorderWindow<DecodedRecord>,
    pipeline: &mut Pipeline,
    sink: &Handover,
    out: &mut Vec<ExportItem>,
    prefetched: &mut HashSet<u32>,
) -> usize {
    prefetched.clear();
    let mut n = 0;
    while n < RECORDS_PER_WAKE {
        let Some(item) = ring.next() else { break };
        n += 1;
        match decode(&item) {
            Ok(event) => {
                if let crate::capture::decode::KernelEvent::ConnOpen {
                    header,
                    role,
                    local,
                    peer,
                    ..
                } = &event
                {
                    // Once per process per cycle: reading /proc/<pid>/stat costs the kernel a
                    // walk over all the process's threads, and a batch may hold thousands of
                    // opens of one process (the reads would all see the same process anyway).
                    if prefetched.insert(header.tgid) {
                        pipeline.prefetch_resource(header.tgid);
                        // Gone already: named after the kernel's comm, not unknown_service.
                        if let Some(comm) = crate::capture::decode::conn_open_comm(&item) {
                            pipeline.name_unreadable_process(header.tgid, &comm);
                        }
                    }
                    if crate::pipeline::needs_proc(*role, *local, *peer) {
                        pipeline.presolve_sniffed(header.conn_id, header.tgid, header.fd);
                    }
                }
                // A data record is decoded once: the window keeps its fields with its bytes.
                window.push_with(
                    event.causal_ts(),
                    &item,
                    DecodedRecord::of(&event),
                    &mut |bytes, decoded| {
                        if let Some(event) = decoded.event(bytes) {
                            process(event, pipeline, sink, out);
                        }
                    },
                )
            }
            Err(err) => {
                DECODE_ERRORS.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%err, "undecodable record");
            }
        }
    }
    n
}

/// Runs one record through the pipeline; hands the spans over once a batch is full.
fn process(
    event: KernelEvent<'_>,
    pipeline: &mut Pipeline,
    sink: &Handover,
    out: &mut Vec<ExportItem>,
) {
    crate::capture::decode::trace_record(&event);
    pipeline.on_event(event, out);
    if out.len() >= SPANS_PER_BATCH {
        sink.submit_batch(out);
    }
}

/// Runs a due record through the pipeline, unless it may still wait and the pipeline waits for
/// a record not read yet (a server's request whose traced client's write has not returned).
fn offer(
    event: KernelEvent<'_>,
    may_wait: bool,
    pipeline: &mut Pipeline,
    sink: &Handover,
    out: &mut Vec<ExportItem>,
) -> crate::capture::reorder::Offer {
    if may_wait && pipeline.awaits_client_request(&event) {
        return crate::capture::reorder::Offer::Wait;
    }
    process(event, pipeline, sink, out);
    crate::capture::reorder::Offer::Taken
}

/// Records the agent could not decode (a kernel/userspace ABI mismatch would show here).
pub static DECODE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Everything the agent counts, for /metrics.
fn snapshot(
    probes: &Probes,
    pipeline: &Pipeline,
    sink: &Handover,
    window: &ReorderWindow<DecodedRecord>,
) -> AgentSnapshot {
    let k = probes.counters();
    let p = pipeline.stats();
    let t = pipeline.table_stats();
    let h = pipeline.http_stats();
    let l = pipeline.linker_stats();
    let e = sink.stats().snapshot();
    let r = window.stats();
    AgentSnapshot {
        kernel: k,
        events_read: p.events,
        decode_errors: DECODE_ERRORS.load(Ordering::Relaxed),
        event_loop_wakeups: EVENT_LOOP_WAKEUPS.load(Ordering::Relaxed),
        spans_built: p.spans,
        exchanges_without_role: p.exchanges_without_role,
        exchanges_ports_unknown: p.exchanges_ports_unknown,
        exchanges_lost_to_drops: h.lost_to_drops,
        records_unknown_connection: p.records_unknown_connection,
        exchanges_own_telemetry: p.own_telemetry_dropped,
        exchanges_telemetry_pipeline: p.telemetry_pipeline_dropped,
        proc_pid_unmapped: p.proc_pid_unmapped,
        exchanges_telemetry_descendant: p.telemetry_descendants_dropped,
        connections_agent_mirrors: p.sniffed_agent_mirrors,
        connections_netns_kernel: p.netns_from_kernel,
        connections_netns_proc: p.netns_from_proc,
        connections_tracked: pipeline.connections() as u64,
        connections_opened: t.opened + t.opened_late,
        connections_closed: t.closed,
        connections_evicted_full: t.evicted_full,
        connections_expired_idle: t.expired_idle,
        http_messages_parsed: h.messages_parsed,
        http_bytes_skipped: h.bytes_skipped,
        http_desyncs: h.desyncs,
        http_heads_too_large: h.heads_too_large,
        http_pending_overflow: h.pending_overflow,
        spans_enqueued: e.spans_enqueued,
        spans_exported: e.spans_exported,
        spans_dropped_queue_full: e.spans_dropped_queue_full,
        spans_dropped_export_failed: e.spans_dropped_export_failed,
        spans_dropped_shutdown: e.spans_dropped_shutdown,
        spans_dropped_rejected: e.spans_dropped_rejected,
        export_batches: e.export_batches,
        export_batches_failed: e.export_batches_failed,
        export_retries: e.export_retries,
        last_export_latency_seconds: e.last_export_latency.as_secs_f64(),
        links_by_header: l.by_header,
        links_by_connection_pair: l.by_connection_pair,
        links_by_same_thread: l.by_same_thread,
        links_ambiguous_thread: l.ambiguous_thread,
        root_spans: l.roots,
        reorder_buffered: r.held,
        reorder_forced_early: r.forced_early,
        reorder_client_waits: r.waits,
        reorder_client_waits_expired: r.waits_expired,
        pair_late_clients_skipped: l.pair_late_clients_skipped,
        bounds: pipeline.bounds_snapshot(),
        http2: pipeline.http2_stats(),
        tls: pipeline.tls_stats(),
        go_tls: probes.go_tls_snapshot(),
        stages: pipeline.stage_snapshot(),
        propagation: crate::telemetry::metrics::PropagationSnapshot {
            kernel: probes.propagation_counters(),
            matching: pipeline.kernel_id_stats(),
            kernel_identities: l.kernel_identities,
            kernel_disagreements: l.kernel_disagreements,
            trace_remaps_evicted: l.trace_remaps_evicted,
        },
    }
}

/// Drop totals last reported.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct DropReport {
    kernel_lost: u64,
    spans_dropped: u64,
    decode_errors: u64,
    evicted: u64,
}

fn report_drops(
    probes: &Probes,
    pipeline: &Pipeline,
    sink: &Handover,
    last: DropReport,
) -> DropReport {
    let k = probes.counters();
    let s = sink.stats().snapshot();
    let t = pipeline.table_stats();
    let now = DropReport {
        kernel_lost: k.lost(),
        spans_dropped: s.spans_dropped_queue_full + s.spans_dropped_export_failed,
        decode_errors: DECODE_ERRORS.load(Ordering::Relaxed),
        evicted: t.evicted_full,
    };
    if now != last {
        tracing::warn!(
            kernel_ringbuf_full = k.ringbuf_full,
            kernel_conn_table_full = k.conn_table_full,
            kernel_args_table_full = k.args_table_full,
            spans_dropped_queue_full = s.spans_dropped_queue_full,
            spans_dropped_export_failed = s.spans_dropped_export_failed,
            decode_errors = now.decode_errors,
            connections_evicted = t.evicted_full,
            "events or spans were dropped (totals since start)"
        );
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_the_event_loop_becomes_its_message() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        let caught = catch_panic(|| -> u32 { panic!("record {} broke it", 3) });
        assert_eq!(caught, Err("record 3 broke it".to_string()));
        let caught = catch_panic(|| -> u32 { panic!("static message") });
        assert_eq!(caught, Err("static message".to_string()));
    }

    #[test]
    fn a_command_that_cannot_start_exits_like_in_a_shell() {
        let not_found = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(exec_failure_code(&not_found), 127);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(exec_failure_code(&denied), 1);
    }
}
