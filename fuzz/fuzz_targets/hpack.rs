//! Fuzzes the HPACK decoder: the input is a series of header blocks for one decoder (layout
//! documented on `tracer::protocols::http2::hpack::fuzz_entry`), which checks its own invariants
//! (list, table and memory bounds).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tracer::protocols::http2::hpack::fuzz_entry(data);
});
