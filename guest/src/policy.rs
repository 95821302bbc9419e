//! The endpoint's decisions, as plain Rust.
//!
//! Nothing here knows about WIT or wasi:http: the request arrives as a
//! [`RequestHead`] plus a way to read the body, the host's capabilities as a
//! [`Capabilities`] implementation, and the answer leaves as a [`Response`].
//! That keeps every rule of the contract testable natively, and lets the same
//! policy run outside a component when it needs to be compared with one.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use serde_json::Value;

/// Where the endpoint is served; the host routes only this path to the guest.
pub const ENDPOINT_PATH: &str = "/api/invalidate-user-api-key-cache";

/// The largest request body the endpoint reads before answering 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The Convex HTTP action that answers who owns a key hash.
pub const OWNER_LOOKUP_PATH: &str = "/api/internal-get-key-owner";

/// `Access-Control-Allow-Methods` on every allowed answer.
pub const ALLOW_METHODS: &str = "POST, OPTIONS";
/// `Access-Control-Allow-Headers` on every allowed answer.
pub const ALLOW_HEADERS: &str = "Content-Type, Authorization, X-WorldMonitor-Key, X-Api-Key, \
     X-Widget-Key, X-Pro-Key, X-WorldMonitor-Desktop-Timestamp, \
     X-WorldMonitor-Desktop-Signature, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID";
/// `Access-Control-Expose-Headers` on every allowed answer.
pub const EXPOSE_HEADERS: &str = "Mcp-Session-Id, WWW-Authenticate, Retry-After, X-RateLimit-Limit, \
     X-RateLimit-Remaining, X-RateLimit-Reset";

/// The parts of a request the policy reads before it decides to read the body.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The HTTP method, upper case as sent.
    pub method: &'a str,
    /// The `Origin` header, if the request has one.
    pub origin: Option<&'a str>,
    /// The `Authorization` header, if the request has one.
    pub authorization: Option<&'a str>,
    /// The declared `Content-Length`, when the client sent a valid one.
    pub content_length: Option<u64>,
}

/// Why the request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The body is longer than the bound the policy asked for.
    TooLarge,
    /// The stream broke off before its end.
    Broken,
}

/// Why a session token yielded no user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// The token is not a valid session token.
    Invalid,
    /// The host cannot verify tokens right now.
    Unverifiable,
}

/// Why Convex gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvexError {
    /// Convex is not configured on this host.
    NotConfigured,
    /// The host refuses the path.
    ForbiddenPath,
    /// No answer within the host's deadline.
    Timeout,
    /// The exchange failed.
    Transport,
}

/// A complete answer from Convex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvexResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The response body.
    pub body: Vec<u8>,
}

/// Why a cache delete did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheError {
    /// The backend failed or could not be reached.
    Unavailable,
    /// The backend did not answer in time.
    Timeout,
}

/// What the host lends the policy; the component's WIT imports, natively.
pub trait Capabilities {
    /// Whether a browser origin is on the allow-list.
    fn origin_allowed(&self, origin: &str) -> bool;
    /// The `Access-Control-Allow-Origin` value when the request names no origin.
    fn default_origin(&self) -> String;
    /// The Clerk user id a bearer token proves, if any.
    fn validate_session(&self, token: &str) -> Result<String, SessionError>;
    /// POSTs JSON to a Convex internal HTTP action.
    fn convex_post(&self, path: &str, body: &[u8]) -> Result<ConvexResponse, ConvexError>;
    /// Deletes one cache key (the host adds the deploy prefix).
    fn cache_delete(&self, key: &str) -> Result<(), CacheError>;
    /// Records a fault the operator should see; never given secrets or key hashes.
    fn warn(&self, message: &str);
}

/// An answer ready to be written to the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(&'static str, String)>,
    /// The body bytes (empty for 204).
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the first header with this name, ignoring ASCII case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(status: u16, body: &str, cors: Option<Vec<(&'static str, String)>>) -> Self {
        let mut headers = cors.unwrap_or_default();
        headers.push(("content-type", "application/json".to_owned()));
        Response {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }
}

/// The CORS headers of an allowed answer, `Access-Control-Allow-Origin`
/// first.
pub fn cors_headers(allow_origin: String) -> Vec<(&'static str, String)> {
    vec![
        ("access-control-allow-origin", allow_origin),
        ("access-control-allow-credentials", "true".to_owned()),
        ("access-control-allow-methods", ALLOW_METHODS.to_owned()),
        ("access-control-allow-headers", ALLOW_HEADERS.to_owned()),
        ("access-control-expose-headers", EXPOSE_HEADERS.to_owned()),
        ("access-control-max-age", "3600".to_owned()),
        ("vary", "Origin".to_owned()),
    ]
}

/// The bearer token in an `Authorization` value: `Bearer ` is case-sensitive,
/// and an empty token is no token.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty())
}

/// Whether a value is a SHA-256 key hash as the gateway stores it: 64 lower-case hex digits.
pub fn is_key_hash(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a body asks to invalidate, or the 422 message when it asks nothing valid.
pub fn parse_key_hash(body: &[u8]) -> Result<String, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "Invalid JSON body")?;
    match value.get("keyHash") {
        Some(Value::String(hash)) if is_key_hash(hash) => Ok(hash.clone()),
        _ => Err("Invalid keyHash"),
    }
}

/// The ownership verdict on a 2xx answer from the owner lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Convex does not know the hash: nothing to invalidate.
    Unknown,
    /// The caller owns the key.
    Caller,
    /// Someone else owns it, or the answer names no owner.
    NotCaller,
}

/// Reads the owner lookup's body against the caller's user id; `None` when it is not JSON.
pub fn ownership(body: &[u8], user_id: &str) -> Option<Ownership> {
    let value: Value = serde_json::from_slice(body).ok()?;
    Some(match value {
        Value::Null => Ownership::Unknown,
        other => match other.get("userId") {
            Some(Value::String(owner)) if owner == user_id => Ownership::Caller,
            _ => Ownership::NotCaller,
        },
    })
}

/// Answers one request to the endpoint, in the contract's order.
///
/// `read_body` is called at most once, with the bound to enforce, and only
/// after the caller is authenticated. A component whose body read is
/// asynchronous (wasi:http 0.3) drives [`begin`] and [`Pending::finish`]
/// itself instead.
pub fn handle(
    head: &RequestHead<'_>,
    read_body: impl FnOnce(usize) -> Result<Vec<u8>, BodyError>,
    caps: &impl Capabilities,
) -> Response {
    match begin(head, caps) {
        Step::Answer(response) => response,
        Step::ReadBody(pending) => {
            let body = read_body(pending.limit());
            pending.finish(body, caps)
        }
    }
}

/// Where [`begin`] leaves a request: answered from its head alone, or
/// authenticated and waiting for its body.
#[derive(Debug)]
pub enum Step {
    /// The answer; the body is never read.
    Answer(Response),
    /// Read the body, up to [`Pending::limit`] bytes, and give it to
    /// [`Pending::finish`].
    ReadBody(Pending),
}

/// An authenticated request whose body is still to be read.
#[derive(Debug)]
pub struct Pending {
    user_id: String,
    cors: Vec<(&'static str, String)>,
}

/// The rules that need only the request's head: origin, method, session,
/// declared length. Nothing here reads the body, so an unauthenticated
/// caller never gets to send one.
pub fn begin(head: &RequestHead<'_>, caps: &impl Capabilities) -> Step {
    let allow_origin = match head.origin.filter(|origin| !origin.is_empty()) {
        Some(origin) if !caps.origin_allowed(origin) => {
            return Step::Answer(Response::json(
                403,
                r#"{"error":"Origin not allowed"}"#,
                None,
            ));
        }
        Some(origin) => origin.to_owned(),
        None => caps.default_origin(),
    };
    let cors = cors_headers(allow_origin);
    let reply =
        |status: u16, body: &str| Step::Answer(Response::json(status, body, Some(cors.clone())));

    if head.method == "OPTIONS" {
        return Step::Answer(Response {
            status: 204,
            headers: cors,
            body: Vec::new(),
        });
    }
    if head.method != "POST" {
        return reply(405, r#"{"error":"Method not allowed"}"#);
    }

    let Some(token) = bearer_token(head.authorization) else {
        return reply(401, r#"{"error":"UNAUTHENTICATED"}"#);
    };
    let user_id = match caps.validate_session(token) {
        Ok(user_id) if !user_id.is_empty() => user_id,
        _ => return reply(401, r#"{"error":"UNAUTHENTICATED"}"#),
    };

    if head
        .content_length
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return reply(413, r#"{"error":"Payload too large"}"#);
    }
    Step::ReadBody(Pending { user_id, cors })
}

impl Pending {
    /// How many body bytes the endpoint takes; one more is "too large".
    pub fn limit(&self) -> usize {
        MAX_BODY_BYTES
    }

    /// The rules that need the body: its shape, the key's owner, the delete.
    pub fn finish(self, body: Result<Vec<u8>, BodyError>, caps: &impl Capabilities) -> Response {
        let Pending { user_id, cors } = self;
        let reply = |status: u16, body: &str| Response::json(status, body, Some(cors.clone()));
        let body = match body {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return reply(413, r#"{"error":"Payload too large"}"#),
            Err(BodyError::Broken) => return reply(422, r#"{"error":"Invalid JSON body"}"#),
        };
        let key_hash = match parse_key_hash(&body) {
            Ok(hash) => hash,
            Err(message) => return reply(422, &format!(r#"{{"error":"{message}"}}"#)),
        };

        let unavailable = || reply(503, r#"{"error":"Service unavailable"}"#);
        let lookup_body = serde_json::json!({ "keyHash": key_hash }).to_string();
        let answer = match caps.convex_post(OWNER_LOOKUP_PATH, lookup_body.as_bytes()) {
            Ok(answer) => answer,
            // The host logs why: it knows which setting or connection failed.
            Err(_) => return unavailable(),
        };
        if !(200..300).contains(&answer.status) {
            caps.warn(&format!(
                "Convex ownership check answered HTTP {}",
                answer.status
            ));
            return unavailable();
        }
        match ownership(&answer.body, &user_id) {
            None => {
                caps.warn("Convex ownership check answered a body that is not JSON");
                unavailable()
            }
            Some(Ownership::Unknown) => reply(200, r#"{"ok":true}"#),
            Some(Ownership::NotCaller) => reply(403, r#"{"error":"FORBIDDEN"}"#),
            Some(Ownership::Caller) => {
                match caps.cache_delete(&format!("user-api-key:{key_hash}")) {
                    Ok(()) => reply(200, r#"{"ok":true}"#),
                    Err(_) => unavailable(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    struct Fake {
        session: Result<String, SessionError>,
        convex: Result<ConvexResponse, ConvexError>,
        cache: Result<(), CacheError>,
        lookups: RefCell<Vec<(String, String)>>,
        deleted: RefCell<Vec<String>>,
        warnings: RefCell<Vec<String>>,
    }

    impl Fake {
        fn owner(body: &str) -> Self {
            Fake {
                session: Ok("user_1".into()),
                convex: Ok(ConvexResponse {
                    status: 200,
                    body: body.as_bytes().to_vec(),
                }),
                cache: Ok(()),
                lookups: RefCell::default(),
                deleted: RefCell::default(),
                warnings: RefCell::default(),
            }
        }
    }

    impl Capabilities for Fake {
        fn origin_allowed(&self, origin: &str) -> bool {
            origin == "https://worldmonitor.app"
        }
        fn default_origin(&self) -> String {
            "https://default.example".into()
        }
        fn validate_session(&self, token: &str) -> Result<String, SessionError> {
            assert_eq!(token, "tok");
            self.session.clone()
        }
        fn convex_post(&self, path: &str, body: &[u8]) -> Result<ConvexResponse, ConvexError> {
            self.lookups
                .borrow_mut()
                .push((path.into(), String::from_utf8(body.to_vec()).unwrap()));
            self.convex.clone()
        }
        fn cache_delete(&self, key: &str) -> Result<(), CacheError> {
            self.deleted.borrow_mut().push(key.into());
            self.cache
        }
        fn warn(&self, message: &str) {
            self.warnings.borrow_mut().push(message.into());
        }
    }

    fn post<'a>(origin: Option<&'a str>, authorization: Option<&'a str>) -> RequestHead<'a> {
        RequestHead {
            method: "POST",
            origin,
            authorization,
            content_length: None,
        }
    }

    fn run(head: RequestHead<'_>, body: &str, caps: &Fake) -> Response {
        let body = body.as_bytes().to_vec();
        handle(
            &head,
            |limit| {
                if body.len() > limit {
                    Err(BodyError::TooLarge)
                } else {
                    Ok(body)
                }
            },
            caps,
        )
    }

    fn body(resp: &Response) -> &str {
        std::str::from_utf8(&resp.body).unwrap()
    }

    fn valid_body() -> String {
        format!(r#"{{"keyHash":"{HASH}"}}"#)
    }

    #[test]
    fn disallowed_origin_is_403_without_cors() {
        let caps = Fake::owner(r#"{"userId":"user_1"}"#);
        let resp = run(
            post(Some("https://evil.example"), Some("Bearer tok")),
            "",
            &caps,
        );
        assert_eq!(resp.status, 403);
        assert_eq!(body(&resp), r#"{"error":"Origin not allowed"}"#);
        assert_eq!(resp.header("access-control-allow-origin"), None);
        assert_eq!(resp.header("content-type"), Some("application/json"));
    }

    #[test]
    fn preflight_is_204_with_cors_and_echoes_allowed_origin() {
        let caps = Fake::owner("null");
        let head = RequestHead {
            method: "OPTIONS",
            ..post(Some("https://worldmonitor.app"), None)
        };
        let resp = run(head, "", &caps);
        assert_eq!(resp.status, 204);
        assert!(resp.body.is_empty());
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some("https://worldmonitor.app")
        );
        assert_eq!(resp.header("access-control-max-age"), Some("3600"));
        assert_eq!(resp.header("vary"), Some("Origin"));
    }

    #[test]
    fn no_origin_gets_the_default_origin() {
        let caps = Fake::owner("null");
        let resp = run(post(None, None), "", &caps);
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some("https://default.example")
        );
    }

    #[test]
    fn other_methods_are_405() {
        let caps = Fake::owner("null");
        for method in ["GET", "PUT", "DELETE", "post"] {
            let head = RequestHead {
                method,
                ..post(None, Some("Bearer tok"))
            };
            let resp = run(head, "", &caps);
            assert_eq!(resp.status, 405, "{method}");
            assert_eq!(body(&resp), r#"{"error":"Method not allowed"}"#);
        }
    }

    #[test]
    fn bearer_parsing_is_strict() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(None), None);
    }

    #[test]
    fn missing_or_rejected_token_is_401_before_the_body_is_read() {
        let mut caps = Fake::owner("null");
        for auth in [None, Some("Token tok"), Some("Bearer ")] {
            let resp = handle(&post(None, auth), |_| panic!("body read"), &caps);
            assert_eq!(resp.status, 401);
            assert_eq!(body(&resp), r#"{"error":"UNAUTHENTICATED"}"#);
        }
        for err in [SessionError::Invalid, SessionError::Unverifiable] {
            caps.session = Err(err);
            let resp = handle(
                &post(None, Some("Bearer tok")),
                |_| panic!("body read"),
                &caps,
            );
            assert_eq!(resp.status, 401);
        }
        caps.session = Ok(String::new());
        let resp = run(post(None, Some("Bearer tok")), &valid_body(), &caps);
        assert_eq!(resp.status, 401);
    }

    #[test]
    fn bodies_that_are_not_json_are_422() {
        let caps = Fake::owner("null");
        for text in ["", "{", "keyHash=abc", "\u{0}"] {
            let resp = run(post(None, Some("Bearer tok")), text, &caps);
            assert_eq!(resp.status, 422, "{text:?}");
            assert_eq!(body(&resp), r#"{"error":"Invalid JSON body"}"#);
        }
    }

    #[test]
    fn bad_key_hashes_are_422() {
        let caps = Fake::owner("null");
        let upper = format!(r#"{{"keyHash":"{}"}}"#, HASH.to_uppercase());
        let short = format!(r#"{{"keyHash":"{}"}}"#, &HASH[1..]);
        for text in [
            "null",
            "[]",
            "\"str\"",
            "42",
            "{}",
            r#"{"keyHash":null}"#,
            r#"{"keyHash":42}"#,
            &upper,
            &short,
        ] {
            let resp = run(post(None, Some("Bearer tok")), text, &caps);
            assert_eq!(resp.status, 422, "{text}");
            assert_eq!(body(&resp), r#"{"error":"Invalid keyHash"}"#);
        }
        assert!(caps.lookups.borrow().is_empty());
    }

    #[test]
    fn oversized_bodies_are_413() {
        let caps = Fake::owner("null");
        let big = format!(r#"{{"keyHash":"{HASH}","pad":"{}"}}"#, "x".repeat(70_000));
        let resp = run(post(None, Some("Bearer tok")), &big, &caps);
        assert_eq!(resp.status, 413);
        let head = RequestHead {
            content_length: Some(1 << 20),
            ..post(None, Some("Bearer tok"))
        };
        let resp = handle(&head, |_| panic!("body read"), &caps);
        assert_eq!(resp.status, 413);
        assert_eq!(body(&resp), r#"{"error":"Payload too large"}"#);
    }

    #[test]
    fn owner_match_deletes_the_key() {
        let caps = Fake::owner(r#"{"userId":"user_1"}"#);
        let resp = run(post(None, Some("Bearer tok")), &valid_body(), &caps);
        assert_eq!(resp.status, 200);
        assert_eq!(body(&resp), r#"{"ok":true}"#);
        assert_eq!(
            caps.lookups.borrow().as_slice(),
            [(OWNER_LOOKUP_PATH.to_owned(), valid_body())]
        );
        assert_eq!(
            caps.deleted.borrow().as_slice(),
            [format!("user-api-key:{HASH}")]
        );
    }

    #[test]
    fn unknown_hash_is_ok_and_deletes_nothing() {
        let caps = Fake::owner("null");
        let resp = run(post(None, Some("Bearer tok")), &valid_body(), &caps);
        assert_eq!(resp.status, 200);
        assert!(caps.deleted.borrow().is_empty());
    }

    #[test]
    fn anything_but_the_caller_as_owner_is_forbidden() {
        for answer in ["{}", "[]", r#"{"userId":"user_2"}"#, r#"{"userId":1}"#, "7"] {
            let caps = Fake::owner(answer);
            let resp = run(post(None, Some("Bearer tok")), &valid_body(), &caps);
            assert_eq!(resp.status, 403, "{answer}");
            assert_eq!(body(&resp), r#"{"error":"FORBIDDEN"}"#);
            assert!(caps.deleted.borrow().is_empty());
        }
    }

    #[test]
    fn lookup_faults_fail_closed() {
        for err in [
            ConvexError::NotConfigured,
            ConvexError::Timeout,
            ConvexError::Transport,
            ConvexError::ForbiddenPath,
        ] {
            let mut caps = Fake::owner("null");
            caps.convex = Err(err);
            let resp = run(post(None, Some("Bearer tok")), &valid_body(), &caps);
            assert_eq!(resp.status, 503);
            assert_eq!(body(&resp), r#"{"error":"Service unavailable"}"#);
        }
        let mut caps = Fake::owner("");
        caps.convex = Ok(ConvexResponse {
            status: 500,
            body: b"{}".to_vec(),
        });
        let resp = run(post(None, Some("Bearer tok")), &valid_body(), &caps);
        assert_eq!(resp.status, 503);
        assert_eq!(
            caps.warnings.borrow().as_slice(),
            ["Convex ownership check answered HTTP 500"]
        );
        let caps = Fake::owner("<html>");
        let resp = run(post(None, Some("Bearer tok")), &valid_body(), &caps);
        assert_eq!(resp.status, 503);
        assert!(caps.deleted.borrow().is_empty());
    }

    #[test]
    fn cache_faults_fail_closed() {
        for err in [CacheError::Unavailable, CacheError::Timeout] {
            let mut caps = Fake::owner(r#"{"userId":"user_1"}"#);
            caps.cache = Err(err);
            let resp = run(post(None, Some("Bearer tok")), &valid_body(), &caps);
            assert_eq!(resp.status, 503);
            assert!(resp.header("access-control-allow-origin").is_some());
        }
    }
}
