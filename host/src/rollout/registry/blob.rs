//! A blob a manifest names, read within a size bound and checked against
//! the digest that names it: a component's layer, a signature's payload.

use crate::digest::hex_digest;
use futures_util::StreamExt;
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;

/// Why a blob could not be had.
pub(super) enum BlobError {
    /// The registry refused, could not be reached, or broke off.
    Registry(OciDistributionError),
    /// The descriptor or the bytes sent are over the bound.
    TooLarge,
    /// The bytes do not hash to the descriptor's digest.
    Mismatch {
        /// The descriptor's digest.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
}

/// The blob `layer` names, in `image`'s repository, at most `limit` bytes:
/// a larger descriptor is refused before a byte is asked for, and a
/// registry sending more than it declared is cut off there.
pub(super) async fn read(
    client: &oci_client::Client,
    image: &oci_client::Reference,
    layer: &OciDescriptor,
    limit: u64,
) -> Result<Vec<u8>, BlobError> {
    if u64::try_from(layer.size).map_or(true, |size| size > limit) {
        return Err(BlobError::TooLarge);
    }
    let mut stream = client
        .pull_blob_stream(image, layer)
        .await
        .map_err(BlobError::Registry)?
        .stream;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            // oci-client checks the digest at the stream's end.
            match err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<DigestError>())
            {
                Some(DigestError::VerificationError { expected, actual }) => BlobError::Mismatch {
                    expected: expected.clone(),
                    actual: actual.clone(),
                },
                _ => BlobError::Registry(err.into()),
            }
        })?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(BlobError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    let actual = format!("sha256:{}", hex_digest(&bytes));
    if actual != layer.digest {
        return Err(BlobError::Mismatch {
            expected: layer.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}
