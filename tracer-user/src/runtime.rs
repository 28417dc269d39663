//! Which traced processes multiplex requests over OS threads, so that the linker never links by
//! thread for them (a wrong link is worse than a missing one). Detected: 64-bit Go binaries, by
//! the build info every Go toolchain since 1.13 writes into the `.go.buildinfo` ELF section (it
//! starts with the magic `\xff Go buildinf:`). Read once per process from `/proc/<pid>/exe`
//! (section headers and 14 bytes, nothing else), cached by pid and start time, bounded.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::idhash::IdHashMap;
use crate::linker::Threads;

/// Default number of processes remembered.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The start of Go's build info.
const GO_BUILDINFO_MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// The ELF section holding it.
const GO_BUILDINFO_SECTION: &str = ".go.buildinfo";

/// Whether the executable at `path` is a Go program. Unreadable or non-ELF files are not.
pub fn is_go_executable(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Some(offset) = buildinfo_offset(&file) else {
        return false;
    };
    let mut magic = [0u8; GO_BUILDINFO_MAGIC.len()];
    file.read_exact_at(&mut magic, offset).is_ok() && &magic == GO_BUILDINFO_MAGIC
}

/// File offset of the `.go.buildinfo` section of a 64-bit ELF. `ReadCache` reads only what is
/// asked for: the file header, the section headers and the section-name table (never the
/// symbol tables, which can be tens of MiB).
fn buildinfo_offset(file: &File) -> Option<u64> {
    use object::read::elf::{FileHeader, SectionHeader};
    let cache = object::ReadCache::new(file);
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&cache).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, &cache).ok()?;
    let (_, section) = sections.section_by_name(endian, GO_BUILDINFO_SECTION.as_bytes())?;
    let (offset, size) = section.file_range(endian)?;
    (size >= GO_BUILDINFO_MAGIC.len() as u64).then_some(offset)
}

/// Counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Executables inspected.
    pub inspected: u64,
    /// Of those, multiplexing runtimes found.
    pub multiplexed: u64,
    /// Entries dropped because the cache was full.
    pub evicted: u64,
    /// Entries removed because their process exited.
    pub exited_removed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    start_time: Option<u64>,
    threads: Threads,
    /// The process was gone at the last sweep.
    gone: bool,
}

/// [`Threads`] of each process, by pid, checked against the process start time.
pub struct RuntimeCache {
    proc_root: PathBuf,
    capacity: usize,
    entries: IdHashMap<u32, Entry>,
    stats: RuntimeStats,
}

impl RuntimeCache {
    pub fn new(proc_root: PathBuf, capacity: usize) -> Self {
        RuntimeCache {
            proc_root,
            capacity: capacity.max(1),
            entries: IdHashMap::default(),
            stats: RuntimeStats::default(),
        }
    }

    pub fn stats(&self) -> RuntimeStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets processes gone at this sweep and the previous one (see
    /// `ResourceCache::sweep_exited`).
    pub fn sweep_exited(&mut self) {
        let proc_root = &self.proc_root;
        let before = self.entries.len();
        self.entries.retain(|pid, entry| {
            let alive = proc_root.join(pid.to_string()).exists();
            let keep = alive || !entry.gone;
            entry.gone = !alive;
            keep
        });
        self.stats.exited_removed += (before - self.entries.len()) as u64;
    }

    /// The process `pid` (started at `start_time`, when known) is alive now: inspect its
    /// executable unless it is cached for that same process.
    pub fn observe(&mut self, pid: u32, start_time: Option<u64>) {
        if let Some(entry) = self.entries.get(&pid)
            && (start_time.is_none() || entry.start_time == start_time)
        {
            return;
        }
        self.inspect(pid, start_time);
    }

    /// How `pid` uses its threads (inspected now if it was never observed).
    pub fn threads(&mut self, pid: u32) -> Threads {
        match self.entries.get(&pid) {
            Some(entry) => entry.threads,
            None => {
                let start_time = crate::proc_identity::start_time(&self.proc_root, pid);
                self.inspect(pid, start_time)
            }
        }
    }

    fn inspect(&mut self, pid: u32, start_time: Option<u64>) -> Threads {
        let exe = self.proc_root.join(pid.to_string()).join("exe");
        self.stats.inspected += 1;
        let threads = if is_go_executable(&exe) {
            self.stats.multiplexed += 1;
            Threads::Multiplexed
        } else {
            Threads::Dedicated
        };
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&pid) {
            // Processes come and go; any eighth will do (a dropped entry is read again).
            let victims: Vec<u32> = self
                .entries
                .keys()
                .copied()
                .take((self.capacity / 8).max(1))
                .collect();
            for victim in victims {
                self.entries.remove(&victim);
                self.stats.evicted += 1;
            }
        }
        self.entries.insert(
            pid,
            Entry {
                start_time,
                threads,
                gone: false,
            },
        );
        threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_not_go_and_garbage_is_not_either() {
        let me = std::env::current_exe().expect("own exe");
        assert!(!is_go_executable(&me));
        assert!(!is_go_executable(Path::new("/proc/self/status")));
        assert!(!is_go_executable(Path::new("/nonexistent/binary")));
    }

    /// A minimal little-endian ELF64 with one data section `name` holding `contents`.
    fn elf_with_section(name: &str, contents: &[u8]) -> Vec<u8> {
        let shstrtab = format!("\0{name}\0.shstrtab\0").into_bytes();
        let data_off = 64u64;
        let strtab_off = data_off + contents.len() as u64;
        let shoff = (strtab_off + shstrtab.len() as u64).next_multiple_of(8);
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&0u64.to_le_bytes()); // entry
        elf.extend_from_slice(&0u64.to_le_bytes()); // phoff
        elf.extend_from_slice(&shoff.to_le_bytes());
        elf.extend_from_slice(&0u32.to_le_bytes()); // flags
        for half in [64u16, 56, 0, 64, 3, 2] {
            // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
            elf.extend_from_slice(&half.to_le_bytes());
        }
        elf.extend_from_slice(contents);
        elf.extend_from_slice(&shstrtab);
        elf.resize(shoff as usize, 0);
        let header = |name: u32, kind: u32, offset: u64, size: u64| {
            let mut h = Vec::with_capacity(64);
            h.extend_from_slice(&name.to_le_bytes());
            h.extend_from_slice(&kind.to_le_bytes());
            h.extend_from_slice(&[0u8; 16]); // flags, addr
            h.extend_from_slice(&offset.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&[0u8; 8]); // link, info
            h.extend_from_slice(&1u64.to_le_bytes()); // addralign
            h.extend_from_slice(&0u64.to_le_bytes()); // entsize
            h
        };
        elf.extend(header(0, 0, 0, 0));
        elf.extend(header(1, 1, data_off, contents.len() as u64));
        let strtab_name = 1 + name.len() as u32 + 1;
        elf.extend(header(strtab_name, 3, strtab_off, shstrtab.len() as u64));
        elf
    }

    #[test]
    fn finds_go_build_info_in_an_elf_section() {
        let dir = std::env::temp_dir().join(format!("tracer-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut info = GO_BUILDINFO_MAGIC.to_vec();
        info.extend_from_slice(&[8, 2, 0, 0]);
        let cases = [
            ("go", elf_with_section(".go.buildinfo", &info), true),
            (
                "wrong-magic",
                elf_with_section(".go.buildinfo", b"\xff Go buildinf?xxxx"),
                false,
            ),
            (
                "too-short",
                elf_with_section(".go.buildinfo", b"\xff Go"),
                false,
            ),
            ("other-section", elf_with_section(".data", &info), false),
            (
                "truncated",
                elf_with_section(".go.buildinfo", &info)[..100].to_vec(),
                false,
            ),
        ];
        for (file, bytes, expected) in cases {
            let path = dir.join(file);
            std::fs::write(&path, bytes).expect("write elf");
            assert_eq!(is_go_executable(&path), expected, "{file}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cache_is_bounded_and_counts_evictions() {
        let mut cache = RuntimeCache::new(PathBuf::from("/nonexistent-proc"), 16);
        for pid in 0..100 {
            assert_eq!(cache.threads(pid), Threads::Dedicated);
            assert!(cache.len() <= 16);
        }
        let s = cache.stats();
        assert_eq!(s.inspected, 100);
        assert!(s.evicted >= 84, "{s:?}");
        // Same pid, new start time: inspected again.
        cache.observe(5000, Some(1));
        cache.observe(5000, Some(1));
        cache.observe(5000, Some(2));
        assert_eq!(cache.stats().inspected, 102);
        // Nothing under this proc root is alive: two sweeps empty the cache.
        cache.sweep_exited();
        assert!(!cache.is_empty());
        cache.sweep_exited();
        assert!(cache.is_empty());
        assert!(cache.stats().exited_removed >= 1);
    }
}
