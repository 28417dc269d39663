//! In-kernel filters: never the agent itself, only the pid set and port set when configured, and
//! fork-following so `tracer run` sees the children of the command it started.

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

/// sched_process_fork: a child of a filtered pid joins the filter set.
#[inline(always)]
pub fn on_fork(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    if cfg.filter_pids == 0 || cfg.follow_forks == 0 {
        return;
    }
    let parent_tgid = ctx.tgid();
    // SAFETY: read-only lookup.
    if unsafe { FILTER_PIDS.get(&parent_tgid) }.is_none() {
        return;
    }
    // SAFETY: the offset comes from the tracepoint's format file; the read is bounds-checked by
    // the probe-read helper.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(cfg.fork_child_pid_offset as usize) }) else {
        return;
    };
    if child > 0 && FILTER_PIDS.insert(&(child as u32), &1, 0).is_err() {
        crate::maps::count(tracer_common::counter::FILTER_TABLE_FULL, 1);
    }
}

/// sched_process_exit: forget an exiting task that had joined the filter set.
#[inline(always)]
pub fn on_exit(ctx: &TracePointContext) {
    let Some(cfg) = config() else { return };
    if cfg.filter_pids == 0 || cfg.follow_forks == 0 {
        return;
    }
    // A thread id added by fork-following, or the process itself exiting: either way its
    // entry must not outlive it (pid reuse would trace an unrelated process).
    let _ = FILTER_PIDS.remove(&ctx.pid());
}
