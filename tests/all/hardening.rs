//! Bad builds and sandbox walls: a guest that traps, loops, allocates,
//! floods its answer or reaches for what it was not given is stopped, and
//! the host keeps serving good requests alongside.

use crate::support::programs::{mode, serve_programs, serve_programs_of};
use crate::support::{self, Answer, Answered, Backend, Guest, Options, Stack, hashes};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// keybust serving the misbehaving test programs, with short time budgets.
async fn programs() -> (Arc<Stack>, tempfile::TempDir) {
    programs_with(&[]).await
}

async fn programs_with(extra_args: &[&str]) -> (Arc<Stack>, tempfile::TempDir) {
    let (stack, dir) = serve_programs(extra_args).await;
    (Arc::new(stack), dir)
}

/// While `bad` runs, good requests keep getting answered promptly.
async fn good_requests_alongside(stack: &Arc<Stack>, bad: &'static str) -> (Answer, Duration) {
    let started = Instant::now();
    let misbehaving = {
        let stack = stack.clone();
        tokio::spawn(async move { mode(&stack, bad).await })
    };
    for _ in 0..10 {
        let t = Instant::now();
        mode(stack, "ok").await.assert_json(200, r#"{"ok":true}"#);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a good request took {:?} beside {bad}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = misbehaving.await.unwrap();
    (answer, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_guest_gets_500_and_the_host_serves_on() {
    let (stack, _dir) = programs().await;
    let (answer, _) = good_requests_alongside(&stack, "trap").await;
    answer.assert_json(500, r#"{"error":"Internal error"}"#);
    stack.keybust.assert_logged("guest failed").await;
}

/// A guest spinning in wasm code gets 504 within its CPU budget, and good
/// requests beside it are served meanwhile.
async fn endless_loop_is_stopped(stack: &Arc<Stack>) {
    let (answer, took) = good_requests_alongside(stack, "loop").await;
    answer.assert_json(504, r#"{"error":"Gateway timeout"}"#);
    assert!(took < Duration::from_secs(2), "the loop ran for {took:?}");
}

/// The same for a guest spinning on host calls.
async fn import_loop_is_bounded(stack: &Arc<Stack>) {
    let (answer, took) = good_requests_alongside(stack, "imports").await;
    answer.assert_json(504, r#"{"error":"Gateway timeout"}"#);
    assert!(
        took < Duration::from_secs(4),
        "the import loop ran for {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_stopped_by_the_cpu_budget() {
    let (stack, _dir) = programs().await;
    endless_loop_is_stopped(&stack).await;
    stack.keybust.assert_logged("execution time budget").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_thread_an_endless_loop_still_yields_to_other_requests() {
    // One thread runs every request: the loop must give it back each tick.
    let (stack, _dir) = programs_with(&["--worker-threads", "1"]).await;
    endless_loop_is_stopped(&stack).await;
    import_loop_is_bounded(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_past_the_memory_cap_traps() {
    let (stack, _dir) = programs().await;
    let (answer, _) = good_requests_alongside(&stack, "alloc").await;
    answer.assert_json(500, r#"{"error":"Internal error"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_response_streams_without_blocking_others() {
    let (stack, _dir) = programs().await;
    let (answer, _) = good_requests_alongside(&stack, "huge").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), 64 << 20);
}

/// The bounds above, for a wasi:http 0.3 guest (an async handler, run
/// through wasi:http's concurrent machinery): a trap, a spin, a hoard and a
/// tight import loop each end in their answer within their bound, a huge
/// body streams, and good requests are served beside each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_0_3_guest_is_bounded_as_a_0_2_one() {
    let (stack, _dir) = serve_programs_of(Guest::P3, &[]).await;
    let stack = Arc::new(stack);
    let (answer, _) = good_requests_alongside(&stack, "trap").await;
    answer.assert_json(500, r#"{"error":"Internal error"}"#);
    endless_loop_is_stopped(&stack).await;
    let (answer, _) = good_requests_alongside(&stack, "alloc").await;
    answer.assert_json(500, r#"{"error":"Internal error"}"#);
    import_loop_is_bounded(&stack).await;
    let (answer, _) = good_requests_alongside(&stack, "huge").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), 64 << 20);
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"keybust_guest_failures_total{kind="timeout"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_import_loop_is_bounded() {
    let (stack, _dir) = programs().await;
    import_loop_is_bounded(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_sees_no_env_args_files_sockets_or_network() {
    let (stack, _dir) = programs().await;
    let answer = mode(&stack, "snoop").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(seen["env"], 0, "{seen}");
    assert_eq!(seen["args"], 0, "{seen}");
    assert_eq!(seen["secret"], false, "{seen}");
    assert_eq!(seen["file"], false, "{seen}");
    assert_eq!(seen["dir"], false, "{seen}");
    assert_eq!(seen["tcp"], false, "{seen}");
    assert_eq!(seen["outbound"], false, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_cap_too_small_for_the_component_stops_startup_clearly() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keybust"))
        .args(["serve", "--max-instance-memory", "65536"])
        .env_clear()
        .env("KEYBUST_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
        .env(
            "KEYBUST_COMPONENT_CACHE_DIR",
            tempfile::tempdir().unwrap().path(),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot load component embedded"),
        "{stderr}"
    );
    assert!(stderr.contains("exceeds the limit"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_cuts_a_guest_waiting_on_a_host_call() {
    // Dropping a guest call in the middle of a host call must not panic
    // (RUSTSEC-2026-0022) nor stop the host serving.
    let options = Options {
        args: vec!["--request-timeout".into(), "1s".into()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let started = Instant::now();
    let answer = stack.invalidate(hashes::SLOW).await;
    answer.assert_json(504, r#"{"error":"Gateway timeout"}"#);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    stack.keybust.assert_logged("request timeout").await;
    // The owner lookup runs as a task of its own: it ends with its request,
    // not when Convex answers (4 s in). Had it run on, it would count its
    // call when the answer came.
    let answered_by_now = started + Duration::from_secs(5);
    tokio::time::sleep_until(answered_by_now.into()).await;
    let metrics = stack.metrics().await;
    assert!(
        metrics
            .lines()
            .filter(|line| line.starts_with(r#"keybust_capability_calls_total{capability="convex""#))
            .all(|line| line.ends_with(" 0")),
        "{metrics}"
    );
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    assert!(
        !stack.keybust.logs().contains("panicked"),
        "{}",
        stack.keybust.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_grow_http_fields_without_bound() {
    let (stack, _dir) = programs().await;
    let (answer, _) = good_requests_alongside(&stack, "fields").await;
    // Past the fields bound wasmtime traps the guest (RUSTSEC-2026-0021).
    answer.assert_json(500, r#"{"error":"Internal error"}"#);
    stack
        .keybust
        .assert_logged("total size of fields exceeds limit")
        .await;
}

/// Guests that trap and guests that run out of time are counted apart.
/// A guest that writes far more to stderr than the host keeps is not
/// trapped for it: the excess is dropped and counted in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_says_too_much_still_answers() {
    let (stack, _dir) = programs().await;
    mode(&stack, "chatter")
        .await
        .assert_json(200, r#"{"ok":true}"#);
    stack
        .keybust
        .assert_logged("chatter line 0 of a guest")
        .await;
    stack
        .keybust
        .assert_logged("guest output past 4096 bytes dropped")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_traps_and_timeouts_are_counted() {
    let (stack, _dir) = programs().await;
    assert_eq!(mode(&stack, "trap").await.status, 500);
    assert_eq!(mode(&stack, "loop").await.status, 504);
    for line in [
        r#"keybust_guest_failures_total{kind="trap"} 1"#,
        r#"keybust_guest_failures_total{kind="timeout"} 1"#,
    ] {
        stack.wait_for_metric(line).await;
    }
}

/// Both builds of the endpoint component import nothing they do not use:
/// wasi:http (and, on 0.2, its streams), stderr for warnings, and
/// keybust's four interfaces. A std-built component would import the rest
/// of wasi:cli too (environment, exit, the other streams, terminals),
/// which every instantiation resolves.
#[test]
fn the_component_imports_only_what_it_uses() {
    fn imports(bytes: &[u8]) -> Vec<String> {
        let engine = wasmtime::Engine::default();
        let component = wasmtime::component::Component::new(&engine, bytes).unwrap();
        let mut imports: Vec<String> = component
            .component_type()
            .imports(&engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        imports.sort();
        imports
    }
    let ours = [
        "keybust:gateway/cache@0.1.0",
        "keybust:gateway/convex@0.1.0",
        "keybust:gateway/origins@0.1.0",
        "keybust:gateway/session@0.1.0",
    ];
    let mut p2 = ours.to_vec();
    p2.extend([
        "wasi:cli/stderr@0.2.12",
        "wasi:http/types@0.2.12",
        "wasi:io/error@0.2.12",
        "wasi:io/streams@0.2.12",
    ]);
    assert_eq!(imports(keybust::runtime::plugin::EMBEDDED_COMPONENT), p2);
    // wasip3's bindings tie the intrinsics of a byte stream to
    // wasi:cli/stdin and stderr's error type to wasi:cli/types; the
    // component calls neither (and keybust gives it no stdin).
    let mut p3 = ours.to_vec();
    p3.extend([
        "wasi:cli/stderr@0.3.0",
        "wasi:cli/stdin@0.3.0",
        "wasi:cli/types@0.3.0",
        "wasi:http/types@0.3.0",
    ]);
    assert_eq!(imports(support::programs::endpoint_p3()), p3);
}

/// A request slot keeps only a bounded part of its stack resident once its
/// request is done: a guest that recursed deep hands the pages it touched
/// back, rather than leaving them resident in every slot it ever ran in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_guest_leaves_no_stack_resident_behind() {
    const AT_ONCE: usize = 24;
    let (stack, _dir) = programs().await;
    // Shallow first, all at once, so the slots the deep round takes are warm.
    held_at_once(&stack, 1, AT_ONCE).await;
    stack.wait_for_metric("keybust_requests_in_flight 0").await;
    let before = resident_bytes(&stack).await;
    // About 384 KiB of stack each (the wasm stack's cap is 512 KiB).
    held_at_once(&stack, 3000, AT_ONCE).await;
    stack.wait_for_metric("keybust_requests_in_flight 0").await;
    // A slot is freed a moment after its answer has gone: give them all
    // up to 5 s. Kept resident, the deep stacks would be about 9 MiB.
    let bound = AT_ONCE as u64 * (128 << 10);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let grown = resident_bytes(&stack).await.saturating_sub(before);
        if grown < bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "resident memory grew by {} KiB after {AT_ONCE} deep requests",
            grown >> 10
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `count` requests at once that recurse `depth` calls deep and wait there
/// on a Convex answer that takes a second, so each holds a slot of its own.
async fn held_at_once(stack: &Arc<Stack>, depth: u32, count: usize) {
    let url = format!(
        "{}?mode=deep&depth={depth}&key={}",
        support::ENDPOINT,
        hashes::OWNED_DELAYED
    );
    let requests = (0..count).map(|_| {
        let request = stack.request(reqwest::Method::POST, &url);
        tokio::spawn(async move { request.answer().await })
    });
    for answer in futures_util::future::join_all(requests).await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}

/// keybust's resident memory, as its own metrics report it.
async fn resident_bytes(stack: &Stack) -> u64 {
    let metrics = stack.metrics().await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .unwrap_or_else(|| panic!("no resident memory in:\n{metrics}"))
}
