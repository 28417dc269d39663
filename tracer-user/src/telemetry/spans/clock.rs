//! Kernel monotonic timestamps to Unix time.

/// Converts kernel monotonic timestamps to Unix time: `wall = monotonic + offset`, with the
/// offset measured once (per-event clock syscalls would cost more and drift between events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    boot_offset_ns: i128,
}

impl Clock {
    /// Sample pairs to take; the tightest one wins.
    const MEASURE_TRIES: usize = 7;

    /// Read `CLOCK_REALTIME` between two `CLOCK_MONOTONIC` reads a few times and keep the offset
    /// from the sample whose monotonic reads were closest together.
    pub fn measure() -> Clock {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..Self::MEASURE_TRIES {
            let (Some(before), Some(wall), Some(after)) = (
                clock_ns(libc::CLOCK_MONOTONIC),
                clock_ns(libc::CLOCK_REALTIME),
                clock_ns(libc::CLOCK_MONOTONIC),
            ) else {
                continue;
            };
            let gap = after - before;
            let offset = wall - (before + gap / 2);
            if best.is_none_or(|(best_gap, _)| gap < best_gap) {
                best = Some((gap, offset));
            }
        }
        match best {
            Some((_, offset)) => Clock {
                boot_offset_ns: offset,
            },
            None => {
                tracing::warn!(
                    "clock_gettime failed; span times will be monotonic, not wall clock"
                );
                Clock { boot_offset_ns: 0 }
            }
        }
    }

    /// A clock with a known offset (tests, replays).
    pub fn from_offset(ns: i128) -> Clock {
        Clock { boot_offset_ns: ns }
    }

    /// The measured `wall - monotonic` offset in nanoseconds.
    pub fn offset_ns(&self) -> i128 {
        self.boot_offset_ns
    }

    /// Unix-epoch nanoseconds of a monotonic timestamp, clamped to the `u64` range.
    pub fn to_unix_ns(&self, mono_ns: u64) -> u64 {
        let wall = i128::from(mono_ns) + self.boot_offset_ns;
        u64::try_from(wall.max(0)).unwrap_or(u64::MAX)
    }
}

/// One clock reading in nanoseconds.
pub(super) fn clock_ns(clock: libc::clockid_t) -> Option<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}
