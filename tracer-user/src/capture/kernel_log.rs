//! The eBPF programs' own diagnostics (aya-log): why a connection was adopted, a record dropped, a
//! walker missing. Off by default: the level is a read-only global fixed when the object loads, so
//! with it off the verifier removes every log statement and the programs cost what they did without
//! them. When asked for (`--kernel-log-level`), a thread named `tracer-kernel-log` forwards the
//! records to the agent's `tracing` logs under the target `tracer::kernel`.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use aya::Ebpf;

/// How much the eBPF programs log (fixed at load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum KernelLogLevel {
    /// Nothing: log statements are removed by the verifier.
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLogLevel {
    /// The value of aya-log's `AYA_LOG_LEVEL` global: the most verbose level enabled, 0 for none.
    pub fn global_value(self) -> u8 {
        match self {
            KernelLogLevel::Off => 0,
            KernelLogLevel::Error => aya_log::Level::Error as u8,
            KernelLogLevel::Warn => aya_log::Level::Warn as u8,
            KernelLogLevel::Info => aya_log::Level::Info as u8,
            KernelLogLevel::Debug => aya_log::Level::Debug as u8,
            KernelLogLevel::Trace => aya_log::Level::Trace as u8,
        }
    }
}

/// Name of aya-log's ring buffer in the object, and its size when logging is off (the smallest a
/// ring buffer may be: it is never read then).
pub const LOG_RING: &str = "AYA_LOGS";
pub const LOG_RING_BYTES_WHEN_OFF: u32 = 4096;

/// Forwards aya-log records to `tracing` (target `tracer::kernel`).
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "tracer::kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "tracer::kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "tracer::kernel", "{message}"),
            log::Level::Debug => tracing::debug!(target: "tracer::kernel", "{message}"),
            log::Level::Trace => tracing::trace!(target: "tracer::kernel", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The forwarding thread; stops when dropped.
pub struct KernelLog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KernelLog {
    /// Takes the object's log ring and starts forwarding. `None` (logged) when the object has no
    /// log ring or the thread cannot start: the probes work the same without it.
    pub fn start(ebpf: &mut Ebpf) -> Option<KernelLog> {
        let mut logger = match aya_log::EbpfLogger::init_with_logger(ebpf, ToTracing) {
            Ok(logger) => logger,
            Err(err) => {
                tracing::warn!(%err, "kernel diagnostics not forwarded");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tracer-kernel-log".to_owned())
            .spawn(move || {
                let fd = logger.as_raw_fd();
                while !stopping.load(Ordering::Relaxed) {
                    let mut poll = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    let ready = unsafe { libc::poll(&mut poll, 1, 200) };
                    if ready < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        tracing::warn!(
                            "polling the kernel log ring failed; kernel diagnostics stop"
                        );
                        return;
                    }
                    // aya-log panics on a record it cannot parse: that ends the diagnostics,
                    // never the agent.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush()))
                        .is_err()
                    {
                        tracing::warn!("an unreadable kernel log record; kernel diagnostics stop");
                        return;
                    }
                }
            });
        match thread {
            Ok(thread) => Some(KernelLog {
                stop,
                thread: Some(thread),
            }),
            Err(err) => {
                tracing::warn!(%err, "kernel diagnostics thread not started");
                None
            }
        }
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_zero_and_levels_grow_more_verbose() {
        assert_eq!(KernelLogLevel::Off.global_value(), 0);
        let values: Vec<u8> = [
            KernelLogLevel::Error,
            KernelLogLevel::Warn,
            KernelLogLevel::Info,
            KernelLogLevel::Debug,
            KernelLogLevel::Trace,
        ]
        .iter()
        .map(|l| l.global_value())
        .collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        assert!(values[0] > 0);
    }
}
