//! `cargo xtask demo`: a small uninstrumented topology (curl → a Python thread-per-request hub →
//! two Python backends and nginx) traced by the agent, which prints one trace tree per request.
//! Every process is started here, found by port, and stopped by pid at the end.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::step;
use crate::task::build::{self, BuildArgs};
use crate::workspace;

/// Requests sent through the hub, one after another.
const REQUESTS: u32 = 3;
/// Spans each request produces: curl's CLIENT, the hub's SERVER, and per backend the hub's
/// CLIENT and the backend's SERVER.
const SPANS_PER_REQUEST: usize = 8;
/// How long a peer may take to listen.
const PEER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the agent may take to attach its probes.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the demo waits for the trees after the last request.
const TREES_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process may take to exit after a polite signal.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Where demo ports are picked: below the kernel's ephemeral range, so no client socket can
/// hold one.
const DEMO_PORTS: std::ops::Range<u32> = 20_000..32_000;
/// What the agent prints on stderr once its probes are attached.
const READY_LINE: &str = "tracer: probes attached";
/// Exporter variables that would send spans elsewhere instead of printing them.
const OTEL_EXPORT_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
];

pub fn run() -> Result<()> {
    build::run(&BuildArgs { release: false })?;
    let agent_binary = workspace::tracer_binary(false);
    let python = python_interpreter()?;
    let nginx_binary = nginx_binary()?;
    let scratch = ScratchDir::create()?;
    let mut ports = PortPicker::new();

    let users_port = ports.next()?;
    let orders_port = ports.next()?;
    let static_port = ports.next()?;
    let hub_port = ports.next()?;
    let peers_dir = workspace::root().join("tests").join("peers");

    let mut processes = Vec::new();
    processes.push(start_python_backend(
        &python, &peers_dir, "users", users_port,
    )?);
    processes.push(start_python_backend(
        &python,
        &peers_dir,
        "orders",
        orders_port,
    )?);
    processes.push(start_nginx(&nginx_binary, scratch.path(), static_port)?);
    let mut hub = Command::new(&python);
    hub.arg(peers_dir.join("hub.py"))
        .arg("serve")
        .args(["--port", &hub_port.to_string()])
        .args(["--backend", &local_url(users_port, "/ok")])
        .args(["--backend", &local_url(orders_port, "/slow?ms=30")])
        .args(["--backend", &local_url(static_port, "/index.html")])
        .env("OTEL_SERVICE_NAME", "hub");
    processes.push(Managed::spawn("hub", hub, hub_port)?);
    for process in &processes {
        process.wait_listening()?;
    }

    let ports = [hub_port, users_port, orders_port, static_port];
    let mut agent = Agent::start(&agent_binary, &ports)?;
    let outcome = send_requests(hub_port).and_then(|()| agent.wait_for_spans());
    let agent_output = agent.stop();
    for process in processes.iter_mut().rev() {
        process.stop();
    }
    outcome?;
    let output = agent_output?;
    print_header(hub_port, users_port, orders_port, static_port);
    print_trees(&output);
    Ok(())
}

fn local_url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// The real interpreter behind `python3` (not a version-manager shim), so the traced process
/// is Python itself.
fn python_interpreter() -> Result<PathBuf> {
    let mut command = Command::new("python3");
    command.args(["-c", "import sys; print(sys.executable)"]);
    let output = step::capture("demo: python3", command)?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !path.is_file() {
        bail!("step `demo: python3` failed: cannot resolve the python3 interpreter");
    }
    Ok(path)
}

fn nginx_binary() -> Result<PathBuf> {
    workspace::find_on_path("nginx")
        .or_else(|| {
            let fallback = PathBuf::from("/usr/sbin/nginx");
            fallback.is_file().then_some(fallback)
        })
        .context("step `demo: nginx` failed: nginx not found (`cargo xtask setup` installs it)")
}

fn start_python_backend(
    python: &Path,
    peers_dir: &Path,
    service: &str,
    port: u16,
) -> Result<Managed> {
    let mut command = Command::new(python);
    command
        .arg(peers_dir.join("http_server.py"))
        .args(["--port", &port.to_string()])
        .env("OTEL_SERVICE_NAME", service);
    Managed::spawn(service, command, port)
}

/// nginx (master + one worker) serving a static page, everything under `dir`.
fn start_nginx(binary: &Path, dir: &Path, port: u16) -> Result<Managed> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    std::fs::write(
        www.join("index.html"),
        "<html><body>tracer demo</body></html>\n",
    )
    .context("writing the demo's index.html")?;
    let d = dir.display();
    let config = format!(
        "worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/html;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config).context("writing the demo's nginx.conf")?;
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(&config_path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"));
    Managed::spawn("static (nginx)", command, port)
}

fn send_requests(hub_port: u16) -> Result<()> {
    for id in 1..=REQUESTS {
        let url = local_url(hub_port, &format!("/fanout?id={id}"));
        let mut command = Command::new("curl");
        command.args(["-sS", "--noproxy", "*", "--max-time", "30", &url]);
        step::announce("demo: request", &command);
        let output = step::capture("demo: request", command)?;
        if !output.status.success() {
            bail!(
                "step `demo: request` failed: curl {url} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        println!("    {}", String::from_utf8_lossy(&output.stdout).trim());
    }
    Ok(())
}

fn print_header(hub: u16, users: u16, orders: u16, static_port: u16) {
    println!();
    println!("== What the tracer saw ==");
    println!("curl -> hub (Python ThreadingHTTPServer, :{hub}) -> users (Python, :{users}),");
    println!("        orders (Python, :{orders}) and static (nginx, :{static_port}).");
    println!("No program is instrumented and no request carries a trace header. The agent linked");
    println!(
        "each SERVER span to the CLIENT span on the other end of the same-host connection, and"
    );
    println!("each hub CLIENT span to the request its thread was serving: one tree per request.");
    println!(
        "Columns: kind, service, method, target, status, duration, trace and span id prefixes."
    );
}

/// The agent's stdout, with a blank line before each trace's root.
fn print_trees(output: &[String]) {
    for line in output {
        if line.starts_with("SERVER") || line.starts_with("CLIENT") {
            println!();
        }
        println!("{line}");
    }
}

/// Ports that were free a moment ago, each distinct.
struct PortPicker {
    cursor: u32,
}

impl PortPicker {
    fn new() -> Self {
        let span = DEMO_PORTS.end - DEMO_PORTS.start;
        PortPicker {
            cursor: std::process::id().wrapping_mul(7_919).wrapping_add(4_999) % span,
        }
    }

    fn next(&mut self) -> Result<u16> {
        let span = DEMO_PORTS.end - DEMO_PORTS.start;
        for _ in 0..span {
            let candidate = DEMO_PORTS.start + self.cursor % span;
            self.cursor = self.cursor.wrapping_add(1);
            let Ok(port) = u16::try_from(candidate) else {
                continue;
            };
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
        bail!("step `demo: ports` failed: no free loopback port in {DEMO_PORTS:?}")
    }
}

/// A temporary directory removed on drop.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("tracer-demo-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        // nginx workers drop privileges and must read the web root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Sends `signal` (a `kill` name such as `INT`) to our own child `child`.
fn signal(child: &mut Child, signal: &str) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `signal`, then SIGKILL if the child is still there after `STOP_GRACE`.
fn stop_child(child: &mut Child, polite: &str) {
    signal(child, polite);
    if !wait_exit(child, STOP_GRACE) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A peer of the topology listening on `port`; stopped (SIGTERM, then SIGKILL) on drop.
struct Managed {
    name: String,
    child: Child,
    port: u16,
}

impl Managed {
    fn spawn(name: &str, mut command: Command, port: u16) -> Result<Managed> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        step::announce(&format!("demo: {name}"), &command);
        let child = command
            .spawn()
            .with_context(|| format!("step `demo: {name}`: could not start it"))?;
        Ok(Managed {
            name: name.to_owned(),
            child,
            port,
        })
    }

    fn wait_listening(&self) -> Result<()> {
        let deadline = Instant::now() + PEER_START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "step `demo: {}` failed: nothing listens on port {} after {PEER_START_TIMEOUT:?}",
            self.name,
            self.port
        )
    }

    fn stop(&mut self) {
        stop_child(&mut self.child, "TERM");
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lines read from a child's stream by a background thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Copies `stream` line by line; each line is also sent to `notify` when given.
    fn collect(stream: impl Read + Send + 'static, notify: Option<mpsc::Sender<String>>) -> Self {
        let lines = Lines::default();
        let filled = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(notify) = &notify {
                    let _ = notify.send(line.clone());
                }
                filled
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        lines
    }

    fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `tracer agent --format text` filtered to the topology's ports.
struct Agent {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

impl Agent {
    fn start(binary: &Path, ports: &[u16]) -> Result<Agent> {
        let mut command = Command::new(binary);
        command.args(["agent", "--format", "text"]);
        for port in ports {
            command.args(["--port", &port.to_string()]);
        }
        for var in OTEL_EXPORT_VARS {
            command.env_remove(var);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        step::announce("demo: agent", &command);
        let mut child = command
            .spawn()
            .with_context(|| format!("step `demo: agent`: could not start {}", binary.display()))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|out| Lines::collect(out, None))
            .unwrap_or_default();
        let stderr = child
            .stderr
            .take()
            .map(|err| Lines::collect(err, Some(ready_tx)))
            .unwrap_or_default();
        let mut agent = Agent {
            child,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(line) if line.contains(READY_LINE) => return Ok(agent),
                Ok(_) => {}
                Err(_) => {
                    let stderr = agent.stop_and_report();
                    bail!(
                        "step `demo: agent` failed: no {READY_LINE:?} within {AGENT_READY_TIMEOUT:?} \
                         (the agent needs root, BTF and tracefs)\n--- agent stderr ---\n{stderr}"
                    );
                }
            }
        }
    }

    /// Waits until every request's spans are printed (or `TREES_TIMEOUT` passed).
    fn wait_for_spans(&mut self) -> Result<()> {
        let expected = REQUESTS as usize * SPANS_PER_REQUEST;
        step::note(
            "demo: agent",
            &format!("waiting for {expected} spans in the trace trees"),
        );
        let deadline = Instant::now() + TREES_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "step `demo: agent` failed: the agent exited early with {status}\n--- agent stderr ---\n{}",
                    self.stderr.snapshot().join("\n")
                );
            }
            if span_lines(&self.stdout.snapshot()) >= expected {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        // Whatever arrived is still shown: the agent prints held traces when it stops.
        step::note(
            "demo: agent",
            &format!("not every span printed within {TREES_TIMEOUT:?}; stopping the agent"),
        );
        Ok(())
    }

    /// SIGINT (the agent flushes and exits), then its stdout.
    fn stop(&mut self) -> Result<Vec<String>> {
        step::note("demo: agent", "stopping the agent (SIGINT)");
        stop_child(&mut self.child, "INT");
        // The reader threads finish once the pipes close.
        thread::sleep(Duration::from_millis(200));
        match self.child.try_wait() {
            Ok(Some(status)) if status.success() => Ok(self.stdout.snapshot()),
            other => bail!(
                "step `demo: agent` failed: the agent did not exit cleanly ({other:?})\n--- agent stderr ---\n{}",
                self.stderr.snapshot().join("\n")
            ),
        }
    }

    fn stop_and_report(&mut self) -> String {
        stop_child(&mut self.child, "INT");
        self.stderr.snapshot().join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child, "INT");
    }
}

/// Lines of the text output that are spans.
fn span_lines(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| {
            let span = l.trim_start().trim_start_matches("└─ ");
            span.starts_with("SERVER ") || span.starts_with("CLIENT ")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_lines_count_roots_and_children() {
        let lines: Vec<String> = [
            "CLIENT curl GET http://127.0.0.1:1/fanout?id=1 200 3.00 ms trace=ab span=cd",
            "└─ SERVER hub GET /fanout 200 2.00 ms trace=ab span=ef",
            "   └─ CLIENT hub GET http://127.0.0.1:2/ok?id=1 200 1.00 ms trace=ab span=01",
            "some log line",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(span_lines(&lines), 3);
    }

    #[test]
    fn ports_are_distinct_and_free() {
        let mut picker = PortPicker::new();
        let a = picker.next().expect("a port");
        let b = picker.next().expect("another port");
        assert_ne!(a, b);
        assert!(DEMO_PORTS.contains(&u32::from(a)));
    }
}
