//! The kernel side's cost of one round: run time of the agent's own eBPF programs. The kernel
//! counts it (`run_time_ns`, `run_cnt`) only while statistics are on: a `BPF_ENABLE_STATS` file
//! descriptor turns them on for as long as it is open, without touching the
//! `kernel.bpf_stats_enabled` sysctl (so nothing is left to restore, even when the bench dies).
//! The programs are those the agent holds open (`/proc/PID/fd` links to `anon_inode:bpf-prog`;
//! other agents on the host are not counted), their counters read from `/proc/PID/fdinfo`, their
//! names through `BPF_OBJ_GET_INFO_BY_FD`.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

/// `bpf(2)` commands and the statistics type used here (linux/bpf.h).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
/// `struct bpf_prog_info` up to and including `name[16]` (at offset 64).
const PROG_INFO_NAME_END: usize = 80;
const PROG_INFO_NAME_AT: usize = 64;

/// `bpf(cmd, attr, size)`; the fd or value it returns.
fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, writable buffer of the length passed, laid out as the command's
    // member of `union bpf_attr` (zero-filled beyond it, as the kernel requires).
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// eBPF run-time statistics, on while this is alive.
pub struct StatsOn {
    _fd: OwnedFd,
}

impl StatsOn {
    pub fn enable() -> Result<StatsOn> {
        let mut attr = [0u8; 8];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        let fd = bpf(BPF_ENABLE_STATS, &mut attr)
            .context("BPF_ENABLE_STATS (eBPF run-time statistics need Linux >= 5.8 and root)")?;
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(StatsOn {
            _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// The counters of one program at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgCounters {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The agent's programs by id, at one moment.
pub type Snapshot = BTreeMap<u32, ProgCounters>;

/// `prog_id`, `run_time_ns` and `run_cnt` of a bpf-prog fd's fdinfo.
fn parse_fdinfo(text: &str) -> Option<(u32, ProgCounters)> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    Some((
        u32::try_from(field("prog_id")?).ok()?,
        ProgCounters {
            run_time_ns: field("run_time_ns").unwrap_or(0),
            run_cnt: field("run_cnt").unwrap_or(0),
        },
    ))
}

/// Every eBPF program process `pid` holds open, with its counters.
pub fn snapshot(pid: u32) -> Result<Snapshot> {
    let dir = format!("/proc/{pid}/fd");
    let mut out = Snapshot::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry?;
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(&info) else {
            continue;
        };
        if let Some((id, counters)) = parse_fdinfo(&text) {
            out.insert(id, counters);
        }
    }
    if out.is_empty() {
        bail!("process {pid} holds no eBPF program open");
    }
    Ok(out)
}

/// The name the program was loaded with (at most 15 bytes), or `prog<id>`.
fn program_name(id: u32) -> String {
    let fallback = || format!("prog{id}");
    let mut attr = [0u8; 12];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) else {
        return fallback();
    };
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = [0u8; PROG_INFO_NAME_END];
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(PROG_INFO_NAME_END as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_err() {
        return fallback();
    }
    let name = &info[PROG_INFO_NAME_AT..];
    let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    match std::str::from_utf8(&name[..len]) {
        Ok(n) if !n.is_empty() => n.to_string(),
        _ => fallback(),
    }
}

/// What one program cost over a round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramCost {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The programs' run time between two snapshots of the same agent, by name (programs loaded
/// under one name are summed), most expensive first; programs that did not run are left out.
pub fn between(before: &Snapshot, after: &Snapshot) -> Vec<ProgramCost> {
    between_named(before, after, program_name)
}

fn between_named(
    before: &Snapshot,
    after: &Snapshot,
    name: impl Fn(u32) -> String,
) -> Vec<ProgramCost> {
    let mut by_name: BTreeMap<String, ProgramCost> = BTreeMap::new();
    for (id, a) in after {
        let b = before.get(id).copied().unwrap_or_default();
        let runs = a.run_cnt.saturating_sub(b.run_cnt);
        if runs == 0 {
            continue;
        }
        let name = name(*id);
        let cost = by_name.entry(name.clone()).or_insert(ProgramCost {
            name,
            ..ProgramCost::default()
        });
        cost.run_time_ns += a.run_time_ns.saturating_sub(b.run_time_ns);
        cost.run_cnt += runs;
    }
    let mut out: Vec<ProgramCost> = by_name.into_values().collect();
    out.sort_by(|x, y| y.run_time_ns.cmp(&x.run_time_ns).then(x.name.cmp(&y.name)));
    out
}

/// Sums programs' costs by name over rounds, most expensive first.
pub fn sum_by_name<'a>(rounds: impl IntoIterator<Item = &'a [ProgramCost]>) -> Vec<ProgramCost> {
    let mut by_name: BTreeMap<&str, ProgramCost> = BTreeMap::new();
    for programs in rounds {
        for p in programs {
            let cost = by_name.entry(&p.name).or_insert(ProgramCost {
                name: p.name.clone(),
                ..ProgramCost::default()
            });
            cost.run_time_ns += p.run_time_ns;
            cost.run_cnt += p.run_cnt;
        }
    }
    let mut out: Vec<ProgramCost> = by_name.into_values().collect();
    out.sort_by(|x, y| y.run_time_ns.cmp(&x.run_time_ns).then(x.name.cmp(&y.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_gives_id_and_counters() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\tb4d5e7f3a1c2d9e0\nmemlock:\t4096\nprog_id:\t812\n\
                    run_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t0\n";
        assert_eq!(
            parse_fdinfo(text),
            Some((
                812,
                ProgCounters {
                    run_time_ns: 123456,
                    run_cnt: 789
                }
            ))
        );
        assert_eq!(parse_fdinfo("pos:\t0\n"), None);
    }

    #[test]
    fn deltas_are_summed_by_name_and_sorted_by_time() {
        let c = |run_time_ns, run_cnt| ProgCounters {
            run_time_ns,
            run_cnt,
        };
        let before = Snapshot::from([(1, c(100, 1)), (2, c(0, 0)), (3, c(50, 5))]);
        let after = Snapshot::from([
            (1, c(1100, 11)),
            (2, c(300, 2)),
            (3, c(50, 5)),
            (4, c(40, 1)),
        ]);
        let name = |id: u32| {
            if id == 4 {
                "b".to_string()
            } else {
                format!("p{id}")
            }
        };
        let got = between_named(&before, &after, name);
        let names: Vec<(&str, u64, u64)> = got
            .iter()
            .map(|p| (p.name.as_str(), p.run_time_ns, p.run_cnt))
            .collect();
        // p3 did not run; p1 cost 1000 ns over 10 runs.
        assert_eq!(names, vec![("p1", 1000, 10), ("p2", 300, 2), ("b", 40, 1)]);
        let total = sum_by_name([got.as_slice(), got.as_slice()]);
        assert_eq!(total[0].run_time_ns, 2000);
        assert_eq!(total[2].run_cnt, 2);
    }

    #[test]
    fn stats_and_names_come_from_the_kernel() {
        // Needs root and Linux >= 5.8, as the bench does; the bench's own process holds no
        // program, which `snapshot` says.
        let _on = StatsOn::enable().expect("BPF_ENABLE_STATS");
        assert!(snapshot(std::process::id()).is_err());
        assert_eq!(program_name(u32::MAX), format!("prog{}", u32::MAX));
    }
}
