//! Processes a test starts: `ChildGuard` (spawn, capture output, signal by pid, terminate on
//! drop), plus loopback port helpers and a scratch directory removed on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines kept per captured stream; more are dropped and counted.
pub const MAX_CAPTURED_LINES: usize = 100_000;
/// Bytes kept per captured line; the rest of a longer line is cut.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// How often a wait on a child polls its state.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Default)]
struct CaptureState {
    lines: Vec<String>,
    dropped_lines: u64,
    closed: bool,
}

/// The lines of one output stream of a child, filled by a reader thread.
#[derive(Clone, Default)]
pub struct OutputCapture {
    inner: Arc<(Mutex<CaptureState>, Condvar)>,
}

/// Outcome of `OutputCapture::wait_for_line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineWait {
    /// The first matching line.
    Found(String),
    /// The stream ended (the process exited or closed it) without a match.
    Closed,
    TimedOut,
}

impl OutputCapture {
    /// Starts a thread copying `stream` line by line into a new capture.
    pub fn spawn_reader(stream: impl Read + Send + 'static, label: &str) -> OutputCapture {
        let capture = OutputCapture::default();
        let filled = capture.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("capture-{label}"))
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader
                        .by_ref()
                        .take(MAX_LINE_BYTES as u64)
                        .read_until(b'\n', &mut line)
                    {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line);
                            filled.push(text.trim_end_matches(['\n', '\r']).to_owned());
                        }
                    }
                }
                filled.close();
            });
        if let Err(e) = spawned {
            panic!("spawning the output reader for {label}: {e}");
        }
        capture
    }

    fn lock(&self) -> MutexGuard<'_, CaptureState> {
        self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: String) {
        let mut state = self.lock();
        if state.lines.len() >= MAX_CAPTURED_LINES {
            state.dropped_lines += 1;
        } else {
            state.lines.push(line);
        }
        drop(state);
        self.inner.1.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.inner.1.notify_all();
    }

    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// All lines joined with newlines (plus a note when lines were dropped).
    pub fn text(&self) -> String {
        let state = self.lock();
        let mut text = state.lines.join("\n");
        if state.dropped_lines > 0 {
            text.push_str(&format!("\n[{} more lines dropped]", state.dropped_lines));
        }
        text
    }

    /// True once the writer closed the stream and every line was read.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits for a line matching `matches`, the end of the stream, or the timeout.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> LineWait {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let mut checked = 0;
        loop {
            if let Some(found) = state.lines.iter().skip(checked).find(|l| matches(l)) {
                return LineWait::Found(found.clone());
            }
            checked = state.lines.len();
            if state.closed {
                return LineWait::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return LineWait::TimedOut;
            }
            state = self
                .inner
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until the stream is closed; false on timeout.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .inner
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// A child process this test started. Its pid is signalled only while it is still unreaped (so
/// the pid cannot belong to anyone else); dropping the guard terminates it.
pub struct ChildGuard {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
    stdout: OutputCapture,
    stderr: OutputCapture,
}

impl ChildGuard {
    /// Spawns `command` with stdin closed and stdout/stderr captured; panics naming `name` when
    /// the program cannot start.
    pub fn spawn(name: &str, mut command: Command) -> ChildGuard {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({:?}): {e}", command.get_program()));
        let stdout = match child.stdout.take() {
            Some(out) => OutputCapture::spawn_reader(out, &format!("{name}-stdout")),
            None => OutputCapture::default(),
        };
        let stderr = match child.stderr.take() {
            Some(err) => OutputCapture::spawn_reader(err, &format!("{name}-stderr")),
            None => OutputCapture::default(),
        };
        ChildGuard {
            name: name.to_owned(),
            child,
            exit: None,
            stdout,
            stderr,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> &OutputCapture {
        &self.stdout
    }

    pub fn stderr(&self) -> &OutputCapture {
        &self.stderr
    }

    /// Both captured streams, labelled, for failure messages.
    pub fn output_report(&self) -> String {
        format!(
            "--- {name} stdout ---\n{out}\n--- {name} stderr ---\n{err}",
            name = self.name,
            out = self.stdout.text(),
            err = self.stderr.text()
        )
    }

    /// The exit status if the child has exited (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends `signal` to the child; false when it has already exited.
    pub fn signal(&mut self, signal: libc::c_int) -> bool {
        if self.try_exit().is_some() {
            return false;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return false;
        };
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    /// SIGTERM, then SIGKILL if the child is still running after `grace`; returns its status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit() {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        eprintln!(
            "{} (pid {}) ignored SIGTERM for {grace:?}; sending SIGKILL",
            self.name,
            self.pid()
        );
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(10))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

/// Runs `command` to completion with captured output, killing it after `timeout`.
pub fn run_with_timeout(
    name: &str,
    command: Command,
    timeout: Duration,
) -> (ExitStatus, ChildGuard) {
    let mut child = ChildGuard::spawn(name, command);
    let Some(status) = child.wait_timeout(timeout) else {
        child.terminate(Duration::from_secs(2));
        panic!(
            "{name} did not finish within {timeout:?}\n{}",
            child.output_report()
        );
    };
    // The pipes close when the process exits (unless a descendant keeps them); give the
    // readers a moment to collect the tail.
    child.stdout().wait_closed(Duration::from_secs(5));
    child.stderr().wait_closed(Duration::from_secs(5));
    (status, child)
}

/// Lowest and one-past-highest port handed out by `free_port`: below the kernel's ephemeral range
/// so that no client socket of a parallel test can be assigned one of them.
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;
static PORT_CURSOR: AtomicU32 = AtomicU32::new(0);

/// A loopback TCP port that was free a moment ago, distinct for each call in this process and
/// spread across processes by pid.
pub fn free_port() -> u16 {
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let seed = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = PORT_CURSOR.fetch_add(1, Ordering::Relaxed);
        let candidate = TEST_PORTS.start + (seed + offset) % span;
        let Ok(port) = u16::try_from(candidate) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

/// Polls until something accepts TCP connections on 127.0.0.1:`port`; false on timeout.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

static SCRATCH_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh world-readable directory under the system temp dir, removed on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "tracer-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        // Workers that drop privileges (nginx) must be able to read what we put here.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        ScratchDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Stops a process (SIGSTOP) until dropped (SIGCONT): an agent starved of CPU, made
/// deterministic.
pub struct Stopped(libc::pid_t);

impl Stopped {
    /// Stops `pid`, a process the test started; panics if the signal cannot be sent.
    pub fn process(pid: u32) -> Stopped {
        let pid = pid as libc::pid_t;
        // SAFETY: plain syscall on the pid of a process this test started.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, a)).expect("port a is free");
        assert!(wait_for_port(a, Duration::from_secs(2)));
        drop(listener);
        assert!(!wait_for_port(b, Duration::from_millis(100)));
    }

    #[test]
    fn child_output_is_captured_and_waited_for() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo one; echo probes attached >&2; exec sleep 30"]);
        let mut child = ChildGuard::spawn("sh", command);
        assert_eq!(
            child
                .stderr()
                .wait_for_line(Duration::from_secs(10), |l| l.contains("attached")),
            LineWait::Found("probes attached".to_owned())
        );
        assert!(child.try_exit().is_none());
        let status = child
            .terminate(Duration::from_secs(5))
            .expect("sh exits on SIGTERM");
        assert!(!status.success());
        assert!(child.stdout().wait_closed(Duration::from_secs(5)));
        assert_eq!(child.stdout().lines(), ["one"]);
        assert!(
            !child.signal(libc::SIGTERM),
            "an exited child is never signalled"
        );
    }

    #[test]
    fn closed_stream_ends_the_wait() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo nothing useful >&2; exit 3"]);
        let (status, child) = run_with_timeout("sh", command, Duration::from_secs(10));
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            child
                .stderr()
                .wait_for_line(Duration::from_secs(10), |l| l.contains("probes")),
            LineWait::Closed
        );
    }
}
