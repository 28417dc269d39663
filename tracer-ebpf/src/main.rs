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
mod procwatch;
#[cfg(target_arch = "bpf")]
mod prop;
#[cfg(target_arch = "bpf")]
mod prop_scan;
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
    use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
    use tracer_common::syscall;

    use crate::{conn, data, filter};

    macro_rules! data_syscall {
        ($enter:ident, $exit:ident, $sys:expr) => {
            #[tracepoint]
            pub fn $enter(ctx: TracePointContext) -> u32 {
                data::enter(&ctx, $sys);
                0
            }
            #[tracepoint]
            // The body in the program itself: as a call of its own (LLVM's choice once the body
            // is large) its frame adds to the program's and to its memset calls' (6.1: "combined
            // stack size of 3 calls is 544").
            #[inline(always)]
            pub fn $exit(ctx: TracePointContext) -> u32 {
                data::exit::<{ $sys }>(&ctx);
                0
            }
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

    #[tracepoint]
    pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
        conn::enter_lifecycle(&ctx, conn::ARG_ACCEPT);
        0
    }
    #[tracepoint]
    pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
        conn::exit_accept(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
        conn::enter_lifecycle(&ctx, conn::ARG_ACCEPT);
        0
    }
    #[tracepoint]
    pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
        conn::exit_accept(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
        conn::enter_lifecycle(&ctx, conn::ARG_CONNECT);
        0
    }
    #[tracepoint]
    pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
        conn::exit_connect(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
        conn::enter_close(&ctx);
        0
    }
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
        crate::procwatch::on_exec(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
        crate::procwatch::on_mmap(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
        conn::enter_dup2(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
        conn::enter_close_range(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
        conn::enter_dup2(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_splice(ctx: TracePointContext) -> u32 {
        data::enter_splice(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_exit_splice(ctx: TracePointContext) -> u32 {
        data::exit::<{ syscall::SPLICE }>(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
        data::enter_unhooked(&ctx);
        0
    }
    #[tracepoint]
    pub fn sys_enter_recvmmsg(ctx: TracePointContext) -> u32 {
        data::enter_unhooked(&ctx);
        0
    }
    #[tracepoint]
    pub fn io_uring_file_get(ctx: TracePointContext) -> u32 {
        data::on_io_uring_file(&ctx);
        0
    }
    /// Not attached: the HTTP/2 frame walker, tail-called by the data programs.
    #[tracepoint]
    pub fn h2_walk(ctx: TracePointContext) -> u32 {
        crate::h2::walk_program(&ctx);
        // The walker sent the transfer's records: the propagation's work for it follows.
        crate::prop::after_records(&ctx);
        0
    }
    /// Not attached: the propagation's work for a transfer, with the `traceparent` scan
    /// (`tracer_common::traceparent_scan::SCAN_PROGRAM`), tail-called by the data programs.
    #[tracepoint]
    pub fn prop_scan(ctx: TracePointContext) -> u32 {
        crate::prop_scan::program(&ctx);
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
