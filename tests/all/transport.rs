//! How keybust is reached: HTTP/1.1 and HTTP/2 on the same listener. An
//! HTTP/2 client that knows the server speaks it (h2c, prior knowledge)
//! gets the same answers, and its streams are requests like any other.

use crate::support::answer::assert_endpoint_answers;
use crate::support::{Backend, ENDPOINT, Stack, hashes};
use reqwest::Version;
use serde_json::json;

fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

#[tokio::test]
async fn http2_with_prior_knowledge_gets_the_same_answers() {
    let stack = Stack::in_process(Backend::Embedded).await;
    let client = h2c();
    let url = stack.keybust.url(ENDPOINT);

    assert_endpoint_answers(&client, &url, &stack.issuer.token(), Version::HTTP_2).await;

    // Many streams at once on the one connection, each answered.
    let token = stack.issuer.token();
    let answers = futures_util::future::join_all((0..24).map(|_| {
        client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(json!({ "keyHash": hashes::OWNED }).to_string())
            .send()
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 200);
    }
    // The head bound holds per stream: an oversized head is refused, and
    // the connection serves on.
    let oversized = client
        .post(&url)
        .header("x-padding", "a".repeat(32 << 10))
        .send()
        .await;
    assert_eq!(oversized.unwrap().status(), 431);
    let after = client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({ "keyHash": hashes::OWNED }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    // HTTP/1.1 on the same listener is unchanged.
    let http1 = stack.invalidate(hashes::OWNED).await;
    assert_eq!(http1.version(), Version::HTTP_11);
    assert_eq!(http1.status(), 200);
}
