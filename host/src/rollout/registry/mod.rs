//! Components in OCI registries: pulled, resolved and pushed in the wasm
//! artifact layout (the one `wkg oci push` and `wash push` write,
//! [`layout`]): one `application/wasm` layer holding the component, and an
//! `application/vnd.wasm.config.v0+json` config.
//!
//! What is pulled is checked before anyone compiles it: the manifest's
//! bytes against a pinned digest, the layer against the digest the manifest
//! gives it, and its size against the bound a swap has. Registries are
//! reached over HTTPS, except those on loopback and those named in
//! `--insecure-registry`. Every exchange with a registry is bounded by
//! `--registry-timeout`, and every read by a size while it streams
//! (`read`). With `--verify-key`, a component is pulled only
//! when a cosign signature by that key names its manifest digest
//! ([`VerifyKey`]).

mod credentials;
mod error;
mod high_water;
pub mod layout;
mod push;
mod read;
mod reference;
mod settings;
mod signatures;

pub use self::credentials::{Credentials, CredentialsError};
pub use self::error::RegistryError;
pub use self::reference::{InvalidReference, OCI_SCHEME, OciReference};
pub use self::settings::RegistryArgs;
pub use self::signatures::{Claims, SignatureError, SigningKey, VerifyKey};

use self::read::{ReadError, Reader};
use crate::digest::hex_digest;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;
use std::time::Duration;

/// The largest component pulled: the bound an upload has.
const MAX_COMPONENT_BYTES: u64 = crate::limits::MAX_COMPONENT_BYTES as u64;

/// The largest manifest read.
const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// What a manifest is asked for by: its digest when pinned, else its tag.
fn by_name(reference: &oci_client::Reference) -> String {
    reference
        .digest()
        .or(reference.tag())
        .unwrap_or("latest")
        .to_owned()
}

/// A component pulled from a registry and checked.
#[derive(Debug)]
pub struct Pulled {
    /// The component's bytes.
    pub bytes: Vec<u8>,
    /// The digest of the manifest it was pulled through (`sha256:…`).
    pub manifest_digest: String,
}

/// What a push published.
#[derive(Debug)]
pub struct Pushed {
    /// The manifest's digest (`sha256:…`), what `@sha256:` pins.
    pub manifest_digest: String,
    /// SHA-256 of the component's bytes, as keybust names versions.
    pub component_digest: String,
}

/// Pulls, resolves and pushes components; see the module docs.
#[derive(Debug, Clone)]
pub struct Registry {
    credentials: Credentials,
    /// The key components must be signed with, when one is set.
    verify_key: Option<VerifyKey>,
    /// The newest signing time taken per tag, with `verify_key`.
    high_water: Option<std::sync::Arc<high_water::HighWater>>,
    insecure: Vec<String>,
    timeout: Duration,
}

impl Registry {
    /// Sends the `KEYBUST_REGISTRY_USERNAME` login to `reference`'s
    /// registry, and to no other: the configured component's, or the one
    /// a `keybust component` command was given.
    pub fn with_login_for(mut self, reference: &OciReference) -> Self {
        self.credentials.login_registry = Some(reference.registry().to_owned());
        self
    }

    /// Keeps the signed high-water marks (see `high_water`) in
    /// `state_dir`, so that a restart does not forget them; without
    /// `--verify-key` there are none.
    pub fn keep_high_water_in(mut self, state_dir: &std::path::Path) -> std::io::Result<Self> {
        if self.high_water.is_some() {
            self.high_water = Some(std::sync::Arc::new(high_water::HighWater::open(
                state_dir.join(high_water::FILE_NAME),
            )?));
        }
        Ok(self)
    }

    /// Whether every component must be signed (`--verify-key`): then only
    /// pulled components, whose signature is checked, may serve.
    pub fn requires_signatures(&self) -> bool {
        self.verify_key.is_some()
    }

    /// The identity of the key signatures are checked with
    /// ([`VerifyKey::id`]), when one is.
    pub fn verify_key_id(&self) -> Option<String> {
        self.verify_key.as_ref().map(VerifyKey::id)
    }

    /// The registries reached over plain HTTP for `reference`: those named
    /// insecure, and its own when it is on loopback.
    fn plain_http(&self, reference: &OciReference) -> Vec<String> {
        let mut plain = self.insecure.clone();
        if reference.is_loopback() {
            plain.push(reference.registry().to_owned());
        }
        plain
    }

    /// A client for `reference`'s registry: HTTPS unless the registry is
    /// on loopback or named insecure.
    fn client(&self, reference: &OciReference) -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.plain_http(reference)),
            connect_timeout: Some(self.timeout.min(Duration::from_secs(10))),
            read_timeout: Some(self.timeout),
            ..ClientConfig::default()
        })
    }

    /// A bounded reader of `reference`'s repository, authorized as `auth`
    /// allows ([`read`]).
    async fn reader(
        &self,
        client: &oci_client::Client,
        auth: &RegistryAuth,
        reference: &OciReference,
    ) -> Result<Reader, RegistryError> {
        Reader::open(
            client,
            auth,
            reference.oci(),
            &self.plain_http(reference),
            self.timeout,
        )
        .await
        .map_err(|source| RegistryError::Registry {
            reference: reference.to_string(),
            source,
        })
    }

    /// The credentials for `reference`'s registry, looked up off the async
    /// threads: a docker credential helper is a process that may be slow.
    /// Call it inside [`Registry::bounded`].
    async fn auth(&self, reference: &OciReference) -> Result<RegistryAuth, RegistryError> {
        let credentials = self.credentials.clone();
        let registry = reference.registry().to_owned();
        tokio::task::spawn_blocking(move || credentials.for_registry(&registry))
            .await
            .map_err(|err| {
                RegistryError::Credentials(CredentialsError {
                    registry: reference.registry().to_owned(),
                    reason: format!("the lookup did not finish: {err}"),
                })
            })?
            .map_err(RegistryError::Credentials)
    }

    /// Runs `exchange` within the registry timeout.
    async fn bounded<T>(
        &self,
        reference: &OciReference,
        exchange: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RegistryError::TimedOut {
                reference: reference.to_string(),
                timeout: self.timeout,
            })?
    }

    /// The digest of the manifest `reference` names now: its pin, or what
    /// its tag points to (one `HEAD` request).
    pub async fn resolve(&self, reference: &OciReference) -> Result<String, RegistryError> {
        if let Some(digest) = reference.pinned_digest() {
            return Ok(digest.to_owned());
        }
        let client = self.client(reference);
        self.bounded(reference, async {
            let auth = self.auth(reference).await?;
            client
                .fetch_manifest_digest(reference.oci(), &auth)
                .await
                .map_err(|source| RegistryError::Registry {
                    reference: reference.to_string(),
                    source,
                })
        })
        .await
    }

    /// Pulls the component `reference` names, through the manifest with
    /// `digest` when given (what [`Registry::resolve`] found), and checks
    /// it: the manifest against the digest it was asked by, its layout,
    /// the component's size and its digest.
    pub async fn pull(
        &self,
        reference: &OciReference,
        digest: Option<&str>,
    ) -> Result<Pulled, RegistryError> {
        self.pull_ordered(reference, digest, false).await
    }

    /// [`Registry::pull`], taking a version signed before the newest one
    /// seen for its tag: an operator's rollback through the tag (the
    /// admin API's `allow_older`, audited there).
    pub async fn pull_allowing_older(
        &self,
        reference: &OciReference,
    ) -> Result<Pulled, RegistryError> {
        self.pull_ordered(reference, None, true).await
    }

    async fn pull_ordered(
        &self,
        reference: &OciReference,
        digest: Option<&str>,
        allow_older: bool,
    ) -> Result<Pulled, RegistryError> {
        let client = self.client(reference);
        let expected = digest.or(reference.pinned_digest());
        let by = match expected {
            Some(digest) => reference.pinned_to(digest),
            None => reference.oci().clone(),
        };
        self.bounded(reference, async {
            let auth = self.auth(reference).await?;
            let registry_error = |source| RegistryError::Registry {
                reference: reference.to_string(),
                source,
            };
            let not_a_component = |reason: String| RegistryError::NotAComponent {
                reference: reference.to_string(),
                reason,
            };
            let reader = self.reader(&client, &auth, reference).await?;
            let read_error =
                |err: ReadError, what: &'static str, too_large: RegistryError| match err {
                    ReadError::Registry(source) => registry_error(source),
                    ReadError::TooLarge => too_large,
                    ReadError::Mismatch { expected, actual } => RegistryError::DigestMismatch {
                        reference: reference.to_string(),
                        what,
                        expected,
                        actual,
                    },
                };
            let raw = reader
                .manifest(&by_name(&by), &[OCI_IMAGE_MEDIA_TYPE], MAX_MANIFEST_BYTES)
                .await
                .map_err(|err| {
                    read_error(
                        err,
                        "manifest",
                        not_a_component("the manifest is too large".into()),
                    )
                })?;
            let manifest_digest = format!("sha256:{}", hex_digest(&raw));
            if let Some(expected) = expected
                && manifest_digest != expected
            {
                return Err(RegistryError::DigestMismatch {
                    reference: reference.to_string(),
                    what: "manifest",
                    expected: expected.to_owned(),
                    actual: manifest_digest,
                });
            }
            if let Some(key) = &self.verify_key {
                let signature_error = |source| RegistryError::Signature {
                    reference: reference.to_string(),
                    source,
                };
                let claims = signatures::verify(
                    &reader,
                    reference.oci(),
                    &manifest_digest,
                    key,
                    reference.tag(),
                )
                .await
                .map_err(signature_error)?;
                if let (Some(tag), Some(marks), Some(signed_at)) =
                    (reference.tag(), &self.high_water, &claims.signed_at)
                {
                    let tag = format!(
                        "{}/{}:{tag}",
                        reference.registry(),
                        reference.oci().repository()
                    );
                    marks.take(&tag, signed_at, allow_older).map_err(|older| {
                        signature_error(SignatureError::Older {
                            digest: manifest_digest.clone(),
                            signed_at: signed_at.clone(),
                            newest: older.newest,
                        })
                    })?;
                }
            }
            let layer = layout::component_layer(&raw).map_err(not_a_component)?;
            let bytes = reader
                .blob(&layer, MAX_COMPONENT_BYTES)
                .await
                .map_err(|err| {
                    read_error(
                        err,
                        "component",
                        RegistryError::TooLarge {
                            reference: reference.to_string(),
                        },
                    )
                })?;
            Ok(Pulled {
                bytes,
                manifest_digest,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
