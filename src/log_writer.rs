//! Where log lines go: a buffer in memory that a thread of its own writes out to stderr,
//! so that a request never waits for a write(2), and the log costs one write per batch of
//! lines instead of one per request (issue 11's profile: a write per access-log line was
//! the largest cost after the proxying itself).
//!
//! `tracing_subscriber`'s fmt layer formats each event into a line and hands it to
//! [`LogWriter`] in one `write` call; the line is appended to the shared buffer. The
//! writer thread wakes when the buffer goes from empty to not empty, waits [`BATCH_WAIT`]
//! for more lines to gather, and writes them out in one go. When whatever reads stderr
//! stalls (a full pipe), the buffer grows to [`CAPACITY`]; past that a line is dropped and
//! counted ([`LogWriter::dropped_lines`], `leader_proxy_log_lines_dropped_total`), and the
//! requests go on. tracing-appender's non-blocking writer does the same with a channel,
//! but wakes its thread and writes once per line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread lets lines gather after the first one: the delay of a log
/// line at most (plus the write itself).
pub const BATCH_WAIT: Duration = Duration::from_millis(1);

/// Bytes of log lines held while stderr is not read: about 7,000 access-log lines, a
/// tenth of a second at the highest request rates.
pub const CAPACITY: usize = 1 << 20;

struct Shared {
    lines: Mutex<Vec<u8>>,
    wake: Condvar,
    dropped: AtomicU64,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves whole lines behind: keep writing them.
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` of the logging subscriber (cheap to clone; every clone writes into the
/// same buffer).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it wrote what was buffered: keep it until
/// the process ends.
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread writing to `out` (stderr, in the binary).
    pub fn start<W: Write + Send + 'static>(out: W) -> std::io::Result<(LogWriter, FlushOnDrop)> {
        let shared = Arc::new(Shared {
            lines: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || write_out(&shared, out)
            })?;
        Ok((
            LogWriter {
                shared: shared.clone(),
            },
            FlushOnDrop {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Write for LogWriter {
    /// Takes one whole line (the fmt layer writes each event in one call), or drops it.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut lines = self.shared.lock();
        if lines.len() + line.len() > CAPACITY {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        let was_empty = lines.is_empty();
        lines.extend_from_slice(line);
        drop(lines);
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: waits for lines, lets more gather, writes them in one go.
fn write_out<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        {
            let mut lines = shared.lock();
            while lines.is_empty() && !shared.closed.load(Ordering::Relaxed) {
                lines = shared
                    .wake
                    .wait(lines)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if lines.is_empty() {
                return;
            }
        }
        if !shared.closed.load(Ordering::Relaxed) {
            std::thread::sleep(BATCH_WAIT);
        }
        std::mem::swap(&mut *shared.lock(), &mut batch);
        // Nowhere to report a failed write of the log: the lines are lost, as on a closed
        // stderr; the next batch tries again.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // A burst may have grown it to CAPACITY: do not keep that much for good.
        batch.shrink_to(64 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that keeps what it gets, shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_and_all_written_at_drop() {
        let sink = Sink::default();
        let (mut writer, guard) = LogWriter::start(sink.clone()).expect("thread");
        for i in 0..1000 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(written, expected);
        assert_eq!(writer.dropped_lines(), 0);
    }
}
