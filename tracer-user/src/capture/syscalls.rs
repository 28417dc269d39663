//! The running architecture's side of the syscall hooks (`tracer_common::SYSCALL_PROGRAMS`):
//! syscall numbers and where the kernel saves a syscall's registers.

use tracer_common::{SyscallProgram, SyscallRegs};

/// Where this architecture's kernel keeps a syscall's number and arguments.
#[cfg(target_arch = "x86_64")]
pub const HOST_REGS: SyscallRegs = SyscallRegs::X86_64;
#[cfg(target_arch = "aarch64")]
pub const HOST_REGS: SyscallRegs = SyscallRegs::AARCH64;

/// The number of a syscall program's syscall on this architecture (None: it has no such
/// syscall, e.g. `dup2` on arm64).
pub fn number(program: &SyscallProgram) -> Option<u32> {
    let nr: libc::c_long = match program.syscall {
        "accept" => libc::SYS_accept,
        "accept4" => libc::SYS_accept4,
        "connect" => libc::SYS_connect,
        "close" => libc::SYS_close,
        "close_range" => libc::SYS_close_range,
        "read" => libc::SYS_read,
        "write" => libc::SYS_write,
        "readv" => libc::SYS_readv,
        "writev" => libc::SYS_writev,
        "recvfrom" => libc::SYS_recvfrom,
        "sendto" => libc::SYS_sendto,
        "recvmsg" => libc::SYS_recvmsg,
        "sendmsg" => libc::SYS_sendmsg,
        "sendfile" => libc::SYS_sendfile,
        #[cfg(target_arch = "x86_64")]
        "dup2" => libc::SYS_dup2,
        "dup3" => libc::SYS_dup3,
        "splice" => libc::SYS_splice,
        "sendmmsg" => libc::SYS_sendmmsg,
        "recvmmsg" => libc::SYS_recvmmsg,
        _ => return None,
    };
    u32::try_from(nr)
        .ok()
        .filter(|nr| *nr < tracer_common::MAX_SYSCALL_NR)
}

#[cfg(test)]
mod tests {
    use tracer_common::SYSCALL_PROGRAMS;

    use super::number;

    #[test]
    fn every_syscall_program_has_a_number_in_the_table() {
        for p in SYSCALL_PROGRAMS {
            #[cfg(target_arch = "aarch64")]
            if p.syscall == "dup2" {
                continue;
            }
            assert!(number(p).is_some(), "{} has no number here", p.syscall);
        }
    }

    #[test]
    fn entry_and_exit_programs_are_named_after_their_tracepoints() {
        for p in SYSCALL_PROGRAMS {
            let prefix = if p.exit { "sys_exit_" } else { "sys_enter_" };
            assert!(p.name.starts_with(prefix), "{}", p.name);
        }
        #[cfg(target_arch = "x86_64")]
        {
            let read = SYSCALL_PROGRAMS.iter().find(|p| p.name == "sys_enter_read");
            assert_eq!(read.and_then(number), Some(0));
            let close_range = SYSCALL_PROGRAMS
                .iter()
                .find(|p| p.name == "sys_enter_close_range");
            assert_eq!(close_range.and_then(number), Some(436));
        }
    }
}
