//! Properties of the endpoint policy over arbitrary requests: no input
//! makes it panic, every answer is well-formed, and nothing is read or
//! called before the contract allows it.

use keybust_guest::policy::{
    self, BodyError, CacheError, Capabilities, ConvexError, ConvexResponse, RequestHead,
    SessionError,
};
use proptest::prelude::*;
use std::cell::Cell;

#[derive(Debug)]
struct Arbitrary {
    origin_allowed: bool,
    session: Result<String, SessionError>,
    convex: Result<ConvexResponse, ConvexError>,
    cache: Result<(), CacheError>,
    convex_calls: Cell<u32>,
    cache_calls: Cell<u32>,
}

impl Capabilities for Arbitrary {
    fn origin_allowed(&self, _: &str) -> bool {
        self.origin_allowed
    }
    fn default_origin(&self) -> String {
        "https://worldmonitor.app".into()
    }
    fn validate_session(&self, _: &str) -> Result<String, SessionError> {
        self.session.clone()
    }
    fn convex_post(&self, _: &str, _: &[u8]) -> Result<ConvexResponse, ConvexError> {
        self.convex_calls.set(self.convex_calls.get() + 1);
        self.convex.clone()
    }
    fn cache_delete(&self, _: &str) -> Result<(), CacheError> {
        self.cache_calls.set(self.cache_calls.get() + 1);
        self.cache
    }
    fn warn(&self, _: &str) {}
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("POST".to_owned()),
        Just("OPTIONS".to_owned()),
        Just("GET".to_owned()),
        "[A-Za-z]{1,8}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "[a-f0-9]{64}".prop_map(|h| format!(r#"{{"keyHash":"{h}"}}"#).into_bytes()),
        any::<String>().prop_map(|s| serde_json::json!({ "keyHash": s }).to_string().into_bytes()),
        Just(b"null".to_vec()),
        Just(b"[]".to_vec()),
    ]
}

fn capabilities() -> impl Strategy<Value = Arbitrary> {
    let session = prop_oneof![
        "[a-z_0-9]{0,12}".prop_map(Ok),
        Just(Err(SessionError::Invalid)),
        Just(Err(SessionError::Unverifiable)),
    ];
    let convex = prop_oneof![
        (100u16..600, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(status, body)| Ok(ConvexResponse { status, body })),
        "[a-z_0-9]{0,12}".prop_map(|user| Ok(ConvexResponse {
            status: 200,
            body: serde_json::json!({ "userId": user })
                .to_string()
                .into_bytes(),
        })),
        Just(Ok(ConvexResponse {
            status: 200,
            body: b"null".to_vec()
        })),
        Just(Err(ConvexError::Timeout)),
        Just(Err(ConvexError::NotConfigured)),
    ];
    let cache = prop_oneof![Just(Ok(())), Just(Err(CacheError::Unavailable))];
    (any::<bool>(), session, convex, cache).prop_map(|(origin_allowed, session, convex, cache)| {
        Arbitrary {
            origin_allowed,
            session,
            convex,
            cache,
            convex_calls: Cell::new(0),
            cache_calls: Cell::new(0),
        }
    })
}

proptest! {
    #[test]
    fn any_request_gets_a_well_formed_answer(
        method in method(),
        origin in proptest::option::of(".{0,40}"),
        authorization in proptest::option::of(prop_oneof![".{0,40}", "Bearer .{0,40}"]),
        content_length in proptest::option::of(any::<u64>()),
        body in body(),
        caps in capabilities(),
    ) {
        let head = RequestHead {
            method: &method,
            origin: origin.as_deref(),
            authorization: authorization.as_deref(),
            content_length,
        };
        let reads = Cell::new(0);
        let response = policy::handle(
            &head,
            |limit| {
                reads.set(reads.get() + 1);
                if body.len() > limit { Err(BodyError::TooLarge) } else { Ok(body.clone()) }
            },
            &caps,
        );
        prop_assert!([200, 204, 401, 403, 405, 413, 422, 503].contains(&response.status));
        prop_assert!(reads.get() <= 1);
        prop_assert!(caps.convex_calls.get() <= 1 && caps.cache_calls.get() <= 1);
        if response.status == 204 {
            prop_assert!(response.body.is_empty());
        } else {
            prop_assert_eq!(response.header("content-type"), Some("application/json"));
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&response.body).is_ok());
        }
        let cors = response.header("access-control-allow-origin").is_some();
        let refused_origin = response.status == 403
            && response.body == br#"{"error":"Origin not allowed"}"#;
        prop_assert_eq!(cors, !refused_origin);
        // Nothing is read, looked up or deleted for a caller without a valid session.
        let authenticated = method == "POST"
            && !refused_origin
            && policy::bearer_token(head.authorization).is_some()
            && matches!(&caps.session, Ok(user) if !user.is_empty());
        if !authenticated {
            prop_assert_eq!(reads.get(), 0);
            prop_assert_eq!(caps.convex_calls.get(), 0);
        }
        // Only an owner match deletes, and a failed delete is never a 200.
        if caps.cache_calls.get() == 1 && caps.cache.is_err() {
            prop_assert_eq!(response.status, 503);
        }
    }

    #[test]
    fn key_hash_parsing_accepts_exactly_64_lower_hex(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(hash) = policy::parse_key_hash(&bytes) {
            prop_assert!(policy::is_key_hash(&hash));
        }
    }

    #[test]
    fn bearer_tokens_are_never_empty(value in ".{0,64}") {
        if let Some(token) = policy::bearer_token(Some(&value)) {
            prop_assert!(!token.is_empty());
            prop_assert!(value.starts_with("Bearer "));
        }
    }
}
