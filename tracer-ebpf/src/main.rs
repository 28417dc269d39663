//! eBPF entry points: one small function per tracepoint. The work lives in `conn` (connection
//! lifecycle), `data` (byte capture) and `filter` (which processes and ports are traced).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly for the one atomic add (`conn::add_inflight`): core has no atomic
// read-modify-write for the BPF target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod conn;
#[cfg(target_arch = "bpf")]
mod data;
#[cfg(target_arch = "bpf")]
mod filter;
#[cfg(target_arch = "bpf")]
mod gotls;
#[cfg(target_arch = "bpf")]
mod h2;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod prop;
#[cfg(target_arch = "bpf")]
mod prop_scan;
#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(target_arch = "bpf")]
mod prop_programs {
    //! The `sock_ops` program of `--context-propagation tcp-options`
    //! (`tracer_common::propagation::SOCK_OPS_PROGRAM`).
    use aya_ebpf::{macros::sock_ops, programs::SockOpsContext};

    #[sock_ops]
    pub fn tcp_context_options(ctx: SockOpsContext) -> u32 {
        crate::prop::sock_ops(&ctx);
        1
    }
}

#[cfg(target_arch = "bpf")]
mod tls_programs {
    //! OpenSSL uprobes (`tracer_common::OPENSSL_UPROBE_PROGRAMS`).
    use aya_ebpf::{
        macros::{uprobe, uretprobe},
        programs::{ProbeContext, RetProbeContext},
    };
    use tracer_common::syscall;

    use crate::tls;

    #[uprobe]
    pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
        tls::enter(&ctx, syscall::SSL_WRITE, false);
        0
    }
    #[uprobe]
    pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
        tls::enter(&ctx, syscall::SSL_WRITE, true);
        0
    }
    #[uprobe]
    pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
        tls::enter(&ctx, syscall::SSL_READ, false);
        0
    }
    #[uprobe]
    pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
        tls::enter(&ctx, syscall::SSL_READ, true);
        0
    }
    #[uprobe]
    pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
        tls::enter_handshake(&ctx);
        0
    }
    #[uprobe]
    pub fn ssl_free_enter(ctx: ProbeContext) -> u32 {
        tls::free(&ctx);
        0
    }
    #[uprobe]
    pub fn bio_write_enter(ctx: ProbeContext) -> u32 {
        tls::bio_write(&ctx);
        0
    }
    #[uretprobe]
    pub fn ssl_return(ctx: RetProbeContext) -> u32 {
        tls::exit(&ctx);
        0
    }
}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        EbpfContext,
        macros::{raw_tracepoint, tracepoint},
        programs::{RawTracePointContext, TracePointContext},
    };
    use tracer_common::syscall;

    use crate::{conn, data, filter};

    // The dispatchers (`tracer_common::SYSCALL_DISPATCHERS`).
    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn syscall_enter(ctx: RawTracePointContext) -> u32 {
        crate::syscalls::dispatch(&ctx, false);
        0
    }
    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn syscall_exit(ctx: RawTracePointContext) -> u32 {
        crate::syscalls::dispatch(&ctx, true);
        0
    }

    /// A syscall program (`tracer_common::SYSCALL_PROGRAMS`): tail-called by a dispatcher, its
    /// body sees the raw tracepoint's context as `ctx` (see `crate::syscalls`).
    macro_rules! syscall_program {
        ($name:ident, |$ctx:ident| $body:expr) => {
            #[raw_tracepoint]
            // The body in the program itself: as a call of its own (LLVM's choice once the
            // body is large) its frame adds to the program's and to its memset calls' (6.1:
            // "combined stack size of 3 calls is 544").
            #[inline(always)]
            pub fn $name(raw: RawTracePointContext) -> u32 {
                let $ctx = &TracePointContext::new(raw.as_ptr());
                $body;
                0
            }
        };
    }

    macro_rules! data_syscall {
        ($enter:ident, $exit:ident, $sys:expr) => {
            syscall_program!($enter, |ctx| data::enter(ctx, $sys));
            syscall_program!($exit, |ctx| data::exit::<{ $sys }>(ctx));
        };
    }

    data_syscall!(sys_enter_read, sys_exit_read, syscall::READ);
    data_syscall!(sys_enter_write, sys_exit_write, syscall::WRITE);
    data_syscall!(sys_enter_readv, sys_exit_readv, syscall::READV);
    data_syscall!(sys_enter_writev, sys_exit_writev, syscall::WRITEV);
    data_syscall!(sys_enter_recvfrom, sys_exit_recvfrom, syscall::RECVFROM);
    data_syscall!(sys_enter_sendto, sys_exit_sendto, syscall::SENDTO);
    data_syscall!(sys_enter_recvmsg, sys_exit_recvmsg, syscall::RECVMSG);
    data_syscall!(sys_enter_sendmsg, sys_exit_sendmsg, syscall::SENDMSG);
    data_syscall!(sys_enter_sendfile64, sys_exit_sendfile64, syscall::SENDFILE);

    syscall_program!(sys_enter_accept, |ctx| conn::enter_lifecycle(
        ctx,
        conn::ARG_ACCEPT
    ));
    syscall_program!(sys_exit_accept, |ctx| conn::exit_accept(ctx));
    syscall_program!(sys_enter_accept4, |ctx| conn::enter_lifecycle(
        ctx,
        conn::ARG_ACCEPT
    ));
    syscall_program!(sys_exit_accept4, |ctx| conn::exit_accept(ctx));
    syscall_program!(sys_enter_connect, |ctx| conn::enter_lifecycle(
        ctx,
        conn::ARG_CONNECT
    ));
    syscall_program!(sys_exit_connect, |ctx| conn::exit_connect(ctx));
    syscall_program!(sys_enter_close, |ctx| conn::enter_close(ctx));
    syscall_program!(sys_enter_dup2, |ctx| conn::enter_dup2(ctx));
    syscall_program!(sys_enter_close_range, |ctx| conn::enter_close_range(ctx));
    syscall_program!(sys_enter_dup3, |ctx| conn::enter_dup2(ctx));
    syscall_program!(sys_enter_splice, |ctx| data::enter_splice(ctx));
    syscall_program!(sys_exit_splice, |ctx| data::exit::<{ syscall::SPLICE }>(
        ctx
    ));
    syscall_program!(sys_enter_sendmmsg, |ctx| data::enter_unhooked(ctx));
    syscall_program!(sys_enter_recvmmsg, |ctx| data::enter_unhooked(ctx));
    // Not attached, tail-called by the data programs (so of their program type): the HTTP/2
    // frame walker, which sent the transfer's records, so the propagation's work for it follows;
    // and the propagation's work for a transfer, with the `traceparent` scan
    // (`tracer_common::traceparent_scan::SCAN_PROGRAM`).
    syscall_program!(h2_walk, |ctx| {
        crate::h2::walk_program(ctx);
        crate::prop::after_records(ctx);
    });
    syscall_program!(prop_scan, |ctx| crate::prop_scan::program(ctx));

    #[tracepoint]
    pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
        conn::sock_set_state(&ctx);
        0
    }
    #[tracepoint]
    pub fn task_newtask(ctx: TracePointContext) -> u32 {
        filter::on_new_task(&ctx);
        0
    }
    #[tracepoint]
    pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
        conn::on_exec(&ctx);
        crate::prop::on_exec(&ctx);
        0
    }
    #[tracepoint]
    pub fn io_uring_file_get(ctx: TracePointContext) -> u32 {
        data::on_io_uring_file(&ctx);
        0
    }
    #[tracepoint]
    pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
        filter::on_exit(&ctx);
        crate::conn::on_task_exit(&ctx);
        crate::prop::on_task_exit(&ctx);
        0
    }

    // Go crypto/tls (`tracer_common::go_tls_program`): attached by userspace per Go binary.
    #[aya_ebpf::macros::uprobe]
    pub fn go_tls_read_entry(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        crate::gotls::entry(&ctx, syscall::GO_TLS_READ);
        0
    }
    #[aya_ebpf::macros::uprobe]
    pub fn go_tls_read_return(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        crate::gotls::ret(&ctx, syscall::GO_TLS_READ);
        0
    }
    #[aya_ebpf::macros::uprobe]
    pub fn go_tls_write_entry(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        crate::gotls::entry(&ctx, syscall::GO_TLS_WRITE);
        0
    }
    #[aya_ebpf::macros::uprobe]
    pub fn go_tls_handshake_entry(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        crate::gotls::handshake(&ctx);
        0
    }
    #[aya_ebpf::macros::uprobe]
    pub fn go_tls_write_return(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        crate::gotls::ret(&ctx, syscall::GO_TLS_WRITE);
        0
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
