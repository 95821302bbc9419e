//! `keybust dev`: the whole flow on one machine with nothing installed.
//!
//! Two loopback HTTP servers stand in for the outside world, so the real
//! client code runs: a Convex owner lookup that knows one key hash, and a
//! Clerk-style issuer publishing the JWKS of a signing key generated at
//! start. The cache is the embedded store.

use crate::capabilities::Settings;
use crate::capabilities::cache::{CacheBackendSettings, CacheSettings};
use crate::capabilities::convex::ConvexSettings;
use crate::capabilities::session::SessionSettings;
use crate::config::Secret;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// The user the dev token signs in as.
pub const DEV_USER: &str = "user_dev";

/// What `keybust dev` set up: settings pointing at the stand-ins, and a
/// request that succeeds.
pub struct DevEnvironment {
    /// Settings for the capabilities.
    pub settings: Settings,
    /// A session token for [`DEV_USER`], valid for an hour.
    pub token: String,
    /// A key hash that [`DEV_USER`] owns.
    pub key_hash: String,
}

/// Starts the stand-ins on loopback and returns settings that use them.
pub async fn start() -> anyhow::Result<DevEnvironment> {
    let secret = random_hex(16)?;
    let key_hash = random_hex(32)?;
    let convex_addr = spawn_server(convex_stand_in(secret.clone(), key_hash.clone())).await?;

    // Generating an RSA key takes a moment of CPU: keep it off the runtime.
    let signing_key = tokio::task::spawn_blocking(|| KeyPair::generate(KeySize::Rsa2048))
        .await?
        .map_err(|_| anyhow::anyhow!("cannot generate the dev signing key"))?;
    let public = PublicKeyComponents::<Vec<u8>>::from(signing_key.public_key());
    let kid = format!("dev-{}", random_hex(4)?);
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&public.n),
            "e": URL_SAFE_NO_PAD.encode(&public.e),
        }]
    })
    .to_string();
    let issuer_addr = spawn_server(jwks_stand_in(jwks)).await?;
    let issuer = format!("http://{issuer_addr}");

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "sub": DEV_USER,
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid);
    let pkcs8 = signing_key
        .as_der()
        .map_err(|_| anyhow::anyhow!("cannot encode the dev signing key"))?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref()));
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())?,
    )?;

    let settings = Settings {
        convex: ConvexSettings::new(format!("http://{convex_addr}"), Secret::new(secret)),
        session: SessionSettings {
            issuer: Some(issuer),
            ..SessionSettings::default()
        },
        cache: CacheSettings {
            backend: CacheBackendSettings::Embedded,
            ..CacheSettings::default()
        },
        ..Settings::default()
    };
    Ok(DevEnvironment {
        settings,
        token,
        key_hash,
    })
}

type Handler = Arc<dyn Fn(hyper::Request<Incoming>) -> BoxResponse + Send + Sync>;
type BoxResponse = std::pin::Pin<Box<dyn Future<Output = hyper::Response<Full<Bytes>>> + Send>>;

fn convex_stand_in(secret: String, known_hash: String) -> Handler {
    Arc::new(move |request| {
        let secret = secret.clone();
        let known_hash = known_hash.clone();
        Box::pin(async move {
            if request.uri().path() != "/api/internal-get-key-owner" {
                return reply(404, r#"{"error":"not found"}"#.into());
            }
            let authorized = request
                .headers()
                .get("x-convex-shared-secret")
                .is_some_and(|value| value.as_bytes() == secret.as_bytes());
            if !authorized {
                return reply(401, r#"{"error":"unauthorized"}"#.into());
            }
            let body = match request.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return reply(400, r#"{"error":"bad body"}"#.into()),
            };
            let hash = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("keyHash").and_then(|h| h.as_str()).map(str::to_owned));
            match hash {
                Some(hash) if hash == known_hash => {
                    reply(200, serde_json::json!({ "userId": DEV_USER }).to_string())
                }
                Some(_) => reply(200, "null".into()),
                None => reply(400, r#"{"error":"keyHash required"}"#.into()),
            }
        })
    })
}

fn jwks_stand_in(jwks: String) -> Handler {
    Arc::new(move |request| {
        let jwks = jwks.clone();
        Box::pin(async move {
            if request.uri().path() == "/.well-known/jwks.json" {
                reply(200, jwks)
            } else {
                reply(404, r#"{"error":"not found"}"#.into())
            }
        })
    })
}

fn reply(status: u16, body: String) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn spawn_server(handler: Handler) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// `bytes` random bytes from the operating system, as lower-case hex.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
