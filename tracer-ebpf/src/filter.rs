//! In-kernel filters: never the agent itself, only the pid set and port set when configured, and
//! fork-following so `tracer run` sees the children of the command it started (new processes
//! only: threads share their process's entry).

use aya_ebpf::{EbpfContext, programs::TracePointContext};

use crate::maps::{FILTER_PIDS, FILTER_PORTS, config};

/// Whether process `tgid` is traced.
#[inline(always)]
pub fn pid_traced(tgid: u32) -> bool {
    let Some(cfg) = config() else { return false };
    if tgid == cfg.agent_tgid {
        return false;
    }
    if cfg.filter_pids != 0 {
        // SAFETY: read-only lookup of a plain value.
        return unsafe { FILTER_PIDS.get(&tgid) }.is_some();
    }
    true
}

/// Whether a connection with these ports is traced (0 means unknown and never matches).
#[inline(always)]
pub fn ports_traced(local_port: u16, peer_port: u16) -> bool {
    let Some(cfg) = config() else { return false };
    if cfg.filter_ports == 0 {
        return true;
    }
    // SAFETY: read-only lookups.
    unsafe {
        (local_port != 0 && FILTER_PORTS.get(&local_port).is_some())
            || (peer_port != 0 && FILTER_PORTS.get(&peer_port).is_some())
    }
}

/// task:task_newtask: a new process (not a thread: threads share their process's tgid, which is
/// what the filter holds) starts a new generation of its pid, and joins the pid filter set when
/// its parent is in it.
#[inline(always)]
pub fn on_new_task(ctx: &TracePointContext) {
    const CLONE_THREAD: u64 = 0x0001_0000;
    let Some(cfg) = config() else { return };
    // SAFETY: the offsets come from the tracepoint's format file; the reads are bounds-checked
    // by the probe-read helper.
    let (Ok(child), Ok(flags)) = (unsafe {
        (
            ctx.read_at::<i32>(cfg.fork_child_pid_offset as usize),
            ctx.read_at::<u64>(cfg.fork_clone_flags_offset as usize),
        )
    }) else {
        return;
    };
    if child <= 0 || flags & CLONE_THREAD != 0 {
        return;
    }
    // A reused pid: connection entries of the process that had it are stale from now on.
    crate::conn::renew_generation(child as u32);
    if cfg.filter_pids == 0 || cfg.follow_forks == 0 {
        return;
    }
    // SAFETY: read-only lookup.
    if unsafe { FILTER_PIDS.get(&ctx.tgid()) }.is_none() {
        return;
    }
    if FILTER_PIDS.insert(&(child as u32), &1, 0).is_err() {
        crate::maps::count(tracer_common::counter::FILTER_TABLE_FULL, 1);
    }
}

/// sched_process_exit: forget an exiting process that had joined the filter set.
#[inline(always)]
pub fn on_exit(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    if cfg.filter_pids == 0 || cfg.follow_forks == 0 {
        return;
    }
    // Only processes are in the set (keyed by tgid): the exit of the thread whose id is the
    // tgid, the process's first thread, ends its entry (pid reuse must not trace an unrelated
    // process).
    let id = ctx.pid();
    if id == ctx.tgid() {
        let _ = FILTER_PIDS.remove(&id);
    }
}
