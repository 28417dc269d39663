//! The agent's parsers of captured (untrusted) bytes, compiled on their own for fuzzing: the
//! same source files as `tracer-user`, without its runtime dependencies (exporters, Kubernetes
//! client), so a sanitizer build takes a minute instead of a quarter of an hour.

#[path = "../../tracer-user/src/model.rs"]
pub mod model;

#[path = "../../tracer-user/src/http/mod.rs"]
pub mod http;

#[path = "../../tracer-user/src/propagation/mod.rs"]
pub mod propagation;

#[path = "../../tracer-user/src/decode.rs"]
pub mod decode;

#[path = "../../tracer-user/src/redact.rs"]
pub mod redact;
