//! The kernel connection table's census: a background thread walks the table's keys every
//! `CENSUS_EVERY` (a walk over up to `--max-connections` keys takes about 100 ms at 65536
//! entries, so it stays off the event loop) and derives how many entries the LRU table evicted.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use tracer_common::{ConnState, counter};

/// How often the kernel connection table is walked.
pub const CENSUS_EVERY: Duration = Duration::from_secs(10);

/// Latest results, shared with the agent.
#[derive(Debug, Default)]
pub struct CensusResults {
    /// Entries seen by the last walk.
    pub entries: AtomicU64,
    /// Entries evicted so far (never over-estimated, never decreasing).
    pub evicted: AtomicU64,
    /// Walks dropped because a key could not be read (a partial walk under-counts the entries
    /// and would over-estimate evictions, permanently through `fetch_max`).
    pub failed_walks: AtomicU64,
}

/// The running census; dropping it stops the thread (at once: it waits on a channel).
pub struct Census {
    pub results: Arc<CensusResults>,
    _stop: mpsc::Sender<()>,
}

/// Evictions implied by one walk: counters read before (`inserted`) and after (`removed`) the
/// walk that saw `entries`. Entries inserted during the walk only lower the estimate, and so do
/// removals during it, so it never exceeds the true count at the walk's end.
pub fn evictions(inserted_before: u64, removed_after: u64, entries: u64) -> u64 {
    inserted_before
        .saturating_sub(removed_after)
        .saturating_sub(entries)
}

impl Census {
    /// Starts walking the maps behind these fds (duplicates of the agent's `CONNS` and
    /// `COUNTERS` fds: opening a map by id needs CAP_SYS_ADMIN).
    pub fn start(conns_fd: OwnedFd, counters_fd: OwnedFd) -> std::io::Result<Census> {
        let conns = MapData::from_fd(conns_fd)
            .and_then(|m| HashMap::<MapData, u64, ConnState>::try_from(Map::LruHashMap(m)))
            .map_err(std::io::Error::other)?;
        let counters = MapData::from_fd(counters_fd)
            .and_then(|m| PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(m)))
            .map_err(std::io::Error::other)?;
        let results = Arc::new(CensusResults::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = results.clone();
        std::thread::Builder::new()
            .name("conn-census".into())
            .spawn(move || {
                let read = |i: u32| counters.get(&i, 0).ok().map(|v| v.iter().sum::<u64>());
                loop {
                    let inserted = read(counter::CONNS_INSERTED);
                    let started = std::time::Instant::now();
                    let walked: Result<u64, _> =
                        conns.keys().try_fold(0u64, |n, key| key.map(|_| n + 1));
                    let removed = read(counter::CONNS_REMOVED);
                    match (walked, inserted, removed) {
                        (Ok(entries), Some(inserted), Some(removed)) => {
                            tracing::debug!(
                                entries,
                                walk_us = started.elapsed().as_micros() as u64,
                                "walked the kernel connection table"
                            );
                            shared.entries.store(entries, Ordering::Relaxed);
                            shared.evicted.fetch_max(
                                evictions(inserted, removed, entries),
                                Ordering::Relaxed,
                            );
                        }
                        (walked, ..) => {
                            tracing::debug!(
                                error = ?walked.err(),
                                "connection table walk failed; sample dropped"
                            );
                            shared.failed_walks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    match stopped.recv_timeout(CENSUS_EVERY) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
            })?;
        Ok(Census {
            results,
            _stop: stop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::evictions;

    #[test]
    fn evictions_never_exceed_what_the_counters_allow() {
        // 1000 made, 300 closed, 200 left: 500 evicted.
        assert_eq!(evictions(1000, 300, 200), 500);
        // Entries the agent inserted itself (ignored fds) only lower the estimate.
        assert_eq!(evictions(10, 5, 9), 0);
        assert_eq!(evictions(0, 0, 0), 0);
    }
}
