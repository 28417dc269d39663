//! The agent's parsers of captured (untrusted) bytes, compiled on their own for fuzzing: the
//! same source files as `tracer-user`, at the same module paths, without its runtime dependencies
//! (exporters, Kubernetes client), so a sanitizer build takes a minute instead of a quarter of an
//! hour. A `#[path]` on an inline module names the folder its modules are read from.

#[path = "../../tracer-user/src/model.rs"]
pub mod model;

#[path = "../../tracer-user/src/capture"]
pub mod capture {
    pub mod decode;
    pub mod gotls {
        pub mod elf;
        pub mod layout;
    }
}

#[path = "../../tracer-user/src/protocols"]
pub mod protocols {
    pub mod http1;
    pub mod http2;
    pub mod propagation;
    pub mod select;
}

#[path = "../../tracer-user/src/telemetry"]
pub mod telemetry {
    pub mod redact;
}
