//! What one measured round records, and the figures derived from rounds: throughput ratio and
//! latency deltas against the untraced rounds of the same run, span completeness, drops, and the
//! capture's CPU and memory per request, the traced processes' and the machine's CPU per request.

use super::agent::DropCounters;
use super::bpfstats::{self, ProgramCost};
use super::receiver::SpanCounts;
use super::wrk::WrkResult;

/// Who watches the server during a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capture {
    Untraced,
    /// This project's agent; the label names the binary (`current`, `baseline`, ...).
    Tracer(&'static str),
    /// The naive bpftrace peer.
    Bpftrace,
}

impl Capture {
    pub fn label(self) -> &'static str {
        match self {
            Capture::Untraced => "untraced",
            Capture::Tracer(label) => label,
            Capture::Bpftrace => "bpftrace",
        }
    }

    pub fn is_tracer(self) -> bool {
        matches!(self, Capture::Tracer(_))
    }
}

/// What is traced and how the agent is told so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// nginx under wrk, the agent with no `--pid`/`--port` filter (as the DaemonSet runs it):
    /// both ends traced, SERVER and CLIENT spans expected.
    HostWide,
    /// `HostWide` with `--context-propagation tcp-options`: the kernel decides the identities
    /// (and scans heads for `traceparent`); loopback connections carry no option, so this is the
    /// mode's cost on the data path, not the option writing's.
    HostWidePropagation,
    /// nginx under wrk, the agent given nginx's pids and port: SERVER spans only.
    Pid,
    /// The Python server under wrk, `--pid`/`--port` as for nginx.
    Python,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::HostWide,
        Scenario::HostWidePropagation,
        Scenario::Pid,
        Scenario::Python,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::HostWide => "host-wide",
            Scenario::HostWidePropagation => "host-wide-prop",
            Scenario::Pid => "pid",
            Scenario::Python => "python",
        }
    }

    /// The server program under load.
    pub fn server(self) -> &'static str {
        match self {
            Scenario::HostWide | Scenario::HostWidePropagation | Scenario::Pid => "nginx",
            Scenario::Python => "python",
        }
    }

    /// The agent traces the client (wrk) too, so CLIENT spans are expected.
    pub fn traces_client(self) -> bool {
        self.host_wide()
    }

    /// The agent runs with no `--pid`/`--port` filter.
    pub fn host_wide(self) -> bool {
        matches!(self, Scenario::HostWide | Scenario::HostWidePropagation)
    }

    /// Arguments the scenario adds to every agent's.
    pub fn agent_args(self) -> &'static [&'static str] {
        match self {
            Scenario::HostWidePropagation => &["--context-propagation", "tcp-options"],
            _ => &[],
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
    /// Spans of the server's port the receiver got during the round (tracer only).
    pub spans: Option<SpanCounts>,
    /// Spans of other traffic on the host during the round (host-wide: other work on a shared
    /// machine, which the agent's CPU also pays for).
    pub other_spans: Option<u64>,
    pub drops: Option<DropCounters>,
    /// Events bpftrace reported lost.
    pub lost_events: Option<u64>,
    /// Bytes bpftrace printed.
    pub printed_bytes: Option<u64>,
    /// Run time of the agent's eBPF programs during the load, by program (tracer only; charged
    /// to the traced processes, not to the agent).
    pub ebpf: Option<Vec<ProgramCost>>,
}

/// CPU time of the processes under load during the load (eBPF programs run in their context and
/// are charged to them), and of the whole machine.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadCpu {
    /// utime + stime of the server's processes (nginx master and workers).
    pub server_seconds: f64,
    /// utime + stime of wrk.
    pub client_seconds: f64,
    /// Busy time of all CPUs (/proc/stat: user, nice, system, irq, softirq, steal).
    pub system_seconds: f64,
    /// utime + stime of the capture process (agent or bpftrace) over the same window.
    pub capture_seconds: f64,
    /// Wall-clock length of the window, and the machine's CPUs.
    pub wall_seconds: f64,
    pub cpus: usize,
}

impl LoadCpu {
    /// Share of the machine's capacity used by other work during the load (busy time minus
    /// server, client and capture): how disturbed the round was on a shared machine.
    pub fn others_share(&self) -> f64 {
        let capacity = self.wall_seconds * self.cpus as f64;
        if capacity > 0.0 {
            ((self.system_seconds
                - self.server_seconds
                - self.client_seconds
                - self.capture_seconds)
                / capacity)
                .max(0.0)
        } else {
            f64::NAN
        }
    }
}

/// One measured round.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    pub scenario: Scenario,
    pub load: LoadKind,
    pub capture: Capture,
    pub index: usize,
    pub wrk: WrkResult,
    /// Requests the server handled: its access log's new lines, else wrk's count.
    pub requests: u64,
    pub requests_from_log: bool,
    pub cost: Option<CaptureCost>,
    pub load_cpu: LoadCpu,
    /// The host's 1-minute load average when the round ended (other work on a shared machine).
    pub host_load: f64,
}

impl Round {
    fn per_request_us(&self, seconds: f64) -> f64 {
        if self.requests > 0 {
            seconds * 1e6 / self.requests as f64
        } else {
            f64::NAN
        }
    }

    /// Requests the server logged beyond those wrk completed (0 when not counted from the log).
    pub fn unread_by_client(&self) -> u64 {
        if self.requests_from_log {
            self.requests.saturating_sub(self.wrk.requests)
        } else {
            0
        }
    }

    /// Server and client CPU per request, µs.
    pub fn traced_cpu_us_per_request(&self) -> f64 {
        self.per_request_us(self.load_cpu.server_seconds + self.load_cpu.client_seconds)
    }

    /// Whole-machine CPU per request, µs.
    pub fn system_cpu_us_per_request(&self) -> f64 {
        self.per_request_us(self.load_cpu.system_seconds)
    }

    /// Run time of the agent's eBPF programs per request, ns.
    pub fn ebpf_ns_per_request(&self) -> Option<f64> {
        let programs = self.cost.as_ref()?.ebpf.as_ref()?;
        let ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
        (self.requests > 0).then(|| ns as f64 / self.requests as f64)
    }

    /// The capture's CPU-seconds per 10,000 requests.
    pub fn capture_cpu_per_10k(&self) -> Option<f64> {
        let cost = self.cost.as_ref()?;
        (self.requests > 0).then(|| cost.cpu_seconds * 10_000.0 / self.requests as f64)
    }
}

/// The median (the mean of the middle two for an even count): one round disturbed by other work
/// on a shared machine moves it less than the mean.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    Spread::of(values).map(|s| s.median)
}

/// Minimum, median and maximum of a figure over rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub count: usize,
}

impl Spread {
    /// `None` when no value is finite.
    pub fn of(values: impl Iterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => *values.get(n / 2)?,
            _ => (values.get(n / 2 - 1)? + values.get(n / 2)?) / 2.0,
        };
        Some(Spread {
            min: *values.first()?,
            median,
            max: *values.last()?,
            count: n,
        })
    }
}

/// A capture's rounds against the untraced rounds of the same scenario and load. Paired figures
/// (ratio, deltas) compare round i with the untraced round i, measured just before it.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub scenario: Scenario,
    pub load: LoadKind,
    pub capture: Capture,
    pub rounds: usize,
    pub base_rounds: usize,
    pub base_rps: Spread,
    pub rps: Spread,
    /// Throughput with the capture over throughput without, per pair of rounds.
    pub ratio: Spread,
    pub base_p50_us: Spread,
    pub p50_us: Spread,
    pub p50_delta_us: Spread,
    pub base_p99_us: Spread,
    pub p99_us: Spread,
    pub p99_delta_us: Spread,
    /// Server + client CPU per request (µs), untraced and traced, and the paired delta.
    pub base_traced_cpu_us: Option<Spread>,
    pub traced_cpu_us: Option<Spread>,
    pub traced_cpu_delta_us: Option<Spread>,
    /// Whole-machine CPU per request (µs), untraced and traced, and the paired delta.
    pub base_system_cpu_us: Option<Spread>,
    pub system_cpu_us: Option<Spread>,
    pub system_cpu_delta_us: Option<Spread>,
}

/// What a capture cost and delivered over its rounds of one scenario and load.
#[derive(Clone, Debug, PartialEq)]
pub struct CostSummary {
    pub scenario: Scenario,
    pub load: LoadKind,
    pub capture: Capture,
    pub rounds: usize,
    pub rps: f64,
    pub requests: u64,
    pub requests_from_log: bool,
    /// Requests the server answered (access log) that wrk never read: in flight when its run
    /// ended (wrk exits without reading them or closing its sockets). Their CLIENT spans end as
    /// `connection_closed` when the agent finds the sockets gone.
    pub unread_by_client: u64,
    pub cpu_seconds: f64,
    /// The capture's CPU-seconds per 10k requests, per round.
    pub cpu_per_10k: Option<Spread>,
    pub peak_rss_kib: u64,
    pub anon_rss_kib: u64,
    pub server_spans: Option<u64>,
    pub client_spans: Option<u64>,
    pub kernel_drops: Option<u64>,
    pub userspace_drops: Option<u64>,
    pub lost_events: Option<u64>,
    pub printed_bytes: Option<u64>,
    /// eBPF run time per request, per round.
    pub ebpf_ns_per_request: Option<Spread>,
    /// The eBPF programs' run time summed over the rounds that measured it, most expensive first,
    /// and those rounds' requests.
    pub ebpf_programs: Vec<ProgramCost>,
    pub ebpf_requests: u64,
}

impl CostSummary {
    /// All measured rounds' eBPF run time over their requests, ns per request.
    pub fn ebpf_ns_per_request_all(&self) -> Option<f64> {
        let ns: u64 = self.ebpf_programs.iter().map(|p| p.run_time_ns).sum();
        (self.ebpf_requests > 0 && !self.ebpf_programs.is_empty())
            .then(|| ns as f64 / self.ebpf_requests as f64)
    }

    /// All rounds' capture CPU over all rounds' requests, per 10k requests.
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

    /// CLIENT spans received over requests handled (only meaningful when the client is traced).
    pub fn client_completeness(&self) -> Option<f64> {
        if !self.scenario.traces_client() {
            return None;
        }
        let spans = self.client_spans?;
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

/// Others' share of the machine over all rounds (see [`LoadCpu::others_share`]).
pub fn others_share(rounds: &[Round]) -> Option<Spread> {
    Spread::of(rounds.iter().map(|r| r.load_cpu.others_share()))
}

/// KiB to MB (10^6 bytes).
pub fn kib_to_mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

type Key = (Scenario, LoadKind, Capture);

/// The (scenario, load, capture) groups in first-seen order.
fn groups(rounds: &[Round]) -> Vec<Key> {
    let mut out = Vec::new();
    for r in rounds {
        let key = (r.scenario, r.load, r.capture);
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

fn select(rounds: &[Round], key: Key) -> Vec<&Round> {
    rounds
        .iter()
        .filter(|r| (r.scenario, r.load, r.capture) == key)
        .collect()
}

/// `f(with, without)` over the rounds of equal index on both sides.
fn paired(with: &[&Round], base: &[&Round], f: impl Fn(&Round, &Round) -> f64) -> Option<Spread> {
    Spread::of(with.iter().filter_map(|w| {
        let b = base.iter().find(|b| b.index == w.index)?;
        Some(f(w, b))
    }))
}

/// Every capture's comparison against the untraced rounds of its scenario and load.
pub fn comparisons(rounds: &[Round]) -> Vec<Comparison> {
    groups(rounds)
        .into_iter()
        .filter(|(_, _, capture)| *capture != Capture::Untraced)
        .filter_map(|(scenario, load, capture)| {
            let with = select(rounds, (scenario, load, capture));
            let base = select(rounds, (scenario, load, Capture::Untraced));
            let s = |rs: &[&Round], f: &dyn Fn(&Round) -> f64| Spread::of(rs.iter().map(|r| f(r)));
            let rps = |r: &Round| r.wrk.requests_per_second();
            let p50 = |r: &Round| r.wrk.p50_us as f64;
            let p99 = |r: &Round| r.wrk.p99_us as f64;
            let traced = |r: &Round| r.traced_cpu_us_per_request();
            let system = |r: &Round| r.system_cpu_us_per_request();
            Some(Comparison {
                scenario,
                load,
                capture,
                rounds: with.len(),
                base_rounds: base.len(),
                base_rps: s(&base, &rps)?,
                rps: s(&with, &rps)?,
                ratio: paired(&with, &base, |w, b| rps(w) / rps(b))?,
                base_p50_us: s(&base, &p50)?,
                p50_us: s(&with, &p50)?,
                p50_delta_us: paired(&with, &base, |w, b| p50(w) - p50(b))?,
                base_p99_us: s(&base, &p99)?,
                p99_us: s(&with, &p99)?,
                p99_delta_us: paired(&with, &base, |w, b| p99(w) - p99(b))?,
                base_traced_cpu_us: s(&base, &traced),
                traced_cpu_us: s(&with, &traced),
                traced_cpu_delta_us: paired(&with, &base, |w, b| traced(w) - traced(b)),
                base_system_cpu_us: s(&base, &system),
                system_cpu_us: s(&with, &system),
                system_cpu_delta_us: paired(&with, &base, |w, b| system(w) - system(b)),
            })
        })
        .collect()
}

/// Every capture's cost summary.
pub fn costs(rounds: &[Round]) -> Vec<CostSummary> {
    groups(rounds)
        .into_iter()
        .filter(|(_, _, capture)| *capture != Capture::Untraced)
        .map(|(scenario, load, capture)| {
            let rs = select(rounds, (scenario, load, capture));
            let costs: Vec<&CaptureCost> = rs.iter().filter_map(|r| r.cost.as_ref()).collect();
            let sum_opt = |f: &dyn Fn(&CaptureCost) -> Option<u64>| -> Option<u64> {
                costs.iter().map(|c| f(c)).sum::<Option<u64>>()
            };
            CostSummary {
                scenario,
                load,
                capture,
                rounds: rs.len(),
                rps: median(rs.iter().map(|r| r.wrk.requests_per_second())).unwrap_or(0.0),
                requests: rs.iter().map(|r| r.requests).sum(),
                requests_from_log: rs.iter().all(|r| r.requests_from_log),
                unread_by_client: rs.iter().map(|r| r.unread_by_client()).sum(),
                cpu_seconds: costs.iter().map(|c| c.cpu_seconds).sum(),
                cpu_per_10k: Spread::of(rs.iter().filter_map(|r| r.capture_cpu_per_10k())),
                peak_rss_kib: costs.iter().map(|c| c.peak_rss_kib).max().unwrap_or(0),
                anon_rss_kib: costs.iter().map(|c| c.anon_rss_kib).max().unwrap_or(0),
                server_spans: sum_opt(&|c| c.spans.map(|s| s.server)),
                client_spans: sum_opt(&|c| c.spans.map(|s| s.client)),
                kernel_drops: sum_opt(&|c| c.drops.as_ref().map(|d| d.kernel)),
                userspace_drops: sum_opt(&|c| c.drops.as_ref().map(|d| d.userspace)),
                lost_events: sum_opt(&|c| c.lost_events),
                printed_bytes: sum_opt(&|c| c.printed_bytes),
                ebpf_ns_per_request: Spread::of(rs.iter().filter_map(|r| r.ebpf_ns_per_request())),
                ebpf_programs: bpfstats::sum_by_name(
                    costs.iter().filter_map(|c| c.ebpf.as_deref()),
                ),
                ebpf_requests: rs
                    .iter()
                    .filter(|r| r.cost.as_ref().is_some_and(|c| c.ebpf.is_some()))
                    .map(|r| r.requests)
                    .sum(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURRENT: Capture = Capture::Tracer("current");

    fn round(
        capture: Capture,
        index: usize,
        rps: u64,
        p99: u64,
        cost: Option<CaptureCost>,
    ) -> Round {
        Round {
            scenario: Scenario::HostWide,
            load: LoadKind::Saturation,
            capture,
            index,
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
            load_cpu: LoadCpu {
                server_seconds: rps as f64 / 1e4,
                client_seconds: rps as f64 / 1e4,
                system_seconds: rps as f64 / 2e3,
                ..LoadCpu::default()
            },
            host_load: 0.0,
        }
    }

    fn cost(cpu: f64, server: u64, client: u64) -> CaptureCost {
        CaptureCost {
            cpu_seconds: cpu,
            peak_rss_kib: 20_000,
            spans: Some(SpanCounts {
                server,
                client,
                other: 0,
            }),
            drops: Some(DropCounters {
                kernel: 1,
                userspace: 0,
                source: "stderr",
                ..Default::default()
            }),
            ..CaptureCost::default()
        }
    }

    #[test]
    fn ratios_and_deltas_pair_each_round_with_its_untraced_neighbour() {
        let rounds = vec![
            round(Capture::Untraced, 0, 10_000, 1000, None),
            round(CURRENT, 0, 9_000, 1200, Some(cost(1.0, 90_000, 89_000))),
            round(Capture::Untraced, 1, 12_000, 1000, None),
            round(CURRENT, 1, 9_900, 1400, Some(cost(2.0, 98_000, 97_000))),
        ];
        let comparisons = comparisons(&rounds);
        assert_eq!(comparisons.len(), 1);
        let c = &comparisons[0];
        // Pairs: 9000/10000 = 0.9 and 9900/12000 = 0.825.
        assert!((c.ratio.min - 0.825).abs() < 1e-9);
        assert!((c.ratio.max - 0.9).abs() < 1e-9);
        assert!((c.ratio.median - 0.8625).abs() < 1e-9);
        assert_eq!((c.base_p99_us.median, c.p99_us.median), (1000.0, 1300.0));
        assert_eq!((c.p99_delta_us.min, c.p99_delta_us.max), (200.0, 400.0));
        assert_eq!(c.rps.min, 9_000.0);
        // Server + client CPU is 2 * rps / 1e4 s over rps * 10 requests: 20 µs per request on
        // both sides, so no delta; whole-machine CPU 50 µs.
        let traced = c.traced_cpu_us.unwrap();
        assert!((traced.median - 20.0).abs() < 1e-9);
        assert!(c.traced_cpu_delta_us.unwrap().max.abs() < 1e-9);
        assert!((c.system_cpu_us.unwrap().median - 50.0).abs() < 1e-9);

        let costs = costs(&rounds);
        let t = &costs[0];
        assert_eq!(t.requests, 189_000);
        assert!((t.cpu_seconds_per_10k() - 3.0 * 10_000.0 / 189_000.0).abs() < 1e-12);
        let per_round = t.cpu_per_10k.unwrap();
        assert!((per_round.min - 1.0 / 9.0).abs() < 1e-12);
        assert!((per_round.max - 2.0 / 9.9).abs() < 1e-12);
        assert!((t.completeness().unwrap() - 188_000.0 / 189_000.0).abs() < 1e-12);
        assert!((t.client_completeness().unwrap() - 186_000.0 / 189_000.0).abs() < 1e-12);
        assert_eq!(
            (t.kernel_drops, t.userspace_drops, t.lost_events),
            (Some(2), Some(0), None)
        );
        assert!((t.peak_rss_mb() - 20.48).abs() < 1e-9);
        // No round measured eBPF time.
        assert_eq!(
            (t.ebpf_ns_per_request, t.ebpf_ns_per_request_all()),
            (None, None)
        );
    }

    #[test]
    fn ebpf_time_is_per_request_per_round_and_summed_by_program() {
        let program = |name: &str, run_time_ns, run_cnt| ProgramCost {
            name: name.into(),
            run_time_ns,
            run_cnt,
        };
        let with_ebpf = |programs| CaptureCost {
            ebpf: Some(programs),
            ..cost(1.0, 0, 0)
        };
        let rounds = vec![
            // 100k requests, 700 ms of eBPF: 7000 ns per request.
            round(
                CURRENT,
                0,
                10_000,
                1000,
                Some(with_ebpf(vec![
                    program("sys_exit_writev", 500_000_000, 100_000),
                    program("sys_enter_close", 200_000_000, 100_000),
                ])),
            ),
            // 50k requests, 150 ms: 3000 ns per request.
            round(
                CURRENT,
                1,
                5_000,
                1000,
                Some(with_ebpf(vec![program(
                    "sys_enter_close",
                    150_000_000,
                    50_000,
                )])),
            ),
            // Not measured: left out of both figures.
            round(CURRENT, 2, 5_000, 1000, Some(cost(1.0, 0, 0))),
        ];
        assert_eq!(rounds[0].ebpf_ns_per_request(), Some(7000.0));
        let t = &costs(&rounds)[0];
        let per_round = t.ebpf_ns_per_request.unwrap();
        assert_eq!(
            (per_round.min, per_round.max, per_round.count),
            (3000.0, 7000.0, 2)
        );
        assert_eq!(t.ebpf_requests, 150_000);
        assert!((t.ebpf_ns_per_request_all().unwrap() - 850e6 / 150e3).abs() < 1e-9);
        assert_eq!(
            t.ebpf_programs[0],
            program("sys_exit_writev", 500_000_000, 100_000)
        );
        assert_eq!(
            t.ebpf_programs[1],
            program("sys_enter_close", 350_000_000, 150_000)
        );
    }

    #[test]
    fn binaries_are_compared_separately_and_client_spans_only_count_host_wide() {
        let baseline = Capture::Tracer("baseline");
        let mut rounds = vec![
            round(Capture::Untraced, 0, 10_000, 1000, None),
            round(baseline, 0, 5_000, 1000, Some(cost(4.0, 50_000, 50_000))),
            round(CURRENT, 0, 9_000, 1000, Some(cost(1.0, 90_000, 90_000))),
        ];
        for r in &mut rounds {
            r.scenario = Scenario::Pid;
        }
        let comparisons = comparisons(&rounds);
        let ratio = |capture| {
            comparisons
                .iter()
                .find(|c| c.capture == capture)
                .map(|c| c.ratio.median)
        };
        assert_eq!(ratio(baseline), Some(0.5));
        assert_eq!(ratio(CURRENT), Some(0.9));
        let costs = costs(&rounds);
        assert_eq!(costs.len(), 2);
        assert_eq!(costs[0].client_completeness(), None);
        assert_eq!(costs[0].completeness(), Some(1.0));
    }

    #[test]
    fn requests_wrk_never_read_are_the_logged_ones_beyond_its_count() {
        let mut a = round(CURRENT, 0, 10, 1000, Some(cost(1.0, 100, 100)));
        a.requests = 103;
        let mut b = round(CURRENT, 1, 10, 1000, Some(cost(1.0, 100, 100)));
        b.requests = 100;
        assert_eq!((a.unread_by_client(), b.unread_by_client()), (3, 0));
        let t = &costs(&[a.clone(), b])[0];
        assert_eq!((t.requests, t.unread_by_client), (203, 3));
        // Counted from wrk: nothing to compare with.
        a.requests_from_log = false;
        assert_eq!(a.unread_by_client(), 0);
    }

    #[test]
    fn others_share_is_what_the_round_did_not_use_itself() {
        let cpu = LoadCpu {
            server_seconds: 5.0,
            client_seconds: 4.0,
            system_seconds: 15.0,
            capture_seconds: 2.0,
            wall_seconds: 10.0,
            cpus: 2,
        };
        assert!((cpu.others_share() - 0.2).abs() < 1e-12);
        assert!(LoadCpu::default().others_share().is_nan());
    }

    #[test]
    fn medians_resist_one_disturbed_round() {
        assert_eq!(median([3.0, 1.0, 1000.0].into_iter()), Some(3.0));
        assert_eq!(median([4.0, 2.0].into_iter()), Some(3.0));
        assert_eq!(median([f64::NAN].into_iter()), None);
        assert_eq!(median(std::iter::empty()), None);
        let s = Spread::of([5.0, f64::NAN, 1.0, 3.0].into_iter()).unwrap();
        assert_eq!((s.min, s.median, s.max, s.count), (1.0, 3.0, 5.0, 3));
    }

    #[test]
    fn no_baseline_no_comparison() {
        let rounds = vec![round(CURRENT, 0, 9_000, 1200, Some(CaptureCost::default()))];
        assert!(comparisons(&rounds).is_empty());
        assert_eq!(costs(&rounds).len(), 1);
    }
}
