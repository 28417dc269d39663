//! The userspace pipeline without the kernel: decoded events -> connections -> HTTP exchanges ->
//! spans (with parent context and process resource) -> a span output. Fed by the ring-buffer
//! reader in the agent and by recorded event streams in tests and benchmarks.

use std::path::PathBuf;

use crate::capture::decode::{KernelEvent, RecordHeader};
use crate::capture::own::{self, Telemetry};
use crate::capture::procnet::{FdKind, ProcNet};
use crate::correlate::connections::{ConnectionTable, TableLimits, TableStats};
use crate::correlate::linker::{Linker, LinkerLimits, LinkerStats, SpanIdentity, Threads};
use crate::correlate::runtime::{RuntimeCache, RuntimeStats};
use crate::export::SpanSink;
use crate::idhash::{IdHashMap, IdHashSet};
use crate::model::{ConnMeta, Exchange, ExportItem, ProcessResource, Role};
use crate::protocols::http1::HttpStats;
use crate::protocols::propagation;
use crate::telemetry::ids::{IdGenerator, TraceIds};
use crate::telemetry::resource::ResourceCache;
use crate::telemetry::spans::{self, Clock, SpanInput};

/// Where finished spans go.
pub trait SpanOutput {
    fn emit(&mut self, item: ExportItem);
}

impl SpanOutput for Vec<ExportItem> {
    fn emit(&mut self, item: ExportItem) {
        self.push(item);
    }
}

impl SpanOutput for &SpanSink {
    fn emit(&mut self, item: ExportItem) {
        self.submit(item);
    }
}

/// Pipeline counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub events: u64,
    pub data_bytes: u64,
    pub spans: u64,
    /// Exchanges dropped because their connection's role never became known.
    pub exchanges_without_role: u64,
    /// Exchanges dropped under a port filter because neither address of their connection is
    /// known (adopted by sniffing, `/proc` gave no endpoints): the filter cannot admit them.
    pub exchanges_ports_unknown: u64,
    /// Sniffed fds that turned out not to be sockets.
    pub sniffed_not_socket: u64,
    /// Sniffed connections outside the port filter.
    pub sniffed_filtered_out: u64,
    /// Data or close records for connections the table did not know (after eviction or expiry).
    pub records_unknown_connection: u64,
    /// Exchanges carrying a tracer agent's mark (our exports, API watches), never spans.
    pub own_telemetry_dropped: u64,
    /// OTLP export exchanges of other programs, dropped unless `include_telemetry`.
    pub telemetry_pipeline_dropped: u64,
    /// Processes (resources, sniffed sockets) not looked up in `/proc` because the agent's `/proc`
    /// does not show them (an agent in a child pid namespace, a process outside it).
    pub proc_pid_unmapped: u64,
    /// Exchanges linked under a dropped telemetry request (same thread, connection pair).
    pub telemetry_descendants_dropped: u64,
    /// Connections whose endpoints came from /proc and turned out to be the other end of one of
    /// the agent's own connections: ignored.
    pub sniffed_agent_mirrors: u64,
    /// Connections whose network namespace the kernel named in their open record.
    pub netns_from_kernel: u64,
    /// Connections whose network namespace was looked up in `/proc` instead (the kernel's BTF
    /// lacked the fields, or a connection adopted without an open record): unknown when the
    /// process was gone by then.
    pub netns_from_proc: u64,
}

/// Options of the userspace side.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub limits: TableLimits,
    pub proc_root: PathBuf,
    pub host_name: String,
    /// Only connections with one of these local/peer ports become spans (for connections whose
    /// ports the kernel did not know when it adopted them); empty = all.
    pub ports: Vec<u16>,
    /// Make spans of other programs' OTLP exports too (a tracer's own are never traced).
    pub include_telemetry: bool,
}

/// Events in, spans out.
pub struct Pipeline {
    table: ConnectionTable,
    resources: ResourceCache,
    /// Which processes multiplex requests over threads (no same-thread links for them).
    runtimes: RuntimeCache,
    clock: Clock,
    linker: Linker,
    /// Trace ids of traces started by exchanges the linker never saw (the linker has a copy).
    trace_ids: TraceIds,
    opts: PipelineOptions,
    stats: PipelineStats,
    scratch: Vec<(ConnMeta, Option<Role>, Exchange)>,
    /// Exchanges one record completed (reused from record to record).
    exchanges: Vec<Exchange>,
    /// (pid, fd) adopted by the kernel that must not be followed (not sockets, or outside the
    /// port filter): the agent marks them ignored in the kernel table.
    not_sockets: Vec<(u32, i32)>,
    /// Connections dropped as not-sockets or outside the port filter: their records still in
    /// flight are ignored instead of re-opening them.
    ignored: IdHashSet<u64>,
    /// /proc facts about sniffed connections, read when their record left the ring buffer
    /// (before the reorder window: a short-lived process may be gone after it).
    presolved: IdHashMap<u64, FdKind>,
    /// /proc socket lookups, with per-namespace table cache.
    procnet: ProcNet,
    /// When the per-process caches were last swept of exited processes.
    last_process_sweep_ns: u64,
    /// Recognises the other end of the agent's own connections among those resolved from /proc.
    agent_mirror: Option<own::MirrorCheck>,
    /// The process of each tracked connection, resolved once when the connection opened (or
    /// was adopted): spans emitted late (timeouts, closes after exit) keep their process even
    /// if its pid now belongs to another one. Entries leave with their connection.
    conn_procs: IdHashMap<u64, ConnProcess>,
    /// Network namespace inode per process (host tgid), read once with the resource it was
    /// read for: a resource read again (pid reused) reads the namespace again.
    netns_by_pid: IdHashMap<u32, (std::sync::Arc<ProcessResource>, Option<u64>)>,
    /// Told of same-host pairs whose SERVER span's parent came from a header instead.
    service_graph: Option<std::sync::Arc<crate::telemetry::service_graph::ServiceGraph>>,
    /// Identities the kernel decided (`--context-propagation`); `None` when it is off.
    kernel_ids: Option<crate::correlate::kernel_ids::KernelIds>,
    /// Processes found to serve one request per thread, for the kernel's same-thread rule
    /// (with kernel identities only); drained by the agent.
    dedicated_pids: Vec<u32>,
    dedicated_told: IdHashSet<u32>,
    /// Connections closed without a close record (`correlate/unseen_close.rs`), and the time
    /// before which every record written has been processed (told by the reader).
    unseen_closes: crate::correlate::unseen_close::UnseenCloses,
    processed_before_ns: u64,
}

/// The inode of `/proc/<proc_pid>/ns/net` (its link reads `net:[<inode>]`).
fn netns_inode(proc_root: &std::path::Path, proc_pid: u32) -> Option<u64> {
    let link = std::fs::read_link(proc_root.join(proc_pid.to_string()).join("ns/net")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// What a connection's spans need from its process.
struct ConnProcess {
    resource: std::sync::Arc<ProcessResource>,
    threads: Threads,
}

/// How often per-process caches drop processes that exited (after one such interval of grace).
const PROCESS_SWEEP_NS: u64 = 10_000_000_000;

/// Bound of the ignored and presolved sets (cleared when exceeded).
const SNIFF_MEMORY: usize = 65_536;

impl Pipeline {
    pub fn new(opts: PipelineOptions, clock: Clock) -> Self {
        let procnet = ProcNet::new(opts.proc_root.clone());
        let unseen_closes =
            crate::correlate::unseen_close::UnseenCloses::new(opts.proc_root.clone());
        Pipeline {
            table: ConnectionTable::new(opts.limits),
            resources: ResourceCache::new(opts.proc_root.clone(), opts.host_name.clone()),
            runtimes: RuntimeCache::new(
                opts.proc_root.clone(),
                crate::correlate::runtime::DEFAULT_CAPACITY,
            ),
            clock,
            linker: Linker::new(LinkerLimits::default()),
            trace_ids: TraceIds::default(),
            opts,
            stats: PipelineStats::default(),
            scratch: Vec::new(),
            exchanges: Vec::new(),
            not_sockets: Vec::new(),
            ignored: IdHashSet::default(),
            presolved: IdHashMap::default(),
            procnet,
            last_process_sweep_ns: 0,
            agent_mirror: None,
            conn_procs: IdHashMap::default(),
            netns_by_pid: IdHashMap::default(),
            service_graph: None,
            kernel_ids: None,
            dedicated_pids: Vec::new(),
            dedicated_told: IdHashSet::default(),
            unseen_closes,
            processed_before_ns: 0,
        }
    }

    /// Every record written to the ring buffer before `ts_ns` (kernel monotonic) has gone
    /// through the pipeline (the reader caught up and the reorder window released it):
    /// connections found closed without a close record before then are closed.
    pub fn note_processed_before(&mut self, ts_ns: u64, out: &mut impl SpanOutput) {
        self.processed_before_ns = self.processed_before_ns.max(ts_ns);
        if !self.unseen_closes.waiting() {
            return;
        }
        let mut done = std::mem::take(&mut self.scratch);
        self.unseen_closes
            .close_found(self.processed_before_ns, &mut self.table, &mut done);
        self.emit_all(&mut done, out);
        self.scratch = done;
        self.forget_removed_connections();
    }

    /// Processes newly found to serve one request per thread (see `dedicated_pids`).
    pub fn take_dedicated_pids(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.dedicated_pids)
    }

    /// The kernel decides identities (`--context-propagation tcp-options`): its identity
    /// records are matched to requests and their spans exported with them.
    pub fn with_kernel_identities(mut self, on: bool) -> Self {
        self.kernel_ids = on.then(crate::correlate::kernel_ids::KernelIds::default);
        self
    }

    /// Counts of the kernel identities' matching (zero when propagation is off).
    pub fn kernel_id_stats(&self) -> crate::correlate::kernel_ids::KernelIdStats {
        self.kernel_ids
            .as_ref()
            .map(|k| k.stats())
            .unwrap_or_default()
    }

    /// Adds Kubernetes pod metadata to process resources.
    pub fn with_pods(mut self, pods: Option<crate::telemetry::k8s::PodMetadata>) -> Self {
        let resources = std::mem::replace(
            &mut self.resources,
            ResourceCache::new(self.opts.proc_root.clone(), self.opts.host_name.clone()),
        );
        self.resources = resources.with_pods(pods);
        self
    }

    /// Trace ids of the traces the tracer starts come from `generator` (random by default).
    pub fn with_id_generator(mut self, generator: IdGenerator) -> Self {
        self.trace_ids = TraceIds::new(generator, &self.clock);
        self.linker.set_trace_ids(self.trace_ids);
        self
    }

    /// Exports a redacted `process.command_line` in process resources (off by default).
    pub fn with_command_line(
        mut self,
        command_line: crate::telemetry::resource::CommandLine,
    ) -> Self {
        let resources = std::mem::replace(
            &mut self.resources,
            ResourceCache::new(self.opts.proc_root.clone(), self.opts.host_name.clone()),
        );
        self.resources = resources.with_command_line(command_line);
        self
    }

    /// Tells `graph` which CLIENT request each header-linked SERVER request was paired with on
    /// this host (its span does not say), so the request is counted once on the service graph.
    pub fn with_service_graph(
        mut self,
        graph: Option<std::sync::Arc<crate::telemetry::service_graph::ServiceGraph>>,
    ) -> Self {
        self.service_graph = graph;
        self
    }

    /// Ignores connections resolved from /proc that `check` says are the agent's own mirrors.
    pub fn with_agent_mirror(mut self, check: Option<own::MirrorCheck>) -> Self {
        self.agent_mirror = check;
        self
    }

    /// Names processes under `/proc` through `map` (an agent in a child pid namespace).
    pub fn with_pid_map(mut self, map: Option<crate::telemetry::resource::PidMap>) -> Self {
        let resources = std::mem::replace(
            &mut self.resources,
            ResourceCache::new(self.opts.proc_root.clone(), self.opts.host_name.clone()),
        );
        self.resources = resources.with_pid_map(map);
        self
    }

    pub fn stats(&self) -> PipelineStats {
        let mut stats = self.stats;
        stats.proc_pid_unmapped += self.resources.unmapped();
        stats
    }

    /// What `/proc` says about `fd` of host tgid `pid`; `Unknown` (counted) when the agent's
    /// `/proc` does not show that process.
    fn inspect_fd(&mut self, pid: u32, fd: i32) -> FdKind {
        match self.resources.proc_pid(pid) {
            Some(proc_pid) => self.procnet.inspect_fd(proc_pid, fd),
            None => {
                self.stats.proc_pid_unmapped += 1;
                FdKind::Unknown
            }
        }
    }

    /// Requests waiting for their response over all connections.
    pub fn pending_requests(&self) -> usize {
        self.table.pending_requests()
    }

    pub fn table_stats(&self) -> TableStats {
        self.table.stats()
    }

    /// Whether `event` should wait (in the reorder window) for a record not read yet: it starts
    /// an HTTP/1 request on an accepted connection whose client end is traced on this host and
    /// has not been seen sending it (see [`Linker::awaits_client_request`]).
    pub fn awaits_client_request(&mut self, event: &KernelEvent<'_>) -> bool {
        let KernelEvent::Data {
            header,
            direction: crate::model::Direction::Ingress,
            payload,
            ..
        } = event
        else {
            return false;
        };
        let Some(conn) = self.table.get_mut(header.conn_id) else {
            return false;
        };
        conn.role() == Some(Role::Server)
            && crate::protocols::http1::may_start_request(payload)
            && self.linker.awaits_client_request(&conn.meta)
    }

    pub fn linker_stats(&self) -> LinkerStats {
        self.linker.stats()
    }

    pub fn runtime_stats(&self) -> RuntimeStats {
        self.runtimes.stats()
    }

    /// Memory bounds and cache counters, for /metrics.
    pub fn bounds_snapshot(&self) -> crate::telemetry::metrics::BoundsSnapshot {
        let t = self.table.stats();
        let r = self.runtimes.stats();
        let n = self.procnet.stats();
        crate::telemetry::metrics::BoundsSnapshot {
            buffered_bytes: self.table.buffered_bytes() as u64,
            buffer_budget_bytes: self.opts.limits.max_buffered_bytes as u64,
            budget_sheds: t.budget_sheds,
            budget_bytes_shed: t.budget_bytes_shed,
            budget_requests_shed: t.budget_requests_shed,
            links_skipped_multiplexed: self.linker.stats().multiplexed_thread,
            links_skipped_unknown_runtime: self.linker.stats().unknown_runtime_thread,
            links_skipped_netns_unknown: self.linker.stats().pair_netns_unknown,
            runtime_unknown: r.unknown,
            runtime_refused: r.refused,
            resource_cache_entries: self.resources.len() as u64,
            resource_cache_evictions: self.resources.evictions(),
            resource_pid_reuses: self.resources.pid_reuses(),
            runtime_cache_entries: self.runtimes.len() as u64,
            runtime_cache_evictions: r.evicted,
            runtime_inspected: r.inspected,
            runtime_multiplexed: r.multiplexed,
            linker_pending: self.linker.pending() as u64,
            linker_identities_evicted: self.linker.stats().identities_evicted,
            resource_exited_removed: self.resources.exited_removed(),
            runtime_exited_removed: r.exited_removed,
            procnet_table_reads: n.table_reads,
            procnet_table_cache_hits: n.table_cache_hits,
            procnet_table_reads_truncated: n.table_reads_truncated,
            procnet_non_inet_sockets: n.non_inet_sockets,
            procnet_table_reads_deferred: n.table_reads_deferred,
        }
    }

    /// The stages' counters not carried elsewhere on /metrics.
    pub fn stage_snapshot(&self) -> crate::telemetry::metrics::StageSnapshot {
        let p = &self.stats;
        let t = self.table.stats();
        let h = self.table.http_stats();
        crate::telemetry::metrics::StageSnapshot {
            data_bytes: p.data_bytes,
            sniffed_not_socket: p.sniffed_not_socket,
            sniffed_filtered_out: p.sniffed_filtered_out,
            connections_opened_late: t.opened_late,
            connections_replaced_fd_reuse: t.replaced_fd_reuse,
            connections_closed_unseen: t.closed_unseen,
            http_exchanges: h.exchanges,
            http_messages_lost: h.messages_lost,
            http_unpaired_responses: h.unpaired_responses,
            http_upgrades: h.upgrades,
            http_switched_to_http2: h.http2_connections,
        }
    }

    pub fn http_stats(&self) -> HttpStats {
        self.table.http_stats()
    }

    pub fn http2_stats(&self) -> crate::protocols::http2::Http2Stats {
        self.table.http2_stats()
    }

    /// TLS counters (ciphertext skipped, plaintext framed).
    pub fn tls_stats(&self) -> crate::protocols::select::TlsStats {
        self.table.tls_stats()
    }

    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// Reads a process's resource now, while it surely still runs: the reorder window delays
    /// events, and a short-lived client may be gone by the time its span is built.
    /// The process is identified by its start time too, so a reused pid is noticed here.
    pub fn prefetch_resource(&mut self, pid: u32) {
        let proc_pid = self.resources.proc_pid(pid);
        let start_time = proc_pid
            .and_then(|p| crate::telemetry::proc_identity::start_time(&self.opts.proc_root, p));
        // The resource first: a short-lived process may exit while its executable is read.
        let resource = self.resources.get_started(pid, start_time);
        self.runtimes.observe(pid, proc_pid, start_time);
        // And its network namespace, for connection pairing on loopback.
        self.netns_of(pid, &resource);
    }

    /// Names `pid` after the kernel's `comm` if its `/proc` could not be read (see
    /// [`ResourceCache::name_unreadable`]); call after [`Pipeline::prefetch_resource`].
    pub fn name_unreadable_process(&mut self, pid: u32, comm: &str) {
        self.resources.name_unreadable(pid, comm);
    }

    /// Resolves the process of a connection the table just opened, once (a second announcement
    /// of the same connection keeps the first answer). Its network namespace is the one the
    /// kernel named (`kernel_netns`), else its process's in `/proc`.
    fn bind_process(&mut self, conn_id: u64, pid: u32, kernel_netns: Option<u64>) {
        if self.conn_procs.contains_key(&conn_id) || self.table.get_mut(conn_id).is_none() {
            return;
        }
        let resource = self.resources.get(pid);
        let threads = self.runtimes.threads(pid, self.resources.proc_pid(pid));
        if self.kernel_ids.is_some()
            && threads == Threads::Dedicated
            && self.dedicated_told.len() < SNIFF_MEMORY
            && self.dedicated_told.insert(pid)
        {
            self.dedicated_pids.push(pid);
        }
        let netns = if kernel_netns.is_some() {
            self.stats.netns_from_kernel += 1;
            kernel_netns
        } else {
            self.stats.netns_from_proc += 1;
            self.netns_of(pid, &resource)
        };
        if let Some(conn) = self.table.get_mut(conn_id) {
            conn.meta.netns = netns;
        }
        self.conn_procs
            .insert(conn_id, ConnProcess { resource, threads });
    }

    /// The network namespace of `pid` (whose resource is `resource`), read from `/proc` once
    /// per process and only through the pid map (`None` when the agent's `/proc` does not show
    /// the process).
    fn netns_of(&mut self, pid: u32, resource: &std::sync::Arc<ProcessResource>) -> Option<u64> {
        if let Some((cached, netns)) = self.netns_by_pid.get(&pid)
            && std::sync::Arc::ptr_eq(cached, resource)
        {
            return *netns;
        }
        let netns = self
            .resources
            .proc_pid(pid)
            .and_then(|p| netns_inode(&self.opts.proc_root, p));
        if self.netns_by_pid.len() >= SNIFF_MEMORY {
            self.netns_by_pid.clear();
        }
        self.netns_by_pid
            .insert(pid, (std::sync::Arc::clone(resource), netns));
        netns
    }

    /// Reads /proc for a connection adopted by sniffing, now, while the process surely runs.
    pub fn presolve_sniffed(&mut self, conn_id: u64, pid: u32, fd: i32) {
        if self.presolved.len() >= SNIFF_MEMORY {
            self.presolved.clear();
        }
        let kind = self.inspect_fd(pid, fd);
        self.presolved.insert(conn_id, kind);
    }

    fn ignore(&mut self, conn_id: u64, pid: u32, fd: i32) {
        if self.ignored.len() >= SNIFF_MEMORY {
            self.ignored.clear();
        }
        self.ignored.insert(conn_id);
        self.not_sockets.push((pid, fd));
        let mut dropped = Vec::new();
        self.table.close(conn_id, 0, &mut dropped);
    }

    /// Fds the kernel should stop following (drained by the agent).
    pub fn take_ignored_fds(&mut self) -> Vec<(u32, i32)> {
        std::mem::take(&mut self.not_sockets)
    }

    fn meta_from(header: &RecordHeader, role: Option<Role>) -> ConnMeta {
        ConnMeta {
            conn_id: header.conn_id,
            pid: header.tgid,
            fd: header.fd,
            role,
            local: None,
            peer: None,
            netns: None,
            tls: false,
        }
    }

    /// Handles one kernel event.
    pub fn on_event(&mut self, event: KernelEvent<'_>, out: &mut impl SpanOutput) {
        self.stats.events += 1;
        if self.ignored.contains(&event.header().conn_id) {
            return;
        }
        let mut done = std::mem::take(&mut self.scratch);
        match event {
            KernelEvent::ConnOpen {
                header,
                role,
                local,
                peer,
                netns,
            } => {
                let mut meta = Self::meta_from(&header, role);
                meta.local = local;
                meta.peer = peer;
                tracing::trace!(
                    conn_id = meta.conn_id,
                    pid = meta.pid,
                    fd = meta.fd,
                    ?role,
                    ?local,
                    ?peer,
                    "connection opened"
                );
                // Read the process's resource now, while it surely still runs (a short-lived
                // client may be gone by the time its span is built).
                self.table.open(meta, header.ts_ns, false, &mut done);
                self.bind_process(header.conn_id, header.tgid, netns);
                if needs_proc(role, local, peer) {
                    self.resolve_sniffed(header.conn_id);
                }
                if role == Some(Role::Client)
                    && let Some(conn) = self.table.get_mut(header.conn_id)
                {
                    self.linker.client_opened(&conn.meta);
                }
            }
            KernelEvent::Data {
                header,
                direction,
                role,
                true_len,
                payload,
                loss_before,
                tls,
                ..
            } => {
                self.stats.data_bytes += u64::from(true_len);
                if let Some(k) = self.kernel_ids.as_mut()
                    && !tls
                {
                    k.data(
                        header.conn_id,
                        direction,
                        header.ts_ns,
                        true_len,
                        loss_before,
                    );
                }
                let mut exchanges = std::mem::take(&mut self.exchanges);
                if self.table.get_mut(header.conn_id).is_none() {
                    self.stats.records_unknown_connection += 1;
                    let meta = Self::meta_from(&header, role);
                    self.table.open(meta, header.ts_ns, true, &mut done);
                    self.bind_process(header.conn_id, header.tgid, None);
                    self.resolve_sniffed(header.conn_id);
                }
                if let Some(conn) = self.table.get_mut(header.conn_id) {
                    conn.last_activity_ns = header.ts_ns;
                    if conn.role() == Some(Role::Server)
                        && direction == crate::model::Direction::Egress
                    {
                        self.linker.response_started(header.conn_id);
                    }
                    // A TLS connection's ciphertext never counts as a loss of its plaintext
                    // stream (the kernel stops sending it; what it sent is skipped).
                    if loss_before && (tls || !conn.http.is_tls_plaintext()) {
                        // Never pair across a hole: drop what was pending (counted) and resync.
                        for sequence in conn.http.on_loss(&mut exchanges) {
                            self.linker.take(header.conn_id, sequence);
                        }
                        conn.linked_upto = conn.http.next_sequence();
                    }
                    if tls {
                        let switching = !conn.http.is_tls_plaintext();
                        let discarded = conn.http.on_tls_record(
                            direction,
                            payload,
                            true_len,
                            header.tid,
                            header.ts_ns,
                            &mut exchanges,
                        );
                        for sequence in discarded {
                            self.linker.take(header.conn_id, sequence);
                        }
                        if switching {
                            // A fresh framer numbers its requests from zero again.
                            conn.meta.tls = true;
                            conn.linked_upto = 0;
                        }
                    } else {
                        conn.http.on_record(
                            direction,
                            payload,
                            true_len,
                            header.tid,
                            header.ts_ns,
                            &mut exchanges,
                        );
                    }
                    // HTTP/2 streams dropped at the open-stream bound: release their identities.
                    for sequence in conn.http.take_discarded() {
                        self.linker.take(header.conn_id, sequence);
                    }
                    if let Some(role) = conn.role() {
                        let mut next = conn.linked_upto;
                        let threads = self
                            .conn_procs
                            .get(&header.conn_id)
                            .map_or(Threads::Unknown, |p| p.threads);
                        for start in conn.http.pending_heads_from(conn.linked_upto) {
                            if let Some(kernel) = self
                                .kernel_ids
                                .as_mut()
                                .and_then(|k| k.take(header.conn_id, start.start_ns))
                            {
                                self.linker.set_kernel_identity(
                                    header.conn_id,
                                    start.sequence,
                                    kernel,
                                );
                            }
                            self.linker
                                .request_started(&conn.meta, role, &start, threads);
                            if dropped_as_telemetry(start.request, self.opts.include_telemetry) {
                                self.linker
                                    .mark_telemetry(conn.meta.conn_id, start.sequence);
                            }
                            next = next.max(start.sequence + 1);
                        }
                        conn.linked_upto = next;
                    }
                    if !exchanges.is_empty() {
                        let role = conn.role();
                        let meta = conn.meta.clone();
                        done.extend(exchanges.drain(..).map(|e| (meta.clone(), role, e)));
                    }
                }
                self.exchanges = exchanges;
                if self.table.account(header.conn_id) {
                    for (conn_id, sequences) in self.table.shed(&mut done) {
                        for sequence in sequences {
                            self.linker.take(conn_id, sequence);
                        }
                    }
                }
            }
            KernelEvent::Identity {
                header,
                direction,
                flags,
                offset,
                trace_id,
                span_id,
                parent_span_id,
            } => {
                if let Some(k) = self.kernel_ids.as_mut() {
                    let identity = crate::correlate::kernel_ids::KernelIdentity {
                        trace_id,
                        span_id,
                        parent_span_id,
                        from_option: flags & tracer_common::propagation::IDENTITY_FROM_OPTION != 0,
                    };
                    k.identity(header.conn_id, direction, offset, identity);
                }
            }
            KernelEvent::ConnClose { header } => {
                if self.table.get_mut(header.conn_id).is_none() {
                    self.stats.records_unknown_connection += 1;
                }
                self.table.close(header.conn_id, header.ts_ns, &mut done);
            }
        }
        self.emit_all(&mut done, out);
        self.scratch = done;
        self.forget_removed_connections();
    }

    /// Connections the table removed (closed, expired idle, evicted) are forgotten by the
    /// linker, the kernel identities and the process map.
    fn forget_removed_connections(&mut self) {
        for conn_id in self.table.take_removed() {
            self.linker.conn_closed(conn_id);
            if let Some(k) = self.kernel_ids.as_mut() {
                k.conn_closed(conn_id);
            }
            self.conn_procs.remove(&conn_id);
        }
    }

    /// Periodic housekeeping: expires waiting requests and idle connections.
    pub fn tick(&mut self, now_mono_ns: u64, out: &mut impl SpanOutput) {
        if now_mono_ns.saturating_sub(self.last_process_sweep_ns) >= PROCESS_SWEEP_NS {
            self.last_process_sweep_ns = now_mono_ns;
            self.resources.sweep_exited();
            self.runtimes.sweep_exited();
            // A pid told to the kernel may now be another process (its mark left with the old
            // one's exit): tell again whoever binds next.
            self.dedicated_told.clear();
            // Processes whose resource nobody holds any more (exited, evicted, re-read).
            self.netns_by_pid
                .retain(|_, (resource, _)| std::sync::Arc::strong_count(resource) > 1);
        }
        let mut done = std::mem::take(&mut self.scratch);
        let resources = &self.resources;
        self.unseen_closes
            .look_up(now_mono_ns, &mut self.table, |pid| resources.proc_pid(pid));
        self.table.sweep(now_mono_ns, &mut done);
        self.emit_all(&mut done, out);
        self.scratch = done;
        self.forget_removed_connections();
    }

    /// Sniffed connections carry no addresses: ask /proc, and drop fds that are not sockets.
    fn resolve_sniffed(&mut self, conn_id: u64) {
        let Some(conn) = self.table.get_mut(conn_id) else {
            return;
        };
        if conn.resolved {
            return;
        }
        conn.resolved = true;
        let (pid, fd) = (conn.meta.pid, conn.meta.fd);
        let kind = match self.presolved.remove(&conn_id) {
            Some(kind) => kind,
            None => self.inspect_fd(pid, fd),
        };
        tracing::trace!(conn_id, pid, fd, ?kind, "sniffed connection resolved");
        let Some(conn) = self.table.get_mut(conn_id) else {
            return;
        };
        match kind {
            FdKind::Socket { local, peer } => {
                conn.meta.local = conn.meta.local.or(local);
                conn.meta.peer = conn.meta.peer.or(peer);
                let meta = conn.meta.clone();
                let mirror = match (&self.agent_mirror, meta.local, meta.peer) {
                    (Some(check), Some(local), Some(peer)) => check(local, peer),
                    _ => false,
                };
                if mirror {
                    // The kernel saw no peer at accept, so it could not exclude the other end
                    // of the agent's own export or watch: do it now.
                    self.stats.sniffed_agent_mirrors += 1;
                    self.ignore(conn_id, pid, fd);
                } else if !self.port_allowed(&meta) {
                    // Adopted by sniffing, so the kernel could not apply the port filter: stop
                    // its records at the source.
                    self.stats.sniffed_filtered_out += 1;
                    self.ignore(conn_id, pid, fd);
                }
            }
            FdKind::NotSocket => {
                self.stats.sniffed_not_socket += 1;
                self.ignore(conn_id, pid, fd);
            }
            FdKind::Unknown => {}
        }
    }

    fn port_allowed(&self, meta: &ConnMeta) -> bool {
        if self.opts.ports.is_empty() {
            return true;
        }
        let ports = [meta.local.map(|a| a.port()), meta.peer.map(|a| a.port())];
        ports.iter().flatten().any(|p| self.opts.ports.contains(p))
    }

    fn emit_all(
        &mut self,
        done: &mut Vec<(ConnMeta, Option<Role>, Exchange)>,
        out: &mut impl SpanOutput,
    ) {
        for (meta, role, exchange) in done.drain(..) {
            let Some(role) = role else {
                self.stats.exchanges_without_role += 1;
                self.linker.take(meta.conn_id, exchange.sequence);
                continue;
            };
            if !self.port_allowed(&meta) {
                // Its head may have been given an identity: release it (never left pending).
                self.linker.take(meta.conn_id, exchange.sequence);
                if meta.local.is_none() && meta.peer.is_none() {
                    self.stats.exchanges_ports_unknown += 1;
                }
                continue;
            }
            // The identity was assigned when the request head was parsed (see `linker`); an
            // exchange whose head the linker never saw falls back to its own headers.
            let identity = self.linker.take(meta.conn_id, exchange.sequence);
            // A request the linker named was classified when its head was parsed: unless it was
            // marked telemetry (itself or by descent), it is not dropped, so it is not classified
            // twice.
            let telemetry = match &identity {
                Some(id) if !id.telemetry => None,
                _ => own::classify(&exchange.request),
            };
            match telemetry {
                Some(Telemetry::Own) => {
                    self.stats.own_telemetry_dropped += 1;
                    continue;
                }
                Some(Telemetry::Pipeline) if !self.opts.include_telemetry => {
                    self.stats.telemetry_pipeline_dropped += 1;
                    continue;
                }
                _ => {}
            }
            if identity.as_ref().is_some_and(|id| id.telemetry) {
                // Linked under a dropped telemetry request: its parent never arrives.
                self.stats.telemetry_descendants_dropped += 1;
                continue;
            }
            let paired_client = identity.as_ref().and_then(|id| id.paired_client);
            let identity = identity.unwrap_or_else(|| {
                SpanIdentity::from_request(
                    propagation::extract(&exchange.request.headers),
                    &self.trace_ids,
                    exchange.start_ns,
                )
            });
            let input = SpanInput {
                exchange: &exchange,
                conn: &meta,
                role,
                clock: &self.clock,
            };
            let span = spans::build_span(&input, &identity);
            let resource = match self.conn_procs.get(&meta.conn_id) {
                Some(process) => std::sync::Arc::clone(&process.resource),
                None => self.resources.get(meta.pid),
            };
            if let (Some(graph), Some(client)) = (&self.service_graph, paired_client) {
                graph.note_pair(span.span_id, client);
            }
            self.stats.spans += 1;
            out.emit(ExportItem { span, resource });
        }
    }
}

/// Whether `request` is telemetry whose exchange is dropped (see `own::classify`).
fn dropped_as_telemetry(request: &crate::model::HttpRequest, include_telemetry: bool) -> bool {
    match own::classify(request) {
        Some(Telemetry::Own) => true,
        Some(Telemetry::Pipeline) => !include_telemetry,
        None => false,
    }
}

/// Whether a new connection's endpoints must come from /proc: adopted by sniffing, accepted by
/// a thread that was already blocked in accept() when the probes attached (no peer address), or
/// accepted before the kernel traced the handshake's end (no local address: PREEMPT_RT, where
/// accept() can return first; the kernel left the port filter to userspace then).
/// A client whose non-blocking connect returned early gets its endpoints from the kernel with its
/// first write instead.
pub fn needs_proc(
    role: Option<Role>,
    local: Option<std::net::SocketAddr>,
    peer: Option<std::net::SocketAddr>,
) -> bool {
    match role {
        None => true,
        Some(Role::Server) => peer.is_none() || local.is_none(),
        Some(Role::Client) => false,
    }
}

#[cfg(test)]
#[path = "pipeline_test_harness.rs"]
mod test_harness;

#[cfg(test)]
#[path = "pipeline_h2_tests.rs"]
mod h2_tests;

#[cfg(test)]
#[path = "pipeline_tls_tests.rs"]
mod tls_tests;

#[cfg(test)]
#[path = "pipeline_unseen_close_tests.rs"]
mod unseen_close_tests;

#[cfg(test)]
mod tests {
    use super::test_harness::{Harness, fake_process};
    use super::*;
    use crate::model::Direction;

    /// P1 has a request pending when P2 takes its pid (and the agent prefetches P2's resource):
    /// P1's span still carries P1's service.name.
    #[test]
    fn a_reused_pid_does_not_rename_the_previous_process_spans() {
        let mut h = Harness::new("reused-pid", &[]);
        let pid = 4242;
        fake_process(&h.root, pid, "first", 100, None);
        let header = |ts_ns| RecordHeader {
            tgid: pid,
            tid: pid,
            fd: 3,
            conn_id: 1,
            ts_ns,
        };
        let data = |ts, direction, payload: &'static [u8]| KernelEvent::Data {
            header: header(ts),
            direction,
            role: Some(Role::Server),
            true_len: payload.len() as u32,
            syscall_ns: 0,
            loss_before: false,
            tls: false,
            payload,
        };
        h.pipeline.prefetch_resource(pid);
        h.pipeline.on_event(
            KernelEvent::ConnOpen {
                header: header(1_000),
                role: Some(Role::Server),
                local: "127.0.0.1:8000".parse().ok(),
                peer: "127.0.0.1:40000".parse().ok(),
                netns: None,
            },
            &mut h.out,
        );
        h.pipeline.on_event(
            data(
                2_000,
                Direction::Ingress,
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            &mut h.out,
        );
        // P1 exits; P2 gets the pid and opens a connection of its own.
        fake_process(&h.root, pid, "second", 200, None);
        h.pipeline.prefetch_resource(pid);
        h.pipeline.on_event(
            data(
                3_000,
                Direction::Egress,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ),
            &mut h.out,
        );
        assert_eq!(h.out.len(), 1);
        assert_eq!(h.out[0].resource.service_name, "first");
    }

    /// Endpoints come from /proc for sniffed connections and for accepted ones missing either
    /// end (a PREEMPT_RT accept() returns before the handshake's end is traced: no local end);
    /// never for clients (their first write announces them).
    #[test]
    fn accepted_connections_missing_an_end_read_proc() {
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().ok();
        let (local, peer) = (addr("127.0.0.1:8000"), addr("127.0.0.1:40000"));
        assert!(needs_proc(None, None, None));
        assert!(needs_proc(Some(Role::Server), local, None));
        assert!(needs_proc(Some(Role::Server), None, peer));
        assert!(!needs_proc(Some(Role::Server), local, peer));
        assert!(!needs_proc(Some(Role::Client), None, peer));
    }

    /// The telemetry rules hold for HTTP/2 requests as the exchange layer builds them: a gRPC
    /// OTLP export (`:path` `/opentelemetry.proto.collector.*`) is pipeline telemetry, and the
    /// agent's mark travels in the HPACK-decoded `user-agent`.
    #[test]
    fn http2_exports_are_telemetry() {
        use crate::model::{Header, HttpRequest, HttpVersion, Text};
        let request = |path: &str, agent: &str| HttpRequest {
            method: "POST".into(),
            target: path.to_owned().into(),
            version: HttpVersion::Http2,
            headers: vec![
                Header {
                    name: Text::Static(":authority"),
                    value: bytes::Bytes::from_static(b"collector:4317"),
                },
                Header {
                    name: Text::Static("content-type"),
                    value: bytes::Bytes::from_static(b"application/grpc"),
                },
                Header {
                    name: Text::Static("user-agent"),
                    value: bytes::Bytes::copy_from_slice(agent.as_bytes()),
                },
            ],
            body_len: 0,
        };
        let export = request(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            "grpc-go/1.60",
        );
        assert!(dropped_as_telemetry(&export, false));
        assert!(!dropped_as_telemetry(&export, true));
        let ours = request("/helloworld.Greeter/SayHello", "tracer-agent/0.1 grpc");
        assert!(dropped_as_telemetry(&ours, true));
        let app = request("/helloworld.Greeter/SayHello", "grpc-python/1.60");
        assert!(!dropped_as_telemetry(&app, false));
    }
}
