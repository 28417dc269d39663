//! What the bench reads from /proc: a process's CPU time and peak RSS, the CPU time of the
//! bench's reaped children (wrk), the whole machine's busy time, a process's children, and the
//! machine's description.

use std::process::Command;

use anyhow::{Context, Result};

/// CPU time and peak resident set of one process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// utime + stime of all its threads, in seconds.
    pub cpu_seconds: f64,
    /// `VmHWM`: the peak resident set so far, in KiB. It counts mapped file pages too: the
    /// binary's code and the mmapped BPF ring buffer (its data pages once, or twice for agents
    /// that read it through aya's RingBuf).
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

/// cutime + cstime in ticks from the text of /proc/<pid>/stat: the CPU time of the children the
/// process has waited for (fields 16 and 17).
pub fn children_ticks_from_stat(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(13);
    let cutime: u64 = fields.next()?.parse().ok()?;
    let cstime: u64 = fields.next()?.parse().ok()?;
    Some(cutime + cstime)
}

/// CPU seconds of the children this process has reaped so far. Around a child run with
/// `Command::output` (and no other child reaped meanwhile) its delta is that child's CPU time.
pub fn reaped_children_cpu_seconds(ticks_per_second: f64) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let ticks = children_ticks_from_stat(&stat).context("parsing /proc/self/stat")?;
    Ok(ticks as f64 / ticks_per_second)
}

/// Busy ticks of all CPUs from the text of /proc/stat: user, nice, system, irq, softirq and
/// steal of the `cpu` line (guest time is already in user; idle and iowait are not busy).
pub fn busy_ticks_from_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| values.get(i).copied();
    Some(at(0)? + at(1)? + at(2)? + at(5)? + at(6)? + at(7).unwrap_or(0))
}

/// Busy CPU seconds of the whole machine since boot.
pub fn system_busy_seconds(ticks_per_second: f64) -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = busy_ticks_from_proc_stat(&text).context("parsing /proc/stat")?;
    Ok(ticks as f64 / ticks_per_second)
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
        assert_eq!(children_ticks_from_stat(stat), Some(0));
        let waited = "99 (xtask) S 1 99 99 0 -1 0 0 0 0 0 10 20 300 40 20 0 1 0 100 1 1";
        assert_eq!(children_ticks_from_stat(waited), Some(340));
        assert_eq!(parent_from_stat(stat), Some(1));
        assert_eq!(cpu_ticks_from_stat("1234 (x) S 1"), None);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let text = "cpu  100 5 50 9000 70 3 7 2 0 0\ncpu0 50 2 25 4500 35 1 3 1 0 0\nintr 1\n";
        assert_eq!(
            busy_ticks_from_proc_stat(text),
            Some(100 + 5 + 50 + 3 + 7 + 2)
        );
        assert_eq!(busy_ticks_from_proc_stat("cpu  1 2\n"), None);
        assert!(system_busy_seconds(clock_ticks_per_second()).unwrap() > 0.0);
    }

    #[test]
    fn reaped_children_time_grows_when_a_child_ran() {
        let ticks = clock_ticks_per_second();
        let before = reaped_children_cpu_seconds(ticks).unwrap();
        // A child that burns some CPU, waited for.
        std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .output()
            .unwrap();
        let after = reaped_children_cpu_seconds(ticks).unwrap();
        assert!(after > before, "{before} -> {after}");
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
