//! Nothing secret leaves the host. Real curl sends signed-URL query values (every listed key, in
//! odd spellings and percent-encoded), URL userinfo (in an absolute-form target and in a Host
//! header), `Authorization`, `Proxy-Authorization` and `Cookie` to a real Python server that
//! answers with `Set-Cookie`; every secret carries one marker, and no output of the real agent
//! may contain it: OTLP spans and resources, `--format json` lines, the terminal trees, and the
//! agent's own log at trace level (which also must not show the OTLP endpoint's userinfo or
//! header values). Command lines are exported only on request, and then redacted; `tracer run`
//! logs its command redacted. The OTLP exporter does not follow a redirect, so its headers never
//! reach the redirect's target.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracer_tests::metrics_client::sample;
use tracer_tests::peers::python;
use tracer_tests::process::{ChildGuard, LineWait};
use tracer_tests::query::{client_spans, describe, server_spans};
use tracer_tests::recording_endpoint::{Answer, RecordingEndpoint};
use tracer_tests::{
    AgentConfig, AgentExit, ObservedSpan, OtlpProtocol, OtlpReceiver, PythonServer, SPAN_TIMEOUT,
    TracedSession, curl, free_port, run_with_timeout, tracer_command, wait_for_port,
};

/// Every secret value contains this marker; nothing else the tests send does.
const MARK: &str = "s3kr1t";

fn secret(n: usize) -> String {
    format!("{MARK}{n:02}q")
}

/// Query keys whose values must be redacted, as a client might spell them (the last two are
/// percent-encoded `sig` and `access_token`).
const SIGNED_KEYS: [&str; 17] = [
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "x-amz-signature",
    "X-Amz-Credential",
    "X-AMZ-SECURITY-TOKEN",
    "access_token",
    "ID_TOKEN",
    "refresh_token",
    "api_key",
    "ApiKey",
    "token",
    "Password",
    "client_secret",
    "%73ig",
    "access%5Ftoken",
];

/// The signed query as sent, and as it must be exported.
fn signed_query() -> (String, String) {
    let sent: Vec<String> = SIGNED_KEYS
        .iter()
        .enumerate()
        .map(|(i, key)| format!("{key}={}", secret(i)))
        .collect();
    let redacted: Vec<String> = SIGNED_KEYS
        .iter()
        .map(|key| format!("{key}=REDACTED"))
        .collect();
    // A `;`-separated pair, and a signed URL percent-encoded inside another parameter.
    let nested = format!(
        ";token={}&next=https%3A%2F%2Fb.example%2Fk%3FX-Amz-Signature%3D{}",
        secret(47),
        secret(48)
    );
    (
        format!("{}{nested}&keep=visible", sent.join("&")),
        format!(
            "{};token=REDACTED&next=REDACTED&keep=visible",
            redacted.join("&")
        ),
    )
}

/// Three requests full of secrets; returns the exported `url.query` expected for the first.
fn send_secrets(server: &PythonServer) -> String {
    let port = server.port();
    let (query, redacted) = signed_query();
    let authorization = format!("Authorization: Bearer {}", secret(40));
    let proxy = format!("Proxy-Authorization: Basic {}", secret(41));
    let cookie = format!("Cookie: session={}", secret(42));
    let host = format!("Host: user:{}@127.0.0.1:{port}", secret(43));
    let url = server.url(&format!("/ok?{query}"));
    let run = curl(&[
        "-H",
        &authorization,
        "-H",
        &proxy,
        "-H",
        &cookie,
        "-H",
        &host,
        &url,
    ]);
    assert_eq!(run.status, 200);
    let set_cookie = format!("X-Test-Set-Cookie: id={}; HttpOnly", secret(44));
    assert_eq!(
        curl(&["-H", &set_cookie, &server.url("/set-cookie")]).status,
        200
    );
    let absolute = format!(
        "http://user:{}@127.0.0.1:{port}/ok?token={}",
        secret(45),
        secret(46)
    );
    assert_eq!(
        curl(&["--request-target", &absolute, &server.url("/ok")]).status,
        200
    );
    redacted
}

/// Panics, showing where, if `text` (one output of the agent) contains a secret.
fn assert_no_secret(output: &str, text: &str) {
    if let Some(at) = text.find(MARK) {
        let from = text.floor_char_boundary(at.saturating_sub(300));
        let to = text.ceil_char_boundary((at + 100).min(text.len()));
        panic!(
            "a secret reached the agent's {output}:\n...{}...",
            text.get(from..to).unwrap_or_default()
        );
    }
}

/// The three exchanges arrived as expected, with the secrets redacted in place.
fn assert_redacted_spans(spans: &[ObservedSpan], port: u16, redacted_query: &str) {
    let servers = server_spans(spans, port);
    let clients = client_spans(spans, port);
    assert_eq!(servers.len(), 3, "SERVER spans:\n{}", describe(spans));
    assert_eq!(clients.len(), 3, "CLIENT spans:\n{}", describe(spans));
    assert!(
        servers
            .iter()
            .any(|s| s.attr_str("url.query") == Some(redacted_query)),
        "no SERVER span with url.query {redacted_query}:\n{}",
        describe(spans)
    );
    assert!(
        servers
            .iter()
            .any(|s| s.attr_str("url.query") == Some("token=REDACTED")),
        "absolute-form request's query not redacted in place:\n{}",
        describe(spans)
    );
    let full = |url: &str| clients.iter().any(|s| s.attr_str("url.full") == Some(url));
    let host_form = format!("http://127.0.0.1:{port}/ok?{redacted_query}");
    assert!(
        full(&host_form),
        "no CLIENT span with url.full {host_form} (Host userinfo dropped):\n{}",
        describe(spans)
    );
    let absolute = format!("http://REDACTED:REDACTED@127.0.0.1:{port}/ok?token=REDACTED");
    assert!(
        full(&absolute),
        "no CLIENT span with url.full {absolute}:\n{}",
        describe(spans)
    );
}

#[test]
fn secrets_never_reach_otlp_http_or_the_agent_log() {
    assert_otlp_export_keeps_secrets(OtlpProtocol::HttpProtobuf);
}

#[test]
fn secrets_never_reach_otlp_grpc_or_the_agent_log() {
    assert_otlp_export_keeps_secrets(OtlpProtocol::Grpc);
}

/// Secret traffic traced while exporting over `protocol` to an endpoint with userinfo and a
/// secret header, with the agent logging at trace level.
fn assert_otlp_export_keeps_secrets(protocol: OtlpProtocol) {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-secrets-otlp");
    let receiver = OtlpReceiver::start_or_panic(protocol);
    let endpoint = format!("http://collector:{}@{}", secret(60), receiver.addr());
    let config = AgentConfig::new()
        .ports(&[port])
        .export_to(&receiver)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("x-api-key={},x-tenant=t1", secret(61)),
        )
        .env("TRACER_LOG", "trace");
    let agent = config.start();
    let redacted = send_secrets(&server);
    let arrived = receiver.wait_for(SPAN_TIMEOUT, |spans| {
        server_spans(spans, port).len() >= 3 && client_spans(spans, port).len() >= 3
    });
    let exit = agent.stop();
    if let Err(timed_out) = arrived {
        panic!(
            "{timed_out}\n{}\n--- agent stderr ---\n{}",
            describe(&receiver.spans()),
            exit.stderr
        );
    }
    exit.assert_success();
    let spans = receiver.spans();
    assert_no_secret("OTLP export", &format!("{spans:?}"));
    assert_no_secret("log (TRACER_LOG=trace)", &exit.stderr);
    assert_no_secret("stdout", &exit.stdout.join("\n"));
    assert_redacted_spans(&spans, port, &redacted);
    for span in client_spans(&spans, port) {
        // Both are read from /proc/<pid>, gone once curl has exited (a race with the agent's
        // lookup): when present, they are curl's.
        assert!(
            span.resource_str("process.executable.name")
                .is_none_or(|n| n == "curl"),
            "{span:?}"
        );
        assert!(
            span.resource_str("process.executable.path")
                .is_none_or(|p| p.ends_with("/curl")),
            "{span:?}"
        );
        assert_eq!(
            span.resource_str("process.command_line"),
            None,
            "command lines are not exported by default"
        );
    }
}

#[test]
fn secrets_never_reach_json_lines_or_the_agent_log() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-secrets-json");
    let mut agent = AgentConfig::new()
        .json()
        .ports(&[port])
        .env("TRACER_LOG", "trace")
        .start();
    let redacted = send_secrets(&server);
    let deadline = Instant::now() + SPAN_TIMEOUT;
    while !(server_spans(&agent.json_spans(), port).len() >= 3
        && client_spans(&agent.json_spans(), port).len() >= 3)
    {
        agent.assert_running();
        assert!(
            Instant::now() < deadline,
            "no 6 JSON spans within {SPAN_TIMEOUT:?}:\n{}",
            describe(&agent.json_spans())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = agent.stop();
    exit.assert_success();
    assert_no_secret("JSON lines", &exit.stdout.join("\n"));
    assert_no_secret("log (TRACER_LOG=trace)", &exit.stderr);
    assert_redacted_spans(&exit.json_spans(), port, &redacted);
}

#[test]
fn secrets_never_reach_the_terminal() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-secrets-terminal");
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .env("NO_COLOR", "1")
        .start();
    send_secrets(&server);
    let absolute = format!("http://REDACTED:REDACTED@127.0.0.1:{port}/ok?token=REDACTED");
    let deadline = Instant::now() + SPAN_TIMEOUT;
    let printed = |agent: &tracer_tests::Agent| {
        let text = agent.stdout_lines().join("\n");
        text.contains("/set-cookie")
            && text.contains(&absolute)
            && text.contains("?AWSAccessKeyId=REDACTED&Signature=REDACTED")
    };
    while !printed(&agent) {
        agent.assert_running();
        assert!(
            Instant::now() < deadline,
            "the terminal did not show the three requests within {SPAN_TIMEOUT:?}:\n{}",
            agent.stdout_lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit: AgentExit = agent.stop();
    exit.assert_success();
    assert_no_secret("terminal output", &exit.stdout.join("\n"));
    assert_no_secret("log", &exit.stderr);
}

#[test]
fn command_lines_are_exported_only_on_request_and_redacted() {
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-secrets-cmdline");
    let mut session = TracedSession::start_with(
        OtlpProtocol::HttpProtobuf,
        AgentConfig::new()
            .ports(&[port])
            .arg("--export-command-line"),
    );
    // A Python client that stays alive (so its /proc entry stays readable) until this test has
    // seen its span and ends it by pid: no race with the agent's lookup.
    const CLIENT: &str = "import http.client as h,sys,time,urllib.parse as p;u=p.urlsplit(sys.argv[-1]);\
        c=h.HTTPConnection(u.hostname,u.port);c.request('GET',u.path+'?'+u.query);\
        r=c.getresponse();r.read();c.close();print(r.status,flush=True);time.sleep(120)";
    let header = format!("X-Api-Key: {}", secret(71));
    let url = format!(
        "http://user:{}@127.0.0.1:{port}/ok?sig={}",
        secret(72),
        secret(73)
    );
    let mut command = std::process::Command::new(python());
    command
        .args(["-c", CLIENT, "--api-key"])
        .arg(secret(70))
        .args(["-H", &header, &url]);
    let mut client = ChildGuard::spawn("python client", command);
    let answered = client
        .stdout()
        .wait_for_line(SPAN_TIMEOUT, |line| line.trim() == "200");
    assert!(
        matches!(answered, LineWait::Found(_)),
        "the client got no 200 ({answered:?})\n{}",
        client.output_report()
    );
    let spans = session.wait_for("the client's CLIENT span", |spans| {
        !client_spans(spans, port).is_empty() && !server_spans(spans, port).is_empty()
    });
    client.terminate(Duration::from_secs(5));
    let exit = session.stop_agent();
    exit.assert_success();
    assert_no_secret("OTLP export", &format!("{spans:?}"));
    let client = client_spans(&spans, port)
        .into_iter()
        .next()
        .expect("waited for it");
    let line = client
        .resource_str("process.command_line")
        .unwrap_or_else(|| panic!("--export-command-line exports it: {client:?}"));
    let expected_tail = format!(
        "--api-key REDACTED -H X-Api-Key: REDACTED \
         http://REDACTED:REDACTED@127.0.0.1:{port}/ok?sig=REDACTED"
    );
    assert!(
        line.contains(" -c import http.client") && line.ends_with(&expected_tail),
        "command line {line:?} should end with {expected_tail:?}"
    );
    let server_span = server_spans(&spans, port)
        .into_iter()
        .next()
        .expect("waited for it");
    let server_line = server_span
        .resource_str("process.command_line")
        .unwrap_or_default();
    assert!(
        server_line.contains(&format!("http_server.py --port {port}")),
        "harmless arguments are kept: {server_line:?}"
    );
}

#[test]
fn exporter_headers_never_follow_a_redirect() {
    let target = RecordingEndpoint::start(Answer::Ok);
    let redirector =
        RecordingEndpoint::start(Answer::Redirect(format!("{}/v1/traces", target.base_url())));
    let port = free_port();
    let server = PythonServer::start(port, "e2e-secrets-redirect");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api_key = secret(80);
    let mut agent = AgentConfig::new()
        .ports(&[port])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", redirector.base_url())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_HEADERS", format!("x-api-key={api_key}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .start();
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr {metrics} never accepted connections\n{}",
        agent.stderr_text()
    );
    assert_eq!(curl(&[&server.url("/ok")]).status, 200);

    // The export reached the redirector with its key, and the agent counted it as failed.
    let asked = redirector.wait_for_requests(1, SPAN_TIMEOUT);
    let first = asked.first().unwrap_or_else(|| {
        panic!(
            "no export reached the redirecting endpoint\n{}",
            agent.stderr_text()
        )
    });
    assert_eq!(first.header("x-api-key"), Some(api_key.as_str()));
    let text = agent.wait_metrics("the redirected export to finish", |text| {
        let failed = sample(
            text,
            "tracer_spans_dropped_total",
            "reason=\"export_failed\"",
        );
        let exported = sample(text, "tracer_spans_exported_total", "");
        failed.is_some_and(|v| v >= 1.0) || exported.is_some_and(|v| v >= 1.0)
    });
    let exit = agent.stop();
    exit.assert_success();
    let reached = target.requests();
    assert!(
        reached.is_empty(),
        "the exporter followed the redirect: {reached:?}"
    );
    assert_eq!(
        sample(&text, "tracer_spans_exported_total", ""),
        Some(0.0),
        "a redirect is a failed export, counted as such:\n{text}"
    );
    assert_no_secret("log", &exit.stderr);
}

#[test]
fn tracer_run_logs_its_command_without_secrets() {
    let port = free_port();
    let server = PythonServer::start(port, "e2e-secrets-run");
    let bearer = secret(90);
    let url = server.url(&format!("/ok?token={}&page=1", secret(91)));
    let mut command = tracer_command();
    command.args([
        "run",
        "--format",
        "json",
        "--",
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-o",
        "/dev/null",
        "--oauth2-bearer",
        &bearer,
        &url,
    ]);
    let (status, run) = run_with_timeout("tracer run", command, Duration::from_secs(120));
    assert!(
        status.success(),
        "tracer run failed\n{}",
        run.output_report()
    );
    let stderr = run.stderr().text();
    let logged = stderr
        .lines()
        .find(|line| line.contains("tracing command"))
        .unwrap_or_else(|| panic!("no `tracing command` log line:\n{stderr}"));
    assert!(
        logged.contains("--oauth2-bearer REDACTED") && logged.contains("token=REDACTED&page=1"),
        "{logged}"
    );
    assert_no_secret("log", &stderr);
    let stdout = run.stdout().text();
    assert!(
        stdout.contains("token=REDACTED&page=1"),
        "the run's CLIENT span is printed, redacted:\n{stdout}"
    );
    assert_no_secret("JSON lines", &stdout);
}
