//! In-kernel `traceparent` scan (`--context-propagation tcp-options`): a SERVER request that got
//! no context in a TCP option joins the trace of the `traceparent` header found in the bytes its
//! first read returned, so the CLIENT requests it makes carry that trace to the next host. The
//! scan is `tracer_common::traceparent_scan` (checked against userspace's parser there); this
//! file copies the bytes into a per-CPU buffer (the data programs' stack is nearly full) and
//! counts what the scan saw.

use aya_ebpf::{helpers::bpf_probe_read_user_buf, macros::map, maps::PerCpuArray};

use crate::prop::Context;
use tracer_common::{
    propagation::IDENTITY_HAS_PARENT,
    traceparent_scan::{self as scan, HEAD_BUF, SCAN_BYTES, State, counter, outcome},
};

/// One CPU's copy of a head, the scan's state and the trace id it parsed.
#[repr(C)]
pub struct ScanBuf {
    pub head: [u8; HEAD_BUF],
    pub state: State,
    pub trace: [u8; 16],
}

#[map]
static PROP_SCAN: PerCpuArray<ScanBuf> = PerCpuArray::with_max_entries(1, 0);
/// `tracer_common::traceparent_scan::COUNTERS_MAP`.
#[map]
static PROP_SCAN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

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
pub fn adopt(first: u64, total: u64, flags: &mut u8, parent: &mut u64, ctx: &mut Context) {
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
            ctx.trace[k] = core::ptr::read_volatile(&(*buf).trace[k]);
            k += 1;
        }
        *parent = span;
        *flags |= IDENTITY_HAS_PARENT;
        bump(counter::ADOPTED);
    }
}
