//! tracer: the userspace agent of a zero-code HTTP tracer built on eBPF syscall tracepoints.
//!
//! Data flows one way: kernel records -> [`decode`] -> [`connections`] -> [`http`] framing and
//! pairing -> [`spans`] (semantic conventions, [`propagation`] of incoming context) -> [`export`].
//! [`pipeline`] strings the pure stages together; [`agent`] runs them on the live ring buffer
//! that [`probes`] attaches. See `docs/ARCHITECTURE.md`.

pub mod agent;
pub mod census;
pub mod cli;
pub mod connections;
pub mod decode;
pub mod export;
pub mod http;
pub mod idhash;
pub mod ids;
pub mod intern;
pub mod k8s;
pub mod linker;
pub mod metrics;
pub mod model;
pub mod own;
pub mod pipeline;
pub mod privilege;
pub mod probes;
pub mod proc_identity;
pub mod procnet;
pub mod proctree;
pub mod propagation;
pub mod redact;
pub mod reorder;
pub mod resource;
pub mod runtime;
pub mod spans;
