//! HTTPS through the OpenSSL uprobes, against real processes: a Python `ssl` server (OpenSSL's
//! `_ex` calls) with curl (`SSL_read`/`SSL_write`) and a Python HTTPS client, nginx with `ssl`,
//! and a process that starts after the agent with its own copy of libssl. Certificates are
//! generated per test with the `openssl` CLI into a scratch directory; loopback only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tracer_tests::metrics_client::sample;
use tracer_tests::nginx::{nginx_binary, nginx_config_listen};
use tracer_tests::peers::{PythonServer, peer_script, python, self_signed};
use tracer_tests::process::{LineWait, Stopped};
use tracer_tests::query::{assert_attrs, assert_count, client_spans, server_spans, the_only};
use tracer_tests::{
    AgentConfig, AttrValue, ChildGuard, ObservedSpan, OtlpProtocol, ScratchDir, TracedSession,
    free_port, run_with_timeout, wait_for_port,
};

/// Longest wait for a peer to listen (a cold `node` start in an emulated kernel VM takes more
/// than 20 s).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn s(value: &str) -> AttrValue {
    AttrValue::from(value)
}

fn i(value: i64) -> AttrValue {
    AttrValue::Int(value)
}

/// `peers/tls_server.py` on `port` with `env` added to its environment.
fn tls_server(port: u16, service: &str, dir: &Path, env: &[(&str, &str)]) -> ChildGuard {
    let (cert, key) = self_signed(dir);
    let mut command = Command::new(python());
    command
        .arg("-u")
        .arg(peer_script("tls_server.py"))
        .args(["--port", &port.to_string()])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .env("OTEL_SERVICE_NAME", service);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = ChildGuard::spawn("tls_server.py", command);
    assert!(
        wait_for_port(port, START_TIMEOUT),
        "tls_server.py did not listen on {port}\n{}",
        child.output_report()
    );
    child
}

/// `curl -k` to `url` with extra `args`; returns curl's pid. Panics unless it got `expect`.
fn curl_k(url: &str, args: &[&str]) -> u32 {
    curl_k_expect(url, args, "200")
}

fn curl_k_expect(url: &str, args: &[&str], expect: &str) -> u32 {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "-k",
            "--noproxy",
            "*",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url);
    let (status, child) = run_with_timeout("curl", command, CLIENT_TIMEOUT);
    let code = child.stdout().text().trim().to_owned();
    assert!(
        status.success() && code == expect,
        "curl -k {url} answered {code:?} ({status})\n{}",
        child.output_report()
    );
    child.pid()
}

fn https(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

/// The kernel's count of OpenSSL copies attached, from a /metrics page.
fn libraries_attached(page: &str) -> f64 {
    sample(page, "tracer_kernel_tls_libraries_attached", "").unwrap_or(0.0)
}

/// curl -k against a Python TLS server: one SERVER and one CLIENT span per request, scheme
/// https, the right path and status, the CLIENT is the SERVER's parent (same host, pairing by
/// socket); a traceparent curl sends (encrypted) is adopted by the SERVER span. Nothing of the
/// ciphertext is framed as HTTP (no desync). TLS capture is on by default: no flag asks for it.
#[test]
fn curl_to_a_python_tls_server_gives_an_https_client_server_tree() {
    let dir = ScratchDir::new("tls-python");
    let port = free_port();
    let _server = tls_server(port, "tls-python", dir.path(), &[]);
    let mut session =
        TracedSession::start_with(OtlpProtocol::Grpc, AgentConfig::new().ports(&[port]));
    let curl_pid = curl_k(&https(port, "/ok?x=1"), &[]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01");
    curl_k_expect(&https(port, "/status/201"), &["-H", &traceparent], "201");
    session.wait_for("2 https SERVER and 2 CLIENT spans", |spans| {
        server_spans(spans, port).len() >= 2 && client_spans(spans, port).len() >= 2
    });
    let page = session.agent().wait_settled();
    let stderr = session.agent().stderr_text();
    let spans = session.finish();
    assert_count(
        &spans.iter().collect::<Vec<_>>(),
        4,
        "spans in total (agent filtered to the port)",
        &spans,
    );
    let by_status = |kind: fn(&[ObservedSpan], u16) -> Vec<&ObservedSpan>, status: i64| {
        let found: Vec<&ObservedSpan> = kind(&spans, port)
            .into_iter()
            .filter(|s| s.attr("http.response.status_code") == Some(&i(status)))
            .collect();
        the_only(found, &format!("span with status {status}"), &spans)
    };
    let server = by_status(server_spans, 200);
    let client = by_status(client_spans, 200);
    assert_attrs(
        server,
        &[
            ("url.scheme", s("https")),
            ("url.path", s("/ok")),
            ("url.query", s("x=1")),
            ("http.request.method", s("GET")),
            ("network.protocol.version", s("1.1")),
        ],
    );
    assert_attrs(
        client,
        &[
            ("url.scheme", s("https")),
            ("url.full", s(&https(port, "/ok?x=1"))),
            ("http.request.method", s("GET")),
        ],
    );
    assert_eq!(
        client.resource_int("process.pid"),
        Some(i64::from(curl_pid)),
        "{}",
        client.summary()
    );
    assert_eq!(
        server.trace_id,
        client.trace_id,
        "one trace:\n{}\n{}\n--- agent stderr ---\n{stderr}",
        server.summary(),
        client.summary()
    );
    assert_eq!(
        server.parent_span_id.as_deref(),
        Some(client.span_id.as_str()),
        "the SERVER span is the CLIENT span's child: {}",
        server.summary()
    );
    let adopted = by_status(server_spans, 201);
    assert_eq!(adopted.trace_id, trace_id, "curl's traceparent adopted");
    assert_eq!(adopted.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(adopted.attr("url.scheme"), Some(&s("https")));
    assert_eq!(
        sample(&page, "tracer_http_desyncs_total", ""),
        Some(0.0),
        "{page}"
    );
    assert!(
        sample(&page, "tracer_kernel_tls_records_total", "").unwrap_or(0.0) >= 8.0,
        "{page}"
    );
}

/// 50 requests over 8 concurrent keep-alive connections from a Python HTTPS client (OpenSSL's
/// `_ex` calls on both ends): exactly 50 SERVER and 50 CLIENT spans, all https.
#[test]
fn keep_alive_and_concurrency_give_exact_counts() {
    let dir = ScratchDir::new("tls-load");
    let port = free_port();
    let _server = tls_server(port, "tls-load", dir.path(), &[]);
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new().ports(&[port]).arg("--tls"),
    );
    let mut command = Command::new(python());
    command.arg("-u").arg(peer_script("tls_client.py")).args([
        "--port",
        &port.to_string(),
        "--connections",
        "8",
        "--requests",
        "50",
    ]);
    let (status, child) = run_with_timeout("tls_client.py", command, CLIENT_TIMEOUT);
    assert!(status.success(), "{}", child.output_report());
    session.wait_for("50 SERVER and 50 CLIENT https spans", |spans| {
        server_spans(spans, port).len() >= 50 && client_spans(spans, port).len() >= 50
    });
    session.agent().wait_settled();
    let spans = session.finish();
    let servers = server_spans(&spans, port);
    let clients = client_spans(&spans, port);
    assert_count(&servers, 50, "SERVER spans", &spans);
    assert_count(&clients, 50, "CLIENT spans", &spans);
    for span in servers.iter().chain(&clients) {
        assert_eq!(
            span.attr("url.scheme"),
            Some(&s("https")),
            "{}",
            span.summary()
        );
    }
    let linked = servers
        .iter()
        .filter(|server| {
            clients
                .iter()
                .any(|c| server.parent_span_id.as_deref() == Some(c.span_id.as_str()))
        })
        .count();
    assert_eq!(linked, 50, "every SERVER span is a CLIENT span's child");
}

/// nginx (Debian's build, dynamically linked libssl) with `listen ... ssl`: curl -k gives a
/// SERVER span of the nginx worker with scheme https and the right status.
#[test]
fn nginx_with_ssl_is_traced() {
    let dir = ScratchDir::new("tls-nginx");
    let (cert, key) = self_signed(dir.path());
    let port = free_port();
    let nginx = start_nginx_tls(dir.path(), port, &cert, &key, " ssl");
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new().ports(&[port]).arg("--tls"),
    );
    curl_k(&https(port, "/index.html"), &[]);
    curl_k(&https(port, "/index.html"), &[]);
    session.wait_for("2 SERVER spans of nginx", |spans| {
        server_spans(spans, port).len() >= 2
    });
    session.agent().wait_settled();
    let spans = session.finish();
    let servers = server_spans(&spans, port);
    assert_count(&servers, 2, "nginx SERVER spans", &spans);
    for span in &servers {
        assert_attrs(
            span,
            &[
                ("url.scheme", s("https")),
                ("url.path", s("/index.html")),
                ("http.response.status_code", i(200)),
            ],
        );
    }
    assert_count(&client_spans(&spans, port), 2, "curl CLIENT spans", &spans);
    drop(nginx);
}

/// nginx (Debian's build) serving `dir/www` on `port` with `listen_params` and the certificate.
fn start_nginx_tls(
    dir: &Path,
    port: u16,
    cert: &Path,
    key: &Path,
    listen_params: &str,
) -> ChildGuard {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello over tls\n").expect("index");
    let config = nginx_config_listen(dir, port, listen_params).replace(
        "        root ",
        &format!(
            "        ssl_certificate {};\n        ssl_certificate_key {};\n        root ",
            cert.display(),
            key.display()
        ),
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config).expect("nginx.conf");
    let mut command = Command::new(nginx_binary());
    command
        .arg("-c")
        .arg(&config_path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"));
    let nginx = ChildGuard::spawn("nginx", command);
    assert!(
        wait_for_port(port, START_TIMEOUT),
        "nginx did not listen on {port}\n{}",
        nginx.output_report()
    );
    nginx
}

/// A server started after the agent that loads its own copy of libssl (another path, another
/// inode, through LD_LIBRARY_PATH) is found by the agent's rescan and traced.
#[test]
fn a_process_started_later_with_its_own_libssl_copy_is_traced() {
    let dir = ScratchDir::new("tls-copy");
    let libs = dir.path().join("lib");
    std::fs::create_dir_all(&libs).expect("lib dir");
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("libssl.so.3 (Debian's libssl3) is installed");
    std::fs::copy(&system, libs.join("libssl.so.3")).expect("copying libssl.so.3");
    let port = free_port();
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new().ports(&[port]).arg("--tls"),
    );
    let lib_path = libs.display().to_string();
    let server = tls_server(
        port,
        "tls-copy",
        dir.path(),
        &[("LD_LIBRARY_PATH", &lib_path)],
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap_or_default();
    assert!(
        maps.contains(&format!("{lib_path}/libssl.so.3")),
        "the server maps the copy of libssl"
    );
    // This very file: another OpenSSL copy attached meanwhile (a `node` found by the same
    // rescan) must not let the request go before the copy's uprobes are in place.
    session.agent().wait_log_line(
        "the agent to attach to the new libssl copy",
        &format!("file={lib_path}/libssl.so.3"),
        START_TIMEOUT,
    );
    curl_k(&https(port, "/ok"), &[]);
    session.wait_for("the SERVER span of the process using the copy", |spans| {
        !server_spans(spans, port).is_empty()
    });
    let spans = session.finish();
    let server_span = the_only(server_spans(&spans, port), "SERVER span", &spans);
    assert_eq!(server_span.attr("url.scheme"), Some(&s("https")));
    assert_eq!(
        server_span.resource_int("process.pid"),
        Some(i64::from(server.pid()))
    );
}

/// A process that loads its own libssl copy with `dlopen` long after it started (Python's lazy
/// `import ssl`) is found by the rescan after the load: the kernel notes the executable mapping,
/// so the rescan reads that process, not waiting for the full rescan every 30 s (which reads every
/// process) nor reading every process's `stat` at each rescan.
#[test]
fn a_libssl_copy_loaded_by_dlopen_long_after_start_is_found_at_the_next_rescan() {
    let dir = ScratchDir::new("tls-dlopen");
    let libs = dir.path().join("lib");
    std::fs::create_dir_all(&libs).expect("lib dir");
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("libssl.so.3 (Debian's libssl3) is installed");
    std::fs::copy(&system, libs.join("libssl.so.3")).expect("copying libssl.so.3");
    let lib_path = libs.display().to_string();
    let mut agent = AgentConfig::new().arg("--tls").json().start();
    let go = dir.path().join("go");
    let mut command = Command::new(python());
    command
        .arg("-c")
        .arg(
            "import os, sys, time\n\
             while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n\
             import ssl\n\
             print('ssl loaded', flush=True)\n\
             time.sleep(600)\n",
        )
        .arg(&go)
        .env("LD_LIBRARY_PATH", &lib_path);
    let lazy = ChildGuard::spawn("lazy ssl importer", command);
    let scans =
        |page: &str| sample(page, "tracer_kernel_tls_search_scans_total", "").unwrap_or(0.0);
    let full_scans =
        |page: &str| sample(page, "tracer_kernel_tls_search_full_scans_total", "").unwrap_or(-1.0);
    let started = scans(&agent.wait_metrics("the TLS search's metrics", |_| true));
    // The process is read as new, then once more; after three rescans it is left alone.
    let settled = agent.wait_metrics("three more rescans", |page| scans(page) >= started + 3.0);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", lazy.pid())).unwrap_or_default();
    assert!(
        maps.contains("python") && !maps.contains(&lib_path),
        "the importer runs without the copy mapped yet\n{maps}"
    );
    std::fs::write(&go, b"").expect("trigger file");
    agent.wait_log_line(
        "the agent to attach to the copy loaded by dlopen",
        &format!("file={lib_path}/libssl.so.3"),
        START_TIMEOUT,
    );
    let page = agent.wait_metrics("the metrics after the attach", |_| true);
    assert_eq!(
        full_scans(&page),
        full_scans(&settled),
        "the copy was found by a full rescan, not at the rescan after the load\n{page}"
    );
    drop(lazy);
    agent.stop().assert_success();
}

/// With `--no-tls` nothing is attached and no https span is made (the ciphertext is skipped).
#[test]
fn no_tls_turns_capture_off() {
    capture_off(|agent| agent.arg("--tls").arg("--no-tls"));
}

/// `TRACER_TLS=0` turns the default TLS capture off as `--no-tls` does.
#[test]
fn tracer_tls_0_turns_capture_off() {
    capture_off(|agent| agent.env("TRACER_TLS", "0"));
}

fn capture_off(configure: impl FnOnce(AgentConfig) -> AgentConfig) {
    let dir = ScratchDir::new("tls-off");
    let port = free_port();
    let _server = tls_server(port, "tls-off", dir.path(), &[]);
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        configure(AgentConfig::new().ports(&[port])),
    );
    curl_k(&https(port, "/ok"), &[]);
    let page = session.agent().wait_settled();
    assert_eq!(libraries_attached(&page), 0.0, "{page}");
    assert_eq!(
        sample(&page, "tracer_http_desyncs_total", ""),
        Some(0.0),
        "{page}"
    );
    assert!(
        sample(&page, "tracer_tls_ciphertext_connections_total", "").unwrap_or(0.0) >= 2.0,
        "{page}"
    );
    let spans: Vec<ObservedSpan> = session.finish();
    assert!(spans.is_empty(), "no span without TLS capture: {spans:?}");
}

/// HTTP/2 over TLS (ALPN h2): nginx `listen ... ssl http2` and `curl --http2`: the plaintext
/// starts with the client preface and is framed as HTTP/2; spans are https, version 2.
#[test]
fn http2_over_tls_with_alpn_is_traced() {
    let dir = ScratchDir::new("tls-h2");
    let (cert, key) = self_signed(dir.path());
    let port = free_port();
    let nginx = start_nginx_tls(dir.path(), port, &cert, &key, " ssl http2");
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new().ports(&[port]).arg("--tls"),
    );
    curl_k(&https(port, "/index.html"), &["--http2"]);
    session.wait_for("the HTTP/2 SERVER and CLIENT spans", |spans| {
        !server_spans(spans, port).is_empty() && !client_spans(spans, port).is_empty()
    });
    session.agent().wait_settled();
    let spans = session.finish();
    for span in [
        the_only(server_spans(&spans, port), "SERVER span", &spans),
        the_only(client_spans(&spans, port), "CLIENT span", &spans),
    ] {
        assert_attrs(
            span,
            &[
                ("url.scheme", s("https")),
                ("network.protocol.version", s("2")),
                ("http.response.status_code", i(200)),
            ],
        );
    }
    drop(nginx);
}

/// Waits until the agent attached its OpenSSL uprobes to the executable of the running `node`
/// (which exports OpenSSL's symbols). Uprobes live on the file, so the agent's log line naming
/// this node's executable proves this node is covered, whichever process the agent found the
/// file through (a concurrent test's node may be the one named); a count of OpenSSL copies
/// attached does not: another process's libssl satisfies it.
fn wait_node_attached(session: &mut TracedSession, node: &ChildGuard) {
    let exe = std::fs::read_link(format!("/proc/{}/exe", node.pid()))
        .unwrap_or_else(|e| panic!("node's executable: {e}\n{}", node.output_report()));
    // The attach line's fields are `pid= file= kind=`; a failed attach logs `err=` after file.
    session.agent().wait_log_line(
        "the OpenSSL uprobes attached to node's executable",
        &format!("file={} kind=", exe.display()),
        START_TIMEOUT,
    );
}

/// The id of a `/r/ID` request (SERVER spans carry `url.path`, CLIENT spans `url.full`).
fn request_id(span: &ObservedSpan) -> Option<u64> {
    let path = match span.attr_str("url.path") {
        Some(path) => path,
        None => {
            let full = span.attr_str("url.full")?;
            &full[full.find("/r/")?..]
        }
    };
    path.strip_prefix("/r/")?.parse().ok()
}

/// Waits for a SERVER and a CLIENT span of every request in `ids` on `port`, ends the session
/// and checks the tree ([`assert_node_tree`]); returns the agent's settled /metrics page.
fn wait_for_node_tree(mut session: TracedSession, port: u16, ids: &[u64]) -> String {
    let n = ids.len();
    session.wait_for(&format!("{n} https SERVER and {n} CLIENT spans"), |spans| {
        server_spans(spans, port).len() >= n && client_spans(spans, port).len() >= n
    });
    let page = session.agent().wait_settled();
    let spans = session.finish();
    assert_node_tree(&spans, port, ids);
    page
}

/// Every span is an https GET /r/ID answered 200, the ids of the SERVER and of the CLIENT spans
/// are exactly `ids`, and every SERVER span's parent is the CLIENT span of the same id (a
/// CLIENT of another request as parent is a wrong link: none allowed, and none may be missing).
fn assert_node_tree(spans: &[ObservedSpan], port: u16, ids: &[u64]) {
    let servers = server_spans(spans, port);
    let clients = client_spans(spans, port);
    assert_count(&servers, ids.len(), "SERVER spans", spans);
    assert_count(&clients, ids.len(), "CLIENT spans", spans);
    for span in servers.iter().chain(&clients) {
        assert_eq!(
            span.attr("url.scheme"),
            Some(&s("https")),
            "{}",
            span.summary()
        );
        assert_eq!(
            span.attr("http.request.method"),
            Some(&s("GET")),
            "{}",
            span.summary()
        );
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(&i(200)),
            "{}",
            span.summary()
        );
    }
    for (what, of) in [("SERVER", &servers), ("CLIENT", &clients)] {
        let mut found: Vec<u64> = of.iter().filter_map(|s| request_id(s)).collect();
        found.sort_unstable();
        assert_eq!(found, ids, "{what} span paths /r/ID, one per request");
    }
    let mut wrong = Vec::new();
    let mut unlinked = Vec::new();
    for server in &servers {
        match clients
            .iter()
            .find(|c| server.parent_span_id.as_deref() == Some(c.span_id.as_str()))
        {
            Some(client) if request_id(client) == request_id(server) => {
                assert_eq!(client.trace_id, server.trace_id, "{}", server.summary());
            }
            Some(client) => wrong.push(format!("{} <- {}", server.summary(), client.summary())),
            None => unlinked.push(server.summary()),
        }
    }
    assert!(wrong.is_empty(), "wrong CLIENT->SERVER links: {wrong:#?}");
    assert!(
        unlinked.is_empty(),
        "SERVER spans without their CLIENT parent: {unlinked:#?}"
    );
}

/// Node.js drives OpenSSL through memory BIOs (no syscall inside SSL_read/SSL_write): its
/// `SSL*`s are bound to their sockets by the order of the thread's calls. A Node https server,
/// a Node https client (keep-alive agent, 8 sockets, 50 requests all in flight at once, the
/// server answering out of order) and curl -k: exact SERVER and CLIENT counts, the right
/// path, method and status, scheme https, and every CLIENT->SERVER link right (the request id
/// is in the path and in the response body the client checks).
#[test]
fn node_https_server_and_client_are_traced_and_linked() {
    let dir = ScratchDir::new("tls-node");
    let (cert, key) = self_signed(dir.path());
    let port = free_port();
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new().ports(&[port]).arg("--tls"),
    );
    let mut command = Command::new("node");
    command
        .arg(peer_script("tls_node_server.js"))
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key);
    let server = ChildGuard::spawn("tls_node_server.js", command);
    assert!(
        wait_for_port(port, START_TIMEOUT),
        "node did not listen on {port}\n{}",
        server.output_report()
    );
    wait_node_attached(&mut session, &server);
    let mut command = Command::new("node");
    command
        .arg(peer_script("tls_node_client.js"))
        .args([&port.to_string(), "50", "8", "0"]);
    let (status, client) = run_with_timeout("tls_node_client.js", command, CLIENT_TIMEOUT);
    assert!(
        status.success(),
        "node's requests failed\n{}\n{}",
        client.output_report(),
        server.output_report()
    );
    curl_k(&https(port, "/r/1000"), &[]);
    curl_k(&https(port, "/r/1001"), &[]);
    let mut ids: Vec<u64> = (0..50).collect();
    ids.extend([1000, 1001]);
    let page = wait_for_node_tree(session, port, &ids);
    // The server's 8 + 2 connections bound by their first request's read, the client's 8 by
    // their first request's write.
    let bound = |side: &str| {
        sample(
            &page,
            "tracer_kernel_tls_memory_bio_bound_total",
            &format!("side=\"{side}\""),
        )
        .unwrap_or(0.0)
    };
    assert!(bound("read") >= 10.0 && bound("write") >= 8.0, "{page}");
    assert_eq!(
        sample(&page, "tracer_http_desyncs_total", ""),
        Some(0.0),
        "{page}"
    );
}

/// Runs a Node peer that is both the https server and its own client (`script PORT CERT KEY
/// ARGS... GO`): it listens, the agent attaches to node, then the `GO` file releases its
/// requests; once node printed `done`, the agent is let read every record of them before
/// `GO.end` lets node close its connections and exit (the other tests do not depend on an agent
/// reading late; `node_server_exchanges_read_after_node_exited_keep_their_endpoints` does, with
/// `agent_stopped`). Returns the session and the port once node exited with success.
fn run_node_one_process(name: &str, script: &str, args: &[&str]) -> (TracedSession, u16) {
    run_node_one_process_paused(name, script, args, false, &[])
}

/// [`run_node_one_process`] with `env` set for node, and with `agent_stopped` the agent stopped
/// (SIGSTOP) from before node's requests until node closed its connections and exited: an agent
/// starved of CPU that reads node's records only once node is gone, made deterministic.
fn run_node_one_process_paused(
    name: &str,
    script: &str,
    args: &[&str],
    agent_stopped: bool,
    env: &[(&str, &str)],
) -> (TracedSession, u16) {
    let dir = ScratchDir::new(name);
    let (cert, key) = self_signed(dir.path());
    let port = free_port();
    let go = dir.path().join("go");
    let end = dir.path().join("go.end");
    let mut command = Command::new("node");
    command
        .arg(peer_script(script))
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .args(args)
        .arg(&go)
        .envs(env.iter().copied());
    let mut node = ChildGuard::spawn(script, command);
    assert!(
        wait_for_port(port, START_TIMEOUT),
        "node did not listen on {port}\n{}",
        node.output_report()
    );
    // The agent traces this node only (it connects nothing before `go`): its counters are this
    // node's, not those of the tests running beside it (a late agent cannot apply the port
    // filter to the servers of any Node, and counts their exchanges `ports_unknown` too).
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new()
            .pid(node.pid())
            .ports(&[port])
            .arg("--tls"),
    );
    wait_node_attached(&mut session, &node);
    let stopped = agent_stopped.then(|| Stopped::process(session.agent().pid()));
    if agent_stopped {
        std::fs::write(&end, b"end").expect("end file");
    }
    std::fs::write(&go, b"go").expect("go file");
    if !agent_stopped {
        let done = node
            .stdout()
            .wait_for_line(CLIENT_TIMEOUT, |line| line.starts_with("done"));
        assert!(
            matches!(done, LineWait::Found(_)),
            "node did not finish its requests\n{}",
            node.output_report()
        );
        session.agent().wait_settled();
        std::fs::write(&end, b"end").expect("end file");
    }
    let status = node.wait_timeout(CLIENT_TIMEOUT);
    drop(stopped);
    assert!(
        status.is_some_and(|s| s.success()),
        "node's requests failed\n{}",
        node.output_report()
    );
    (session, port)
}

/// A Node https server that writes a line to stdout on each 'secureConnection': Node emits it
/// inside the `SSL_read` that reads the client's Finished, and that same call then decrypts the
/// first request, which came in the same read (Node's client sends its Finished with it). The
/// write in between is the callback's, not the call's: every first request is still bound to
/// its socket (an agent that took the thread's last syscall at the call's return lost them all,
/// counted `no_socket`).
#[test]
fn a_server_writing_inside_the_handshake_callback_still_binds_its_first_request() {
    let (session, port) = run_node_one_process_paused(
        "tls-node-log-secure",
        "tls_node.js",
        &["50", "8"],
        false,
        &[("TLS_NODE_LOG_SECURE", "1")],
    );
    let page = wait_for_node_tree(session, port, &(0..50).collect::<Vec<u64>>());
    assert_eq!(
        sample(
            &page,
            "tracer_kernel_tls_calls_lost_total",
            "reason=\"no_socket\""
        ),
        Some(0.0),
        "{page}"
    );
}

/// A Node process that is both the https server and its own client (one event-loop thread
/// drives both ends of 8 connections, 50 requests in flight at once, answered out of order):
/// the calls of different `SSL*`s interleave on one thread, and no plaintext is attributed to
/// another connection. Every span right and rightly linked, or missing and counted; here all
/// of them are expected.
#[test]
fn node_https_client_and_server_in_one_process_never_cross_connections() {
    let (session, port) = run_node_one_process("tls-node-one", "tls_node.js", &["50", "8"]);
    let page = wait_for_node_tree(session, port, &(0..50).collect::<Vec<u64>>());
    assert_eq!(
        sample(&page, "tracer_http_desyncs_total", ""),
        Some(0.0),
        "{page}"
    );
}

/// Node's TLS over a JavaScript stream that defers every ciphertext write to a later turn of
/// the event loop (one process, server and client, 8 connections, 50 requests in flight):
/// OpenSSL's output reaches the sockets out of Node's usual order, interleaved with the other
/// connections' calls. Plaintext is either bound to its own connection or dropped and counted
/// (`binding_refused`), never attributed to another: every span has its own request's path, no
/// request twice, no wrong link, and every CLIENT request missing is counted.
#[test]
fn node_tls_over_a_deferred_stream_is_refused_not_misattributed() {
    let (mut session, port) =
        run_node_one_process("tls-node-deferred", "tls_node_deferred.js", &["50", "8"]);
    let refused = |page: &str| {
        sample(
            page,
            "tracer_kernel_tls_calls_lost_total",
            "reason=\"binding_refused\"",
        )
        .unwrap_or(0.0)
    };
    session.wait_for("50 SERVER spans", |spans| {
        server_spans(spans, port).len() >= 50
    });
    let page = session.agent().wait_settled();
    let spans = session.finish();
    let servers = server_spans(&spans, port);
    let clients = client_spans(&spans, port);
    let ids = |of: &[&ObservedSpan]| {
        let mut found: Vec<u64> = of.iter().filter_map(|s| request_id(s)).collect();
        found.sort_unstable();
        found
    };
    // The server's sockets are native: all of its requests are seen.
    assert_eq!(ids(&servers), (0..50).collect::<Vec<u64>>(), "SERVER paths");
    let client_ids = ids(&clients);
    let mut unique = client_ids.clone();
    unique.dedup();
    assert_eq!(
        client_ids.len(),
        clients.len(),
        "every CLIENT span has a /r/ID url"
    );
    assert_eq!(unique, client_ids, "no request attributed twice");
    assert!(client_ids.iter().all(|id| *id < 50), "{client_ids:?}");
    assert!(
        clients.len() as f64 + refused(&page) >= 50.0,
        "every CLIENT request missing is counted ({} spans): {page}",
        clients.len()
    );
    for server in &servers {
        if let Some(client) = clients
            .iter()
            .find(|c| server.parent_span_id.as_deref() == Some(c.span_id.as_str()))
        {
            assert_eq!(
                request_id(client),
                request_id(server),
                "wrong link: {} <- {}",
                server.summary(),
                client.summary()
            );
        }
    }
    assert_eq!(
        sample(&page, "tracer_http_desyncs_total", ""),
        Some(0.0),
        "{page}"
    );
}

/// Node runs JavaScript callbacks inside OpenSSL calls ('secureConnect' inside the call that
/// completes the handshake): a Node TLS client whose handler writes a cleartext request on
/// another, plain connection to a Python HTTP server. That syscall is not the `SSL*`'s socket
/// (its bytes are no TLS record): the `SSL*` is not bound to it (counted), the plain
/// connection's three exchanges stay cleartext CLIENT spans (none https, none lost), and the
/// https request is never attributed to it.
#[test]
fn a_callback_inside_an_openssl_call_never_binds_the_ssl_to_its_socket() {
    let dir = ScratchDir::new("tls-node-nested");
    let (cert, key) = self_signed(dir.path());
    let (tls_port, plain_port) = (free_port(), free_port());
    let plain = PythonServer::start(plain_port, "plain-http");
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new()
            .ports(&[tls_port, plain_port])
            .arg("--tls"),
    );
    let mut command = Command::new("node");
    command
        .arg(peer_script("tls_node_server.js"))
        .arg(tls_port.to_string())
        .arg(&cert)
        .arg(&key);
    let server = ChildGuard::spawn("tls_node_server.js", command);
    assert!(
        wait_for_port(tls_port, START_TIMEOUT),
        "node did not listen on {tls_port}\n{}",
        server.output_report()
    );
    wait_node_attached(&mut session, &server);
    let mut command = Command::new("node");
    command
        .arg(peer_script("tls_node_nested.js"))
        .args([tls_port.to_string(), plain_port.to_string()]);
    let (status, client) = run_with_timeout("tls_node_nested.js", command, CLIENT_TIMEOUT);
    assert!(
        status.success(),
        "the client's requests failed\n{}\n{}\n{}",
        client.output_report(),
        server.output_report(),
        plain.output_report()
    );
    session.wait_for("3 plain SERVER spans and the https SERVER span", |spans| {
        server_spans(spans, plain_port).len() >= 3 && !server_spans(spans, tls_port).is_empty()
    });
    let page = session.agent().wait_settled();
    let spans = session.finish();
    let step = |span: &ObservedSpan| {
        span.attr_str("url.query")
            .or_else(|| span.attr_str("url.full")?.split_once('?').map(|(_, q)| q))
            .map(str::to_owned)
    };
    let clients = client_spans(&spans, plain_port);
    let mut steps: Vec<Option<String>> = clients.iter().map(|c| step(c)).collect();
    steps.sort();
    assert_eq!(
        steps,
        ["step=1", "step=2", "step=3"].map(|s| Some(s.to_owned())),
        "the plain connection's three CLIENT spans: {:#?}",
        clients.iter().map(|c| c.summary()).collect::<Vec<_>>()
    );
    for span in clients.iter().chain(&server_spans(&spans, plain_port)) {
        assert_eq!(
            span.attr("url.scheme"),
            Some(&s("http")),
            "{}",
            span.summary()
        );
    }
    for server in server_spans(&spans, plain_port) {
        let parent = clients
            .iter()
            .find(|c| server.parent_span_id.as_deref() == Some(c.span_id.as_str()));
        assert_eq!(
            parent.and_then(|c| step(c)),
            step(server),
            "the plain SERVER span's parent is the CLIENT span of its own request: {}",
            server.summary()
        );
    }
    for span in server_spans(&spans, tls_port)
        .into_iter()
        .chain(client_spans(&spans, tls_port))
    {
        assert_attrs(span, &[("url.scheme", s("https"))]);
        assert_eq!(request_id(span), Some(7), "{}", span.summary());
    }
    assert!(
        sample(&page, "tracer_kernel_tls_nested_syscalls_refused_total", "").unwrap_or(0.0) >= 1.0,
        "the handler's write inside the OpenSSL call was seen and refused: {page}"
    );
    assert_eq!(
        sample(&page, "tracer_http_desyncs_total", ""),
        Some(0.0),
        "{page}"
    );
}

/// Node's TLS over JavaScript streams that defer their writes, from a timer (outside any read):
/// connection 2's `SSL_write`, then connection 1's of the same size, whose next socket write is
/// connection 2's ciphertext (a record of exactly its size plus the AEAD overhead). The
/// ciphertext is bound by content (the last record's AEAD tag, seen as OpenSSL writes it into
/// the memory BIO), never by its size: the request is refused, counted, never attributed to
/// connection 2. Six rounds: every SERVER span's CLIENT parent is the CLIENT of its own request.
#[test]
fn node_deferred_writes_of_the_same_size_in_swapped_order_never_cross_connections() {
    let (mut session, port) =
        run_node_one_process("tls-node-swapped", "tls_node_swapped.js", &["6"]);
    session.wait_for("12 SERVER spans", |spans| {
        server_spans(spans, port).len() >= 12
    });
    let page = session.agent().wait_settled();
    let spans = session.finish();
    let servers = server_spans(&spans, port);
    let clients = client_spans(&spans, port);
    let ids = |of: &[&ObservedSpan]| {
        let mut found: Vec<u64> = of.iter().filter_map(|s| request_id(s)).collect();
        found.sort_unstable();
        found
    };
    assert_eq!(
        ids(&servers),
        (10..22).collect::<Vec<u64>>(),
        "SERVER paths"
    );
    let client_ids = ids(&clients);
    let mut unique = client_ids.clone();
    unique.dedup();
    assert_eq!(
        client_ids.len(),
        clients.len(),
        "every CLIENT span has a /r/ID url"
    );
    assert_eq!(unique, client_ids, "no request attributed twice");
    // Whether a SERVER span gets its CLIENT parent here depends on timing (one thread serves
    // both ends: on a loaded host most are left unlinked, `multiplexed_threads`); a link to
    // another request's CLIENT is never allowed.
    let mut wrong = Vec::new();
    for server in &servers {
        if let Some(client) = clients
            .iter()
            .find(|c| server.parent_span_id.as_deref() == Some(c.span_id.as_str()))
            && request_id(client) != request_id(server)
        {
            wrong.push(format!("{} <- {}", server.summary(), client.summary()));
        }
    }
    assert!(wrong.is_empty(), "wrong CLIENT->SERVER links: {wrong:#?}");
    let refused = sample(
        &page,
        "tracer_kernel_tls_calls_lost_total",
        "reason=\"binding_refused\"",
    )
    .unwrap_or(0.0);
    assert!(
        clients.len() as f64 + refused >= 12.0,
        "every CLIENT request missing is counted ({} spans): {page}",
        clients.len()
    );
    assert_eq!(
        sample(&page, "tracer_http_desyncs_total", ""),
        Some(0.0),
        "{page}"
    );
}

/// `--pid` holds for TLS too: of two Python TLS servers only the one given is traced (the
/// uprobes fire in every process mapping libssl; the kernel programs drop the others' calls).
#[test]
fn the_pid_filter_applies_to_tls() {
    let dir = ScratchDir::new("tls-pid");
    let (traced_port, other_port) = (free_port(), free_port());
    let traced = tls_server(traced_port, "tls-traced", dir.path(), &[]);
    let other_dir = ScratchDir::new("tls-pid-other");
    let _other = tls_server(other_port, "tls-other", other_dir.path(), &[]);
    let mut session = TracedSession::start_with(
        OtlpProtocol::Grpc,
        AgentConfig::new().pid(traced.pid()).arg("--tls"),
    );
    curl_k(&https(other_port, "/ok"), &[]);
    curl_k(&https(traced_port, "/ok"), &[]);
    session.wait_for("the traced server's SERVER span", |spans| {
        !server_spans(spans, traced_port).is_empty()
    });
    session.agent().wait_settled();
    let spans = session.finish();
    let server = the_only(server_spans(&spans, traced_port), "SERVER span", &spans);
    assert_eq!(server.attr("url.scheme"), Some(&s("https")));
    assert_count(
        &spans.iter().collect::<Vec<_>>(),
        1,
        "spans in total (only the --pid process is traced)",
        &spans,
    );
}

/// A Node https server that is its own client, traced by an agent that reads none of its
/// records before node closed its connections and exited (stopped meanwhile: an agent starved
/// of CPU under load). Node accepts with `accept4(fd, NULL, NULL)`: the syscall returns no
/// peer address, so the kernel reads the endpoints from the new socket (its fd, then
/// `sock_common`) when accept returns. Nothing is left to `/proc`, gone by the time the agent
/// reads: every SERVER exchange is a span (an agent that took these endpoints from `/proc`
/// dropped them all, counted `ports_unknown`), the CLIENT side is complete, and no link is
/// wrong.
#[test]
fn node_server_exchanges_read_after_node_exited_keep_their_endpoints() {
    let (mut session, port) =
        run_node_one_process_paused("tls-node-late", "tls_node.js", &["50", "8"], true, &[]);
    session.wait_for("50 https SERVER and 50 CLIENT spans", |spans| {
        server_spans(spans, port).len() >= 50 && client_spans(spans, port).len() >= 50
    });
    let page = session.agent().wait_settled();
    let spans = session.finish();
    let servers = server_spans(&spans, port);
    let clients = client_spans(&spans, port);
    let counted = |family: &str, labels: &str| sample(&page, family, labels).unwrap_or(0.0);
    assert_eq!(clients.len(), 50, "CLIENT spans");
    assert_eq!(servers.len(), 50, "SERVER spans: {page}");
    assert_eq!(
        counted("tracer_exchanges_dropped_total", "reason=\"ports_unknown\""),
        0.0,
        "{page}"
    );
    assert_eq!(
        counted("tracer_kernel_accept_endpoints_unknown_total", ""),
        0.0,
        "{page}"
    );
    for server in &servers {
        // The peer's endpoint, from the accepted socket.
        assert_eq!(
            server.attr("client.address"),
            Some(&s("127.0.0.1")),
            "{}",
            server.summary()
        );
        assert!(
            server.attr_int("client.port").is_some_and(|p| p > 0),
            "{}",
            server.summary()
        );
        let parent = clients
            .iter()
            .find(|c| server.parent_span_id.as_deref() == Some(c.span_id.as_str()));
        if let Some(client) = parent {
            assert_eq!(
                request_id(client),
                request_id(server),
                "{}",
                server.summary()
            );
        }
    }
    assert_eq!(
        sample(&page, "tracer_http_desyncs_total", ""),
        Some(0.0),
        "{page}"
    );
}
