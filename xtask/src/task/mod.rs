//! One module per `cargo xtask` subcommand.

pub mod bench;
pub mod build;
pub mod demo;
pub mod image;
pub mod kernel;
pub mod run;
pub mod setup;
pub mod soak;
pub mod test;
