//! Fuzzes the HTTP/2 exchange layer (streams -> exchanges) with scripts of wire events; see
//! `tracer::protocols::http2::exchange::fuzz_entry` for the layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tracer::protocols::http2::exchange::fuzz_entry(data);
});
