//! What the integration tests stand on: a real `redis-server`, test-owned
//! HTTP servers playing Convex, the Clerk issuer and the Upstash REST API,
//! and keybust itself, all on loopback. keybust runs either as the real
//! `keybust` binary ([`Keybust`]) or as the library served in the test's
//! runtime ([`in_process::InProcess`]); [`Stack`] puts one together with its backends.

pub mod answer;
pub mod certs;
pub mod convex;
pub mod cosign_bundle;
pub mod deploy_files;
pub mod fleet;
pub mod help;
pub mod hostile_registry;
pub mod http;
pub mod in_process;
pub mod issuer;
pub mod load;
pub mod logs;
pub mod misbehaving_registry;
pub mod otlp;
pub mod process;
pub mod programs;
pub mod promtool;
pub mod raw;
pub mod redis;
pub mod registry;
pub mod stack;

pub use answer::{Answer, Answered};
pub use convex::{FakeConvex, hashes};
pub use issuer::{Issuer, now, primary_key, sign, stranger_key};
pub use process::Keybust;
pub use programs::{Guest, test_programs, variant};
pub use redis::{Redis, RedisCluster};
pub use stack::{Backend, Options, Stack};

pub const ENDPOINT: &str = "/api/invalidate-user-api-key-cache";
pub const SECRET: &str = "test-convex-shared-secret-4f9a";
pub const UPSTASH_TOKEN: &str = "test-upstash-token-77c1";
pub const USER: &str = "user_owner";

/// The tests' HTTP clients use rustls through aws-lc-rs, as keybust does;
/// rustls needs that chosen once per process before the first client.
pub fn use_aws_lc_for_tls() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
