//! The agent's resident memory: how the C allocator is set up at start, and handing back what
//! start-up used once the probes are loaded (the eBPF object's pages, the freed parse buffers).
//!
//! Measured host-wide under load (docs/BENCHMARKS.md): glibc's defaults kept about 12 MB more
//! resident than the agent used. Loading the probes frees buffers of several MiB (the object's
//! parse); each such free raises glibc's dynamic mmap threshold (up to 32 MiB) and its trim
//! threshold (twice that), after which freed heap was never returned to the kernel, and every
//! allocating thread grew its own arena. Fixed thresholds keep large buffers in their own
//! mappings (returned when freed) and let the heap shrink; two arenas serve the agent's few
//! allocating threads.
//!
//! Where the resident set goes (docs/ARCHITECTURE.md, "Resident memory", has the table): the ring
//! buffer's data pages (`--ring-buffer-mib`, mapped once by `capture::ring`), the binary's code
//! that runs (dropped once after start-up by [`release_start_up_code`]), shared libraries, and
//! the heap: mostly the event thread's arena (the reorder window's records, spans being built).
//! Start-up has its own peak: aya parses the kernel's BTF when its loader is made, which is
//! therefore done first thing in `main` (`capture::probes::make_loader_early`).

/// Allocations from this size up get their own mapping, unmapped when freed (a fixed value turns
/// off glibc's dynamic threshold). 1 MiB, not glibc's initial 128 KiB: under load the agent's
/// export and reassembly buffers of 128 KiB-1 MiB came and went as ~130 mmap/munmap pairs a
/// second, each new mapping paying page faults and zeroing; measured host-wide on a quiet machine
/// (two runs, interleaved rounds), 1 MiB cut the agent's CPU per request 0.85-0.90x paced and
/// 0.83x at saturation with the same peak RSS.
const MMAP_THRESHOLD: i32 = 1024 * 1024;
/// Free memory above this at the top of a heap is returned to the kernel (twice the mmap
/// threshold, so a buffer just under it freed at the top does not trim and fault back at once).
const TRIM_THRESHOLD: i32 = 2 * 1024 * 1024;
/// Arenas at most: the main one and one for the threads that allocate beside it (the event
/// thread, the output thread, the runtime's worker), instead of up to eight per core.
const ARENA_MAX: i32 = 2;

/// Sets the allocator's thresholds and arena count. Call first thing in `main`, before any
/// thread starts. No effect with an allocator other than glibc's; a parameter the operator set
/// in glibc's own environment variable (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
/// `MALLOC_ARENA_MAX`) keeps the operator's value.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value, env) in [
        (
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
            "MALLOC_MMAP_THRESHOLD_",
        ),
        (
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD,
            "MALLOC_TRIM_THRESHOLD_",
        ),
        (libc::M_ARENA_MAX, ARENA_MAX, "MALLOC_ARENA_MAX"),
    ] {
        if std::env::var_os(env).is_some() {
            continue;
        }
        // SAFETY: mallopt only changes allocator parameters; it returns 0 on a refused value,
        // which leaves glibc's default in place (nothing to do then).
        unsafe { libc::mallopt(param, value) };
    }
}

/// Returns what start-up used and no longer needs: the pages of the embedded eBPF object
/// (`object`, read once by the loader; a later load reads them again from the binary's file) and
/// every whole free page of the heap (the loader's parse buffers). Call once the probes are
/// loaded.
pub fn release_start_up_memory(object: &'static [u8]) {
    drop_file_pages(object);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; in-use memory is untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops this process's mappings of its own binary's code and read-only data, so that only what
/// runs from now on comes back (from the page cache, on first use): the code that only start-up
/// ran (loading and attaching the probes, parsing the kernel's BTF, the command line) stops
/// counting in the resident set. Only mappings of the binary that are not writable and hold no
/// private (written) page are dropped: their pages are exactly the file's. Call once everything
/// is attached.
pub fn release_start_up_code() {
    #[cfg(target_os = "linux")]
    {
        let (Ok(exe), Ok(smaps)) = (
            std::fs::read_link("/proc/self/exe"),
            std::fs::read_to_string("/proc/self/smaps"),
        ) else {
            return;
        };
        for (start, end) in file_only_mappings(&smaps, &exe.to_string_lossy()) {
            // SAFETY: [start, end) is a whole mapping of the binary that is not writable and
            // holds no private page: its contents are the file's, so dropping the pages only
            // makes the next access read them again from the file (as `drop_file_pages`).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// The address ranges, in `/proc/<pid>/smaps` text, of the mappings of the file `path` that are
/// not writable and have no anonymous (copy-on-write) pages.
fn file_only_mappings(smaps: &str, path: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The current mapping: its range if it is a read-only mapping of `path`.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            // A mapping's header: range, perms, offset, dev, inode, path.
            let perms = fields.next().unwrap_or("");
            let name = fields.nth(3).unwrap_or("");
            current = (name == path && !perms.contains('w') && hi > lo).then_some((lo, hi));
            continue;
        }
        if first == "Anonymous:"
            && let Some(range) = current.take()
            && fields.next() == Some("0")
        {
            out.push(range);
        }
    }
    out
}

/// Drops this process's mappings of the whole pages inside `bytes`, a slice of the binary's
/// read-only data: they stop counting in its resident set, and are read again from the file
/// (the page cache) if ever touched.
fn drop_file_pages(bytes: &'static [u8]) {
    let Some(page) = page_size() else {
        return;
    };
    let start = bytes.as_ptr() as usize;
    let first = start.next_multiple_of(page);
    let last = (start + bytes.len()) & !(page - 1);
    if last <= first {
        return;
    }
    // SAFETY: [first, last) lies inside `bytes`, a static in the binary's read-only, private,
    // file-backed mapping, which is never written: MADV_DONTNEED only unmaps those pages, and any
    // later read faults the same bytes back in from the file.
    unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_DONTNEED,
        );
    }
}

/// The system's page size; None when sysconf fails or answers something that is not a power of
/// two (callers decide their fallback: a mapping guesses 4 KiB, a release is skipped).
pub fn page_size() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| p.is_power_of_two())
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATA: [u8; 3 * 4096 + 123] = {
        let mut d = [0u8; 3 * 4096 + 123];
        let mut i = 0;
        while i < d.len() {
            d[i] = (i % 251) as u8;
            i += 1;
        }
        d
    };

    #[test]
    fn released_pages_read_back_unchanged() {
        let before: u64 = DATA.iter().map(|&b| u64::from(b)).sum();
        release_start_up_memory(&DATA);
        let after: u64 = std::hint::black_box(&DATA)
            .iter()
            .map(|&b| u64::from(b))
            .sum();
        assert_eq!(before, after);
        assert!(DATA.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }

    #[test]
    fn only_unwritten_read_only_mappings_of_the_binary_are_dropped() {
        let smaps = "\
5600-5700 r--p 00000000 fe:00 11 /bin/tracer
Rss:                  64 kB
Anonymous:             0 kB
5700-5900 r-xp 00100000 fe:00 11 /bin/tracer
Anonymous:             0 kB
5900-5a00 r--p 00300000 fe:00 11 /bin/tracer
Anonymous:            12 kB
5a00-5b00 rw-p 00400000 fe:00 11 /bin/tracer
Anonymous:             0 kB
7f00-7f10 r-xp 00000000 fe:00 12 /lib/libc.so.6
Anonymous:             0 kB
7f10-7f20 rw-p 00000000 00:00 0
Anonymous:             8 kB
7f20-7f30 r--s 00001000 00:10 9 anon_inode:bpf-map
Anonymous:             0 kB
";
        assert_eq!(
            file_only_mappings(smaps, "/bin/tracer"),
            vec![(0x5600, 0x5700), (0x5700, 0x5900)]
        );
    }

    #[test]
    fn code_released_runs_again() {
        fn work(n: u64) -> u64 {
            (1..=n).map(|i| i * i % 7).sum()
        }
        let before = work(1000);
        release_start_up_code();
        assert_eq!(std::hint::black_box(work)(1000), before);
        // Read-only data of the binary reads back unchanged too.
        assert!(DATA.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }

    #[test]
    fn tuning_leaves_the_allocator_working() {
        tune_allocator();
        let big = vec![7u8; 4 << 20];
        assert_eq!(
            big.iter().map(|&b| usize::from(b)).sum::<usize>(),
            7 * (4 << 20)
        );
        drop(big);
        release_start_up_memory(&[]);
    }
}
