//! HTTPS between Go programs, traced through the Go crypto/tls uprobes: a real Go net/http TLS
//! server (self-signed certificate generated at start) and a Go TLS client, 50 requests over 8
//! keep-alive connections, over HTTP/1.1 (`GODEBUG=http2client=0,http2server=0`) and over HTTP/2
//! (negotiated by ALPN, Go's default), and `curl -k` (OpenSSL) against the Go server. Exact SERVER and
//! CLIENT span counts, the right path and status, and every SERVER span the child of its
//! CLIENT span (same-host connection pairing across TLS), scheme https. Loopback only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tracer_tests::go_peer::build_go_peer;
use tracer_tests::metrics_client::sample;
use tracer_tests::peers::PEER_START_TIMEOUT;
use tracer_tests::query::describe;
use tracer_tests::{
    Agent, AgentConfig, ChildGuard, ObservedKind, ObservedSpan, ScratchDir, curl, free_port,
    run_with_timeout, wait_for_port,
};

/// Requests per run, and how many at a time (= connections at most, keep-alive).
const REQUESTS: usize = 50;
const CONNECTIONS: usize = 8;
const HTTP1_ONLY: &str = "http2client=0,http2server=0";

/// The Go peer, built once per test run into the target directory.
fn gotls() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_peer("gotls", &[]))
}

/// The Go peer built without its symbol table (`-ldflags=-s -w`).
fn gotls_stripped() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_peer("gotls-stripped", &["-ldflags=-s -w"]))
}

/// The Go peer without cgo (pure-Go resolver and user lookup): statically linked, so starting it
/// maps no library (no ld.so) and only its exec tells the kernel a new program runs.
fn gotls_static() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_peer("gotls-static", &["-tags=netgo,osusergo"]))
}

fn build_peer(name: &str, flags: &[&str]) -> PathBuf {
    build_go_peer(Path::new(env!("CARGO_TARGET_TMPDIR")), "gotls", name, flags)
}

fn start_server(port: u16, godebug: Option<&str>) -> ChildGuard {
    start_server_of(gotls(), port, godebug)
}

fn start_server_of(binary: &Path, port: u16, godebug: Option<&str>) -> ChildGuard {
    let mut command = Command::new(binary);
    command.args(["serve", "--port", &port.to_string()]);
    if let Some(godebug) = godebug {
        command.env("GODEBUG", godebug);
    }
    let server = ChildGuard::spawn("gotls serve", command);
    assert!(
        wait_for_port(port, PEER_START_TIMEOUT),
        "the Go TLS server did not listen on {port}\n{}",
        server.output_report()
    );
    server
}

fn start_agent(port: u16) -> Agent {
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .arg("--tls")
        .json()
        .start();
    wait_attached(&mut agent);
    agent
}

/// The peer's binary is found by the agent's /proc rescan (whether its process started before
/// or after the agent): waits for the agent's log of its uprobes (other Go programs on the host
/// are attached too, so the attached-binaries gauge alone does not say it is ours).
fn wait_attached(agent: &mut Agent) {
    wait_attached_to(agent, gotls());
}

fn wait_attached_to(agent: &mut Agent, binary: &Path) {
    let exe = binary.display().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        agent.assert_running();
        let log = agent.stderr_text();
        if log
            .lines()
            .any(|l| l.contains("Go crypto/tls uprobes attached") && l.contains(&exe))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not attach its Go crypto/tls uprobes to {exe} within 30 s\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the Go TLS client; returns the protocol it negotiated.
fn drive(port: u16, godebug: Option<&str>) -> String {
    let mut command = Command::new(gotls());
    command
        .args(["drive", "--port", &port.to_string()])
        .args(["--requests", &REQUESTS.to_string()])
        .args(["--conns", &CONNECTIONS.to_string()]);
    if let Some(godebug) = godebug {
        command.env("GODEBUG", godebug);
    }
    let (status, driver) = run_with_timeout("gotls drive", command, Duration::from_secs(120));
    assert!(
        status.success(),
        "the Go TLS client failed ({status})\n{}",
        driver.output_report()
    );
    let out = driver.stdout().text();
    let report: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("the Go TLS client printed {out:?}: {e}"));
    report["proto"].as_str().unwrap_or_default().to_owned()
}

/// The `id` query parameter: from `url.query` on SERVER spans, from `url.full` on CLIENT spans.
fn request_id(span: &ObservedSpan) -> Option<usize> {
    let query = match span.kind {
        ObservedKind::Server => span.attr_str("url.query")?,
        _ => span.attr_str("url.full")?.split_once('?')?.1,
    };
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("id="))
        .and_then(|id| id.parse().ok())
}

/// Stops the agent after it has caught up, and returns the spans on `port`.
fn spans_on(mut agent: Agent, port: u16) -> (Vec<ObservedSpan>, String) {
    let want = (2 * REQUESTS) as f64;
    agent.wait_metrics("every span built", |page| {
        sample(page, "tracer_spans_built_total", "").is_some_and(|n| n >= want)
    });
    agent.wait_settled();
    let exit = agent.stop();
    exit.assert_success();
    let spans = exit
        .json_spans()
        .into_iter()
        .filter(|s| s.attr_int("server.port") == Some(i64::from(port)))
        .collect();
    (spans, exit.stderr)
}

/// Exactly one SERVER and one CLIENT span per request id, the right path, status and
/// protocol, and the SERVER span the child of its CLIENT span.
fn assert_exchanges(spans: &[ObservedSpan], protocol: &str, stderr: &str) {
    let mut by_id: BTreeMap<usize, Vec<&ObservedSpan>> = BTreeMap::new();
    for span in spans {
        by_id
            .entry(request_id(span).unwrap_or(usize::MAX))
            .or_default()
            .push(span);
    }
    let mut problems = Vec::new();
    let servers = spans
        .iter()
        .filter(|s| s.kind == ObservedKind::Server)
        .count();
    let clients = spans
        .iter()
        .filter(|s| s.kind == ObservedKind::Client)
        .count();
    if servers != REQUESTS || clients != REQUESTS {
        problems.push(format!(
            "{servers} SERVER and {clients} CLIENT spans, want {REQUESTS} of each"
        ));
    }
    for id in 0..REQUESTS {
        let of = by_id.get(&id).map_or(&[][..], Vec::as_slice);
        let server: Vec<_> = of
            .iter()
            .filter(|s| s.kind == ObservedKind::Server)
            .collect();
        let client: Vec<_> = of
            .iter()
            .filter(|s| s.kind == ObservedKind::Client)
            .collect();
        let ([server], [client]) = (server.as_slice(), client.as_slice()) else {
            problems.push(format!(
                "request {id}: {} SERVER and {} CLIENT spans",
                server.len(),
                client.len()
            ));
            continue;
        };
        for span in [server, client] {
            if span.attr_int("http.response.status_code") != Some(200)
                || span.attr_str("network.protocol.version") != Some(protocol)
            {
                problems.push(format!("request {id}: {}", span.summary()));
            }
        }
        if server.attr_str("url.path") != Some("/item")
            || server.attr_str("url.scheme") != Some("https")
            || !client
                .attr_str("url.full")
                .is_some_and(|u| u.starts_with("https://"))
        {
            problems.push(format!(
                "request {id}: path or scheme of\n  {}\n  {}",
                server.summary(),
                client.summary()
            ));
        }
        if server.parent_span_id.as_deref() != Some(client.span_id.as_str())
            || server.trace_id != client.trace_id
        {
            problems.push(format!(
                "request {id}: the SERVER span is not the child of its CLIENT span\n  {}\n  {}",
                server.summary(),
                client.summary()
            ));
        }
    }
    if let Some(stray) = by_id.get(&usize::MAX) {
        problems.push(format!(
            "spans without a request id:\n{}",
            describe(stray.iter().copied())
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\nall spans:\n{}\n--- agent stderr ---\n{stderr}",
        problems.join("\n"),
        describe(spans)
    );
}

/// HTTP/1.1 over TLS, the server started before the agent (found by the first /proc scan).
#[test]
fn go_https_http1_keep_alive_under_concurrency_is_traced_exactly() {
    let port = free_port();
    let server = start_server(port, Some(HTTP1_ONLY));
    let agent = start_agent(port);
    let protocol = drive(port, Some(HTTP1_ONLY));
    assert_eq!(
        protocol, "HTTP/1.1",
        "GODEBUG should keep the client on HTTP/1.1"
    );
    let (spans, stderr) = spans_on(agent, port);
    assert_exchanges(&spans, "1.1", &stderr);
    drop(server);
}

/// HTTP/2 negotiated by ALPN (Go's default), the server started after the agent (found by a
/// later rescan).
#[test]
fn go_https_http2_by_alpn_is_traced_exactly() {
    let port = free_port();
    let agent = AgentConfig::new()
        .ports(&[port])
        .arg("--tls")
        .json()
        .start();
    let server = start_server(port, None);
    let mut agent = agent;
    wait_attached(&mut agent);
    let protocol = drive(port, None);
    assert_eq!(
        protocol, "HTTP/2.0",
        "Go's client and server negotiate h2 by ALPN"
    );
    let (spans, stderr) = spans_on(agent, port);
    assert_exchanges(&spans, "2", &stderr);
    drop(server);
}

/// curl -k against the Go TLS server, over HTTP/2 (ALPN) and HTTP/1.1: the server's side is
/// traced by its Go uprobes (path, status, protocol), curl's by the OpenSSL uprobes, and each
/// SERVER span is the child of its curl CLIENT span.
#[test]
fn curl_against_the_go_https_server_is_a_client_server_pair() {
    let port = free_port();
    let server = start_server(port, None);
    let mut agent = start_agent(port);
    let requests = [
        (vec!["--http1.1"], "/item?id=1", 200, "1.1"),
        (vec!["--http1.1"], "/missing", 404, "1.1"),
        (vec!["--http2"], "/item?id=2", 200, "2"),
        (vec!["--http2"], "/missing", 404, "2"),
    ];
    for (flags, path, status, _) in &requests {
        let url = format!("https://127.0.0.1:{port}{path}");
        let mut args: Vec<&str> = flags.clone();
        args.extend(["-k", url.as_str()]);
        assert_eq!(curl(&args).status, *status, "curl {args:?}");
    }
    agent.wait_metrics("every span built", |page| {
        sample(page, "tracer_spans_built_total", "")
            .is_some_and(|n| n >= 2.0 * requests.len() as f64)
    });
    agent.wait_settled();
    let exit = agent.stop();
    exit.assert_success();
    let spans: Vec<ObservedSpan> = exit
        .json_spans()
        .into_iter()
        .filter(|s| s.attr_int("server.port") == Some(i64::from(port)))
        .collect();
    let servers: Vec<&ObservedSpan> = spans
        .iter()
        .filter(|s| s.kind == ObservedKind::Server)
        .collect();
    // curl's side goes through OpenSSL's uprobes: each SERVER span is the child of curl's
    // CLIENT span of the same request (connection pairing across two TLS stacks).
    let clients: Vec<&ObservedSpan> = spans
        .iter()
        .filter(|s| s.kind == ObservedKind::Client)
        .collect();
    let unpaired: Vec<&&ObservedSpan> = servers
        .iter()
        .filter(|server| {
            !clients.iter().any(|c| {
                server.parent_span_id.as_deref() == Some(c.span_id.as_str())
                    && c.attr_str("url.full").is_some_and(|u| {
                        u.starts_with("https://")
                            && server.attr_str("url.path").is_some_and(|p| u.contains(p))
                    })
            })
        })
        .collect();
    assert!(
        clients.len() == requests.len() && unpaired.is_empty(),
        "want {} curl CLIENT spans, each the parent of its SERVER span; got:\n{}\n--- agent stderr ---\n{}",
        requests.len(),
        describe(&spans),
        exit.stderr
    );
    let seen: BTreeSet<(String, i64, String)> = servers
        .iter()
        .filter(|s| s.attr_str("url.scheme") == Some("https"))
        .map(|s| {
            (
                s.attr_str("url.path").unwrap_or_default().to_owned(),
                s.attr_int("http.response.status_code").unwrap_or(0),
                s.attr_str("network.protocol.version")
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, i64, String)> = requests
        .iter()
        .map(|(_, path, status, proto)| {
            (
                path.split('?').next().unwrap_or_default().to_owned(),
                i64::from(*status),
                (*proto).to_owned(),
            )
        })
        .collect();
    assert!(
        servers.len() == requests.len() && seen == want,
        "want one SERVER span per curl request {want:?}, got:\n{}\n--- agent stderr ---\n{}",
        describe(servers.iter().copied()),
        exit.stderr
    );
    drop(server);
}

/// `--pid` is respected: a Go TLS server outside the traced processes gets no uprobes; the
/// traced one, built without symbols, is skipped and counted (`no_symbols`), never attached.
#[test]
fn only_traced_go_binaries_are_attached_and_stripped_ones_are_counted() {
    let untraced = start_server_of(gotls(), free_port(), None);
    let traced = start_server_of(gotls_stripped(), free_port(), None);
    let mut agent = AgentConfig::new()
        .pid(traced.pid())
        .arg("--tls")
        .json()
        .start();
    // Every process present is looked at by the first scan (then exec'd ones, and all every
    // 30 s): after three, both servers were.
    let page = agent.wait_metrics("three scans of /proc for Go executables", |page| {
        sample(page, "tracer_go_tls_scans_total", "").is_some_and(|n| n >= 3.0)
    });
    let skipped = sample(
        &page,
        "tracer_go_tls_binaries_skipped_total",
        "reason=\"no_symbols\"",
    );
    let attached = sample(&page, "tracer_go_tls_binaries_attached", "");
    let exit = agent.stop();
    exit.assert_success();
    assert_eq!(
        (skipped, attached),
        (Some(1.0), Some(0.0)),
        "want the stripped traced server counted and nothing attached\n{page}\n--- agent stderr ---\n{}",
        exit.stderr
    );
    drop((untraced, traced));
}

/// A running process that execs the Go server (a shell wrapper's `exec`, as container
/// entrypoints do: same pid, another program) is attached from the kernel's note of the exec,
/// not at the next full scan of /proc (every 30 s; the scans between look only at exec'd
/// processes). The server is linked statically: no library mapping names it too.
#[test]
fn a_go_server_execd_by_a_running_process_is_attached_without_a_full_scan() {
    let binary = gotls_static();
    let dir = ScratchDir::new("gotls-exec");
    let go = dir.path().join("go");
    let port = free_port();
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .arg("--tls")
        .json()
        .start();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"while [ ! -e "$1" ]; do sleep 0.05; done; exec "$2" serve --port "$3""#)
        .arg("sh")
        .arg(&go)
        .arg(binary)
        .arg(port.to_string());
    let server = ChildGuard::spawn("sh, then exec gotls serve", command);
    let scans = |page: &str| sample(page, "tracer_go_tls_scans_total", "").unwrap_or(0.0);
    let full_scans =
        |page: &str| sample(page, "tracer_go_tls_full_scans_total", "").unwrap_or(-1.0);
    let started = scans(&agent.wait_metrics("the Go discovery's metrics", |_| true));
    // The wrapper is running (and was looked at) before it execs.
    let settled = agent.wait_metrics("three more scans", |page| scans(page) >= started + 3.0);
    std::fs::write(&go, b"").expect("go file");
    assert!(
        wait_for_port(port, PEER_START_TIMEOUT),
        "the exec'd Go TLS server did not listen on {port}\n{}",
        server.output_report()
    );
    wait_attached_to(&mut agent, binary);
    let page = agent.wait_metrics("the metrics after the attach", |_| true);
    assert_eq!(
        full_scans(&page),
        full_scans(&settled),
        "attached by a full scan, not from the exec\n{page}"
    );
    drop(server);
    agent.stop().assert_success();
}
