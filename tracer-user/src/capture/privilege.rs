//! Why the kernel refused the probes, in words an operator can act on: the errno of the failing
//! call, whether a seccomp filter or a missing capability is the likely cause (from the
//! `Seccomp` and `CapEff` lines of `/proc/self/status`), and the manifest setting that fixes it.
//! Also the startup warning for capabilities whose absence only degrades what spans carry.

use std::io;

use crate::capture::probes::ProbeError;

/// Capability numbers (linux/capability.h).
pub mod cap {
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// Where the node's copy of the shipped seccomp profile goes, and the file in this repository.
const SECCOMP_HINT: &str = "run the agent under the seccomp profile k8s/seccomp/tracer.json \
     (the runtime's default plus bpf and perf_event_open): install it on every node as \
     /var/lib/kubelet/seccomp/tracer.json, which the DaemonSet in k8s/base asks for with \
     `seccompProfile: {type: Localhost, localhostProfile: tracer.json}`; or use the \
     k8s/privileged overlay";

/// What this process may do, as `/proc/self/status` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// The effective capability set (`CapEff`).
    pub cap_eff: u64,
    /// The seccomp mode (`Seccomp`: 0 none, 1 strict, 2 filter); `None` when not reported.
    pub seccomp: Option<u8>,
}

impl Privileges {
    /// The privileges of this process (empty when `/proc/self/status` cannot be read).
    pub fn of_self() -> Privileges {
        Privileges::parse(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
    }

    /// Parses the `CapEff:` and `Seccomp:` lines of a `/proc/<pid>/status` text.
    pub fn parse(status: &str) -> Privileges {
        let mut out = Privileges::default();
        for line in status.lines() {
            if let Some(value) = line.strip_prefix("CapEff:") {
                out.cap_eff = u64::from_str_radix(value.trim(), 16).unwrap_or(0);
            } else if let Some(value) = line.strip_prefix("Seccomp:") {
                out.seccomp = value.trim().parse().ok();
            }
        }
        out
    }

    pub fn has(&self, capability: u32) -> bool {
        capability < 64 && self.cap_eff & (1u64 << capability) != 0
    }

    fn filtered(&self) -> bool {
        self.seccomp == Some(2)
    }
}

/// The kernel call that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `bpf()` creating a map or loading BTF.
    BpfObject,
    /// `bpf(BPF_PROG_LOAD)` of a tracing program.
    BpfProgLoad,
    /// `perf_event_open()` attaching a program to a tracepoint.
    PerfEventOpen,
    /// `mount()` of tracefs.
    MountTracefs,
}

impl Call {
    fn syscall(self) -> &'static str {
        match self {
            Call::BpfObject => "bpf()",
            Call::BpfProgLoad => "bpf(BPF_PROG_LOAD)",
            Call::PerfEventOpen => "perf_event_open()",
            Call::MountTracefs => "mount(tracefs)",
        }
    }

    /// The capabilities the kernel checks for this call (CAP_SYS_ADMIN stands in for all).
    fn capabilities(self) -> &'static [(u32, &'static str)] {
        match self {
            Call::BpfObject => &[(cap::BPF, "BPF")],
            Call::BpfProgLoad => &[(cap::BPF, "BPF"), (cap::PERFMON, "PERFMON")],
            Call::PerfEventOpen => &[(cap::PERFMON, "PERFMON")],
            Call::MountTracefs => &[(cap::SYS_ADMIN, "SYS_ADMIN")],
        }
    }
}

/// The symbolic name of an errno the probes' calls return.
fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::E2BIG => "E2BIG".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::ENODEV => "ENODEV".into(),
        other => format!("errno {other}"),
    }
}

/// The cause and the fix of `call` failing with `errno`, for a process with `privileges`.
pub fn explain(call: Call, errno: i32, privileges: &Privileges) -> String {
    let syscall = call.syscall();
    let name = errno_name(errno);
    let said = format!(
        "{syscall} returned {name} ({})",
        io::Error::from_raw_os_error(errno)
    );
    let status = format!(
        "CapEff {:#x}, Seccomp {}",
        privileges.cap_eff,
        privileges
            .seccomp
            .map_or_else(|| "unknown".to_string(), |m| m.to_string())
    );
    let denied = errno == libc::EPERM || errno == libc::EACCES;
    if errno == libc::ENOSYS && privileges.filtered() {
        return format!(
            "{said}. Likely cause: the seccomp filter this process runs under ({status}) does \
             not allow {syscall}. Fix: {SECCOMP_HINT}."
        );
    }
    if !denied {
        return format!("{said} ({status}).");
    }
    if call == Call::MountTracefs {
        return format!(
            "{said}: tracefs is not mounted on the node, and mounting it needs CAP_SYS_ADMIN \
             ({status}). Fix: mount it on the node (`mount -t tracefs nodev \
             /sys/kernel/tracing`, or enable systemd's sys-kernel-tracing.mount); the DaemonSet \
             mounts the node's /sys/kernel/tracing through its `tracefs` hostPath volume."
        );
    }
    let admin = privileges.has(cap::SYS_ADMIN);
    let missing: Vec<&str> = call
        .capabilities()
        .iter()
        .filter(|(number, _)| !admin && !privileges.has(*number))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        let caps: Vec<String> = missing.iter().map(|c| format!("CAP_{c}")).collect();
        let adds: Vec<String> = missing.iter().map(|c| format!("`{c}`")).collect();
        return format!(
            "{said}. Likely cause: missing capability {} (not in this process's effective set: \
             {status}). Fix: add {} to the container's securityContext.capabilities.add \
             (k8s/base/daemonset.yaml grants it), or run as root outside a container.",
            caps.join(" and "),
            adds.join(" and ")
        );
    }
    if privileges.filtered() {
        return format!(
            "{said}. Likely cause: seccomp. This process has the capabilities {syscall} needs but \
             runs under a seccomp filter ({status}); container runtimes' default profiles refuse \
             bpf() and perf_event_open() without CAP_SYS_ADMIN. Fix: {SECCOMP_HINT}."
        );
    }
    format!(
        "{said} although this process has the capabilities it needs and no seccomp filter \
         ({status}). Likely cause: a Linux security module (AppArmor, SELinux, lockdown) or a \
         sysctl such as kernel.unprivileged_bpf_disabled; check the kernel log. Fallback: the \
         k8s/privileged overlay."
    )
}

/// The first OS error in `error`'s source chain (including `error` itself).
fn os_errno(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = err.source();
    }
    None
}

/// The failing call and its errno, when `error` is the kernel refusing a call.
pub fn refused_call(error: &ProbeError) -> Option<(Call, i32)> {
    match error {
        ProbeError::Load(inner) => os_errno(inner.as_ref()).map(|errno| {
            let call = if matches!(inner.as_ref(), aya::EbpfError::ProgramError(_)) {
                Call::BpfProgLoad
            } else {
                Call::BpfObject
            };
            (call, errno)
        }),
        ProbeError::Program { source, .. } => {
            let call = match source.as_ref() {
                aya::programs::ProgramError::SyscallError(e) if e.call.contains("perf_event") => {
                    Call::PerfEventOpen
                }
                aya::programs::ProgramError::SyscallError(_) => Call::BpfObject,
                _ => Call::BpfProgLoad,
            };
            os_errno(source.as_ref()).map(|errno| (call, errno))
        }
        ProbeError::Tracefs(io_error) => io_error
            .raw_os_error()
            .map(|errno| (Call::MountTracefs, errno)),
        _ => None,
    }
}

/// `error` with the cause and the fix appended when the kernel refused a call.
pub fn describe(error: &ProbeError, privileges: &Privileges) -> String {
    match refused_call(error) {
        Some((call, errno)) => format!("{error}: {}", explain(call, errno, privileges)),
        None => error.to_string(),
    }
}

/// Capabilities the agent runs without, only seeing less: what is lost without each.
const DEGRADING: &[(u32, &str, &str)] = &[
    (
        cap::SYS_PTRACE,
        "SYS_PTRACE",
        "/proc/<pid>/exe and fd/ of processes of other users or with more capabilities than \
         the agent (root's) are unreadable: their spans lose process.executable.path, and \
         connections they opened before the agent started cannot be looked up",
    ),
    (
        cap::DAC_READ_SEARCH,
        "DAC_READ_SEARCH",
        "/proc/<pid>/environ and fd of processes of other users (mode 0400 and 0500, theirs) are \
         unreadable: their spans lose service.name from OTEL_SERVICE_NAME",
    ),
];

/// One warning per missing capability that degrades spans (none when running with CAP_SYS_ADMIN,
/// as root on a host).
pub fn degrading_gaps(privileges: &Privileges) -> Vec<String> {
    if privileges.has(cap::SYS_ADMIN) {
        return Vec::new();
    }
    DEGRADING
        .iter()
        .filter(|(number, _, _)| !privileges.has(*number))
        .map(|(_, name, lost)| {
            format!(
                "CAP_{name} is not in effect: {lost}; add `{name}` to the container's \
                 securityContext.capabilities.add"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST_CAPS: u64 = (1 << cap::BPF)
        | (1 << cap::PERFMON)
        | (1 << cap::SYS_PTRACE)
        | (1 << cap::DAC_READ_SEARCH);

    fn privileges(cap_eff: u64, seccomp: u8) -> Privileges {
        Privileges {
            cap_eff,
            seccomp: Some(seccomp),
        }
    }

    #[test]
    fn parses_status() {
        let status = "Name:\ttracer\nCapPrm:\t000000c000080004\nCapEff:\t000000c000080004\n\
                      NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        let p = Privileges::parse(status);
        assert_eq!(p.cap_eff, MANIFEST_CAPS);
        assert_eq!(p.seccomp, Some(2));
        assert!(p.has(cap::BPF) && p.has(cap::PERFMON) && !p.has(cap::SYS_ADMIN));
        assert_eq!(
            Privileges::parse("garbage\nCapEff: zz\n"),
            Privileges::default()
        );
    }

    #[test]
    fn seccomp_is_named_when_the_capabilities_are_there() {
        let text = explain(Call::BpfObject, libc::EPERM, &privileges(MANIFEST_CAPS, 2));
        assert!(text.contains("bpf() returned EPERM"), "{text}");
        assert!(text.contains("Likely cause: seccomp"), "{text}");
        assert!(text.contains("Localhost"), "{text}");
        assert!(!text.contains("missing capability"), "{text}");
    }

    #[test]
    fn a_missing_capability_is_named_before_seccomp() {
        let no_bpf = MANIFEST_CAPS & !(1 << cap::BPF);
        let text = explain(Call::BpfObject, libc::EPERM, &privileges(no_bpf, 2));
        assert!(text.contains("missing capability CAP_BPF"), "{text}");
        assert!(text.contains("add `BPF`"), "{text}");
        let no_perfmon = MANIFEST_CAPS & !(1 << cap::PERFMON);
        for call in [Call::BpfProgLoad, Call::PerfEventOpen] {
            let text = explain(call, libc::EPERM, &privileges(no_perfmon, 2));
            assert!(text.contains("missing capability CAP_PERFMON"), "{text}");
            assert!(!text.contains("CAP_BPF"), "{text}");
        }
        // CAP_SYS_ADMIN covers both.
        let admin = 1 << cap::SYS_ADMIN;
        let text = explain(Call::BpfProgLoad, libc::EPERM, &privileges(admin, 2));
        assert!(text.contains("Likely cause: seccomp"), "{text}");
    }

    #[test]
    fn other_causes() {
        let text = explain(
            Call::PerfEventOpen,
            libc::EACCES,
            &privileges(MANIFEST_CAPS, 0),
        );
        assert!(text.contains("security module"), "{text}");
        let text = explain(Call::BpfObject, libc::ENOSYS, &privileges(MANIFEST_CAPS, 2));
        assert!(text.contains("seccomp filter"), "{text}");
        let text = explain(
            Call::MountTracefs,
            libc::EPERM,
            &privileges(MANIFEST_CAPS, 2),
        );
        assert!(text.contains("mount -t tracefs"), "{text}");
        let text = explain(Call::BpfObject, libc::EINVAL, &privileges(MANIFEST_CAPS, 0));
        assert!(text.starts_with("bpf() returned EINVAL"), "{text}");
    }

    #[test]
    fn finds_the_errno_in_aya_errors() {
        let map_error = aya::maps::MapError::CreateError {
            name: "EVENTS".into(),
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        };
        let error = ProbeError::Load(Box::new(aya::EbpfError::MapError(map_error)));
        assert_eq!(refused_call(&error), Some((Call::BpfObject, libc::EPERM)));
        let text = describe(&error, &privileges(MANIFEST_CAPS, 2));
        assert!(text.starts_with("loading the eBPF object failed"), "{text}");
        assert!(text.contains("EPERM") && text.contains("seccomp"), "{text}");

        let attach = aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
            call: "perf_event_open_trace_point",
            io_error: io::Error::from_raw_os_error(libc::EACCES),
        });
        let error = ProbeError::Program {
            name: "sys_enter_read",
            category: "syscalls",
            tracepoint: "sys_enter_read",
            source: Box::new(attach),
        };
        assert_eq!(
            refused_call(&error),
            Some((Call::PerfEventOpen, libc::EACCES))
        );
        assert_eq!(refused_call(&ProbeError::NoBtf), None);
    }

    #[test]
    fn degrading_gaps_name_the_capability() {
        assert!(degrading_gaps(&privileges(MANIFEST_CAPS, 2)).is_empty());
        assert!(degrading_gaps(&privileges(1 << cap::SYS_ADMIN, 0)).is_empty());
        let gaps = degrading_gaps(&privileges(MANIFEST_CAPS & !(1 << cap::SYS_PTRACE), 2));
        assert_eq!(gaps.len(), 1);
        assert!(gaps[0].contains("CAP_SYS_PTRACE"), "{}", gaps[0]);
    }
}
