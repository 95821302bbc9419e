//! Clients that keep sending valid revocations until told to stop, and
//! report every answer that was not `200 {"ok":true}`.

use super::{Stack, hashes};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::task::JoinHandle;

/// `clients` loops of valid requests against one stack.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    clients: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    /// Starts `clients` clients.
    pub fn start(stack: &Arc<Stack>, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stack, stop, sent) = (stack.clone(), stop.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = stack.invalidate(hashes::OWNED).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if answer.status != 200 || answer.body != r#"{"ok":true}"# {
                            failures.push(format!("{} {}", answer.status, answer.body));
                        }
                    }
                    failures
                })
            })
            .collect();
        Load {
            stop,
            sent,
            clients,
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the clients; the requests sent and the failed answers.
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for client in self.clients {
            failures.extend(client.await.unwrap());
        }
        (self.sent.load(Ordering::Relaxed), failures)
    }
}
