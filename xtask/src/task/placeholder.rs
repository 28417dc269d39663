//! Subcommands reserved for later (`demo`, `bench`): they say so and fail.

use anyhow::{Result, bail};

pub fn run(name: &str) -> Result<()> {
    println!("cargo xtask {name}: not yet implemented");
    bail!("`cargo xtask {name}` is not yet implemented")
}
