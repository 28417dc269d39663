//! HTTP/2 (RFC 9113) on captured byte streams: the wire layer turns each direction's records into
//! [`H2Event`]s (frames, HPACK-decoded header blocks), the exchange layer assembles one exchange per
//! stream. See [`events`] for the contract between the two.

mod direction;
pub mod events;
pub mod frame;
pub mod hpack;

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod tests;

pub use direction::fuzz_entry;
pub use events::{
    H2Direction, H2Event, H2Limits, H2WireStats, PREFACE, looks_like_h2_frames, starts_with_preface,
};

pub mod exchange;

pub use exchange::{Http2Connection, Http2Limits, Http2Stats};
