//! The kernel's "the one request this thread serves" rule of `--context-propagation
//! tcp-options` (a CLIENT request's parent decided in the kernel, carried to the next host in
//! the option) never names a request the thread is not serving. One thread
//! (`interleave_hub.py`) first serves requests one at a time (the kernel verifies it serves one
//! request per thread and starts deciding parents), then reads a cleartext request and, before
//! answering it, serves a TLS request whose backend call it makes: that call must not get the
//! cleartext request's span as parent (a missing link is acceptable, a wrong one is not), and
//! the kernel stops deciding for the process.

use std::process::Command;
use std::time::Duration;

use tracer_tests::peers::{peer_script, python, self_signed};
use tracer_tests::process::LineWait;
use tracer_tests::query::describe;
use tracer_tests::{
    AgentConfig, ChildGuard, ObservedKind, ObservedSpan, OtlpProtocol, OtlpReceiver, PythonServer,
    SPAN_TIMEOUT, ScratchDir, free_port, run_with_timeout,
};

/// Requests served one at a time first: more than the kernel's verification needs
/// (`tracer_common::propagation::DEDICATED_VERIFIED` - `DEDICATED_CANDIDATE` = 4).
const WARM_UP: u32 = 6;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const DRIVE_TIMEOUT: Duration = Duration::from_secs(60);

fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The hub's CLIENT span (its backend call) for request `id`.
fn backend_call(spans: &[ObservedSpan], id: u32) -> Option<&ObservedSpan> {
    let want = format!("/ok?id={id}");
    spans.iter().find(|s| {
        s.kind == ObservedKind::Client && s.attr_str("url.full").is_some_and(|u| u.ends_with(&want))
    })
}

/// The hub's SERVER span of `path` with query `id=ID`.
fn hub_server<'a>(spans: &'a [ObservedSpan], path: &str, id: u32) -> Option<&'a ObservedSpan> {
    let want = format!("id={id}");
    spans.iter().find(|s| {
        s.kind == ObservedKind::Server
            && s.attr_str("url.path") == Some(path)
            && s.attr_str("url.query") == Some(want.as_str())
    })
}

/// The hub, its backend, and one agent with propagation on for both.
struct Setup {
    _dir: ScratchDir,
    _leaf: PythonServer,
    hub: ChildGuard,
    receiver: OtlpReceiver,
    agent: tracer_tests::Agent,
    port: u16,
    tls_port: u16,
}

impl Setup {
    fn start() -> Setup {
        let dir = ScratchDir::new("thread-rule");
        let (cert, key) = self_signed(dir.path());
        let leaf = PythonServer::start(free_port(), "leaf");
        let (port, tls_port) = (free_port(), free_port());
        let mut command = Command::new(python());
        command
            .arg("-u")
            .arg(peer_script("interleave_hub.py"))
            .arg("serve")
            .args(["--port", &port.to_string()])
            .args(["--tls-port", &tls_port.to_string()])
            .args(["--backend-port", &leaf.port().to_string()])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key);
        let hub = ChildGuard::spawn("interleave_hub.py", command);
        wait_listening(&hub, 1);
        let receiver = OtlpReceiver::start_or_panic(OtlpProtocol::HttpProtobuf);
        let mut agent = AgentConfig::new()
            .pid(hub.pid())
            .pid(leaf.pid())
            .export_to(&receiver)
            .arg("--context-propagation")
            .arg("tcp-options")
            .start();
        agent.wait_metrics("propagation active", |m| {
            metric(m, "tracer_context_propagation_active ") == 1
        });
        Setup {
            _dir: dir,
            _leaf: leaf,
            hub,
            receiver,
            agent,
            port,
            tls_port,
        }
    }

    /// One GET `path` through the hub.
    fn get(&self, path: &str) {
        let mut command = Command::new(python());
        command
            .arg(peer_script("interleave_hub.py"))
            .arg("get")
            .args(["--port", &self.port.to_string()])
            .args(["--path", path]);
        let (status, child) = run_with_timeout("interleave_hub.py get", command, DRIVE_TIMEOUT);
        assert!(
            status.success(),
            "GET {path} failed\n{}\n{}",
            child.output_report(),
            self.hub.output_report()
        );
    }

    fn client_contexts(&mut self, outcome: &str) -> u64 {
        metric(
            &self.agent.wait_settled(),
            &format!("tracer_kernel_client_contexts_total{{outcome=\"{outcome}\"}} "),
        )
    }
}

/// Waits until the hub has printed `listening` `times` times (once per program image).
fn wait_listening(hub: &ChildGuard, times: usize) {
    let mut seen = 0;
    let found = hub.stdout().wait_for_line(START_TIMEOUT, |line| {
        seen += usize::from(line == "listening");
        seen >= times
    });
    assert!(
        matches!(found, LineWait::Found(_)),
        "interleave_hub.py did not listen (image {times})\n{}",
        hub.output_report()
    );
}

/// A process that exec()s is another program: what the kernel verified of the old one (its
/// threads serving one request at a time) must not carry over. The hub is verified (its
/// backend calls get their parent from the kernel), exec()s itself, and its next backend call
/// is left to userspace until the new image has been verified in turn.
#[test]
fn exec_clears_what_the_kernel_verified_of_the_process() {
    let mut setup = Setup::start();
    for id in 100..100 + WARM_UP {
        setup.get(&format!("/fanout?id={id}"));
    }
    let linked = setup.client_contexts("linked");
    assert!(
        linked >= 1,
        "the kernel decided no CLIENT parent during the warm-up: the test proves nothing\n{}",
        setup.agent.stderr_text()
    );
    setup.get("/exec");
    wait_listening(&setup.hub, 2);
    let undecided = setup.client_contexts("undecided");
    setup.get("/fanout?id=200");
    setup
        .receiver
        .wait_for(SPAN_TIMEOUT, |s| backend_call(s, 200).is_some())
        .unwrap_or_else(|e| panic!("spans missing: {e:?}\n{}", setup.agent.stderr_text()));
    assert_eq!(
        setup.client_contexts("linked"),
        linked,
        "the kernel still decided the parent for the exec'd program (the old image's mark)"
    );
    assert!(
        setup.client_contexts("undecided") > undecided,
        "the exec'd program's backend call was not left to userspace"
    );
}

#[test]
fn a_thread_leaving_a_request_for_another_connection_gives_no_wrong_parent() {
    let mut setup = Setup::start();
    let mut drive = Command::new(python());
    drive
        .arg(peer_script("interleave_hub.py"))
        .arg("drive")
        .args(["--port", &setup.port.to_string()])
        .args(["--tls-port", &setup.tls_port.to_string()])
        .args(["--warm-up", &WARM_UP.to_string()]);
    let (status, driver) = run_with_timeout("interleave_hub.py drive", drive, DRIVE_TIMEOUT);
    assert!(
        status.success(),
        "the driver failed\n{}\n{}",
        driver.output_report(),
        setup.hub.output_report()
    );
    let (receiver, agent) = (&setup.receiver, &mut setup.agent);

    let last_warm_up = 100 + WARM_UP - 1;
    let spans = receiver
        .wait_for(SPAN_TIMEOUT, |s| {
            backend_call(s, 2).is_some()
                && hub_server(s, "/hold", 1).is_some()
                && backend_call(s, last_warm_up).is_some()
                && hub_server(s, "/fanout", last_warm_up).is_some()
        })
        .unwrap_or_else(|e| panic!("spans missing: {e:?}\n{}", agent.stderr_text()));
    let metrics = agent.wait_settled();

    // The rule was in force: the kernel decided the parent of warm-up calls.
    let decided = metric(
        &metrics,
        "tracer_kernel_client_contexts_total{outcome=\"linked\"} ",
    );
    assert!(
        decided >= 1,
        "the kernel decided no CLIENT parent during the warm-up: the test proves nothing\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("kernel_") || l.contains("context"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (warm_server, warm_call) = (
        hub_server(&spans, "/fanout", last_warm_up).expect("waited for"),
        backend_call(&spans, last_warm_up).expect("waited for"),
    );
    assert_eq!(
        warm_call.parent_span_id.as_deref(),
        Some(warm_server.span_id.as_str()),
        "a warm-up call is a child of its request\n{}",
        describe([warm_server, warm_call])
    );

    let held = hub_server(&spans, "/hold", 1).expect("waited for");
    let call = backend_call(&spans, 2).expect("waited for");
    assert_ne!(
        call.parent_span_id.as_deref(),
        Some(held.span_id.as_str()),
        "the TLS request's backend call got the held cleartext request as parent (wrong link)\n{}",
        describe([held, call])
    );
    assert_ne!(
        call.trace_id,
        held.trace_id,
        "the TLS request's backend call is in the held request's trace\n{}",
        describe([held, call])
    );
    assert!(
        metric(&metrics, "tracer_kernel_thread_rule_revoked_total ") >= 1,
        "the kernel did not stop deciding for a thread that left a request unanswered\n{}",
        agent.stderr_text()
    );
}
