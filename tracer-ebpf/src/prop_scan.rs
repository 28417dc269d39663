//! In-kernel `traceparent` scan (`--context-propagation tcp-options`): a SERVER request that got
//! no context in a TCP option joins the trace of the `traceparent` header found in the bytes its
//! first read returned, so the CLIENT requests it makes carry that trace to the next host. The
//! scan is `tracer_common::traceparent_scan` (checked against userspace's parser there).
//! It runs in the propagation program (`SCAN_PROGRAM`) with the rest of a transfer's
//! propagation work (`prop::on_transfer`): the data program arms this CPU's buffer with the
//! transfer before its records (`arm`) and tail-calls the program after them (`run`), so the
//! scan's bounded loops and the identity's branches are verified once there, not inside every
//! data program. A tail call that fails is counted, and the connection is left to userspace.

use aya_ebpf::{
    helpers::bpf_probe_read_user_buf,
    macros::map,
    maps::{PerCpuArray, ProgramArray},
    programs::TracePointContext,
};

use crate::prop::Context;
use tracer_common::{
    propagation::IDENTITY_HAS_PARENT,
    traceparent_scan::{self as scan, HEAD_BUF, SCAN_BYTES, State, counter, outcome},
};

/// A transfer waiting for the propagation program: what `prop::on_transfer` needs of it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Armed {
    /// Non-zero while a transfer waits for the propagation program.
    pub armed: u64,
    /// The first buffer in user memory (0: none to look at), and the bytes moved.
    pub first: u64,
    pub total: u64,
    pub conn_id: u64,
    /// The syscall's start: a SERVER request's identity record is dated there, before its
    /// data record (userspace's reorder window releases records in that order, and the
    /// identity must come first).
    pub enter_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub dir: u32,
}

/// One CPU's copy of a head, the scan's state and the trace id it parsed.
#[repr(C)]
pub struct ScanBuf {
    pub head: [u8; HEAD_BUF],
    pub state: State,
    pub trace: [u8; 16],
    pub req: Armed,
}

#[map]
static PROP_SCAN: PerCpuArray<ScanBuf> = PerCpuArray::with_max_entries(1, 0);
/// `tracer_common::traceparent_scan::COUNTERS_MAP`.
#[map]
static PROP_SCAN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// `tracer_common::traceparent_scan::SCANNER_MAP`: the scan program at index 0.
#[map]
static PROP_SCANNER: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = PROP_SCAN_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}

/// At a SERVER request's first read (`first`: its first buffer in user memory, `total` bytes
/// read), unless `flags` already name a parent (a context came in an option): scans the bytes
/// userspace will see (at most the capture size) for one valid `traceparent`; when found,
/// `ctx`'s trace becomes the header's trace id, `parent` its parent span id, and `flags` say so.
#[inline(always)]
pub fn adopt(first: u64, total: u64, flags: &mut u8, parent: &mut u64, ctx: *mut Context) {
    if *flags & IDENTITY_HAS_PARENT != 0 || first == 0 {
        return;
    }
    let budget = crate::maps::config().map_or(0, |c| u64::from(c.capture_bytes));
    let mut n = if total < budget { total } else { budget };
    if n > SCAN_BYTES as u64 {
        n = SCAN_BYTES as u64;
    }
    if n == 0 {
        return;
    }
    let Some(buf) = PROP_SCAN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `buf` is this CPU's buffer; `n` is at most SCAN_BYTES, within `head`.
    unsafe {
        let dst = core::slice::from_raw_parts_mut((*buf).head.as_mut_ptr(), n as usize);
        if bpf_probe_read_user_buf(first as *const u8, dst).is_err() {
            return;
        }
        // The sentinel: no match reaches past the bytes read.
        (*buf).head[n as usize & (HEAD_BUF - 1)] = 0;
        core::ptr::write_volatile(&mut (*buf).state.len, n as u32);
        scan::find(&(*buf).head, &mut (*buf).state);
        // Read back, not kept: the scan's exits each pin a register to a constant length.
        let scanned = u64::from(core::ptr::read_volatile(&(*buf).state.len));
        let seen = core::ptr::read_volatile(&(*buf).state.outcome);
        if seen & outcome::ENDED == 0 && scanned < total {
            bump(counter::AT_CAPTURE_LIMIT);
        }
        if seen & outcome::FOUND == 0 {
            return;
        }
        if seen & outcome::REPEATED != 0 {
            bump(counter::REJECTED);
            return;
        }
        let line = core::ptr::read_volatile(&(*buf).state.found) as usize;
        let span = scan::parse(&(*buf).head, line, &mut (*buf).trace, &mut (*buf).state);
        if span == 0 {
            bump(counter::REJECTED);
            return;
        }
        // Byte by byte, volatile: a 16-byte copy between two maps becomes a call to memmove,
        // a third frame on the data programs' stack (6.1 refuses: "combined stack size of 3
        // calls is 544").
        let mut k = 0;
        while k < 16 {
            (*ctx).trace[k] = core::ptr::read_volatile(&(*buf).trace[k]);
            k += 1;
        }
        *parent = span;
        *flags |= IDENTITY_HAS_PARENT;
        bump(counter::ADOPTED);
    }
}

/// Before a data syscall's records: the transfer waits in this CPU's buffer for the
/// propagation program (`run`, after the records). One still waiting here never ran (its data
/// program was tail-called away without a walker end to run it): counted, and its connection's
/// stream positions are unknown from now on.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn arm(
    tgid: u32,
    tid: u32,
    fd: i32,
    conn_id: u64,
    dir: u8,
    first: u64,
    total: u64,
    enter_ns: u64,
) {
    let Some(buf) = PROP_SCAN.get_ptr_mut(0) else {
        crate::prop::positions_lost(tgid, fd, conn_id);
        return;
    };
    // SAFETY: this CPU's buffer, written field by field.
    unsafe {
        let req = &mut (*buf).req;
        if req.armed != 0 {
            bump(counter::NOT_RUN);
            crate::prop::positions_lost(req.tgid, req.fd, req.conn_id);
        }
        req.armed = 1;
        req.first = first;
        req.total = total;
        req.conn_id = conn_id;
        req.enter_ns = enter_ns;
        req.tgid = tgid;
        req.tid = tid;
        req.fd = fd;
        req.dir = dir as u32;
    }
}

/// After a data syscall's records: the propagation program (`SCAN_PROGRAM`) takes over (a tail
/// call does not return). When it cannot (not in its array), counted, and the connection's
/// stream positions are unknown from now on: its requests get no identity from the kernel
/// (userspace decides them, a header included) and no context is adopted or sent on it.
#[inline(always)]
pub fn run(ctx: &TracePointContext) {
    let Some(buf) = PROP_SCAN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's buffer.
    if unsafe { core::ptr::read_volatile(&(*buf).req.armed) } == 0 {
        return;
    }
    // SAFETY: the propagation program is a tracepoint program of this object; on success this
    // call does not return.
    let _ = unsafe { PROP_SCANNER.tail_call(ctx, 0) };
    bump(counter::NOT_RUN);
    // SAFETY: as above.
    unsafe {
        let req = &mut (*buf).req;
        req.armed = 0;
        crate::prop::positions_lost(req.tgid, req.fd, req.conn_id);
    }
}

/// The propagation program (`SCAN_PROGRAM`): the armed transfer's stream positions, request
/// identity and head scan (`prop::on_transfer`).
#[inline(always)]
pub fn program(_ctx: &TracePointContext) {
    let Some(buf) = PROP_SCAN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's buffer, armed by the data program that ran just before on this CPU.
    unsafe {
        let req = (*buf).req;
        if req.armed == 0 {
            return;
        }
        (*buf).req.armed = 0;
        crate::prop::armed_transfer(
            req.tgid,
            req.tid,
            req.fd,
            req.conn_id,
            req.dir as u8,
            req.first,
            req.total,
            req.enter_ns,
        );
    }
}
