//! Span identities and id generation. A [`SpanIdentity`] (trace id, span id, parent) is decided
//! once per request, when its head is parsed (by `correlate::linker`), and span building takes it
//! as given: what children were told and what is exported never disagree. Trace ids of new
//! traces are random (the W3C recommendation, the default) or AWS X-Ray's time-prefixed ids;
//! adopted contexts keep their own.

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::protocols::propagation::TraceContext;
use crate::telemetry::spans::Clock;

/// Why a span has the parent it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkSource {
    Header,
    ConnectionPair,
    SameThread,
    Root,
    /// The kernel decided the identity (`--context-propagation tcp-options`): a SERVER
    /// request's parent from a TCP option, a CLIENT request's from its thread.
    Kernel,
}

/// The identity a span is exported with. Its span id is never zero and never its parent's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanIdentity {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
    pub trace_state: Option<String>,
    pub link: LinkSource,
    /// The request is telemetry that is never exported (see `capture::own`), or descends from
    /// one: its span is dropped too, or it would name a parent that never arrives.
    pub telemetry: bool,
    /// SERVER request whose parent came from a header although its same-host CLIENT request
    /// is traced here: that request's span id (the service graph counts the pair once).
    pub paired_client: Option<[u8; 8]>,
}

impl SpanIdentity {
    /// The first span of a new, sampled trace.
    pub fn root(trace_id: [u8; 16]) -> Self {
        SpanIdentity {
            trace_id,
            span_id: random_nonzero(),
            parent_span_id: None,
            sampled: true,
            trace_state: None,
            link: LinkSource::Root,
            telemetry: false,
            paired_client: None,
        }
    }

    /// A child of `parent` in its trace (keeping its tracestate and sampling decision).
    pub fn child_of(parent: &SpanIdentity, link: LinkSource) -> Self {
        SpanIdentity {
            trace_id: parent.trace_id,
            span_id: span_id_avoiding(random_nonzero(), parent.span_id),
            parent_span_id: Some(parent.span_id),
            sampled: parent.sampled,
            trace_state: parent.trace_state.clone(),
            link,
            telemetry: parent.telemetry,
            paired_client: None,
        }
    }

    /// A child of the caller's span named by the request's own trace-context header.
    pub fn from_header(ctx: TraceContext) -> Self {
        SpanIdentity {
            trace_id: ctx.trace_id,
            span_id: span_id_avoiding(random_nonzero(), ctx.parent_span_id),
            parent_span_id: Some(ctx.parent_span_id),
            sampled: ctx.sampled,
            trace_state: ctx.trace_state,
            link: LinkSource::Header,
            telemetry: false,
            paired_client: None,
        }
    }

    /// The identity of a request the linker never saw the head of: its own header's context if it
    /// carries one, else a new root dated by the request's start.
    pub fn from_request(ctx: Option<TraceContext>, trace_ids: &TraceIds, start_ns: u64) -> Self {
        match ctx {
            Some(ctx) => SpanIdentity::from_header(ctx),
            None => SpanIdentity::root(trace_ids.new_trace_id(start_ns)),
        }
    }
}

/// `candidate`, unless it is zero or equal to `parent` (then a fresh random id that is neither).
fn span_id_avoiding(candidate: [u8; 8], parent: [u8; 8]) -> [u8; 8] {
    let mut id = candidate;
    while id == [0; 8] || id == parent {
        id = random_nonzero();
    }
    id
}

/// How the trace id of a trace the tracer starts is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IdGenerator {
    /// 128 random bits.
    #[default]
    Random,
    /// AWS X-Ray: the first 32 bits are the trace's start in Unix seconds, the other 96 random.
    /// X-Ray refuses trace ids that do not start with a recent time.
    Xray,
}

/// Makes trace ids for new traces, dated by the kernel timestamp of the request that starts them.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceIds {
    generator: IdGenerator,
    /// `wall - monotonic` offset in nanoseconds (see `spans::Clock`).
    clock_offset_ns: i128,
}

impl TraceIds {
    pub fn new(generator: IdGenerator, clock: &Clock) -> Self {
        TraceIds {
            generator,
            clock_offset_ns: clock.offset_ns(),
        }
    }

    pub fn generator(&self) -> IdGenerator {
        self.generator
    }

    /// A trace id for a trace whose first request started at `start_mono_ns` (kernel
    /// CLOCK_MONOTONIC; 0 when unknown, then the current time dates it).
    pub fn new_trace_id(&self, start_mono_ns: u64) -> [u8; 16] {
        match self.generator {
            IdGenerator::Random => random_nonzero(),
            IdGenerator::Xray => {
                let unix_secs = if start_mono_ns == 0 {
                    now_unix_secs()
                } else {
                    let wall_ns = i128::from(start_mono_ns) + self.clock_offset_ns;
                    u64::try_from(wall_ns.max(0) / 1_000_000_000).unwrap_or(0)
                };
                xray_trace_id(unix_secs)
            }
        }
    }
}

/// An X-Ray trace id: the Unix time in seconds (truncated to 32 bits, as X-Ray's own SDKs do)
/// followed by 96 random bits, never all zero in the random part.
pub fn xray_trace_id(unix_secs: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&(unix_secs as u32).to_be_bytes());
    let random: [u8; 12] = random_nonzero();
    id[4..].copy_from_slice(&random);
    id
}

thread_local! {
    /// The ids' generator, one per thread: rand's small fast generator (xoshiro) seeded from the
    /// operating system when the thread first makes an id, as the OTel SDKs make theirs. Ids need
    /// to be unique, not secret; the thread's ChaCha generator cost a block refill every few spans
    /// and a reference count per call.
    static ID_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// A random id that is never all zero (an all-zero id is invalid in W3C and OTLP).
pub fn random_nonzero<const N: usize>() -> [u8; N] {
    ID_RNG.with_borrow_mut(|rng| {
        loop {
            let mut id = [0u8; N];
            rng.fill(&mut id[..]);
            if id.iter().any(|b| *b != 0) {
                return id;
            }
        }
    })
}

fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: u64 = 1_000_000_000;

    fn prefix_secs(id: &[u8; 16]) -> u32 {
        u32::from_be_bytes([id[0], id[1], id[2], id[3]])
    }

    #[test]
    fn xray_ids_start_with_the_start_time_from_the_kernel_clock() {
        // Monotonic 100 s after boot, booted at Unix 1_800_000_000.
        let clock = Clock::from_offset(i128::from(1_800_000_000 * NS));
        let ids = TraceIds::new(IdGenerator::Xray, &clock);
        let id = ids.new_trace_id(100 * NS + 999_999_999);
        assert_eq!(prefix_secs(&id), 1_800_000_100);
        assert!(id[4..].iter().any(|b| *b != 0));
        let other = ids.new_trace_id(100 * NS);
        assert_eq!(prefix_secs(&other), 1_800_000_100);
        assert_ne!(id[4..], other[4..], "the 96 low bits are random");
    }

    #[test]
    fn a_span_id_is_never_zero_nor_its_parents() {
        assert_ne!(span_id_avoiding([0x22; 8], [0x22; 8]), [0x22; 8]);
        assert_ne!(span_id_avoiding([0; 8], [0x22; 8]), [0; 8]);
        assert_eq!(span_id_avoiding([0x11; 8], [0x22; 8]), [0x11; 8]);
        let header = TraceContext {
            trace_id: [0x11; 16],
            parent_span_id: [0x22; 8],
            sampled: false,
            trace_state: Some("vendor=abc".to_string()),
            source: crate::protocols::propagation::ContextSource::TraceParent,
        };
        let id = SpanIdentity::from_header(header);
        assert_eq!(id.trace_id, [0x11; 16]);
        assert_eq!(id.parent_span_id, Some([0x22; 8]));
        assert_ne!(id.span_id, [0x22; 8]);
        assert_eq!(id.trace_state.as_deref(), Some("vendor=abc"));
        assert!(!id.sampled);
        let child = SpanIdentity::child_of(&id, LinkSource::SameThread);
        assert_eq!(
            (child.trace_id, child.parent_span_id),
            (id.trace_id, Some(id.span_id))
        );
        let root = SpanIdentity::from_request(None, &TraceIds::default(), 0);
        assert_eq!((root.parent_span_id, root.link), (None, LinkSource::Root));
        assert!(root.sampled && root.trace_id != [0; 16]);
    }

    #[test]
    fn ids_are_unique_within_and_across_threads() {
        let make = || {
            (0..20_000)
                .map(|_| random_nonzero::<8>())
                .collect::<Vec<_>>()
        };
        let here = make();
        let there = std::thread::spawn(make).join().expect("id thread");
        let mut all: Vec<[u8; 8]> = here.iter().chain(&there).copied().collect();
        assert!(all.iter().all(|id| *id != [0; 8]));
        all.sort_unstable();
        all.dedup();
        // 40k random 64-bit ids collide with probability ~1e-10; two threads seeded alike would
        // repeat each other's sequence.
        assert_eq!(all.len(), 40_000, "span ids repeat");
        let traces: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| random_nonzero::<16>()).collect();
        assert_eq!(traces.len(), 1000);
    }

    #[test]
    fn xray_ids_hex_form_is_what_x_ray_parses() {
        let id = xray_trace_id(0x5759_e988);
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.starts_with("5759e988"), "{hex}");
        assert_eq!(hex.len(), 32);
    }

    #[test]
    fn unknown_start_is_dated_now() {
        let ids = TraceIds::new(IdGenerator::Xray, &Clock::from_offset(0));
        let now = now_unix_secs() as u32;
        let got = prefix_secs(&ids.new_trace_id(0));
        assert!(got.abs_diff(now) <= 2, "{got} vs {now}");
    }

    #[test]
    fn random_ids_carry_no_time_prefix() {
        let clock = Clock::from_offset(i128::from(1_800_000_000 * NS));
        let ids = TraceIds::new(IdGenerator::Random, &clock);
        // A random 32-bit prefix lands within a day of a given time with probability ~4e-5.
        let near = (0..64)
            .map(|_| ids.new_trace_id(5 * NS))
            .filter(|id| prefix_secs(id).abs_diff(1_800_000_005) < 86_400)
            .count();
        assert!(near <= 1, "{near} of 64 random ids look dated");
        assert_eq!(TraceIds::default().generator(), IdGenerator::Random);
    }
}
