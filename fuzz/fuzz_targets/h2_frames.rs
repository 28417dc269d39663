//! Fuzzes the HTTP/2 wire layer of one direction: the input is a script of records with
//! arbitrary split points and capture gaps (layout documented on
//! `tracer::protocols::http2::fuzz_entry`), which checks its own invariants (header lists and
//! memory within the limits).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tracer::protocols::http2::fuzz_entry(data);
});
