//! The bounded table of traced connections: identity (pid, fd, connection id), role, addresses,
//! the HTTP framer of each, idle expiry, and counters for everything evicted or dropped.

use crate::idhash::IdHashMap;

use crate::model::{ConnMeta, Exchange, Role};
use crate::protocols::http1::{HttpLimits, HttpStats};
use crate::protocols::http2::{Http2Limits, Http2Stats};
use crate::protocols::select::{ProtocolConnection, TlsStats};

/// Bounds of the table.
#[derive(Clone, Copy, Debug)]
pub struct TableLimits {
    /// Connections tracked at once; the least recently active are evicted beyond it.
    pub max_connections: usize,
    /// A request waiting this long for its response is emitted as expired.
    pub request_timeout_ns: u64,
    /// An idle connection (no pending request) is forgotten after this long.
    pub idle_timeout_ns: u64,
    pub http: HttpLimits,
    /// Heap bytes all connections may hold in head buffers and pending requests together; past
    /// it the least recently active connections holding bytes are shed (counted).
    pub max_buffered_bytes: usize,
    /// Bounds of HTTP/2 connections.
    pub http2: Http2Limits,
}

/// Default of [`TableLimits::max_buffered_bytes`].
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            max_connections: 65_536,
            request_timeout_ns: 30_000_000_000,
            idle_timeout_ns: 300_000_000_000,
            http: HttpLimits::default(),
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            http2: Http2Limits::default(),
        }
    }
}

/// Table counters (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub opened: u64,
    pub closed: u64,
    /// Connections created from a data record whose open record was lost.
    pub opened_late: u64,
    /// Evicted because the table was full (their pending requests are emitted as expired).
    pub evicted_full: u64,
    /// Forgotten after idling.
    pub expired_idle: u64,
    /// Replaced because a new connection reused the same (pid, fd) before its close was seen.
    pub replaced_fd_reuse: u64,
    /// Connections whose buffered bytes and pending requests were dropped to stay within
    /// `max_buffered_bytes`; they are not parsed again until they close.
    pub budget_sheds: u64,
    /// Bytes released by those sheds.
    pub budget_bytes_shed: u64,
    /// Pending requests discarded by those sheds.
    pub budget_requests_shed: u64,
    /// Connections closed because /proc showed their fd gone while requests waited on them:
    /// closed without a close record (process exit, exec, a wide close_range). Also counted in
    /// `closed`.
    pub closed_unseen: u64,
}

/// One traced connection.
pub struct Tracked {
    pub meta: ConnMeta,
    /// The HTTP/1.x or HTTP/2 state (chosen on the first captured bytes).
    pub http: ProtocolConnection,
    pub last_activity_ns: u64,
    /// Whether /proc has been consulted for this (sniffed) connection's addresses.
    pub resolved: bool,
    /// Requests below this sequence number have been given an identity by the linker.
    pub linked_upto: u64,
    /// Heap bytes last accounted to this connection in the table's budget.
    pub accounted: usize,
    /// When /proc was last asked whether this connection's fd still exists (0: never); see
    /// `correlate/unseen_close.rs`.
    pub fd_checked_ns: u64,
}

impl Tracked {
    /// Role from the kernel, else as inferred by the framer.
    pub fn role(&self) -> Option<Role> {
        self.meta.role.or_else(|| self.http.role())
    }
}

/// Connections by id, plus the (pid, fd) index that detects fd reuse.
pub struct ConnectionTable {
    limits: TableLimits,
    conns: IdHashMap<u64, Tracked>,
    by_fd: IdHashMap<(u32, i32), u64>,
    stats: TableStats,
    /// Framer counters of connections already removed.
    http_totals: HttpStats,
    /// HTTP/2 counters of connections already removed.
    http2_totals: Http2Stats,
    /// TLS counters of connections already removed.
    tls_totals: TlsStats,
    /// Ids of connections removed since the last `take_removed` (for the linker's cleanup).
    removed: Vec<u64>,
    /// Sum of `accounted` over the table.
    buffered: usize,
}

impl ConnectionTable {
    pub fn new(limits: TableLimits) -> Self {
        ConnectionTable {
            limits,
            conns: IdHashMap::default(),
            by_fd: IdHashMap::default(),
            stats: TableStats::default(),
            http_totals: HttpStats::default(),
            http2_totals: Http2Stats::default(),
            tls_totals: TlsStats::default(),
            removed: Vec::new(),
            buffered: 0,
        }
    }

    /// Heap bytes accounted to connections now (head buffers and pending requests).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Re-accounts `conn_id` after it consumed a record. Returns whether the table is now over
    /// its byte budget (then call [`ConnectionTable::shed`]).
    pub fn account(&mut self, conn_id: u64) -> bool {
        if let Some(c) = self.conns.get_mut(&conn_id) {
            let now = c.http.memory_bytes();
            self.buffered = self.buffered - c.accounted + now;
            c.accounted = now;
        }
        self.buffered > self.limits.max_buffered_bytes
    }

    fn unaccount(&mut self, c: &Tracked) {
        self.buffered = self.buffered.saturating_sub(c.accounted);
    }

    /// Brings the table under seven eighths of its byte budget by shedding the buffers and
    /// pending requests of the least recently active connections that hold any; a shed
    /// connection stays tracked but is not parsed again until it closes (see
    /// `HttpConnection::shed`). Complete exchanges go to `out`; returns the (connection,
    /// discarded sequences) for the linker. Candidates are picked a sixteenth at a time with a
    /// selection, not a sort of the whole table.
    pub fn shed(
        &mut self,
        out: &mut Vec<(ConnMeta, Option<Role>, Exchange)>,
    ) -> Vec<(u64, Vec<u64>)> {
        let target = self.limits.max_buffered_bytes / 8 * 7;
        let mut holders: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.accounted > 0)
            .map(|(id, c)| (c.last_activity_ns, *id))
            .collect();
        let mut discarded = Vec::new();
        while self.buffered > target && !holders.is_empty() {
            let n = (holders.len() / 16).max(1).min(holders.len());
            if holders.len() > n {
                holders.select_nth_unstable(n - 1);
            }
            let mut batch: Vec<(u64, u64)> = holders.drain(..n).collect();
            batch.sort_unstable();
            for (_, id) in batch {
                if self.buffered <= target {
                    break;
                }
                let Some(c) = self.conns.get_mut(&id) else {
                    continue;
                };
                let mut exchanges = Vec::new();
                let seqs = c.http.shed(&mut exchanges);
                c.linked_upto = c.http.next_sequence();
                let now = c.http.memory_bytes();
                let freed = c.accounted.saturating_sub(now);
                self.buffered = self.buffered - c.accounted + now;
                c.accounted = now;
                self.stats.budget_sheds += 1;
                self.stats.budget_bytes_shed += freed as u64;
                self.stats.budget_requests_shed += seqs.len() as u64;
                let role = c.role();
                out.extend(exchanges.into_iter().map(|e| (c.meta.clone(), role, e)));
                discarded.push((id, seqs));
            }
        }
        tracing::debug!(
            buffered = self.buffered,
            budget = self.limits.max_buffered_bytes,
            "byte budget exceeded; shed the least recently active connections' buffers"
        );
        discarded
    }

    /// Connections removed (closed, evicted, expired, replaced) since the last call.
    pub fn take_removed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.removed)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Framer counters of all connections, live and removed.
    pub fn http_stats(&self) -> HttpStats {
        let mut total = self.http_totals.clone();
        for c in self.conns.values() {
            total.merge(&c.http.stats());
        }
        total
    }

    /// HTTP/2 counters of all connections, live and removed.
    pub fn http2_stats(&self) -> Http2Stats {
        let mut total = self.http2_totals.clone();
        for c in self.conns.values() {
            if let Some(stats) = c.http.http2_stats() {
                total.merge(&stats);
            }
        }
        total
    }

    /// TLS counters of all connections, live and removed.
    pub fn tls_stats(&self) -> TlsStats {
        let mut total = self.tls_totals.clone();
        for c in self.conns.values() {
            total.merge(c.http.tls_stats());
        }
        total
    }

    /// Keeps the counters of a connection that leaves the table.
    fn retire_stats(&mut self, c: &Tracked) {
        self.tls_totals.merge(c.http.tls_stats());
        self.http_totals.merge(&c.http.stats());
        if let Some(stats) = c.http.http2_stats() {
            self.http2_totals.merge(&stats);
        }
    }

    pub fn get_mut(&mut self, conn_id: u64) -> Option<&mut Tracked> {
        self.conns.get_mut(&conn_id)
    }

    /// Starts tracking a connection. A previous connection on the same (pid, fd) is closed first
    /// (its close record was lost or never came); its exchanges go to `out`.
    pub fn open(
        &mut self,
        meta: ConnMeta,
        now_ns: u64,
        late: bool,
        out: &mut Vec<(ConnMeta, Option<Role>, Exchange)>,
    ) {
        let fd_key = (meta.pid, meta.fd);
        if let Some(old) = self.by_fd.get(&fd_key).copied()
            && old != meta.conn_id
        {
            self.stats.replaced_fd_reuse += 1;
            self.close(old, now_ns, out);
        }
        if let Some(existing) = self.conns.get_mut(&meta.conn_id) {
            // A second announcement carries endpoints learnt after connect returned.
            existing.meta.local = meta.local.or(existing.meta.local);
            existing.meta.peer = meta.peer.or(existing.meta.peer);
            return;
        }
        if self.conns.len() >= self.limits.max_connections {
            self.evict_oldest(now_ns, out);
        }
        if late {
            self.stats.opened_late += 1;
        } else {
            self.stats.opened += 1;
        }
        self.by_fd.insert(fd_key, meta.conn_id);
        let http = ProtocolConnection::new(meta.role, self.limits.http, self.limits.http2);
        let resolved = meta.local.is_some() && meta.peer.is_some();
        self.conns.insert(
            meta.conn_id,
            Tracked {
                meta,
                http,
                last_activity_ns: now_ns,
                resolved,
                linked_upto: 0,
                fd_checked_ns: 0,
                accounted: 0,
            },
        );
    }

    /// The connection closed: finish its framer and forget it.
    pub fn close(
        &mut self,
        conn_id: u64,
        now_ns: u64,
        out: &mut Vec<(ConnMeta, Option<Role>, Exchange)>,
    ) {
        let Some(mut c) = self.conns.remove(&conn_id) else {
            return;
        };
        self.unaccount(&c);
        self.stats.closed += 1;
        self.removed.push(conn_id);
        if self.by_fd.get(&(c.meta.pid, c.meta.fd)) == Some(&conn_id) {
            self.by_fd.remove(&(c.meta.pid, c.meta.fd));
        }
        let mut exchanges = Vec::new();
        c.http.on_close(now_ns, &mut exchanges);
        let role = c.role();
        self.retire_stats(&c);
        out.extend(exchanges.into_iter().map(|e| (c.meta.clone(), role, e)));
    }

    /// Connections holding requests quiet for at least `quiet_ns` and due for a look in /proc
    /// (never looked at since their last activity, or the quiet time has doubled since the last
    /// look): `(conn_id, pid, fd)`, at most `max`; each is marked looked at `now_ns`.
    pub fn due_fd_checks(
        &mut self,
        now_ns: u64,
        quiet_ns: u64,
        max: usize,
        out: &mut Vec<(u64, u32, i32)>,
    ) {
        for (id, c) in self.conns.iter_mut() {
            if out.len() >= max {
                break;
            }
            let quiet = now_ns.saturating_sub(c.last_activity_ns);
            if quiet < quiet_ns || c.http.pending_requests() == 0 || c.meta.fd < 0 {
                continue;
            }
            let due = c.fd_checked_ns < c.last_activity_ns
                || now_ns.saturating_sub(c.fd_checked_ns)
                    >= c.fd_checked_ns.saturating_sub(c.last_activity_ns);
            if due {
                c.fd_checked_ns = now_ns;
                out.push((*id, c.meta.pid, c.meta.fd));
            }
        }
    }

    /// Requests waiting for their response over all connections.
    pub fn pending_requests(&self) -> usize {
        self.conns.values().map(|c| c.http.pending_requests()).sum()
    }

    /// The last activity of a tracked connection.
    pub fn last_activity(&self, conn_id: u64) -> Option<u64> {
        self.conns.get(&conn_id).map(|c| c.last_activity_ns)
    }

    /// Closes a connection whose fd /proc showed gone at `gone_at_ns` (no close record will
    /// come): its waiting requests end as `connection_closed` then.
    pub fn close_unseen(
        &mut self,
        conn_id: u64,
        gone_at_ns: u64,
        out: &mut Vec<(ConnMeta, Option<Role>, Exchange)>,
    ) {
        if self.conns.contains_key(&conn_id) {
            self.stats.closed_unseen += 1;
            self.close(conn_id, gone_at_ns, out);
        }
    }

    /// Expires requests waiting too long and forgets idle connections.
    pub fn sweep(&mut self, now_ns: u64, out: &mut Vec<(ConnMeta, Option<Role>, Exchange)>) {
        let mut idle = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            let quiet = now_ns.saturating_sub(c.last_activity_ns);
            if c.http.pending_requests() > 0 && quiet >= self.limits.request_timeout_ns {
                let mut exchanges = Vec::new();
                c.http.on_expire(now_ns, &mut exchanges);
                let now = c.http.memory_bytes();
                self.buffered = self.buffered - c.accounted + now;
                c.accounted = now;
                let role = c.role();
                out.extend(exchanges.into_iter().map(|e| (c.meta.clone(), role, e)));
            } else if quiet >= self.limits.idle_timeout_ns {
                idle.push(*id);
            }
        }
        for id in idle {
            if let Some(c) = self.conns.remove(&id) {
                self.unaccount(&c);
                self.stats.expired_idle += 1;
                self.removed.push(id);
                self.retire_stats(&c);
                if self.by_fd.get(&(c.meta.pid, c.meta.fd)) == Some(&id) {
                    self.by_fd.remove(&(c.meta.pid, c.meta.fd));
                }
            }
        }
    }

    /// Evicts the least recently active sixteenth of the table (at least one connection).
    fn evict_oldest(&mut self, now_ns: u64, out: &mut Vec<(ConnMeta, Option<Role>, Exchange)>) {
        let mut ages: Vec<(u64, u64)> = self
            .conns
            .iter()
            .map(|(id, c)| (c.last_activity_ns, *id))
            .collect();
        let n = (ages.len() / 16).max(1);
        if ages.len() > n {
            ages.select_nth_unstable(n - 1);
        }
        for (_, id) in ages.into_iter().take(n) {
            if let Some(mut c) = self.conns.remove(&id) {
                self.unaccount(&c);
                self.stats.evicted_full += 1;
                self.removed.push(id);
                let mut exchanges = Vec::new();
                c.http.on_expire(now_ns, &mut exchanges);
                let role = c.role();
                self.retire_stats(&c);
                if self.by_fd.get(&(c.meta.pid, c.meta.fd)) == Some(&id) {
                    self.by_fd.remove(&(c.meta.pid, c.meta.fd));
                }
                out.extend(exchanges.into_iter().map(|e| (c.meta.clone(), role, e)));
            }
        }
    }
}
