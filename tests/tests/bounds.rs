//! The kernel side stays bounded and correct under hostile or long-running conditions, against
//! real processes: connections leaked by processes that exit without closing do not fill the
//! connection table, threads blocked on pipes do not fill the in-flight syscall table, peeked
//! reads are not captured twice, and `--pid` follows a process's existing children without its
//! threads filling the pid set.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::metrics_client::scrape;
use tracer_tests::peers::{peer_script, python};
use tracer_tests::process::LineWait;
use tracer_tests::query::{client_spans, describe, server_spans};
use tracer_tests::settle::wait_for_metrics;
use tracer_tests::{
    AgentConfig, ChildGuard, Nginx, ObservedSpan, OtlpProtocol, PythonServer, TracedSession, curl,
    free_port, local_url, run_with_timeout, wait_for_port,
};

/// The tests that make thousands of processes or threads run one at a time: together they would
/// take a large share of the machine's pids (32768 by default) at once.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a peer may take to print the line a test waits for.
const PEER_READY: Duration = Duration::from_secs(60);

/// A query value that identifies a test's request among every span received.
fn spans_with_query<'a>(spans: &'a [ObservedSpan], query: &str) -> Vec<&'a ObservedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.attr_str("url.query") == Some(query)
                || s.attr_str("url.full").is_some_and(|u| u.ends_with(query))
        })
        .collect()
}

/// Starts `name` from `tests/peers` under python with `args`; waits for a stdout line starting
/// with `ready`, which is returned.
fn start_peer(name: &str, args: &[&str], ready: &str) -> (ChildGuard, String) {
    let mut command = Command::new(python());
    command.arg("-u").arg(peer_script(name)).args(args);
    let child = ChildGuard::spawn(name, command);
    let line = match child
        .stdout()
        .wait_for_line(PEER_READY, |line| line.starts_with(ready))
    {
        LineWait::Found(line) => line,
        other => panic!(
            "{name} did not print {ready:?} ({other:?})\n{}",
            child.output_report()
        ),
    };
    (child, line)
}

/// An agent exporting to a receiver, serving `/metrics` on a free port.
fn session_with_metrics(config: AgentConfig) -> (TracedSession, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let session = TracedSession::start_with(
        OtlpProtocol::HttpProtobuf,
        config.arg("--metrics-addr").arg(metrics.to_string()),
    );
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr {metrics} never listened"
    );
    (session, metrics)
}

/// The value of sample `series` (name plus labels exactly as rendered, e.g.
/// `tracer_x_total{reason="y"}`) on a `/metrics` page.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{page}"))
}

/// Waits until `condition` holds on the agent's metrics page; panics with the page.
fn wait_metrics(addr: SocketAddr, what: &str, condition: impl Fn(&str) -> bool) -> String {
    wait_for_metrics(addr, what, condition, String::new)
}

/// `metric`, or 0 when the page does not have it.
fn metric_or_zero(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

const KERNEL_TABLE_FULL: &str =
    "tracer_connections_dropped_total{stage=\"kernel\",reason=\"table_full\"}";
const KERNEL_EVICTED: &str = "tracer_kernel_connection_table_evicted_total";

/// Thousands of processes connect, send a request and `_exit` without closing: every one leaves
/// its socket's entry in the kernel connection table (no close syscall). With a table of 256,
/// a fresh request afterwards is still traced on both sides, and the evictions are counted.
#[test]
fn connections_of_processes_that_exit_without_closing_do_not_fill_the_table() {
    const CHURN: usize = 2000;
    let _heavy = heavy();
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-churn");
    let (mut session, metrics) = session_with_metrics(
        AgentConfig::new()
            .ports(&[port])
            .arg("--max-connections")
            .arg("256"),
    );
    let mut churn = Command::new(python());
    churn.arg("-u").arg(peer_script("churn.py")).args([
        "--port",
        &port.to_string(),
        "--count",
        &CHURN.to_string(),
        "--budget-s",
        "150",
    ]);
    let (status, run) = run_with_timeout("churn.py", churn, Duration::from_secs(180));
    assert!(
        status.success(),
        "every short-lived client got its answer\n{}",
        run.output_report()
    );

    let url = local_url(port, "/ok?fresh=after-churn");
    assert_eq!(curl(&[&url]).status, 200);
    let spans = session.wait_for(
        "SERVER and CLIENT spans of the request sent after the churn",
        |spans| {
            let fresh = spans_with_query(spans, "fresh=after-churn");
            !server_spans(spans, port).is_empty()
                && fresh
                    .iter()
                    .any(|s| s.kind == tracer_tests::ObservedKind::Server)
                && fresh
                    .iter()
                    .any(|s| s.kind == tracer_tests::ObservedKind::Client)
        },
    );
    let page = wait_metrics(metrics, "kernel evictions to be counted", |page| {
        metric(page, KERNEL_EVICTED) > 0.0
    });
    assert_eq!(
        metric(&page, KERNEL_TABLE_FULL),
        0.0,
        "the LRU table never refuses a connection\n{page}"
    );
    let entries = metric(&page, "tracer_kernel_connection_table_entries");
    assert!(
        entries > 0.0 && entries <= 256.0,
        "the census measured the full table ({entries} entries)\n{page}"
    );
    assert_eq!(
        metric(&page, "tracer_kernel_census_failed_walks_total"),
        0.0,
        "{page}"
    );
    let inserted = metric(&page, "tracer_kernel_connections_inserted_total");
    assert!(
        inserted >= CHURN as f64,
        "every client connection was tracked ({inserted} entries made)\n{page}"
    );
    let exchanges = server_spans(&spans, port).len();
    eprintln!(
        "churn: {CHURN} processes; {inserted} kernel entries made, {} evicted; {exchanges} SERVER spans",
        metric(&page, KERNEL_EVICTED)
    );
    session.finish();
}

/// An unprivileged process with more threads blocked in read(pipe) than the in-flight syscall
/// table holds (16384) does not blind the tracer: a request afterwards is traced.
#[test]
fn threads_blocked_on_pipes_do_not_blind_the_tracer() {
    const THREADS: usize = 17_000;
    let _heavy = heavy();
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-pipes");
    let (mut session, metrics) = session_with_metrics(AgentConfig::new().ports(&[port]));
    let threads = THREADS.to_string();
    let (blockers, line) = start_peer("pipe_blockers.py", &["--threads", &threads], "blocked");
    assert_eq!(line, format!("blocked {THREADS}"));
    // The line is printed as the threads are about to read: wait until they are in read(2).
    wait_for_threads_in_syscall(blockers.pid(), SYS_READ, "read", THREADS);

    let url = local_url(port, "/ok?behind=pipes");
    assert_eq!(curl(&[&url]).status, 200);
    session.wait_for("SERVER and CLIENT spans of the request", |spans| {
        let seen = spans_with_query(spans, "behind=pipes");
        seen.iter()
            .any(|s| s.kind == tracer_tests::ObservedKind::Server)
            && seen
                .iter()
                .any(|s| s.kind == tracer_tests::ObservedKind::Client)
    });
    let page = scrape(metrics);
    assert_eq!(
        metric(
            &page,
            "tracer_events_dropped_total{stage=\"kernel\",reason=\"args_table_full\"}"
        ),
        0.0,
        "blocked pipe readers never fill the table of tracked connections\n{page}"
    );
    session.finish();
}

/// read(2) on x86_64 (the number `/proc/<pid>/task/<tid>/syscall` starts with).
const SYS_READ: u32 = 0;
/// recvfrom(2) on x86_64 (what recv(2) is).
const SYS_RECVFROM: u32 = 45;

/// A process with more threads blocked in recv(2) on its own tracked loopback connections than
/// the in-flight syscall table holds (16384) takes only its quota of it: a request of another
/// process afterwards is traced, and the refused syscalls are counted.
#[test]
fn threads_blocked_on_tracked_connections_take_only_their_quota() {
    const THREADS: usize = 17_000;
    let _heavy = heavy();
    let (port, blocked_port) = (free_port(), free_port());
    let _server = PythonServer::start(port, "e2e-quota");
    let (mut session, metrics) =
        session_with_metrics(AgentConfig::new().ports(&[port, blocked_port]));
    let threads = THREADS.to_string();
    let blocked_port_arg = blocked_port.to_string();
    let (blockers, line) = start_peer(
        "socket_blockers.py",
        &["--threads", &threads, "--port", &blocked_port_arg],
        "blocked",
    );
    assert_eq!(line, format!("blocked {THREADS}"));
    wait_for_threads_in_syscall(blockers.pid(), SYS_RECVFROM, "recv", THREADS);

    let url = local_url(port, "/ok?behind=sockets");
    assert_eq!(curl(&[&url]).status, 200);
    session.wait_for("SERVER and CLIENT spans of the request", |spans| {
        let seen = spans_with_query(spans, "behind=sockets");
        seen.iter()
            .any(|s| s.kind == tracer_tests::ObservedKind::Server)
            && seen
                .iter()
                .any(|s| s.kind == tracer_tests::ObservedKind::Client)
    });
    let page = wait_metrics(metrics, "the refused syscalls to be counted", |page| {
        metric(page, "tracer_kernel_args_process_quota_total") > 0.0
    });
    assert_eq!(
        metric(
            &page,
            "tracer_events_dropped_total{stage=\"kernel\",reason=\"args_table_full\"}"
        ),
        0.0,
        "one process never fills the table of tracked connections\n{page}"
    );
    session.finish();
}

/// Waits (at most 60 s, failing after) until `count` threads of `pid` are blocked in syscall `nr`
/// (called `name` in the failure message).
fn wait_for_threads_in_syscall(pid: u32, nr: u32, name: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let blocked = threads_in_syscall(pid, nr);
        if blocked >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {blocked} of {count} threads blocked in {name}(2)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many threads of process `pid` are blocked in syscall `nr`.
fn threads_in_syscall(pid: u32, nr: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("syscall")).is_ok_and(|line| {
                line.split(' ').next().and_then(|n| n.parse::<u32>().ok()) == Some(nr)
            })
        })
        .count()
}

/// Three requests on one keep-alive connection to `peek_server.py` (with `extra` arguments);
/// returns every span and the agent's metrics page.
fn three_requests_to_peek_server(extra: &[&str]) -> (u16, Vec<ObservedSpan>, String) {
    let port = free_port();
    let port_arg = port.to_string();
    let mut command = Command::new(python());
    command
        .arg("-u")
        .arg(peer_script("peek_server.py"))
        .args(["--port", &port_arg])
        .args(extra);
    let server = ChildGuard::spawn("peek_server.py", command);
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "peek_server.py did not listen\n{}",
        server.output_report()
    );
    let mut session = TracedSession::start_with(
        OtlpProtocol::HttpProtobuf,
        AgentConfig::new().ports(&[port]),
    );
    let urls: Vec<String> = (1..=3)
        .map(|i| local_url(port, &format!("/peek?n={i}")))
        .collect();
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--noproxy", "*", "--max-time", "20"]);
    for url in &urls {
        curl.args(["-o", "/dev/null", url]);
    }
    let (status, run) = run_with_timeout("curl", curl, Duration::from_secs(30));
    assert!(status.success(), "{}", run.output_report());
    // Through io_uring the server's responses are holes: only the client side is complete.
    let uring = extra.iter().any(|a| a.starts_with("--uring"));
    let servers_expected = if uring { 0 } else { 3 };
    session.wait_for("the requests' SERVER and CLIENT spans", |spans| {
        server_spans(spans, port).len() >= servers_expected && client_spans(spans, port).len() >= 3
    });
    // The counters of everything the probes saw so far (the caller asserts on them).
    let page = session.agent().wait_settled();
    (port, session.finish(), page)
}

/// Exactly one SERVER span per request, with its own query and a 200, and one CLIENT span each.
fn assert_one_span_per_request(port: u16, spans: &[ObservedSpan], page: &str) {
    let servers = server_spans(spans, port);
    let mut queries: Vec<&str> = servers
        .iter()
        .filter_map(|s| s.attr_str("url.query"))
        .collect();
    queries.sort_unstable();
    assert_eq!(
        queries,
        ["n=1", "n=2", "n=3"],
        "exactly one SERVER span per request:\n{}\n{page}",
        describe(servers.iter().copied())
    );
    for span in &servers {
        assert_eq!(
            span.attr_int("http.response.status_code"),
            Some(200),
            "{}",
            span.summary()
        );
    }
    assert_eq!(client_spans(spans, port).len(), 3, "{}", describe(spans));
}

/// A server that peeks (MSG_PEEK with recv and with recvmsg) before it reads: exactly one SERVER
/// span per request, each with its own path and answer.
#[test]
fn peeked_reads_are_not_captured_twice() {
    let (port, spans, page) = three_requests_to_peek_server(&[]);
    assert_one_span_per_request(port, &spans, &page);
    assert!(
        metric(&page, "tracer_kernel_peeks_skipped_total") >= 6.0,
        "two peeks per request are counted\n{page}"
    );
}

/// Response bodies spliced from a pipe into the socket never pass through user memory: they are
/// gaps of the right length, so the server's stream stays in sync across keep-alive requests.
#[test]
fn spliced_response_bodies_keep_the_stream_in_sync() {
    let (port, spans, page) = three_requests_to_peek_server(&["--splice", "--no-peek"]);
    assert_one_span_per_request(port, &spans, &page);
}

/// `--pid` with an nginx master that forked its worker before the agent started: the worker's
/// requests are traced.
#[test]
fn pid_follows_children_that_existed_before_the_agent() {
    let port = free_port();
    let nginx = Nginx::start(port);
    let mut session = TracedSession::start_with(
        OtlpProtocol::HttpProtobuf,
        AgentConfig::new().pid(nginx.master_pid()),
    );
    let url = local_url(port, "/index.html?existing=worker");
    assert_eq!(curl(&[&url]).status, 200);
    let spans = session.wait_for("the nginx worker's SERVER span", |spans| {
        !server_spans(spans, port).is_empty()
    });
    let span = server_spans(&spans, port)[0];
    let pid = match span.resource.get("process.pid") {
        Some(tracer_tests::AttrValue::Int(pid)) => *pid as u32,
        other => panic!("no process.pid ({other:?}) on {}", span.summary()),
    };
    assert_ne!(
        pid,
        nginx.master_pid(),
        "the master does not serve requests"
    );
    assert_eq!(
        tracer_tests::nginx::parent_pid(pid),
        Some(nginx.master_pid()),
        "the span comes from the master's worker\n{}",
        nginx.output_report()
    );
    session.finish();
}

/// `--pid` on a process that grows more threads than the pid set holds (4096), then starts a
/// child server: only processes join the set, so the child is followed and traced.
#[test]
fn threads_of_a_traced_process_do_not_fill_the_pid_set() {
    const THREADS: usize = 4500;
    let _heavy = heavy();
    let port = free_port();
    let port_arg = port.to_string();
    let threads = THREADS.to_string();
    let server_script = peer_script("http_server.py");
    let server_arg = server_script.to_string_lossy();
    let (mut launcher, _) = start_peer(
        "thread_launcher.py",
        &[
            "--threads",
            &threads,
            "--port",
            &port_arg,
            "--server",
            &server_arg,
        ],
        "waiting",
    );
    let (mut session, metrics) = session_with_metrics(AgentConfig::new().pid(launcher.pid()));
    assert!(launcher.signal(libc::SIGUSR1), "the launcher is running");
    match launcher
        .stdout()
        .wait_for_line(PEER_READY, |line| line.starts_with("child "))
    {
        LineWait::Found(_) => {}
        other => panic!("no child started ({other:?})\n{}", launcher.output_report()),
    }
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "the launched server did not listen\n{}",
        launcher.output_report()
    );
    let url = local_url(port, "/ok?launched=1");
    assert_eq!(curl(&[&url]).status, 200);
    session.wait_for("the launched child's SERVER span", |spans| {
        !server_spans(spans, port).is_empty()
    });
    let page = scrape(metrics);
    assert_eq!(
        metric(&page, "tracer_kernel_children_not_followed_total"),
        0.0,
        "{page}"
    );
    session.finish();
}

/// Responses sent through io_uring (IORING_OP_SEND, no syscall on the socket) are never paired
/// wrong: each is a counted hole in the server's stream, so its request is dropped instead of
/// being reported as unanswered (or answered by a later response). The client side is intact.
#[test]
fn responses_sent_through_io_uring_are_holes_not_wrong_spans() {
    let (port, spans, page) = three_requests_to_peek_server(&["--uring", "--no-peek"]);
    let servers = server_spans(&spans, port);
    let wrong: Vec<&&ObservedSpan> = servers
        .iter()
        .filter(|s| s.attr_int("http.response.status_code") != Some(200))
        .collect();
    assert!(
        wrong.is_empty(),
        "no SERVER span claims another outcome than the 200 sent:\n{}\n{page}",
        describe(wrong.iter().copied().copied())
    );
    assert!(
        metric(&page, "tracer_kernel_unhooked_transfers_total") >= 3.0,
        "each io_uring send is counted\n{page}"
    );
    assert_eq!(client_spans(&spans, port).len(), 3, "{}", describe(&spans));
}

/// A connection stays unpaired once an io_uring request touched it (a multishot receive fires
/// the tracepoint once for many transfers): the server answers the first request through
/// io_uring and the next two with send(2); no SERVER span claims any of them.
#[test]
fn a_connection_touched_by_io_uring_stays_unpaired() {
    let (port, spans, page) = three_requests_to_peek_server(&["--uring-first", "--no-peek"]);
    let servers = server_spans(&spans, port);
    assert!(
        servers.is_empty(),
        "no exchange is paired on a connection io_uring touched:\n{}\n{page}",
        describe(servers.iter().copied())
    );
    assert!(
        metric(&page, "tracer_kernel_unhooked_transfers_total") >= 1.0,
        "{page}"
    );
    assert_eq!(client_spans(&spans, port).len(), 3, "{}", describe(&spans));
}

/// A socket closed without close(2) (dup2 over it, close_range) and its fd number reused for a
/// file that looks like an HTTP response: the file's bytes never answer the socket's request.
#[test]
fn fds_closed_by_dup2_or_close_range_are_forgotten() {
    const FAKE: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-fd-reuse");
    let dir = tracer_tests::ScratchDir::new("fd-reuse");
    let fake = dir.path().join("fake-response");
    std::fs::write(&fake, FAKE).expect("writing the fake response");
    let fake_arg = fake.to_string_lossy();
    let port_arg = port.to_string();
    let mut session = TracedSession::start_with(
        OtlpProtocol::HttpProtobuf,
        AgentConfig::new().ports(&[port]),
    );
    for via in ["dup2", "close_range", "close_range_all"] {
        let mut command = Command::new(python());
        command
            .arg("-u")
            .arg(peer_script("fd_reuse.py"))
            .args(["--port", &port_arg, "--via", via, "--file", &fake_arg]);
        let (status, run) = run_with_timeout("fd_reuse.py", command, Duration::from_secs(30));
        assert!(status.success(), "{via}\n{}", run.output_report());
    }
    // The server answered all three: its spans are the sign the agent has seen them.
    let url = local_url(port, "/ok?reuse=done");
    assert_eq!(curl(&[&url]).status, 200);
    session.wait_for("the three SERVER spans and the last request's", |spans| {
        server_spans(spans, port).len() >= 4
    });
    let spans = session.finish();
    let wrong: Vec<&ObservedSpan> = spans
        .iter()
        .filter(|s| s.attr_int("http.response.status_code") == Some(500))
        .collect();
    assert!(
        wrong.is_empty(),
        "a file read on a reused fd became a response:\n{}",
        describe(wrong)
    );
}

/// A thread blocked in read(2) on a client connection while another thread closes the fd and
/// connects a new connection on the same number: the old connection's answer (418), which the
/// blocked read returns, never answers the new connection's request (answered 200 afterwards).
#[test]
fn bytes_read_on_an_fd_reused_during_the_read_stay_with_their_connection() {
    let (old_port, new_port) = (free_port(), free_port());
    let (mut session, metrics) =
        session_with_metrics(AgentConfig::new().ports(&[old_port, new_port]));
    let mut command = Command::new(python());
    command.arg("-u").arg(peer_script("fd_swap.py")).args([
        "--old-port",
        &old_port.to_string(),
        "--new-port",
        &new_port.to_string(),
    ]);
    let (status, run) = run_with_timeout("fd_swap.py", command, Duration::from_secs(60));
    assert!(status.success(), "{}", run.output_report());
    let spans = session.wait_for("the SERVER span of the new connection", |spans| {
        server_spans(spans, new_port)
            .iter()
            .any(|s| s.attr_int("http.response.status_code") == Some(200))
    });
    let page = wait_metrics(metrics, "the fd reuse to be counted", |page| {
        metric(page, "tracer_kernel_fd_reused_in_syscall_total") >= 1.0
    });
    let wrong: Vec<&ObservedSpan> = client_spans(&spans, new_port)
        .into_iter()
        .filter(|s| s.attr_int("http.response.status_code") != Some(200))
        .collect();
    assert!(
        wrong.is_empty(),
        "the old connection's answer became the new connection's:\n{}\n{page}",
        describe(wrong)
    );
    session.finish();
}

/// A process exits without closing its connection (its entry stays in the kernel table); a new
/// process gets the same pid and reads a file on the same fd number: the entry is stale for it
/// (counted), and the file's `500` never answers the dead process's request.
#[test]
fn an_entry_left_by_a_dead_process_is_stale_for_the_next_process_with_its_pid() {
    const FAKE: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-pid-reuse");
    let dir = tracer_tests::ScratchDir::new("pid-reuse");
    let fake = dir.path().join("fake-response");
    std::fs::write(&fake, FAKE).expect("writing the fake response");
    let (mut session, metrics) = session_with_metrics(AgentConfig::new().ports(&[port]));
    let mut command = Command::new(python());
    command.arg("-u").arg(peer_script("pid_reuse.py")).args([
        "--port",
        &port.to_string(),
        "--file",
        &fake.to_string_lossy(),
    ]);
    let (status, run) = run_with_timeout("pid_reuse.py", command, Duration::from_secs(60));
    assert!(status.success(), "{}", run.output_report());
    wait_metrics(
        metrics,
        "the dead process's entry to be found stale",
        |page| metric(page, "tracer_kernel_connections_stale_total") >= 1.0,
    );
    let url = local_url(port, "/ok?stale=done");
    assert_eq!(curl(&[&url]).status, 200);
    let spans = session.wait_for("the last request's CLIENT span", |spans| {
        spans_with_query(spans, "stale=done")
            .iter()
            .any(|s| s.kind == tracer_tests::ObservedKind::Client)
    });
    let wrong: Vec<&ObservedSpan> = spans
        .iter()
        .filter(|s| s.attr_int("http.response.status_code") == Some(500))
        .collect();
    assert!(
        wrong.is_empty(),
        "a file read by a new process with a reused pid became a response:\n{}",
        describe(wrong)
    );
    session.finish();
}

/// With only the capabilities of the least-privilege DaemonSet (no CAP_SYS_ADMIN), the agent
/// loads its probes and its connection table census runs.
#[test]
fn the_census_runs_with_the_least_privilege_capabilities() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new("setpriv");
    command
        .arg("--bounding-set")
        .arg("-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search,+sys_resource")
        .arg("--")
        .arg(tracer_tests::tracer_bin())
        .args([
            "agent",
            "--port",
            "1",
            "--metrics-addr",
            &metrics.to_string(),
        ]);
    let agent = ChildGuard::spawn("tracer (least privilege)", command);
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(30)),
        "--metrics-addr {metrics} never listened\n{}",
        agent.output_report()
    );
    let page = wait_metrics(metrics, "the probes to be loaded", |page| {
        metric_or_zero(page, "tracer_kernel_optional_probes") > 0.0
    });
    assert_eq!(
        metric(&page, "tracer_kernel_census_running"),
        1.0,
        "the census opened the kernel maps without CAP_SYS_ADMIN\n{page}\n{}",
        agent.output_report()
    );
}

/// The event thread wakes up at a bounded rate, not once per record: a burst of 2000 keep-alive
/// requests (client and server traced, thousands of ring-buffer records) is read with at most one
/// wake-up per busy poll interval (4 ms) of the time it took, however slow the machine: a slow
/// burst takes longer and is allowed more wake-ups. A per-record design fails as long as records
/// arrive faster than the poll rate, which the test checks (and says so if the burst was too slow
/// to tell the designs apart). Counts against elapsed time, not timed assertions.
#[test]
fn event_thread_wakeups_stay_far_below_the_records_read() {
    const REQUESTS: u64 = 2000;
    /// The event thread's busy poll interval.
    const BUSY_POLL_MS: f64 = 4.0;
    let port = free_port();
    let nginx = Nginx::start(port);
    let (mut session, metrics) = session_with_metrics(AgentConfig::new());
    // Warm up: the agent has seen this client and server once before counting starts.
    assert_eq!(
        curl(&[&local_url(port, "/index.html?burst=warm")]).status,
        200
    );
    let before = wait_metrics(metrics, "the warm-up spans", |page| {
        metric_or_zero(page, "tracer_spans_built_total") >= 2.0
    });
    // The page's counters were snapshot at the agent's last per-second tick, up to a second ago.
    let window_start = Instant::now() - Duration::from_millis(1100);
    let url = local_url(port, &format!("/index.html?burst=[1-{REQUESTS}]"));
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--noproxy", "*", "--max-time", "120", &url])
        .stdout(std::process::Stdio::null());
    let (status, child) = run_with_timeout("curl burst", command, Duration::from_secs(150));
    assert!(
        status.success(),
        "curl burst failed ({status})\n{}\n{}",
        child.output_report(),
        nginx.output_report()
    );
    let built_before = metric(&before, "tracer_spans_built_total");
    let after = wait_metrics(metrics, "a SERVER and a CLIENT span per request", |page| {
        metric_or_zero(page, "tracer_spans_built_total") >= built_before + 2.0 * REQUESTS as f64
    });
    let window = window_start.elapsed();
    let records =
        metric(&after, "tracer_events_read_total") - metric(&before, "tracer_events_read_total");
    let wakeups = metric(&after, "tracer_event_loop_wakeups_total")
        - metric(&before, "tracer_event_loop_wakeups_total");
    assert!(
        records >= 4.0 * REQUESTS as f64,
        "at least a request and a response record per side per request: {records}"
    );
    // One wake-up per busy interval, plus the per-second tick cutting a sleep short, plus slack
    // for ring-buffer wake-ups (opens, a ring an eighth full) and epoll rounding.
    let window_ms = window.as_secs_f64() * 1000.0;
    let bound = 1.25 * window_ms / BUSY_POLL_MS + 2.0 * window.as_secs_f64() + 20.0;
    eprintln!("{wakeups} wake-ups, {records} records in {window:?} (bound {bound:.0})");
    assert!(
        wakeups <= bound,
        "{wakeups} wake-ups in {window:?} for {records} records: more than one per {BUSY_POLL_MS} ms \
         busy interval (bound {bound:.0}); the event thread must not wake per record\n{after}"
    );
    assert!(
        records >= 1.5 * bound,
        "the burst was too slow to tell a per-record wake-up design apart: {records} records in \
         {window:?} (a per-record design would stay under the bound of {bound:.0} wake-ups)"
    );
    session.finish();
}
