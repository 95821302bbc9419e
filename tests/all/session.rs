//! docs/contract.md, Session tokens: which Clerk session tokens get
//! through, over real HTTP against keybust served in process and a
//! test-owned JWKS issuer. The rules do not depend on the cache, so they run
//! on the embedded one.

use crate::support::{Backend, Options, Stack, now, primary_key, sign, stranger_key};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

fn with(mut claims: Value, changes: Value) -> Value {
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// keybust in process, with the settings `options` adds.
async fn start(options: Options) -> Stack {
    let options = Options {
        in_process: true,
        ..options
    };
    Stack::with(Backend::Embedded, options).await
}

// Rules S1 to S8, all met
#[tokio::test]
async fn valid_token_passes() {
    let stack = start(Options::default()).await;
    assert_eq!(stack.status_with_token(&stack.issuer.token()).await, 200);
}

// Rule S6
#[tokio::test]
async fn expiry_has_five_seconds_of_tolerance() {
    let stack = start(Options::default()).await;
    let claims = stack.issuer.claims();
    let expired = sign(
        &with(claims.clone(), json!({ "exp": now() - 30 })),
        primary_key(),
    );
    assert_eq!(stack.status_with_token(&expired).await, 401);
    let just_past = sign(
        &with(claims.clone(), json!({ "exp": now() - 2 })),
        primary_key(),
    );
    assert_eq!(stack.status_with_token(&just_past).await, 200);
    let beyond = sign(&with(claims, json!({ "exp": now() - 8 })), primary_key());
    assert_eq!(stack.status_with_token(&beyond).await, 401);
}

// Rule S6
#[tokio::test]
async fn not_before_has_five_seconds_of_tolerance() {
    let stack = start(Options::default()).await;
    let claims = stack.issuer.claims();
    let future = sign(
        &with(claims.clone(), json!({ "nbf": now() + 60 })),
        primary_key(),
    );
    assert_eq!(stack.status_with_token(&future).await, 401);
    let slightly = sign(
        &with(claims.clone(), json!({ "nbf": now() + 2 })),
        primary_key(),
    );
    assert_eq!(stack.status_with_token(&slightly).await, 200);
    let beyond = sign(&with(claims, json!({ "nbf": now() + 10 })), primary_key());
    assert_eq!(stack.status_with_token(&beyond).await, 401);
}

// Rule S6
#[tokio::test]
async fn exp_is_required_and_numeric() {
    let stack = start(Options::default()).await;
    let claims = stack.issuer.claims();
    let no_exp = sign(&with(claims.clone(), json!({ "exp": null })), primary_key());
    assert_eq!(stack.status_with_token(&no_exp).await, 401);
    let string_exp = sign(
        &with(claims.clone(), json!({ "exp": (now() + 600).to_string() })),
        primary_key(),
    );
    assert_eq!(stack.status_with_token(&string_exp).await, 401);
    let string_past_exp = sign(&with(claims.clone(), json!({ "exp": "1" })), primary_key());
    assert_eq!(stack.status_with_token(&string_past_exp).await, 401);
    let string_nbf = sign(
        &with(claims, json!({ "nbf": (now() - 10).to_string() })),
        primary_key(),
    );
    assert_eq!(stack.status_with_token(&string_nbf).await, 401);
}

// Rule S5
#[tokio::test]
async fn wrong_issuer_is_401() {
    let stack = start(Options::default()).await;
    let claims = stack.issuer.claims();
    for iss in [
        json!("https://other.clerk.example"),
        json!(null),
        json!(format!("{}/", stack.issuer.url())),
    ] {
        let token = sign(&with(claims.clone(), json!({ "iss": iss })), primary_key());
        assert_eq!(stack.status_with_token(&token).await, 401, "iss {iss}");
    }
}

// Rule S8
#[tokio::test]
async fn missing_sub_is_401() {
    let stack = start(Options::default()).await;
    let claims = stack.issuer.claims();
    for sub in [json!(null), json!(""), json!(42)] {
        let token = sign(&with(claims.clone(), json!({ "sub": sub })), primary_key());
        assert_eq!(stack.status_with_token(&token).await, 401, "sub {sub}");
    }
}

// Rule S1
#[tokio::test]
async fn alg_none_is_401() {
    let stack = start(Options::default()).await;
    let claims = b64(&stack.issuer.claims());
    for header in [
        json!({ "alg": "none", "typ": "JWT" }),
        json!({ "alg": "none", "typ": "JWT", "kid": primary_key().kid }),
    ] {
        let token = format!("{}.{claims}.", b64(&header));
        assert_eq!(stack.status_with_token(&token).await, 401);
    }
}

// Rule S1
#[tokio::test]
async fn hs256_is_401_even_with_the_public_key_as_secret() {
    let stack = start(Options::default()).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(primary_key().kid.clone());
    for secret in [primary_key().public_pem().into_bytes(), b"secret".to_vec()] {
        let token = jsonwebtoken::encode(
            &header,
            &stack.issuer.claims(),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(stack.status_with_token(&token).await, 401);
    }
}

// Rules S2, S3 and S4
#[tokio::test]
async fn unknown_kid_and_foreign_key_are_401() {
    let stack = start(Options::default()).await;
    let claims = stack.issuer.claims();
    // Signed by a key the issuer does not publish, under its own kid.
    assert_eq!(
        stack
            .status_with_token(&sign(&claims, stranger_key()))
            .await,
        401
    );
    // Signed by that key but claiming the issuer's kid: wrong signature.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(primary_key().kid.clone());
    let forged = jsonwebtoken::encode(&header, &claims, &stranger_key().encoding_key()).unwrap();
    assert_eq!(stack.status_with_token(&forged).await, 401);
    // No kid at all.
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    let no_kid = jsonwebtoken::encode(&header, &claims, &primary_key().encoding_key()).unwrap();
    assert_eq!(stack.status_with_token(&no_kid).await, 401);
}

// Rule S4
#[tokio::test]
async fn tampered_payload_is_401() {
    let stack = start(Options::default()).await;
    let token = stack.issuer.token();
    let parts: Vec<&str> = token.split('.').collect();
    let tampered_claims = with(stack.issuer.claims(), json!({ "sub": "user_attacker" }));
    let tampered = format!("{}.{}.{}", parts[0], b64(&tampered_claims), parts[2]);
    assert_eq!(stack.status_with_token(&tampered).await, 401);
    let mut signature = parts[2].to_owned();
    let last = if signature.ends_with('A') { 'B' } else { 'A' };
    signature.pop();
    signature.push(last);
    let bad_signature = format!("{}.{}.{signature}", parts[0], parts[1]);
    assert_eq!(stack.status_with_token(&bad_signature).await, 401);
    for garbage in ["a.b.c", "only-one-part", "..", "Bearer"] {
        assert_eq!(stack.status_with_token(garbage).await, 401);
    }
}

// Rule S7
#[tokio::test]
async fn audience_rules() {
    let options = Options {
        env: vec![
            ("CLERK_JWT_AUDIENCE", "aud-one, aud-two".to_owned()),
            ("CLERK_PUBLISHABLE_KEY", "pk_test_abc".to_owned()),
        ],
        ..Options::default()
    };
    let stack = start(options).await;
    let claims = stack.issuer.claims();
    let cases = [
        (json!(null), 200),
        (json!("convex"), 200),
        (json!("aud-one"), 200),
        (json!("aud-two"), 200),
        (json!("pk_test_abc"), 200),
        (json!(["elsewhere", "convex"]), 200),
        (json!("elsewhere"), 401),
        (json!(["elsewhere", "nowhere"]), 401),
    ];
    for (aud, expected) in cases {
        let token = sign(&with(claims.clone(), json!({ "aud": aud })), primary_key());
        assert_eq!(stack.status_with_token(&token).await, expected, "aud {aud}");
    }
}

// Rule S7
#[tokio::test]
async fn audience_defaults_to_convex_only() {
    let stack = start(Options::default()).await;
    let claims = stack.issuer.claims();
    let convex = sign(
        &with(claims.clone(), json!({ "aud": "convex" })),
        primary_key(),
    );
    assert_eq!(stack.status_with_token(&convex).await, 200);
    let other = sign(&with(claims, json!({ "aud": "aud-one" })), primary_key());
    assert_eq!(stack.status_with_token(&other).await, 401);
}

// Rule S9
#[tokio::test]
async fn issuer_unset_is_401_and_logged() {
    let options = Options {
        without: vec!["CLERK_JWT_ISSUER_DOMAIN"],
        ..Options::default()
    };
    let stack = start(options).await;
    assert_eq!(stack.status_with_token(&stack.issuer.token()).await, 401);
    stack
        .keybust
        .assert_logged("CLERK_JWT_ISSUER_DOMAIN is not set")
        .await;
    assert!(stack.convex.calls().is_empty());
}

// Rule S9
#[tokio::test]
async fn jwks_unreachable_is_401_and_logged() {
    let stack = start(Options::default()).await;
    stack.issuer.down.store(true, Ordering::SeqCst);
    assert_eq!(stack.status_with_token(&stack.issuer.token()).await, 401);
    stack
        .keybust
        .assert_logged("cannot fetch the issuer's JWKS")
        .await;
    stack.keybust.assert_logs_clean(&[&stack.issuer.token()]);
}

// Rule S3
#[tokio::test]
async fn cached_keys_survive_an_issuer_outage() {
    let stack = start(Options::default()).await;
    assert_eq!(stack.status_with_token(&stack.issuer.token()).await, 200);
    stack.issuer.down.store(true, Ordering::SeqCst);
    assert_eq!(stack.status_with_token(&stack.issuer.token()).await, 200);
    assert_eq!(stack.issuer.fetches.load(Ordering::SeqCst), 1);
}

// Rule S3
#[tokio::test]
async fn unknown_kid_flood_does_not_refetch_per_request() {
    let stack = start(Options::default()).await;
    assert_eq!(stack.status_with_token(&stack.issuer.token()).await, 200);
    let claims = stack.issuer.claims();
    for i in 0..20 {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(format!("bogus-{i}"));
        let token = jsonwebtoken::encode(&header, &claims, &stranger_key().encoding_key()).unwrap();
        assert_eq!(stack.status_with_token(&token).await, 401);
    }
    // The first request fetched; the cooldown absorbs the flood.
    assert_eq!(stack.issuer.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(stack.status_with_token(&stack.issuer.token()).await, 200);
}

// Rules S5 and S7: claims by their exact JSON types
#[tokio::test]
async fn iss_and_aud_of_another_type_are_401() {
    let stack = start(Options::default()).await;
    let claims = stack.issuer.claims();
    let issuer = stack.issuer.url();
    for changes in [
        json!({ "aud": 7 }),
        json!({ "aud": { "convex": true } }),
        json!({ "aud": ["convex", 7] }),
        json!({ "aud": [] }),
        json!({ "iss": [issuer] }),
        json!({ "iss": { "url": issuer } }),
    ] {
        let token = sign(&with(claims.clone(), changes.clone()), primary_key());
        assert_eq!(stack.status_with_token(&token).await, 401, "{changes}");
    }
    for changes in [
        json!({ "aud": "convex" }),
        json!({ "aud": ["other", "convex"] }),
    ] {
        let token = sign(&with(claims.clone(), changes.clone()), primary_key());
        assert_eq!(stack.status_with_token(&token).await, 200, "{changes}");
    }
}

// Rule S2: keys age
#[tokio::test]
async fn a_key_the_issuer_removed_stops_working_once_the_set_is_old() {
    let options = Options {
        env: vec![
            ("KEYBUST_JWKS_MAX_AGE", "1s".into()),
            ("KEYBUST_JWKS_REFETCH_COOLDOWN", "1s".into()),
        ],
        ..Options::default()
    };
    let stack = start(options).await;
    let old = stack.issuer.token();
    assert_eq!(stack.status_with_token(&old).await, 200);
    stack.issuer.publish(&[stranger_key()]);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    // No request waits on the refetch: the one that notices the old set
    // still passes, and the key goes soon after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.status_with_token(&old).await == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed key is still trusted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let new = sign(&stack.issuer.claims(), stranger_key());
    assert_eq!(stack.status_with_token(&new).await, 200);
    assert!(stack.issuer.fetches.load(Ordering::SeqCst) >= 2);
}

// Rule S2: a JWKS is read with a size bound
#[tokio::test]
async fn an_oversized_jwks_is_not_read() {
    let stack = start(Options::default()).await;
    let padded = json!({
        "keys": [primary_key().jwk()],
        "padding": "x".repeat(1 << 20),
    });
    stack.issuer.publish_raw(padded.to_string());
    assert_eq!(stack.status_with_token(&stack.issuer.token()).await, 401);
    stack.keybust.assert_logged("longer than").await;
}
