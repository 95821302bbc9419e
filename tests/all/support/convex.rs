//! A stand-in for Convex's `/api/internal-get-key-owner`.

use super::http::{Handler, respond, spawn_http};
use super::{SECRET, USER};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Key hashes that make the fake Convex behave a certain way.
pub mod hashes {
    pub const OWNED: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    pub const OTHER_OWNER: &str =
        "2222222222222222222222222222222222222222222222222222222222222222";
    pub const UNKNOWN: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    pub const EMPTY_OBJECT: &str =
        "4444444444444444444444444444444444444444444444444444444444444444";
    pub const ARRAY: &str = "5555555555555555555555555555555555555555555555555555555555555555";
    pub const STATUS_500: &str = "6666666666666666666666666666666666666666666666666666666666666666";
    pub const SLOW: &str = "7777777777777777777777777777777777777777777777777777777777777777";
    pub const GARBAGE: &str = "8888888888888888888888888888888888888888888888888888888888888888";
    pub const OWNED_2: &str = "9999999999999999999999999999999999999999999999999999999999999999";
    /// Owned by the caller, answered after one second.
    pub const OWNED_DELAYED: &str =
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
}

/// One call the fake Convex received.
#[derive(Debug, Clone)]
pub struct ConvexCall {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub secret: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub body: String,
}

/// Plays Convex's `/api/internal-get-key-owner`; the key hash picks the answer.
pub struct FakeConvex {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<ConvexCall>>>,
    /// The most calls it was answering at once.
    pub most_at_once: Arc<AtomicUsize>,
}

/// Counts a call as in flight for as long as it lives.
struct InFlight {
    now: Arc<AtomicUsize>,
}

impl InFlight {
    fn start(now: &Arc<AtomicUsize>, most: &AtomicUsize) -> Self {
        let count = now.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(count, Ordering::SeqCst);
        InFlight { now: now.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeConvex {
    pub async fn start() -> Self {
        let calls: Arc<Mutex<Vec<ConvexCall>>> = Arc::default();
        let log = calls.clone();
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = most_at_once.clone();
        let handler: Handler = Arc::new(move |request| {
            let log = log.clone();
            let counted = InFlight::start(&in_flight, &most);
            Box::pin(async move {
                let _counted = counted;
                let header = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap_or_default().to_owned())
                };
                let mut call = ConvexCall {
                    method: request.method().to_string(),
                    path: request.uri().path().to_owned(),
                    content_type: header("content-type"),
                    secret: header("x-convex-shared-secret"),
                    traceparent: header("traceparent"),
                    tracestate: header("tracestate"),
                    body: String::new(),
                };
                let body = request.into_body().collect().await.unwrap().to_bytes();
                call.body = String::from_utf8_lossy(&body).into_owned();
                log.lock().unwrap().push(call.clone());
                if call.secret.as_deref() != Some(SECRET) {
                    return respond(401, r#"{"error":"bad secret"}"#);
                }
                if call.path != "/api/internal-get-key-owner" || call.method != "POST" {
                    return respond(404, r#"{"error":"no such action"}"#);
                }
                let hash = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("keyHash")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                match hash.as_str() {
                    hashes::OWNED | hashes::OWNED_2 => {
                        respond(200, json!({ "userId": USER, "keyId": "k1" }).to_string())
                    }
                    hashes::OTHER_OWNER => respond(200, r#"{"userId":"user_someone_else"}"#),
                    hashes::EMPTY_OBJECT => respond(200, "{}"),
                    hashes::ARRAY => respond(200, "[]"),
                    hashes::STATUS_500 => respond(500, r#"{"error":"boom"}"#),
                    hashes::SLOW => {
                        tokio::time::sleep(Duration::from_secs(4)).await;
                        respond(200, json!({ "userId": USER }).to_string())
                    }
                    hashes::GARBAGE => respond(200, "<html>not json</html>"),
                    hashes::OWNED_DELAYED => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        respond(200, json!({ "userId": USER }).to_string())
                    }
                    _ => respond(200, "null"),
                }
            })
        });
        FakeConvex {
            addr: spawn_http(handler).await,
            calls,
            most_at_once,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<ConvexCall> {
        self.calls.lock().unwrap().clone()
    }
}
