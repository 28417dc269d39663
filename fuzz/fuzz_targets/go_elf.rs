//! Fuzzes the analysis of a traced Go executable (untrusted: any file a traced process runs):
//! any bytes are analysed or skipped without a panic, and what is found stays inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::capture::gotls::elf::{analyse, return_offsets};

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = analyse(data) {
        for sites in [&info.read, &info.write] {
            assert!(!sites.returns.is_empty(), "sites without a return");
            for offset in std::iter::once(sites.entry).chain(sites.returns.iter().copied()) {
                assert!(offset < data.len() as u64, "an attach offset outside the file");
            }
        }
        assert!(info.version.len() <= 256);
    }
    // The disassembly on its own, at an arbitrary address.
    if let Some(returns) = return_offsets(data, 0x40_0000) {
        assert!(returns.iter().all(|r| *r >= 0x40_0000 && *r < 0x40_0000 + data.len() as u64));
    }
});
