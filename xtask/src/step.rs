//! Running one named step: print it, run it, and fail with an error that names it.

use std::ffi::OsStr;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Prints `==> [step] program args...` for a command about to run.
pub fn announce(step: &str, command: &Command) {
    println!("==> [{step}] {}", render(command));
}

/// Prints a step that is not a command (a check, a skip).
pub fn note(step: &str, message: &str) {
    println!("==> [{step}] {message}");
}

/// The command line as a shell-like string, environment overrides first.
pub fn render(command: &Command) -> String {
    let envs = command.get_envs().filter_map(|(key, value)| {
        Some(format!(
            "{}={}",
            key.to_string_lossy(),
            value?.to_string_lossy()
        ))
    });
    let words = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c))
    {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Runs `command` with inherited stdio; fails naming `step` unless it exits 0.
pub fn run(step: &str, mut command: Command) -> Result<()> {
    announce(step, &command);
    let status = command
        .status()
        .with_context(|| format!("step `{step}`: could not start `{}`", render(&command)))?;
    if !status.success() {
        bail!(
            "step `{step}` failed: `{}` exited with {status}",
            render(&command)
        );
    }
    Ok(())
}

/// Runs `command` quietly and returns its output (for probes that decide what to do).
pub fn capture(step: &str, mut command: Command) -> Result<Output> {
    command
        .output()
        .with_context(|| format!("step `{step}`: could not start `{}`", render(&command)))
}

/// A `cargo` command using the same cargo that runs xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
