//! Which traced processes multiplex requests over OS threads, so that the linker never links by
//! thread for them (a wrong link is worse than a missing one). Detection fails closed: a process
//! whose executable cannot be read or classified is [`Threads::Unknown`] and gets no thread links
//! either. Go is recognised (ELF32 and ELF64, either byte order) by the `.go.buildinfo` section
//! and its magic `\xff Go buildinf:` (Go >= 1.13), else by a `.gopclntab` or `.note.go.buildid`
//! section (older Go), else, when the section headers are stripped, by the magic at a 16-byte
//! boundary in the first 64 KiB of the first writable PT_LOAD segment (as Go's own
//! `debug/buildinfo` searches). Node (exe named `node`/`nodejs`) multiplexes requests over its
//! event loop and is treated like Go. Read once per process from `/proc/<pid>/exe` (bounded:
//! at most 4096 section or program headers, 1 MiB of section names, 64 KiB of segment data),
//! cached by pid, start time and the executable's identity (device and inode, which change on
//! exec).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::correlate::linker::Threads;
use crate::idhash::IdHashMap;

/// Default number of processes remembered.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The start of Go's build info.
const GO_BUILDINFO_MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Sections only the Go toolchain writes.
const GO_SECTIONS: [&[u8]; 3] = [b".go.buildinfo", b".gopclntab", b".note.go.buildid"];
/// Section or program headers accepted (a hostile file could claim millions).
const MAX_HEADERS: u64 = 4096;
/// Section-name table bytes accepted.
const MAX_SECTION_NAMES: u64 = 1 << 20;
/// Bytes of the first writable segment searched for the build info.
const SEGMENT_SCAN_BYTES: u64 = 64 * 1024;
/// Alignment of the build info in its segment.
const BUILDINFO_ALIGN: usize = 16;

/// What an executable says about its runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executable {
    /// Go: goroutines move between threads.
    Go,
    /// An ELF that is not Go.
    Other,
    /// Headers too large to read safely.
    Refused,
    /// Unreadable, not ELF, truncated, or stripped of section headers without the Go magic.
    Unknown,
}

/// Whether the executable at `path` is a Go program.
pub fn is_go_executable(path: &Path) -> bool {
    classify_executable(path) == Executable::Go
}

/// Classifies the executable at `path` (see the module documentation).
pub fn classify_executable(path: &Path) -> Executable {
    let Ok(file) = File::open(path) else {
        return Executable::Unknown;
    };
    classify_file(&file).unwrap_or(Executable::Unknown)
}

/// The ELF header fields needed, in either class and byte order.
struct Elf<'a> {
    file: &'a File,
    is64: bool,
    big: bool,
}

impl Elf<'_> {
    fn read(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        self.file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    fn u16(&self, b: &[u8], at: usize) -> Option<u64> {
        let v: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(u64::from(if self.big {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }))
    }

    fn u32(&self, b: &[u8], at: usize) -> Option<u64> {
        let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(u64::from(if self.big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }))
    }

    /// A word: 8 bytes in ELF64, 4 in ELF32.
    fn word(&self, b: &[u8], at64: usize, at32: usize) -> Option<u64> {
        if self.is64 {
            let v: [u8; 8] = b.get(at64..at64 + 8)?.try_into().ok()?;
            Some(if self.big {
                u64::from_be_bytes(v)
            } else {
                u64::from_le_bytes(v)
            })
        } else {
            self.u32(b, at32)
        }
    }
}

fn classify_file(file: &File) -> Option<Executable> {
    let mut ident = [0u8; 64];
    let got = file.read_at(&mut ident, 0).ok()?;
    if got < 52 || &ident[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = match ident[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match ident[5] {
        1 => false,
        2 => true,
        _ => return None,
    };
    if is64 && got < 64 {
        return None;
    }
    let elf = Elf { file, is64, big };
    let h = &ident[..];
    let (phoff, shoff) = (elf.word(h, 32, 28)?, elf.word(h, 40, 32)?);
    let at = |o64: usize, o32: usize| elf.u16(h, if is64 { o64 } else { o32 });
    let (phentsize, phnum) = (at(54, 42)?, at(56, 44)?);
    let (shentsize, mut shnum, mut shstrndx) = (at(58, 46)?, at(60, 48)?, at(62, 50)?);
    let sh_size = if is64 { 64 } else { 40 };
    if shoff != 0 {
        if shentsize != sh_size {
            return None;
        }
        if shnum == 0 || shstrndx == 0xffff {
            // Extended numbering: the real values are in section header 0.
            let first = elf.read(shoff, sh_size)?;
            if shnum == 0 {
                shnum = elf.word(&first, 32, 20)?;
            }
            if shstrndx == 0xffff {
                shstrndx = elf.u32(&first, if is64 { 40 } else { 24 })?;
            }
        }
    }
    if shoff != 0 && shnum > 0 {
        if shnum > MAX_HEADERS {
            return Some(Executable::Refused);
        }
        if let Some(found) = scan_sections(&elf, shoff, shnum, shstrndx)? {
            return Some(found);
        }
        return Some(Executable::Other);
    }
    // No section headers (sstrip, some packers): search the data segment.
    let ph_size = if is64 { 56 } else { 32 };
    if phoff == 0 || phnum == 0 || phentsize != ph_size {
        return None;
    }
    if phnum > MAX_HEADERS {
        return Some(Executable::Refused);
    }
    let table = elf.read(phoff, phnum * ph_size)?;
    for ph in table.chunks_exact(ph_size as usize) {
        let kind = elf.u32(ph, 0)?;
        let flags = elf.u32(ph, if is64 { 4 } else { 24 })?;
        const PT_LOAD: u64 = 1;
        const PF_W: u64 = 2;
        if kind != PT_LOAD || flags & PF_W == 0 {
            continue;
        }
        let offset = elf.word(ph, 8, 4)?;
        let filesz = elf.word(ph, 32, 16)?;
        let len = filesz.min(SEGMENT_SCAN_BYTES);
        let data = elf.read(offset, len)?;
        let go = (0..data.len())
            .step_by(BUILDINFO_ALIGN)
            .any(|i| data[i..].starts_with(GO_BUILDINFO_MAGIC));
        return if go { Some(Executable::Go) } else { None };
    }
    None
}

/// Looks for Go's sections. `Some(Some(Go))` when found, `Some(None)` when the headers were
/// read and none is Go's, `None` when they could not be read.
fn scan_sections(
    elf: &Elf<'_>,
    shoff: u64,
    shnum: u64,
    shstrndx: u64,
) -> Option<Option<Executable>> {
    let sh_size: u64 = if elf.is64 { 64 } else { 40 };
    let table = elf.read(shoff, shnum * sh_size)?;
    let header = |i: u64| table.get((i * sh_size) as usize..((i + 1) * sh_size) as usize);
    let strtab = header(shstrndx)?;
    let (str_off, str_len) = (elf.word(strtab, 24, 16)?, elf.word(strtab, 32, 20)?);
    if str_len > MAX_SECTION_NAMES {
        return Some(Some(Executable::Refused));
    }
    let names = elf.read(str_off, str_len)?;
    for sh in table.chunks_exact(sh_size as usize) {
        let name_at = elf.u32(sh, 0)? as usize;
        let Some(rest) = names.get(name_at..) else {
            continue;
        };
        let name = &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())];
        if !GO_SECTIONS.contains(&name) {
            continue;
        }
        if name == b".go.buildinfo" {
            let (offset, size) = (elf.word(sh, 24, 16)?, elf.word(sh, 32, 20)?);
            if size < GO_BUILDINFO_MAGIC.len() as u64 {
                continue;
            }
            let magic = elf.read(offset, GO_BUILDINFO_MAGIC.len() as u64)?;
            if magic != GO_BUILDINFO_MAGIC {
                continue;
            }
        }
        return Some(Some(Executable::Go));
    }
    Some(None)
}

/// Whether the executable's file name says it is Node (an event loop serving many requests on
/// one thread: "the one open request on this thread" does not prove causality there).
fn is_node(exe_target: &Path) -> bool {
    matches!(
        exe_target.file_name().and_then(|n| n.to_str()),
        Some("node" | "nodejs")
    )
}

/// Counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Executables inspected.
    pub inspected: u64,
    /// Of those, multiplexing runtimes found.
    pub multiplexed: u64,
    /// Of those, executables that could not be classified (unreadable, gone, not ELF, stripped
    /// of section headers without the Go magic, or a pid the agent cannot name in its /proc):
    /// no thread links for them.
    pub unknown: u64,
    /// Of those, executables refused because their headers claim too much to read.
    pub refused: u64,
    /// Entries dropped because the cache was full.
    pub evicted: u64,
    /// Entries removed because their process exited.
    pub exited_removed: u64,
}

/// Identity of an executable file: (device, inode). It changes on exec, the start time does not.
type ExeId = (u64, u64);

#[derive(Clone, Copy, Debug)]
struct Entry {
    start_time: Option<u64>,
    exe: Option<ExeId>,
    /// The pid under the agent's /proc (differs from the kernel's pid in a child namespace).
    proc_pid: Option<u32>,
    threads: Threads,
    /// The process was gone at the last sweep.
    gone: bool,
}

/// [`Threads`] of each process, by pid, checked against the process start time and executable.
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
    /// `ResourceCache::sweep_exited`). Processes the agent cannot name are forgotten at once.
    pub fn sweep_exited(&mut self) {
        let proc_root = &self.proc_root;
        let before = self.entries.len();
        self.entries.retain(|_, entry| {
            let alive = entry
                .proc_pid
                .is_some_and(|p| proc_root.join(p.to_string()).exists());
            let keep = alive || !entry.gone;
            entry.gone = !alive;
            keep
        });
        self.stats.exited_removed += (before - self.entries.len()) as u64;
    }

    fn exe_path(&self, proc_pid: u32) -> PathBuf {
        self.proc_root.join(proc_pid.to_string()).join("exe")
    }

    fn exe_id(&self, proc_pid: Option<u32>) -> Option<ExeId> {
        crate::telemetry::proc_identity::exe_id(&self.proc_root, proc_pid?)
    }

    /// The process `pid` (named `proc_pid` under the agent's /proc, `None` when it cannot be
    /// named; started at `start_time`, when known) is alive now: inspect its executable unless
    /// it is cached for that same process and executable.
    pub fn observe(&mut self, pid: u32, proc_pid: Option<u32>, start_time: Option<u64>) {
        let exe = self.exe_id(proc_pid);
        if let Some(entry) = self.entries.get(&pid)
            && (start_time.is_none() || entry.start_time == start_time)
            && (exe.is_none() || entry.exe == exe)
        {
            return;
        }
        self.inspect(pid, proc_pid, start_time, exe);
    }

    /// How `pid` uses its threads (inspected now if it was never observed).
    pub fn threads(&mut self, pid: u32, proc_pid: Option<u32>) -> Threads {
        match self.entries.get(&pid) {
            Some(entry) => entry.threads,
            None => {
                let start_time = proc_pid
                    .and_then(|p| crate::telemetry::proc_identity::start_time(&self.proc_root, p));
                let exe = self.exe_id(proc_pid);
                self.inspect(pid, proc_pid, start_time, exe)
            }
        }
    }

    fn inspect(
        &mut self,
        pid: u32,
        proc_pid: Option<u32>,
        start_time: Option<u64>,
        exe: Option<ExeId>,
    ) -> Threads {
        self.stats.inspected += 1;
        let kind = match proc_pid {
            Some(p) => {
                let path = self.exe_path(p);
                let node = std::fs::read_link(&path).is_ok_and(|target| is_node(&target));
                match classify_executable(&path) {
                    Executable::Other if node => Executable::Go,
                    kind => kind,
                }
            }
            None => Executable::Unknown,
        };
        let threads = match kind {
            Executable::Go => {
                self.stats.multiplexed += 1;
                Threads::Multiplexed
            }
            Executable::Other => Threads::Dedicated,
            Executable::Refused => {
                self.stats.refused += 1;
                self.stats.unknown += 1;
                Threads::Unknown
            }
            Executable::Unknown => {
                self.stats.unknown += 1;
                Threads::Unknown
            }
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
                exe,
                proc_pid,
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
    use crate::testing::go_build::{GoBuild, build_go_variants};

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
            assert_eq!(cache.threads(pid, Some(pid)), Threads::Unknown);
            assert!(cache.len() <= 16);
        }
        let s = cache.stats();
        assert_eq!(s.inspected, 100);
        assert!(s.evicted >= 84, "{s:?}");
        // Same pid, new start time: inspected again.
        cache.observe(5000, Some(5000), Some(1));
        cache.observe(5000, Some(5000), Some(1));
        cache.observe(5000, Some(5000), Some(2));
        assert_eq!(cache.stats().inspected, 102);
        // Nothing under this proc root is alive: two sweeps empty the cache.
        cache.sweep_exited();
        assert!(!cache.is_empty());
        cache.sweep_exited();
        assert!(cache.is_empty());
        assert!(cache.stats().exited_removed >= 1);
    }

    /// A minimal little-endian ELF32 with one data section `name` holding `contents`.
    fn elf32_with_section(name: &str, contents: &[u8]) -> Vec<u8> {
        let shstrtab = format!("\0{name}\0.shstrtab\0").into_bytes();
        let data_off = 52u32;
        let strtab_off = data_off + contents.len() as u32;
        let shoff = (strtab_off + shstrtab.len() as u32).next_multiple_of(4);
        let mut elf = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&3u16.to_le_bytes()); // i386
        elf.extend_from_slice(&1u32.to_le_bytes());
        for word in [0u32, 0, shoff, 0] {
            // entry, phoff, shoff, flags
            elf.extend_from_slice(&word.to_le_bytes());
        }
        for half in [52u16, 32, 0, 40, 3, 2] {
            elf.extend_from_slice(&half.to_le_bytes());
        }
        elf.extend_from_slice(contents);
        elf.extend_from_slice(&shstrtab);
        elf.resize(shoff as usize, 0);
        let header = |name: u32, kind: u32, offset: u32, size: u32| {
            let mut h = Vec::with_capacity(40);
            for word in [name, kind, 0, 0, offset, size, 0, 0, 1, 0] {
                h.extend_from_slice(&word.to_le_bytes());
            }
            h
        };
        elf.extend(header(0, 0, 0, 0));
        elf.extend(header(1, 1, data_off, contents.len() as u32));
        let strtab_name = 1 + name.len() as u32 + 1;
        elf.extend(header(strtab_name, 3, strtab_off, shstrtab.len() as u32));
        elf
    }

    /// A little-endian ELF64 without section headers and one writable PT_LOAD holding `data`.
    fn elf_without_sections(data: &[u8]) -> Vec<u8> {
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        elf.extend_from_slice(&2u16.to_le_bytes());
        elf.extend_from_slice(&62u16.to_le_bytes());
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&0u64.to_le_bytes()); // entry
        elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
        elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
        elf.extend_from_slice(&0u32.to_le_bytes());
        for half in [64u16, 56, 2, 64, 0, 0] {
            elf.extend_from_slice(&half.to_le_bytes());
        }
        let data_off = 64u64 + 2 * 56;
        let phdr = |flags: u32, offset: u64, size: u64| {
            let mut h = Vec::with_capacity(56);
            h.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            h.extend_from_slice(&flags.to_le_bytes());
            for word in [offset, 0, 0, size, size, 16] {
                h.extend_from_slice(&word.to_le_bytes());
            }
            h
        };
        elf.extend(phdr(5, 0, data_off)); // r-x: headers
        elf.extend(phdr(6, data_off, data.len() as u64)); // rw-: data
        elf.extend_from_slice(data);
        elf
    }

    #[test]
    fn classifies_elf32_stripped_old_go_and_refuses_hostile_headers() {
        let dir = std::env::temp_dir().join(format!("tracer-runtime32-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut info = GO_BUILDINFO_MAGIC.to_vec();
        info.extend_from_slice(&[4, 2, 0, 0]);
        let mut segment = vec![0u8; 64];
        segment.extend_from_slice(&info);
        let mut misaligned = vec![0u8; 65];
        misaligned.extend_from_slice(&info);
        // Extended numbering: e_shnum 0, the count (a million) in section 0's sh_size.
        let mut hostile = elf_with_section(".data", b"x");
        let shoff = u64::from_le_bytes(hostile[40..48].try_into().unwrap()) as usize;
        hostile[60..62].copy_from_slice(&0u16.to_le_bytes());
        hostile[shoff + 32..shoff + 40].copy_from_slice(&1_000_000u64.to_le_bytes());
        let mut bad_entsize = elf_with_section(".data", b"x");
        bad_entsize[58..60].copy_from_slice(&65u16.to_le_bytes());
        let cases = [
            (
                "go32",
                elf32_with_section(".go.buildinfo", &info),
                Executable::Go,
            ),
            ("c32", elf32_with_section(".data", &info), Executable::Other),
            (
                "go-1.12",
                elf_with_section(".gopclntab", b"\xfb\xff\xff\xff"),
                Executable::Go,
            ),
            (
                "buildid",
                elf_with_section(".note.go.buildid", b"abcd"),
                Executable::Go,
            ),
            (
                "sstripped-go",
                elf_without_sections(&segment),
                Executable::Go,
            ),
            (
                "sstripped-misaligned",
                elf_without_sections(&misaligned),
                Executable::Unknown,
            ),
            (
                "sstripped-c",
                elf_without_sections(&[0u8; 256]),
                Executable::Unknown,
            ),
            ("hostile-shnum", hostile, Executable::Refused),
            ("bad-shentsize", bad_entsize, Executable::Unknown),
            (
                "script",
                b"#!/bin/sh\necho hi\n".to_vec(),
                Executable::Unknown,
            ),
        ];
        for (file, bytes, expected) in cases {
            let path = dir.join(file);
            std::fs::write(&path, bytes).expect("write elf");
            assert_eq!(classify_executable(&path), expected, "{file}");
        }
        assert_eq!(
            classify_executable(&dir.join("missing")),
            Executable::Unknown
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unnamed_or_unreadable_process_gets_no_thread_links() {
        let mut cache = RuntimeCache::new(PathBuf::from("/proc"), 16);
        assert_eq!(cache.threads(1, None), Threads::Unknown);
        let me = std::process::id();
        assert_eq!(cache.threads(me, Some(me)), Threads::Dedicated);
        assert_eq!(cache.stats().unknown, 1);
        assert!(is_node(Path::new("/usr/bin/node")) && !is_node(Path::new("/usr/bin/python3")));
    }

    /// Real Go builds: stripped (-s -w), PIE, and 32-bit, as the toolchain writes them.
    #[test]
    fn real_go_builds_are_recognised() {
        let builds: [GoBuild<'_>; 3] = [
            ("stripped", &["-ldflags=-s -w"], &[]),
            ("pie", &["-buildmode=pie"], &[]),
            ("i386", &[], &[("GOARCH", "386")]),
        ];
        let dir = build_go_variants("runtime-go", "package main\nfunc main() {}\n", &builds);
        for (name, _, _) in builds {
            assert!(
                is_go_executable(&dir.join(name)),
                "{name} is not recognised as Go"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A launcher that execs a Go server keeps its pid and start time: the executable's
    /// identity tells the cache to look again.
    #[test]
    fn exec_into_go_is_noticed() {
        let root = std::env::temp_dir().join(format!("tracer-runtime-exec-{}", std::process::id()));
        let dir = root.join("50");
        std::fs::create_dir_all(&dir).expect("fake proc dir");
        let mut info = GO_BUILDINFO_MAGIC.to_vec();
        info.extend_from_slice(&[8, 2, 0, 0]);
        let go = root.join("go-server");
        std::fs::write(&go, elf_with_section(".go.buildinfo", &info)).expect("go elf");
        let launcher = root.join("launcher");
        std::fs::write(&launcher, elf_with_section(".data", b"x")).expect("c elf");
        std::os::unix::fs::symlink(&launcher, dir.join("exe")).expect("exe link");
        let mut cache = RuntimeCache::new(root.clone(), 16);
        cache.observe(50, Some(50), Some(9));
        assert_eq!(cache.threads(50, Some(50)), Threads::Dedicated);
        std::fs::remove_file(dir.join("exe")).expect("unlink");
        std::os::unix::fs::symlink(&go, dir.join("exe")).expect("exe relink");
        cache.observe(50, Some(50), Some(9));
        assert_eq!(cache.threads(50, Some(50)), Threads::Multiplexed);
        let _ = std::fs::remove_dir_all(&root);
    }
}
