//! Telemetry: exchanges become spans (ids, timing, semantic conventions, redaction) with the
//! resource of the process that produced them (including Kubernetes metadata), and the agent's own
//! metrics.

pub mod ids;
pub mod k8s;
pub mod metrics;
pub mod proc_identity;
pub mod red;
pub mod redact;
pub mod resource;
pub mod rpc;
pub mod semconv;
pub mod spans;
