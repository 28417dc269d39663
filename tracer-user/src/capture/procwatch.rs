//! Which processes changed since process discovery last looked: the kernel notes every process
//! that exec'd or mapped a file executable in `PROCESS_CHANGES` (`tracer-ebpf/src/procwatch.rs`);
//! this drains the table and hands each discovery thread (Go crypto/tls, OpenSSL) the pids it
//! has not seen yet, so their rescans read only new and changed processes, not every process of
//! the host. When the kernel cannot say which processes changed (its table was full, the agent
//! numbers processes in another pid namespace, the table is missing), the answer is
//! "everything", and the discovery falls back to reading every process.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use tracer_common::{MAX_PROCESS_CHANGES, counter};

/// What changed since a subscriber's last [`Subscriber::take`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Processes (tgids, as the agent's /proc names them) that exec'd or mapped a file
    /// executable.
    pub pids: HashSet<u32>,
    /// Changes the kernel could not name: every process must be read again.
    pub everything: bool,
}

/// Where changes come from: the kernel table, or a test's fake.
pub trait ChangeSource: Send {
    /// The processes changed since the last call, and whether some were lost (table full).
    fn drain(&mut self) -> Changes;
}

/// `PROCESS_CHANGES` and the counter of changes it had no room for.
pub struct KernelChanges {
    table: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// `PROCESS_CHANGES_FULL` at the last drain.
    full_seen: Option<u64>,
    /// The kernel's tgids are the agent's /proc pids (host pid namespace).
    host_pids: bool,
}

impl KernelChanges {
    /// From duplicated fds of `PROCESS_CHANGES` and `COUNTERS`.
    pub fn new(table: OwnedFd, counters: OwnedFd, host_pids: bool) -> std::io::Result<Self> {
        let table = MapData::from_fd(table)
            .and_then(|m| HashMap::<MapData, u32, u32>::try_from(Map::HashMap(m)))
            .map_err(std::io::Error::other)?;
        let counters = MapData::from_fd(counters)
            .and_then(|m| PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(m)))
            .map_err(std::io::Error::other)?;
        Ok(KernelChanges {
            table,
            counters,
            full_seen: None,
            host_pids,
        })
    }
}

impl ChangeSource for KernelChanges {
    fn drain(&mut self) -> Changes {
        let mut out = Changes::default();
        // Read before the table: a change lost after this read shows at the next drain.
        let full = self
            .counters
            .get(&counter::PROCESS_CHANGES_FULL, 0)
            .ok()
            .map(|v| v.iter().sum::<u64>());
        match (full, self.full_seen) {
            (Some(now), Some(before)) if now == before => {}
            // The first drain: what changed before the agent looked is read by its first scan.
            (Some(_), None) => {}
            _ => out.everything = true,
        }
        self.full_seen = full;
        let keys: Vec<u32> = self
            .table
            .keys()
            .filter_map(Result::ok)
            .take(MAX_PROCESS_CHANGES as usize)
            .collect();
        for tgid in keys {
            // Removed before the process is read: a change after this shows at the next drain.
            let _ = self.table.remove(&tgid);
            out.pids.insert(tgid);
        }
        if !self.host_pids && !out.pids.is_empty() {
            // Host tgids do not name this namespace's /proc entries.
            out.pids.clear();
            out.everything = true;
        }
        out
    }
}

/// The shared drain: one source, one pending set per subscriber.
pub struct ProcessWatch {
    inner: Mutex<Inner>,
}

struct Inner {
    source: Box<dyn ChangeSource>,
    /// Per subscriber (None once it is dropped: nothing gathers for it any more).
    pending: Vec<Option<Changes>>,
}

/// One discovery thread's view of the changes.
pub struct Subscriber {
    watch: Arc<ProcessWatch>,
    index: usize,
}

impl ProcessWatch {
    pub fn new(source: Box<dyn ChangeSource>) -> Arc<ProcessWatch> {
        Arc::new(ProcessWatch {
            inner: Mutex::new(Inner {
                source,
                pending: Vec::new(),
            }),
        })
    }

    /// A new subscriber: it sees the changes drained from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscriber {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.pending.push(Some(Changes::default()));
        Subscriber {
            watch: Arc::clone(self),
            index: inner.pending.len() - 1,
        }
    }
}

impl Subscriber {
    /// The changes since this subscriber's last call (drained from the kernel for every
    /// subscriber: each sees every change once).
    pub fn take(&self) -> Changes {
        let mut inner = self
            .watch
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let drained = inner.source.drain();
        for pending in inner.pending.iter_mut().flatten() {
            pending.everything |= drained.everything;
            pending.pids.extend(drained.pids.iter().copied());
        }
        inner.pending[self.index]
            .replace(Changes::default())
            .unwrap_or_default()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut inner = self
            .watch
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        inner.pending[self.index] = None;
    }
}

#[cfg(test)]
pub mod testing {
    //! A change source for tests: changes pushed by the test.
    use super::*;

    #[derive(Clone, Default)]
    pub struct FakeChanges(pub Arc<Mutex<Changes>>);

    impl FakeChanges {
        pub fn changed(&self, pid: u32) {
            self.0.lock().unwrap().pids.insert(pid);
        }
        pub fn lost(&self) {
            self.0.lock().unwrap().everything = true;
        }
    }

    impl ChangeSource for FakeChanges {
        fn drain(&mut self) -> Changes {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::FakeChanges;
    use super::*;

    /// Every subscriber sees every change once, whichever drains the source first.
    #[test]
    fn each_subscriber_sees_each_change_once() {
        let fake = FakeChanges::default();
        let watch = ProcessWatch::new(Box::new(fake.clone()));
        let (go, tls) = (watch.subscribe(), watch.subscribe());
        fake.changed(7);
        let first = go.take();
        assert_eq!(first.pids, HashSet::from([7]));
        assert!(!first.everything);
        fake.changed(8);
        fake.lost();
        let second = tls.take();
        assert_eq!(second.pids, HashSet::from([7, 8]));
        assert!(second.everything);
        let third = go.take();
        assert_eq!(third.pids, HashSet::from([8]));
        assert!(third.everything);
        assert_eq!(go.take(), Changes::default());
        assert_eq!(tls.take(), Changes::default());
        // A subscriber dropped (its thread did not start) gathers nothing more.
        drop(go);
        fake.changed(9);
        assert_eq!(tls.take().pids, HashSet::from([9]));
        let inner = watch.inner.lock().unwrap();
        assert!(inner.pending[0].is_none());
    }
}
