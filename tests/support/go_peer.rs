//! Builds the Go test peers (`tests/peers/<source>/main.go`) with the host's `go` toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::run_with_timeout;

/// How long one `go build` may take (a cold build cache compiles the standard library).
const GO_BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds `tests/peers/<source>/main.go` into `<target_tmp>/go-peers/<name>` with extra `go build`
/// flags, without modules and with a build cache of its own; panics with the build's output when
/// it fails (`cargo xtask setup` installs golang-go).
pub fn build_go_peer(target_tmp: &Path, source: &str, name: &str, flags: &[&str]) -> PathBuf {
    let out = target_tmp.join("go-peers");
    std::fs::create_dir_all(&out).expect("create the Go peers' directory");
    let bin = out.join(name);
    let main = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(source)
        .join("main.go");
    let mut build = Command::new("go");
    build
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&main)
        .env("GOCACHE", out.join("cache"))
        .env("GOPATH", out.join("gopath"))
        .env("GO111MODULE", "off");
    let (status, child) = run_with_timeout("go build", build, GO_BUILD_TIMEOUT);
    if !status.success() {
        panic!(
            "`go build` of the Go peer {name} failed ({status}); `cargo xtask setup` installs \
             golang-go\n{}",
            child.output_report()
        );
    }
    bin
}
