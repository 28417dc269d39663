//! What one measured round records, and the figures derived from rounds: throughput ratio and
//! latency deltas against the untraced rounds of the same run, span completeness, drops, and the
//! capture's CPU and memory per request.

use super::agent::DropCounters;
use super::receiver::SpanCounts;
use super::wrk::WrkResult;

/// Who watches the server during a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capture {
    Untraced,
    /// This project's agent.
    Tracer,
    /// The naive bpftrace peer.
    Bpftrace,
}

impl Capture {
    pub fn label(self) -> &'static str {
        match self {
            Capture::Untraced => "untraced",
            Capture::Tracer => "tracer",
            Capture::Bpftrace => "bpftrace",
        }
    }
}

/// Closed-loop saturation or a paced rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadKind {
    Saturation,
    Paced,
}

impl LoadKind {
    pub fn label(self) -> &'static str {
        match self {
            LoadKind::Saturation => "saturation",
            LoadKind::Paced => "paced",
        }
    }
}

/// What the capture process cost and delivered in one round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaptureCost {
    /// CPU seconds (user + system) of the capture process over the round.
    pub cpu_seconds: f64,
    /// Its peak resident set (VmHWM) at the end of the round.
    pub peak_rss_kib: u64,
    /// Its anonymous resident memory (RssAnon) at the end of the round.
    pub anon_rss_kib: u64,
    /// Spans the receiver got during the round (tracer only).
    pub spans: Option<SpanCounts>,
    pub drops: Option<DropCounters>,
    /// Events bpftrace reported lost.
    pub lost_events: Option<u64>,
    /// Bytes bpftrace printed.
    pub printed_bytes: Option<u64>,
}

/// One measured round.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    pub server: &'static str,
    pub load: LoadKind,
    pub capture: Capture,
    pub index: usize,
    pub wrk: WrkResult,
    /// Requests the server handled: its access log's new lines, else wrk's count.
    pub requests: u64,
    pub requests_from_log: bool,
    pub cost: Option<CaptureCost>,
    /// The host's 1-minute load average when the round ended (other work on a shared machine).
    pub host_load: f64,
}

/// The median (the mean of the middle two for an even count): one round disturbed by other work
/// on a shared machine moves it less than the mean.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => values.get(n / 2).copied(),
        _ => Some((values.get(n / 2 - 1)? + values.get(n / 2)?) / 2.0),
    }
}

/// A capture's rounds against the untraced rounds of the same server and load.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub server: &'static str,
    pub load: LoadKind,
    pub capture: Capture,
    pub rounds: usize,
    pub base_rounds: usize,
    pub base_rps: f64,
    pub rps: f64,
    pub base_p50_us: f64,
    pub p50_us: f64,
    pub base_p99_us: f64,
    pub p99_us: f64,
}

impl Comparison {
    /// Throughput with the capture over throughput without (medians of the rounds).
    pub fn ratio(&self) -> f64 {
        if self.base_rps > 0.0 {
            self.rps / self.base_rps
        } else {
            f64::NAN
        }
    }
}

/// What a capture cost and delivered over its rounds of one server and load.
#[derive(Clone, Debug, PartialEq)]
pub struct CostSummary {
    pub server: &'static str,
    pub load: LoadKind,
    pub capture: Capture,
    pub rounds: usize,
    pub rps: f64,
    pub requests: u64,
    pub requests_from_log: bool,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    pub anon_rss_kib: u64,
    pub server_spans: Option<u64>,
    pub kernel_drops: Option<u64>,
    pub userspace_drops: Option<u64>,
    pub lost_events: Option<u64>,
    pub printed_bytes: Option<u64>,
}

impl CostSummary {
    pub fn cpu_seconds_per_10k(&self) -> f64 {
        if self.requests > 0 {
            self.cpu_seconds * 10_000.0 / self.requests as f64
        } else {
            f64::NAN
        }
    }

    /// SERVER spans received over requests handled.
    pub fn completeness(&self) -> Option<f64> {
        let spans = self.server_spans?;
        (self.requests > 0).then(|| spans as f64 / self.requests as f64)
    }

    /// Peak RSS in MB (10^6 bytes), the unit of the target.
    pub fn peak_rss_mb(&self) -> f64 {
        kib_to_mb(self.peak_rss_kib)
    }

    pub fn anon_rss_mb(&self) -> f64 {
        kib_to_mb(self.anon_rss_kib)
    }
}

/// KiB to MB (10^6 bytes).
pub fn kib_to_mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// The (server, load, capture) groups in first-seen order.
fn groups(rounds: &[Round]) -> Vec<(&'static str, LoadKind, Capture)> {
    let mut out = Vec::new();
    for r in rounds {
        let key = (r.server, r.load, r.capture);
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

fn select<'r>(rounds: &'r [Round], key: (&'static str, LoadKind, Capture)) -> Vec<&'r Round> {
    rounds
        .iter()
        .filter(|r| (r.server, r.load, r.capture) == key)
        .collect()
}

/// Every capture's comparison against the untraced rounds of its server and load.
pub fn comparisons(rounds: &[Round]) -> Vec<Comparison> {
    groups(rounds)
        .into_iter()
        .filter(|(_, _, capture)| *capture != Capture::Untraced)
        .filter_map(|(server, load, capture)| {
            let with = select(rounds, (server, load, capture));
            let base = select(rounds, (server, load, Capture::Untraced));
            let m = |rs: &[&Round], f: fn(&WrkResult) -> f64| median(rs.iter().map(|r| f(&r.wrk)));
            Some(Comparison {
                server,
                load,
                capture,
                rounds: with.len(),
                base_rounds: base.len(),
                base_rps: m(&base, WrkResult::requests_per_second)?,
                rps: m(&with, WrkResult::requests_per_second)?,
                base_p50_us: m(&base, |w| w.p50_us as f64)?,
                p50_us: m(&with, |w| w.p50_us as f64)?,
                base_p99_us: m(&base, |w| w.p99_us as f64)?,
                p99_us: m(&with, |w| w.p99_us as f64)?,
            })
        })
        .collect()
}

/// Every capture's cost summary.
pub fn costs(rounds: &[Round]) -> Vec<CostSummary> {
    groups(rounds)
        .into_iter()
        .filter(|(_, _, capture)| *capture != Capture::Untraced)
        .map(|(server, load, capture)| {
            let rs = select(rounds, (server, load, capture));
            let costs: Vec<&CaptureCost> = rs.iter().filter_map(|r| r.cost.as_ref()).collect();
            let sum_opt = |f: &dyn Fn(&CaptureCost) -> Option<u64>| -> Option<u64> {
                costs.iter().map(|c| f(c)).sum::<Option<u64>>()
            };
            CostSummary {
                server,
                load,
                capture,
                rounds: rs.len(),
                rps: median(rs.iter().map(|r| r.wrk.requests_per_second())).unwrap_or(0.0),
                requests: rs.iter().map(|r| r.requests).sum(),
                requests_from_log: rs.iter().all(|r| r.requests_from_log),
                cpu_seconds: costs.iter().map(|c| c.cpu_seconds).sum(),
                peak_rss_kib: costs.iter().map(|c| c.peak_rss_kib).max().unwrap_or(0),
                anon_rss_kib: costs.iter().map(|c| c.anon_rss_kib).max().unwrap_or(0),
                server_spans: sum_opt(&|c| c.spans.map(|s| s.server)),
                kernel_drops: sum_opt(&|c| c.drops.as_ref().map(|d| d.kernel)),
                userspace_drops: sum_opt(&|c| c.drops.as_ref().map(|d| d.userspace)),
                lost_events: sum_opt(&|c| c.lost_events),
                printed_bytes: sum_opt(&|c| c.printed_bytes),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(capture: Capture, rps: u64, p99: u64, cost: Option<CaptureCost>) -> Round {
        Round {
            server: "nginx",
            load: LoadKind::Saturation,
            capture,
            index: 0,
            wrk: WrkResult {
                requests: rps * 10,
                duration_us: 10_000_000,
                p50_us: p99 / 10,
                p99_us: p99,
                ..WrkResult::default()
            },
            requests: rps * 10,
            requests_from_log: true,
            cost,
            host_load: 0.0,
        }
    }

    #[test]
    fn ratio_and_deltas_use_the_medians_of_each_side() {
        let cost = |cpu: f64, server: u64| CaptureCost {
            cpu_seconds: cpu,
            peak_rss_kib: 20_000,
            spans: Some(SpanCounts {
                server,
                client: 0,
                other: 0,
            }),
            drops: Some(DropCounters {
                kernel: 1,
                userspace: 0,
                source: "stderr",
                ..Default::default()
            }),
            ..CaptureCost::default()
        };
        let rounds = vec![
            round(Capture::Untraced, 10_000, 1000, None),
            round(Capture::Tracer, 9_000, 1200, Some(cost(1.0, 90_000))),
            round(Capture::Untraced, 12_000, 1000, None),
            round(Capture::Tracer, 9_900, 1400, Some(cost(2.0, 98_000))),
        ];
        let comparisons = comparisons(&rounds);
        assert_eq!(comparisons.len(), 1);
        let c = &comparisons[0];
        assert!((c.ratio() - 9_450.0 / 11_000.0).abs() < 1e-9);
        assert_eq!((c.base_p99_us, c.p99_us), (1000.0, 1300.0));

        let costs = costs(&rounds);
        let t = &costs[0];
        assert_eq!(t.requests, 189_000);
        assert!((t.cpu_seconds_per_10k() - 3.0 * 10_000.0 / 189_000.0).abs() < 1e-12);
        assert!((t.completeness().unwrap() - 188_000.0 / 189_000.0).abs() < 1e-12);
        assert_eq!(
            (t.kernel_drops, t.userspace_drops, t.lost_events),
            (Some(2), Some(0), None)
        );
        assert!((t.peak_rss_mb() - 20.48).abs() < 1e-9);
    }

    #[test]
    fn medians_resist_one_disturbed_round() {
        assert_eq!(median([3.0, 1.0, 1000.0].into_iter()), Some(3.0));
        assert_eq!(median([4.0, 2.0].into_iter()), Some(3.0));
        assert_eq!(median([f64::NAN].into_iter()), None);
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn no_baseline_no_comparison() {
        let rounds = vec![round(
            Capture::Tracer,
            9_000,
            1200,
            Some(CaptureCost::default()),
        )];
        assert!(comparisons(&rounds).is_empty());
        assert_eq!(costs(&rounds).len(), 1);
    }
}
