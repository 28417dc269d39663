//! Fuzzes the kernel's bounded `traceparent` scan (`tracer_common::traceparent_scan`, the code
//! the eBPF programs run with `--context-propagation tcp-options`) over arbitrary heads. Checks:
//! no panic, and every context it adopts is one userspace's `traceparent` parser accepts from a
//! `traceparent` line of the same bytes, with the same ids (never a context userspace would not
//! have found).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::protocols::propagation::parse_traceparent;
use tracer_common::traceparent_scan::scan;

/// The (trace id, parent span id) of every `traceparent` line userspace's value parser accepts.
fn userspace_contexts(data: &[u8]) -> Vec<([u8; 16], u64)> {
    data.split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|b| *b == b':')?;
            let (name, value) = line.split_at(colon);
            if !name.eq_ignore_ascii_case(b"traceparent") {
                return None;
            }
            let value = value.get(1..)?.trim_ascii();
            let parsed = parse_traceparent(value).ok()?;
            Some((parsed.trace_id, u64::from_be_bytes(parsed.parent_id)))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (adopted, _) = scan(data);
    if let Some((trace_id, parent)) = adopted {
        assert!(trace_id.iter().any(|b| *b != 0), "adopted an all-zero trace id");
        assert_ne!(parent, 0, "adopted an all-zero parent span id");
        assert!(
            userspace_contexts(data).contains(&(trace_id, parent)),
            "adopted a context no traceparent line of the head gives userspace"
        );
    }
});
