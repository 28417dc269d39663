//! Network namespaces the tests create: a namespace with only its loopback up (its own
//! 127.0.0.1 and port space), deleted when dropped.

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::run_with_timeout;

/// A network namespace named `tracer-<tag>-<test pid>` with its loopback up.
#[derive(Debug)]
pub struct LoopbackNamespace {
    name: String,
}

impl LoopbackNamespace {
    /// Creates it (deleting one a killed earlier run of the same test left behind).
    pub fn create(tag: &str) -> LoopbackNamespace {
        let name = format!("tracer-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let namespace = LoopbackNamespace { name };
        ip(&[
            "netns",
            "exec",
            &namespace.name,
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ]);
        namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` run inside the namespace (`ip netns exec` execs it: the same pid).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for LoopbackNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let mut command = Command::new("ip");
    command.args(args);
    let (status, child) = run_with_timeout("ip", command, Duration::from_secs(20));
    assert!(
        status.success(),
        "`ip {}` failed ({status})\n{}",
        args.join(" "),
        child.output_report()
    );
}
