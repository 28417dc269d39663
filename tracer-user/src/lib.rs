//! tracer: the userspace agent of a zero-code HTTP tracer built on eBPF syscall tracepoints.
//!
//! Data flows one way: kernel records -> [`decode`] -> [`connections`] -> [`http`] framing and
//! pairing -> [`spans`] (semantic conventions, [`propagation`] of incoming context) -> [`export`].
//! See `docs/ARCHITECTURE.md`.

pub mod export;
pub mod http;
pub mod model;
pub mod propagation;
pub mod resource;
pub mod spans;
