//! `TracedSession`: the usual shape of an end-to-end test, an OTLP receiver plus one agent
//! exporting to it, with waits that fail with both the spans seen and the agent's stderr.

use std::time::{Duration, Instant};

use crate::agent::{Agent, AgentConfig, AgentExit};
use crate::query::describe;
use crate::receiver::{OtlpProtocol, OtlpReceiver};
use crate::span::ObservedSpan;

/// How long a test waits for the spans it expects.
pub const SPAN_TIMEOUT: Duration = Duration::from_secs(30);
/// Slice of a wait between checks that the agent is still alive.
const LIVENESS_SLICE: Duration = Duration::from_millis(500);

/// A receiver and an agent exporting to it.
pub struct TracedSession {
    pub receiver: OtlpReceiver,
    agent: Option<Agent>,
}

impl TracedSession {
    /// A receiver speaking `protocol` and `tracer agent --port P...` exporting to it.
    pub fn start(protocol: OtlpProtocol, ports: &[u16]) -> TracedSession {
        Self::start_with(protocol, AgentConfig::new().ports(ports))
    }

    /// A receiver speaking `protocol` and an agent started from `config` plus the exporter
    /// environment pointing at the receiver.
    pub fn start_with(protocol: OtlpProtocol, config: AgentConfig) -> TracedSession {
        let receiver = OtlpReceiver::start_or_panic(protocol);
        let agent = config.export_to(&receiver).start();
        TracedSession {
            receiver,
            agent: Some(agent),
        }
    }

    /// The running agent (panics after `finish`).
    pub fn agent(&mut self) -> &mut Agent {
        match self.agent.as_mut() {
            Some(agent) => agent,
            None => panic!("the agent was already stopped"),
        }
    }

    /// Waits up to `SPAN_TIMEOUT` for `condition` on the received spans; panics describing
    /// `what` was expected, the spans seen and the agent's stderr.
    pub fn wait_for(
        &mut self,
        what: &str,
        mut condition: impl FnMut(&[ObservedSpan]) -> bool,
    ) -> Vec<ObservedSpan> {
        let deadline = Instant::now() + SPAN_TIMEOUT;
        loop {
            let slice = LIVENESS_SLICE.min(deadline.saturating_duration_since(Instant::now()));
            match self.receiver.wait_for(slice, &mut condition) {
                Ok(spans) => return spans,
                Err(timed_out) => {
                    self.agent().assert_running();
                    if Instant::now() >= deadline {
                        let counters = nonzero_counters(self.agent().metrics_addr());
                        panic!(
                            "waited {SPAN_TIMEOUT:?} for {what}; receiver stats {:?}; {} span(s):\n{}\n\
                             --- agent counters (non-zero) ---\n{counters}\n\
                             --- agent stderr ---\n{}",
                            self.receiver.stats(),
                            timed_out.last_seen.len(),
                            describe(&timed_out.last_seen),
                            self.agent().stderr_text()
                        );
                    }
                }
            }
        }
    }

    /// Stops the agent with SIGTERM, asserts it flushed and exited 0, and returns every span the
    /// receiver got.
    pub fn finish(&mut self) -> Vec<ObservedSpan> {
        let exit = self.stop_agent();
        exit.assert_success();
        self.receiver.spans()
    }

    /// Stops the agent with SIGTERM and returns how it ended.
    pub fn stop_agent(&mut self) -> AgentExit {
        match self.agent.take() {
            Some(agent) => agent.stop(),
            None => panic!("the agent was already stopped"),
        }
    }
}

/// The agent's non-zero counters (`*_total` samples) from its /metrics page, one per line: where
/// a missing span went, in a wait's failure message.
fn nonzero_counters(addr: std::net::SocketAddr) -> String {
    let page = crate::metrics_client::scrape(addr);
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split_once(' ').is_some_and(|(name, value)| {
                name.split('{')
                    .next()
                    .is_some_and(|n| n.ends_with("_total"))
                    && value.trim() != "0"
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}
