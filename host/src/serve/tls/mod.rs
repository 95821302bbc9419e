//! TLS on keybust's listeners: a certificate pair from PEM files, ALPN for
//! HTTP/2, client certificates for the admin listener, and a reload that
//! never leaves a listener without a working pair.
//!
//! The server configurations are built whole from the files and swapped in
//! one atomic store ([`Certificates::reload`]): each handshake takes the
//! configuration current when it starts, so a reload changes what new
//! connections are offered and leaves open ones alone. A reload that fails
//! (a half-written file, a key that does not match) keeps everything as it
//! was and says why in the log.
//!
//! Loading, checking and swapping the pair are one concept and stay in
//! this file (about a fifth of it is tests); which listeners speak TLS and
//! from which files is `settings.rs`.
//!
//! Handshakes use rustls on the aws-lc-rs provider, TLS 1.2 and 1.3, and
//! offer `h2` before `http/1.1`; plaintext listeners keep speaking both
//! HTTP/1.1 and h2c (see [`crate::serve::server`]).

use self::pem::{certificates, pem_error, read};
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

mod settings;

pub use settings::{Listener, TlsArgs, TlsFiles};

/// Why a pair could not be loaded. Messages name the file, never its
/// contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which setting names the file.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be: the message says which block
    /// was wanted and which the file holds (a certificate and key given
    /// the wrong way round), since the parser's own words are "no items
    /// found" or "malformedframing".
    #[error("{what} {path}: {problem}")]
    Pem {
        /// Which setting names the file.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong, in an operator's words.
        problem: String,
        /// The parser's error.
        source: rustls::pki_types::pem::Error,
    },
    /// The key does not go with the certificate, or is of a kind rustls
    /// cannot use.
    #[error("--tls-cert {cert} and --tls-key {key} are not a usable pair: {source}")]
    Pair {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// Why.
        source: rustls::Error,
    },
    /// The client CA file holds no certificate a verifier can use.
    #[error("--tls-client-ca {path}: {source}")]
    ClientCa {
        /// The CA file.
        path: String,
        /// Why.
        source: rustls::server::VerifierBuilderError,
    },
    /// Client certificates would be asked for on a listener that does not
    /// speak TLS.
    #[error(
        "--tls-client-ca asks admin clients for certificates, but the admin listener does not speak TLS: add admin to --tls-listeners"
    )]
    ClientCaWithoutAdminTls,
    /// The protocol versions of the provider cannot be used (a build error).
    #[error("TLS provider: {0}")]
    Provider(#[source] rustls::Error),
}

/// The server configuration of each listener that speaks TLS, built
/// together from one reading of the files.
struct Configs {
    by_listener: [Option<Arc<ServerConfig>>; 3],
    /// Digest of the bytes read, to tell a real change from a touch.
    read: [u8; 32],
    /// The leaf certificate's SHA-256, for the log.
    fingerprint: String,
    /// Digest of the client CA bytes read, when there is a client CA.
    client_ca: Option<[u8; 32]>,
}

/// The loaded pair, kept current by [`Certificates::reload`].
pub struct Certificates {
    files: TlsFiles,
    listeners: Vec<Listener>,
    current: ArcSwap<Configs>,
    /// One reload at a time (the file watch and SIGHUP may overlap): a slow
    /// reload that read the old files must not store them over a newer one.
    reloading: std::sync::Mutex<()>,
    /// Counts the client CA's replacements. An admin connection is
    /// authorized by the CA its handshake checked, so when the CA changes
    /// (a certificate revoked by a new bundle) connections made under the
    /// old one are closed, gracefully, rather than left to keep their
    /// authority ([`Acceptor::client_ca_changes`]).
    client_ca_generation: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Reads and checks the files: a bad pair at start is an error here,
    /// before any listener opens.
    pub fn load(files: TlsFiles, listeners: &[Listener]) -> Result<Self, TlsError> {
        if files.client_ca.is_some() && !listeners.contains(&Listener::Admin) {
            return Err(TlsError::ClientCaWithoutAdminTls);
        }
        let configs = build(&files, listeners)?;
        tracing::info!(
            fingerprint = %configs.fingerprint,
            listeners = ?listeners,
            "TLS certificate loaded"
        );
        Ok(Certificates {
            files,
            listeners: listeners.to_vec(),
            current: ArcSwap::from_pointee(configs),
            reloading: std::sync::Mutex::new(()),
            client_ca_generation: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Re-reads the files. On success new handshakes use them; on failure
    /// nothing changes. Returns whether the files differed from the pair in
    /// use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let configs = build(&self.files, &self.listeners)?;
        if configs.read == self.current.load().read {
            return Ok(false);
        }
        tracing::info!(fingerprint = %configs.fingerprint, "TLS certificate reloaded");
        let ca_changed = configs.client_ca != self.current.load().client_ca;
        self.current.store(Arc::new(configs));
        if ca_changed {
            tracing::info!(
                "client CA replaced: admin connections made under the old one are closed"
            );
            self.client_ca_generation
                .send_modify(|generation| *generation += 1);
        }
        Ok(true)
    }

    /// How `listener` accepts connections, or `None` when it is plaintext.
    pub fn acceptor(self: &Arc<Self>, listener: Listener) -> Option<Acceptor> {
        self.listeners.contains(&listener).then(|| Acceptor {
            certificates: self.clone(),
            listener,
        })
    }

    /// Reloads after each burst of changes to the files. The returned
    /// watcher must be kept alive for as long as the watch should last.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        let certificates = self.clone();
        crate::watch::on_change(&self.files.all(), move || {
            let certificates = certificates.clone();
            async move { certificates.reload_and_log("files changed").await }
        })
    }

    /// Re-reads the files and says in the log what became of it: new
    /// handshakes keep the current pair when the files do not load. `why`
    /// names the trigger (`"SIGHUP"`, `"files changed"`).
    pub async fn reload_and_log(self: &Arc<Self>, why: &'static str) {
        // File reads off the async threads: a slow mount must not stall serving.
        let certificates = self.clone();
        match tokio::task::spawn_blocking(move || certificates.reload()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::debug!(why, "TLS files unchanged"),
            Ok(Err(err)) => tracing::error!(
                why,
                error = %err,
                "TLS reload failed; new handshakes keep the current certificate"
            ),
            Err(err) => tracing::error!(why, error = %err, "TLS reload did not finish"),
        }
    }
}

/// Accepts TLS connections for one listener with the configuration current
/// at each handshake.
#[derive(Clone)]
pub struct Acceptor {
    certificates: Arc<Certificates>,
    listener: Listener,
}

impl Acceptor {
    /// For a listener that checks client certificates: a receiver that
    /// sees a change each time the client CA is replaced. Taken before the
    /// handshake, so a replacement during the handshake counts too.
    pub fn client_ca_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let verifies_clients =
            self.listener == Listener::Admin && self.certificates.files.client_ca.is_some();
        verifies_clients.then(|| self.certificates.client_ca_generation.subscribe())
    }

    /// Runs the handshake. The caller bounds it in time.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let config = self.certificates.current.load().by_listener[self.listener.index()].clone();
        // Absent only if the listener was never meant to speak TLS; refuse
        // rather than fall back to plaintext.
        let config = config
            .ok_or_else(|| std::io::Error::other("no TLS configuration for this listener"))?;
        tokio_rustls::TlsAcceptor::from(config).accept(stream).await
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every listener's configuration from one reading of the files.
fn build(files: &TlsFiles, listeners: &[Listener]) -> Result<Configs, TlsError> {
    let cert_pem = read("--tls-cert", &files.cert)?;
    let key_pem = read("--tls-key", &files.key)?;
    let ca_pem = match &files.client_ca {
        Some(path) => Some(read("--tls-client-ca", path)?),
        None => None,
    };
    let mut read_digest = Sha256::new();
    for bytes in [Some(&cert_pem), Some(&key_pem), ca_pem.as_ref()]
        .into_iter()
        .flatten()
    {
        read_digest.update((bytes.len() as u64).to_le_bytes());
        read_digest.update(bytes.as_slice());
    }
    let chain = certificates("--tls-cert", &files.cert, &cert_pem)?;
    let fingerprint = crate::digest::hex_digest(chain[0].as_ref());
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| {
        pem_error(
            "--tls-key",
            &files.key,
            "PRIVATE KEY (or RSA PRIVATE KEY, EC PRIVATE KEY)",
            &key_pem,
            source,
        )
    })?;
    let client_verifier = match (&files.client_ca, &ca_pem) {
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certificates("--tls-client-ca", path, pem)? {
                // An unusable CA certificate is skipped here and reported
                // below if none remains.
                let _ = roots.add(ca);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: path.display().to_string(),
                    source,
                })?;
            Some(verifier)
        }
        _ => None,
    };
    let pair_error = |source| TlsError::Pair {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        source,
    };
    let builder = || {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Provider)
    };
    let finish = |mut config: ServerConfig| {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    };
    let open = finish(
        builder()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(pair_error)?,
    );
    let mutual = match client_verifier {
        Some(verifier) => Some(finish(
            builder()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(pair_error)?,
        )),
        None => None,
    };
    let mut by_listener: [Option<Arc<ServerConfig>>; 3] = Default::default();
    for &listener in listeners {
        let config = match (listener, &mutual) {
            (Listener::Admin, Some(mutual)) => mutual.clone(),
            _ => open.clone(),
        };
        by_listener[listener.index()] = Some(config);
    }
    Ok(Configs {
        by_listener,
        read: read_digest.finalize().into(),
        fingerprint,
        client_ca: ca_pem.map(|pem| Sha256::digest(pem.as_slice()).into()),
    })
}

mod pem;
#[cfg(test)]
mod tests;
