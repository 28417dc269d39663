//! What the bench reads from /proc: a process's CPU time and peak RSS, its children, and the
//! machine's description.

use std::process::Command;

use anyhow::{Context, Result};

/// CPU time and peak resident set of one process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// utime + stime of all its threads, in seconds.
    pub cpu_seconds: f64,
    /// `VmHWM`: the peak resident set so far, in KiB. It counts mapped file pages too: the
    /// binary's code and the mmapped BPF ring buffer (whose data pages are mapped twice).
    pub peak_rss_kib: u64,
    /// `RssAnon`: anonymous (heap and stack) resident memory now, in KiB.
    pub anon_rss_kib: u64,
}

/// Clock ticks per second of /proc/<pid>/stat times (`getconf CLK_TCK`, 100 when unknown).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime in ticks from the text of /proc/<pid>/stat.
pub fn cpu_ticks_from_stat(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces: fields restart after the last
    // ')', where field 3 (state) is the first; utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name: N kB` field of /proc/<pid>/status, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Samples a running process.
pub fn sample(pid: u32, ticks_per_second: f64) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = cpu_ticks_from_stat(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    Ok(ProcSample {
        cpu_seconds: ticks as f64 / ticks_per_second,
        peak_rss_kib: status_kib(&status, "VmHWM").unwrap_or(0),
        anon_rss_kib: status_kib(&status, "RssAnon").unwrap_or(0),
    })
}

/// Pids whose parent is `parent` (scanning /proc).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_from_stat(&stat))
                == Some(parent)
        })
        .collect()
}

fn parent_from_stat(stat: &str) -> Option<u32> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The machine a run was measured on.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|name| name.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    Machine {
        cpu_model,
        cpus,
        memory_gib,
        kernel,
        os,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let stat = "1234 (tokio (w) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 \
                    100 2000000 3000 18446744073709551615";
        assert_eq!(cpu_ticks_from_stat(stat), Some(325));
        assert_eq!(parent_from_stat(stat), Some(1));
        assert_eq!(cpu_ticks_from_stat("1234 (x) S 1"), None);
    }

    #[test]
    fn memory_fields_come_from_status() {
        let status = "Name:\ttracer\nVmPeak:\t  900000 kB\nVmHWM:\t   23456 kB\n\
                      VmRSS:\t 20000 kB\nRssAnon:\t    4804 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(23456));
        assert_eq!(status_kib(status, "RssAnon"), Some(4804));
        assert_eq!(status_kib(status, "Vm"), None);
        assert_eq!(status_kib("Name:\tx\n", "VmHWM"), None);
    }

    #[test]
    fn our_own_process_can_be_sampled() {
        let own = sample(std::process::id(), clock_ticks_per_second()).unwrap();
        assert!(own.peak_rss_kib > 0);
        assert!(own.cpu_seconds >= 0.0);
    }
}
