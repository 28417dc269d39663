//! tracer: the userspace agent of a zero-code HTTP tracer built on eBPF syscall tracepoints.
//!
//! The tree follows the data, one folder per stage: [`capture`] (probes, kernel records, the reorder
//! window, socket facts, the agent's own footprint) -> [`protocols`] (HTTP/1.x and HTTP/2 framing,
//! incoming trace context) -> [`correlate`] (the connection table, parent links) -> [`telemetry`]
//! (spans, resources, Kubernetes metadata, the agent's own metrics) -> [`export`] (OTLP, terminal,
//! JSON). [`pipeline`] strings the pure stages together; [`agent`] runs them on the live ring
//! buffer. See `docs/ARCHITECTURE.md`.

pub mod agent;
pub mod capture;
pub mod cli;
pub mod correlate;
pub mod export;
pub mod idhash;
pub mod intern;
pub mod memory;
pub mod model;
pub mod pipeline;
pub mod protocols;
pub mod telemetry;
#[cfg(test)]
mod testing;
