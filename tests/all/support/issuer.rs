//! The token issuer: RSA signing keys, a JWKS endpoint, and signed tokens.

use super::USER;
use super::http::{Handler, respond, spawn_http};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An RSA key the tests sign with; generated once per test binary.
pub struct SigningKey {
    pub kid: String,
    private: aws_lc_rs::rsa::KeyPair,
}

impl SigningKey {
    fn generate(kid: &str) -> Self {
        SigningKey {
            kid: kid.to_owned(),
            private: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
        }
    }

    pub fn jwk(&self) -> Value {
        use aws_lc_rs::signature::KeyPair as _;
        let public =
            aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(self.private.public_key());
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&public.n),
            "e": URL_SAFE_NO_PAD.encode(&public.e),
        })
    }

    pub fn encoding_key(&self) -> jsonwebtoken::EncodingKey {
        use aws_lc_rs::encoding::AsDer;
        let pkcs8 = self.private.as_der().unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref()));
        jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
    }

    /// The public key as a PEM `PUBLIC KEY` block: what an attacker would
    /// try as an HMAC secret.
    pub fn public_pem(&self) -> String {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use aws_lc_rs::signature::KeyPair as _;
        let der: PublicKeyX509Der = self.private.public_key().as_der().unwrap();
        pem::encode(&pem::Pem::new("PUBLIC KEY", der.as_ref()))
    }
}

pub fn primary_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate("test-key-1"))
}

/// A key the issuer does not publish.
pub fn stranger_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate("test-key-stranger"))
}

/// Serves a JWKS with [`primary_key`], counts fetches, can go down, and can
/// publish another set.
pub struct Issuer {
    pub addr: SocketAddr,
    pub fetches: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
    /// The `traceparent` of each fetch that carried one.
    pub traceparents: Arc<Mutex<Vec<String>>>,
    jwks: Arc<Mutex<String>>,
}

impl Issuer {
    pub async fn start() -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let jwks = Arc::new(Mutex::new(
            json!({ "keys": [primary_key().jwk()] }).to_string(),
        ));
        let published = jwks.clone();
        let traceparents: Arc<Mutex<Vec<String>>> = Arc::default();
        let (count, is_down, seen) = (fetches.clone(), down.clone(), traceparents.clone());
        let handler: Handler = Arc::new(move |request| {
            let jwks = published.lock().unwrap().clone();
            let (count, is_down) = (count.clone(), is_down.clone());
            if let Some(value) = request.headers().get("traceparent") {
                seen.lock()
                    .unwrap()
                    .push(value.to_str().unwrap_or_default().to_owned());
            }
            Box::pin(async move {
                if request.uri().path() != "/.well-known/jwks.json" {
                    return respond(404, "{}");
                }
                count.fetch_add(1, Ordering::SeqCst);
                if is_down.load(Ordering::SeqCst) {
                    return respond(503, r#"{"error":"down"}"#);
                }
                respond(200, jwks)
            })
        });
        Issuer {
            addr: spawn_http(handler).await,
            fetches,
            down,
            traceparents,
            jwks,
        }
    }

    /// From now on the JWKS holds exactly `keys`.
    pub fn publish(&self, keys: &[&SigningKey]) {
        let keys: Vec<Value> = keys.iter().map(|key| key.jwk()).collect();
        self.publish_raw(json!({ "keys": keys }).to_string());
    }

    /// From now on the JWKS endpoint answers `body`.
    pub fn publish_raw(&self, body: String) {
        *self.jwks.lock().unwrap() = body;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Claims of a valid session for [`USER`].
    pub fn claims(&self) -> Value {
        let now = now();
        json!({ "sub": USER, "iss": self.url(), "iat": now, "nbf": now - 1, "exp": now + 600 })
    }

    /// A valid token for [`USER`].
    pub fn token(&self) -> String {
        sign(&self.claims(), primary_key())
    }
}

pub fn sign(claims: &Value, key: &SigningKey) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding_key()).unwrap()
}
