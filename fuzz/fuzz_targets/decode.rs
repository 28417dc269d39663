//! Fuzzes the decoding of ring-buffer records: any bytes either decode or are rejected, and a
//! decoded record never claims more than it carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::capture::decode::{DecodedRecord, KernelEvent, conn_open_comm, decode};

fuzz_target!(|data: &[u8]| {
    std::hint::black_box(conn_open_comm(data));
    let Ok(event) = decode(data) else {
        return;
    };
    // What the reorder window keeps, joined back with the same bytes, is the same event; with
    // fewer bytes it is a shorter one, never a panic.
    let kept = DecodedRecord::of(&event);
    assert_eq!(kept.event(data).as_ref(), Some(&event));
    std::hint::black_box(kept.event(&data[..data.len() / 2]));
    let header = *event.header();
    std::hint::black_box((
        header.tgid,
        header.tid,
        header.fd,
        header.conn_id,
        header.ts_ns,
    ));
    match event {
        KernelEvent::ConnOpen {
            role, local, peer, ..
        } => {
            std::hint::black_box((role, local, peer));
        }
        KernelEvent::Data {
            direction,
            role,
            true_len,
            payload,
            ..
        } => {
            assert!(
                payload.len() as u64 <= u64::from(true_len),
                "payload longer than true_len"
            );
            let start = payload.as_ptr() as usize;
            let data_start = data.as_ptr() as usize;
            assert!(
                start >= data_start && start + payload.len() <= data_start + data.len(),
                "payload is not a slice of the record"
            );
            std::hint::black_box((
                direction,
                role,
                payload.iter().map(|b| u64::from(*b)).sum::<u64>(),
            ));
        }
        KernelEvent::ConnClose { .. } => {}
        KernelEvent::Identity {
            direction,
            flags,
            offset,
            trace_id,
            span_id,
            parent_span_id,
            ..
        } => {
            std::hint::black_box((direction, flags, offset, trace_id, span_id, parent_span_id));
        }
    }
});
