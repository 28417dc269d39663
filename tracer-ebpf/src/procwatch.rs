//! Process changes for userspace discovery: every exec and every executable file mapping notes
//! its process in `PROCESS_CHANGES`, so the agent's TLS discovery reads again only those
//! processes, not every process of the host at every rescan.

use aya_ebpf::{EbpfContext, programs::TracePointContext};
use tracer_common::{counter, process_change};

use crate::conn::sys_arg;
use crate::maps::{PROCESS_CHANGES, count};

/// Notes that process `tgid` changed in the way `bit` says. A full table is counted (userspace
/// then reads every process again).
#[inline(always)]
fn note(tgid: u32, bit: u32) {
    if let Some(bits) = PROCESS_CHANGES.get_ptr_mut(&tgid) {
        // SAFETY: this process's entry; a racing writer only sets bits too.
        unsafe {
            if *bits & bit == 0 {
                *bits |= bit;
            }
        }
        return;
    }
    if PROCESS_CHANGES.insert(&tgid, &bit, 0).is_err() {
        count(counter::PROCESS_CHANGES_FULL, 1);
    }
}

/// `sched_process_exec`: the process runs another executable.
#[inline(always)]
pub fn on_exec(ctx: &TracePointContext) {
    note(ctx.tgid(), process_change::EXEC);
}

/// `sys_enter_mmap`: a file mapped executable (ld.so at start-up, `dlopen`) is a library the
/// process may call from now on. Anonymous and non-executable mappings (malloc, stacks, data)
/// return after two comparisons.
#[inline(always)]
pub fn on_mmap(ctx: &TracePointContext) {
    const PROT_EXEC: u64 = 4;
    // mmap(addr, len, prot, flags, fd, offset)
    let prot = sys_arg(ctx, 2);
    if prot & PROT_EXEC == 0 {
        return;
    }
    let fd = sys_arg(ctx, 4) as i64 as i32;
    if fd < 0 {
        return;
    }
    note(ctx.tgid(), process_change::EXEC_MAPPING);
}
