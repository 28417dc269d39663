//! The syscall hooks: two programs on the raw tracepoints every syscall passes
//! (`raw_syscalls:sys_enter` / `sys_exit`) tail-call the program of the syscall's number
//! (`tracer_common::SYSCALL_PROGRAMS`), and those read their arguments from the saved
//! registers. A per-syscall tracepoint would first copy the arguments into a perf record for
//! every traced syscall (most of what the programs cost the traced threads); the raw ones pass
//! the registers' address.
//!
//! The syscall programs keep aya's `TracePointContext` type around the raw tracepoint's
//! context (`bpf_raw_tracepoint_args`: the registers' address, then the syscall number at
//! entry or its return value at exit): helpers use only its address, and the syscall's
//! arguments and return value are read here only (`arg`, `ret`).

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_kernel,
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{MAX_SYSCALL_NR, SyscallRegs, syscall_handled};

use crate::maps::{SYSCALL_ENTER, SYSCALL_EXIT, SYSCALL_HANDLED};

/// Where the running architecture keeps a syscall's number and arguments (set by userspace at
/// load time; read-only, so the verifier sees constants).
#[unsafe(no_mangle)]
static SYSCALL_REGS: SyscallRegs = SyscallRegs {
    args: [0; 6],
    nr: 0,
    compat_cs: 0,
    compat_cs_value: 0,
    _pad: 0,
};

#[inline(always)]
fn layout() -> SyscallRegs {
    // SAFETY: a plain read of a read-only global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(&SYSCALL_REGS) }
}

/// The raw tracepoint's argument `n` (0: the registers' address; 1: the syscall number at
/// entry, the return value at exit).
#[inline(always)]
fn raw_arg(ctx: *mut core::ffi::c_void, n: usize) -> u64 {
    // SAFETY: a raw tracepoint's context is an array of u64 arguments; sys_enter and sys_exit
    // have two.
    unsafe { core::ptr::read_volatile((ctx as *const u64).add(n)) }
}

/// Argument `n` (0-5) of the syscall a syscall program runs for.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    let regs = raw_arg(ctx.as_ptr(), 0);
    let offsets = layout().args;
    let Some(off) = offsets.get(n) else {
        return 0;
    };
    // SAFETY: the kernel's saved registers of this thread; a failed read gives 0.
    unsafe { bpf_probe_read_kernel((regs + u64::from(*off)) as *const u64) }.unwrap_or(0)
}

/// The return value of the syscall a syscall exit program runs for.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    raw_arg(ctx.as_ptr(), 1) as i64
}

/// The body of the `sys_enter` (`exit` false) and `sys_exit` dispatchers.
#[inline(always)]
pub fn dispatch(ctx: &RawTracePointContext, exit: bool) {
    let regs = raw_arg(ctx.as_ptr(), 0);
    let l = layout();
    let nr = if exit {
        // SAFETY: the kernel's saved registers of this thread.
        match unsafe { bpf_probe_read_kernel((regs + u64::from(l.nr)) as *const i32) } {
            Ok(nr) => i64::from(nr),
            Err(_) => return,
        }
    } else {
        raw_arg(ctx.as_ptr(), 1) as i64
    };
    if nr < 0 || nr >= i64::from(MAX_SYSCALL_NR) {
        return;
    }
    let nr = nr as u32;
    let bit = if exit {
        syscall_handled::EXIT
    } else {
        syscall_handled::ENTER
    };
    if SYSCALL_HANDLED.get(nr).is_none_or(|h| *h & bit == 0) {
        return;
    }
    if l.compat_cs != 0 {
        // A 32-bit task's syscall: another numbering and other registers.
        // SAFETY: as above.
        let cs = unsafe { bpf_probe_read_kernel((regs + u64::from(l.compat_cs)) as *const u16) };
        if cs.is_ok_and(|cs| cs == l.compat_cs_value) {
            return;
        }
    }
    let table = if exit { &SYSCALL_EXIT } else { &SYSCALL_ENTER };
    // SAFETY: the context is this program's own; a missing program returns here.
    let _ = unsafe { table.tail_call(ctx, nr) };
}
