//! Processes the bench starts: spawned with their output in files, found ready by a line in that
//! output, stopped by pid (SIGTERM, then SIGKILL) when done or dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::step;

/// How often files and processes are polled.
const POLL: Duration = Duration::from_millis(50);

/// A child process owned by the bench; SIGTERM (then SIGKILL) on drop.
pub struct Spawned {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Spawned {
    /// Starts `command` with stdout and stderr in `<dir>/<name>.out` / `.err`.
    pub fn start(name: &str, mut command: Command, dir: &Path) -> Result<Spawned> {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let out =
            File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        step::announce(&format!("bench: {name}"), &command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: `{}`", step::render(&command)))?;
        Ok(Spawned {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Both outputs, for error messages.
    pub fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            tail(&read(&self.stdout), 4000),
            self.name,
            tail(&read(&self.stderr), 4000)
        )
    }

    /// Waits until stdout or stderr contains `needle`; fails if the process exits or time runs
    /// out first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for path in [&self.stdout, &self.stderr] {
                if std::fs::read_to_string(path).is_ok_and(|text| text.contains(needle)) {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "{} exited ({status}) before printing `{needle}`\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print `{needle}` within {timeout:?}\n{}",
                    self.name,
                    self.output()
                );
            }
            sleep(POLL);
        }
    }

    /// Sends SIGTERM and waits up to `timeout`, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.name);
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        signal(child.id(), "TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            sleep(POLL);
        }
        eprintln!(
            "bench: {} ignored SIGTERM for {timeout:?}; killing it",
            self.name
        );
        child.kill()?;
        Ok(child.wait()?)
    }

    /// Waits up to `timeout` for the process to exit by itself, then SIGTERM as `stop` does.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut() {
                Some(child) => {
                    if let Some(status) = child.try_wait()? {
                        self.child = None;
                        return Ok(status);
                    }
                }
                None => bail!("{} was already stopped", self.name),
            }
            sleep(POLL);
        }
        self.stop(Duration::from_secs(10))
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(Duration::from_secs(10));
        }
    }
}

/// Sends a signal (by name, e.g. `TERM`) to one process by pid.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `max` bytes of `text` (on a character boundary).
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, POLL).is_ok() {
            return Ok(());
        }
        sleep(POLL);
    }
    bail!("nothing listened on 127.0.0.1:{port} within {timeout:?}")
}

/// A free loopback port (bound then released).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
