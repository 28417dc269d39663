//! The metrics port of the real agent stays useful under idle connections: with 64 connections
//! held open without a byte sent, `/healthz` and `/readyz` still answer within a second, and a
//! real scraper (curl, as Prometheus would) still reads `/metrics`.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::metrics_client::{http_get, sample};
use tracer_tests::{AgentConfig, free_port, run_with_timeout, wait_for_port};

/// Idle connections held open while the health endpoints are asked.
const IDLE_CONNECTIONS: usize = 64;
/// How long a health check may take to be answered.
const HEALTH_DEADLINE: Duration = Duration::from_secs(1);

#[test]
fn health_answers_within_a_second_beside_64_idle_connections() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // A port nothing uses: the agent traces nothing, only its metrics port is exercised.
    let agent = AgentConfig::new()
        .ports(&[free_port()])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .start();
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr {metrics} never accepted connections\n{}",
        agent.stderr_text()
    );
    // Ready follows "probes attached" by a moment: wait for that state, unhurried.
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(metrics, "/readyz", Duration::from_secs(5))
        .map(|a| a.status)
        .ok()
        != Some(200)
    {
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 200\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|i| {
            TcpStream::connect_timeout(&metrics, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();

    for round in 0..3 {
        for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
            let answer = http_get(metrics, path, HEALTH_DEADLINE).unwrap_or_else(|e| {
                panic!(
                    "round {round}: {path} with {IDLE_CONNECTIONS} idle connections open: {e}\n{}",
                    agent.stderr_text()
                )
            });
            assert_eq!(answer.status, 200, "{path}: {answer:?}");
            assert_eq!(answer.body, body, "{path}");
        }
    }

    // A real scraper, as Prometheus asks (OpenMetrics first): the page is OpenMetrics text.
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
         version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "-w",
        "\n%{http_code} %{content_type}",
        &format!("http://{metrics}/metrics"),
    ]);
    let (status, curl) = run_with_timeout("curl /metrics", command, Duration::from_secs(30));
    assert!(status.success(), "curl failed\n{}", curl.output_report());
    let output = curl.stdout().text();
    let (body, trailer) = output
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no status line from curl: {output}"));
    assert_eq!(
        trailer.trim(),
        "200 application/openmetrics-text; version=1.0.0; charset=utf-8",
        "{output}"
    );
    assert_eq!(sample(body, "tracer_ready", ""), Some(1.0), "{body}");
    assert_eq!(
        sample(
            body,
            "tracer_metrics_requests_rejected_total",
            "reason=\"busy\""
        ),
        Some(0.0),
        "no connection was refused as busy:\n{body}"
    );
    drop(idle);
    agent.stop().assert_success();
}
