//! The process tree as /proc shows it: the existing descendants of a process (for `--pid`, whose
//! children forked before the agent started), and the process a thread id belongs to.

use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Most descendants followed from one walk (the kernel's pid filter set is smaller anyway).
pub const MAX_DESCENDANTS: usize = tracer_common::MAX_FILTER_PIDS as usize;

/// The parent pid in the text of `/proc/<pid>/stat`. The command name is in parentheses and may
/// itself contain spaces and parentheses: the fields after the last `)` are state, then ppid.
pub fn ppid_from_stat(stat: &str) -> Option<u32> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The thread group id (process id) of thread `tid`, from `<proc>/<tid>/status`.
pub fn thread_group_of(proc_root: &Path, tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(tid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every running process below `roots` in the process tree (children, their children, ...),
/// not including the roots; at most `MAX_DESCENDANTS`. Processes that exit during the walk are
/// skipped.
pub fn descendants(proc_root: &Path, roots: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(ppid) = ppid_from_stat(&stat) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut seen: HashSet<u32> = roots.iter().copied().collect();
    let mut queue: Vec<u32> = roots.to_vec();
    let mut out = Vec::new();
    while let Some(parent) = queue.pop() {
        for child in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            if out.len() >= MAX_DESCENDANTS {
                return out;
            }
            if seen.insert(*child) {
                out.push(*child);
                queue.push(*child);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_is_read_after_a_name_with_spaces_and_parentheses() {
        assert_eq!(ppid_from_stat("42 (nginx) S 7 42 42 0"), Some(7));
        assert_eq!(ppid_from_stat("42 (a) b (c)) R 9 1 1"), Some(9));
        assert_eq!(ppid_from_stat("42 (cut"), None);
        assert_eq!(ppid_from_stat(""), None);
    }

    /// A fake /proc: 1 -> 10 -> {11, 12}, 12 -> 13, and an unrelated 20 (child of 1).
    fn fake_proc() -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (pid, ppid) in [(1, 0), (10, 1), (11, 10), (12, 10), (13, 12), (20, 1)] {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("stat"), format!("{pid} (p {pid}) S {ppid} 0 0")).unwrap();
            std::fs::write(p.join("status"), format!("Name:\tp\nTgid:\t{pid}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        dir
    }

    #[test]
    fn descendants_are_the_whole_subtree_and_nothing_else() {
        let proc = fake_proc();
        let mut found = descendants(proc.path(), &[10]);
        found.sort_unstable();
        assert_eq!(found, [11, 12, 13]);
        assert_eq!(descendants(proc.path(), &[13]), Vec::<u32>::new());
        assert_eq!(descendants(proc.path(), &[99]), Vec::<u32>::new());
    }

    #[test]
    fn thread_group_comes_from_status() {
        let proc = fake_proc();
        assert_eq!(thread_group_of(proc.path(), 12), Some(12));
        assert_eq!(thread_group_of(proc.path(), 77), None);
    }

    /// A scratch directory removed on drop.
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static SEQ: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "tracer-proctree-{}-{}",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
