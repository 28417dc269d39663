//! A process's identity survives pid reuse: a second process that gets the pid of an earlier
//! traced process (forced through /proc/sys/kernel/ns_last_pid) is reported with its own
//! `OTEL_SERVICE_NAME`, not the cached resource of the first.

use std::process::Command;
use std::time::Duration;

use tracer_tests::query::describe;
use tracer_tests::{
    ObservedKind, OtlpProtocol, PythonServer, TracedSession, free_port, local_url, run_with_timeout,
};

const FIRST: &str = "first-life";
const SECOND: &str = "second-life";
/// Attempts at landing on the wanted pid (other processes on the host may take it first).
const REUSE_ATTEMPTS: u32 = 40;
const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// curl with `OTEL_SERVICE_NAME=service`, to a slow endpoint so that it still runs when the
/// agent reads its connection. Returns curl's pid.
fn traced_curl(url: &str, service: &str) -> u32 {
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
            url,
        ])
        .env("OTEL_SERVICE_NAME", service);
    let (status, child) = run_with_timeout("curl", command, Duration::from_secs(60));
    assert!(status.success(), "curl failed\n{}", child.output_report());
    child.pid()
}

#[test]
fn a_reused_pid_gets_the_new_process_resource() {
    let server = PythonServer::start(free_port(), "pid-reuse-server");
    let port = server.port();
    let mut session = TracedSession::start(OtlpProtocol::Grpc, &[port]);
    let url = local_url(port, "/slow?ms=300");
    let first_pid = traced_curl(&url, FIRST);
    session.wait_for("the first process's CLIENT span", |spans| {
        spans
            .iter()
            .any(|s| s.kind == ObservedKind::Client && s.service_name() == Some(FIRST))
    });

    // Land a new curl on the same pid: the next pid the kernel hands out is ns_last_pid + 1.
    let mut second_pid = None;
    for _ in 0..REUSE_ATTEMPTS {
        std::fs::write(NS_LAST_PID, (first_pid - 1).to_string())
            .unwrap_or_else(|e| panic!("writing {NS_LAST_PID} (needs root): {e}"));
        let pid = traced_curl(&url, SECOND);
        if pid == first_pid {
            second_pid = Some(pid);
            break;
        }
    }
    let Some(pid) = second_pid else {
        panic!("could not get pid {first_pid} again in {REUSE_ATTEMPTS} attempts");
    };

    let spans = session.wait_for(
        "the second process's CLIENT span on the reused pid",
        |spans| {
            spans.iter().any(|s| {
                s.kind == ObservedKind::Client
                    && s.resource_int("process.pid") == Some(i64::from(pid))
                    && s.service_name() == Some(SECOND)
            })
        },
    );
    let on_pid: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.kind == ObservedKind::Client && s.resource_int("process.pid") == Some(i64::from(pid))
        })
        .collect();
    let first = on_pid
        .iter()
        .filter(|s| s.service_name() == Some(FIRST))
        .count();
    assert_eq!(
        first,
        1,
        "only the first process's own span may carry {FIRST} on pid {pid}:\n{}",
        describe(on_pid.iter().copied())
    );
}
