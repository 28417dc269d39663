//! Correlation: the table of traced connections, parent links with and without headers, and the
//! per-process facts (thread model, process tree) that decide which links are safe.

pub mod connections;
pub mod kernel_ids;
pub mod linker;
pub mod proctree;
pub mod runtime;
pub mod unseen_close;
