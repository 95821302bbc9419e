//! `keybust dev`: the walkthrough works on a machine with nothing installed.

use crate::support::{self, Keybust};

/// Pulls the URL, the bearer token and the body out of the printed curl.
fn parse_curl(printed: &[String]) -> (String, String, String) {
    let text = printed.join("\n");
    let after = |marker: &str, end: char| {
        let start = text
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in:\n{text}"))
            + marker.len();
        text[start..].split(end).next().unwrap().to_owned()
    };
    (
        after("-X POST ", ' '),
        after("Authorization: Bearer ", '\''),
        after("-d '", '\''),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_a_curl_that_gets_200() {
    let keybust = tokio::task::spawn_blocking(|| Keybust::start(&["dev"], &[]))
        .await
        .unwrap();
    let (url, token, body) = parse_curl(&keybust.printed);
    assert!(
        url.starts_with(&format!("http://{}", keybust.addr)),
        "{url}"
    );
    support::use_aws_lc_for_tls();
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(&url)
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
    };
    let response = send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
    // Repeatable, and a tampered token is refused.
    assert_eq!(send().await.unwrap().status(), 200);
    let response = client
        .post(&url)
        .header("Authorization", format!("Bearer {token}x"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Logs carry neither the token nor the key hash.
    let hash: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hash = hash["keyHash"].as_str().unwrap();
    let logs = keybust.logs();
    assert!(!logs.contains(&token) && !logs.contains(hash), "{logs}");
}
