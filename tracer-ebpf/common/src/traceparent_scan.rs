//! The kernel's bounded scan of a SERVER request's head for a W3C `traceparent` header
//! (`--context-propagation tcp-options`): at the read returning a request's first bytes, the
//! kernel looks through a prefix of the bytes that read returned (the same bytes userspace
//! parses) and, when it finds exactly one valid `traceparent`, the request joins that trace as a
//! child of the header's parent span, so the context it sends on downstream names the header's
//! trace. The eBPF program (`tracer-ebpf/src/prop_scan.rs`) runs exactly these functions over a
//! per-CPU copy of the head; userspace's header parser (`tracer-user`'s
//! `protocols::propagation`) is the specification, and tracer-user's tests run both over the
//! same heads.
//!
//! Shaped for the verifier, which walks every iteration of a loop and keeps the other side of
//! every branch on its path pending (at most 8192): the byte loop has one branch per byte (it
//! only notes where lines end, through a table lookup and unconditional stores), and the
//! per-line checks run in a second loop over at most [`MAX_HEADERS`] + 1 line ends. Every index
//! is masked into a fixed array, and the loops' state lives behind volatile accesses in memory
//! the caller provides (a map value in the kernel): kept in registers, counts and positions
//! would be constants per path, and the verifier would explore every combination of them.

/// Bytes of the head the kernel scans at most (userspace may see more: a header past them is
/// userspace's alone, counted as a disagreement when it decides a span).
pub const SCAN_BYTES: usize = 1024;
/// Size of the head buffer: twice a power of two above the scanned prefix, so that a line's
/// start masked with `HEAD_BUF / 2 - 1` and any offset in the line stay inside it.
pub const HEAD_BUF: usize = 4096;
/// Headers userspace keeps per request (`HttpLimits::default().max_headers`): a `traceparent`
/// after them is not seen there, so the kernel stops looking after as many header lines.
pub const MAX_HEADERS: u32 = 64;
/// Spaces or tabs skipped before and after the value (userspace trims any number: a value with
/// more is left to userspace and counted as a disagreement).
pub const MAX_OWS: usize = 8;
/// Length of a version-00 value: `vv-<32 hex>-<16 hex>-ff`.
pub const VALUE_LEN: usize = 55;

const NAME: &[u8; 12] = b"traceparent:";

/// Bytes of a header line the parse may read: `traceparent:`, OWS, the value, OWS, CR LF.
const LINE: usize = 128;

const _: () = assert!(HEAD_BUF.is_power_of_two() && SCAN_BYTES < HEAD_BUF / 2);
const _: () = assert!(NAME.len() + 2 * MAX_OWS + VALUE_LEN + 2 <= LINE && LINE <= HEAD_BUF / 2);

/// What [`find`] saw (bits of [`State::outcome`]).
pub mod outcome {
    /// A `traceparent:` line was found (at `State::found`).
    pub const FOUND: u32 = 1;
    /// A second one was found: neither is used.
    pub const REPEATED: u32 = 2;
    /// The scan stopped before the end of its bytes: the head ended (an empty line) or
    /// userspace's header limit was reached. Without it, the scan ran out of bytes.
    pub const ENDED: u32 = 4;
}

/// The scan's state, in memory the caller provides (see the module docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Bytes to scan (at most [`SCAN_BYTES`]; `head[len]` must be 0: the sentinel that stops a
    /// match reaching past the bytes read). Set by the caller; read from memory each time: a
    /// register would be pinned to a constant on each way out of the byte loop.
    pub len: u32,
    /// Line feeds seen in the scanned bytes (the first ends the request line).
    pub lines: u32,
    /// Index of the first `traceparent:` line's first byte.
    pub found: u32,
    /// Bits of [`outcome`].
    pub outcome: u32,
    /// [`parse`]'s accumulators: the trace id's bytes OR-ed, the parent span id.
    pub trace_bits: u32,
    pub _pad: u32,
    pub span: u64,
    /// Where each line feed is (`lines` of them).
    pub line_ends: [u16; SCAN_BYTES],
}

impl State {
    pub const fn new() -> Self {
        State {
            len: 0,
            lines: 0,
            found: 0,
            outcome: 0,
            trace_bits: 0,
            _pad: 0,
            span: 0,
            line_ends: [0; SCAN_BYTES],
        }
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// Indices of the scan's counters (`COUNTERS_MAP`).
pub mod counter {
    /// SERVER requests whose identity joined the trace of their `traceparent` header.
    pub const ADOPTED: u32 = 0;
    /// `traceparent` headers found and refused (invalid, all-zero ids, repeated).
    pub const REJECTED: u32 = 1;
    /// Scans that reached their limit (the scanned prefix or the capture size) before the end
    /// of the head, with bytes of the read left unscanned.
    pub const AT_CAPTURE_LIMIT: u32 = 2;
    /// Heads that were to be scanned but were not: the scan program was missing from its
    /// program array (the tail call failed) or its armed request was overwritten before it ran.
    /// The request keeps the identity the kernel gives without a header.
    pub const NOT_RUN: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// The per-CPU counters of the scan.
pub const COUNTERS_MAP: &str = "PROP_SCAN_COUNTERS";
/// The scan runs in a program of its own (a function of this name in `tracer-ebpf/src/main.rs`),
/// tail-called by the data programs after their records, so that its bounded loops are verified
/// once instead of inside every data program. Loaded only with propagation on.
pub const SCAN_PROGRAM: &str = "prop_scan";
/// The program array holding `SCAN_PROGRAM` at index 0 (filled by userspace at load).
pub const SCANNER_MAP: &str = "PROP_SCANNER";

/// Byte `i` of a line (volatile: each byte is loaded where it is used, so the unrolled loops
/// hold a few values at a time; the data programs' stack has no room for spills).
#[inline(always)]
fn at(line: &[u8; LINE], i: usize) -> u8 {
    // SAFETY: an in-bounds element of a valid array.
    unsafe { core::ptr::read_volatile(&line[i % LINE]) }
}

/// The `LINE` bytes of the head from `start` (masked into the buffer's first half, so every
/// access is one base plus a constant).
#[inline(always)]
fn line_at(head: &[u8; HEAD_BUF], start: usize) -> &[u8; LINE] {
    static EMPTY: [u8; LINE] = [0; LINE];
    let start = start & (HEAD_BUF / 2 - 1);
    // Always `Some`: `start + LINE` is within the buffer.
    match head
        .get(start..start + LINE)
        .and_then(|s| s.try_into().ok())
    {
        Some(line) => line,
        None => &EMPTY,
    }
}

#[inline(always)]
fn get(v: &u32) -> u32 {
    // SAFETY: a plain read of a valid reference (volatile: see the module docs).
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn set(v: &mut u32, value: u32) {
    // SAFETY: a plain write through a valid reference (volatile: see the module docs).
    unsafe { core::ptr::write_volatile(v, value) }
}

#[inline(always)]
fn get64(v: &u64) -> u64 {
    // SAFETY: a plain read of a valid reference (volatile: see the module docs).
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn set64(v: &mut u64, value: u64) {
    // SAFETY: a plain write through a valid reference (volatile: see the module docs).
    unsafe { core::ptr::write_volatile(v, value) }
}

/// Whether `line` starts with `traceparent:` (the name in any letter case).
#[inline(always)]
fn is_name(line: &[u8; LINE]) -> bool {
    // Letters compare with their case bit set; the colon exactly.
    let mut k = 0;
    while k < NAME.len() - 1 {
        if at(line, k) | 0x20 != NAME[k] {
            return false;
        }
        k += 1;
    }
    at(line, NAME.len() - 1) == b':'
}

/// 1 for a line feed, 0 for every other byte (a lookup: a compare would be a branch).
static LINE_FEED: [u8; 256] = {
    let mut table = [0u8; 256];
    table[b'\n' as usize] = 1;
    table
};

/// Scans `head[..st.len]` for `traceparent:` header lines, until the head ends or
/// [`MAX_HEADERS`] header lines were passed. The result is in `st`.
#[inline(always)]
pub fn find(head: &[u8; HEAD_BUF], st: &mut State) {
    set(&mut st.lines, 0);
    set(&mut st.found, 0);
    set(&mut st.outcome, 0);
    // Where the lines end: each byte's position is written to the next slot, which only a
    // line feed keeps (it advances the count; no branch).
    let mut lines = 0u32;
    for i in 0..SCAN_BYTES {
        if i >= get(&st.len) as usize {
            break;
        }
        let feed = LINE_FEED[usize::from(at(line_at(head, i), 0))];
        // SAFETY: an element of a valid array (the index is masked into it).
        unsafe {
            core::ptr::write_volatile(&mut st.line_ends[lines as usize % SCAN_BYTES], i as u16)
        };
        lines += u32::from(feed);
    }
    set(&mut st.lines, lines);
    // The header lines, each after a line feed: the first ends the request line.
    let mut j = 0;
    while j <= MAX_HEADERS as usize {
        if j >= get(&st.lines) as usize {
            break;
        }
        // SAFETY: an element of a valid array (the index is masked into it).
        let feed = unsafe { core::ptr::read_volatile(&st.line_ends[j % SCAN_BYTES]) };
        let line = line_at(head, usize::from(feed));
        let next = at(line, 1);
        if next == b'\n' || next == b'\r' || j == MAX_HEADERS as usize {
            // The empty line that ends the head (a lone CR makes the head unparseable), or as
            // many header lines as userspace keeps.
            let seen = get(&st.outcome);
            set(&mut st.outcome, seen | outcome::ENDED);
            break;
        }
        j += 1;
        if !is_name(line_at(head, usize::from(feed) + 1)) {
            continue;
        }
        let seen = get(&st.outcome);
        if seen & outcome::FOUND != 0 {
            set(&mut st.outcome, seen | outcome::REPEATED);
            break;
        }
        set(&mut st.found, u32::from(feed) + 1);
        set(&mut st.outcome, seen | outcome::FOUND);
    }
}

/// Lowercase hex digit values, 0xff for every other byte.
static NIBBLES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut c = 0;
    while c < 10 {
        table[b'0' as usize + c] = c as u8;
        c += 1;
    }
    c = 0;
    while c < 6 {
        table[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    table
};

/// Lowercase hex digit value, or 0xff. A table: compares would branch, and the unrolled
/// parse would keep every branch's value on the stack.
#[inline(always)]
fn nibble(c: u8) -> u8 {
    NIBBLES[c as usize]
}

#[inline(always)]
fn is_ows(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Parses the `traceparent:` line starting at `line` (from [`find`]), using only bytes before
/// `st.len` (`st` holds its accumulators): its trace id goes to `trace`, and the parent span id is returned (as a big-endian
/// number); 0 when the value is not one userspace's parser accepts (then `trace` holds
/// garbage). Accepted: version 00 with exactly the 55-byte value, or another version except ff
/// with the value followed by `-` or its end; lowercase hex only; non-zero ids; up to
/// [`MAX_OWS`] spaces or tabs on either side; the line ends in LF or CR LF.
#[inline(always)]
pub fn parse(head: &[u8; HEAD_BUF], line: usize, trace: &mut [u8; 16], st: &mut State) -> u64 {
    let name = line_at(head, line);
    let mut skipped = 0;
    while skipped < MAX_OWS && is_ows(at(name, NAME.len() + skipped)) {
        skipped += 1;
    }
    let start = line + NAME.len() + skipped;
    let v = line_at(head, start);
    if at(v, 2) != b'-' || at(v, 35) != b'-' || at(v, 52) != b'-' {
        return 0;
    }
    // An invalid digit has its high nibble set; each is checked where it is read (an
    // accumulated check keeps every digit alive until the end: stack spills).
    let (vh, vl) = (nibble(at(v, 0)), nibble(at(v, 1)));
    if (vh | vl) & 0xf0 != 0 {
        return 0;
    }
    let version = (vh << 4) | vl;
    if version == 0xff {
        return 0;
    }
    let (fh, fl) = (nibble(at(v, 53)), nibble(at(v, 54)));
    if (fh | fl) & 0xf0 != 0 {
        return 0;
    }
    // Each byte goes to memory as soon as it is decoded, and the accumulators live there too:
    // held in registers, the optimiser defers the combining past every digit's check and keeps
    // all the digits alive until then (stack spills).
    set(&mut st.trace_bits, 0);
    let mut j = 0;
    while j < 16 {
        let (h, l) = (nibble(at(v, 3 + 2 * j)), nibble(at(v, 4 + 2 * j)));
        if (h | l) & 0xf0 != 0 {
            return 0;
        }
        let byte = (h << 4) | l;
        // SAFETY: an element of a valid array.
        unsafe { core::ptr::write_volatile(&mut trace[j], byte) };
        let bits = get(&st.trace_bits) | u32::from(byte);
        set(&mut st.trace_bits, bits);
        j += 1;
    }
    if get(&st.trace_bits) == 0 {
        return 0;
    }
    set64(&mut st.span, 0);
    j = 0;
    while j < 16 {
        let d = nibble(at(v, 36 + j));
        if d & 0xf0 != 0 {
            return 0;
        }
        let span = (get64(&st.span) << 4) | u64::from(d);
        set64(&mut st.span, span);
        j += 1;
    }
    let span = get64(&st.span);
    if span == 0 {
        return 0;
    }
    let mut end = VALUE_LEN;
    if version != 0 && at(v, end) == b'-' {
        // A later version's further fields: ignored.
    } else {
        skipped = 0;
        while skipped < MAX_OWS && is_ows(at(v, end)) {
            end += 1;
            skipped += 1;
        }
        if at(v, end) == b'\r' {
            end += 1;
        }
        if at(v, end) != b'\n' {
            return 0;
        }
    }
    if start + end >= get(&st.len) as usize {
        return 0;
    }
    span
}

/// The whole scan of a read's first `bytes` as the kernel does it (host side: tests and tools;
/// the kernel calls [`find`] and [`parse`] itself): the header's trace id and parent span id
/// when exactly one valid `traceparent` is in the scanned prefix, and the state [`find`] left.
#[cfg(not(target_arch = "bpf"))]
pub fn scan(bytes: &[u8]) -> (Option<([u8; 16], u64)>, State) {
    let n = bytes.len().min(SCAN_BYTES);
    let mut head = [0u8; HEAD_BUF];
    head[..n].copy_from_slice(&bytes[..n]);
    let mut st = State {
        len: n as u32,
        ..State::new()
    };
    find(&head, &mut st);
    if st.outcome & (outcome::FOUND | outcome::REPEATED) != outcome::FOUND {
        return (None, st);
    }
    let mut trace = [0u8; 16];
    let span = parse(&head, st.found as usize, &mut trace, &mut st);
    ((span != 0).then_some((trace, span)), st)
}
