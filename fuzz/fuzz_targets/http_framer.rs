//! Fuzzes HTTP/1.x framing and request/response pairing: the input is a script of records for
//! one connection (layout documented on `tracer::protocols::http1::fuzz_entry`), which checks its own
//! invariants (bounded buffering, request-ordered exchanges, sane timestamps).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tracer::protocols::http1::fuzz_entry(data);
});
