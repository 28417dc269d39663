//! Connections closed without a close record. A process that exits (or execs with close-on-exec,
//! or closes a wide fd range) has its sockets closed by the kernel without a close syscall, so
//! nothing tells the agent: a request still waiting on such a connection (a client stopped
//! between writing a request and reading its answer, as wrk is at the end of a run) would wait
//! out `--request-timeout`, its SERVER child exported with a parent that is not, and be lost
//! uncounted if the agent stops first. Connections holding a request quiet for a second are
//! looked up in /proc (`/proc/<pid>/fd/<fd>`, again as the quiet time doubles); one whose fd is
//! gone is closed, its requests ending as `connection_closed` at the lookup's time, once every
//! record written before that lookup has been processed (a record is written when its syscall
//! returns, so none of that connection's can come later). A process /proc does not show (another
//! pid namespace without a mapping) or an fd it refuses to show is never judged: at worst the
//! request expires as before.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::correlate::connections::ConnectionTable;
use crate::idhash::IdHashMap;
use crate::model::{ConnMeta, Exchange, Role};

/// A request quiet this long gets its connection's fd looked up.
pub const QUIET_NS: u64 = 1_000_000_000;

/// Most /proc lookups per tick (the rest wait for the next ticks).
const MAX_LOOKUPS_PER_TICK: usize = 512;

/// Most connections found gone and waiting for the records before their lookup.
const MAX_FOUND: usize = 65_536;

/// What /proc says of a connection's fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdState {
    /// The fd exists (the same socket or, after a reuse not yet seen, another one).
    Present,
    /// Neither the fd nor (possibly) its process exists any more.
    Gone,
    /// /proc refused to say (permissions, no procfs): nothing is concluded.
    Unknown,
}

/// Looks up `fd` of `proc_pid` (a pid as `proc_root` numbers it).
pub fn fd_state(proc_root: &Path, proc_pid: u32, fd: i32) -> FdState {
    match std::fs::symlink_metadata(proc_root.join(format!("{proc_pid}/fd/{fd}"))) {
        Ok(_) => FdState::Present,
        Err(e) if e.kind() == ErrorKind::NotFound => FdState::Gone,
        Err(_) => FdState::Unknown,
    }
}

/// Finds and closes connections whose fd vanished.
pub struct UnseenCloses {
    proc_root: PathBuf,
    /// `proc_root` is a live procfs (it shows the agent itself): a missing pid there means an
    /// exited process, not a directory that never listed processes.
    live: bool,
    /// Connections found gone, with the monotonic time of the lookup.
    found: IdHashMap<u64, u64>,
    due: Vec<(u64, u32, i32)>,
    /// Lookups made (counted for the tests and /metrics' neighbours).
    lookups: u64,
}

impl UnseenCloses {
    pub fn new(proc_root: PathBuf) -> Self {
        let live = proc_root.join("self/fd").exists();
        UnseenCloses {
            proc_root,
            live,
            found: IdHashMap::default(),
            due: Vec::new(),
            lookups: 0,
        }
    }

    /// /proc lookups made so far.
    pub fn lookups(&self) -> u64 {
        self.lookups
    }

    /// Whether connections found gone wait for the records before their lookup.
    pub fn waiting(&self) -> bool {
        !self.found.is_empty()
    }

    /// Closes the connections found gone at a lookup before `processed_before_ns` (every record
    /// written before it has gone through the pipeline).
    pub fn close_found(
        &mut self,
        processed_before_ns: u64,
        table: &mut ConnectionTable,
        out: &mut Vec<(ConnMeta, Option<Role>, Exchange)>,
    ) {
        self.found.retain(|&conn_id, &mut gone_at| {
            let Some(last_activity) = table.last_activity(conn_id) else {
                return false;
            };
            if last_activity >= gone_at {
                // Bytes after the lookup: not this connection's end after all.
                return false;
            }
            if processed_before_ns <= gone_at {
                return true;
            }
            table.close_unseen(conn_id, gone_at, out);
            false
        });
    }

    /// Looks up the connections due. `proc_pid` maps a host tgid to its pid in `proc_root`
    /// (None: not shown there).
    pub fn look_up(
        &mut self,
        now_ns: u64,
        table: &mut ConnectionTable,
        proc_pid: impl Fn(u32) -> Option<u32>,
    ) {
        if !self.live || self.found.len() >= MAX_FOUND {
            return;
        }
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        table.due_fd_checks(now_ns, QUIET_NS, MAX_LOOKUPS_PER_TICK, &mut due);
        for &(conn_id, pid, fd) in &due {
            let Some(proc_pid) = proc_pid(pid) else {
                continue;
            };
            self.lookups += 1;
            if fd_state(&self.proc_root, proc_pid, fd) == FdState::Gone {
                self.found.insert(conn_id, now_ns);
            }
        }
        self.due = due;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_of_a_live_process_are_present_and_an_exited_one_has_none() {
        let proc_root = Path::new("/proc");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert_eq!(fd_state(proc_root, pid, 0), FdState::Present);
        assert_eq!(fd_state(proc_root, pid, 987), FdState::Gone);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(fd_state(proc_root, pid, 0), FdState::Gone);
        // A pid no process has (above the kernel's limit of 2^22).
        assert_eq!(fd_state(proc_root, 1 << 23, 0), FdState::Gone);
    }

    #[test]
    fn a_directory_that_is_no_procfs_judges_nothing() {
        let dir = std::env::temp_dir().join(format!("unseen-close-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let closes = UnseenCloses::new(dir.clone());
        assert!(!closes.live);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(UnseenCloses::new(PathBuf::from("/proc")).live);
    }
}
