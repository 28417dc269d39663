//! The peer baseline: the same capture done naively with bpftrace (`xtask/bench/capture.bt`
//! prints the bytes of every read and write of the server's worker), to show what a hand-rolled
//! alternative costs. Its output goes to a file; its lost-event reports are counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::process::Spawned;
use super::procfs::{self, ProcSample};

/// Longest byte string bpftrace prints per event (its maximum in the Debian package's version).
const STRLEN: &str = "200";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RunningBpftrace {
    process: Spawned,
}

/// A GET on a fresh connection, answer read and ignored (probes the capture is live).
fn poke(port: u16, path: &str) {
    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_ok() {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
    }
}

impl RunningBpftrace {
    /// Starts the capture of `pid` and waits until it prints the bytes of a request sent to
    /// `port` (bpftrace says "Attaching" before its probes are live).
    pub fn start(
        bpftrace: &Path,
        script: &Path,
        pid: u32,
        port: u16,
        path: &str,
        dir: &Path,
        name: &str,
    ) -> Result<RunningBpftrace> {
        let mut command = Command::new(bpftrace);
        command
            .env("BPFTRACE_STRLEN", STRLEN)
            .arg(script)
            .arg(pid.to_string());
        let mut process = Spawned::start(name, command, dir)?;
        process.wait_for_output("Attaching", READY_TIMEOUT)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let output: PathBuf = process.stdout_path().to_path_buf();
        loop {
            poke(port, path);
            let text = std::fs::read_to_string(&output).unwrap_or_default();
            if text.contains(" in ") {
                return Ok(RunningBpftrace { process });
            }
            if Instant::now() >= deadline || !process.running() {
                bail!(
                    "bpftrace captured nothing from pid {pid} within {READY_TIMEOUT:?}\n{}",
                    process.output()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn sample(&self, ticks_per_second: f64) -> Result<ProcSample> {
        procfs::sample(self.process.pid(), ticks_per_second)
    }

    /// Stops bpftrace; returns the events it reported lost and the bytes it printed (the
    /// printed capture is deleted: it is large and only its size matters here).
    pub fn stop(mut self) -> Result<(u64, u64)> {
        self.process.stop(Duration::from_secs(20))?;
        let mut lost = 0;
        for path in [self.process.stderr_path(), self.process.stdout_path()] {
            if let Ok(file) = std::fs::File::open(path) {
                lost += lost_events(BufReader::new(file));
            }
        }
        let printed = std::fs::metadata(self.process.stdout_path()).map_or(0, |m| m.len());
        let _ = std::fs::remove_file(self.process.stdout_path());
        Ok((lost, printed))
    }
}

/// Sum of bpftrace's `Lost N events` reports, streamed (the capture can be large).
pub fn lost_events(reader: impl BufRead) -> u64 {
    reader
        .split(b'\n')
        .map_while(Result::ok)
        .filter_map(|line| {
            let line = String::from_utf8_lossy(&line);
            let rest = line.trim().strip_prefix("Lost ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_event_reports_are_summed() {
        let text = "Attaching 7 probes...\nLost 120 events\n123 456 in 79: GET / HTTP/1.1\nLost 3 events\n";
        assert_eq!(lost_events(text.as_bytes()), 123);
        assert_eq!(lost_events("nothing lost\n".as_bytes()), 0);
    }
}
