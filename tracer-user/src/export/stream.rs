//! Text sinks' plumbing: a bounded queue and one writer task that turns spans into text with a
//! [`SpanFormatter`] (terminal tree or JSON lines) and writes it to stdout or any async writer.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
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

/// Spans already queued that are formatted together into one write (one syscall, one hop to the
/// blocking pool for stdout) instead of one write per span.
const MAX_SPANS_PER_WRITE: usize = 512;

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

/// Destination of a text sink.
pub type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// An async writer on a duplicate of the process's stdout descriptor (writes run on tokio's
/// blocking pool, so a slow terminal never stalls the runtime's workers).
pub fn stdout_writer() -> std::io::Result<BoxedWriter> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
    Ok(Box::new(tokio::fs::File::from_std(std::fs::File::from(fd))))
}

/// A queue plus writer task around a formatter.
#[derive(Debug)]
pub struct StreamSink<F> {
    queue: mpsc::Sender<ExportItem>,
    stats: Arc<ExportStats>,
    worker: JoinHandle<()>,
    _formatter: std::marker::PhantomData<fn() -> F>,
}

impl<F: SpanFormatter> StreamSink<F> {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(formatter: F, writer: BoxedWriter, queue_size: usize) -> Self {
        let (queue, queue_rx) = mpsc::channel(queue_size.max(1));
        let stats = Arc::new(ExportStats::default());
        let worker = tokio::spawn(run_writer(formatter, writer, queue_rx, Arc::clone(&stats)));
        StreamSink {
            queue,
            stats,
            worker,
            _formatter: std::marker::PhantomData,
        }
    }

    /// Queues a span; when the queue is full the span is dropped and counted.
    pub fn submit(&self, item: ExportItem) {
        match self.queue.try_send(item) {
            Ok(()) => self.stats.add_enqueued(1),
            Err(mpsc::error::TrySendError::Full(_)) => self.stats.add_dropped_queue_full(1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.stats.add_dropped_shutdown(1),
        }
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// Prints everything queued or held, giving up at `deadline` from now.
    pub async fn shutdown(self, deadline: Duration) -> ExportStatsSnapshot {
        let StreamSink {
            queue,
            stats,
            mut worker,
            ..
        } = self;
        drop(queue);
        if tokio::time::timeout(deadline, &mut worker).await.is_err() {
            worker.abort();
            tracing::warn!(
                ?deadline,
                "span output did not finish before the shutdown deadline"
            );
        }
        stats.settle_shutdown_losses();
        stats.snapshot()
    }
}

async fn run_writer<F: SpanFormatter>(
    mut formatter: F,
    mut writer: BoxedWriter,
    mut queue_rx: mpsc::Receiver<ExportItem>,
    stats: Arc<ExportStats>,
) {
    let mut broken = false;
    loop {
        let due = formatter.next_due();
        let ready = tokio::select! {
            received = queue_rx.recv() => match received {
                Some(item) => {
                    let now = Instant::now();
                    let mut ready = formatter.accept(item, now);
                    for _ in 1..MAX_SPANS_PER_WRITE {
                        match queue_rx.try_recv() {
                            Ok(item) => ready.append(formatter.accept(item, now)),
                            Err(_) => break,
                        }
                    }
                    ready
                }
                None => {
                    let rest = formatter.take_all();
                    write_rendered(&mut writer, rest, &stats, &mut broken).await;
                    return;
                }
            },
            () = sleep_until_due(due), if due.is_some() => formatter.take_due(Instant::now()),
        };
        write_rendered(&mut writer, ready, &stats, &mut broken).await;
    }
}

async fn sleep_until_due(due: Option<Instant>) {
    if let Some(at) = due {
        tokio::time::sleep_until(at).await;
    }
}

async fn write_rendered(
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
    let result = async {
        writer.write_all(rendered.text.as_bytes()).await?;
        writer.flush().await
    }
    .await;
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
    //! An in-memory async writer for sink tests.
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::AsyncWrite;

    #[derive(Clone, Default)]
    pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>);

    impl SharedBuffer {
        pub fn contents(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        /// How many `poll_write` calls the buffer received.
        pub fn writes(&self) -> usize {
            self.1.load(Ordering::Relaxed)
        }
    }

    impl AsyncWrite for SharedBuffer {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().extend_from_slice(buf);
            self.1.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}
