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

/// Drops this process's mappings of the whole pages inside `bytes`, a slice of the binary's
/// read-only data: they stop counting in its resident set, and are read again from the file
/// (the page cache) if ever touched.
fn drop_file_pages(bytes: &'static [u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = match usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) {
        Ok(page) if page.is_power_of_two() => page,
        _ => return,
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
