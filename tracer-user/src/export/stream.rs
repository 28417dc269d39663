//! Text sinks' plumbing: a bounded queue and one writer thread that turns spans into text with a
//! [`SpanFormatter`] (terminal tree or JSON lines) and writes it to stdout or any writer.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::stats::{ExportStats, ExportStatsSnapshot};
use crate::model::ExportItem;

/// Text ready to write, and how many spans it carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub spans: u64,
}

impl Rendered {
    /// Appends `more` after this text.
    pub fn append(&mut self, more: Rendered) {
        if self.text.is_empty() {
            self.text = more.text;
        } else {
            self.text.push_str(&more.text);
        }
        self.spans += more.spans;
    }
}

/// Turns spans into text, possibly holding them for a while (to group a trace).
pub trait SpanFormatter: Send + 'static {
    /// Takes one span; returns whatever is ready to print now.
    fn accept(&mut self, item: ExportItem, now: Instant) -> Rendered;
    /// When held spans are next due, if any are held.
    fn next_due(&self) -> Option<Instant>;
    /// Everything due at `now`.
    fn take_due(&mut self, now: Instant) -> Rendered;
    /// Everything held (at shutdown).
    fn take_all(&mut self) -> Rendered;
}

/// Destination of a text sink. Written by the sink's own writer thread, so a slow terminal or
/// pipe blocks only that thread, never the event thread or the async runtime.
pub type BoxedWriter = Box<dyn Write + Send>;

/// A writer on a duplicate of the process's stdout descriptor (unbuffered: the writer thread
/// hands it one string per batch, so one `write` per batch).
pub fn stdout_writer() -> std::io::Result<BoxedWriter> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
    Ok(Box::new(std::fs::File::from(fd)))
}

/// Spans waiting for the writer thread.
#[derive(Debug, Default)]
struct Pending {
    items: Vec<ExportItem>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A Vec and a flag cannot be left half-updated by a panic: keep going.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A bounded queue plus one writer thread around a formatter. Submitting takes one lock and
/// wakes the writer at most once per batch; the writer formats everything queued and writes it
/// with one `write_all`.
#[derive(Debug)]
pub struct StreamSink<F> {
    shared: Arc<Shared>,
    capacity: usize,
    stats: Arc<ExportStats>,
    /// Resolves (with an error) when the writer thread has finished.
    finished: tokio::sync::oneshot::Receiver<()>,
    _formatter: std::marker::PhantomData<fn() -> F>,
}

impl<F: SpanFormatter> StreamSink<F> {
    /// Starts the writer thread.
    pub fn start(formatter: F, writer: BoxedWriter, queue_size: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let stats = Arc::new(ExportStats::default());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        {
            let shared = Arc::clone(&shared);
            let stats = Arc::clone(&stats);
            let spawned = std::thread::Builder::new()
                .name("tracer-output".into())
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| {
                        run_writer(formatter, writer, &shared, &stats)
                    });
                    if let Err(panic) = std::panic::catch_unwind(run) {
                        writer_panicked(panic.as_ref(), &shared, &stats);
                    }
                    drop(done);
                });
            if let Err(error) = spawned {
                // The sender went down with the closure: shutdown sees the end at once, and
                // every span submitted stays counted as lost at shutdown.
                tracing::warn!(%error, "cannot start the span output thread; spans are discarded");
            }
        }
        StreamSink {
            shared,
            capacity: queue_size.max(1),
            stats,
            finished,
            _formatter: std::marker::PhantomData,
        }
    }

    /// Queues a span; when the queue is full the span is dropped and counted.
    pub fn submit(&self, item: ExportItem) {
        let mut one = vec![item];
        self.submit_batch(&mut one);
    }

    /// Queues a batch of spans under one lock with at most one wake-up of the writer; spans
    /// beyond the queue's room are dropped and counted. `items` is left empty.
    pub fn submit_batch(&self, items: &mut Vec<ExportItem>) {
        let offered = items.len();
        if offered == 0 {
            return;
        }
        let (accepted, closed) = {
            let mut pending = self.shared.lock();
            if pending.closed {
                (0, true)
            } else {
                let room = self.capacity.saturating_sub(pending.items.len());
                let accepted = offered.min(room);
                pending.items.extend(items.drain(..accepted));
                (accepted, false)
            }
        };
        items.clear();
        let refused = (offered - accepted) as u64;
        if closed {
            self.stats.add_dropped_shutdown(refused);
            return;
        }
        // Every submitted span counts as enqueued and a refused one as enqueued then dropped
        // (queue full), as in the OTLP sink: the shutdown settlement subtracts queue-full drops
        // from the enqueued total.
        self.stats.add_enqueued(offered as u64);
        if accepted > 0 {
            self.shared.ready.notify_one();
        }
        if refused > 0 {
            self.stats.add_dropped_queue_full(refused);
        }
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// Prints everything queued or held, giving up at `deadline` from now (the writer thread,
    /// blocked on a stuck stdout, is then left behind; its spans count as lost at shutdown).
    pub async fn shutdown(self, deadline: Duration) -> ExportStatsSnapshot {
        let StreamSink {
            shared,
            stats,
            finished,
            ..
        } = self;
        shared.lock().closed = true;
        shared.ready.notify_one();
        if tokio::time::timeout(deadline, finished).await.is_err() {
            tracing::warn!(
                ?deadline,
                "span output did not finish before the shutdown deadline"
            );
        }
        stats.settle_shutdown_losses();
        stats.snapshot()
    }
}

/// After a panic on the writer thread: no more spans are taken, those queued count as failed
/// (the batch being written when it panicked is settled as lost at shutdown).
fn writer_panicked(panic: &(dyn std::any::Any + Send), shared: &Shared, stats: &ExportStats) {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let pending = {
        let mut pending = shared.lock();
        pending.closed = true;
        std::mem::take(&mut pending.items)
    };
    stats.add_dropped_export_failed(pending.len() as u64);
    tracing::error!(
        panic = %message,
        spans_dropped = pending.len(),
        "the span output thread panicked; further spans are discarded"
    );
}

/// The writer thread: waits for spans (or a held trace's due time), formats everything queued
/// and writes it at once; at close, prints what is held and returns.
fn run_writer<F: SpanFormatter>(
    mut formatter: F,
    mut writer: BoxedWriter,
    shared: &Shared,
    stats: &ExportStats,
) {
    let mut broken = false;
    let mut batch: Vec<ExportItem> = Vec::new();
    loop {
        let closed = {
            let mut pending = shared.lock();
            loop {
                if !pending.items.is_empty() || pending.closed {
                    break;
                }
                match formatter.next_due() {
                    None => {
                        pending = shared
                            .ready
                            .wait(pending)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    Some(due) => {
                        let now = Instant::now();
                        if due <= now {
                            break;
                        }
                        pending = shared
                            .ready
                            .wait_timeout(pending, due - now)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0;
                    }
                }
            }
            std::mem::swap(&mut batch, &mut pending.items);
            pending.closed
        };
        let now = Instant::now();
        let mut ready = Rendered::default();
        for item in batch.drain(..) {
            ready.append(formatter.accept(item, now));
        }
        ready.append(formatter.take_due(now));
        if closed {
            ready.append(formatter.take_all());
            write_rendered(&mut writer, ready, stats, &mut broken);
            return;
        }
        write_rendered(&mut writer, ready, stats, &mut broken);
    }
}

fn write_rendered(
    writer: &mut BoxedWriter,
    rendered: Rendered,
    stats: &ExportStats,
    broken: &mut bool,
) {
    if rendered.spans == 0 && rendered.text.is_empty() {
        return;
    }
    if *broken {
        stats.add_dropped_export_failed(rendered.spans);
        return;
    }
    let result = writer
        .write_all(rendered.text.as_bytes())
        .and_then(|()| writer.flush());
    match result {
        Ok(()) => stats.add_exported(rendered.spans),
        Err(error) => {
            tracing::warn!(%error, "cannot write spans; further output is discarded");
            *broken = true;
            stats.add_dropped_export_failed(rendered.spans);
        }
    }
}

#[cfg(test)]
pub(crate) mod test_writer {
    //! An in-memory writer for sink tests.
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>);

    impl SharedBuffer {
        pub fn contents(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        /// How many `write` calls the buffer received.
        pub fn writes(&self) -> usize {
            self.1.load(Ordering::Relaxed)
        }
    }

    impl std::io::Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
