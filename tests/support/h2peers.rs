//! The HTTP/2 and gRPC peers: `peers/grpc_peer.py` (a real grpcio server and client, generic
//! handlers, bytes in and out) and `peers/h2_peer.js` (Node's built-in http2 server and client,
//! cleartext with prior knowledge), plus curl with `--http2-prior-knowledge`. Servers listen on an
//! ephemeral port and print it when ready; the tests wait on that line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::peers::{CLIENT_TIMEOUT, CurlRun, PEER_START_TIMEOUT, curl, peer_script, python};
use crate::process::{ChildGuard, LineWait, run_with_timeout};

/// The line prefix both servers print once they accept connections.
const LISTENING: &str = "listening ";

/// Starts `command` and waits for its `listening PORT` line; panics with its output otherwise.
fn start_listening(name: &str, command: Command) -> (ChildGuard, u16) {
    let child = ChildGuard::spawn(name, command);
    let line = match child
        .stdout()
        .wait_for_line(PEER_START_TIMEOUT, |l| l.starts_with(LISTENING))
    {
        LineWait::Found(line) => line,
        LineWait::Closed | LineWait::TimedOut => panic!(
            "{name} did not print `{LISTENING}PORT` within {PEER_START_TIMEOUT:?} (`cargo xtask \
             setup` installs grpcio and node)\n{}",
            child.output_report()
        ),
    };
    let port = line
        .strip_prefix(LISTENING)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name}: bad ready line {line:?}"));
    (child, port)
}

/// `peers/grpc_peer.py serve`: service `helloworld.Greeter` on 127.0.0.1 (see the script).
pub struct GrpcServer {
    child: ChildGuard,
    port: u16,
}

impl GrpcServer {
    /// Starts the server with `OTEL_SERVICE_NAME=service_name` and waits until it is ready.
    pub fn start(service_name: &str) -> GrpcServer {
        let mut command = Command::new(python());
        command
            .arg("-u")
            .arg(peer_script("grpc_peer.py"))
            .args(["serve", "--port", "0"])
            .env("OTEL_SERVICE_NAME", service_name);
        let (child, port) = start_listening("grpc_peer.py serve", command);
        GrpcServer { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn output_report(&self) -> String {
        self.child.output_report()
    }
}

/// One call as `grpc_peer.py client` reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCallResult {
    /// The call spec as given (`unary:SayHello:world`).
    pub call: String,
    /// The method (or the prefix of a `concurrent:` call).
    pub method: String,
    /// The status code name the client saw (`OK`, `NOT_FOUND`, `DEADLINE_EXCEEDED`, ...).
    pub code: String,
    pub replies: u64,
    pub bytes: u64,
}

/// What one `grpc_peer.py client` run reported.
#[derive(Clone, Debug)]
pub struct GrpcRun {
    pub pid: u32,
    pub calls: Vec<GrpcCallResult>,
}

impl GrpcRun {
    /// The result of the call given as `spec`; panics when it is missing.
    pub fn call(&self, spec: &str) -> &GrpcCallResult {
        self.calls
            .iter()
            .find(|c| c.call == spec)
            .unwrap_or_else(|| panic!("no result for {spec:?} in {:?}", self.calls))
    }
}

fn grpc_client_command(port: u16, calls: &[&str], service_name: &str) -> Command {
    let mut command = Command::new(python());
    command
        .arg("-u")
        .arg(peer_script("grpc_peer.py"))
        .args(["client", "--port", &port.to_string()])
        .args(calls)
        .env("OTEL_SERVICE_NAME", service_name);
    command
}

fn grpc_run_from_lines(lines: &[String]) -> Option<GrpcRun> {
    let values: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let done = values.iter().find(|v| v.get("done").is_some())?;
    let pid = u32::try_from(done.get("pid")?.as_u64()?).ok()?;
    let calls = values
        .iter()
        .filter(|v| v.get("call").is_some())
        .map(|v| {
            Some(GrpcCallResult {
                call: v.get("call")?.as_str()?.to_owned(),
                method: v.get("method")?.as_str()?.to_owned(),
                code: v.get("code")?.as_str()?.to_owned(),
                replies: v.get("replies")?.as_u64()?,
                bytes: v.get("bytes")?.as_u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(GrpcRun { pid, calls })
}

/// Runs `grpc_peer.py client` with `calls` on one channel to 127.0.0.1:`port`; panics unless it
/// ran every call (whatever status each call got).
pub fn grpc_client(port: u16, calls: &[&str], service_name: &str) -> GrpcRun {
    let command = grpc_client_command(port, calls, service_name);
    let (status, child) = run_with_timeout("grpc_peer.py client", command, CLIENT_TIMEOUT);
    match grpc_run_from_lines(&child.stdout().lines()) {
        Some(run) if status.success() => run,
        _ => panic!(
            "grpc_peer.py client {calls:?} failed ({status})\n{}",
            child.output_report()
        ),
    }
}

/// A `grpc_peer.py client` still running: for calls with a `pause` in them (the client waits
/// for SIGUSR1 there, its channel open).
pub struct GrpcClientChild {
    child: ChildGuard,
    calls: Vec<String>,
}

impl GrpcClientChild {
    pub fn spawn(port: u16, calls: &[&str], service_name: &str) -> GrpcClientChild {
        let command = grpc_client_command(port, calls, service_name);
        GrpcClientChild {
            child: ChildGuard::spawn("grpc_peer.py client", command),
            calls: calls.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits until the client reached its next `pause`; panics otherwise.
    pub fn wait_paused(&self) {
        match self
            .child
            .stdout()
            .wait_for_line(CLIENT_TIMEOUT, |l| l.contains("\"paused\""))
        {
            LineWait::Found(_) => {}
            _ => panic!(
                "grpc_peer.py client {:?} did not reach its pause\n{}",
                self.calls,
                self.child.output_report()
            ),
        }
    }

    /// Lets the paused client go on (SIGUSR1).
    pub fn resume(&mut self) {
        assert!(
            self.child.signal(libc::SIGUSR1),
            "grpc_peer.py client exited before it was resumed\n{}",
            self.child.output_report()
        );
    }

    /// Waits for the client to finish and returns what it reported.
    pub fn finish(mut self) -> GrpcRun {
        let status = self.child.wait_timeout(CLIENT_TIMEOUT);
        self.child.stdout().wait_closed(Duration::from_secs(5));
        match (status, grpc_run_from_lines(&self.child.stdout().lines())) {
            (Some(s), Some(run)) if s.success() => run,
            _ => panic!(
                "grpc_peer.py client {:?} failed ({status:?})\n{}",
                self.calls,
                self.child.output_report()
            ),
        }
    }
}

/// `node` on PATH (Node.js 20 here; `cargo xtask setup` installs nodejs where it is missing).
pub fn node() -> &'static Path {
    static NODE: OnceLock<PathBuf> = OnceLock::new();
    NODE.get_or_init(|| {
        std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("node"))
                    .find(|candidate| candidate.is_file())
            })
            .unwrap_or_else(|| {
                panic!("node not found on PATH (`cargo xtask setup` installs nodejs)")
            })
    })
}

/// `peers/h2_peer.js serve`: Node's http2 server (h2c).
pub struct NodeH2Server {
    child: ChildGuard,
    port: u16,
}

impl NodeH2Server {
    pub fn start(service_name: &str) -> NodeH2Server {
        let mut command = Command::new(node());
        command
            .arg(peer_script("h2_peer.js"))
            .args(["serve", "--port", "0"])
            .env("OTEL_SERVICE_NAME", service_name);
        let (child, port) = start_listening("h2_peer.js serve", command);
        NodeH2Server { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn output_report(&self) -> String {
        self.child.output_report()
    }
}

/// One response as `h2_peer.js client` saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Response {
    pub path: String,
    pub status: u16,
    pub body_len: u64,
}

/// What one `h2_peer.js client` run reported.
#[derive(Clone, Debug)]
pub struct NodeH2Run {
    pub pid: u32,
    /// The client's side of its one connection.
    pub local_port: u16,
    pub responses: Vec<H2Response>,
}

/// Runs `h2_peer.js client` against 127.0.0.1:`port`: `requests` (`GET:/path`, `POST:/path:N`)
/// on one HTTP/2 connection, one after the other or all at once (`concurrent`).
pub fn node_h2_client(port: u16, concurrent: bool, requests: &[&str]) -> NodeH2Run {
    let mut command = Command::new(node());
    command
        .arg(peer_script("h2_peer.js"))
        .args(["client", "--port", &port.to_string()]);
    if concurrent {
        command.arg("--concurrent");
    }
    command.args(requests);
    let (status, child) = run_with_timeout("h2_peer.js client", command, CLIENT_TIMEOUT);
    let parsed = child
        .stdout()
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .and_then(|v| node_run_from_json(&v));
    match parsed {
        Some(run) if status.success() => run,
        _ => panic!(
            "h2_peer.js client {requests:?} failed ({status})\n{}",
            child.output_report()
        ),
    }
}

fn node_run_from_json(value: &serde_json::Value) -> Option<NodeH2Run> {
    let responses = value
        .get("responses")?
        .as_array()?
        .iter()
        .map(|r| {
            Some(H2Response {
                path: r.get("path")?.as_str()?.to_owned(),
                status: u16::try_from(r.get("status")?.as_u64()?).ok()?,
                body_len: r.get("body_len")?.as_u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(NodeH2Run {
        pid: u32::try_from(value.get("pid")?.as_u64()?).ok()?,
        local_port: u16::try_from(value.get("local_port")?.as_u64()?).ok()?,
        responses,
    })
}

/// `curl --http2-prior-knowledge URL` (h2c without an upgrade). One URL per run: curl 7.88
/// fails a second request on a reused prior-knowledge connection ("Error in the HTTP2 framing
/// layer").
pub fn curl_h2(url: &str) -> CurlRun {
    curl(&["--http2-prior-knowledge", url])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::local_url;

    #[test]
    fn grpc_peers_answer_every_kind_of_call() {
        let server = GrpcServer::start("grpc-peer-self-test");
        let run = grpc_client(
            server.port(),
            &[
                "unary:SayHello:world",
                "unary:SayHello:missing",
                "stream:SayHelloStream:bob",
                "chat:Chat:4",
                "deadline:Slow:100",
                "cancel:Slow",
                "unary:Large:x",
                "concurrent:SayHello:20",
            ],
            "grpc-peer-self-test-client",
        );
        let codes: Vec<&str> = run.calls.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "OK",
                "NOT_FOUND",
                "OK",
                "OK",
                "DEADLINE_EXCEEDED",
                "CANCELLED",
                "OK",
                "OK"
            ],
            "{run:?}\n{}",
            server.output_report()
        );
        assert_eq!(run.call("stream:SayHelloStream:bob").replies, 3);
        assert_eq!(run.call("chat:Chat:4").replies, 4);
        assert_eq!(run.call("unary:Large:x").bytes, 100 * 1024);
    }

    #[test]
    fn grpc_client_pauses_until_resumed() {
        let server = GrpcServer::start("grpc-peer-pause-test");
        let mut client = GrpcClientChild::spawn(
            server.port(),
            &["unary:SayHello:a", "pause", "unary:SayHello:b"],
            "grpc-peer-pause-client",
        );
        client.wait_paused();
        client.resume();
        let run = client.finish();
        assert_eq!(run.calls.len(), 2, "{run:?}");
        assert!(run.calls.iter().all(|c| c.code == "OK"), "{run:?}");
    }

    #[test]
    fn node_h2_peers_and_curl_talk_h2c() {
        let server = NodeH2Server::start("node-h2-self-test");
        let run = node_h2_client(
            server.port(),
            false,
            &["GET:/hello?i=1", "GET:/status/503", "POST:/echo:3000"],
        );
        let statuses: Vec<u16> = run.responses.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 503, 200], "{}", server.output_report());
        assert_eq!(run.responses[2].body_len, 3000);
        assert_eq!(curl_h2(&local_url(server.port(), "/hello")).status, 200);
        assert_eq!(curl_h2(&local_url(server.port(), "/missing")).status, 404);
    }

    #[test]
    fn nginx_speaks_h2c_with_prior_knowledge() {
        let port = crate::process::free_port();
        let nginx = crate::Nginx::start_h2c(port);
        assert_eq!(
            curl_h2(&local_url(port, "/index.html")).status,
            200,
            "{}",
            nginx.output_report()
        );
        assert_eq!(curl_h2(&local_url(port, "/missing")).status, 404);
    }
}
