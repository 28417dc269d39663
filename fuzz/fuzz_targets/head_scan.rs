//! Fuzzes the cheaper response head scan against the full `httparse` parse: every head the scan
//! takes must give the full parse's length, version, status and framing facts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tracer::protocols::http1::fuzz_head_scan(data);
});
