//! `cargo xtask setup`: everything a fresh machine lacks to build and run the tracer, each part
//! skipped when already in place.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::step;
use crate::workspace::find_on_path;

/// The bpf-linker release this project builds with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13 has features for.
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];
/// Where tracefs must be mounted for tracepoints to attach.
const TRACEFS_MOUNT_POINT: &str = "/sys/kernel/tracing";
/// Programs the end-to-end tests drive, and the Debian packages providing them.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("curl", "curl"),
    // Self-signed certificates of the TLS tests (tests/tests/tls.rs).
    ("openssl", "openssl"),
    ("python3", "python3"),
    // The self-telemetry test puts a collector in a network namespace behind a DNAT, as a
    // Kubernetes Service does.
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    // The Go net/http peer of tests/tests/go.rs is built with it.
    ("go", "golang-go"),
    // Node's built-in http2 server and client (tests/peers/h2_peer.js).
    ("node", "nodejs"),
    // `tracer top`'s full-screen view is driven in a terminal multiplexer (tests/tests/top.rs).
    ("tmux", "tmux"),
];
/// Python modules the end-to-end peers import, and the pip requirement providing each: the gRPC
/// peer of tests/tests/grpc.rs (pinned: the tests assert what its HTTP/2 wire looks like).
const TEST_PYTHON_PACKAGES: &[(&str, &str)] = &[("grpc", "grpcio==1.85.3")];

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    test_programs()?;
    python_packages()?;
    python_test_modules()?;
    container_runtime()?;
    tracefs()?;
    step::note("setup", "done");
    Ok(())
}

fn rust_src() -> Result<()> {
    let mut command = Command::new("rustup");
    command.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    step::run("setup: rust-src", command)
}

/// The installed bpf-linker, on PATH or in cargo's bin directory.
fn installed_bpf_linker() -> Option<PathBuf> {
    find_on_path("bpf-linker").or_else(|| {
        let candidate = cargo_home()?.join("bin").join("bpf-linker");
        candidate.is_file().then_some(candidate)
    })
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

/// True when `bpf-linker --version` answers and every library it links resolves.
fn bpf_linker_works(path: &Path) -> Result<bool> {
    let step_name = "setup: bpf-linker";
    let version = step::capture(step_name, {
        let mut command = Command::new(path);
        command.arg("--version");
        command
    });
    let Ok(version) = version else {
        return Ok(false);
    };
    if !version.status.success() {
        return Ok(false);
    }
    let mut ldd = Command::new("ldd");
    ldd.arg(path);
    let linked = step::capture(step_name, ldd)?;
    let libraries = String::from_utf8_lossy(&linked.stdout);
    Ok(linked.status.success() && !libraries.contains("not found"))
}

fn bpf_linker() -> Result<()> {
    const STEP: &str = "setup: bpf-linker";
    if let Some(path) = installed_bpf_linker() {
        if bpf_linker_works(&path)? {
            step::note(
                STEP,
                &format!(
                    "{} works and its libLLVM resolves; skipping",
                    path.display()
                ),
            );
            return Ok(());
        }
        step::note(
            STEP,
            &format!(
                "{} is broken (no answer or unresolved libraries); rebuilding",
                path.display()
            ),
        );
    }

    // bpf-linker links the shared libLLVM shipped with the nightly toolchain, whose LLVM must
    // match the one rustc nightly emits bitcode for.
    let sysroot = stdout_line(
        STEP,
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]),
    )?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = nightly_libllvm(&sysroot_lib)?;
    let version_info = stdout_line(STEP, Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = llvm_major(&version_info)
        .context("step `setup: bpf-linker`: no `LLVM version` in `rustc +nightly -vV`")?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&major) {
        bail!(
            "step `{STEP}` failed: nightly rustc uses LLVM {major}, bpf-linker {BPF_LINKER_VERSION} supports \
             {BPF_LINKER_LLVM_MAJORS:?}"
        );
    }

    // The prefix must persist: it becomes bpf-linker's RUNPATH.
    let prefix = cargo_home()
        .context("step `setup: bpf-linker`: neither CARGO_HOME nor HOME is set")?
        .join("bpf-linker-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("step `{STEP}`: creating {}", prefix_lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path without a file name")?;
    // One link for the link step (-lLLVM), one under the SONAME for the loader.
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(soname)] {
        force_symlink(&libllvm, &link)
            .with_context(|| format!("step `{STEP}`: linking {}", link.display()))?;
    }

    let mut install = step::cargo();
    install
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")]);
    step::run(STEP, install)?;

    let installed =
        installed_bpf_linker().context("step `setup: bpf-linker`: installed but not found")?;
    if !bpf_linker_works(&installed)? {
        bail!(
            "step `{STEP}` failed: {} was built but does not run or its libLLVM does not resolve",
            installed.display()
        );
    }
    Ok(())
}

/// First `libLLVM.so.*` of the nightly sysroot, in name order.
fn nightly_libllvm(sysroot_lib: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(sysroot_lib).with_context(|| {
        format!(
            "step `setup: bpf-linker`: reading {}",
            sysroot_lib.display()
        )
    })?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .collect();
    candidates.sort();
    candidates.into_iter().next().with_context(|| {
        format!(
            "step `setup: bpf-linker`: no libLLVM.so.* in {}",
            sysroot_lib.display()
        )
    })
}

/// The major of the `LLVM version: X.Y.Z` line.
fn llvm_major(version_info: &str) -> Option<u32> {
    version_info
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

fn force_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, link)
}

fn stdout_line(step_name: &str, command: &mut Command) -> Result<String> {
    let rendered = step::render(command);
    let output = command
        .output()
        .with_context(|| format!("step `{step_name}`: could not start `{rendered}`"))?;
    if !output.status.success() {
        bail!(
            "step `{step_name}` failed: `{rendered}` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn program_present(name: &str) -> bool {
    find_on_path(name).is_some()
        || Path::new("/usr/sbin").join(name).is_file()
        || Path::new("/usr/bin").join(name).is_file()
}

fn test_programs() -> Result<()> {
    const STEP: &str = "setup: test programs";
    let missing: Vec<&str> = TEST_PROGRAMS
        .iter()
        .filter(|(program, _)| !program_present(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        step::note(STEP, "test programs present; skipping apt-get");
        return Ok(());
    }
    apt_install(STEP, &missing)
}

/// True when `python3 -c "import MODULE"` succeeds.
fn python_module_present(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn python_packages() -> Result<()> {
    const STEP: &str = "setup: python packages";
    let missing: Vec<&str> = TEST_PYTHON_PACKAGES
        .iter()
        .filter(|(module, _)| !python_module_present(module))
        .map(|(_, requirement)| *requirement)
        .collect();
    if missing.is_empty() {
        step::note(STEP, "python test packages present; skipping pip");
        return Ok(());
    }
    pip_install(STEP, &missing)
}

/// `python3 -m pip install REQUIREMENTS` into the interpreter the tests run; where that
/// interpreter is the distribution's externally managed one, again with
/// `--break-system-packages` (a test machine, root, nothing else depends on it).
pub fn pip_install(step_name: &str, requirements: &[&str]) -> Result<()> {
    let pip = |extra: &[&str]| {
        let mut command = Command::new("python3");
        command
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .args(["-m", "pip", "install", "--no-input", "--quiet"])
            .args(extra)
            .args(requirements);
        command
    };
    if step::run(step_name, pip(&[])).is_ok() {
        return Ok(());
    }
    step::note(
        step_name,
        "pip refused (externally managed interpreter?); retrying with --break-system-packages",
    );
    step::run(step_name, pip(&["--break-system-packages"]))
}

/// Python modules the tests import, and their Debian packages: `tests/red_metrics.rs` parses the
/// agent's `/metrics` page with the Prometheus client library's parser. Checked with the system
/// interpreter (`/usr/bin/python3`), where the Debian packages install them.
const PYTHON_TEST_MODULES: &[(&str, &str)] = &[("prometheus_client", "python3-prometheus-client")];

fn python_test_modules() -> Result<()> {
    const STEP: &str = "setup: python test modules";
    let missing: Vec<&str> = PYTHON_TEST_MODULES
        .iter()
        .filter(|(module, _)| {
            !Command::new("/usr/bin/python3")
                .args(["-c", &format!("import {module}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        step::note(STEP, "python test modules present; skipping apt-get");
        return Ok(());
    }
    apt_install(STEP, &missing)
}

/// The container runtime the image task and `tests/container.rs` use, and its Debian packages:
/// podman, runc (Debian's default crun refuses hybrid cgroup layouts) and catatonit (the pause
/// process of pods, which podman builds its local pause image from).
const CONTAINER_PROGRAMS: &[(&str, &str)] = &[
    ("podman", "podman"),
    ("runc", "runc"),
    ("catatonit", "catatonit"),
];

fn container_runtime() -> Result<()> {
    const STEP: &str = "setup: container runtime";
    let missing: Vec<&str> = CONTAINER_PROGRAMS
        .iter()
        .filter(|(program, _)| !program_present(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        step::note(STEP, "podman, runc and catatonit present; skipping apt-get");
        return Ok(());
    }
    apt_install(STEP, &missing)
}

/// `apt-get update` then a non-interactive install of `packages`, both announced as `step_name`.
pub fn apt_install(step_name: &str, packages: &[&str]) -> Result<()> {
    let mut update = Command::new("apt-get");
    update
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update");
    step::run(step_name, update)?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages);
    step::run(step_name, install)
}

/// True when /proc/mounts lists a tracefs at `TRACEFS_MOUNT_POINT`.
fn tracefs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts")
        .context("step `setup: tracefs`: reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, mount_point, fs_type) = (fields.next(), fields.next(), fields.next());
        mount_point == Some(TRACEFS_MOUNT_POINT) && fs_type == Some("tracefs")
    }))
}

fn tracefs() -> Result<()> {
    const STEP: &str = "setup: tracefs";
    if tracefs_mounted()? {
        step::note(
            STEP,
            &format!("tracefs mounted at {TRACEFS_MOUNT_POINT}; skipping"),
        );
        return Ok(());
    }
    let mut mount = Command::new("mount");
    mount.args(["-t", "tracefs", "nodev", TRACEFS_MOUNT_POINT]);
    step::run(STEP, mount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_the_version_line() {
        let info = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(info), Some(22));
        assert_eq!(llvm_major("rustc 1.97.0\n"), None);
    }
}
