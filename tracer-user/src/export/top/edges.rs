//! The service-edge view of `tracer top`: one edge per (client service -> server service), from
//! the same links as spans: a CLIENT span and the SERVER span whose parent it is. Each request is
//! counted once, on the CLIENT span (its duration is what the caller waited). A CLIENT span whose
//! SERVER child does not show up within [`PAIR_WAIT_SECONDS`] goes to a virtual server node
//! named by its address (`server.address:server.port`): an untraced peer, or one on another
//! host. SERVER spans whose CLIENT parent is not traced here make no edge.
//!
//! Bounded: at most [`MAX_PENDING`] spans wait for their other half (past it they are counted in
//! `unpaired_dropped`) and at most `max_edges` edges (past it requests are counted in the
//! overflow edge).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::sketch::LatencySketch;
use crate::model::{AttrValue, ExportItem, ProcessResource, SpanKind, SpanStatus};
use crate::telemetry::semconv;

/// Seconds a CLIENT span waits for its SERVER child (and a SERVER span for its CLIENT parent).
pub const PAIR_WAIT_SECONDS: u64 = 2;
/// Spans waiting for their other half, per side.
pub const MAX_PENDING: usize = 4096;

/// One edge of the graph.
#[derive(Clone, Debug)]
pub struct Edge {
    pub client: String,
    pub server: String,
    /// The server is not traced here: named by its address.
    pub virtual_server: bool,
    /// The overflow edge (edges past the bound).
    pub overflow: bool,
    pub count: u64,
    pub errors: u64,
    pub sketch: LatencySketch,
    next: Option<u32>,
}

#[derive(Debug)]
struct PendingClient {
    resource: Arc<ProcessResource>,
    item_peer: Option<(crate::model::Text, Option<i64>)>,
    duration_ns: u64,
    error: bool,
    due_second: u64,
}

#[derive(Debug)]
struct PendingServer {
    resource: Arc<ProcessResource>,
    due_second: u64,
}

/// Counters of the edge view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeStats {
    pub unpaired_dropped: u64,
    pub overflow_requests: u64,
}

#[derive(Debug, Default)]
pub struct EdgeTable {
    max_edges: usize,
    pub edges: Vec<Edge>,
    index: HashMap<u64, u32>,
    overflow: Option<u32>,
    /// CLIENT spans by span id, waiting for their SERVER child.
    clients: HashMap<[u8; 8], PendingClient>,
    /// SERVER spans by parent span id, waiting for their CLIENT parent.
    servers: HashMap<[u8; 8], PendingServer>,
    swept_second: u64,
    scratch: String,
    pub stats: EdgeStats,
}

fn str_attr<'a>(item: &'a ExportItem, key: &str) -> Option<&'a crate::model::Text> {
    item.span.attributes.iter().find_map(|a| match &a.value {
        AttrValue::Str(s) if a.key == key => Some(s),
        _ => None,
    })
}

fn int_attr(item: &ExportItem, key: &str) -> Option<i64> {
    item.span.attributes.iter().find_map(|a| match &a.value {
        AttrValue::Int(i) if a.key == key => Some(*i),
        _ => None,
    })
}

fn edge_hash(client: &str, server: &str, virtual_server: bool) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    client.hash(&mut h);
    server.hash(&mut h);
    virtual_server.hash(&mut h);
    h.finish()
}

impl EdgeTable {
    pub fn new(max_edges: usize) -> Self {
        EdgeTable {
            max_edges,
            ..Default::default()
        }
    }

    /// Takes one span; `now_second` drives the expiry of unpaired CLIENT spans.
    pub fn record(&mut self, item: &ExportItem, now_second: u64) {
        let span = &item.span;
        let due_second = now_second + PAIR_WAIT_SECONDS;
        match span.kind {
            SpanKind::Client => {
                let duration_ns = span.end_unix_ns.saturating_sub(span.start_unix_ns);
                let error = matches!(span.status, SpanStatus::Error { .. });
                if let Some(server) = self.servers.remove(&span.span_id) {
                    self.count(
                        &item.resource.service_name,
                        &server.resource.service_name,
                        false,
                        duration_ns,
                        error,
                    );
                } else if self.clients.len() < MAX_PENDING {
                    let peer = str_attr(item, semconv::SERVER_ADDRESS)
                        .or_else(|| str_attr(item, semconv::NETWORK_PEER_ADDRESS))
                        .map(|a| {
                            let port = int_attr(item, semconv::SERVER_PORT)
                                .or_else(|| int_attr(item, semconv::NETWORK_PEER_PORT));
                            (a.clone(), port)
                        });
                    self.clients.insert(
                        span.span_id,
                        PendingClient {
                            resource: Arc::clone(&item.resource),
                            item_peer: peer,
                            duration_ns,
                            error,
                            due_second,
                        },
                    );
                } else {
                    self.stats.unpaired_dropped += 1;
                }
            }
            SpanKind::Server => {
                let Some(parent) = span.parent_span_id else {
                    return;
                };
                if let Some(client) = self.clients.remove(&parent) {
                    self.count(
                        &client.resource.service_name,
                        &item.resource.service_name,
                        false,
                        client.duration_ns,
                        client.error,
                    );
                } else if self.servers.len() < MAX_PENDING {
                    self.servers.insert(
                        parent,
                        PendingServer {
                            resource: Arc::clone(&item.resource),
                            due_second,
                        },
                    );
                } else {
                    self.stats.unpaired_dropped += 1;
                }
            }
        }
    }

    /// Once a second: CLIENT spans past their wait become edges to their peer's address;
    /// SERVER spans past it are forgotten.
    pub fn sweep(&mut self, now_second: u64) {
        if now_second == self.swept_second {
            return;
        }
        self.swept_second = now_second;
        self.servers.retain(|_, s| s.due_second > now_second);
        let expired: Vec<[u8; 8]> = self
            .clients
            .iter()
            .filter(|(_, c)| c.due_second <= now_second)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(c) = self.clients.remove(&id) else {
                continue;
            };
            let mut name = std::mem::take(&mut self.scratch);
            name.clear();
            match &c.item_peer {
                Some((address, Some(port))) => {
                    use std::fmt::Write as _;
                    let _ = write!(name, "{address}:{port}");
                }
                Some((address, None)) => name.push_str(address),
                None => name.push_str("unknown"),
            }
            self.count(
                &c.resource.service_name,
                &name,
                true,
                c.duration_ns,
                c.error,
            );
            self.scratch = name;
        }
    }

    /// At exit, when no more spans come: every CLIENT span still waiting goes to its peer's
    /// address, SERVER spans still waiting are forgotten.
    pub fn finish(&mut self) {
        self.swept_second = 0;
        self.sweep(u64::MAX);
    }

    fn count(&mut self, client: &str, server: &str, virtual_server: bool, ns: u64, error: bool) {
        let hash = edge_hash(client, server, virtual_server);
        let mut at = self.index.get(&hash).copied();
        let mut found = None;
        while let Some(i) = at {
            let e = &self.edges[i as usize];
            if e.client == client && e.server == server && e.virtual_server == virtual_server {
                found = Some(i as usize);
                break;
            }
            at = e.next;
        }
        let i = match found {
            Some(i) => i,
            None if self.edges.len() < self.max_edges => {
                let head = self.index.insert(hash, self.edges.len() as u32);
                self.edges.push(Edge {
                    client: client.to_owned(),
                    server: server.to_owned(),
                    virtual_server,
                    overflow: false,
                    count: 0,
                    errors: 0,
                    sketch: LatencySketch::default(),
                    next: head,
                });
                self.edges.len() - 1
            }
            None => {
                self.stats.overflow_requests += 1;
                match self.overflow {
                    Some(i) => i as usize,
                    None => {
                        self.edges.push(Edge {
                            client: "(other)".to_owned(),
                            server: "(other)".to_owned(),
                            virtual_server: false,
                            overflow: true,
                            count: 0,
                            errors: 0,
                            sketch: LatencySketch::default(),
                            next: None,
                        });
                        let i = self.edges.len() - 1;
                        self.overflow = Some(i as u32);
                        i
                    }
                }
            }
        };
        let e = &mut self.edges[i];
        e.count += 1;
        e.errors += u64::from(error);
        e.sketch.record_ns(ns);
    }
}
