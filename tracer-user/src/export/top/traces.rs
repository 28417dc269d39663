//! Trace trees kept for drill-in: whole traces (every span of a kept trace id, children that
//! ended first included), admitted at most [`TraceLimits::admit_per_second`] new traces a second
//! and at most [`TraceLimits::traces`] at once (oldest evicted). Spans are copied only for kept
//! traces, so the copying is bounded per second, not per span.

use std::collections::{HashMap, VecDeque};

use crate::model::ExportItem;

/// Bounds of the kept traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceLimits {
    pub traces: usize,
    pub spans_per_trace: usize,
    pub admit_per_second: u32,
}

impl Default for TraceLimits {
    fn default() -> Self {
        TraceLimits {
            traces: 512,
            spans_per_trace: 64,
            admit_per_second: 64,
        }
    }
}

/// Counters of the kept traces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Spans of traces not kept (the admission budget of their second was spent).
    pub spans_not_kept: u64,
    /// Spans of kept traces past the per-trace bound.
    pub spans_past_trace_bound: u64,
    /// Traces evicted to admit newer ones.
    pub traces_evicted: u64,
}

#[derive(Debug, Default)]
pub struct TraceStore {
    limits: TraceLimits,
    traces: HashMap<[u8; 16], Vec<ExportItem>>,
    /// Admission order, for eviction.
    order: VecDeque<[u8; 16]>,
    second: u64,
    admitted_this_second: u32,
    pub stats: TraceStats,
}

impl TraceStore {
    pub fn new(limits: TraceLimits) -> Self {
        TraceStore {
            limits,
            ..Default::default()
        }
    }

    /// Keeps a copy of `item` if its trace is kept or can be admitted now; returns whether its
    /// trace is kept.
    pub fn offer(&mut self, item: &ExportItem, now_second: u64) -> bool {
        let id = item.span.trace_id;
        if let Some(spans) = self.traces.get_mut(&id) {
            if spans.len() < self.limits.spans_per_trace {
                spans.push(item.clone());
            } else {
                self.stats.spans_past_trace_bound += 1;
            }
            return true;
        }
        if now_second != self.second {
            self.second = now_second;
            self.admitted_this_second = 0;
        }
        if self.admitted_this_second >= self.limits.admit_per_second || self.limits.traces == 0 {
            self.stats.spans_not_kept += 1;
            return false;
        }
        self.admitted_this_second += 1;
        while self.traces.len() >= self.limits.traces {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.traces.remove(&old).is_some() {
                self.stats.traces_evicted += 1;
            }
        }
        self.traces.insert(id, vec![item.clone()]);
        self.order.push_back(id);
        true
    }

    pub fn get(&self, trace_id: &[u8; 16]) -> Option<&[ExportItem]> {
        self.traces.get(trace_id).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }
}
