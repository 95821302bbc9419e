//! What keybust logged, from either host: the stderr of the process, or the
//! events the library emits in the test's own thread.

use super::{SECRET, UPSTASH_TOKEN, hashes};
use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// Log text as it arrives, shared between its writer and the test.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<String>>);

impl Logs {
    /// Appends one line.
    pub fn push_line(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits until the logs mention `needle` (they may arrive through a
    /// pipe), and fails with the logs after five seconds.
    pub async fn assert_logged(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "logs never said {needle:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that nothing secret reached the logs: the Convex and Upstash
    /// secrets, the key hashes, and `extra`.
    pub fn assert_clean(&self, extra: &[&str]) {
        let logs = self.text();
        for needle in [SECRET, UPSTASH_TOKEN].iter().chain(extra) {
            assert!(!logs.contains(needle), "logs leak {needle:?}:\n{logs}");
        }
        for hash in [
            hashes::OWNED,
            hashes::OTHER_OWNER,
            hashes::UNKNOWN,
            hashes::STATUS_500,
            hashes::SLOW,
            hashes::GARBAGE,
        ] {
            assert!(!logs.contains(hash), "logs leak a key hash:\n{logs}");
        }
    }

    /// From now on, what keybust's library logs on this thread (at `info`
    /// and above, as `RUST_LOG=info` gives the process) lands in the
    /// returned logs, until another capture starts on this thread or
    /// [`Logs::stop_capture`].
    ///
    /// One process-wide subscriber writes each event into the sink of the
    /// thread that emits it. A test sees its server's events when they run
    /// on its own thread: on a current-thread runtime (`#[tokio::test]`'s
    /// default flavor), where the server's tasks run beside the test.
    pub fn capture_this_thread() -> Logs {
        static SUBSCRIBER: Once = Once::new();
        SUBSCRIBER.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer(|| ThreadSink)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other subscriber in the test binary");
        });
        let logs = Logs::default();
        SINK.with(|sink| *sink.borrow_mut() = Some(logs.clone()));
        logs
    }

    /// Ends this capture on this thread, if it is still the current one.
    pub fn stop_capture(&self) {
        let _ = SINK.try_with(|sink| {
            let mut sink = sink.borrow_mut();
            if sink
                .as_ref()
                .is_some_and(|logs| Arc::ptr_eq(&logs.0, &self.0))
            {
                *sink = None;
            }
        });
    }
}

thread_local! {
    static SINK: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

/// Writes into the current thread's capture, if any.
struct ThreadSink;

impl io::Write for ThreadSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A thread that is tearing down has no sink left: drop the event.
        let _ = SINK.try_with(|sink| {
            if let Some(logs) = sink.borrow().as_ref() {
                logs.0
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(buf));
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
