//! Memory and CPU time of a process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.

use std::time::Duration;

/// One reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vitals {
    /// Resident set size now.
    pub rss_kib: u64,
    /// Peak resident set size.
    pub hwm_kib: u64,
    /// User plus system CPU time so far.
    pub cpu: Duration,
}

impl Vitals {
    /// Reads `pid`'s vitals; panics when the process is gone or the files are unreadable.
    pub fn read(pid: u32) -> Vitals {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
        let field = |key| {
            status_kib(&status, key)
                .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status:\n{status}"))
        };
        Vitals {
            rss_kib: field("VmRSS"),
            hwm_kib: field("VmHWM"),
            cpu: cpu_time(&stat, clock_ticks_per_second())
                .unwrap_or_else(|| panic!("unparsable /proc/{pid}/stat: {stat}")),
        }
    }
}

/// `Key:   1234 kB` from a status file.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// utime + stime (fields 14 and 15) of a stat line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn cpu_time(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    let per_second = ticks_per_second.max(1);
    Some(
        Duration::from_secs(ticks / per_second)
            + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second),
    )
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

#[cfg(test)]
#[test]
fn parses_status_and_stat() {
    let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
    assert_eq!(status_kib(status, "VmRSS"), Some(1024));
    assert_eq!(status_kib(status, "VmHWM"), Some(2048));
    assert_eq!(status_kib(status, "VmSwap"), None);
    let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
    assert_eq!(cpu_time(stat, 100), Some(Duration::from_secs(3)));
    assert_eq!(cpu_time("42 (x", 100), None);
    let own = Vitals::read(std::process::id());
    assert!(own.rss_kib > 0 && own.hwm_kib >= own.rss_kib, "{own:?}");
}
