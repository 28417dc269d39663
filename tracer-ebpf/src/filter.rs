//! In-kernel filters: never the agent itself (nor the other end of its own connections), only the
//! pid set and port set when configured, and fork-following so `tracer run` sees the children of
//! the command it started (new processes only: threads share their process's entry).

use aya_ebpf::{EbpfContext, bindings::bpf_pidns_info, programs::TracePointContext};
use tracer_common::Config;

use crate::maps::{
    AGENT_ENDPOINTS, AGENT_SOCKS, CONFIG, Endpoints, FILTER_PIDS, FILTER_PORTS, NS_FILTER_PIDS,
    NS_PIDS, PeerKey, config,
};

/// The current task's tgid and pid in the agent's pid namespace, when it lives there.
#[inline(always)]
fn in_agent_namespace(cfg: &Config) -> Option<bpf_pidns_info> {
    if cfg.agent_ns_tgid == 0 {
        return None;
    }
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `info` is a valid, writable bpf_pidns_info of the size passed.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_get_ns_current_pid_tgid(
            cfg.agent_pidns_dev,
            cfg.agent_pidns_ino,
            &mut info,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    (rc == 0).then_some(info)
}

/// Whether the current task, of thread group `tgid` (a host tgid), is the agent.
///
/// An agent in a child pid namespace only knows its namespaced pid: the first time one of its
/// tasks gets here, `bpf_get_ns_current_pid_tgid` names it and its host tgid is written back
/// into the configuration, so later checks are a plain comparison. `cfg` must be a copy, not a
/// reference into the map that is written here.
#[inline(always)]
pub fn is_agent(cfg: &Config, tgid: u32) -> bool {
    if cfg.agent_tgid != 0 {
        return tgid == cfg.agent_tgid;
    }
    if !in_agent_namespace(cfg).is_some_and(|info| info.tgid == cfg.agent_ns_tgid) {
        return false;
    }
    if let Some(slot) = CONFIG.get_ptr_mut(tracer_common::CONFIG_KEY) {
        // SAFETY: the single config entry; every writer stores the same value, and no reference
        // into the map is live (callers hold a copy).
        unsafe { (*slot).agent_tgid = tgid };
    }
    true
}

/// Whether process `tgid` is traced.
#[inline(always)]
pub fn pid_traced(tgid: u32) -> bool {
    let Some(cfg) = config().copied() else {
        return false;
    };
    if is_agent(&cfg, tgid) {
        return false;
    }
    let traced = cfg.filter_pids == 0
        // SAFETY: read-only lookup of a plain value.
        || unsafe { FILTER_PIDS.get(&tgid) }.is_some()
        || joins_by_namespaced_pid(&cfg, tgid);
    // Only traced processes send records, so only they need a name in the agent's /proc.
    if traced && cfg.agent_ns_tgid != 0 {
        remember_namespaced_pid(&cfg, tgid);
    }
    traced
}

/// A namespaced agent reads `/proc` of its own namespace: keep `NS_PIDS` right for `tgid` (its
/// pid there, or no entry when it lives elsewhere: a host tgid may have been reused).
#[inline(always)]
fn remember_namespaced_pid(cfg: &Config, tgid: u32) {
    // SAFETY: value copied out.
    let known = unsafe { NS_PIDS.get(&tgid) }.copied();
    match in_agent_namespace(cfg) {
        Some(info) if known != Some(info.tgid) => {
            let _ = NS_PIDS.insert(&tgid, &info.tgid, 0);
        }
        None if known.is_some() => {
            let _ = NS_PIDS.remove(&tgid);
        }
        _ => {}
    }
}

/// A namespaced agent names traced processes by their pids in its namespace: the first time such
/// a process gets here, it joins the pid set by its host tgid.
#[inline(always)]
fn joins_by_namespaced_pid(cfg: &Config, tgid: u32) -> bool {
    let Some(info) = in_agent_namespace(cfg) else {
        return false;
    };
    // SAFETY: read-only lookup.
    if unsafe { NS_FILTER_PIDS.get(&info.tgid) }.is_none() {
        return false;
    }
    if FILTER_PIDS.insert(&tgid, &1, 0).is_err() {
        crate::maps::count(tracer_common::counter::FILTER_TABLE_FULL, 1);
    }
    true
}

/// inet_sock_set_state SYN_SENT, in the connecting task: remember the agent's own sockets.
#[inline(always)]
pub fn on_connecting(tgid: u32, sk: u64) {
    let Some(cfg) = config().copied() else { return };
    if is_agent(&cfg, tgid) {
        let unknown = PeerKey {
            addr: [0; 16],
            port: 0,
            _pad: [0; 6],
        };
        if AGENT_SOCKS.insert(&sk, &unknown, 0).is_err() {
            crate::maps::count(tracer_common::counter::AGENT_TABLE_FULL, 1);
        }
    }
}

/// inet_sock_set_state ESTABLISHED of a client socket: when it is the agent's, its local
/// endpoint joins the set whose peers are never traced, with the destination it connected to.
#[inline(always)]
pub fn on_established(sk: u64, ep: &Endpoints) {
    // SAFETY: read-only lookup.
    if unsafe { AGENT_SOCKS.get(&sk) }.is_none() {
        return;
    }
    let local = PeerKey {
        addr: ep.local_addr,
        port: ep.local_port,
        _pad: [0; 6],
    };
    // Both tables are plain hash maps (nothing is evicted): an entry lives until TCP_CLOSE.
    if AGENT_SOCKS.insert(&sk, &local, 0).is_err() || AGENT_ENDPOINTS.insert(&local, ep, 0).is_err()
    {
        crate::maps::count(tracer_common::counter::AGENT_TABLE_FULL, 1);
    }
}

/// inet_sock_set_state CLOSE: forget the agent's socket and its local endpoint.
#[inline(always)]
pub fn on_closed(sk: u64) {
    // SAFETY: value copied out before removal.
    if let Some(local) = unsafe { AGENT_SOCKS.get(&sk) }.copied() {
        let _ = AGENT_ENDPOINTS.remove(&local);
        let _ = AGENT_SOCKS.remove(&sk);
    }
}

/// `AF_INET` (other families' addresses are IPv6 here).
const AF_INET: u16 = 2;

/// Whether `addr` (of `family`, IPv4 in the first 4 bytes) is a loopback address.
#[inline(always)]
fn is_loopback(family: u16, addr: &[u8; 16]) -> bool {
    if family == AF_INET {
        return addr[0] == 127;
    }
    addr[..15].iter().all(|b| *b == 0) && addr[15] == 1
}

/// Whether a connection accepted on this host, with endpoints `ep`, is the other end of one of
/// the agent's own connections (counted when it is).
///
/// Its peer must be the agent's local endpoint. When the agent connected to an address of this
/// host (loopback, or its own source address), no address translation is possible on the way,
/// so the accepted local endpoint must be exactly the agent's destination: the same local
/// endpoint can belong to another socket towards another server (connect() reuses a port when
/// the 4-tuple differs), and every network namespace has its own loopback. Only when the agent
/// connected elsewhere (a Service address, translated to this host) does the peer alone decide.
#[inline(always)]
pub fn mirrors_agent(ep: &Endpoints) -> bool {
    if ep.peer_port == 0 {
        return false;
    }
    let peer = PeerKey {
        addr: ep.peer_addr,
        port: ep.peer_port,
        _pad: [0; 6],
    };
    // SAFETY: value copied out.
    let Some(agent) = (unsafe { AGENT_ENDPOINTS.get(&peer) }).copied() else {
        return false;
    };
    let exact =
        ep.local_port != 0 && ep.local_port == agent.peer_port && ep.local_addr == agent.peer_addr;
    let to_this_host =
        is_loopback(agent.family, &agent.peer_addr) || agent.peer_addr == agent.local_addr;
    let hit = exact || !to_this_host;
    if hit {
        crate::maps::count(tracer_common::counter::AGENT_MIRRORS_IGNORED, 1);
    }
    hit
}

/// Whether a connection with these ports is traced (0 means unknown and never matches).
#[inline(always)]
pub fn ports_traced(local_port: u16, peer_port: u16) -> bool {
    let Some(cfg) = config().copied() else {
        return false;
    };
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
    let Some(cfg) = config().copied() else { return };
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
    let parent_tgid = ctx.tgid();
    // SAFETY: read-only lookup.
    if unsafe { FILTER_PIDS.get(&parent_tgid) }.is_none()
        // A parent named by its namespaced pid that forks before its first hooked syscall.
        && !joins_by_namespaced_pid(&cfg, parent_tgid)
    {
        return;
    }
    if FILTER_PIDS.insert(&(child as u32), &1, 0).is_err() {
        crate::maps::count(tracer_common::counter::FILTER_TABLE_FULL, 1);
        aya_log_ebpf::warn!(
            ctx,
            "pid filter full: child {} of traced pid {} is not followed",
            child,
            parent_tgid
        );
    } else {
        aya_log_ebpf::debug!(
            ctx,
            "following child {} of traced pid {}",
            child,
            parent_tgid
        );
    }
}

/// sched_process_exit: forget an exiting process that had joined the filter set.
#[inline(always)]
pub fn on_exit(ctx: &TracePointContext) {
    let Some(cfg) = config().copied() else { return };
    if cfg.filter_pids == 0 || cfg.follow_forks == 0 {
        return;
    }
    // Only processes are in the set (keyed by tgid): the exit of the thread whose id is the
    // tgid, the process's first thread, ends its entry (pid reuse must not trace an unrelated
    // process).
    let id = ctx.pid();
    if id == ctx.tgid() {
        let _ = FILTER_PIDS.remove(&id);
        if let Some(info) = in_agent_namespace(&cfg) {
            let _ = NS_FILTER_PIDS.remove(&info.tgid);
        }
    }
}
