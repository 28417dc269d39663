//! The agent's self-metrics: a snapshot of its counters and their families on the `/metrics`
//! page ([`exposition`]: one prometheus-client registry with the RED histograms and the service
//! graph), and (in [`server`]) the HTTP server for `GET /metrics`, `/healthz` and `/readyz`.
//!
//! The agent owns an `Arc<MetricsState>` and stores a fresh [`AgentSnapshot`] in it periodically;
//! the server only encodes the latest snapshot, so a scrape never touches the pipeline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinHandle;

pub mod exposition;
mod server;

use exposition::{DescriptorEncoder, Exposed, GaugeValue};
pub use server::{MAX_CONCURRENT_CONNECTIONS, MAX_REQUEST_HEAD_BYTES, REQUEST_TIMEOUT};

/// The kernel programs' counters, summed over CPUs (all monotonic).
pub use crate::capture::probes::KernelCounters as KernelSnapshot;

/// Everything the agent reports about itself. All fields are monotonic counters unless noted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentSnapshot {
    pub kernel: KernelSnapshot,
    pub events_read: u64,
    pub decode_errors: u64,
    /// Wake-ups of the event thread (its rate is the hand-off cost the design bounds).
    pub event_loop_wakeups: u64,
    pub spans_built: u64,
    pub exchanges_without_role: u64,
    /// Exchanges dropped under a port filter because their connection's addresses are unknown.
    pub exchanges_ports_unknown: u64,
    /// Exchanges discarded because records of their connection were lost in the kernel.
    pub exchanges_lost_to_drops: u64,
    pub records_unknown_connection: u64,
    /// Exchanges marked as a tracer agent's own requests (never spans).
    pub exchanges_own_telemetry: u64,
    /// OTLP export exchanges of other programs, dropped by default.
    pub exchanges_telemetry_pipeline: u64,
    /// Processes not looked up in `/proc` because the agent's `/proc` does not show them.
    pub proc_pid_unmapped: u64,
    /// Exchanges linked under a dropped telemetry request.
    pub exchanges_telemetry_descendant: u64,
    /// Connections resolved from /proc that are the other end of the agent's own connections.
    pub connections_agent_mirrors: u64,
    /// Connections whose network namespace the kernel named in their open record.
    pub connections_netns_kernel: u64,
    /// Connections whose network namespace was looked up in `/proc` instead.
    pub connections_netns_proc: u64,
    /// Gauge: connections in the agent's table now.
    pub connections_tracked: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub connections_evicted_full: u64,
    pub connections_expired_idle: u64,
    pub http_messages_parsed: u64,
    pub http_bytes_skipped: u64,
    pub http_desyncs: u64,
    pub http_heads_too_large: u64,
    pub http_pending_overflow: u64,
    pub spans_enqueued: u64,
    pub spans_exported: u64,
    pub spans_dropped_queue_full: u64,
    pub spans_dropped_export_failed: u64,
    pub spans_dropped_shutdown: u64,
    /// Spans the OTLP receiver rejected in an accepted request (partial success).
    pub spans_dropped_rejected: u64,
    pub export_batches: u64,
    pub export_batches_failed: u64,
    pub export_retries: u64,
    /// Gauge: duration of the last export call, in seconds.
    pub last_export_latency_seconds: f64,
    pub links_by_header: u64,
    pub links_by_connection_pair: u64,
    pub links_by_same_thread: u64,
    pub links_ambiguous_thread: u64,
    pub root_spans: u64,
    /// Gauge: exchanges held back for reordering now.
    pub reorder_buffered: u64,
    pub reorder_forced_early: u64,
    /// Server requests that waited in the reorder window for their same-host client's record,
    /// and those whose wait expired (decided without it).
    pub reorder_client_waits: u64,
    pub reorder_client_waits_expired: u64,
    /// Client requests left out of connection pairing because their server end was decided
    /// before they were recorded.
    pub pair_late_clients_skipped: u64,
    /// Byte budget, per-process caches and thread-link safety.
    pub bounds: BoundsSnapshot,
    /// HTTP/2 streams, exchanges and wire counters.
    pub http2: crate::protocols::http2::Http2Stats,
    /// TLS connections: ciphertext skipped, plaintext (uprobe records) framed.
    pub tls: crate::protocols::select::TlsStats,
    /// Go crypto/tls uprobes: binaries covered and skipped, calls not captured.
    pub go_tls: crate::capture::gotls::GoTlsSnapshot,
    /// Counters of the pipeline's stages not carried above.
    pub stages: StageSnapshot,
    /// Cross-node context propagation (`--context-propagation tcp-options`).
    pub propagation: PropagationSnapshot,
}

/// Cross-node context propagation in TCP options: the kernel programs' counters, the matching
/// of kernel identities to requests, and how often they were used or disagreed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PropagationSnapshot {
    pub kernel: crate::capture::propagation::PropagationCounters,
    pub matching: crate::correlate::kernel_ids::KernelIdStats,
    /// Spans exported with the kernel's identity.
    pub kernel_identities: u64,
    /// Requests where the kernel's decision and userspace's disagreed.
    pub kernel_disagreements: u64,
    /// Kernel trace id remaps dropped from the full remap table.
    pub trace_remaps_evicted: u64,
}

/// The propagation families (see [`PropagationSnapshot`]).
fn propagation_families(p: &PropagationSnapshot) -> Vec<Family> {
    let k = &p.kernel;
    vec![
        Family::gauge(
            "tracer_context_propagation_active",
            "1 when --context-propagation tcp-options runs (its sock_ops program attached), 0 \
             when it is off or could not run here.",
            vec![Sample::plain(k.active)],
        ),
        Family::counter(
            "tracer_context_options_total",
            "TCP header options carrying trace context, by outcome (written on an outgoing \
             segment, received and stored, malformed and ignored).",
            vec![
                Sample::labelled(&[("outcome", "written")], k.options_written),
                Sample::labelled(&[("outcome", "received")], k.options_received),
                Sample::labelled(&[("outcome", "malformed")], k.malformed),
            ],
        ),
        Family::counter(
            "tracer_context_options_not_sent_total",
            "Requests whose context was not sent, by reason (no option space on the segment, the \
             request did not start a segment).",
            vec![
                Sample::labelled(&[("reason", "no_space")], k.no_space),
                Sample::labelled(&[("reason", "segment_missed")], k.segment_missed),
            ],
        ),
        Family::counter(
            "tracer_context_offsets_unknown_total",
            "Requests on connections whose stream offsets the kernel lost (bytes moved by a \
             transfer it does not see: io_uring, recvmmsg/sendmmsg): no received context is \
             adopted and no option is sent for them.",
            vec![Sample::plain(k.offsets_unknown)],
        ),
        Family::counter(
            "tracer_context_adopted_total",
            "SERVER requests whose trace context came from a received TCP option.",
            vec![Sample::plain(k.contexts_adopted)],
        ),
        Family::counter(
            "tracer_kernel_header_scans_total",
            "The kernel's scans of SERVER request heads for a traceparent header, by outcome \
             (adopted: the request joined the header's trace; rejected: invalid or repeated \
             header; capture_limit: the scan stopped at its limit before the head ended; \
             not_run: the scan program did not run, the request kept a header-less identity).",
            vec![
                Sample::labelled(&[("outcome", "adopted")], k.header_adopted),
                Sample::labelled(&[("outcome", "rejected")], k.header_rejected),
                Sample::labelled(&[("outcome", "capture_limit")], k.header_scan_at_limit),
                Sample::labelled(&[("outcome", "not_run")], k.header_scan_not_run),
            ],
        ),
        Family::counter(
            "tracer_kernel_client_contexts_total",
            "CLIENT requests seen by the kernel, by outcome (linked: a child of the one request \
             its thread serves; new_trace: the thread serves none or several; undecided: left to \
             userspace, no option sent, as the process is not known to serve one request per \
             thread).",
            vec![
                Sample::labelled(&[("outcome", "linked")], k.client_contexts),
                Sample::labelled(&[("outcome", "new_trace")], k.client_unlinked),
                Sample::labelled(&[("outcome", "undecided")], k.client_undecided),
            ],
        ),
        Family::counter(
            "tracer_kernel_thread_rule_revoked_total",
            "Processes the kernel saw not serving one request per thread (a thread leaving a \
             request unanswered for another server-side connection, a request answered on \
             another thread, a pipelined request): their CLIENT requests get no parent from the \
             kernel any more.",
            vec![Sample::plain(k.processes_revoked)],
        ),
        Family::counter(
            "tracer_kernel_identities_total",
            "Identity records of the kernel, by outcome of matching them to a request by stream \
             offset (received, matched, unmatched).",
            vec![
                Sample::labelled(&[("outcome", "received")], p.matching.received),
                Sample::labelled(&[("outcome", "matched")], p.matching.matched),
                Sample::labelled(&[("outcome", "unmatched")], p.matching.unmatched),
                Sample::labelled(&[("outcome", "evicted")], p.matching.evicted),
            ],
        ),
        Family::counter(
            "tracer_kernel_identities_used_total",
            "Spans exported with the identity the kernel decided.",
            vec![Sample::plain(p.kernel_identities)],
        ),
        Family::counter(
            "tracer_kernel_identity_disagreements_total",
            "Requests where the kernel's identity and userspace's linking disagreed (a header \
             the kernel did not see wins for a SERVER span; otherwise the kernel's, already \
             sent).",
            vec![Sample::plain(p.kernel_disagreements)],
        ),
        Family::counter(
            "tracer_kernel_trace_remaps_evicted_total",
            "Kernel trace ids remapped to userspace's (a disagreement) dropped, oldest first, \
             from the full remap table: a later child of that trace on this host keeps the \
             kernel's trace id.",
            vec![Sample::plain(p.trace_remaps_evicted)],
        ),
    ]
}

/// Counters of the pipeline's stages (sniffed sockets, the connection table, HTTP/1 framing)
/// not carried elsewhere in [`AgentSnapshot`]. All monotonic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageSnapshot {
    /// Payload bytes in the data records the agent read.
    pub data_bytes: u64,
    /// Sniffed fds that turned out not to be sockets.
    pub sniffed_not_socket: u64,
    /// Sniffed connections outside the port filter.
    pub sniffed_filtered_out: u64,
    /// Connections created from a data record whose open record was lost (also counted as
    /// opened).
    pub connections_opened_late: u64,
    /// Connections replaced because a new one reused their (pid, fd) before their close was
    /// seen.
    pub connections_replaced_fd_reuse: u64,
    /// Connections closed because /proc showed their fd gone while requests waited on them
    /// (no close record: process exit, exec, close_range).
    pub connections_closed_unseen: u64,
    /// HTTP/1 exchanges handed out.
    pub http_exchanges: u64,
    /// HTTP/1 messages whose start line was seen but whose head was lost (also desyncs).
    pub http_messages_lost: u64,
    /// HTTP/1 responses with no parsed request to pair with.
    pub http_unpaired_responses: u64,
    /// HTTP/1 connections that switched protocol (101, CONNECT): parsing stopped.
    pub http_upgrades: u64,
    /// HTTP/1 connections that turned out to carry HTTP/2 (prior-knowledge preface).
    pub http_switched_to_http2: u64,
}

/// The agent's memory bounds and what they cost. Monotonic counters unless noted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BoundsSnapshot {
    /// Gauge: heap bytes in head buffers and pending requests over all connections.
    pub buffered_bytes: u64,
    /// Gauge: the budget for `buffered_bytes`.
    pub buffer_budget_bytes: u64,
    pub budget_sheds: u64,
    pub budget_bytes_shed: u64,
    pub budget_requests_shed: u64,
    /// CLIENT requests not linked by thread because their runtime multiplexes threads (Go).
    pub links_skipped_multiplexed: u64,
    pub links_skipped_unknown_runtime: u64,
    /// Connection pairs not attempted: a loopback tuple whose process's network namespace is
    /// unknown (the same tuple may exist in another namespace).
    pub links_skipped_netns_unknown: u64,
    pub runtime_unknown: u64,
    pub runtime_refused: u64,
    /// Gauge: processes in the resource cache.
    pub resource_cache_entries: u64,
    pub resource_cache_evictions: u64,
    /// Cached resources read again because their pid was reused by another process.
    pub resource_pid_reuses: u64,
    /// Gauge: processes in the runtime (thread model) cache.
    pub runtime_cache_entries: u64,
    pub runtime_cache_evictions: u64,
    /// Executables inspected for their runtime, and how many multiplex threads.
    pub runtime_inspected: u64,
    pub runtime_multiplexed: u64,
    /// Gauge: parent-link identities held for requests in flight.
    pub linker_pending: u64,
    /// Identities dropped because the linker's table was full.
    pub linker_identities_evicted: u64,
    /// Per-process cache entries removed because their process exited.
    pub resource_exited_removed: u64,
    pub runtime_exited_removed: u64,
    /// /proc socket-table fallback: tables read, cache hits, reads cut at the size bound,
    /// non-INET sockets skipped.
    pub procnet_table_reads: u64,
    pub procnet_table_cache_hits: u64,
    pub procnet_table_reads_truncated: u64,
    pub procnet_non_inet_sockets: u64,
    pub procnet_table_reads_deferred: u64,
}

/// Counters of the metrics server itself.
#[derive(Debug, Default)]
struct ServerCounters {
    requests_served: AtomicU64,
    rejected_busy: AtomicU64,
    rejected_too_large: AtomicU64,
    rejected_malformed: AtomicU64,
    rejected_timeout: AtomicU64,
}

/// Shared between the agent (writer) and the metrics server (reader).
#[derive(Debug, Default)]
pub struct MetricsState {
    snapshot: Mutex<AgentSnapshot>,
    /// Times `snapshot` was replaced.
    snapshots: AtomicU64,
    ready: AtomicBool,
    server: ServerCounters,
    /// RED histograms rendered after the agent's own metrics, when metrics are on.
    red: std::sync::OnceLock<Arc<crate::telemetry::red::RedMetrics>>,
    /// The pod metadata cache, whose counters are read at each scrape (zeros without one).
    pods: std::sync::OnceLock<crate::telemetry::k8s::PodMetadata>,
}

impl MetricsState {
    /// A state with an all-zero snapshot, not ready.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks the agent ready (probes attached, pipeline running) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Adds the RED histograms to the page (once).
    pub fn set_red(&self, red: Arc<crate::telemetry::red::RedMetrics>) {
        let _ = self.red.set(red);
    }

    /// Adds the pod metadata cache's counters to the page (once).
    pub fn set_pods(&self, pods: crate::telemetry::k8s::PodMetadata) {
        let _ = self.pods.set(pods);
    }

    /// Replaces the snapshot the server renders.
    pub fn update(&self, snapshot: AgentSnapshot) {
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
        self.snapshots.fetch_add(1, Ordering::Release);
    }

    /// A copy of the latest snapshot.
    pub fn snapshot(&self) -> AgentSnapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The full `/metrics` page: the agent snapshot, readiness, the server's own counters, pod
    /// metadata, then the RED histograms and the service graph when metrics are on.
    pub fn render(&self) -> String {
        let mut registry = exposition::Registry::default();
        exposition::register(&mut registry, Arc::new(self.own_families()));
        if let Some(red) = self.red.get() {
            exposition::register(&mut registry, Arc::clone(red));
        }
        exposition::encode(&registry)
    }

    /// The families of the snapshot and of the state itself, taken now.
    fn own_families(&self) -> Families {
        let mut families = snapshot_families(&self.snapshot());
        let ready = u64::from(self.is_ready());
        let server = &self.server;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        families.extend([
            Family::gauge(
                "tracer_ready",
                "1 once the agent has attached its probes and runs its pipeline, else 0.",
                vec![Sample::plain(ready)],
            ),
            Family::counter(
                "tracer_metrics_snapshots_total",
                "Times the agent refreshed the values on this page (about once a second, after \
                 handing that cycle's spans to the sink); wait for it to advance to read values \
                 taken after a given moment.",
                vec![Sample::plain(self.snapshots.load(Ordering::Acquire))],
            ),
            Family::counter(
                "tracer_metrics_requests_total",
                "Requests the metrics server answered (any status).",
                vec![Sample::plain(load(&server.requests_served))],
            ),
            Family::counter(
                "tracer_metrics_requests_rejected_total",
                "Connections to the metrics server closed without a normal answer, by reason.",
                vec![
                    Sample::labelled(&[("reason", "busy")], load(&server.rejected_busy)),
                    Sample::labelled(
                        &[("reason", "head_too_large")],
                        load(&server.rejected_too_large),
                    ),
                    Sample::labelled(&[("reason", "malformed")], load(&server.rejected_malformed)),
                    Sample::labelled(&[("reason", "timeout")], load(&server.rejected_timeout)),
                ],
            ),
        ]);
        let pods = self.pods.get().map(|p| p.stats()).unwrap_or_default();
        families.extend(pod_families(&pods));
        Families(families)
    }
}

/// A metric value: integer counters and gauges, or a float gauge.
#[derive(Clone, Copy, Debug)]
enum Value {
    Int(u64),
    Float(f64),
}

/// One line of a family: its labels and value.
#[derive(Debug)]
struct Sample {
    labels: &'static [(&'static str, &'static str)],
    value: Value,
}

impl Sample {
    fn plain(value: u64) -> Self {
        Sample {
            labels: &[],
            value: Value::Int(value),
        }
    }

    fn labelled(labels: &'static [(&'static str, &'static str)], value: u64) -> Self {
        Sample {
            labels,
            value: Value::Int(value),
        }
    }

    fn float(value: f64) -> Self {
        Sample {
            labels: &[],
            value: Value::Float(value),
        }
    }
}

/// What a family measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// A metric family: its name, help text, kind and samples.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    fn counter(name: &'static str, help: &'static str, samples: Vec<Sample>) -> Self {
        Family {
            name,
            help,
            kind: Kind::Counter,
            samples,
        }
    }

    fn gauge(name: &'static str, help: &'static str, samples: Vec<Sample>) -> Self {
        Family {
            name,
            help,
            kind: Kind::Gauge,
            samples,
        }
    }

    fn expose(&self, page: &mut DescriptorEncoder) -> std::fmt::Result {
        let labelled = |s: &Sample| exposition::labels(s.labels);
        match self.kind {
            Kind::Counter => exposition::counter(
                page,
                self.name,
                self.help,
                self.samples.iter().map(|s| {
                    let value = match s.value {
                        Value::Int(v) => v,
                        // Counters are integers; a float one would be a bug, not data.
                        Value::Float(v) => v as u64,
                    };
                    (labelled(s), value)
                }),
            ),
            Kind::Gauge => exposition::gauge(
                page,
                self.name,
                self.help,
                self.samples.iter().map(|s| {
                    let value = match s.value {
                        Value::Int(v) => GaugeValue::Int(v),
                        Value::Float(v) => GaugeValue::Float(v),
                    };
                    (labelled(s), value)
                }),
            ),
        }
    }
}

/// Families taken at one scrape, in page order.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Exposed for Families {
    fn expose(&self, page: &mut DescriptorEncoder) -> std::fmt::Result {
        self.0.iter().try_for_each(|family| family.expose(page))
    }
}

/// All metric families of a snapshot, in rendering order.
fn families(s: &AgentSnapshot) -> Vec<Family> {
    let k = &s.kernel;
    vec![
        Family::counter(
            "tracer_kernel_events_submitted_total",
            "Records the kernel programs wrote to the ring buffer.",
            vec![Sample::plain(k.events_submitted)],
        ),
        Family::counter(
            "tracer_events_dropped_total",
            "Events lost before they became spans, by pipeline stage and reason.",
            vec![
                Sample::labelled(
                    &[("stage", "kernel"), ("reason", "ringbuf_full")],
                    k.ringbuf_full,
                ),
                Sample::labelled(
                    &[("stage", "kernel"), ("reason", "scratch_unavailable")],
                    k.scratch_unavailable,
                ),
                Sample::labelled(
                    &[("stage", "kernel"), ("reason", "args_table_full")],
                    k.args_table_full,
                ),
                Sample::labelled(
                    &[("stage", "decode"), ("reason", "malformed")],
                    s.decode_errors,
                ),
            ],
        ),
        Family::counter(
            "tracer_kernel_bytes_captured_total",
            "Payload bytes the kernel programs copied into records.",
            vec![Sample::plain(k.bytes_captured)],
        ),
        Family::counter(
            "tracer_kernel_bytes_skipped_total",
            "Payload bytes seen but not copied (beyond the capture size or the iovec limit).",
            vec![Sample::plain(k.bytes_skipped)],
        ),
        Family::counter(
            "tracer_kernel_read_user_failed_total",
            "Copies from user memory that failed; their bytes are reported as a gap.",
            vec![Sample::plain(k.read_user_failed)],
        ),
        Family::counter(
            "tracer_kernel_connections_sniffed_total",
            "Connections the kernel adopted by sniffing HTTP bytes on an untracked descriptor.",
            vec![Sample::plain(k.conns_sniffed)],
        ),
        Family::counter(
            "tracer_kernel_children_not_followed_total",
            "Children of traced processes not followed because the pid filter set was full.",
            vec![Sample::plain(k.filter_table_full)],
        ),
        Family::gauge(
            "tracer_kernel_connection_table_entries",
            "Entries in the kernel's (LRU) connection table, measured every 10 seconds.",
            vec![Sample::plain(k.conn_table_entries)],
        ),
        Family::counter(
            "tracer_kernel_connections_inserted_total",
            "New entries the kernel programs made in their connection table.",
            vec![Sample::plain(k.conns_inserted)],
        ),
        Family::counter(
            "tracer_kernel_connections_removed_total",
            "Entries the kernel programs removed from their connection table (close, dup2 over \
             the fd, stale).",
            vec![Sample::plain(k.conns_removed)],
        ),
        Family::counter(
            "tracer_kernel_connections_stale_total",
            "Connection entries found stale (the pid was reused, or the process exec'd since) \
             and removed instead of used.",
            vec![Sample::plain(k.conns_stale)],
        ),
        Family::counter(
            "tracer_kernel_unhooked_transfers_total",
            "Transfers on tracked connections through uncaptured paths (sendmmsg, recvmmsg, \
             io_uring requests); the connection is marked as having lost records.",
            vec![Sample::plain(k.unhooked_transfers)],
        ),
        Family::counter(
            "tracer_kernel_peeks_skipped_total",
            "MSG_PEEK reads on tracked connections not captured (the bytes are captured when \
             read).",
            vec![Sample::plain(k.peeks_skipped)],
        ),
        Family::counter(
            "tracer_kernel_lifecycle_args_missing_total",
            "accept/connect exits whose arguments were evicted from the candidate syscall table \
             (or began before the probes attached).",
            vec![Sample::plain(k.lifecycle_args_missing)],
        ),
        Family::counter(
            "tracer_kernel_accept_endpoints_unknown_total",
            "Accepts without a peer address (accept4(fd, NULL, NULL), as Node.js calls it) whose \
             endpoints the kernel could not read from the new socket (its BTF lacked an offset, \
             or a read failed): read from /proc instead, and their exchanges dropped \
             (ports_unknown) when the connection is gone by then.",
            vec![Sample::plain(k.accept_endpoints_unknown)],
        ),
        Family::counter(
            "tracer_kernel_agent_mirrors_ignored_total",
            "Connections on this host not traced because their other end is one of the agent's \
             own sockets (the collector's side of its export, the API server's side of its watch).",
            vec![Sample::plain(k.agent_mirrors_ignored)],
        ),
        Family::counter(
            "tracer_kernel_agent_table_full_total",
            "The agent's own sockets the kernel could not remember because their table was full \
             (their other end may be captured; the User-Agent mark still drops those exchanges).",
            vec![Sample::plain(k.agent_table_full)],
        ),
        Family::counter(
            "tracer_kernel_http2_connections_sniffed_total",
            "Connections the kernel adopted by sniffing HTTP/2 bytes (the client preface or a run \
             of valid frames); also counted in tracer_kernel_connections_sniffed_total.",
            vec![Sample::plain(k.h2_conns_sniffed)],
        ),
        Family::counter(
            "tracer_kernel_http2_directions_framed_total",
            "Connection directions whose HTTP/2 frames the kernel started following (preface, \
             first bytes, adoption, or a resync after losing its place).",
            vec![Sample::plain(k.h2_directions_framed)],
        ),
        Family::counter(
            "tracer_kernel_http2_walk_limit_total",
            "HTTP/2 syscalls the kernel's walk could not finish (more frames or iovecs than one \
             walk covers, an unreadable frame header or iovec): the rest is a gap and the \
             direction loses its frame cursor until a resync.",
            vec![Sample::plain(k.h2_walk_limit)],
        ),
        Family::counter(
            "tracer_kernel_http2_frames_truncated_total",
            "Kept HTTP/2 frames (not DATA payloads) larger than a record: their tail is a gap, so \
             a header block may still be lost.",
            vec![Sample::plain(k.h2_kept_truncated)],
        ),
        Family::counter(
            "tracer_kernel_http2_cursor_lost_total",
            "Times a direction of an HTTP/2 connection lost the kernel's frame cursor (bytes moved \
             unseen, a walk limit, an unreadable frame header).",
            vec![Sample::plain(k.h2_cursor_lost)],
        ),
        Family::counter(
            "tracer_kernel_http2_data_elided_bytes_total",
            "HTTP/2 DATA payload bytes sent as length-only gaps instead of copied (part of \
             tracer_kernel_bytes_skipped_total).",
            vec![Sample::plain(k.h2_data_elided_bytes)],
        ),
        Family::counter(
            "tracer_kernel_http2_implausible_frames_total",
            "Frame headers of connection directions the kernel followed as HTTP/2 that are no \
             plausible frame (an HTTP/1 connection adopted on a binary body): the direction is \
             no longer taken for HTTP/2, its bytes from there are captured as usual or a gap.",
            vec![Sample::plain(k.h2_implausible_frame)],
        ),
        Family::gauge(
            "tracer_kernel_http2_walker_loaded",
            "1 when the kernel's HTTP/2 frame walker is loaded; 0 when this kernel refused it \
             (HTTP/2 is then captured like any stream, a prefix per syscall).",
            vec![Sample::plain(k.h2_walker_loaded)],
        ),
        Family::counter(
            "tracer_kernel_connection_table_evicted_total",
            "Entries the kernel's LRU connection table evicted to make room (mostly left behind \
             by processes that exited without closing: normal churn), derived every 10 seconds.",
            vec![Sample::plain(k.conns_evicted)],
        ),
        Family::counter(
            "tracer_kernel_generations_missing_total",
            "Connection entries whose process generation was evicted or could not be stored: \
             treated as stale and not used.",
            vec![Sample::plain(k.generations_missing)],
        ),
        Family::counter(
            "tracer_kernel_fd_reused_in_syscall_total",
            "Data syscalls whose fd was closed and reused for another connection before they \
             returned; their bytes are not reported.",
            vec![Sample::plain(k.fd_reused_in_syscall)],
        ),
        Family::counter(
            "tracer_kernel_args_process_quota_total",
            "Data syscalls on tracked connections not followed because their process held its \
             quota (a quarter) of the in-flight syscall table; the connection is marked lost.",
            vec![Sample::plain(k.args_process_quota)],
        ),
        Family::gauge(
            "tracer_kernel_census_running",
            "1 while the kernel connection table census runs (0: it could not start, so the \
             table's entries and evictions are not measured).",
            vec![Sample::plain(k.census_running)],
        ),
        Family::counter(
            "tracer_kernel_census_failed_walks_total",
            "Walks of the kernel connection table dropped because a key could not be read.",
            vec![Sample::plain(k.census_failed_walks)],
        ),
        Family::gauge(
            "tracer_kernel_optional_probes_attached",
            "Optional probes attached on this kernel (io_uring_file_get, close_range); a \
             missing one leaves what it watches unseen.",
            vec![Sample::plain(k.optional_probes_attached)],
        ),
        Family::gauge(
            "tracer_kernel_optional_probes",
            "Optional probes this agent knows.",
            vec![Sample::plain(k.optional_probes_total)],
        ),
        Family::counter(
            "tracer_events_read_total",
            "Records the agent read from the ring buffer.",
            vec![Sample::plain(s.events_read)],
        ),
        Family::counter(
            "tracer_records_unknown_connection_total",
            "Data or close records for connections the agent's table did not know.",
            vec![Sample::plain(s.records_unknown_connection)],
        ),
        Family::gauge(
            "tracer_connections_tracked",
            "Connections in the agent's connection table.",
            vec![Sample::plain(s.connections_tracked)],
        ),
        Family::counter(
            "tracer_connections_opened_total",
            "Connections the agent started tracking.",
            vec![Sample::plain(s.connections_opened)],
        ),
        Family::counter(
            "tracer_connections_closed_total",
            "Tracked connections the traced process closed.",
            vec![Sample::plain(s.connections_closed)],
        ),
        Family::counter(
            "tracer_connections_dropped_total",
            "Connections not tracked or evicted because a table was full, by stage.",
            vec![
                Sample::labelled(
                    &[("stage", "kernel"), ("reason", "table_full")],
                    k.conn_table_full,
                ),
                Sample::labelled(
                    &[("stage", "agent"), ("reason", "table_full")],
                    s.connections_evicted_full,
                ),
            ],
        ),
        Family::counter(
            "tracer_connections_expired_idle_total",
            "Connections forgotten after idling past the idle timeout.",
            vec![Sample::plain(s.connections_expired_idle)],
        ),
        Family::counter(
            "tracer_http_messages_parsed_total",
            "HTTP message heads parsed (requests, interim and final responses).",
            vec![Sample::plain(s.http_messages_parsed)],
        ),
        Family::counter(
            "tracer_http_bytes_skipped_total",
            "Captured bytes skipped while an HTTP stream was out of sync.",
            vec![Sample::plain(s.http_bytes_skipped)],
        ),
        Family::counter(
            "tracer_http_desyncs_total",
            "Times an HTTP stream lost sync and had to find the next message start.",
            vec![Sample::plain(s.http_desyncs)],
        ),
        Family::counter(
            "tracer_http_messages_dropped_total",
            "HTTP messages dropped by the framer's bounds, by reason.",
            vec![
                Sample::labelled(&[("reason", "head_too_large")], s.http_heads_too_large),
                Sample::labelled(&[("reason", "pending_overflow")], s.http_pending_overflow),
            ],
        ),
        Family::counter(
            "tracer_exchanges_dropped_total",
            "Request/response exchanges that did not become spans, by reason.",
            vec![
                Sample::labelled(&[("reason", "role_unknown")], s.exchanges_without_role),
                Sample::labelled(&[("reason", "ports_unknown")], s.exchanges_ports_unknown),
                Sample::labelled(
                    &[("reason", "kernel_records_lost")],
                    s.exchanges_lost_to_drops,
                ),
                Sample::labelled(&[("reason", "own_telemetry")], s.exchanges_own_telemetry),
                Sample::labelled(
                    &[("reason", "telemetry_pipeline")],
                    s.exchanges_telemetry_pipeline,
                ),
                Sample::labelled(
                    &[("reason", "telemetry_descendant")],
                    s.exchanges_telemetry_descendant,
                ),
            ],
        ),
        Family::counter(
            "tracer_agent_mirrors_ignored_total",
            "Connections whose endpoints the agent read from /proc (the kernel saw no peer at \
             accept) found to be the other end of the agent's own connections, and ignored.",
            vec![Sample::plain(s.connections_agent_mirrors)],
        ),
        Family::counter(
            "tracer_connections_netns_total",
            "Connections by where their network namespace (loopback pairing) came from: the \
             kernel's open record, or /proc (the kernel's BTF lacks the fields, or the \
             connection was adopted without an open record).",
            vec![
                Sample::labelled(&[("source", "kernel")], s.connections_netns_kernel),
                Sample::labelled(&[("source", "proc")], s.connections_netns_proc),
            ],
        ),
        Family::counter(
            "tracer_proc_pid_unmapped_total",
            "Processes described without /proc (no executable name, pod or sniffed endpoints) \
             because the agent runs in a child pid namespace that does not show them.",
            vec![Sample::plain(s.proc_pid_unmapped)],
        ),
        Family::counter(
            "tracer_spans_built_total",
            "Spans built from exchanges.",
            vec![Sample::plain(s.spans_built)],
        ),
        Family::counter(
            "tracer_spans_enqueued_total",
            "Spans handed to the sink (those a full queue evicted or refused are also in tracer_spans_dropped_total{reason=\"queue_full\"}).",
            vec![Sample::plain(s.spans_enqueued)],
        ),
        Family::counter(
            "tracer_spans_exported_total",
            "Spans the exporter delivered.",
            vec![Sample::plain(s.spans_exported)],
        ),
        Family::counter(
            "tracer_spans_dropped_total",
            "Spans lost on the way to the exporter's destination, by reason.",
            vec![
                Sample::labelled(&[("reason", "queue_full")], s.spans_dropped_queue_full),
                Sample::labelled(
                    &[("reason", "export_failed")],
                    s.spans_dropped_export_failed,
                ),
                Sample::labelled(&[("reason", "shutdown")], s.spans_dropped_shutdown),
                Sample::labelled(
                    &[("reason", "rejected_by_receiver")],
                    s.spans_dropped_rejected,
                ),
            ],
        ),
        Family::counter(
            "tracer_export_batches_total",
            "Export calls made (one batch each).",
            vec![Sample::plain(s.export_batches)],
        ),
        Family::counter(
            "tracer_export_batches_failed_total",
            "Export batches that failed for good (after retries).",
            vec![Sample::plain(s.export_batches_failed)],
        ),
        Family::counter(
            "tracer_export_retries_total",
            "Retries of export calls after transient failures.",
            vec![Sample::plain(s.export_retries)],
        ),
        Family::gauge(
            "tracer_export_last_latency_seconds",
            "Duration of the most recent export call.",
            vec![Sample::float(s.last_export_latency_seconds)],
        ),
        Family::counter(
            "tracer_parent_links_total",
            "Spans given a parent, by how the parent was found.",
            vec![
                Sample::labelled(&[("source", "header")], s.links_by_header),
                Sample::labelled(&[("source", "connection_pair")], s.links_by_connection_pair),
                Sample::labelled(&[("source", "same_thread")], s.links_by_same_thread),
            ],
        ),
        Family::counter(
            "tracer_parent_links_ambiguous_total",
            "Parent candidates not linked because the match was ambiguous, by source.",
            vec![Sample::labelled(
                &[("source", "same_thread")],
                s.links_ambiguous_thread,
            )],
        ),
        Family::counter(
            "tracer_root_spans_total",
            "Spans that started a new trace.",
            vec![Sample::plain(s.root_spans)],
        ),
        Family::gauge(
            "tracer_reorder_buffered",
            "Exchanges held back to be emitted in causal order.",
            vec![Sample::plain(s.reorder_buffered)],
        ),
        Family::counter(
            "tracer_reorder_forced_early_total",
            "Exchanges released from the reorder buffer before their wait ended (buffer full).",
            vec![Sample::plain(s.reorder_forced_early)],
        ),
        Family::counter(
            "tracer_reorder_client_waits_total",
            "Server requests held past the reorder window until their same-host client's write \
             was recorded, by outcome (expired: decided without it, a root).",
            vec![
                Sample::labelled(
                    &[("outcome", "paired_in_time")],
                    s.reorder_client_waits
                        .saturating_sub(s.reorder_client_waits_expired),
                ),
                Sample::labelled(&[("outcome", "expired")], s.reorder_client_waits_expired),
            ],
        ),
        Family::counter(
            "tracer_pair_late_clients_skipped_total",
            "Client requests recorded after their same-host server end was decided: left out of \
             connection pairing (pairing them with a later request would be a wrong link).",
            vec![Sample::plain(s.pair_late_clients_skipped)],
        ),
        Family::counter(
            "tracer_event_loop_wakeups_total",
            "Times the event thread woke up to read the ring buffer (bounded rate, not per record).",
            vec![Sample::plain(s.event_loop_wakeups)],
        ),
    ]
    .into_iter()
    .chain(propagation_families(&s.propagation))
    .collect()
}

/// All families of a snapshot, in page order.
fn snapshot_families(s: &AgentSnapshot) -> Vec<Family> {
    let mut all = families(s);
    all.extend(bounds_families(&s.bounds));
    all.extend(http2_families(&s.http2));
    all.extend(go_tls_families(&s.go_tls));
    all.extend(tls_families(&s.kernel, &s.tls));
    all.extend(stage_families(&s.stages));
    all
}

/// A snapshot's page on its own (OpenMetrics text): names prefixed `tracer_`, counters ending
/// in `_total`, drop reasons as labels.
pub fn render_prometheus(s: &AgentSnapshot) -> String {
    let mut registry = exposition::Registry::default();
    exposition::register(&mut registry, Arc::new(Families(snapshot_families(s))));
    exposition::encode(&registry)
}

/// Families of the Go crypto/tls uprobes (`capture::gotls`).
fn go_tls_families(g: &crate::capture::gotls::GoTlsSnapshot) -> Vec<Family> {
    vec![
        Family::gauge(
            "tracer_go_tls_probes_loaded",
            "1 when the Go crypto/tls uprobe programs loaded (0: Go TLS plaintext is not captured).",
            vec![Sample::plain(g.loaded)],
        ),
        Family::gauge(
            "tracer_go_tls_binaries_attached",
            "Distinct Go executables (device, inode) with crypto/tls uprobes attached.",
            vec![Sample::plain(g.binaries_attached)],
        ),
        Family::gauge(
            "tracer_go_tls_uprobes_attached",
            "Uprobes attached to Go executables (entries and return instructions of \
             crypto/tls.(*Conn).Read and Write).",
            vec![Sample::plain(g.uprobes_attached)],
        ),
        Family::counter(
            "tracer_go_tls_binaries_skipped_total",
            "Go executables of traced processes without crypto/tls uprobes, by reason.",
            vec![
                Sample::labelled(&[("reason", "not_amd64")], g.skipped_not_amd64),
                Sample::labelled(&[("reason", "stack_abi")], g.skipped_stack_abi),
                Sample::labelled(&[("reason", "unknown_layout")], g.skipped_unknown_layout),
                Sample::labelled(&[("reason", "no_symbols")], g.skipped_no_symbols),
                Sample::labelled(&[("reason", "no_crypto_tls")], g.skipped_no_crypto_tls),
                Sample::labelled(
                    &[("reason", "no_tcp_conn_type")],
                    g.skipped_no_tcp_conn_type,
                ),
                Sample::labelled(&[("reason", "disassembly")], g.skipped_disassembly),
                Sample::labelled(&[("reason", "attach_failed")], g.skipped_attach_failed),
                Sample::labelled(&[("reason", "table_full")], g.skipped_table_full),
                Sample::labelled(&[("reason", "exe_unreadable")], g.skipped_exe_unreadable),
            ],
        ),
        Family::counter(
            "tracer_go_tls_calls_swept_total",
            "In-flight Go crypto/tls calls of exited processes removed from the kernel's table.",
            vec![Sample::plain(g.calls_swept)],
        ),
        Family::counter(
            "tracer_go_tls_scans_total",
            "Scans of /proc for Go executables (every 500 ms).",
            vec![Sample::plain(g.scans)],
        ),
        Family::counter(
            "tracer_go_tls_full_scans_total",
            "Scans of /proc for Go executables that looked at every process's executable (every \
             30 s, or when the kernel could not name the processes that exec'd); the others look \
             only at new and exec'd processes.",
            vec![Sample::plain(g.full_scans)],
        ),
        Family::counter(
            "tracer_go_tls_processes_considered_total",
            "Processes whose executable a scan for Go executables looked at.",
            vec![Sample::plain(g.processes_considered)],
        ),
        Family::counter(
            "tracer_kernel_go_tls_calls_skipped_total",
            "Go crypto/tls Read/Write calls whose plaintext was not captured, by reason.",
            vec![
                Sample::labelled(&[("reason", "not_tcp_conn")], g.kernel_not_tcp),
                Sample::labelled(&[("reason", "unreadable")], g.kernel_unreadable),
                Sample::labelled(&[("reason", "untracked_connection")], g.kernel_untracked),
                Sample::labelled(&[("reason", "call_table_full")], g.kernel_calls_full),
                Sample::labelled(&[("reason", "no_layout")], g.kernel_no_layout),
            ],
        ),
    ]
}

/// Families of [`StageSnapshot`].
fn stage_families(s: &StageSnapshot) -> Vec<Family> {
    vec![
        Family::counter(
            "tracer_data_bytes_total",
            "Payload bytes in the data records the agent read (gaps not included).",
            vec![Sample::plain(s.data_bytes)],
        ),
        Family::counter(
            "tracer_sniffed_fds_ignored_total",
            "Descriptors the kernel adopted by sniffing that the agent then ignored, by reason \
             (not_socket: /proc says it is no socket; port_filter: outside --port).",
            vec![
                Sample::labelled(&[("reason", "not_socket")], s.sniffed_not_socket),
                Sample::labelled(&[("reason", "port_filter")], s.sniffed_filtered_out),
            ],
        ),
        Family::counter(
            "tracer_connections_opened_late_total",
            "Connections first seen through a data record because their open record was lost \
             (also in tracer_connections_opened_total).",
            vec![Sample::plain(s.connections_opened_late)],
        ),
        Family::counter(
            "tracer_connections_replaced_fd_reuse_total",
            "Tracked connections replaced because a new connection reused their (pid, fd) \
             before their close was seen (their pending requests end as incomplete).",
            vec![Sample::plain(s.connections_replaced_fd_reuse)],
        ),
        Family::counter(
            "tracer_connections_closed_unseen_total",
            "Tracked connections closed because /proc showed their fd gone while requests \
             waited on them, with no close record (process exit, exec, close_range); their \
             requests end as connection_closed (also in tracer_connections_closed_total).",
            vec![Sample::plain(s.connections_closed_unseen)],
        ),
        Family::counter(
            "tracer_http_exchanges_total",
            "HTTP/1 request/response exchanges the framer handed out.",
            vec![Sample::plain(s.http_exchanges)],
        ),
        Family::counter(
            "tracer_http_messages_lost_total",
            "HTTP/1 messages whose start line was recognised but whose head was lost (gap, \
             malformed, too large); also in tracer_http_desyncs_total.",
            vec![Sample::plain(s.http_messages_lost)],
        ),
        Family::counter(
            "tracer_http_responses_unpaired_total",
            "HTTP/1 responses with no parsed request to pair with (connection adopted \
             mid-stream, request lost or dropped): framed and skipped.",
            vec![Sample::plain(s.http_unpaired_responses)],
        ),
        Family::counter(
            "tracer_http_upgrades_total",
            "HTTP/1 connections that switched protocol (101, or a CONNECT tunnel): parsing \
             stopped.",
            vec![Sample::plain(s.http_upgrades)],
        ),
        Family::counter(
            "tracer_http_switched_to_http2_total",
            "Connections first framed as HTTP/1 that turned out to carry HTTP/2 \
             (prior-knowledge preface).",
            vec![Sample::plain(s.http_switched_to_http2)],
        ),
    ]
}

/// Families of the TLS counters: the kernel's OpenSSL uprobes and the attach search
/// (`tracer_kernel_tls_*`), then userspace's framing of TLS connections (`tracer_tls_*`).
fn tls_families(k: &KernelSnapshot, t: &crate::protocols::select::TlsStats) -> Vec<Family> {
    vec![
        Family::counter(
            "tracer_kernel_tls_records_total",
            "Plaintext records the OpenSSL uprobes sent.",
            vec![Sample::plain(k.tls_records)],
        ),
        Family::counter(
            "tracer_kernel_tls_calls_lost_total",
            "OpenSSL calls whose plaintext was not sent, by reason: no_socket (the SSL* never              touched a tracked socket inside a call: memory BIO as in Node.js, or no syscall              yet), untracked (its socket is no tracked connection), ambiguous_fd (two tracked              sockets in one call), table_full, size_unreadable, binding_refused (memory BIO: the order of the thread's calls did not prove the socket, never guessed), held_evicted.",
            vec![
                Sample::labelled(&[("reason", "no_socket")], k.tls_no_socket),
                Sample::labelled(&[("reason", "untracked")], k.tls_untracked),
                Sample::labelled(&[("reason", "ambiguous_fd")], k.tls_ambiguous_fd),
                Sample::labelled(&[("reason", "table_full")], k.tls_calls_table_full),
                Sample::labelled(&[("reason", "size_unreadable")], k.tls_size_unreadable),
                Sample::labelled(&[("reason", "binding_refused")], k.tls_binding_refused),
                Sample::labelled(&[("reason", "held_evicted")], k.tls_held_evicted),
            ],
        ),
        Family::counter(
            "tracer_kernel_tls_memory_bio_bound_total",
            "Memory-BIO SSL*s (Node.js) bound to their socket by the order of the thread's \
             calls: side=write (the ciphertext write right after an SSL_write), side=read (the \
             ciphertext read right before an SSL_read).",
            vec![
                Sample::labelled(&[("side", "write")], k.tls_bound_by_write),
                Sample::labelled(&[("side", "read")], k.tls_bound_by_read),
            ],
        ),
        Family::counter(
            "tracer_kernel_tls_nested_syscalls_refused_total",
            "OpenSSL calls inside which a syscall on a tracked connection was not taken as the \
             SSL*'s socket (an application callback run inside the call, as Node.js runs \
             'secureConnect': the connection is bound to another SSL*, or the bytes moved were \
             no TLS record); the call is attributed as if it made no syscall, never to it.",
            vec![Sample::plain(k.tls_nested_refused)],
        ),
        Family::gauge(
            "tracer_kernel_tls_libraries_attached",
            "OpenSSL copies (libssl files, executables exporting OpenSSL) the uprobes are attached to.",
            vec![Sample::plain(k.tls_libraries_attached)],
        ),
        Family::counter(
            "tracer_kernel_tls_attach_failed_total",
            "OpenSSL copies the uprobes could not be attached to (their TLS traffic is not seen).",
            vec![Sample::plain(k.tls_attach_failed)],
        ),
        Family::counter(
            "tracer_kernel_tls_search_scans_total",
            "Scans of the processes for OpenSSL copies (at start, then every 2 seconds).",
            vec![Sample::plain(k.tls_search_scans)],
        ),
        Family::counter(
            "tracer_kernel_tls_search_cut_short_total",
            "Start-up searches for OpenSSL copies stopped at their time budget (on a host with \
             thousands of processes): the processes not read yet are searched by the background \
             thread at once, so their TLS is covered a little later.",
            vec![Sample::plain(k.tls_search_cut_short)],
        ),
        Family::counter(
            "tracer_kernel_tls_search_processes_unchanged_total",
            "Processes a rescan for OpenSSL copies did not read again: the same start time and \
             virtual size as when their maps were read, with nothing to attach then (every \
             process is read again every 30 seconds).",
            vec![Sample::plain(k.tls_search_processes_unchanged)],
        ),
        Family::counter(
            "tracer_kernel_tls_search_full_scans_total",
            "Scans for OpenSSL copies that read every process's maps (at start, then every 30 \
             seconds); the others read only new processes and those the kernel saw exec or map \
             a file executable.",
            vec![Sample::plain(k.tls_search_full_scans)],
        ),
        Family::counter(
            "tracer_kernel_process_changes_full_total",
            "Execs and executable file mappings the kernel's process-change table had no room \
             to name: the next scans for TLS libraries read every process.",
            vec![Sample::plain(k.process_changes_full)],
        ),
        Family::gauge(
            "tracer_tls_unsupported_processes",
            "Processes that map a TLS library whose traffic is not traced (its ciphertext is \
             skipped, never parsed), by library, at the last scan.",
            {
                // In `capture::tls::UNSUPPORTED` order (checked by a test there).
                let n = k.tls_unsupported_processes;
                vec![
                    Sample::labelled(&[("library", "gnutls")], n[0]),
                    Sample::labelled(&[("library", "nss")], n[1]),
                    Sample::labelled(&[("library", "boringssl")], n[2]),
                    Sample::labelled(&[("library", "java")], n[3]),
                ]
            },
        ),
        Family::counter(
            "tracer_tls_ciphertext_connections_total",
            "Connections whose first captured socket bytes were a TLS record (never framed as HTTP).",
            vec![Sample::plain(t.ciphertext_connections)],
        ),
        Family::counter(
            "tracer_tls_plaintext_connections_total",
            "Connections switched to the plaintext a TLS library's uprobes captured.",
            vec![Sample::plain(t.plaintext_connections)],
        ),
        Family::counter(
            "tracer_tls_ciphertext_records_skipped_total",
            "Socket records of TLS connections skipped (ciphertext).",
            vec![Sample::plain(t.ciphertext_records_skipped)],
        ),
        Family::counter(
            "tracer_tls_ciphertext_bytes_skipped_total",
            "Bytes of the skipped ciphertext records.",
            vec![Sample::plain(t.ciphertext_bytes_skipped)],
        ),
        Family::counter(
            "tracer_tls_plaintext_records_total",
            "Plaintext records (TLS library uprobes) framed.",
            vec![Sample::plain(t.plaintext_records)],
        ),
        Family::counter(
            "tracer_tls_plaintext_bytes_total",
            "Bytes of the framed plaintext records (captured or gap).",
            vec![Sample::plain(t.plaintext_bytes)],
        ),
        Family::counter(
            "tracer_tls_switched_after_framing_total",
            "TLS connections whose ciphertext had been framed as cleartext (records lost at their start) when plaintext arrived: what it left pending was discarded.",
            vec![Sample::plain(t.switched_after_framing)],
        ),
    ]
}

/// Families of the pod metadata cache's counters (zeros when the agent has no cache).
fn pod_families(p: &crate::telemetry::k8s::PodMetadataStats) -> Vec<Family> {
    vec![
        Family::gauge(
            "tracer_k8s_pods_cached",
            "Pods of this node in the pod metadata cache.",
            vec![Sample::plain(p.cached_pods as u64)],
        ),
        Family::gauge(
            "tracer_k8s_containers_cached",
            "Containers indexed by id in the pod metadata cache.",
            vec![Sample::plain(p.cached_containers as u64)],
        ),
        Family::gauge(
            "tracer_k8s_job_owners_cached",
            "Jobs whose CronJob owner is cached.",
            vec![Sample::plain(p.cached_job_owners as u64)],
        ),
        Family::counter(
            "tracer_k8s_relists_total",
            "Full lists of the node's pods (the first, and one after each watch expiry or outage).",
            vec![Sample::plain(p.relists)],
        ),
        Family::counter(
            "tracer_k8s_watch_errors_total",
            "Pod watch or list failures (each retried with backoff).",
            vec![Sample::plain(p.watch_errors)],
        ),
        Family::counter(
            "tracer_k8s_pod_lookups_total",
            "Processes looked up in the pod metadata cache.",
            vec![Sample::plain(p.lookups)],
        ),
        Family::counter(
            "tracer_k8s_pod_lookup_misses_total",
            "Lookups of a process in a pod-shaped cgroup whose pod was not cached (its spans \
             carry no k8s.* attributes).",
            vec![Sample::plain(p.lookup_misses)],
        ),
        Family::counter(
            "tracer_k8s_pod_lookups_not_in_pod_total",
            "Lookups of processes not in a container (or whose cgroup file could not be read).",
            vec![Sample::plain(p.lookups_not_in_pod)],
        ),
        Family::counter(
            "tracer_k8s_pods_dropped_total",
            "Pods not cached because the cache was full.",
            vec![Sample::plain(p.pods_dropped)],
        ),
        Family::counter(
            "tracer_k8s_job_lookups_dropped_total",
            "Job owner lookups not queued because their queue was full.",
            vec![Sample::plain(p.job_lookups_dropped)],
        ),
        Family::counter(
            "tracer_k8s_job_lookup_failures_total",
            "Job owner lookups that failed (retried on a later pod event).",
            vec![Sample::plain(p.job_lookup_failures)],
        ),
        Family::counter(
            "tracer_k8s_job_owners_evicted_total",
            "Cached Job owners evicted because their cache was full.",
            vec![Sample::plain(p.job_owner_evictions)],
        ),
    ]
}

/// Families of the HTTP/2 counters.
fn http2_families(h: &crate::protocols::http2::Http2Stats) -> Vec<Family> {
    let w = &h.wire;
    vec![
        Family::counter(
            "tracer_http2_connections_total",
            "Connections recognised as HTTP/2 (client preface, or frames on an adopted connection).",
            vec![Sample::plain(h.connections)],
        ),
        Family::counter(
            "tracer_http2_streams_total",
            "HTTP/2 request heads decoded (streams opened).",
            vec![Sample::plain(h.streams)],
        ),
        Family::counter(
            "tracer_http2_exchanges_total",
            "HTTP/2 streams handed out as exchanges (including reset and cut-short ones).",
            vec![Sample::plain(h.exchanges)],
        ),
        Family::counter(
            "tracer_http2_streams_ended_early_total",
            "HTTP/2 streams that ended before their response completed, by reason (exchanges with the outcome marked).",
            vec![
                Sample::labelled(&[("reason", "rst_stream")], h.streams_reset),
                Sample::labelled(&[("reason", "goaway")], h.streams_refused),
                Sample::labelled(&[("reason", "desync")], h.streams_desync),
            ],
        ),
        Family::counter(
            "tracer_http2_streams_dropped_total",
            "HTTP/2 streams that gave no exchange, by reason.",
            vec![
                Sample::labelled(&[("reason", "request_head_lost")], h.requests_lost),
                Sample::labelled(&[("reason", "open_streams_full")], h.streams_evicted),
                Sample::labelled(&[("reason", "records_lost_or_shed")], h.streams_discarded),
                Sample::labelled(
                    &[("reason", "request_undecoded_no_content_type")],
                    h.requests_undecoded,
                ),
                Sample::labelled(
                    &[("reason", "request_stream_id_implausible")],
                    h.requests_implausible_stream,
                ),
            ],
        ),
        Family::counter(
            "tracer_http2_grpc_status_undecoded_total",
            "gRPC calls completed without a decodable grpc-status while their response had undecoded HPACK fields: no status reported, span status unset.",
            vec![Sample::plain(h.grpc_status_undecoded)],
        ),
        Family::counter(
            "tracer_http2_preface_role_conflicts_total",
            "HTTP/2 connections whose client preface came from the end the kernel saw as the server (or the reverse): not decoded.",
            vec![Sample::plain(h.preface_role_conflicts)],
        ),
        Family::counter(
            "tracer_http2_events_role_unknown_total",
            "HTTP/2 events on an adopted connection before its client/server role was learnt: skipped.",
            vec![Sample::plain(h.events_role_unknown)],
        ),
        Family::counter(
            "tracer_http2_frames_unknown_stream_total",
            "HTTP/2 response frames of streams whose request head was never seen (skipped).",
            vec![Sample::plain(h.frames_unknown_stream)],
        ),
        Family::counter(
            "tracer_http2_frames_total",
            "HTTP/2 frames decoded.",
            vec![Sample::plain(w.frames)],
        ),
        Family::counter(
            "tracer_http2_header_blocks_total",
            "HTTP/2 header blocks (HEADERS + CONTINUATION) decoded.",
            vec![Sample::plain(w.header_blocks)],
        ),
        Family::counter(
            "tracer_http2_header_blocks_lost_total",
            "HTTP/2 header blocks lost (capture gap inside, or over the block bound).",
            vec![Sample::plain(w.header_blocks_lost)],
        ),
        Family::counter(
            "tracer_http2_header_fields_undecoded_total",
            "HPACK fields that could not be decoded (unknown dynamic-table index, bad Huffman): never guessed.",
            vec![Sample::plain(w.fields_undecoded)],
        ),
        Family::counter(
            "tracer_http2_header_lists_truncated_total",
            "HTTP/2 header lists cut at the header-list bound.",
            vec![Sample::plain(w.header_lists_truncated)],
        ),
        Family::counter(
            "tracer_http2_desyncs_total",
            "Times an HTTP/2 direction lost its place in the frame sequence.",
            vec![Sample::plain(w.desyncs)],
        ),
        Family::counter(
            "tracer_http2_bytes_skipped_total",
            "HTTP/2 bytes skipped while out of sync, captured or not (uncaptured gap bytes count too).",
            vec![Sample::plain(w.bytes_skipped)],
        ),
        Family::counter(
            "tracer_http2_header_blocks_too_large_total",
            "HTTP/2 header blocks given up for exceeding the block bound (also counted as lost).",
            vec![Sample::plain(w.frames_too_large)],
        ),
        Family::counter(
            "tracer_http2_control_frames_lost_total",
            "HTTP/2 RST_STREAM, GOAWAY or SETTINGS frames whose payload was not captured.",
            vec![Sample::plain(w.control_frames_lost)],
        ),
        Family::counter(
            "tracer_http2_hpack_table_unknown_total",
            "Times an HPACK dynamic table became unknown (an insert that could not be followed).",
            vec![Sample::plain(w.table_unknown)],
        ),
    ]
}

/// Families of [`BoundsSnapshot`].
fn bounds_families(b: &BoundsSnapshot) -> Vec<Family> {
    vec![
        Family::gauge(
            "tracer_buffered_bytes",
            "Heap bytes held in unfinished HTTP heads and pending requests over all connections.",
            vec![Sample::plain(b.buffered_bytes)],
        ),
        Family::gauge(
            "tracer_buffer_budget_bytes",
            "Budget for tracer_buffered_bytes (--max-buffer-mib).",
            vec![Sample::plain(b.buffer_budget_bytes)],
        ),
        Family::counter(
            "tracer_buffer_budget_sheds_total",
            "Connections whose buffers and pending requests were dropped to stay within the budget (not parsed again until they close).",
            vec![Sample::plain(b.budget_sheds)],
        ),
        Family::counter(
            "tracer_buffer_budget_bytes_shed_total",
            "Bytes released by budget sheds.",
            vec![Sample::plain(b.budget_bytes_shed)],
        ),
        Family::counter(
            "tracer_buffer_budget_requests_shed_total",
            "Pending requests discarded by budget sheds (they become no span).",
            vec![Sample::plain(b.budget_requests_shed)],
        ),
        Family::counter(
            "tracer_parent_links_skipped_total",
            "Parent links not attempted because the heuristic is unsafe for the process, by reason.",
            vec![
                Sample::labelled(
                    &[("reason", "multiplexed_threads")],
                    b.links_skipped_multiplexed,
                ),
                Sample::labelled(
                    &[("reason", "unknown_runtime")],
                    b.links_skipped_unknown_runtime,
                ),
                Sample::labelled(
                    &[("reason", "loopback_netns_unknown")],
                    b.links_skipped_netns_unknown,
                ),
            ],
        ),
        Family::gauge(
            "tracer_process_cache_entries",
            "Processes in the agent's per-process caches, by cache.",
            vec![
                Sample::labelled(&[("cache", "resource")], b.resource_cache_entries),
                Sample::labelled(&[("cache", "runtime")], b.runtime_cache_entries),
            ],
        ),
        Family::counter(
            "tracer_process_cache_evictions_total",
            "Entries evicted from the per-process caches because they were full, by cache.",
            vec![
                Sample::labelled(&[("cache", "resource")], b.resource_cache_evictions),
                Sample::labelled(&[("cache", "runtime")], b.runtime_cache_evictions),
            ],
        ),
        Family::counter(
            "tracer_process_pid_reuses_total",
            "Cached process resources read again because their pid now belongs to another process (or it exec'd another program).",
            vec![Sample::plain(b.resource_pid_reuses)],
        ),
        Family::counter(
            "tracer_runtime_executables_inspected_total",
            "Executables inspected for a runtime that multiplexes requests over threads.",
            vec![Sample::plain(b.runtime_inspected)],
        ),
        Family::counter(
            "tracer_runtime_multiplexed_total",
            "Inspected executables whose runtime multiplexes requests over threads (Go, Node).",
            vec![Sample::plain(b.runtime_multiplexed)],
        ),
        Family::counter(
            "tracer_runtime_unknown_total",
            "Inspected processes whose runtime could not be determined (unreadable, gone, unnamed, unrecognised, or headers refused as too large): no thread links.",
            vec![Sample::plain(b.runtime_unknown)],
        ),
        Family::counter(
            "tracer_runtime_refused_total",
            "Executables not inspected because their headers claim too much to read safely.",
            vec![Sample::plain(b.runtime_refused)],
        ),
        Family::gauge(
            "tracer_linker_pending_identities",
            "Span identities held for requests whose exchange has not completed.",
            vec![Sample::plain(b.linker_pending)],
        ),
        Family::counter(
            "tracer_linker_identities_evicted_total",
            "Span identities dropped because the linker's table was full (those spans lose links).",
            vec![Sample::plain(b.linker_identities_evicted)],
        ),
        Family::counter(
            "tracer_process_cache_exited_total",
            "Per-process cache entries removed because their process exited, by cache.",
            vec![
                Sample::labelled(&[("cache", "resource")], b.resource_exited_removed),
                Sample::labelled(&[("cache", "runtime")], b.runtime_exited_removed),
            ],
        ),
        Family::counter(
            "tracer_procnet_table_reads_total",
            "Socket tables read from /proc for connections whose addresses the kernel did not report.",
            vec![Sample::plain(b.procnet_table_reads)],
        ),
        Family::counter(
            "tracer_procnet_table_reads_truncated_total",
            "Of those reads, the ones stopped at the size bound (sockets past it are not found).",
            vec![Sample::plain(b.procnet_table_reads_truncated)],
        ),
        Family::counter(
            "tracer_procnet_table_cache_hits_total",
            "Socket lookups answered from a socket table read less than a second before.",
            vec![Sample::plain(b.procnet_table_cache_hits)],
        ),
        Family::counter(
            "tracer_procnet_table_reads_deferred_total",
            "Socket lookups left without addresses because the per-second bound on socket-table reads was reached.",
            vec![Sample::plain(b.procnet_table_reads_deferred)],
        ),
        Family::counter(
            "tracer_procnet_non_inet_sockets_total",
            "Adopted file descriptors skipped because they are not INET sockets (unix, netlink...).",
            vec![Sample::plain(b.procnet_non_inet_sockets)],
        ),
    ]
}

/// Binds `addr` and serves the metrics endpoints until the returned task is aborted.
///
/// `GET /metrics` (Prometheus text), `GET /healthz` (200 `ok` while the process runs),
/// `GET /readyz` (200 once [`MetricsState::set_ready`] was called with `true`, else 503); `HEAD`
/// works on the same paths; other methods on them get 405, other paths 404. Returns the bound
/// address (useful with port 0) and the accept loop's task.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<MetricsState>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    server::serve_with_timeout(addr, state, REQUEST_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// One parsed sample line.
    #[derive(Debug)]
    struct ParsedSample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// What a scrape contains: family name -> (type, help) and the samples in order.
    struct Exposition {
        types: BTreeMap<String, String>,
        helps: BTreeMap<String, String>,
        samples: Vec<ParsedSample>,
    }

    impl Exposition {
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            let want: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let found: Vec<&ParsedSample> = self
                .samples
                .iter()
                .filter(|s| s.name == name && s.labels == want)
                .collect();
            assert_eq!(found.len(), 1, "exactly one sample {name}{labels:?}");
            found[0].value
        }
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn parse_labels(text: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("label key");
            assert!(valid_name(key), "label name {key}");
            let close = after.find('"').expect("closing quote");
            let value = &after[..close];
            assert!(!value.contains('\\'), "no escapes expected in {value}");
            assert!(
                labels.insert(key.to_string(), value.to_string()).is_none(),
                "dup label {key}"
            );
            rest = &after[close + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        labels
    }

    /// A strict reader of the text format: every sample's family was declared just before
    /// (HELP then TYPE), families are contiguous and declared once, names and values are valid.
    fn parse(text: &str) -> Exposition {
        assert!(text.ends_with('\n'), "exposition ends with a newline");
        let mut types = BTreeMap::new();
        let mut helps = BTreeMap::new();
        let mut samples = Vec::new();
        let mut current: Option<String> = None;
        let mut finished = BTreeSet::new();
        let mut eof_seen = None;
        for line in text.lines() {
            assert!(eof_seen.is_none(), "nothing after # EOF: {line}");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("help text");
                assert!(!help.is_empty());
                if let Some(previous) = current.replace(name.to_string()) {
                    finished.insert(previous);
                }
                assert!(!finished.contains(name), "family {name} declared twice");
                assert!(helps.insert(name.to_string(), help.to_string()).is_none());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type");
                assert_eq!(current.as_deref(), Some(name), "TYPE follows its HELP");
                assert!(matches!(kind, "counter" | "gauge"), "type {kind}");
                // OpenMetrics declares a counter without the `_total` its samples carry.
                let name = if kind == "counter" {
                    let total = format!("{name}_total");
                    let help = helps.remove(name).expect("help before type");
                    helps.insert(total.clone(), help);
                    current = Some(total.clone());
                    total
                } else {
                    name.to_string()
                };
                assert!(types.insert(name, kind.to_string()).is_none());
            } else if line == "# EOF" {
                assert!(eof_seen.replace(true).is_none(), "one EOF");
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line}");
                let (series, value) = line.rsplit_once(' ').expect("value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (
                        name,
                        parse_labels(labels.strip_suffix('}').expect("closing brace")),
                    ),
                    None => (series, BTreeMap::new()),
                };
                assert_eq!(
                    current.as_deref(),
                    Some(name),
                    "sample {name} inside its family"
                );
                assert!(types.contains_key(name), "sample {name} after its TYPE");
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    other => other.parse().expect("numeric value"),
                };
                samples.push(ParsedSample {
                    name: name.to_string(),
                    labels,
                    value,
                });
            }
        }
        assert_eq!(eof_seen, Some(true), "the page ends with # EOF");
        for (name, kind) in &types {
            assert!(valid_name(name), "metric name {name}");
            assert!(name.starts_with("tracer_"), "{name} is prefixed");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
            assert!(
                samples.iter().any(|s| &s.name == name),
                "{name} has samples"
            );
        }
        Exposition {
            types,
            helps,
            samples,
        }
    }

    /// Every field set to a distinct value (no `..Default::default()`: a new field must be added
    /// here, and then to the rendering, or this stops compiling / fails).
    fn distinct_snapshot() -> AgentSnapshot {
        AgentSnapshot {
            kernel: KernelSnapshot {
                events_submitted: 101,
                ringbuf_full: 102,
                conn_table_full: 103,
                args_table_full: 104,
                scratch_unavailable: 105,
                bytes_captured: 106,
                bytes_skipped: 107,
                read_user_failed: 108,
                conns_sniffed: 109,
                filter_table_full: 110,
                conns_inserted: 111,
                conns_removed: 112,
                conns_stale: 113,
                conns_evicted: 114,
                conn_table_entries: 115,
                unhooked_transfers: 116,
                peeks_skipped: 117,
                lifecycle_args_missing: 118,
                accept_endpoints_unknown: 1177,
                generations_missing: 119,
                fd_reused_in_syscall: 120,
                args_process_quota: 125,
                census_running: 121,
                census_failed_walks: 122,
                optional_probes_attached: 123,
                optional_probes_total: 124,
                agent_mirrors_ignored: 126,
                agent_table_full: 127,
                h2_conns_sniffed: 128,
                h2_directions_framed: 129,
                h2_walk_limit: 130,
                h2_kept_truncated: 131,
                h2_cursor_lost: 132,
                h2_data_elided_bytes: 133,
                h2_implausible_frame: 134,
                h2_walker_loaded: 135,
                tls_records: 136,
                tls_no_socket: 137,
                tls_untracked: 138,
                tls_ambiguous_fd: 139,
                tls_calls_table_full: 140,
                tls_size_unreadable: 141,
                tls_bound_by_write: 1151,
                tls_bound_by_read: 1152,
                tls_binding_refused: 1153,
                tls_held_evicted: 1154,
                tls_nested_refused: 1155,
                tls_libraries_attached: 142,
                tls_attach_failed: 143,
                tls_search_scans: 144,
                tls_search_cut_short: 149,
                tls_search_processes_unchanged: 1156,
                tls_search_full_scans: 1161,
                process_changes_full: 1162,
                tls_unsupported_processes: [145, 146, 147, 148],
            },
            events_read: 201,
            decode_errors: 202,
            event_loop_wakeups: 4001,
            spans_built: 203,
            exchanges_without_role: 204,
            exchanges_ports_unknown: 237,
            exchanges_lost_to_drops: 231,
            records_unknown_connection: 205,
            exchanges_own_telemetry: 232,
            exchanges_telemetry_pipeline: 233,
            proc_pid_unmapped: 234,
            exchanges_telemetry_descendant: 235,
            connections_agent_mirrors: 236,
            connections_netns_kernel: 911,
            connections_netns_proc: 912,
            connections_tracked: 206,
            connections_opened: 207,
            connections_closed: 208,
            connections_evicted_full: 209,
            connections_expired_idle: 210,
            http_messages_parsed: 211,
            http_bytes_skipped: 212,
            http_desyncs: 213,
            http_heads_too_large: 214,
            http_pending_overflow: 215,
            spans_enqueued: 216,
            spans_exported: 217,
            spans_dropped_queue_full: 218,
            spans_dropped_export_failed: 219,
            spans_dropped_shutdown: 220,
            spans_dropped_rejected: 401,
            export_batches: 221,
            export_batches_failed: 222,
            export_retries: 223,
            last_export_latency_seconds: 0.25,
            links_by_header: 224,
            links_by_connection_pair: 225,
            links_by_same_thread: 226,
            links_ambiguous_thread: 227,
            root_spans: 228,
            reorder_buffered: 229,
            reorder_forced_early: 230,
            // Rendered as waits - expired (701) and expired (702).
            reorder_client_waits: 1803,
            reorder_client_waits_expired: 902,
            pair_late_clients_skipped: 903,
            bounds: BoundsSnapshot {
                buffered_bytes: 301,
                buffer_budget_bytes: 302,
                budget_sheds: 303,
                budget_bytes_shed: 304,
                budget_requests_shed: 305,
                links_skipped_multiplexed: 306,
                links_skipped_unknown_runtime: 318,
                links_skipped_netns_unknown: 326,
                runtime_unknown: 319,
                runtime_refused: 320,
                resource_cache_entries: 307,
                resource_cache_evictions: 308,
                resource_pid_reuses: 309,
                runtime_cache_entries: 310,
                runtime_cache_evictions: 311,
                runtime_inspected: 312,
                runtime_multiplexed: 313,
                linker_pending: 314,
                linker_identities_evicted: 315,
                resource_exited_removed: 316,
                runtime_exited_removed: 317,
                procnet_table_reads: 321,
                procnet_table_cache_hits: 322,
                procnet_table_reads_truncated: 323,
                procnet_non_inet_sockets: 324,
                procnet_table_reads_deferred: 325,
            },
            http2: crate::protocols::http2::Http2Stats {
                connections: 501,
                streams: 502,
                exchanges: 503,
                streams_reset: 504,
                streams_refused: 505,
                requests_lost: 506,
                streams_desync: 507,
                streams_evicted: 508,
                frames_unknown_stream: 509,
                streams_discarded: 510,
                requests_undecoded: 521,
                requests_implausible_stream: 524,
                preface_role_conflicts: 525,
                grpc_status_undecoded: 522,
                events_role_unknown: 523,
                wire: crate::protocols::http2::H2WireStats {
                    frames: 511,
                    header_blocks: 512,
                    header_blocks_lost: 513,
                    fields_undecoded: 514,
                    header_lists_truncated: 515,
                    desyncs: 516,
                    bytes_skipped: 517,
                    table_unknown: 518,
                    frames_too_large: 519,
                    control_frames_lost: 520,
                },
            },
            tls: crate::protocols::select::TlsStats {
                ciphertext_connections: 601,
                plaintext_connections: 602,
                ciphertext_records_skipped: 603,
                ciphertext_bytes_skipped: 604,
                plaintext_records: 605,
                plaintext_bytes: 606,
                switched_after_framing: 607,
            },
            go_tls: crate::capture::gotls::GoTlsSnapshot {
                loaded: 701,
                binaries_attached: 702,
                uprobes_attached: 703,
                skipped_not_amd64: 704,
                skipped_stack_abi: 705,
                skipped_unknown_layout: 706,
                skipped_no_symbols: 707,
                skipped_no_crypto_tls: 708,
                skipped_no_tcp_conn_type: 709,
                skipped_disassembly: 710,
                skipped_attach_failed: 711,
                skipped_table_full: 712,
                skipped_exe_unreadable: 713,
                calls_swept: 714,
                scans: 720,
                full_scans: 1163,
                processes_considered: 1164,
                kernel_not_tcp: 715,
                kernel_unreadable: 716,
                kernel_untracked: 717,
                kernel_calls_full: 718,
                kernel_no_layout: 719,
            },
            stages: StageSnapshot {
                data_bytes: 801,
                sniffed_not_socket: 802,
                sniffed_filtered_out: 803,
                connections_opened_late: 804,
                connections_replaced_fd_reuse: 805,
                connections_closed_unseen: 1901,
                http_exchanges: 806,
                http_messages_lost: 807,
                http_unpaired_responses: 808,
                http_upgrades: 809,
                http_switched_to_http2: 810,
            },
            propagation: PropagationSnapshot {
                kernel: crate::capture::propagation::PropagationCounters {
                    active: 1001,
                    options_written: 1002,
                    options_received: 1003,
                    contexts_adopted: 1004,
                    no_space: 1005,
                    malformed: 1006,
                    segment_missed: 1007,
                    client_contexts: 1008,
                    client_unlinked: 1009,
                    client_undecided: 1015,
                    processes_revoked: 1016,
                    offsets_unknown: 1023,
                    header_adopted: 1019,
                    header_rejected: 1020,
                    header_scan_at_limit: 1021,
                    header_scan_not_run: 1022,
                },
                matching: crate::correlate::kernel_ids::KernelIdStats {
                    received: 1010,
                    matched: 1011,
                    unmatched: 1012,
                    evicted: 1017,
                },
                kernel_identities: 1013,
                kernel_disagreements: 1014,
                trace_remaps_evicted: 1018,
            },
        }
    }

    #[test]
    fn every_field_is_rendered_exactly_once() {
        let text = render_prometheus(&distinct_snapshot());
        let parsed = parse(&text);
        let mut values: Vec<f64> = parsed.samples.iter().map(|s| s.value).collect();
        values.sort_by(f64::total_cmp);
        let mut want: Vec<f64> = (101..=127)
            .chain(201..=237)
            .chain(301..=326)
            .chain(501..=525)
            .chain(601..=607)
            .chain(701..=720)
            .chain(801..=810)
            .map(|v| v as f64)
            .collect();
        want.push(0.25);
        want.push(1901.0); // connections closed without a close record
        want.push(4001.0); // event_loop_wakeups
        want.push(401.0); // spans_dropped_rejected
        want.extend((128..=135).map(|v| v as f64)); // kernel HTTP/2 capture
        want.extend((136..=149).map(|v| v as f64)); // kernel TLS uprobes and search
        want.extend((901..=903).map(|v| v as f64)); // client waits, late clients
        want.extend((911..=912).map(|v| v as f64)); // network namespace sources
        want.extend((1151..=1154).map(|v| v as f64)); // memory-BIO TLS bindings
        want.push(1155.0); // nested syscalls refused as an SSL*'s socket
        want.push(1156.0); // TLS search: processes unchanged, not read again
        want.extend((1161..=1164).map(|v| v as f64)); // process discovery: full scans, changes
        want.extend((1001..=1015).map(|v| v as f64)); // context propagation
        want.extend((1016..=1018).map(|v| v as f64)); // thread rule revoked, evictions
        want.extend((1019..=1021).map(|v| v as f64)); // kernel traceparent scans
        want.push(1022.0); // kernel traceparent scans not run
        want.push(1023.0); // requests on connections whose stream offsets are unknown
        want.push(1177.0); // accepts without an address whose endpoints the kernel could not read
        want.sort_by(f64::total_cmp);
        assert_eq!(
            values, want,
            "each snapshot field appears as exactly one sample"
        );
    }

    #[test]
    fn names_labels_and_types_are_as_documented() {
        let parsed = parse(&render_prometheus(&distinct_snapshot()));
        let drop = |stage, reason| {
            parsed.value(
                "tracer_events_dropped_total",
                &[("stage", stage), ("reason", reason)],
            )
        };
        assert_eq!(drop("kernel", "ringbuf_full"), 102.0);
        assert_eq!(drop("kernel", "scratch_unavailable"), 105.0);
        assert_eq!(drop("kernel", "args_table_full"), 104.0);
        assert_eq!(drop("decode", "malformed"), 202.0);
        let spans = |reason| parsed.value("tracer_spans_dropped_total", &[("reason", reason)]);
        assert_eq!(spans("queue_full"), 218.0);
        assert_eq!(spans("export_failed"), 219.0);
        assert_eq!(spans("rejected_by_receiver"), 401.0);
        assert_eq!(spans("shutdown"), 220.0);
        let exchanges =
            |reason| parsed.value("tracer_exchanges_dropped_total", &[("reason", reason)]);
        assert_eq!(exchanges("own_telemetry"), 232.0);
        assert_eq!(exchanges("ports_unknown"), 237.0);
        assert_eq!(exchanges("telemetry_pipeline"), 233.0);
        assert_eq!(exchanges("telemetry_descendant"), 235.0);
        assert_eq!(parsed.value("tracer_proc_pid_unmapped_total", &[]), 234.0);
        assert_eq!(
            parsed.value("tracer_agent_mirrors_ignored_total", &[]),
            236.0
        );
        assert_eq!(
            parsed.value("tracer_kernel_agent_mirrors_ignored_total", &[]),
            126.0
        );
        assert_eq!(
            parsed.value("tracer_kernel_agent_table_full_total", &[]),
            127.0
        );
        assert_eq!(
            parsed.value("tracer_kernel_events_submitted_total", &[]),
            101.0
        );
        assert_eq!(
            parsed.value("tracer_kernel_http2_connections_sniffed_total", &[]),
            128.0
        );
        assert_eq!(
            parsed.value("tracer_kernel_http2_data_elided_bytes_total", &[]),
            133.0
        );
        assert_eq!(
            parsed.value("tracer_kernel_http2_implausible_frames_total", &[]),
            134.0
        );
        assert_eq!(
            parsed.value("tracer_kernel_http2_walker_loaded", &[]),
            135.0
        );
        assert_eq!(parsed.value("tracer_connections_tracked", &[]), 206.0);
        let h2 = |name, reason| parsed.value(name, &[("reason", reason)]);
        assert_eq!(parsed.value("tracer_http2_connections_total", &[]), 501.0);
        assert_eq!(
            h2("tracer_http2_streams_ended_early_total", "rst_stream"),
            504.0
        );
        assert_eq!(
            h2("tracer_http2_streams_dropped_total", "open_streams_full"),
            508.0
        );
        assert_eq!(
            parsed.value("tracer_http2_header_fields_undecoded_total", &[]),
            514.0
        );
        assert_eq!(
            parsed.value(
                "tracer_connections_dropped_total",
                &[("stage", "agent"), ("reason", "table_full")]
            ),
            209.0
        );
        assert_eq!(
            parsed.value("tracer_parent_links_total", &[("source", "same_thread")]),
            226.0
        );
        assert_eq!(
            parsed.value("tracer_export_last_latency_seconds", &[]),
            0.25
        );
        assert_eq!(parsed.types["tracer_connections_tracked"], "gauge");
        assert_eq!(parsed.types["tracer_reorder_buffered"], "gauge");
        assert_eq!(parsed.types["tracer_export_last_latency_seconds"], "gauge");
        assert_eq!(parsed.types["tracer_spans_dropped_total"], "counter");
        assert!(parsed.helps.values().all(|h| h.ends_with('.')));
    }

    #[test]
    fn zero_snapshot_and_special_floats_render() {
        let zero = parse(&render_prometheus(&AgentSnapshot::default()));
        assert!(zero.samples.iter().all(|s| s.value == 0.0));
        let mut s = AgentSnapshot {
            last_export_latency_seconds: f64::INFINITY,
            ..AgentSnapshot::default()
        };
        let text = render_prometheus(&s);
        // OpenMetrics' encoder cannot spell an infinity: no value.
        assert!(
            text.contains("\ntracer_export_last_latency_seconds NaN\n"),
            "{text}"
        );
        s.last_export_latency_seconds = f64::NAN;
        assert!(render_prometheus(&s).contains("\ntracer_export_last_latency_seconds NaN\n"));
        s.last_export_latency_seconds = 1e-7;
        let parsed = parse(&render_prometheus(&s));
        assert_eq!(
            parsed.value("tracer_export_last_latency_seconds", &[]),
            1e-7
        );
    }

    #[test]
    fn state_keeps_the_latest_snapshot() {
        let state = MetricsState::new();
        assert!(!state.is_ready());
        let snapshots = |state: &MetricsState| {
            parse(&state.render()).value("tracer_metrics_snapshots_total", &[])
        };
        assert_eq!(snapshots(&state), 0.0);
        state.update(distinct_snapshot());
        assert_eq!(snapshots(&state), 1.0);
        let mut newer = distinct_snapshot();
        newer.spans_built = 999;
        state.update(newer.clone());
        assert_eq!(state.snapshot(), newer);
        let parsed = parse(&state.render());
        assert_eq!(parsed.value("tracer_spans_built_total", &[]), 999.0);
        assert_eq!(parsed.value("tracer_ready", &[]), 0.0);
        state.set_ready(true);
        assert_eq!(parse(&state.render()).value("tracer_ready", &[]), 1.0);
    }

    #[test]
    fn every_pod_metadata_counter_is_rendered_exactly_once() {
        let stats = crate::telemetry::k8s::PodMetadataStats {
            cached_pods: 701,
            cached_containers: 702,
            cached_job_owners: 703,
            relists: 704,
            watch_errors: 705,
            lookups: 706,
            lookup_misses: 707,
            lookups_not_in_pod: 708,
            pods_dropped: 709,
            job_lookups_dropped: 710,
            job_lookup_failures: 711,
            job_owner_evictions: 712,
        };
        let mut registry = exposition::Registry::default();
        exposition::register(&mut registry, Arc::new(Families(pod_families(&stats))));
        let text = exposition::encode(&registry);
        let mut values: Vec<f64> = parse(&text).samples.iter().map(|s| s.value).collect();
        values.sort_by(f64::total_cmp);
        let want: Vec<f64> = (701..=712).map(f64::from).collect();
        assert_eq!(values, want);
    }

    /// `(type, field, family)` for every field of a counters struct, from an exhaustive pattern:
    /// a field added to the struct stops this module's tests from compiling until it is named
    /// here with the family that exports it.
    macro_rules! exported {
        ($($ty:ident)::+ { $($field:ident => $family:literal),* $(,)? }) => {{
            let $($ty)::+ { $($field: _),* } = Default::default();
            let ty = stringify!($($ty)::+);
            vec![$((ty, stringify!($field), $family)),*]
        }};
    }

    /// Every field of every counters struct of the agent has its family on `/metrics` (with the
    /// RED metrics and the service graph on). The values' path is checked per snapshot field by
    /// `every_field_is_rendered_exactly_once`.
    #[test]
    fn every_counted_field_is_exported() {
        let mut fields: Vec<(&str, &str, &str)> = Vec::new();
        fields.extend(exported!(crate::pipeline::PipelineStats {
            events => "tracer_events_read_total",
            data_bytes => "tracer_data_bytes_total",
            spans => "tracer_spans_built_total",
            exchanges_without_role => "tracer_exchanges_dropped_total",
            exchanges_ports_unknown => "tracer_exchanges_dropped_total",
            sniffed_not_socket => "tracer_sniffed_fds_ignored_total",
            sniffed_filtered_out => "tracer_sniffed_fds_ignored_total",
            records_unknown_connection => "tracer_records_unknown_connection_total",
            own_telemetry_dropped => "tracer_exchanges_dropped_total",
            telemetry_pipeline_dropped => "tracer_exchanges_dropped_total",
            proc_pid_unmapped => "tracer_proc_pid_unmapped_total",
            telemetry_descendants_dropped => "tracer_exchanges_dropped_total",
            sniffed_agent_mirrors => "tracer_agent_mirrors_ignored_total",
            netns_from_kernel => "tracer_connections_netns_total",
            netns_from_proc => "tracer_connections_netns_total",
        }));
        fields.extend(exported!(crate::correlate::connections::TableStats {
            opened => "tracer_connections_opened_total",
            closed => "tracer_connections_closed_total",
            opened_late => "tracer_connections_opened_late_total",
            evicted_full => "tracer_connections_dropped_total",
            expired_idle => "tracer_connections_expired_idle_total",
            replaced_fd_reuse => "tracer_connections_replaced_fd_reuse_total",
            closed_unseen => "tracer_connections_closed_unseen_total",
            budget_sheds => "tracer_buffer_budget_sheds_total",
            budget_bytes_shed => "tracer_buffer_budget_bytes_shed_total",
            budget_requests_shed => "tracer_buffer_budget_requests_shed_total",
        }));
        fields.extend(exported!(crate::protocols::http1::HttpStats {
            messages_parsed => "tracer_http_messages_parsed_total",
            exchanges => "tracer_http_exchanges_total",
            bytes_skipped => "tracer_http_bytes_skipped_total",
            desyncs => "tracer_http_desyncs_total",
            messages_lost => "tracer_http_messages_lost_total",
            heads_too_large => "tracer_http_messages_dropped_total",
            pending_overflow => "tracer_http_messages_dropped_total",
            unpaired_responses => "tracer_http_responses_unpaired_total",
            upgrades => "tracer_http_upgrades_total",
            http2_connections => "tracer_http_switched_to_http2_total",
            lost_to_drops => "tracer_exchanges_dropped_total",
        }));
        fields.extend(exported!(crate::correlate::linker::LinkerStats {
            by_header => "tracer_parent_links_total",
            by_connection_pair => "tracer_parent_links_total",
            by_same_thread => "tracer_parent_links_total",
            ambiguous_thread => "tracer_parent_links_ambiguous_total",
            multiplexed_thread => "tracer_parent_links_skipped_total",
            unknown_runtime_thread => "tracer_parent_links_skipped_total",
            roots => "tracer_root_spans_total",
            identities_evicted => "tracer_linker_identities_evicted_total",
            pair_netns_unknown => "tracer_parent_links_skipped_total",
            pair_late_clients_skipped => "tracer_pair_late_clients_skipped_total",
            kernel_identities => "tracer_kernel_identities_used_total",
            kernel_disagreements => "tracer_kernel_identity_disagreements_total",
            trace_remaps_evicted => "tracer_kernel_trace_remaps_evicted_total",
        }));
        fields.extend(exported!(crate::capture::propagation::PropagationCounters {
            active => "tracer_context_propagation_active",
            options_written => "tracer_context_options_total",
            options_received => "tracer_context_options_total",
            malformed => "tracer_context_options_total",
            no_space => "tracer_context_options_not_sent_total",
            segment_missed => "tracer_context_options_not_sent_total",
            offsets_unknown => "tracer_context_offsets_unknown_total",
            contexts_adopted => "tracer_context_adopted_total",
            client_contexts => "tracer_kernel_client_contexts_total",
            client_unlinked => "tracer_kernel_client_contexts_total",
            client_undecided => "tracer_kernel_client_contexts_total",
            processes_revoked => "tracer_kernel_thread_rule_revoked_total",
            header_adopted => "tracer_kernel_header_scans_total",
            header_rejected => "tracer_kernel_header_scans_total",
            header_scan_at_limit => "tracer_kernel_header_scans_total",
            header_scan_not_run => "tracer_kernel_header_scans_total",
        }));
        fields.extend(exported!(crate::correlate::kernel_ids::KernelIdStats {
            received => "tracer_kernel_identities_total",
            matched => "tracer_kernel_identities_total",
            unmatched => "tracer_kernel_identities_total",
            evicted => "tracer_kernel_identities_total",
        }));
        fields.extend(exported!(crate::correlate::runtime::RuntimeStats {
            inspected => "tracer_runtime_executables_inspected_total",
            multiplexed => "tracer_runtime_multiplexed_total",
            unknown => "tracer_runtime_unknown_total",
            refused => "tracer_runtime_refused_total",
            evicted => "tracer_process_cache_evictions_total",
            exited_removed => "tracer_process_cache_exited_total",
        }));
        fields.extend(exported!(crate::capture::procnet::ProcNetStats {
            table_reads => "tracer_procnet_table_reads_total",
            table_cache_hits => "tracer_procnet_table_cache_hits_total",
            table_reads_truncated => "tracer_procnet_table_reads_truncated_total",
            non_inet_sockets => "tracer_procnet_non_inet_sockets_total",
            table_reads_deferred => "tracer_procnet_table_reads_deferred_total",
        }));
        fields.extend(exported!(crate::capture::reorder::ReorderStats {
            held => "tracer_reorder_buffered",
            forced_early => "tracer_reorder_forced_early_total",
            waits => "tracer_reorder_client_waits_total",
            waits_expired => "tracer_reorder_client_waits_total",
        }));
        fields.extend(exported!(crate::telemetry::k8s::PodMetadataStats {
            cached_pods => "tracer_k8s_pods_cached",
            cached_containers => "tracer_k8s_containers_cached",
            cached_job_owners => "tracer_k8s_job_owners_cached",
            relists => "tracer_k8s_relists_total",
            watch_errors => "tracer_k8s_watch_errors_total",
            lookups => "tracer_k8s_pod_lookups_total",
            lookup_misses => "tracer_k8s_pod_lookup_misses_total",
            lookups_not_in_pod => "tracer_k8s_pod_lookups_not_in_pod_total",
            pods_dropped => "tracer_k8s_pods_dropped_total",
            job_lookups_dropped => "tracer_k8s_job_lookups_dropped_total",
            job_lookup_failures => "tracer_k8s_job_lookup_failures_total",
            job_owner_evictions => "tracer_k8s_job_owners_evicted_total",
        }));
        fields.extend(exported!(crate::export::ExportStatsSnapshot {
            spans_enqueued => "tracer_spans_enqueued_total",
            spans_exported => "tracer_spans_exported_total",
            spans_dropped_queue_full => "tracer_spans_dropped_total",
            spans_dropped_export_failed => "tracer_spans_dropped_total",
            spans_dropped_shutdown => "tracer_spans_dropped_total",
            spans_dropped_rejected => "tracer_spans_dropped_total",
            export_batches => "tracer_export_batches_total",
            export_batches_failed => "tracer_export_batches_failed_total",
            export_retries => "tracer_export_retries_total",
            last_export_latency => "tracer_export_last_latency_seconds",
        }));
        fields.extend(exported!(crate::telemetry::red::RedStats {
            points => "tracer_red_points_total",
            overflow_points => "tracer_red_overflow_points_total",
            dropped_points => "tracer_red_dropped_points_total",
            series => "tracer_red_series",
        }));
        fields.extend(exported!(crate::telemetry::red::MetricsExportCounters {
            requests => "tracer_red_export_requests_total",
            requests_failed => "tracer_red_export_requests_failed_total",
            retries => "tracer_red_export_retries_total",
            points_exported => "tracer_red_export_points_total",
            points_dropped => "tracer_red_export_points_dropped_total",
        }));
        fields.extend(exported!(crate::telemetry::service_graph::GraphStats {
            paired => "tracer_service_graph_requests_total",
            client_only => "tracer_service_graph_requests_total",
            server_only => "tracer_service_graph_requests_total",
            pending_overflow => "tracer_service_graph_pending_overflow_total",
            overflow_requests => "tracer_service_graph_overflow_requests_total",
            notes_dropped => "tracer_service_graph_pair_notes_dropped_total",
            pending => "tracer_service_graph_pending",
            edges => "tracer_service_graph_edges",
        }));
        let state = MetricsState::new();
        state.update(distinct_snapshot());
        state.set_red(crate::telemetry::red::RedMetrics::new(Default::default()));
        let page = state.render();
        let missing: Vec<_> = fields
            .iter()
            .filter(|(_, _, family)| {
                let declared = |kind: &str| {
                    // OpenMetrics declares a counter without the suffix its samples carry.
                    let name = family.strip_suffix("_total").unwrap_or(family);
                    page.contains(&format!("# TYPE {name} {kind}\n"))
                };
                !declared("counter") && !declared("gauge")
            })
            .collect();
        assert!(missing.is_empty(), "not on /metrics: {missing:?}");
    }
}
