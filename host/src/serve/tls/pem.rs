//! Reading the PEM files: bounded, into buffers that are wiped, and with
//! errors that say which block was wanted and what the file holds.

use super::TlsError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use zeroize::Zeroizing;

/// The most a PEM file may hold: chains and CA bundles are kilobytes.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM file into one buffer sized up front, so that no copy of a
/// key is left behind by a buffer that grew.
pub(super) fn read(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    use std::io::Read;
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|file| {
            let size = file.metadata()?.len();
            if size > MAX_PEM_BYTES {
                return Err(std::io::Error::other("larger than 1 MiB"));
            }
            // One byte spare: a file that grew since is read to its end
            // without a reallocation most of the time, and still bounded.
            bytes.reserve_exact(size as usize + 1);
            file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes)
        })
        .and_then(|read| {
            if read as u64 > MAX_PEM_BYTES {
                Err(std::io::Error::other("larger than 1 MiB"))
            } else {
                Ok(())
            }
        })
        .map_err(|source| TlsError::Read {
            what,
            path: path.display().to_string(),
            source,
        })?;
    Ok(bytes)
}

pub(super) fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |source| pem_error(what, path, "CERTIFICATE", pem, source);
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    if chain.is_empty() {
        return Err(invalid(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(chain)
}

/// [`TlsError::Pem`] for `pem`, read from `path`, which should have held a
/// `wanted` block. Only the blocks' labels are quoted, never their bodies.
pub(super) fn pem_error(
    what: &'static str,
    path: &Path,
    wanted: &str,
    pem: &[u8],
    source: rustls::pki_types::pem::Error,
) -> TlsError {
    let problem = match source {
        rustls::pki_types::pem::Error::NoItemsFound => {
            let held: Vec<&str> = String::from_utf8_lossy(pem)
                .lines()
                .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
                .filter_map(|label| label.strip_suffix("-----"))
                .map(|label| match label {
                    "CERTIFICATE" => "CERTIFICATE",
                    "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => "PRIVATE KEY",
                    _ => "another",
                })
                .collect();
            if held.is_empty() {
                format!("wanted a -----BEGIN {wanted}----- block; the file holds no PEM block")
            } else {
                let mut kinds = held.clone();
                kinds.sort_unstable();
                kinds.dedup();
                let wanted_kind = if wanted.starts_with("CERTIFICATE") {
                    "CERTIFICATE"
                } else {
                    "PRIVATE KEY"
                };
                let swapped = kinds
                    .iter()
                    .any(|kind| *kind != wanted_kind && *kind != "another");
                format!(
                    "wanted a -----BEGIN {wanted}----- block; the file holds {} block(s): {}{}",
                    held.len(),
                    kinds.join(", "),
                    if swapped {
                        " (are the certificate and the key the wrong way round?)"
                    } else {
                        ""
                    }
                )
            }
        }
        ref other => {
            use rustls::pki_types::pem::Error as Pem;
            // The parser's own words quote the lines as byte arrays.
            let what = match other {
                Pem::MissingSectionEnd { end_marker } => format!(
                    "a block has no -----END {}----- line",
                    String::from_utf8_lossy(end_marker)
                ),
                Pem::IllegalSectionStart { .. } => "a -----BEGIN line is malformed".to_owned(),
                Pem::Base64Decode(_) => "a block's body is not base64".to_owned(),
                _ => format!("the PEM cannot be read ({other})"),
            };
            format!("{what}; wanted a -----BEGIN {wanted}----- block")
        }
    };
    TlsError::Pem {
        what,
        path: path.display().to_string(),
        problem,
        source,
    }
}
