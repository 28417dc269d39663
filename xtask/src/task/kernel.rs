//! `cargo xtask test --kernel <KERNEL>`: the end-to-end tests inside a VM booted on another
//! kernel (virtme-ng over a read-only snapshot of this system, qemu with KVM), against the very
//! agent binary and test executables built on the host, as aya's own xtask runs its integration
//! tests on a kernel matrix.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::step;
use crate::task::setup;
use crate::workspace;

/// The kernel `cargo xtask test` (and so CI) runs the smoke subset on, besides the host's:
/// Debian bookworm's generic 6.1, the oldest kernel the registries offer (whatever ABI bookworm
/// currently ships, through its metapackage).
pub const CI_KERNEL: &str = "amd64";
/// The end-to-end test targets of the smoke subset: capture and span basics, and header-less
/// linking.
pub const SMOKE_TESTS: &[&str] = &["http_basic", "linking"];
/// The tests of the smoke subset (libtest filters, matched exactly): one exchange with its
/// semconv attributes, one header-less trace through a thread-per-request hub, and the
/// header-less pair of a client whose write is recorded after the server read it (what a slow
/// machine does to any client). Emulated (see `kvm_boots_stock_kernels`), each takes about a
/// minute; the two `linking` ones run at once.
pub const SMOKE_FILTERS: &[&str] = &[
    "get_gives_one_server_and_one_client_span_with_semconv_attributes",
    "one_request_through_the_thread_hub_is_one_connected_trace",
    "a_client_write_recorded_after_the_server_read_still_pairs",
];
/// The end-to-end targets a VM cannot run: they need a container runtime (podman's storage and
/// pause image live on the host's read-only snapshot) or a Kubernetes node.
const HOST_ONLY_TESTS: &[&str] = &["container", "k8s"];
/// The VM: modest, the host has two cores shared with builds.
const VM_MEMORY: &str = "3G";
const VM_CPUS: &str = "2";
/// A VM that runs longer than this is stopped and its kernel reported as failed.
pub const VM_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// The same bound for the smoke subset `cargo xtask test` (CI) runs: about 3 minutes emulated,
/// so a hung VM costs CI at most this.
pub const SMOKE_VM_TIMEOUT: Duration = Duration::from_secs(12 * 60);

/// How one kernel is picked on the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum KernelSpec {
    /// A kernel image file (`/boot/vmlinuz-…` or a built `bzImage`).
    Image(PathBuf),
    /// A Debian kernel release, e.g. `6.1.0-54-rt-amd64`: package `linux-image-<release>`.
    Release(String),
    /// A Debian flavour, e.g. `amd64`, `rt-amd64`, `cloud-amd64`: metapackage
    /// `linux-image-<flavour>`, i.e. the current ABI of that flavour.
    Flavour(String),
}

impl KernelSpec {
    pub fn parse(text: &str) -> KernelSpec {
        if text.contains('/') {
            KernelSpec::Image(PathBuf::from(text))
        } else if text.starts_with(|c: char| c.is_ascii_digit()) {
            KernelSpec::Release(text.to_owned())
        } else {
            KernelSpec::Flavour(text.to_owned())
        }
    }
}

/// The outcome of one test target in one VM.
#[derive(Debug, PartialEq, Eq)]
pub struct TargetResult {
    pub target: String,
    pub exit_code: i32,
    pub passed: u32,
    pub failed: u32,
}

/// The outcome of one kernel.
#[derive(Debug)]
pub struct KernelResult {
    pub spec: String,
    /// `uname -r` inside the VM (proves the kernel under test really booted).
    pub booted: Option<String>,
    pub targets: Vec<TargetResult>,
    pub elapsed: Duration,
    pub log_dir: PathBuf,
}

impl KernelResult {
    pub fn passed(&self) -> bool {
        // A filter that matched nothing is no pass.
        self.booted.is_some()
            && self.targets.iter().map(|t| t.passed).sum::<u32>() > 0
            && self.targets.iter().all(|t| t.exit_code == 0)
    }
}

/// The Debian packages booting a kernel in a VM needs that are missing: qemu, and a static
/// busybox (virtme-ng builds an initramfs with it for distribution kernels).
fn missing_vm_packages() -> Vec<&'static str> {
    [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
    ]
    .iter()
    .filter(|(program, _)| workspace::find_on_path(program).is_none())
    .map(|(_, package)| *package)
    .collect()
}

/// Installs what booting a kernel in a VM needs: qemu, a static busybox and virtme-ng (PyPI).
pub fn vm_prerequisites() -> Result<()> {
    const STEP: &str = "setup: kernel VM";
    let missing = missing_vm_packages();
    if !missing.is_empty() {
        setup::apt_install(STEP, &missing)?;
    }
    virtme_ng(STEP)
}

/// Installs virtme-ng when `vng` is not on PATH.
fn virtme_ng(step_name: &str) -> Result<()> {
    if workspace::find_on_path("vng").is_none() {
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("virtme-ng=={VIRTME_NG_VERSION}"),
        ]);
        step::run(step_name, pip)?;
        if let Some(pyenv) = workspace::find_on_path("pyenv") {
            // pyenv puts new console scripts on PATH only after a rehash.
            let mut rehash = Command::new(pyenv);
            rehash.arg("rehash");
            step::run(step_name, rehash)?;
        }
    }
    if workspace::find_on_path("vng").is_none() {
        bail!("step `{step_name}` failed: virtme-ng installed but `vng` is not on PATH");
    }
    step::note(step_name, "virtme-ng present");
    Ok(())
}

/// `cargo xtask setup`'s part: the VM tools and the kernel CI boots, each only when missing, in
/// one apt transaction (one `apt-get update`, package triggers run once, no initramfs built for
/// the kernel).
pub fn setup_vm() -> Result<()> {
    const STEP: &str = "setup: kernel VM";
    let mut missing = missing_vm_packages();
    let metapackage = format!("linux-image-{CI_KERNEL}");
    let kernel_present =
        metapackage_release(&metapackage)?.is_some_and(|release| boot_image(&release).is_file());
    if !kernel_present {
        missing.push(&metapackage);
    }
    if missing.is_empty() {
        step::note(STEP, &format!("qemu, busybox and {metapackage} present"));
    } else {
        install_kernel_packages(STEP, &missing)?;
    }
    virtme_ng(STEP)?;
    kernel_image(&KernelSpec::parse(CI_KERNEL)).map(|_| ())
}

/// The agent's `--client-wait-ms` in an emulated VM (10 x its default of 1 s).
const EMULATED_CLIENT_WAIT_MS: u64 = 10_000;

/// The virtme-ng release this project boots kernels with.
const VIRTME_NG_VERSION: &str = "1.42";

/// True when /dev/kvm can boot a distribution kernel. A cloud VM offering nested
/// virtualisation through PVM (the `kvm_pvm` module) exposes /dev/kvm, but a PVM guest must be a
/// kernel built for PVM: a stock kernel never leaves real mode there.
fn kvm_boots_stock_kernels() -> bool {
    Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists()
}

/// The kernel image to boot for `spec`, installing its Debian package when missing.
pub fn kernel_image(spec: &KernelSpec) -> Result<PathBuf> {
    const STEP: &str = "kernel: install";
    let release = match spec {
        KernelSpec::Image(path) => {
            if !path.is_file() {
                bail!("step `{STEP}`: no kernel image at {}", path.display());
            }
            return Ok(path.clone());
        }
        KernelSpec::Release(release) => {
            if !boot_image(release).is_file() {
                let package = format!("linux-image-{release}");
                if apt_knows(&package)? {
                    install_kernel_packages(STEP, &[package.as_str()])?;
                } else {
                    install_from_older_suite(STEP, &package)?;
                }
            }
            release.clone()
        }
        KernelSpec::Flavour(flavour) => {
            let metapackage = format!("linux-image-{flavour}");
            match metapackage_release(&metapackage)? {
                Some(release) if boot_image(&release).is_file() => release,
                _ => {
                    install_kernel_packages(STEP, &[metapackage.as_str()])?;
                    metapackage_release(&metapackage)?.with_context(|| {
                        format!("step `{STEP}`: {metapackage} installed but names no kernel")
                    })?
                }
            }
        }
    };
    let image = boot_image(&release);
    if !image.is_file() {
        bail!(
            "step `{STEP}`: {} missing after installing the kernel package",
            image.display()
        );
    }
    Ok(image)
}

fn boot_image(release: &str) -> PathBuf {
    Path::new("/boot").join(format!("vmlinuz-{release}"))
}

/// Installs kernel packages (and others with them) without generating an initramfs for the
/// kernel (virtme-ng makes its own).
fn install_kernel_packages(step_name: &str, packages: &[&str]) -> Result<()> {
    let mut update = Command::new("apt-get");
    update
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update");
    step::run(step_name, update)?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("INITRD", "No")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages);
    step::run(step_name, install)
}

/// True when the system's apt sources offer `package`.
fn apt_knows(package: &str) -> Result<bool> {
    let mut show = Command::new("apt-cache");
    show.args(["show", package]);
    let output = step::capture("kernel: install", show)?;
    Ok(output.status.success() && !output.stdout.is_empty())
}

/// Older Debian suites whose kernels `--kernel <release>` boots too (e.g. bullseye's 5.10), from
/// the same Debian mirror as this system's own sources.
const OLDER_SUITES: &[&str] = &["bullseye"];

/// Downloads `package` from the first older suite that has it, with a private apt state under
/// the target directory (the system's sources stay as they are), and installs it with dpkg.
fn install_from_older_suite(step_name: &str, package: &str) -> Result<()> {
    let mirror = debian_mirror().with_context(|| {
        format!("step `{step_name}`: no Debian mirror in this system's apt sources")
    })?;
    for suite in OLDER_SUITES {
        let dir = workspace::target_dir()
            .join("kernel-matrix")
            .join(format!("apt-{suite}"));
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for sub in [
            lists.join("partial"),
            cache.join("archives").join("partial"),
        ] {
            std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let sources = dir.join("sources.list");
        std::fs::write(&sources, format!("deb {mirror} {suite} main\n"))
            .with_context(|| format!("writing {}", sources.display()))?;
        let private = |program: &str| {
            let mut command = Command::new(program);
            command
                .current_dir(&dir)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .arg(format!("-oDir::Etc::SourceList={}", sources.display()))
                .arg("-oDir::Etc::SourceParts=/dev/null")
                .arg(format!("-oDir::State::Lists={}", lists.display()))
                .arg(format!("-oDir::Cache={}", cache.display()));
            command
        };
        let mut update = private("apt-get");
        update.arg("update");
        step::run(step_name, update)?;
        let mut show = private("apt-cache");
        show.args(["show", package]);
        let known = step::capture(step_name, show)?;
        if !known.status.success() || known.stdout.is_empty() {
            continue;
        }
        let mut download = private("apt-get");
        download.args(["download", package]);
        step::run(step_name, download)?;
        let deb = std::fs::read_dir(&dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("step `{step_name}`: {package} downloaded but no .deb"))?;
        let mut install = Command::new("dpkg");
        install.env("INITRD", "No").arg("-i").arg(&deb);
        return step::run(step_name, install);
    }
    bail!(
        "step `{step_name}`: no apt source offers {package} (tried bookworm and {OLDER_SUITES:?})"
    )
}

/// The URI of this system's main Debian archive (not the security one), from its apt sources.
fn debian_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    files
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .flat_map(|text| {
            text.lines()
                .flat_map(|line| {
                    line.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .find(|word| word.starts_with("http") && word.trim_end_matches('/').ends_with("/debian"))
}

/// The kernel release an installed metapackage depends on (`linux-image-6.1.0-54-amd64` for
/// `linux-image-amd64`), or None when it is not installed.
fn metapackage_release(metapackage: &str) -> Result<Option<String>> {
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f=${Status}|${Depends}", metapackage]);
    let output = step::capture("kernel: install", query)?;
    if !output.status.success() {
        return Ok(None);
    }
    Ok(release_from_depends(&String::from_utf8_lossy(
        &output.stdout,
    )))
}

/// Parses `install ok installed|linux-image-6.1.0-54-amd64 (= 6.1.190-1)` into the release.
fn release_from_depends(status_and_depends: &str) -> Option<String> {
    let (status, depends) = status_and_depends.split_once('|')?;
    if !status.ends_with(" installed") {
        return None;
    }
    depends
        .split([',', '|'])
        .filter_map(|dependency| dependency.split_whitespace().next())
        .filter_map(|package| package.strip_prefix("linux-image-"))
        .find(|release| release.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
}

/// The end-to-end test executables of `targets` (all of them but the host-only ones when empty),
/// built with `cargo test --no-run`, as (target name, path).
pub fn build_test_executables(targets: &[String]) -> Result<Vec<(String, PathBuf)>> {
    const STEP: &str = "kernel: build tests";
    let mut command = step::cargo();
    command
        .current_dir(workspace::root())
        // The whole workspace, as `cargo xtask test` builds it just before: the same feature
        // resolution, so nothing is rebuilt.
        .args(["test", "--workspace", "--no-run"])
        .args(["--message-format", "json-render-diagnostics"]);
    if targets.is_empty() {
        command.arg("--tests");
    } else {
        for target in targets {
            command.args(["--test", target]);
        }
    }
    step::announce(STEP, &command);
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("step `{STEP}`: could not start cargo"))?;
    if !output.status.success() {
        bail!("step `{STEP}` failed: cargo exited with {}", output.status);
    }
    let mut executables = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let kinds = &message["target"]["kind"];
        let is_test_target = kinds
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        let (Some(name), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        let in_e2e_package = message["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("tracer-tests"));
        if is_test_target && in_e2e_package && !HOST_ONLY_TESTS.contains(&name) {
            executables.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    executables.sort();
    if executables.is_empty() {
        bail!("step `{STEP}`: cargo built no end-to-end test executable for {targets:?}");
    }
    Ok(executables)
}

/// The script the VM runs: every test executable in turn, each one's output in `<name>.log` and
/// its exit code in `results`, in the shared output directory.
fn guest_script(
    out_dir: &Path,
    agent: &Path,
    executables: &[(String, PathBuf)],
    test_threads: usize,
    test_args: &[String],
    emulated: bool,
) -> String {
    let out = shell_quote(&out_dir.to_string_lossy());
    let mut script = String::new();
    let _ = writeln!(script, "#!/bin/bash");
    let _ = writeln!(script, "# Generated by `cargo xtask test --kernel`.");
    let _ = writeln!(script, "set -u");
    let _ = writeln!(script, "uname -r > {out}/uname");
    // The snapshot's /tmp, /run and /var/tmp are the guest's own (tmpfs).
    let _ = writeln!(
        script,
        "for dir in /tmp /var/tmp; do mountpoint -q $dir || mount -t tmpfs tmpfs $dir; done"
    );
    let _ = writeln!(
        script,
        "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing"
    );
    let _ = writeln!(script, "ip link set lo up");
    if emulated {
        // The agent runs at a higher priority than the peers it traces, as a node agent may: on
        // the guest's two slow vCPUs it was otherwise starved long enough that short-lived
        // clients exited before it read their /proc (then no network namespace: no pairing).
        let wrapper = shell_quote(&out_dir.join("tracer").to_string_lossy());
        let _ = writeln!(
            script,
            "printf '#!/bin/sh\\nexec nice -n -10 %s \"$@\"\\n' {} > {wrapper}; chmod +x {wrapper}",
            shell_quote(&shell_quote(&agent.to_string_lossy()))
        );
        let _ = writeln!(script, "export TRACER_BIN={wrapper}");
    } else {
        let _ = writeln!(
            script,
            "export TRACER_BIN={}",
            shell_quote(&agent.to_string_lossy())
        );
    }
    let _ = writeln!(script, "export RUST_BACKTRACE=1");
    if emulated {
        // Emulated, the guest runs about ten times slower than real time: a client preempted
        // between sending and its write's return stays so that much longer, so the agent's wait
        // for it (`--client-wait-ms`, 1 s) scales likewise.
        let _ = writeln!(
            script,
            "export TRACER_CLIENT_WAIT_MS={EMULATED_CLIENT_WAIT_MS}"
        );
    }
    let test_args: Vec<String> = test_args.iter().map(|a| shell_quote(a)).collect();
    let test_args = test_args.join(" ");
    for (name, executable) in executables {
        let exe = shell_quote(&executable.to_string_lossy());
        let _ = writeln!(script, "echo \"==> [kernel $(uname -r)] {name}\"");
        let _ = writeln!(
            script,
            "{exe} --test-threads={test_threads} {test_args} > {out}/{name}.log 2>&1; code=$?"
        );
        let _ = writeln!(script, "tail -n 3 {out}/{name}.log");
        let _ = writeln!(script, "echo \"{name} $code\" >> {out}/results");
    }
    let _ = writeln!(script, "echo done >> {out}/finished");
    script
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Boots `image` and runs `executables` inside against `agent`; the logs stay in `log_dir`.
pub fn run_in_vm(
    spec: &str,
    image: &Path,
    agent: &Path,
    executables: &[(String, PathBuf)],
    test_threads: usize,
    test_args: &[String],
    timeout: Duration,
) -> Result<KernelResult> {
    let log_dir = workspace::target_dir()
        .join("kernel-matrix")
        .join(spec.replace('/', "_"));
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("clearing {}", log_dir.display()))?;
    }
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let kvm = kvm_boots_stock_kernels();
    let script_path = log_dir.join("run.sh");
    std::fs::write(
        &script_path,
        guest_script(&log_dir, agent, executables, test_threads, test_args, !kvm),
    )
    .with_context(|| format!("writing {}", script_path.display()))?;

    if !kvm {
        step::note(
            &format!("kernel {spec}"),
            "this host's KVM is PVM (kvm_pvm), which boots only PVM guest kernels: emulating (TCG), \
             several times slower",
        );
    }
    let mut vng = Command::new("timeout");
    vng.arg(format!("{}s", timeout.as_secs()))
        .arg("vng")
        .arg("--run")
        .arg(image)
        .args(["--memory", VM_MEMORY, "--cpus", VM_CPUS])
        .args((!kvm).then_some("--disable-kvm"))
        .arg(format!("--rwdir={}", log_dir.display()))
        .arg("--cwd")
        .arg(workspace::root())
        .arg("--exec")
        .arg(format!(
            "bash {}",
            shell_quote(&script_path.to_string_lossy())
        ))
        // No stdin: vng would otherwise attach the terminal to the guest's console.
        .stdin(std::process::Stdio::null());
    let step_name = format!("kernel {spec}");
    step::announce(&step_name, &vng);
    let started = Instant::now();
    // qemu reopens /proc/self/fd/1 and 2 for the guest's output, which truncates a file our
    // caller redirected to: give it a pipe and forward what comes through.
    let (reader, writer) = std::io::pipe().context("creating the VM's output pipe")?;
    vng.stdout(writer.try_clone()?).stderr(writer);
    let mut child = vng
        .spawn()
        .with_context(|| format!("step `{step_name}`: could not start vng"))?;
    drop(vng);
    let mut reader = std::io::BufReader::new(reader);
    let mut line = Vec::new();
    while std::io::BufRead::read_until(&mut reader, b'\n', &mut line).is_ok_and(|n| n > 0) {
        print!("{}", String::from_utf8_lossy(&line));
        line.clear();
    }
    let status = child.wait()?;
    let elapsed = started.elapsed();
    step::note(
        &step_name,
        &format!(
            "VM exited with {status} after {:.0} s",
            elapsed.as_secs_f64()
        ),
    );

    let booted = std::fs::read_to_string(log_dir.join("uname"))
        .ok()
        .map(|text| text.trim().to_owned());
    let results = std::fs::read_to_string(log_dir.join("results")).unwrap_or_default();
    let mut targets = Vec::new();
    for line in results.lines() {
        let Some((target, code)) = line.rsplit_once(' ') else {
            continue;
        };
        let log =
            std::fs::read_to_string(log_dir.join(format!("{target}.log"))).unwrap_or_default();
        let (passed, failed) = libtest_counts(&log);
        targets.push(TargetResult {
            target: target.to_owned(),
            exit_code: code.trim().parse().unwrap_or(-1),
            passed,
            failed,
        });
    }
    // A target that never reported (VM crash, timeout) counts as failed.
    for (name, _) in executables {
        if !targets.iter().any(|t| &t.target == name) {
            targets.push(TargetResult {
                target: name.clone(),
                exit_code: -1,
                passed: 0,
                failed: 0,
            });
        }
    }
    Ok(KernelResult {
        spec: spec.to_owned(),
        booted,
        targets,
        elapsed,
        log_dir,
    })
}

/// Sums libtest's `test result: … N passed; M failed; …` lines.
fn libtest_counts(log: &str) -> (u32, u32) {
    let mut passed = 0;
    let mut failed = 0;
    for line in log.lines() {
        let Some(summary) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        for part in summary.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u32>() else {
                continue;
            };
            match label {
                "passed" => passed += count,
                "failed" => failed += count,
                _ => {}
            }
        }
    }
    (passed, failed)
}

/// The matrix as a Markdown table (the README's kernel table is pasted from it).
pub fn markdown_table(results: &[KernelResult]) -> String {
    let mut table = String::from(
        "| kernel | booted (`uname -r`) | test targets | tests passed / failed | result | VM wall time |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for result in results {
        let names: Vec<&str> = result.targets.iter().map(|t| t.target.as_str()).collect();
        let passed: u32 = result.targets.iter().map(|t| t.passed).sum();
        let failed: u32 = result.targets.iter().map(|t| t.failed).sum();
        let failing: Vec<&str> = result
            .targets
            .iter()
            .filter(|t| t.exit_code != 0)
            .map(|t| t.target.as_str())
            .collect();
        let verdict = if result.passed() {
            "pass".to_owned()
        } else if result.booted.is_none() {
            "did not boot".to_owned()
        } else {
            format!("FAIL: {}", failing.join(", "))
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {passed} / {failed} | {verdict} | {:.0} s |",
            result.spec,
            result.booted.as_deref().unwrap_or("-"),
            names.join(", "),
            result.elapsed.as_secs_f64(),
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_specs_are_told_apart() {
        assert_eq!(
            KernelSpec::parse("/boot/vmlinuz-6.1.0-54-amd64"),
            KernelSpec::Image("/boot/vmlinuz-6.1.0-54-amd64".into())
        );
        assert_eq!(
            KernelSpec::parse("6.1.0-54-rt-amd64"),
            KernelSpec::Release("6.1.0-54-rt-amd64".into())
        );
        assert_eq!(
            KernelSpec::parse("rt-amd64"),
            KernelSpec::Flavour("rt-amd64".into())
        );
    }

    #[test]
    fn metapackage_names_its_release() {
        assert_eq!(
            release_from_depends("install ok installed|linux-image-6.1.0-54-amd64 (= 6.1.190-1)"),
            Some("6.1.0-54-amd64".to_owned())
        );
        assert_eq!(
            release_from_depends("deinstall ok config-files|linux-image-6.1.0-54-amd64"),
            None
        );
        assert_eq!(release_from_depends("install ok installed|"), None);
    }

    #[test]
    fn libtest_summaries_are_summed() {
        let log = "running 2 tests\n\
                   test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\
                   test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(libtest_counts(log), (5, 1));
        assert_eq!(libtest_counts("garbage\n"), (0, 0));
    }
}

#[cfg(test)]
mod guest_tests {
    use super::*;

    /// Emulated, the script starts the agent through a wrapper raising its priority; the wrapper
    /// it writes is a valid script running the given binary with the given arguments.
    #[test]
    fn the_emulated_guest_runs_the_agent_through_a_priority_wrapper() {
        let dir = std::env::temp_dir().join(format!("xtask-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = guest_script(&dir, Path::new("/bin/echo"), &[], 1, &[], true);
        let wrapper_line = script
            .lines()
            .find(|l| l.starts_with("printf"))
            .expect("a wrapper line");
        let status = Command::new("bash")
            .arg("-c")
            .arg(wrapper_line)
            .status()
            .unwrap();
        assert!(status.success());
        let out = Command::new(dir.join("tracer"))
            .args(["a b", "c"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b c\n");
        assert!(script.contains(&format!(
            "export TRACER_BIN='{}'",
            dir.join("tracer").display()
        )));
        assert!(!guest_script(&dir, Path::new("/bin/echo"), &[], 1, &[], false).contains("nice"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
