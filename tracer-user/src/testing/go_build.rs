//! Real Go builds for the unit tests that read Go binaries: one `main.go` built several ways
//! (PIE, stripped, 32-bit) with the host's `go` toolchain, as users' binaries are built.

use std::path::{Path, PathBuf};

/// One way to build: output name, extra `go build` flags, extra environment.
pub type GoBuild<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

/// Builds `main_go` in a fresh directory named after `tag` once per entry of `builds`; returns
/// the directory (the binaries are in it by their names). Panics when a build fails.
pub fn build_go_variants(tag: &str, main_go: &str, builds: &[GoBuild<'_>]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracer-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("main.go"), main_go).expect("main.go");
    std::fs::write(dir.join("go.mod"), "module m\n\ngo 1.17\n").expect("go.mod");
    for (name, flags, env) in builds {
        build_one(&dir, name, flags, env);
    }
    dir
}

fn build_one(dir: &Path, name: &str, flags: &[&str], env: &[(&str, &str)]) {
    let status = std::process::Command::new("go")
        .arg("build")
        .args(flags)
        .args(["-o", name, "."])
        .current_dir(dir)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .envs(env.iter().copied())
        .status()
        .expect("the go toolchain runs (`cargo xtask setup` installs golang-go)");
    assert!(status.success(), "go build {name} failed");
}
