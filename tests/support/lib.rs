//! Support for the end-to-end tests: the OTLP receiver (the `otlp-receiver` crate) keeping spans, the
//! tracer agent under test, the uninstrumented peers it watches (Python, curl, nginx), process
//! and port helpers, and span queries. Helpers panic with context: they serve tests.

pub mod agent;
pub mod agent_counters;
pub mod bpf_objects;
pub mod faulty_receiver;
pub mod go_peer;
pub mod h2peers;
pub mod http_load;
pub mod metrics_client;
pub mod netns;
pub mod nginx;
pub mod peers;
pub mod process;
pub mod query;
pub mod receiver;
pub mod recording_endpoint;
pub mod session;
pub mod settle;
pub mod span;
pub mod store;
pub mod vitals;

pub use agent::{Agent, AgentConfig, AgentExit, tracer_bin, tracer_command};
pub use nginx::Nginx;
pub use otlp_receiver::{METRICS_PATH, TRACES_PATH};
pub use peers::{ClientMode, ClientRun, PythonServer, curl, local_url, run_client};
pub use process::{ChildGuard, ScratchDir, free_port, run_with_timeout, wait_for_port};
pub use receiver::{OtlpProtocol, OtlpReceiver};
pub use session::{SPAN_TIMEOUT, TracedSession};
pub use span::{AttrValue, ObservedKind, ObservedSpan, ObservedStatus, unix_now_ns};
