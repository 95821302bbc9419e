//! Why a registry exchange failed, and what the callers make of it: worth
//! another try later (a registry that cannot be reached, a version not yet
//! signed), or refused for good.

use super::SignatureError;
use super::layout::LayoutError;
use super::{CredentialsError, MAX_COMPONENT_BYTES};
use std::time::Duration;

/// Why a registry exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The credentials cannot be had.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The registry refused or could not be reached.
    #[error("{reference}: {source}")]
    Registry {
        /// The reference.
        reference: String,
        /// What oci-client reports.
        source: oci_client::errors::OciDistributionError,
    },
    /// The registry took longer than `--registry-timeout`.
    #[error("{reference}: the registry did not answer within {timeout:?}")]
    TimedOut {
        /// The reference.
        reference: String,
        /// The bound.
        timeout: Duration,
    },
    /// What the reference names is not a wasm component artifact.
    #[error("{reference}: not a wasm component artifact: {reason}")]
    NotAComponent {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// Bytes pulled do not hash to the digest that names them.
    #[error("{reference}: {what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// `manifest` or `component`.
        what: &'static str,
        /// The digest that names the bytes.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The component is larger than a swap accepts.
    #[error("{reference}: the component is larger than {MAX_COMPONENT_BYTES} bytes")]
    TooLarge {
        /// The reference.
        reference: String,
    },
    /// The signature check failed, or signing did.
    #[error("{reference}: {source}")]
    Signature {
        /// The reference.
        reference: String,
        /// Why.
        source: SignatureError,
    },
    /// The bytes to push are not a component.
    #[error("not a component that can be published: {0}")]
    Unpublishable(#[source] LayoutError),
    /// The push failed.
    #[error("{reference}: push failed: {source}")]
    Push {
        /// The reference.
        reference: String,
        /// Why.
        source: oci_client::errors::OciDistributionError,
    },
}

impl RegistryError {
    /// Whether the version was refused only for having no signature at
    /// all, or none for the tag it was pulled through, which a signature
    /// pushed after the version (`keybust component sign`, `cosign sign`)
    /// mends: a tag moved to a version signed for another is signed for
    /// this one next.
    pub fn awaits_signature(&self) -> bool {
        matches!(
            self,
            RegistryError::Signature {
                source: SignatureError::NotSigned { .. } | SignatureError::OtherTag { .. },
                ..
            }
        )
    }

    /// Whether the registry says it holds no such tag, digest or
    /// repository. Some registries say the same of a repository the
    /// credentials may not see, so the operator is told both.
    pub fn is_not_found(&self) -> bool {
        match self {
            RegistryError::Registry { source, .. } => names_nothing(source),
            _ => false,
        }
    }

    /// Whether trying again later may work: the registry could not be
    /// reached or asked, as opposed to what it holds being refused.
    pub fn is_transient(&self) -> bool {
        use oci_client::errors::OciDistributionError as Oci;
        match self {
            RegistryError::TimedOut { .. } | RegistryError::Credentials(_) => true,
            RegistryError::Signature {
                source: SignatureError::Registry { .. },
                ..
            } => true,
            // What the registry holds is malformed: asking again gets the same.
            RegistryError::Registry {
                source:
                    Oci::DigestError(_)
                    | Oci::ManifestParsingError(_)
                    | Oci::ManifestEncodingError(_)
                    | Oci::JsonError(_)
                    | Oci::SpecViolationError(_)
                    | Oci::IncompatibleLayerMediaTypeError(_)
                    | Oci::PullNoLayersError,
                ..
            } => false,
            // Unreachable, 5xx, throttled, unauthorized, not there yet.
            RegistryError::Registry { .. } => true,
            _ => false,
        }
    }
}

/// Whether the registry answered that it holds no such tag, digest or
/// repository.
pub(super) fn names_nothing(error: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as Oci, OciErrorCode as Code};
    match error {
        Oci::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|error| matches!(error.code, Code::ManifestUnknown | Code::NameUnknown)),
        Oci::ImageManifestNotFoundError(_) => true,
        Oci::ServerError { code: 404, .. } => true,
        _ => false,
    }
}
