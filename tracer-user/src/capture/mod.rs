//! Capture: loading and attaching the eBPF programs, turning kernel records into typed events in
//! order, and the socket and process facts the kernel cannot give (sniffed connections, the agent's
//! own footprint).

pub mod census;
pub mod decode;
pub mod gotls;
pub mod kernel_btf;
pub mod kernel_log;
pub mod own;
pub mod privilege;
pub mod probes;
pub mod procnet;
pub mod procwatch;
pub mod propagation;
pub mod reorder;
pub mod ring;
pub mod tls;
