//! Fuzzes a connection's switch from socket bytes to TLS plaintext records (layout documented
//! on `tracer::protocols::select::fuzz_entry`): ciphertext never reaches the framer of a
//! connection that follows its plaintext, and nothing panics on any mix of records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tracer::protocols::select::fuzz_entry(data);
});
