//! One module per `cargo xtask` subcommand.

pub mod build;
pub mod placeholder;
pub mod run;
pub mod setup;
pub mod test;
