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

/// Whether an HTTP/2 request is a gRPC call: its content-type is `application/grpc`, alone or
/// followed by `+format`, `;params` or a space (RFC-style, case-insensitive), as the gRPC spec
/// defines it (`application/grpc-web` is not).
pub fn is_grpc(request: &crate::model::HttpRequest) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    if request.version != crate::model::HttpVersion::Http2 {
        return false;
    }
    let Some(header) = request
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case("content-type"))
    else {
        return false;
    };
    let value = header.value.trim_ascii();
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';' | b' '))
}
