//! Reading from a registry within bounds: a manifest, the referrers
//! listing of a digest, a blob. Each body is cut off at its bound while
//! it streams (a registry declaring or sending more is refused before the
//! excess is held), a blob is checked against the digest naming it, and
//! a redirect is followed only over HTTPS, or over plain HTTP to the
//! registry's own host or one named in `--insecure-registry`.
//!
//! oci-client does everything else here (the token exchange, resolving a
//! tag, every push), but it reads a manifest's whole body before anyone
//! can look at its size, and follows any redirect, plain `http://` to any
//! host included, with no setting for either. So these GETs are keybust's
//! own, sent with the authorization oci-client negotiated for the
//! repository ([`oci_client::Client::auth`]), and their failures are
//! oci-client's errors, so that they are told apart (not found,
//! transient, malformed) as every other registry failure is.

use crate::digest::hex_digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderValue;
use http::header::{ACCEPT, AUTHORIZATION};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OciDescriptor, OciImageIndex};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use std::time::Duration;

/// The most of an error answer read, for the registry's reason.
const MAX_ERROR_BYTES: usize = 16 * 1024;

/// The most redirects followed for one read.
const MAX_REDIRECTS: usize = 5;

/// Why a read gave nothing.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The registry refused, could not be reached, or broke off.
    Registry(OciDistributionError),
    /// The declared or the sent size is over the bound.
    TooLarge,
    /// A blob's bytes do not hash to the digest naming it.
    Mismatch {
        /// The descriptor's digest.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
}

impl From<reqwest::Error> for ReadError {
    fn from(err: reqwest::Error) -> Self {
        ReadError::Registry(OciDistributionError::RequestError(err))
    }
}

impl ReadError {
    /// Whether the registry says it holds no such thing.
    pub(super) fn names_nothing(&self) -> bool {
        matches!(self, ReadError::Registry(err) if super::error::names_nothing(err))
    }
}

/// Reads from one repository of one registry.
pub(super) struct Reader {
    http: reqwest::Client,
    /// `scheme://registry/v2/repository`.
    base: String,
    authorization: Option<HeaderValue>,
}

impl Reader {
    /// A reader of `image`'s repository, authorized to pull as `auth`
    /// allows. `plain_http` names the registries reached over plain HTTP
    /// (see [`super::Registry`]); `timeout` bounds connecting and each
    /// read (the whole exchange is bounded by the caller).
    pub(super) async fn open(
        client: &oci_client::Client,
        auth: &RegistryAuth,
        image: &Reference,
        plain_http: &[String],
        timeout: Duration,
    ) -> Result<Self, OciDistributionError> {
        let registry = image.resolve_registry();
        let plain = plain_http
            .iter()
            .any(|host| host == registry || host == image.registry());
        let scheme = if plain { "http" } else { "https" };
        let token = client.auth(image, auth, RegistryOperation::Pull).await?;
        let authorization = match (token, auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Bearer(token)) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(user, password)) => Some(format!(
                "Basic {}",
                BASE64.encode(format!("{user}:{password}"))
            )),
            (None, RegistryAuth::Anonymous) => None,
        };
        let authorization = authorization
            .map(|value| {
                HeaderValue::from_str(&value).map(|mut value| {
                    value.set_sensitive(true);
                    value
                })
            })
            .transpose()
            .map_err(|_| {
                OciDistributionError::GenericError(Some(
                    "the registry credentials are not a valid header".into(),
                ))
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .read_timeout(timeout)
            .redirect(redirects(plain_http.to_vec()))
            .build()?;
        Ok(Reader {
            http,
            base: format!("{scheme}://{registry}/v2/{}", image.repository()),
            authorization,
        })
    }

    async fn get(&self, path: &str, accept: &[&str]) -> Result<reqwest::Response, ReadError> {
        let mut request = self.http.get(format!("{}/{path}", self.base));
        if !accept.is_empty() {
            request = request.header(ACCEPT, accept.join(", "));
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        Ok(request.send().await?)
    }

    /// The manifest `tag_or_digest` names, of one of the `accept` media
    /// types, at most `limit` bytes. Its digest is the caller's to check.
    pub(super) async fn manifest(
        &self,
        tag_or_digest: &str,
        accept: &[&str],
        limit: usize,
    ) -> Result<Vec<u8>, ReadError> {
        let response = ok(self
            .get(&format!("manifests/{tag_or_digest}"), accept)
            .await?)
        .await?;
        body(response, limit).await
    }

    /// The artifacts whose `subject` is the manifest `digest`: the
    /// registry's referrers API, or, where it has none (404), the
    /// referrers tag `sha256-<hex>`; empty when neither lists any.
    pub(super) async fn referrers(
        &self,
        digest: &str,
        limit: usize,
    ) -> Result<OciImageIndex, ReadError> {
        let accept = [OCI_IMAGE_INDEX_MEDIA_TYPE];
        let response = self.get(&format!("referrers/{digest}"), &accept).await?;
        let bytes = if response.status() == reqwest::StatusCode::NOT_FOUND {
            match self
                .manifest(&digest.replace(':', "-"), &accept, limit)
                .await
            {
                Ok(bytes) => bytes,
                Err(err) if err.names_nothing() => return Ok(empty_index()),
                Err(err) => return Err(err),
            }
        } else {
            body(ok(response).await?, limit).await?
        };
        serde_json::from_slice(&bytes).map_err(|err| {
            ReadError::Registry(OciDistributionError::ManifestParsingError(format!(
                "the referrers of {digest}: {err}"
            )))
        })
    }

    /// The blob `descriptor` names, at most `limit` bytes (a larger
    /// descriptor is refused before a byte is asked for), checked against
    /// its digest.
    pub(super) async fn blob(
        &self,
        descriptor: &OciDescriptor,
        limit: u64,
    ) -> Result<Vec<u8>, ReadError> {
        if u64::try_from(descriptor.size).map_or(true, |size| size > limit) {
            return Err(ReadError::TooLarge);
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let response = ok(self
            .get(&format!("blobs/{}", descriptor.digest), &[])
            .await?)
        .await?;
        let bytes = body(response, limit).await?;
        let actual = format!("sha256:{}", hex_digest(&bytes));
        if actual != descriptor.digest {
            return Err(ReadError::Mismatch {
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// Follows a redirect when [`may_follow`] allows it. reqwest drops the
/// `Authorization` header on a redirect to another host.
fn redirects(plain_http: Vec<String>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if may_follow(attempt.url(), &plain_http) {
            attempt.follow()
        } else {
            attempt.error(
                "a redirect to plain http:// beyond the registry and --insecure-registry \
                 is not followed",
            )
        }
    })
}

/// Whether a redirect to `url` may be followed: over HTTPS, or over plain
/// HTTP to a host in `plain_http` (the registries reached over plain
/// HTTP: the registry itself when it is, and `--insecure-registry`'s).
/// A registry reached over HTTPS is never followed down to plain HTTP,
/// not even on its own host.
fn may_follow(url: &reqwest::Url, plain_http: &[String]) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|host| {
            let with_port = url
                .port()
                .map_or_else(|| host.to_owned(), |port| format!("{host}:{port}"));
            plain_http
                .iter()
                .any(|named| *named == with_port || *named == host)
        }),
        _ => false,
    }
}

/// `response` when it is a 200; otherwise the registry's refusal, as
/// oci-client names it (its error envelope when it sent one).
async fn ok(response: reqwest::Response) -> Result<reqwest::Response, ReadError> {
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        return Ok(response);
    }
    let url = response.url().to_string();
    let body = body(response, MAX_ERROR_BYTES).await.unwrap_or_default();
    Err(ReadError::Registry(match status {
        reqwest::StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url },
        status if status.is_client_error() => match serde_json::from_slice::<OciEnvelope>(&body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
            Err(_) => OciDistributionError::ServerError {
                code: status.as_u16(),
                url,
                message: String::from_utf8_lossy(&body).into_owned(),
            },
        },
        status => OciDistributionError::ServerError {
            code: status.as_u16(),
            url,
            message: String::from_utf8_lossy(&body).into_owned(),
        },
    }))
}

/// `response`'s body, at most `limit` bytes: a larger declared length is
/// refused before reading, and a body running past the bound is cut off
/// there.
async fn body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn empty_index() -> OciImageIndex {
    OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned()),
        manifests: Vec::new(),
        artifact_type: None,
        annotations: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> reqwest::Url {
        text.parse().unwrap()
    }

    #[test]
    fn plain_http_redirects_go_only_to_registries_reached_over_plain_http() {
        let insecure = ["registry.lan:5000".to_owned(), "127.0.0.1:5000".to_owned()];
        assert!(may_follow(&url("https://cdn.example/blob"), &[]));
        assert!(may_follow(&url("http://registry.lan:5000/v2/"), &insecure));
        assert!(may_follow(&url("http://127.0.0.1:5000/v2/"), &insecure));
        assert!(!may_follow(&url("http://127.0.0.2:5000/v2/"), &insecure));
        assert!(!may_follow(
            &url("http://10.0.0.1/latest/meta-data"),
            &insecure
        ));
        assert!(!may_follow(&url("ftp://registry.lan:5000/"), &insecure));
        // A registry reached over HTTPS (so not in the list) is not
        // followed down to plain HTTP on its own host.
        assert!(!may_follow(&url("http://ghcr.io/v2/"), &insecure));
    }
}
