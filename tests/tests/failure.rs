//! Failure behaviour of the agent against real processes: an OTLP endpoint that is down, slow or
//! refusing (the agent keeps running, backs off without a busy loop, counts what it loses and
//! delivers again after recovery), connection churn (table and memory return to baseline), a
//! burst beyond the ring buffer (drops counted, no wrong spans from torn streams), SIGTERM under
//! load (everything flushed) and SIGKILL (no BPF programs left behind).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracer_tests::faulty_receiver::{Behaviour, ExportAttempt, FaultyReceiver};
use tracer_tests::query::describe;
use tracer_tests::{
    Agent, AgentConfig, AgentExit, ClientMode, ObservedKind, ObservedSpan, ObservedStatus,
    PythonServer, free_port, run_client, wait_for_port,
};

use tracer_tests::agent_counters::{self, DropTotals, StoppedLine};
use tracer_tests::bpf_objects;
use tracer_tests::http_load::{KeepAliveClient, LoadServer, get_once};
use tracer_tests::vitals::Vitals;

/// CPU an idle agent may burn in `CPU_WINDOW` while its endpoint fails: a busy loop burns ~10 s.
/// These tests measure an agent's CPU, memory and drop counters under loads they generate; a
/// second such test running beside them on a small machine would distort exactly what they
/// measure (and starve the agent into drops). They take this lock and run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding the lock leaves nothing shared behind: carry on.
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const CPU_BUDGET: Duration = Duration::from_secs(1);
const CPU_WINDOW: Duration = Duration::from_secs(10);
/// RSS growth over the baseline that still counts as bounded.
const RSS_SLACK_KIB: u64 = 64 * 1024;
/// How long a test waits for the spans or counters it expects.
const WAIT: Duration = Duration::from_secs(40);

/// The agent under test plus where its counters can be read.
struct WatchedAgent {
    agent: Agent,
    metrics: SocketAddr,
}

impl WatchedAgent {
    /// Starts `config` with drop summaries every second and plain logs; exports to `receiver`
    /// when given.
    fn start(config: AgentConfig, receiver: Option<&FaultyReceiver>) -> WatchedAgent {
        let mut config = config
            .arg("--summary-interval")
            .arg("1")
            .env("NO_COLOR", "1");
        if let Some(receiver) = receiver {
            for (key, value) in receiver.exporter_env() {
                config = config.env(key, value);
            }
        }
        let agent = config.start();
        let metrics = agent.metrics_addr();
        if !wait_for_port(metrics.port(), Duration::from_secs(20)) {
            panic!(
                "--metrics-addr {metrics} never accepted connections\n{}",
                agent.stderr_text()
            );
        }
        WatchedAgent { agent, metrics }
    }

    fn pid(&self) -> u32 {
        self.agent.pid()
    }

    fn vitals(&self) -> Vitals {
        Vitals::read(self.pid())
    }

    /// Agent CPU time spent over `window` (the test sleeps meanwhile).
    fn cpu_over(&mut self, window: Duration) -> Duration {
        let before = self.vitals().cpu;
        std::thread::sleep(window);
        self.agent.assert_running();
        self.vitals().cpu.saturating_sub(before)
    }

    /// Drop totals so far.
    fn drops(&self) -> DropTotals {
        DropTotals::from_metrics(&agent_counters::scrape(self.metrics))
    }

    /// Waits until `condition` holds on the drop totals; panics with the agent's stderr.
    fn wait_for_drops(
        &mut self,
        what: &str,
        condition: impl Fn(&DropTotals) -> bool,
    ) -> DropTotals {
        let deadline = Instant::now() + WAIT;
        loop {
            self.agent.assert_running();
            let drops = self.drops();
            if condition(&drops) {
                return drops;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {WAIT:?} for {what}; last drop totals {drops:?}\n--- agent stderr ---\n{}",
                    self.agent.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The connection table and the event backlog.
    fn table(&self) -> agent_counters::TableState {
        agent_counters::TableState::from_metrics(&agent_counters::scrape(self.metrics))
    }

    fn stderr(&self) -> String {
        self.agent.stderr_text()
    }

    /// SIGTERM; asserts exit 0 and returns the exit and the final `tracer stopped` counters.
    fn stop(self) -> (AgentExit, StoppedLine) {
        let exit = self.agent.stop();
        exit.assert_success();
        let stopped = StoppedLine::from_logs(&exit.stderr).unwrap_or_else(|| {
            panic!(
                "no `tracer stopped` line with counters in the agent's stderr:\n{}",
                exit.stderr
            )
        });
        (exit, stopped)
    }
}

/// Waits for `condition` on the receiver's kept spans, failing with the spans and agent stderr.
fn wait_spans(
    receiver: &FaultyReceiver,
    agent: &mut WatchedAgent,
    what: &str,
    mut condition: impl FnMut(&[ObservedSpan]) -> bool,
) -> Vec<ObservedSpan> {
    let deadline = Instant::now() + WAIT;
    loop {
        match receiver.wait_for(Duration::from_millis(500), &mut condition) {
            Ok(spans) => return spans,
            Err(timed_out) => {
                agent.agent.assert_running();
                if Instant::now() >= deadline {
                    panic!(
                        "waited {WAIT:?} for {what}; receiver {:?}; {} span(s):\n{}\n\
                         --- agent stderr ---\n{}",
                        receiver.stats(),
                        timed_out.last_seen.len(),
                        describe(&timed_out.last_seen),
                        agent.stderr()
                    );
                }
            }
        }
    }
}

/// Spans of `kind` whose HTTP status is `status`.
fn with_status(spans: &[ObservedSpan], kind: ObservedKind, status: u16) -> usize {
    spans
        .iter()
        .filter(|s| {
            s.kind == kind && s.attr_int("http.response.status_code") == Some(status.into())
        })
        .count()
}

/// A condition: at least `n` SERVER and `n` CLIENT spans answered `status`.
fn pairs_with_status(status: u16, n: usize) -> impl Fn(&[ObservedSpan]) -> bool {
    move |spans| {
        with_status(spans, ObservedKind::Server, status) >= n
            && with_status(spans, ObservedKind::Client, status) >= n
    }
}

/// `count` requests `GET:/status/STATUS` for `client.py`.
fn status_requests(status: u16, count: usize) -> Vec<String> {
    vec![format!("GET:/status/{status}"); count]
}

/// Runs `client.py` keep-alive with `requests`; asserts every response had `status`.
fn python_requests(port: u16, status: u16, count: usize) {
    let requests = status_requests(status, count);
    let refs: Vec<&str> = requests.iter().map(String::as_str).collect();
    let run = run_client(port, ClientMode::KeepAlive, &refs, &[]);
    assert_eq!(run.responses.len(), count);
    assert!(
        run.responses.iter().all(|r| r.status == status),
        "{:?}",
        run.responses
    );
}

/// Asserts the agent's final accounting: every span built was exported or counted as dropped,
/// and what it reports exported is exactly what the receiver kept (no duplicates).
fn assert_accounting(stopped: &StoppedLine, receiver: &FaultyReceiver, exit: &AgentExit) {
    assert_eq!(
        stopped.spans,
        stopped.exported + stopped.dropped(),
        "built spans = exported + dropped: {stopped:?}\n{}",
        exit.stderr
    );
    let spans = receiver.spans();
    let unique: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(
        unique.len(),
        spans.len(),
        "a span was delivered twice:\n{}",
        describe(&spans)
    );
    assert_eq!(
        stopped.exported,
        spans.len() as u64,
        "spans the agent reports exported vs kept by the receiver: {stopped:?}"
    );
}

/// Export attempts grouped by batch (the same span ids), in arrival order.
fn attempts_by_batch(attempts: &[ExportAttempt]) -> Vec<Vec<&ExportAttempt>> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<&ExportAttempt>> = BTreeMap::new();
    for attempt in attempts {
        let key = attempt.batch_key();
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(attempt);
    }
    order.iter().filter_map(|key| groups.remove(key)).collect()
}

/// Gaps between consecutive attempts of one batch.
fn gaps(batch: &[&ExportAttempt]) -> Vec<Duration> {
    batch
        .windows(2)
        .filter_map(|pair| match pair {
            [a, b] => Some(b.at.saturating_duration_since(a.at)),
            _ => None,
        })
        .collect()
}

fn describe_attempts(attempts: &[ExportAttempt], since: Instant) -> String {
    attempts
        .iter()
        .map(|a| {
            format!(
                "  +{:?} status {} spans {} services {:?}",
                a.at.saturating_duration_since(since),
                a.status,
                a.span_ids.len(),
                a.services
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn endpoint_down_at_start_keeps_agent_running_counts_loss_and_delivers_after_recovery() {
    let _one_at_a_time = one_at_a_time();
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-failure-down-start");
    let receiver = FaultyReceiver::start(Behaviour::Down);
    let mut agent = WatchedAgent::start(AgentConfig::new().ports(&[port]), Some(&receiver));
    let baseline = agent.vitals();

    python_requests(port, 201, 20);
    let cpu = agent.cpu_over(CPU_WINDOW);
    assert!(
        cpu < CPU_BUDGET,
        "agent burned {cpu:?} CPU in {CPU_WINDOW:?} with its endpoint down (busy loop?)\n{}",
        agent.stderr()
    );
    let drops = agent.wait_for_drops("the export failures to be counted", |d| {
        d.spans_dropped_export_failed > 0
    });
    eprintln!("drops while down: {drops:?}");

    receiver.set(Behaviour::Healthy);
    python_requests(port, 202, 5);
    wait_spans(
        &receiver,
        &mut agent,
        "the 5 exchanges made after recovery",
        pairs_with_status(202, 5),
    );
    let after = agent.vitals();
    assert!(
        after.rss_kib < baseline.rss_kib + RSS_SLACK_KIB,
        "RSS grew from {baseline:?} to {after:?}"
    );

    let (exit, stopped) = agent.stop();
    let spans = receiver.spans();
    assert_accounting(&stopped, &receiver, &exit);
    assert_eq!(with_status(&spans, ObservedKind::Server, 202), 5);
    assert_eq!(with_status(&spans, ObservedKind::Client, 202), 5);
    // Spans of the outage were either delivered once the endpoint came back (retries still
    // running) or counted as lost: none vanish silently.
    let outage_delivered = (with_status(&spans, ObservedKind::Server, 201)
        + with_status(&spans, ObservedKind::Client, 201)) as u64;
    assert!(stopped.dropped_export_failed > 0, "{stopped:?}");
    assert_eq!(
        outage_delivered + stopped.dropped(),
        40,
        "the 40 spans of the outage: delivered {outage_delivered}, counted lost {}; {stopped:?}",
        stopped.dropped()
    );
}

#[test]
fn endpoint_down_in_the_middle_bounds_memory_counts_loss_and_recovers() {
    let _one_at_a_time = one_at_a_time();
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-failure-down-middle");
    let receiver = FaultyReceiver::start(Behaviour::Healthy);
    let mut agent = WatchedAgent::start(AgentConfig::new().ports(&[port]), Some(&receiver));

    python_requests(port, 200, 10);
    wait_spans(
        &receiver,
        &mut agent,
        "the 10 exchanges before the outage",
        pairs_with_status(200, 10),
    );
    let baseline = agent.vitals();

    receiver.set(Behaviour::Down);
    // Far more spans than the export queue holds, from 4 clients at once.
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 500;
    let outage_started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| std::thread::spawn(move || python_requests(port, 203, PER_CLIENT)))
        .collect();
    let mut peak = baseline;
    let mut clients_done = false;
    let mut handles = Some(clients);
    while !clients_done {
        let now = agent.vitals();
        if now.rss_kib > peak.rss_kib {
            peak = now;
        }
        if handles
            .as_ref()
            .is_some_and(|h| h.iter().all(|c| c.is_finished()))
        {
            for client in handles.take().into_iter().flatten() {
                if let Err(panic) = client.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            clients_done = true;
        }
        assert!(
            outage_started.elapsed() < Duration::from_secs(180),
            "the outage traffic did not finish in 180 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("outage traffic took {:?}", outage_started.elapsed());
    let cpu = agent.cpu_over(CPU_WINDOW);
    assert!(
        cpu < CPU_BUDGET,
        "agent burned {cpu:?} CPU in {CPU_WINDOW:?} with its endpoint down and no traffic\n{}",
        agent.stderr()
    );
    let end_of_outage = agent.vitals();
    for v in [peak, end_of_outage] {
        assert!(
            v.rss_kib < baseline.rss_kib + RSS_SLACK_KIB,
            "RSS during the outage {v:?} vs baseline {baseline:?}"
        );
    }
    let drops = agent.wait_for_drops("the outage's losses to be counted", |d| {
        d.spans_dropped_export_failed + d.spans_dropped_queue_full > 0
    });
    eprintln!("drops during the outage: {drops:?}; peak {peak:?}; baseline {baseline:?}");

    receiver.set(Behaviour::Healthy);
    python_requests(port, 202, 10);
    wait_spans(
        &receiver,
        &mut agent,
        "the 10 exchanges after recovery",
        pairs_with_status(202, 10),
    );

    let (exit, stopped) = agent.stop();
    assert_accounting(&stopped, &receiver, &exit);
    let spans = receiver.spans();
    let outage_spans = (CLIENTS * PER_CLIENT * 2) as u64;
    let outage_delivered = (with_status(&spans, ObservedKind::Server, 203)
        + with_status(&spans, ObservedKind::Client, 203)) as u64;
    assert!(
        stopped.dropped() > 0,
        "an outage of this size loses spans, and says so: {stopped:?}"
    );
    assert_eq!(
        outage_delivered + stopped.dropped(),
        outage_spans,
        "outage spans delivered {outage_delivered} + counted lost {} vs made {outage_spans}; \
         {stopped:?}",
        stopped.dropped()
    );
    for status in [200, 202] {
        assert_eq!(with_status(&spans, ObservedKind::Server, status), 10);
        assert_eq!(with_status(&spans, ObservedKind::Client, status), 10);
    }
}

#[test]
fn slow_endpoint_is_waited_for_then_backed_off_without_a_busy_loop() {
    let _one_at_a_time = one_at_a_time();
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-failure-slow");
    let receiver = FaultyReceiver::start(Behaviour::Slow(Duration::from_secs(1)));
    let mut agent = WatchedAgent::start(
        AgentConfig::new()
            .ports(&[port])
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        Some(&receiver),
    );

    // Slower than usual but within the exporter's timeout: delivered once, no retries.
    let slow_started = Instant::now();
    python_requests(port, 200, 5);
    wait_spans(
        &receiver,
        &mut agent,
        "5 exchanges through a 1 s slow endpoint",
        pairs_with_status(200, 5),
    );
    let slow_attempts = receiver.attempts_since(slow_started);
    for batch in attempts_by_batch(&slow_attempts) {
        assert_eq!(
            batch.len(),
            1,
            "a batch answered within the timeout was sent again:\n{}",
            describe_attempts(&slow_attempts, slow_started)
        );
    }

    // Slower than the timeout: every attempt times out; retries must wait, not spin.
    receiver.set(Behaviour::Slow(Duration::from_secs(6)));
    let stuck_started = Instant::now();
    python_requests(port, 201, 3);
    let cpu = agent.cpu_over(CPU_WINDOW);
    let stuck_attempts = receiver.attempts_since(stuck_started);
    eprintln!(
        "attempts against a 6 s endpoint with a 2.5 s timeout ({cpu:?} CPU):\n{}",
        describe_attempts(&stuck_attempts, stuck_started)
    );
    assert!(
        cpu < CPU_BUDGET,
        "agent burned {cpu:?} CPU in {CPU_WINDOW:?} against a stuck endpoint\n{}",
        agent.stderr()
    );
    assert!(
        !stuck_attempts.is_empty() && stuck_attempts.len() <= 10,
        "{} export attempts in {CPU_WINDOW:?} against an endpoint slower than the timeout:\n{}",
        stuck_attempts.len(),
        describe_attempts(&stuck_attempts, stuck_started)
    );
    for batch in attempts_by_batch(&stuck_attempts) {
        for gap in gaps(&batch) {
            assert!(
                gap >= Duration::from_millis(2500),
                "a retry came {gap:?} after an attempt that can only end by the 2.5 s timeout:\n{}",
                describe_attempts(&stuck_attempts, stuck_started)
            );
        }
    }

    receiver.set(Behaviour::Healthy);
    python_requests(port, 202, 3);
    wait_spans(
        &receiver,
        &mut agent,
        "3 exchanges after the endpoint recovered",
        pairs_with_status(202, 3),
    );
    let (exit, stopped) = agent.stop();
    eprintln!("slow endpoint: {stopped:?}");
    assert_eq!(
        stopped.spans,
        stopped.exported + stopped.dropped(),
        "{stopped:?}\n{}",
        exit.stderr
    );
}

#[test]
fn refusals_503_and_429_are_retried_with_growing_backoff_and_retry_after() {
    let _one_at_a_time = one_at_a_time();
    let port = free_port();
    let _server = PythonServer::start(port, "e2e-failure-refuse");
    let receiver = FaultyReceiver::start(Behaviour::Refuse {
        status: 503,
        retry_after: None,
    });
    let mut agent = WatchedAgent::start(AgentConfig::new().ports(&[port]), Some(&receiver));

    let refused_started = Instant::now();
    python_requests(port, 200, 2);
    let cpu = agent.cpu_over(CPU_WINDOW);
    assert!(
        cpu < CPU_BUDGET,
        "agent burned {cpu:?} CPU in {CPU_WINDOW:?} against an endpoint answering 503\n{}",
        agent.stderr()
    );
    // Both batches (client and server resources) exhaust their retries and are counted.
    agent.wait_for_drops("the refused spans to be counted as lost", |d| {
        d.spans_dropped_export_failed >= 4
    });
    let refused = receiver.attempts_since(refused_started);
    eprintln!(
        "attempts against 503:\n{}",
        describe_attempts(&refused, refused_started)
    );
    let batches = attempts_by_batch(&refused);
    assert!(
        !batches.is_empty(),
        "no export attempt reached the receiver"
    );
    for batch in &batches {
        let gaps = gaps(batch);
        let report = || describe_attempts(&refused, refused_started);
        assert!(
            batch.len() >= 2 && batch.len() <= 10,
            "a transient 503 is retried, a bounded number of times:\n{}",
            report()
        );
        assert!(
            gaps.iter().all(|g| *g >= Duration::from_millis(200)),
            "retries after 503 without a pause: {gaps:?}\n{}",
            report()
        );
        if let (Some(first), Some(last)) = (gaps.first(), gaps.last())
            && gaps.len() >= 3
        {
            assert!(
                *last >= *first * 2,
                "backoff does not grow: {gaps:?}\n{}",
                report()
            );
        }
    }

    receiver.set(Behaviour::Refuse {
        status: 429,
        retry_after: Some(Duration::from_secs(2)),
    });
    let throttled_started = Instant::now();
    python_requests(port, 201, 1);
    std::thread::sleep(CPU_WINDOW);
    agent.agent.assert_running();
    let throttled = receiver.attempts_since(throttled_started);
    let report = || describe_attempts(&throttled, throttled_started);
    eprintln!("attempts against 429 + Retry-After: 2:\n{}", report());
    let batches = attempts_by_batch(&throttled);
    assert!(
        batches.iter().any(|b| b.len() >= 2),
        "429 is retried:\n{}",
        report()
    );
    assert!(throttled.len() <= 12, "too many attempts:\n{}", report());
    for batch in &batches {
        for gap in gaps(batch) {
            assert!(
                gap >= Duration::from_millis(1900),
                "retry {gap:?} after a 429 with Retry-After: 2\n{}",
                report()
            );
        }
    }

    receiver.set(Behaviour::Healthy);
    python_requests(port, 202, 1);
    wait_spans(
        &receiver,
        &mut agent,
        "the exchange after the endpoint recovered",
        pairs_with_status(202, 1),
    );
    let (exit, stopped) = agent.stop();
    assert_accounting(&stopped, &receiver, &exit);
    assert!(stopped.dropped_export_failed >= 4, "{stopped:?}");
}

#[test]
fn connection_churn_returns_table_and_memory_to_baseline() {
    let _one_at_a_time = one_at_a_time();
    const CONNECTIONS: u64 = 50_000;
    const CLIENT_THREADS: usize = 8;
    let port = free_port();
    let receiver = FaultyReceiver::start(Behaviour::Discard);
    // A ring buffer that holds the whole churn: this test is about the connection table and
    // memory, not about losing events (the burst test is), and a lost close record would keep
    // its connection in the table until the idle expiry.
    let mut agent = WatchedAgent::start(
        AgentConfig::new()
            .ports(&[port])
            .arg("--ring-buffer-mib")
            .arg("128"),
        Some(&receiver),
    );
    // Started after the agent: threads already blocked in accept(2) when the probes attach are
    // not what this test is about.
    let server = LoadServer::start(port, 8, false);

    for _ in 0..100 {
        assert_eq!(get_once(port, "/status/200").expect("warm-up request"), 200);
    }
    let deadline = Instant::now() + WAIT;
    while receiver.stats().spans_accepted < 200 {
        agent.agent.assert_running();
        assert!(
            Instant::now() < deadline,
            "warm-up spans never arrived: {:?}\n{}",
            receiver.stats(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let baseline = agent.vitals();
    let table_baseline = agent.table();

    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let churn_started = Instant::now();
    let churn_deadline = churn_started + Duration::from_secs(300);
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let next = Arc::clone(&next);
            let failures = Arc::clone(&failures);
            std::thread::spawn(move || {
                let mut first_error = None;
                while next.fetch_add(1, Ordering::Relaxed) < CONNECTIONS
                    && Instant::now() < churn_deadline
                {
                    match get_once(port, "/status/200") {
                        Ok(200) => {}
                        other => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert(format!("{other:?}"));
                        }
                    }
                }
                first_error
            })
        })
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().expect("churn client thread"))
        .collect();
    let churn_took = churn_started.elapsed();
    let made = next.load(Ordering::Relaxed).min(CONNECTIONS);
    let failed = failures.load(Ordering::Relaxed);
    eprintln!(
        "churn: {made} connections in {churn_took:?}, {failed} failed {errors:?}; served {}",
        server.served()
    );
    assert_eq!(
        made, CONNECTIONS,
        "churn did not finish within its deadline"
    );
    assert!(
        failed * 1000 <= CONNECTIONS,
        "{failed} of {CONNECTIONS} connections failed: {errors:?}"
    );
    let peak = agent.vitals();
    let drops = agent.drops();
    assert_eq!(
        drops.kernel_ringbuf_full, 0,
        "a 128 MiB ring buffer overflowed during the churn: {drops:?}"
    );

    // The agent catches up with the backlog, then its connection table is empty again.
    let before = table_baseline;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        agent.agent.assert_running();
        let table = agent.table();
        // Open and close on both sides at least: a snapshot from before the churn has fewer.
        let covers_churn = table.events_submitted >= 4 * CONNECTIONS;
        if covers_churn && table.tracked == 0 && table.events_read >= table.events_submitted {
            eprintln!(
                "churn: caught up {:?} after the churn ended: {table:?} (before: {before:?})",
                churn_started.elapsed().saturating_sub(churn_took)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connection table not back to 0 within 180 s of the churn: {table:?}; drops \
             {:?}\n{}",
            agent.drops(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        agent.agent.assert_running();
        let now = agent.vitals();
        if now.rss_kib < baseline.rss_kib + RSS_SLACK_KIB {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "RSS did not return near the baseline: baseline {baseline:?}, peak {peak:?}, \
             now {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("churn memory: baseline {baseline:?}, peak {peak:?}, settled {settled:?}");

    // Still tracing correctly afterwards.
    receiver.set(Behaviour::Healthy);
    assert_eq!(
        get_once(port, "/status/202?after=churn").expect("request"),
        202
    );
    let spans = wait_spans(
        &receiver,
        &mut agent,
        "the SERVER and CLIENT span of the request after the churn",
        pairs_with_status(202, 1),
    );
    let server_span = spans
        .iter()
        .find(|s| {
            s.kind == ObservedKind::Server && s.attr_int("http.response.status_code") == Some(202)
        })
        .expect("a SERVER span");
    assert_eq!(server_span.attr_str("url.path"), Some("/status/202"));
    assert_eq!(server_span.attr_str("url.query"), Some("after=churn"));

    let (exit, stopped) = agent.stop();
    eprintln!("churn: {stopped:?}");
    assert_eq!(
        stopped.spans,
        stopped.exported + stopped.dropped(),
        "{stopped:?}\n{}",
        exit.stderr
    );
    assert_eq!(stopped.exported, receiver.stats().spans_accepted);
    drop(server);
}

/// Paths of the burst, each answered with its status and a body of a size of its own.
const BURST_STATUSES: [u16; 6] = [200, 201, 404, 410, 500, 503];

fn burst_body_size(status: u16) -> usize {
    match status {
        200 => 16 * 1024,
        201 => 20 * 1024,
        404 => 24 * 1024,
        410 => 28 * 1024,
        500 => 32 * 1024,
        _ => 12 * 1024,
    }
}

/// Bytes of BPF maps (the ring buffer) mapped into process `pid`, from its /proc maps.
fn bpf_map_mapped_bytes(pid: u32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the agent's maps");
    maps.lines()
        .filter(|l| l.ends_with("anon_inode:bpf-map"))
        .filter_map(|l| {
            let (lo, hi) = l.split_whitespace().next()?.split_once('-')?;
            Some(u64::from_str_radix(hi, 16).ok()? - u64::from_str_radix(lo, 16).ok()?)
        })
        .sum()
}

/// The status a request target asks for (`/status/NNN...`).
fn status_of_target(target: &str) -> Option<u16> {
    let rest = target.strip_prefix("/status/")?;
    rest.get(..3)?.parse().ok()
}

#[test]
fn burst_beyond_the_ring_buffer_counts_drops_and_never_mixes_exchanges() {
    let _one_at_a_time = one_at_a_time();
    const CLIENT_THREADS: usize = 32;
    const MAX_REQUESTS: u64 = 20_000;
    let port = free_port();
    let receiver = FaultyReceiver::start(Behaviour::Healthy);
    let mut agent = WatchedAgent::start(
        AgentConfig::new()
            .ports(&[port])
            .arg("--ring-buffer-mib")
            .arg("1"),
        Some(&receiver),
    );
    // The ring's data pages are mapped once (records that wrap are copied out), not twice:
    // the consumer page, the producer page and 1 MiB of data.
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let ring_mapped = bpf_map_mapped_bytes(agent.pid());
    assert_eq!(
        ring_mapped,
        (1 << 20) + 2 * page,
        "bytes of BPF maps mapped into the agent"
    );
    let server = LoadServer::start(port, CLIENT_THREADS + 8, true);

    let next = Arc::new(AtomicU64::new(0));
    let burst_started = Instant::now();
    let burst_end = burst_started + Duration::from_secs(4);
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|thread| {
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                let mut sent: BTreeMap<u16, u64> = BTreeMap::new();
                let mut client = KeepAliveClient::connect(port).expect("connect");
                let mut i = thread;
                while next.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                    && Instant::now() < burst_end
                {
                    let status = BURST_STATUSES[i % BURST_STATUSES.len()];
                    i += 1;
                    let path = format!("/status/{status}?size={}", burst_body_size(status));
                    let (got, body_len) = client.get(&path).expect("burst request");
                    assert_eq!(got, status);
                    assert_eq!(body_len, burst_body_size(status));
                    *sent.entry(status).or_default() += 1;
                }
                sent
            })
        })
        .collect();
    let mut sent: BTreeMap<u16, u64> = BTreeMap::new();
    for client in clients {
        for (status, n) in client.join().expect("burst client thread") {
            *sent.entry(status).or_default() += n;
        }
    }
    let total: u64 = sent.values().sum();
    eprintln!(
        "burst: {total} requests in {:?}: {sent:?}",
        burst_started.elapsed()
    );

    let drops = agent.wait_for_drops("ring-buffer drops to be reported", |d| {
        d.kernel_ringbuf_full > 0
    });
    eprintln!("burst drops: {drops:?}");

    // Let the agent catch up with the burst before the fresh request.
    agent.agent.wait_settled();

    // A single fresh request afterwards is traced exactly.
    assert_eq!(
        get_once(port, "/status/202?fresh=1").expect("fresh request"),
        202
    );
    let fresh = |s: &ObservedSpan| {
        s.attr_int("http.response.status_code") == Some(202)
            || s.attr_str("url.path") == Some("/status/202")
            || s.attr_str("url.full")
                .is_some_and(|u| u.contains("/status/202"))
    };
    wait_spans(
        &receiver,
        &mut agent,
        "the SERVER and CLIENT span of the fresh request",
        pairs_with_status(202, 1),
    );
    // Any duplicate of the fresh spans would have been delivered by now.
    agent.agent.wait_settled();
    let (_exit, stopped) = agent.stop();
    eprintln!("burst: {stopped:?}");
    let spans = receiver.spans();
    let fresh_spans: Vec<&ObservedSpan> = spans.iter().filter(|s| fresh(s)).collect();
    assert_eq!(
        fresh_spans.len(),
        2,
        "the fresh request gives one SERVER and one CLIENT span:\n{}",
        describe(fresh_spans.iter().copied())
    );
    for span in &fresh_spans {
        assert_eq!(span.attr_int("http.response.status_code"), Some(202));
        match span.kind {
            ObservedKind::Server => {
                assert_eq!(span.attr_str("url.path"), Some("/status/202"));
                assert_eq!(span.attr_str("url.query"), Some("fresh=1"));
            }
            _ => assert_eq!(
                span.attr_str("url.full"),
                Some(format!("http://127.0.0.1:{port}/status/202?fresh=1").as_str())
            ),
        }
    }

    // Every burst span is well-formed: its status is the one its target asks for (a response
    // matched to the wrong request would show up here), or it honestly says the response was
    // lost.
    let mut wrong = Vec::new();
    let mut per_target: BTreeMap<(bool, u16), u64> = BTreeMap::new();
    let mut honest_losses = 0;
    let url_prefix = format!("http://127.0.0.1:{port}");
    for span in spans.iter().filter(|s| !fresh(s)) {
        let target = match span.kind {
            ObservedKind::Server => span.attr_str("url.path").map(str::to_owned),
            ObservedKind::Client => span
                .attr_str("url.full")
                .and_then(|u| u.strip_prefix(&url_prefix))
                .map(str::to_owned),
            _ => None,
        };
        let asked = target.as_deref().and_then(status_of_target);
        let Some(asked) = asked.filter(|s| BURST_STATUSES.contains(s)) else {
            wrong.push(span);
            continue;
        };
        *per_target
            .entry((span.kind == ObservedKind::Server, asked))
            .or_default() += 1;
        match span.attr_int("http.response.status_code") {
            Some(code) if code == i64::from(asked) => {}
            Some(_) => wrong.push(span),
            None => {
                let class = span.attr_str("error.type").unwrap_or_default();
                if span.status == ObservedStatus::Error
                    && ["connection_closed", "timeout", "stream_desync"].contains(&class)
                {
                    honest_losses += 1;
                } else {
                    wrong.push(span);
                }
            }
        }
        if span.name != "GET" {
            wrong.push(span);
        }
    }
    eprintln!(
        "burst spans: {} kept, {honest_losses} report a lost response, per target {per_target:?}",
        spans.len()
    );
    let compact = |s: &&ObservedSpan| {
        format!(
            "  {:?} {} {} status={:?} error.type={:?} dur={:?} peer={:?}",
            s.kind,
            s.name,
            s.attr_str("url.full")
                .or(s.attr_str("url.path"))
                .unwrap_or("<no target>"),
            s.attr_int("http.response.status_code"),
            s.attr_str("error.type"),
            s.duration(),
            s.attr_int("network.peer.port"),
        )
    };
    assert!(
        wrong.is_empty(),
        "{} span(s) of {} are wrong (status not the one the target asks for, or no such \
         target):\n{}",
        wrong.len(),
        spans.len(),
        wrong
            .iter()
            .take(40)
            .map(compact)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for ((server_side, status), n) in &per_target {
        let made = sent.get(status).copied().unwrap_or(0);
        assert!(
            *n <= made,
            "{n} {} spans for /status/{status} but only {made} requests were made",
            if *server_side { "SERVER" } else { "CLIENT" }
        );
    }
    drop(server);
}

#[test]
fn sigterm_under_load_flushes_every_finished_exchange() {
    let _one_at_a_time = one_at_a_time();
    /// Paced so that the agent keeps up (no loss to excuse a missing span): about 1000
    /// exchanges per second, well within the ring buffer and the export queue.
    const LOAD_THREADS: u64 = 2;
    const PAUSE: Duration = Duration::from_millis(2);
    let port = free_port();
    let receiver = FaultyReceiver::start(Behaviour::Healthy);
    let agent = WatchedAgent::start(AgentConfig::new().ports(&[port]), Some(&receiver));
    let server = LoadServer::start(port, 4, true);

    let stop = Arc::new(AtomicBool::new(false));
    let completed: Vec<Arc<AtomicU64>> = (0..LOAD_THREADS)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let load: Vec<_> = completed
        .iter()
        .enumerate()
        .map(|(thread, completed)| {
            let stop = Arc::clone(&stop);
            let completed = Arc::clone(completed);
            std::thread::spawn(move || {
                let mut client = KeepAliveClient::connect(port).expect("connect");
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let i = completed.load(Ordering::Relaxed);
                    let (status, _) = client
                        .get(&format!("/status/200?t={thread}&i={i}&size=512"))
                        .expect("load request");
                    assert_eq!(status, 200);
                    completed.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(PAUSE);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    // Everything completed before the signal must be flushed; the load goes on meanwhile.
    let before_signal: Vec<u64> = completed
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let stop_started = Instant::now();
    let (exit, stopped) = agent.stop();
    let stop_took = stop_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().expect("load thread");
    }
    let after_stop: Vec<u64> = completed
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "SIGTERM after {before_signal:?} requests per thread ({after_stop:?} when the agent had \
         stopped); stopped in {stop_took:?}; {stopped:?}"
    );
    assert!(
        after_stop.iter().zip(&before_signal).all(|(a, b)| a > b),
        "the load did not go on while the agent shut down"
    );
    assert_accounting(&stopped, &receiver, &exit);
    let drops = DropTotals::from_logs(&exit.stderr);
    assert_eq!(
        (stopped.dropped(), drops.kernel_ringbuf_full),
        (0, 0),
        "paced load lost spans or events: {stopped:?} {drops:?}"
    );
    let spans = receiver.spans();
    let seen: BTreeSet<(bool, u64, u64)> = spans
        .iter()
        .filter_map(|s| {
            let query = match s.kind {
                ObservedKind::Server => s.attr_str("url.query"),
                ObservedKind::Client => s
                    .attr_str("url.full")
                    .and_then(|u| u.split_once('?').map(|p| p.1)),
                _ => None,
            }?;
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((s.kind == ObservedKind::Server, param("t")?, param("i")?))
        })
        .collect();
    let missing: Vec<(bool, u64, u64)> = before_signal
        .iter()
        .zip(0u64..)
        .flat_map(|(count, thread)| (0..*count).map(move |i| (thread, i)))
        .flat_map(|(thread, i)| [(true, thread, i), (false, thread, i)])
        .filter(|key| !seen.contains(key))
        .collect();
    assert!(
        missing.is_empty(),
        "{} span(s) of exchanges finished before SIGTERM are missing (server?, thread, i): \
         {:?}; {stopped:?}",
        missing.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
    drop(server);
}

#[test]
fn sigkill_leaves_no_bpf_programs_and_the_next_agent_starts_clean() {
    let _one_at_a_time = one_at_a_time();
    use bpf_objects::{Held, Kind};

    let port = free_port();
    let killed = AgentConfig::new().ports(&[port]).start();
    let held = Held::by_pid(killed.pid());
    assert!(
        !held.programs.is_empty() && !held.links.is_empty() && !held.maps.is_empty(),
        "the agent holds no BPF programs, links or maps? {held:?}"
    );
    let names: BTreeSet<String> = held
        .programs
        .iter()
        .filter_map(|id| bpf_objects::program_name(*id))
        .collect();
    eprintln!(
        "killed agent held {} programs {names:?}, {} maps, {} links",
        held.programs.len(),
        held.maps.len(),
        held.links.len()
    );
    // Positive control: what the agent holds is visible to the kernel's global enumeration.
    let loaded = bpf_objects::loaded_ids(Kind::Program);
    assert!(
        held.programs.is_subset(&loaded),
        "programs held {:?} not all enumerated",
        held.programs
    );
    for (kind, ids) in held.all() {
        for id in ids {
            assert!(
                bpf_objects::is_loaded(kind, *id),
                "{kind:?} {id} not found while held"
            );
        }
    }

    let pid = killed.pid();
    let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
        panic!("pid {pid} out of range");
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own agent, not yet
    // reaped (the guard reaps it in `stop`), so it cannot name another process.
    assert_eq!(unsafe { libc::kill(raw_pid, libc::SIGKILL) }, 0);
    let exit = killed.stop();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            exit.status.and_then(|s| s.signal()),
            Some(libc::SIGKILL),
            "{exit:?}"
        );
    }

    // The kernel frees them once the last fd is gone; allow for deferred freeing.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<(Kind, u32)> = held
            .all()
            .into_iter()
            .flat_map(|(kind, ids)| ids.iter().map(move |id| (kind, *id)))
            .filter(|(kind, id)| bpf_objects::is_loaded(*kind, *id))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "BPF objects of the killed agent still loaded 15 s after SIGKILL: {left:?} \
             (programs named {names:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let loaded = bpf_objects::loaded_ids(Kind::Program);
    assert!(
        held.programs.is_disjoint(&loaded),
        "killed agent's programs still enumerated: {:?}",
        held.programs.intersection(&loaded).collect::<Vec<_>>()
    );

    // The next agent starts, loads its own programs and traces.
    let server_port = port;
    let server = PythonServer::start(server_port, "e2e-failure-after-kill");
    let mut next = AgentConfig::new().ports(&[server_port]).json().start();
    let held_next = Held::by_pid(next.pid());
    assert_eq!(
        held_next.programs.len(),
        held.programs.len(),
        "the next agent loads as many programs"
    );
    assert!(held_next.programs.is_disjoint(&held.programs));
    let loaded = bpf_objects::loaded_ids(Kind::Program);
    assert!(held_next.programs.is_subset(&loaded));
    assert!(held.programs.is_disjoint(&loaded));
    assert_eq!(
        tracer_tests::curl(&[&server.url("/status/200")]).status,
        200
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let spans = next.json_spans();
        if spans.iter().any(|s| {
            s.kind == ObservedKind::Server && s.attr_str("url.path") == Some("/status/200")
        }) {
            break;
        }
        next.assert_running();
        assert!(
            Instant::now() < deadline,
            "the agent started after the kill traced nothing:\n{}\n{}",
            describe(&spans),
            next.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    next.stop().assert_success();
}
