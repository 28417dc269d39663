//! `cargo xtask image`: the agent's container image, built from `k8s/Containerfile` with podman.
//!
//! Base images cannot be assumed reachable, so the image is `FROM scratch`: this task stages a
//! build context whose `rootfs/` holds the agent binary (stripped), the shared libraries it links
//! (as `ldd` resolves them on the build machine, copied to the same paths) and the CA bundle, then
//! runs `podman build` with a fixed timestamp so equal inputs give an equal image. No shell, no
//! package manager at run time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::step;
use crate::task::setup;
use crate::workspace::{self, find_on_path};

/// The tag `k8s/kustomization.yaml` deploys (`tracer:<version>`).
const DEFAULT_TAG: &str = concat!("localhost/tracer:", env!("CARGO_PKG_VERSION"));
/// Where the agent lives in the image (the Containerfile's ENTRYPOINT).
const IMAGE_BINARY: &str = "usr/local/bin/tracer";
/// The CA bundle the OTLP exporter's TLS reads (native roots), when the build machine has one.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

#[derive(Args)]
pub struct ImageArgs {
    /// Image name and tag.
    #[arg(long, default_value = DEFAULT_TAG)]
    pub tag: String,
    /// Package the debug build instead of the release build.
    #[arg(long)]
    pub debug: bool,
    /// Package this already built agent binary instead of building one.
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

pub fn run(args: &ImageArgs) -> Result<()> {
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => {
            setup::run()?;
            // TRACER_REQUIRE_EBPF=1: fail the build rather than ship an agent without its probes.
            let mut command = step::cargo();
            command
                .current_dir(workspace::root())
                .env("TRACER_REQUIRE_EBPF", "1")
                .args(["build", "-p", "tracer-user", "--bin", "tracer"]);
            if !args.debug {
                command.arg("--release");
            }
            step::run("image: build", command)?;
            workspace::tracer_binary(!args.debug)
        }
    };
    build_image(&binary, &args.tag)
}

/// Stages the context for `binary` and builds the image `tag` from `k8s/Containerfile`.
pub fn build_image(binary: &Path, tag: &str) -> Result<()> {
    const STEP: &str = "image";
    let started = Instant::now();
    if find_on_path("podman").is_none() {
        bail!("step `{STEP}`: podman is not installed; run `cargo xtask setup`");
    }
    if !binary.is_file() {
        bail!("step `{STEP}`: no agent binary at {}", binary.display());
    }
    let context = workspace::target_dir().join("image-context");
    stage(binary, &context)
        .with_context(|| format!("step `{STEP}`: staging {}", context.display()))?;

    let previous = image_id(tag)?;
    let mut podman = Command::new("podman");
    podman.args(["build", "--timestamp", "0", "--tag", tag, "--file"]);
    podman.arg(workspace::root().join("k8s/Containerfile"));
    podman.arg(&context);
    step::run(STEP, podman)?;
    // The image this tag named before, now untagged: remove it (unless a container still uses
    // it) so repeated builds do not fill the machine's storage.
    if let Some(previous) = previous.filter(|id| image_id(tag).ok().flatten().as_ref() != Some(id))
    {
        let mut remove = Command::new("podman");
        remove.args(["image", "rm", &previous]);
        let _ = step::capture(STEP, remove);
    }

    let mut inspect = Command::new("podman");
    inspect.args(["image", "inspect", "--format", "{{.Size}}", tag]);
    let size = step::capture(STEP, inspect)?;
    let bytes: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    step::note(
        STEP,
        &format!(
            "{tag}: {:.1} MiB, built in {:.1} s",
            bytes as f64 / (1024.0 * 1024.0),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// The id of the image `tag` names, if any.
fn image_id(tag: &str) -> Result<Option<String>> {
    let mut inspect = Command::new("podman");
    inspect.args(["image", "inspect", "--format", "{{.Id}}", tag]);
    let output = step::capture("image", inspect)?;
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok((output.status.success() && !id.is_empty()).then_some(id))
}

/// `context/rootfs/`: the stripped binary, its shared libraries and the CA bundle.
fn stage(binary: &Path, context: &Path) -> Result<()> {
    if context.exists() {
        std::fs::remove_dir_all(context)?;
    }
    let rootfs = context.join("rootfs");
    let target = rootfs.join(IMAGE_BINARY);
    copy_file(binary, &target)?;
    let mut strip = Command::new("strip");
    strip.arg(&target);
    step::run("image: strip", strip)?;

    let mut ldd = Command::new("ldd");
    ldd.arg(binary);
    let linked = step::capture("image: ldd", ldd)?;
    if !linked.status.success() {
        bail!(
            "`ldd {}` failed: {}",
            binary.display(),
            String::from_utf8_lossy(&linked.stderr)
        );
    }
    let libraries = shared_libraries(&String::from_utf8_lossy(&linked.stdout))?;
    for library in &libraries {
        copy_file(library, &rootfs.join(library.strip_prefix("/")?))?;
    }
    let ca = Path::new("/").join(CA_BUNDLE);
    if ca.is_file() {
        copy_file(&ca, &rootfs.join(CA_BUNDLE))?;
    } else {
        step::note(
            "image",
            &format!(
                "no {} on this machine: the image has no CA bundle (OTLP over https will not \
                 verify); install ca-certificates",
                ca.display()
            ),
        );
    }
    Ok(())
}

/// The absolute paths `ldd` resolved, loader included; an unresolved library is an error.
fn shared_libraries(ldd_output: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in ldd_output.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("a shared library of the agent does not resolve: {line}");
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    if libraries.is_empty() {
        bail!("ldd listed no libraries (a static binary needs none, but this build is dynamic)");
    }
    Ok(libraries)
}

/// Copies the content `source` resolves to (symlinks followed) to `target`, keeping its mode.
fn copy_file(source: &Path, target: &Path) -> Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(source, target)
        .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libraries = shared_libraries(output).unwrap();
        assert_eq!(
            libraries,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(shared_libraries("\tlibfoo.so => not found\n").is_err());
    }
}
