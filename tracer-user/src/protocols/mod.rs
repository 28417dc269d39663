//! Protocols: one transform per wire protocol from captured bytes to exchanges (HTTP/1.x, HTTP/2),
//! and the trace context requests carry (propagation).

pub mod http1;
pub mod http2;
pub mod propagation;
pub mod select;
