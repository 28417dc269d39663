//! The command line of the real binary: `--format json` output, `tracer run -- CMD` (exit
//! status, spans of the command and its children only), `--port` and `--pid` filters, and the
//! flush of pending spans on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::metrics_client::sample;
use tracer_tests::query::{
    assert_attrs, assert_count, at_least, client_spans, describe, is_valid_id, server_spans,
    the_only, touching_port, with_attr,
};
use tracer_tests::{
    AgentConfig, AttrValue, ObservedKind, ObservedSpan, ObservedStatus, OtlpProtocol, OtlpReceiver,
    PythonServer, SPAN_TIMEOUT, TracedSession, curl, free_port, run_with_timeout, tracer_command,
};

/// How long `tracer run` may take, probes included.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn json_format_prints_one_object_per_span() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-cli-json");
    let mut agent = AgentConfig::new().json().ports(&[port]).start();
    assert_eq!(
        curl(&["-A", "tracer-e2e/json", &server.url("/status/503?fmt=json")]).status,
        503
    );
    let deadline = Instant::now() + SPAN_TIMEOUT;
    while !at_least(port, 1, 1)(&agent.json_spans()) {
        agent.assert_running();
        if Instant::now() >= deadline {
            panic!(
                "no JSON spans for port {port} within {SPAN_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                agent.stdout_lines().join("\n"),
                agent.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = agent.stop();
    exit.assert_success();
    let spans = exit.json_spans();
    assert_count(
        &spans.iter().collect::<Vec<_>>(),
        2,
        "JSON span lines",
        &spans,
    );
    let server_span = the_only(server_spans(&spans, port), "SERVER span", &spans);
    let client_span = the_only(client_spans(&spans, port), "CLIENT span", &spans);
    assert_eq!(server_span.kind, ObservedKind::Server);
    assert_eq!(client_span.kind, ObservedKind::Client);
    for span in [server_span, client_span] {
        assert!(
            is_valid_id(&span.trace_id, 32) && is_valid_id(&span.span_id, 16),
            "{}",
            span.summary()
        );
        assert_eq!(span.name, "GET");
        assert_eq!(
            span.status,
            ObservedStatus::Error,
            "503 is an error on both sides: {}",
            span.summary()
        );
        assert_attrs(
            span,
            &[
                ("http.response.status_code", AttrValue::Int(503)),
                ("error.type", AttrValue::from("503")),
            ],
        );
    }
    assert_eq!(
        client_span.parent_span_id, None,
        "JSON null parent for a root span"
    );
    assert_attrs(
        server_span,
        &[
            ("url.path", AttrValue::from("/status/503")),
            ("user_agent.original", AttrValue::from("tracer-e2e/json")),
        ],
    );
    assert_eq!(server_span.service_name(), Some("e2e-cli-json"));
    assert_eq!(
        server_span.resource_int("process.pid"),
        Some(i64::from(server.pid()))
    );
    assert_eq!(client_span.service_name(), Some("curl"));
    // stderr is a pipe here, as under `kubectl logs` or journald: plain text, no colour codes.
    assert!(!exit.stderr.is_empty(), "the agent logged nothing");
    assert!(
        !exit.stderr.contains('\x1b'),
        "ANSI escapes in a non-terminal log:\n{}",
        exit.stderr
    );
}

#[test]
fn run_exits_with_the_command_status() {
    for (script, expected) in [("exit 0", 0), ("exit 7", 7), ("kill -TERM $$", 128 + 15)] {
        let mut command = tracer_command();
        command.args(["run", "--format", "json", "--", "sh", "-c", script]);
        let (status, child) = run_with_timeout("tracer run", command, RUN_TIMEOUT);
        assert_eq!(
            status.code(),
            Some(expected),
            "`tracer run -- sh -c {script:?}`\n{}",
            child.output_report()
        );
    }
}

/// The eBPF programs' own diagnostics reach the agent's log (target `tracer::kernel`) only when
/// `--kernel-log-level` asks for them: here the fork of a traced command's child, logged by the
/// kernel when the child joins the pid filter. By default the statements are not even loaded.
#[test]
fn kernel_diagnostics_are_forwarded_only_when_asked_for() {
    let script = "sleep 0.2 & wait";
    let run = |extra: &[&str]| {
        let mut command = tracer_command();
        command
            .env("RUST_LOG", "tracer=debug")
            .env("NO_COLOR", "1")
            .arg("run")
            .args(extra)
            .args(["--format", "json", "--", "sh", "-c", script]);
        let (status, child) = run_with_timeout("tracer run", command, RUN_TIMEOUT);
        assert_eq!(status.code(), Some(0), "{}", child.output_report());
        child.stderr().text()
    };
    let asked = run(&["--kernel-log-level", "debug"]);
    assert!(
        asked
            .lines()
            .any(|l| l.contains("tracer::kernel") && l.contains("following child")),
        "no kernel diagnostic about the forked child:\n{asked}"
    );
    let default = run(&[]);
    assert!(
        !default.contains("tracer::kernel"),
        "kernel diagnostics without --kernel-log-level:\n{default}"
    );
}

/// A command that cannot be started fails `tracer run` like a shell: 127 when it does not exist
/// (1 for other errors), with one line saying what could not run.
#[test]
fn run_fails_when_the_command_cannot_start() {
    let missing = "tracer-e2e-no-such-binary";
    let mut command = tracer_command();
    command.args(["run", "--format", "json", "--", missing, "arg"]);
    let (status, child) = run_with_timeout("tracer run", command, RUN_TIMEOUT);
    assert_eq!(status.code(), Some(127), "{}", child.output_report());
    let stderr = child.stderr().text();
    let line = stderr
        .lines()
        .find(|l| l.contains("cannot run") && l.contains(missing))
        .unwrap_or_else(|| panic!("no error line naming {missing}:\n{stderr}"));
    assert!(line.starts_with("tracer: error:"), "{line}");
}

#[test]
fn run_traces_the_command_and_its_children_only() {
    let port = free_port();
    // Not a child of `tracer run`: its SERVER spans must not appear.
    let server = PythonServer::start(port, "e2e-cli-run-untraced");
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
    let script = format!(
        "curl -sS --noproxy '*' -o /dev/null {ok} && curl -sS --noproxy '*' -o /dev/null {missing}; exit 3",
        ok = server.url("/ok?run=1"),
        missing = server.url("/status/404?run=2"),
    );
    let mut command = tracer_command();
    command
        .args([
            "run",
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-protocol",
            "grpc",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let (status, child) = run_with_timeout("tracer run", command, RUN_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(3),
        "exit status of the command\n{}",
        child.output_report()
    );
    // `tracer run` flushes before exiting: everything is already at the receiver.
    let spans = receiver.spans();
    let report = || format!("{}\n{}", describe(&spans), child.output_report());
    assert!(
        server_spans(&spans, port).is_empty(),
        "the server is not a child of `tracer run`:\n{}",
        report()
    );
    let clients = client_spans(&spans, port);
    assert_eq!(
        clients.len(),
        2,
        "one CLIENT span per curl child:\n{}",
        report()
    );
    for span in &clients {
        assert_eq!(span.service_name(), Some("curl"), "{}", span.summary());
    }
    let ok = the_only(
        with_attr(clients.iter().copied(), "url.full", server.url("/ok?run=1")),
        "CLIENT /ok",
        &spans,
    );
    assert_eq!(ok.attr_int("http.response.status_code"), Some(200));
    assert_eq!(ok.status, ObservedStatus::Unset);
    let missing = the_only(
        with_attr(
            clients.iter().copied(),
            "url.full",
            server.url("/status/404?run=2"),
        ),
        "CLIENT /404",
        &spans,
    );
    assert_eq!(missing.attr_int("http.response.status_code"), Some(404));
    assert_eq!(missing.status, ObservedStatus::Error);
    assert_ne!(
        ok.resource_int("process.pid"),
        missing.resource_int("process.pid"),
        "two curl processes"
    );
}

#[test]
fn port_filter_excludes_other_traffic() {
    let traced_port = free_port();
    let other_port = free_port();
    let traced = PythonServer::start(traced_port, "e2e-cli-port-traced");
    let other = PythonServer::start(other_port, "e2e-cli-port-other");
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[traced_port]);
    assert_eq!(curl(&[&other.url("/ok?filtered=out")]).status, 200);
    assert_eq!(curl(&[&traced.url("/ok?filtered=in")]).status, 200);
    assert_eq!(curl(&[&other.url("/status/500?filtered=out")]).status, 500);
    session.wait_for("the traced port's spans", at_least(traced_port, 1, 1));
    let spans = session.finish();
    assert!(
        touching_port(&spans, other_port).is_empty(),
        "traffic to the other port leaked:\n{}",
        describe(&spans)
    );
    assert_count(
        &spans.iter().collect::<Vec<_>>(),
        2,
        "spans (one exchange on the traced port)",
        &spans,
    );
    assert_eq!(
        the_only(server_spans(&spans, traced_port), "SERVER span", &spans).attr_str("url.query"),
        Some("filtered=in")
    );
}

#[test]
fn pid_filter_traces_only_that_process() {
    let traced_port = free_port();
    let other_port = free_port();
    let traced = PythonServer::start(traced_port, "e2e-cli-pid-traced");
    let other = PythonServer::start(other_port, "e2e-cli-pid-other");
    let mut session =
        TracedSession::start_with(OtlpProtocol::Grpc, AgentConfig::new().pid(traced.pid()));
    assert_eq!(curl(&[&other.url("/ok")]).status, 200);
    assert_eq!(curl(&[&traced.url("/ok?pid=1")]).status, 200);
    session.wait_for("the traced server's span", |spans: &[ObservedSpan]| {
        !server_spans(spans, traced_port).is_empty()
    });
    let spans = session.finish();
    // curl is another process: only the server's side of the exchange is traced.
    assert_count(
        &spans.iter().collect::<Vec<_>>(),
        1,
        "spans (the traced process's only)",
        &spans,
    );
    let span = the_only(server_spans(&spans, traced_port), "SERVER span", &spans);
    assert_eq!(
        span.resource_int("process.pid"),
        Some(i64::from(traced.pid()))
    );
    assert_eq!(span.attr_str("url.query"), Some("pid=1"));
}

#[test]
fn sigterm_flushes_spans_still_waiting_for_the_batch() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-cli-sigterm");
    let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::Grpc);
    // A batch delay far longer than the test: only the shutdown flush can deliver the spans.
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .export_to(&receiver)
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .start();
    assert_eq!(curl(&[&server.url("/ok?flush=1")]).status, 200);
    // Both spans are in the export queue: from here only the batch delay or SIGTERM sends them.
    agent.wait_metrics("both spans handed to the exporter", |page| {
        sample(page, "tracer_spans_enqueued_total", "").is_some_and(|n| n >= 2.0)
    });
    let early = receiver.spans();
    assert!(
        early.is_empty(),
        "spans exported before the batch delay or SIGTERM:\n{}",
        describe(&early)
    );
    let exit = agent.stop();
    exit.assert_success();
    let spans = receiver.spans();
    assert_count(
        &spans.iter().collect::<Vec<_>>(),
        2,
        "spans flushed on SIGTERM",
        &spans,
    );
    the_only(server_spans(&spans, port), "SERVER span", &spans);
    the_only(client_spans(&spans, port), "CLIENT span", &spans);
}

#[test]
fn help_lists_the_subcommands() {
    let mut command = tracer_command();
    command.arg("--help");
    let (status, child) = run_with_timeout("tracer --help", command, Duration::from_secs(30));
    assert!(status.success(), "{}", child.output_report());
    let text = child.stdout().text();
    for word in ["agent", "run"] {
        assert!(
            text.contains(word),
            "`tracer --help` does not mention {word}:\n{text}"
        );
    }
    let mut command = Command::new(tracer_tests::tracer_bin());
    command.args(["agent", "--format", "yaml"]);
    let (status, child) = run_with_timeout(
        "tracer agent --format yaml",
        command,
        Duration::from_secs(30),
    );
    assert!(
        !status.success(),
        "an unknown format must be refused\n{}",
        child.output_report()
    );
}
