//! The uninstrumented programs the tracer watches: the Python server and client in `peers/`,
//! and curl. Each runs as a child of the test and is killed by pid when done.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{ChildGuard, run_with_timeout, wait_for_port};

/// How long a peer may take to start listening: a bound on a wait for state, not a delay.
/// Generous: in an emulated VM on a loaded machine (`cargo xtask test --kernel`) a Python peer
/// has taken more than 20 s to import and listen.
pub const PEER_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one client run (curl or client.py) may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The real Python interpreter (not a version-manager shim), so the traced process is Python
/// itself. Resolved once from `python3` on PATH.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let mut command = Command::new("python3");
        command.args(["-c", "import sys; print(sys.executable)"]);
        let (status, child) = run_with_timeout("python3", command, Duration::from_secs(30));
        let path = child
            .stdout()
            .lines()
            .first()
            .map(|l| PathBuf::from(l.trim()))
            .unwrap_or_default();
        if !status.success() || !path.is_file() {
            panic!(
                "cannot resolve the python3 interpreter ({status})\n{}",
                child.output_report()
            );
        }
        path
    })
}

/// A script in `tests/peers/`.
pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

/// `http://127.0.0.1:PORT/PATH`.
pub fn local_url(port: u16, path_and_query: &str) -> String {
    format!("http://127.0.0.1:{port}{path_and_query}")
}

/// `peers/http_server.py` listening on 127.0.0.1:`port`.
pub struct PythonServer {
    child: ChildGuard,
    port: u16,
}

impl PythonServer {
    /// Starts the server with `OTEL_SERVICE_NAME=service_name` in its environment and waits
    /// until it accepts connections.
    pub fn start(port: u16, service_name: &str) -> PythonServer {
        let mut command = Command::new(python());
        command
            .arg("-u")
            .arg(peer_script("http_server.py"))
            .args(["--port", &port.to_string()])
            .env("OTEL_SERVICE_NAME", service_name);
        let child = ChildGuard::spawn("http_server.py", command);
        if !wait_for_port(port, PEER_START_TIMEOUT) {
            panic!(
                "http_server.py did not listen on {port} within {PEER_START_TIMEOUT:?}\n{}",
                child.output_report()
            );
        }
        PythonServer { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path_and_query: &str) -> String {
        local_url(self.port, path_and_query)
    }

    pub fn output_report(&self) -> String {
        self.child.output_report()
    }
}

/// One curl run.
#[derive(Clone, Debug)]
pub struct CurlRun {
    /// The final HTTP status curl reported.
    pub status: u16,
    pub pid: u32,
}

/// Runs `curl -sS -o /dev/null -w '%{http_code}' ARGS` (no proxy, bounded time); panics unless
/// curl exits 0.
pub fn curl(args: &[&str]) -> CurlRun {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args);
    let (status, child) = run_with_timeout("curl", command, CLIENT_TIMEOUT);
    let code = child.stdout().text().trim().parse().unwrap_or(0);
    if !status.success() || code == 0 {
        panic!("curl {args:?} failed ({status})\n{}", child.output_report());
    }
    CurlRun {
        status: code,
        pid: child.pid(),
    }
}

/// How `client.py` sends its requests on its one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMode {
    /// Each request after the previous response.
    KeepAlive,
    /// All requests written before any response is read.
    Pipeline,
}

/// One response as `client.py` saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    pub status: u16,
    pub body_len: u64,
    /// Interim (1xx) responses before the final one.
    pub interim: u32,
}

/// What `client.py` reports.
#[derive(Clone, Debug)]
pub struct ClientRun {
    pub pid: u32,
    /// The client's side of its single connection.
    pub local_port: u16,
    pub responses: Vec<ClientResponse>,
}

/// Runs `peers/client.py` against 127.0.0.1:`port`. `requests` are `METHOD:PATH` or
/// `METHOD:PATH:BODY:N` (see the script); `headers` are extra `Name: value` lines.
pub fn run_client(port: u16, mode: ClientMode, requests: &[&str], headers: &[&str]) -> ClientRun {
    let mut command = Command::new(python());
    command
        .arg(peer_script("client.py"))
        .args(["--port", &port.to_string()])
        .args([
            "--mode",
            match mode {
                ClientMode::KeepAlive => "keepalive",
                ClientMode::Pipeline => "pipeline",
            },
        ]);
    for header in headers {
        command.args(["--header", header]);
    }
    command.args(requests);
    let (status, child) = run_with_timeout("client.py", command, CLIENT_TIMEOUT);
    let report = child
        .stdout()
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.starts_with('{'));
    let parsed = report
        .as_deref()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    match (
        status.success(),
        parsed.and_then(|v| client_run_from_json(&v)),
    ) {
        (true, Some(run)) => run,
        _ => panic!(
            "client.py {requests:?} failed ({status})\n{}",
            child.output_report()
        ),
    }
}

fn client_run_from_json(value: &serde_json::Value) -> Option<ClientRun> {
    let responses = value
        .get("responses")?
        .as_array()?
        .iter()
        .map(|r| {
            Some(ClientResponse {
                status: u16::try_from(r.get("status")?.as_u64()?).ok()?,
                body_len: r.get("body_len")?.as_u64()?,
                interim: u32::try_from(r.get("interim")?.as_u64()?).ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ClientRun {
        pid: u32::try_from(value.get("pid")?.as_u64()?).ok()?,
        local_port: u16::try_from(value.get("local_port")?.as_u64()?).ok()?,
        responses,
    })
}

/// A self-signed certificate and key for localhost / 127.0.0.1 in `dir` (an EC key, made by the
/// openssl CLI, which `cargo xtask setup` installs).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut command = Command::new("openssl");
    command
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    let (status, child) = run_with_timeout("openssl req", command, PEER_START_TIMEOUT);
    assert!(
        status.success(),
        "generating a test certificate with the openssl CLI failed (is `openssl` installed? \
         `cargo xtask setup` installs it)\n{}",
        child.output_report()
    );
    (cert, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::free_port;

    #[test]
    fn python_peers_talk_keep_alive_and_pipelined() {
        let port = free_port();
        let server = PythonServer::start(port, "peer-self-test");
        let run = run_client(
            port,
            ClientMode::KeepAlive,
            &[
                "GET:/ok",
                "HEAD:/ok",
                "POST:/echo:chunked:1000",
                "POST:/echo:expect:300",
                "GET:/status/503",
            ],
            &["X-Test: 1"],
        );
        let statuses: Vec<u16> = run.responses.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [200, 200, 200, 200, 503],
            "{}",
            server.output_report()
        );
        assert_eq!(run.responses[1].body_len, 0, "HEAD has no body");
        assert_eq!(
            run.responses[2].body_len, 1000,
            "chunked request body echoed"
        );
        assert_eq!(run.responses[3].interim, 1, "one 100 Continue");
        let piped = run_client(
            port,
            ClientMode::Pipeline,
            &[
                "GET:/ok?i=0",
                "GET:/chunked?parts=2&ms=10",
                "GET:/bytes?n=5000",
            ],
            &[],
        );
        let lens: Vec<u64> = piped.responses.iter().map(|r| r.body_len).collect();
        assert_eq!(lens, [3, 14, 5000]);
        assert_eq!(curl(&[&server.url("/status/404")]).status, 404);
    }
}
