//! A graceful stop: on SIGTERM keybust stops taking connections, finishes
//! the requests in flight, and exits zero, on any number of worker threads.

use crate::support::{Backend, Options, Stack, hashes};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    drains_on_sigterm(Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_concurrent_requests_and_drains() {
    drains_on_sigterm(Options {
        env: vec![("KEYBUST_WORKER_THREADS", "1".into())],
        ..Options::default()
    })
    .await;
}

/// Sixteen requests in flight at once (each waits a second on Convex), then
/// SIGTERM: every one is answered and keybust exits 0.
async fn drains_on_sigterm(options: Options) {
    let stack = Arc::new(Stack::with(Backend::Embedded, options).await);
    // Each of these spends a second in the owner lookup.
    let mut in_flight = Vec::new();
    for _ in 0..16 {
        let stack = stack.clone();
        in_flight.push(tokio::spawn(async move {
            stack.invalidate(hashes::OWNED_DELAYED).await
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stack.convex.calls().len() < 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never reached Convex"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.keybust.signal(libc::SIGTERM);
    for request in in_flight {
        request.await.unwrap().assert_json(200, r#"{"ok":true}"#);
    }
    let mut stack = Arc::into_inner(stack).expect("all clients finished");
    let (stack, status) = tokio::task::spawn_blocking(move || {
        let status = stack.keybust.wait_exit(Duration::from_secs(10));
        (stack, status)
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // Access lines wait in a buffer; every one is written before exit.
    stack
        .keybust
        .wait_for_lines(&["keybust::access", "status=200"], 16)
        .await;
}
