//! Builds the eBPF programs (crate `tracer-ebpf`) and embeds the object in the agent.
//!
//! When the eBPF toolchain is missing (no `bpf-linker`) or `AYA_BUILD_SKIP=1` is set, an EMPTY
//! object is written instead so `cargo check`, clippy and unit tests work anywhere; the agent
//! refuses to start with it and says how to build the real one (`cargo xtask setup`).

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=TRACER_REQUIRE_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("tracer");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if skip || !linker {
        if env::var("TRACER_REQUIRE_EBPF").is_ok_and(|v| v == "1") {
            return Err(anyhow!(
                "TRACER_REQUIRE_EBPF=1 but the eBPF build is skipped (bpf-linker missing or \
                 AYA_BUILD_SKIP set); run `cargo xtask setup`"
            ));
        }
        println!(
            "cargo:warning=eBPF programs not built ({}); the agent will refuse to start. \
             Run `cargo xtask setup` to install the eBPF toolchain.",
            if skip {
                "AYA_BUILD_SKIP is set"
            } else {
                "bpf-linker not found"
            }
        );
        fs::write(&object, []).context("writing the empty eBPF object stub")?;
        return Ok(());
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("no manifest dir"))?);
    let ebpf_dir = manifest_dir.join("../tracer-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
