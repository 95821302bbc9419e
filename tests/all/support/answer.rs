//! A response taken apart for assertions.

/// Status, headers and body of a response, for assertions.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
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
