//! The kernel's HTTP/2 capture, seen through its records and counters (the agent's
//! `tracer::records` trace log and /metrics), with a real gRPC peer (grpcio, C-core: it writes a
//! response's HEADERS, DATA frames and trailers with one sendmsg when flow control allows).
//!
//! - A gRPC call answering 100 KiB: DATA payloads travel as length-only gaps, and every frame
//!   header and the trailers (a HEADERS frame after 100 KiB of DATA, far past the capture size)
//!   reach userspace on both ends; the kernel copies a few KiB per call instead of ~200 KiB.
//! - A gRPC connection opened before the agent: adopted by its frames (not by an HTTP/1 start
//!   line), and captured frame by frame from then on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::metrics_client::{sample, scrape};
use tracer_tests::peers::{peer_script, python};
use tracer_tests::process::LineWait;
use tracer_tests::{AgentConfig, ChildGuard, ScratchDir, free_port, wait_for_port};

/// The response message of every call.
const RESPONSE_BYTES: u64 = 100 * 1024;
/// How long the test waits for counters or records it expects.
const WAIT: Duration = Duration::from_secs(40);
/// Kernel bytes copied per call at most (both ends together): frame headers, request and
/// response headers, trailers, SETTINGS/WINDOW_UPDATE/PING. Copying the DATA would be ~200 KiB.
const MAX_COPIED_PER_CALL: f64 = 8.0 * 1024.0;

fn grpc_peer(mode: &str, port: u16, extra: &[&str]) -> Command {
    let mut command = Command::new(python());
    command
        .arg("-u")
        .arg(peer_script("h2_capture_grpc.py"))
        .args([mode, "--port", &port.to_string()])
        .args(extra)
        // grpcio must not pick up a proxy from the environment for 127.0.0.1.
        .env("no_grpc_proxy", "*")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    command
}

fn start_server(port: u16) -> ChildGuard {
    let size = RESPONSE_BYTES.to_string();
    let server = ChildGuard::spawn(
        "h2_capture_grpc.py serve",
        grpc_peer("serve", port, &["--size", &size]),
    );
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "the grpcio server did not listen on {port} (is grpcio installed? `cargo xtask setup`)\n{}",
        server.output_report()
    );
    server
}

/// An agent tracing `port` of this test's children (the peers: no records of other programs on
/// the host in its log), logging its data records, serving /metrics on `metrics`.
fn start_agent(port: u16, metrics: SocketAddr) -> tracer_tests::agent::Agent {
    AgentConfig::new()
        .pid(std::process::id())
        .ports(&[port])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("RUST_LOG", "info,tracer::records=trace")
        .start()
}

fn metric(metrics: SocketAddr, name: &str) -> f64 {
    sample(&scrape(metrics), name, "").unwrap_or_else(|| panic!("{name} missing on /metrics"))
}

/// One data record of the agent's trace log.
#[derive(Debug)]
struct Record {
    conn: String,
    role: String,
    direction: String,
    true_len: u64,
    captured: u64,
    frame_type: i64,
    frame_flags: i64,
    /// (type, flags) of the frames the record holds, from its first byte (the agent's
    /// `frames` field).
    frames: Vec<(u8, u8)>,
    /// Its last frame goes on in the direction's next record, which then starts inside a
    /// frame (the agent's `frames_go_on`).
    frames_go_on: bool,
}

/// The agent's `frames` field: `type:flags` pairs joined by commas, `-` for none.
fn frame_list(text: &str) -> Option<Vec<(u8, u8)>> {
    if text == "-" {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|pair| {
            let (t, f) = pair.split_once(':')?;
            Some((t.parse().ok()?, f.parse().ok()?))
        })
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

fn records(agent: &tracer_tests::agent::Agent) -> Vec<Record> {
    agent
        .stderr_text()
        .lines()
        .filter(|l| l.contains("tracer::records") && l.contains("data record"))
        .filter_map(|l| {
            Some(Record {
                conn: field(l, "conn")?.to_owned(),
                role: field(l, "role")?.to_owned(),
                direction: field(l, "direction")?.to_owned(),
                true_len: field(l, "true_len")?.parse().ok()?,
                captured: field(l, "captured")?.parse().ok()?,
                frame_type: field(l, "frame_type")?.parse().ok()?,
                frame_flags: field(l, "frame_flags")?.parse().ok()?,
                frames: frame_list(field(l, "frames")?)?,
                frames_go_on: field(l, "frames_go_on")?.parse().ok()?,
            })
        })
        .collect()
}

/// The records of one role and direction, in the order the agent read them, each with whether
/// it starts inside a frame (the record before it on its connection went on): the frames the
/// agent lists for such a record mean nothing.
fn in_order<'a>(
    records: &'a [Record],
    role: &str,
    direction: &str,
) -> impl Iterator<Item = (&'a Record, bool)> {
    let mut goes_on: HashMap<&str, bool> = HashMap::new();
    records
        .iter()
        .filter(move |r| r.role == role && r.direction == direction)
        .map(move |r| {
            let inside = goes_on.insert(r.conn.as_str(), r.frames_go_on) == Some(true);
            (r, inside)
        })
}

/// The trailers frames (HEADERS with END_STREAM and END_HEADERS) in the records of one role and
/// direction that start at a frame: one entry per frame, naming its record. A trailers frame
/// is the first of its record after a DATA payload sent as a gap, or follows a short DATA
/// frame kept whole (flow control splits DATA frames at any size) in the same record.
fn trailers<'a>(records: &'a [Record], role: &str, direction: &str) -> Vec<&'a Record> {
    in_order(records, role, direction)
        .filter(|(_, inside)| !inside)
        .flat_map(|(r, _)| {
            r.frames
                .iter()
                .filter(|(t, f)| *t == 1 && f & 0x05 == 0x05)
                .map(move |_| r)
        })
        .collect()
}

/// The records of one role and direction that start inside a frame (a read or write that
/// ended inside a kept frame): what they hold is not listed, a trailers frame at most each.
fn starting_inside_a_frame(records: &[Record], role: &str, direction: &str) -> usize {
    in_order(records, role, direction)
        .filter(|(_, inside)| *inside)
        .count()
}

/// Whether the records of one role and direction can hold `calls` trailers frames: those
/// listed, plus one per record starting inside a frame.
fn trailers_reached(records: &[Record], role: &str, direction: &str, calls: usize) -> bool {
    trailers(records, role, direction).len() + starting_inside_a_frame(records, role, direction)
        >= calls
}

/// Polls until `done` holds (or WAIT passes); returns whether it did.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// The agent's HTTP/2 capture and loss counters that are not zero, one per line.
fn loss_counters(metrics: SocketAddr) -> String {
    scrape(metrics)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
        .filter(|l| {
            [
                "h2",
                "lost",
                "drop",
                "gap",
                "truncat",
                "unreadable",
                "read_user",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn summary(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| {
            format!(
                "{} {} true={} captured={} type={} flags={:#x} frames={:?}",
                r.role, r.direction, r.true_len, r.captured, r.frame_type, r.frame_flags, r.frames
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn grpc_response_data_is_elided_and_its_trailers_are_kept() {
    const CALLS: u64 = 3;
    let port = free_port();
    let _server = start_server(port);
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent = start_agent(port, metrics);
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr {metrics} never listened"
    );

    let calls = CALLS.to_string();
    let mut client = ChildGuard::spawn(
        "h2_capture_grpc.py call",
        grpc_peer("call", port, &["--calls", &calls]),
    );
    let status = client.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the grpcio client failed ({status:?})\n{}",
        client.output_report()
    );
    let ok = format!("ok {RESPONSE_BYTES}");
    assert_eq!(
        client.stdout().lines().iter().filter(|l| **l == ok).count() as u64,
        CALLS,
        "{}",
        client.output_report()
    );

    // Both ends' records of every call have reached the agent (the server wrote and the client
    // read CALLS trailers frames, see `trailers`), every direction of the connection was
    // followed frame by frame, and the DATA payloads went as gaps on both ends.
    let response_total = (2 * CALLS * RESPONSE_BYTES) as f64;
    let (mut framed, mut elided) = (0.0, 0.0);
    let seen = wait_until(|| {
        let r = records(&agent);
        framed = metric(metrics, "tracer_kernel_http2_directions_framed_total");
        elided = metric(metrics, "tracer_kernel_http2_data_elided_bytes_total");
        trailers_reached(&r, "Some(Server)", "Egress", CALLS as usize)
            && trailers_reached(&r, "Some(Client)", "Ingress", CALLS as usize)
            && framed >= 4.0
            && elided >= 0.95 * response_total
    });
    agent.assert_running();
    let r = records(&agent);
    assert!(
        seen,
        "not all of: trailers of {CALLS} calls in the records of both ends, 4 \
         directions framed ({framed}), {response_total} DATA bytes elided ({elided})\n{}",
        summary(&r)
    );
    // What the kernel copied for this connection (both ends: its records carry a role; records
    // of connections adopted by sniffing, from other tests, carry none).
    let copied: u64 = r
        .iter()
        .filter(|x| x.role != "None")
        .map(|x| x.captured)
        .sum();
    assert!(
        copied as f64 <= MAX_COPIED_PER_CALL * CALLS as f64,
        "the kernel copied {copied} bytes for {CALLS} calls\n{}",
        summary(&r)
    );
    // The DATA payloads of this connection went as gaps: at least one record per response on
    // each end stands for more bytes than it carries.
    let gaps = r
        .iter()
        .filter(|x| x.role != "None" && x.captured < x.true_len)
        .count();
    assert!(gaps as u64 >= 2 * CALLS, "{}", summary(&r));
    eprintln!(
        "h2_capture: {CALLS} calls of {RESPONSE_BYTES} B: kernel copied {copied} B in {} records",
        r.iter().filter(|x| x.role != "None").count()
    );
}

#[test]
fn grpc_connection_opened_before_the_agent_is_adopted_by_its_frames() {
    const CALLS: u64 = 2;
    let port = free_port();
    let _server = start_server(port);
    let scratch = ScratchDir::new("h2-capture-adopt");
    let go = scratch.path().join("go");
    let calls = CALLS.to_string();
    let go_arg = go.to_string_lossy().into_owned();
    let mut client = ChildGuard::spawn(
        "h2_capture_grpc.py hold",
        grpc_peer("hold", port, &["--calls", &calls, "--go", &go_arg]),
    );
    match client.stdout().wait_for_line(WAIT, |l| l == "first ok") {
        LineWait::Found(_) => {}
        other => panic!(
            "the first call (before the agent) did not finish: {other:?}\n{}",
            client.output_report()
        ),
    }

    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent = start_agent(port, metrics);
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr {metrics} never listened"
    );
    std::fs::write(&go, b"go").expect("writing the go file");
    let status = client.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the grpcio client failed ({status:?})\n{}",
        client.output_report()
    );

    // Adopted connections have no role; both ends (client and server process) are adopted.
    let response_total = (2 * CALLS * RESPONSE_BYTES) as f64;
    let (mut sniffed, mut elided) = (0.0, 0.0);
    let seen = wait_until(|| {
        let r = records(&agent);
        sniffed = metric(metrics, "tracer_kernel_http2_connections_sniffed_total");
        elided = metric(metrics, "tracer_kernel_http2_data_elided_bytes_total");
        trailers_reached(&r, "None", "Egress", CALLS as usize)
            && trailers_reached(&r, "None", "Ingress", CALLS as usize)
            && sniffed >= 2.0
            && elided >= 0.95 * response_total
    });
    agent.assert_running();
    let r = records(&agent);
    assert!(
        seen,
        "not all of: trailers of the {CALLS} calls on the adopted connection in the records of \
         both ends, 2 connections sniffed as HTTP/2 ({sniffed}), {response_total} \
         DATA bytes elided ({elided})\n{}",
        summary(&r)
    );
}

#[test]
fn concurrent_calls_sharing_writes_keep_every_trailers_frame() {
    // 200 calls at once on one channel: grpcio writes the frames of many streams with one
    // sendmsg of hundreds of iovecs, and reads them back in large chunks; the walk covers them
    // (several runs of the walker) and every call's trailers reach userspace on both ends.
    const CALLS: usize = 200;
    let port = free_port();
    let server = ChildGuard::spawn(
        "h2_capture_grpc.py serve",
        grpc_peer("serve", port, &["--size", "1024"]),
    );
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "the grpcio server did not listen on {port}\n{}",
        server.output_report()
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent = start_agent(port, metrics);
    let calls = CALLS.to_string();
    let mut client = ChildGuard::spawn(
        "h2_capture_grpc.py burst",
        grpc_peer("burst", port, &["--calls", &calls]),
    );
    let status = client.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the grpcio client failed ({status:?})\n{}",
        client.output_report()
    );
    assert_eq!(
        client
            .stdout()
            .lines()
            .iter()
            .filter(|l| *l == "ok 1024")
            .count(),
        CALLS,
        "{}",
        client.output_report()
    );
    let seen = wait_until(|| {
        let r = records(&agent);
        trailers_reached(&r, "Some(Server)", "Egress", CALLS)
            && trailers_reached(&r, "Some(Client)", "Ingress", CALLS)
    });
    agent.assert_running();
    let r = records(&agent);
    let (written, read) = (
        trailers(&r, "Some(Server)", "Egress").len(),
        trailers(&r, "Some(Client)", "Ingress").len(),
    );
    let inside = (
        starting_inside_a_frame(&r, "Some(Server)", "Egress"),
        starting_inside_a_frame(&r, "Some(Client)", "Ingress"),
    );
    assert!(
        seen,
        "trailers frames in the records: {written} written by the server, {read} read by the \
         client, of {CALLS} (records starting inside a frame: {inside:?})\nagent's h2 and loss \
         counters:\n{}\n{}",
        loss_counters(metrics),
        summary(&r)
    );
    assert!(
        written <= CALLS && read <= CALLS,
        "no trailers frame twice: {written} written, {read} read\n{}",
        summary(&r)
    );
    // The walks covered every syscall: none gave up (a gap to the end of a syscall), none lost
    // its place, no frame header was judged implausible.
    for name in [
        "tracer_kernel_http2_walk_limit_total",
        "tracer_kernel_http2_cursor_lost_total",
        "tracer_kernel_http2_implausible_frames_total",
    ] {
        assert_eq!(
            metric(metrics, name),
            0.0,
            "{name}\n{}",
            loss_counters(metrics)
        );
    }
}

/// An HTTP/1 keep-alive connection opened before the agent, whose first bytes after the agent
/// started are a body chunk that parses as two HTTP/2 frames: the kernel adopts it as HTTP/2
/// (nothing else could tell), but the next response's start line is no frame header. The
/// direction is then captured as usual (no more than --capture-bytes per syscall, never a fake
/// frame copied in full) and the implausible header is counted.
#[test]
fn http1_connection_adopted_on_a_binary_body_falls_back_at_its_next_start_line() {
    const CAPTURE: u64 = 64;
    let port = free_port();
    let scratch = ScratchDir::new("h2-capture-h1-binary");
    let go = scratch.path().join("go");
    let peer = |mode: &str, extra: &[&str]| {
        let mut command = Command::new(python());
        command
            .arg("-u")
            .arg(peer_script("h1_binary_body.py"))
            .args([mode, "--port", &port.to_string()])
            .args(extra);
        command
    };
    let go_arg = go.to_string_lossy().into_owned();
    let mut server =
        ChildGuard::spawn("h1_binary_body.py serve", peer("serve", &["--go", &go_arg]));
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "the HTTP/1 server did not listen on {port}\n{}",
        server.output_report()
    );
    let mut client = ChildGuard::spawn("h1_binary_body.py client", peer("client", &[]));
    for (child, line) in [(&mut client, "got part1"), (&mut server, "part1 sent")] {
        match child.stdout().wait_for_line(WAIT, |l| l == line) {
            LineWait::Found(_) => {}
            other => panic!(
                "no {line:?} before the agent: {other:?}\n{}",
                child.output_report()
            ),
        }
    }

    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent = AgentConfig::new()
        .pid(std::process::id())
        .ports(&[port])
        .arg("--capture-bytes")
        .arg(CAPTURE.to_string())
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("RUST_LOG", "info,tracer::records=trace")
        .start();
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr {metrics} never listened"
    );
    std::fs::write(&go, b"go").expect("writing the go file");
    let status = client.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the HTTP/1 client failed ({status:?})\n{}",
        client.output_report()
    );

    // Both ends saw the frames first (the server's write, the client's read) and a start line
    // next; the /next response is 4000+ bytes in each direction's records.
    let (mut sniffed, mut implausible) = (0.0, 0.0);
    let seen = wait_until(|| {
        let r = records(&agent);
        sniffed = metric(metrics, "tracer_kernel_http2_connections_sniffed_total");
        implausible = metric(metrics, "tracer_kernel_http2_implausible_frames_total");
        let next_bytes: u64 = r.iter().map(|r| r.true_len).sum();
        sniffed >= 1.0 && implausible >= 1.0 && next_bytes >= 4000
    });
    agent.assert_running();
    let r = records(&agent);
    assert!(
        seen,
        "not all of: the connection adopted as HTTP/2 by its body ({sniffed}), an implausible \
         frame header counted ({implausible}), the /next response's records\n{}",
        summary(&r)
    );
    let over: Vec<&Record> = r.iter().filter(|r| r.captured > CAPTURE).collect();
    assert!(
        over.is_empty(),
        "records copied more than --capture-bytes {CAPTURE} (HTTP/1 bytes walked as frames):\n{}",
        summary(&r)
    );
    assert_eq!(
        metric(metrics, "tracer_kernel_http2_walker_loaded"),
        1.0,
        "the HTTP/2 walker is loaded on this kernel"
    );
}

/// With the walker off (`TRACER_H2_WALKER=off`, what the agent falls back to when a kernel
/// refuses it): the data programs load without the tail call, HTTP/2 is captured like any
/// stream (a prefix per syscall, no frame awareness), and no syscall tries to frame it.
#[test]
fn without_the_walker_http2_is_captured_as_a_plain_stream() {
    let port = free_port();
    let _server = start_server(port);
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent = AgentConfig::new()
        .pid(std::process::id())
        .ports(&[port])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("RUST_LOG", "info,tracer::records=trace")
        .env("TRACER_H2_WALKER", "off")
        .start();
    assert!(
        wait_for_port(metrics.port(), Duration::from_secs(20)),
        "--metrics-addr {metrics} never listened"
    );
    let mut client = ChildGuard::spawn(
        "h2_capture_grpc.py call",
        grpc_peer("call", port, &["--calls", "1"]),
    );
    let status = client.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the grpcio client failed ({status:?})\n{}",
        client.output_report()
    );
    // Both ends' records of the response (100 KiB each way) reached the agent.
    let seen = wait_until(|| {
        let r = records(&agent);
        let server: u64 = r
            .iter()
            .filter(|x| x.role == "Some(Server)" && x.direction == "Egress")
            .map(|x| x.true_len)
            .sum();
        let client: u64 = r
            .iter()
            .filter(|x| x.role == "Some(Client)" && x.direction == "Ingress")
            .map(|x| x.true_len)
            .sum();
        server >= RESPONSE_BYTES && client >= RESPONSE_BYTES
    });
    agent.assert_running();
    let r = records(&agent);
    assert!(seen, "the response's records on both ends\n{}", summary(&r));
    assert_eq!(metric(metrics, "tracer_kernel_http2_walker_loaded"), 0.0);
    assert_eq!(
        metric(metrics, "tracer_kernel_http2_directions_framed_total"),
        0.0,
        "no direction is framed without the walker"
    );
    assert_eq!(
        metric(metrics, "tracer_kernel_http2_cursor_lost_total"),
        0.0,
        "no syscall tries to frame HTTP/2 without the walker"
    );
    assert_eq!(
        metric(metrics, "tracer_kernel_http2_data_elided_bytes_total"),
        0.0
    );
}
