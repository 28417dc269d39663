//! The kernel connection table's census: a background thread walks the table's keys every
//! `CENSUS_EVERY` (a walk over up to `--max-connections` keys takes about 100 ms at 65536
//! entries, so it stays off the event loop) and derives how many entries the LRU table evicted.

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
    /// Starts walking the maps with these ids (second handles on `CONNS` and `COUNTERS`).
    pub fn start(conns_id: u32, counters_id: u32) -> std::io::Result<Census> {
        let conns = MapData::from_id(conns_id)
            .and_then(|m| HashMap::<MapData, u64, ConnState>::try_from(Map::LruHashMap(m)))
            .map_err(std::io::Error::other)?;
        let counters = MapData::from_id(counters_id)
            .and_then(|m| PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(m)))
            .map_err(std::io::Error::other)?;
        let results = Arc::new(CensusResults::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = results.clone();
        std::thread::Builder::new()
            .name("conn-census".into())
            .spawn(move || {
                let read = |i: u32| {
                    counters
                        .get(&i, 0)
                        .map(|v| v.iter().sum::<u64>())
                        .unwrap_or(0)
                };
                loop {
                    let inserted = read(counter::CONNS_INSERTED);
                    let started = std::time::Instant::now();
                    let entries = conns.keys().filter(Result::is_ok).count() as u64;
                    let removed = read(counter::CONNS_REMOVED);
                    tracing::debug!(
                        entries,
                        walk_us = started.elapsed().as_micros() as u64,
                        "walked the kernel connection table"
                    );
                    shared.entries.store(entries, Ordering::Relaxed);
                    shared
                        .evicted
                        .fetch_max(evictions(inserted, removed, entries), Ordering::Relaxed);
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
