//! Request ids and access lines: every request gets an id (the client's,
//! or a new one), echoed in its answer and logged once, in text or JSON.

use crate::support::{self, Backend, Options, Stack, hashes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_logged_once_per_request() {
    let stack = Stack::start(Backend::Embedded).await;
    let response = stack
        .request(reqwest::Method::POST, support::ENDPOINT)
        .header("x-request-id", "trace-abc-123")
        .header("user-agent", "revoker/2.1 (access-line test)")
        .bearer_auth(stack.issuer.token())
        .body(format!(r#"{{"keyHash":"{}"}}"#, hashes::OWNED))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let response = stack
        .request(reqwest::Method::GET, "/elsewhere")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!generated.is_empty());
    stack.keybust.assert_logged("trace-abc-123").await;
    stack.keybust.assert_logged(&generated).await;
    let logs = stack.keybust.logs();
    let line = logs.lines().find(|l| l.contains("trace-abc-123")).unwrap();
    for field in [
        "method=POST",
        "path=\"/api/invalidate-user-api-key-cache\"",
        "status=200",
        "latency_ms=",
        "digest=",
        "client=127.0.0.1:",
        "user_agent=\"revoker/2.1 (access-line test)\"",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert_eq!(logs.matches("trace-abc-123").count(), 1);
    stack.keybust.assert_logs_clean(&[&stack.issuer.token()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let options = Options {
        args: vec!["--log-format".into(), "json".into()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    stack.keybust.assert_logged("keybust::access").await;
    let mut access = 0;
    for line in stack.keybust.logs().lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(value.get("level").is_some(), "{line}");
        // Fields at the top level, where collectors look for them.
        assert!(value.get("fields").is_none(), "{line}");
        if value["target"] == "keybust::access" {
            assert_eq!(value["status"], 200, "{line}");
            assert_eq!(value["method"], "POST", "{line}");
            access += 1;
        }
    }
    assert_eq!(access, 1);
}
