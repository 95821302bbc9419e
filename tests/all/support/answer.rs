//! A response taken apart for assertions, and [`Answered::answer`], which
//! sends a request and takes its response apart.

/// Sends a request and reads its whole answer.
pub trait Answered {
    /// The answer to this request; a request that cannot be sent fails
    /// the test.
    async fn answer(self) -> Answer;
}

impl Answered for reqwest::RequestBuilder {
    async fn answer(self) -> Answer {
        Answer::of(self.send().await.unwrap()).await
    }
}

/// Status, headers and body of a response, for assertions.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    /// Takes `response` apart, reading its whole body.
    pub async fn of(response: reqwest::Response) -> Self {
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts status and exact JSON body, and that it is labelled JSON and
    /// sent with its length rather than chunked.
    pub fn assert_json(&self, status: u16, body: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body, body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(
            self.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(self.header("transfer-encoding"), None);
    }

    /// Asserts the CORS headers for an allowed request.
    pub fn assert_cors(&self, allow_origin: &str) {
        assert_eq!(
            self.header("access-control-allow-origin"),
            Some(allow_origin)
        );
        assert_eq!(
            self.header("access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            self.header("access-control-allow-methods"),
            Some("POST, OPTIONS")
        );
        let allow_headers = self.header("access-control-allow-headers").unwrap();
        assert!(
            allow_headers.starts_with("Content-Type, Authorization"),
            "{allow_headers}"
        );
        assert!(
            allow_headers.contains("X-WorldMonitor-Key"),
            "{allow_headers}"
        );
        let expose = self.header("access-control-expose-headers").unwrap();
        assert!(expose.contains("Retry-After"), "{expose}");
        assert_eq!(self.header("access-control-max-age"), Some("3600"));
        assert_eq!(self.header("vary"), Some("Origin"));
    }
}

/// The endpoint's three everyday answers, each over `version`: 200 on the
/// full path with `token`, 401 without a token, 204 with CORS on a
/// preflight from an allowed origin.
pub async fn assert_endpoint_answers(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    version: reqwest::Version,
) {
    const ALLOWED: &str = "https://app.worldmonitor.app";
    let body = serde_json::json!({ "keyHash": crate::support::hashes::OWNED }).to_string();
    let full = client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(full.version(), version);
    Answer::of(full).await.assert_json(200, r#"{"ok":true}"#);

    let no_token = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.version(), version);
    assert_eq!(no_token.status(), 401);

    let preflight = client
        .request(reqwest::Method::OPTIONS, url)
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.version(), version);
    let preflight = Answer::of(preflight).await;
    assert_eq!(preflight.status, 204);
    preflight.assert_cors(ALLOWED);
}
