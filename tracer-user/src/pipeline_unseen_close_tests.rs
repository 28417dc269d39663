//! The pipeline on connections closed without a close record (`correlate/unseen_close.rs`),
//! over a fake procfs that shows the agent (`self/fd`) and the traced processes' fds: a request
//! left waiting on an fd that disappears ends as `connection_closed` once the records written
//! before the lookup are processed, never before and never while the fd is there.

use super::test_harness::{Harness, str_attr};
use super::*;
use crate::model::{Direction, SpanKind};

const CLIENT_PID: u32 = 6300;
const CONN: u64 = 7;
const SECOND: u64 = 1_000_000_000;
const GET: &[u8] = b"GET /left HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// A client that wrote one request on fd `CONN`, over a fake procfs that shows the agent and
/// that fd.
fn client_with_a_waiting_request(name: &str) -> Harness {
    let root = std::env::temp_dir().join(format!("tracer-pipeline-{name}-{}", std::process::id()));
    std::fs::create_dir_all(root.join("self/fd")).expect("fake self/fd");
    let fd_dir = root.join(format!("{CLIENT_PID}/fd"));
    std::fs::create_dir_all(&fd_dir).expect("fake fd dir");
    std::os::unix::fs::symlink("socket:[4242]", fd_dir.join(CONN.to_string())).expect("fd link");
    let mut h = Harness::new(name, &[(CLIENT_PID, "client")]);
    h.open(
        CLIENT_PID,
        CONN,
        Role::Client,
        "127.0.0.1:40100",
        "127.0.0.1:8080",
    );
    h.data(CLIENT_PID, CONN, Role::Client, Direction::Egress, GET);
    assert!(h.spans().is_empty());
    h
}

fn close_fd(h: &Harness) {
    std::fs::remove_file(h.root.join(format!("{CLIENT_PID}/fd/{CONN}"))).expect("fd link");
}

#[test]
fn a_request_on_an_fd_that_vanished_ends_as_connection_closed() {
    let mut h = client_with_a_waiting_request("unseen-close");
    let written = h.ts;
    // Quiet for less than a second: not looked up even though the fd is gone.
    close_fd(&h);
    h.pipeline.tick(written + SECOND / 2, &mut h.out);
    h.pipeline
        .note_processed_before(written + SECOND, &mut h.out);
    assert!(h.spans().is_empty());
    // Looked up, found gone; the records before the lookup are not all processed yet.
    let lookup = written + 2 * SECOND;
    h.pipeline.tick(lookup, &mut h.out);
    h.pipeline.note_processed_before(lookup - 1, &mut h.out);
    assert!(
        h.spans().is_empty(),
        "closed before the records up to the lookup were read"
    );
    h.pipeline.note_processed_before(lookup + 1, &mut h.out);
    let spans = h.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = spans[0];
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(str_attr(span, "error.type"), Some("connection_closed"));
    assert_eq!(h.pipeline.table_stats().closed_unseen, 1);
    assert_eq!(h.pipeline.connections(), 0);
}

#[test]
fn a_request_whose_fd_is_still_there_keeps_waiting() {
    let mut h = client_with_a_waiting_request("unseen-open");
    let written = h.ts;
    for s in 1..=8 {
        h.pipeline.tick(written + s * SECOND, &mut h.out);
        h.pipeline
            .note_processed_before(written + s * SECOND + 1, &mut h.out);
    }
    assert!(h.spans().is_empty());
    assert_eq!(h.pipeline.table_stats().closed_unseen, 0);
    // Looked up at 1, 2, 4 and 8 s of quiet, not every second.
    assert_eq!(h.pipeline.unseen_closes.lookups(), 4);
}

#[test]
fn bytes_after_the_lookup_cancel_the_close() {
    let mut h = client_with_a_waiting_request("unseen-active");
    let written = h.ts;
    close_fd(&h);
    let lookup = written + 2 * SECOND;
    h.pipeline.tick(lookup, &mut h.out);
    // A response read after the lookup (the fd was reused by the time /proc was read, say):
    // the connection is alive; its exchange completes normally.
    h.ts = lookup + 10;
    h.data(
        CLIENT_PID,
        CONN,
        Role::Client,
        Direction::Ingress,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    h.pipeline
        .note_processed_before(lookup + SECOND, &mut h.out);
    let spans = h.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(str_attr(spans[0], "error.type"), None);
    assert_eq!(h.pipeline.table_stats().closed_unseen, 0);
}
