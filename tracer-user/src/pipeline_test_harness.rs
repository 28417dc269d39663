//! The pipeline tests' harness: a fake `/proc` for the traced processes, kernel records fed one
//! at a time with rising timestamps, and the spans that came out.

use super::*;
use crate::model::{AttrValue, Direction, SpanRecord};

/// The host's network namespace in the fake `/proc`.
pub(super) const HOST_NETNS: u64 = 4026531840;

/// Writes `<root>/<pid>/comm`, `<root>/<pid>/task/<pid>/stat` (started at `start`) and, unless
/// `netns` is `None` (then unreadable), `<root>/<pid>/ns/net`.
pub(super) fn fake_process(
    root: &std::path::Path,
    pid: u32,
    comm: &str,
    start: u64,
    netns: Option<u64>,
) {
    let dir = root.join(pid.to_string());
    let main_thread = dir.join("task").join(pid.to_string());
    std::fs::create_dir_all(&main_thread).expect("fake proc dir");
    std::fs::write(dir.join("comm"), format!("{comm}\n")).expect("comm");
    let zeros = "0 ".repeat(18);
    std::fs::write(
        main_thread.join("stat"),
        format!("{pid} ({comm}) S {zeros}{start} 0\n"),
    )
    .expect("stat");
    if let Some(netns) = netns {
        std::fs::create_dir_all(dir.join("ns")).expect("ns dir");
        let link = dir.join("ns/net");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("net:[{netns}]"), link).expect("ns/net");
    }
}

/// A pipeline over a fake `/proc` of its own (removed on drop).
pub(super) struct Harness {
    pub pipeline: Pipeline,
    pub root: std::path::PathBuf,
    pub ts: u64,
    pub out: Vec<ExportItem>,
}

impl Harness {
    /// `name` makes the fake `/proc` unique to the test; `processes` are (pid, comm) in the
    /// host's network namespace.
    pub fn new(name: &str, processes: &[(u32, &str)]) -> Harness {
        let root =
            std::env::temp_dir().join(format!("tracer-pipeline-{name}-{}", std::process::id()));
        for (pid, comm) in processes {
            fake_process(&root, *pid, comm, 100, Some(HOST_NETNS));
        }
        let pipeline = Pipeline::new(
            PipelineOptions {
                limits: TableLimits::default(),
                proc_root: root.clone(),
                host_name: "test-host".into(),
                ports: Vec::new(),
                include_telemetry: false,
            },
            Clock::from_offset(1_700_000_000_000_000_000),
        );
        Harness {
            pipeline,
            root,
            ts: 1_000,
            out: Vec::new(),
        }
    }

    /// The next record's header (1 µs after the previous one; the fd is the connection id).
    pub fn header(&mut self, pid: u32, conn_id: u64) -> RecordHeader {
        self.ts += 1_000;
        RecordHeader {
            tgid: pid,
            tid: pid,
            fd: conn_id as i32,
            conn_id,
            ts_ns: self.ts,
        }
    }

    pub fn open(&mut self, pid: u32, conn_id: u64, role: Role, local: &str, peer: &str) {
        self.open_in(pid, conn_id, role, local, peer, None);
    }

    /// An open record naming the connection's network namespace (`None`: the kernel could not).
    pub fn open_in(
        &mut self,
        pid: u32,
        conn_id: u64,
        role: Role,
        local: &str,
        peer: &str,
        netns: Option<u64>,
    ) {
        let header = self.header(pid, conn_id);
        self.pipeline.on_event(
            KernelEvent::ConnOpen {
                header,
                role: Some(role),
                local: local.parse().ok(),
                peer: peer.parse().ok(),
                netns,
            },
            &mut self.out,
        );
    }

    /// One data record: `tls` plaintext from a uprobe, else socket bytes; `true_len` beyond the
    /// bytes is a gap.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        pid: u32,
        conn_id: u64,
        role: Role,
        direction: Direction,
        bytes: &[u8],
        true_len: u32,
        tls: bool,
        loss_before: bool,
    ) {
        let header = self.header(pid, conn_id);
        self.pipeline.on_event(
            KernelEvent::Data {
                header,
                direction,
                role: Some(role),
                true_len,
                syscall_ns: 0,
                loss_before,
                tls,
                payload: bytes,
            },
            &mut self.out,
        );
    }

    /// Socket bytes, whole.
    pub fn data(&mut self, pid: u32, conn_id: u64, role: Role, direction: Direction, bytes: &[u8]) {
        let len = bytes.len() as u32;
        self.record(pid, conn_id, role, direction, bytes, len, false, false);
    }

    /// Plaintext a TLS library's uprobe captured, whole.
    pub fn plain(
        &mut self,
        pid: u32,
        conn_id: u64,
        role: Role,
        direction: Direction,
        bytes: &[u8],
    ) {
        let len = bytes.len() as u32;
        self.record(pid, conn_id, role, direction, bytes, len, true, false);
    }

    pub fn spans(&self) -> Vec<&SpanRecord> {
        self.out.iter().map(|item| &item.span).collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub(super) fn str_attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value {
            AttrValue::Str(s) => Some(s.as_str()),
            _ => None,
        })
}

pub(super) fn int_attr(span: &SpanRecord, key: &str) -> Option<i64> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        })
}
