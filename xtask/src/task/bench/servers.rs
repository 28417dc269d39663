//! The servers under load: nginx (one worker, a small static file, an access log) and a Python
//! `ThreadingHTTPServer`, each on its own loopback port in a scratch directory, optionally pinned
//! to one CPU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::process::{Spawned, free_port, wait_for_port};
use super::procfs;

/// How long a server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Size of the static file nginx serves (the size of nginx's own default page).
const STATIC_FILE_BYTES: usize = 612;

/// A running server.
pub struct Server {
    pub name: &'static str,
    pub port: u16,
    /// The path wrk requests.
    path: &'static str,
    /// Every process of the server (nginx: master and workers).
    pids: Vec<u32>,
    access_log: Option<PathBuf>,
    process: Spawned,
}

fn pinned(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.args(["-c", &cpu.to_string()]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

impl Server {
    /// nginx from `xtask/bench/nginx.conf`, serving `/index.html`.
    pub fn nginx(
        nginx: &Path,
        bench_files: &Path,
        dir: &Path,
        cpu: Option<usize>,
    ) -> Result<Server> {
        let port = free_port()?;
        let dir = dir.join("nginx");
        let www = dir.join("www");
        std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
        let mut page =
            b"<!DOCTYPE html>\n<html><head><title>tracer bench</title></head><body>\n".to_vec();
        page.resize(STATIC_FILE_BYTES - 15, b'.');
        page.extend_from_slice(b"</body></html>\n");
        std::fs::write(www.join("index.html"), &page)?;
        let template = std::fs::read_to_string(bench_files.join("nginx.conf"))
            .with_context(|| format!("reading {}", bench_files.join("nginx.conf").display()))?;
        let config = dir.join("nginx.conf");
        let dir_text = dir.to_str().context("scratch directory is not UTF-8")?;
        std::fs::write(
            &config,
            template
                .replace("@DIR@", dir_text)
                .replace("@PORT@", &port.to_string()),
        )?;
        let access_log = dir.join("access.log");
        let mut command = pinned(nginx, cpu);
        command
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"));
        let process = Spawned::start("nginx", command, &dir)?;
        wait_for_port(port, START_TIMEOUT).with_context(|| process.output())?;
        let mut server = Server {
            name: "nginx",
            port,
            path: "/index.html",
            pids: Vec::new(),
            access_log: Some(access_log),
            process,
        };
        server.pids = server.find_pids(true)?;
        Ok(server)
    }

    /// `xtask/bench/python_server.py` on `python`.
    pub fn python(
        python: &Path,
        bench_files: &Path,
        dir: &Path,
        cpu: Option<usize>,
    ) -> Result<Server> {
        let port = free_port()?;
        let dir = dir.join("python");
        std::fs::create_dir_all(&dir)?;
        let mut command = pinned(python, cpu);
        command
            .arg(bench_files.join("python_server.py"))
            .args(["--port", &port.to_string()]);
        let process = Spawned::start("python-server", command, &dir)?;
        wait_for_port(port, START_TIMEOUT).with_context(|| process.output())?;
        let mut server = Server {
            name: "python",
            port,
            path: "/",
            pids: Vec::new(),
            access_log: None,
            process,
        };
        server.pids = server.find_pids(false)?;
        Ok(server)
    }

    /// The server's processes. With `taskset` in front, our child is taskset until it execs,
    /// and it has the same pid afterwards; nginx's workers are that pid's children.
    fn find_pids(&mut self, with_workers: bool) -> Result<Vec<u32>> {
        let main = self.process.pid();
        if !with_workers {
            return Ok(vec![main]);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let workers = procfs::children_of(main);
            if !workers.is_empty() {
                return Ok(std::iter::once(main).chain(workers).collect());
            }
            if Instant::now() >= deadline || !self.process.running() {
                bail!(
                    "{} started no worker process\n{}",
                    self.name,
                    self.process.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.path)
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// The process that handles requests (nginx: the first worker).
    pub fn worker_pid(&self) -> u32 {
        self.pids.get(1).or(self.pids.first()).copied().unwrap_or(0)
    }

    /// Requests logged so far (nginx only).
    pub fn logged_requests(&self) -> Result<Option<u64>> {
        let Some(log) = &self.access_log else {
            return Ok(None);
        };
        let text = match std::fs::read(log) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", log.display())),
        };
        Ok(Some(text.iter().filter(|b| **b == b'\n').count() as u64))
    }

    pub fn stop(mut self) -> Result<()> {
        self.process.stop(Duration::from_secs(10))?;
        Ok(())
    }
}
