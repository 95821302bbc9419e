//! Which listeners speak TLS, and the files their pair is read from, as
//! `keybust serve` takes them.

use super::{Certificates, TlsError};
use std::path::PathBuf;
use std::sync::Arc;

/// A listener keybust opens, for choosing which of them speak TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Listener {
    /// The endpoint's listener (`--listen`).
    Public,
    /// The admin listener (`--admin-listen`).
    Admin,
    /// The probes-only listener (`--metrics-listen`).
    Metrics,
}

impl Listener {
    pub(super) fn index(self) -> usize {
        match self {
            Listener::Public => 0,
            Listener::Admin => 1,
            Listener::Metrics => 2,
        }
    }
}

/// TLS settings, as `keybust serve` takes them.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM, leaf first) for TLS [default: none, plaintext
    /// HTTP/1.1 and h2c]. Watched, and re-read on SIGHUP: new handshakes
    /// get the new pair, open connections keep theirs.
    #[arg(long, env = "KEYBUST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "KEYBUST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Listeners that speak TLS with that pair, comma-separated. Given
    /// without --tls-cert, keybust refuses to start rather than serve them
    /// in plaintext.
    #[arg(
        long,
        env = "KEYBUST_TLS_LISTENERS",
        requires = "tls_cert",
        value_enum,
        value_delimiter = ',',
        default_value = "public"
    )]
    pub tls_listeners: Vec<Listener>,

    /// CA certificates (PEM): clients of the admin listener must present a
    /// certificate one of them issued (mutual TLS). Needs `admin` in
    /// --tls-listeners.
    #[arg(long, env = "KEYBUST_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The certificates, loaded and checked; `None` without `--tls-cert`.
    pub fn load(&self) -> Result<Option<Arc<Certificates>>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        };
        Certificates::load(files, &self.tls_listeners)
            .map(|certificates| Some(Arc::new(certificates)))
    }
}

/// Where the pair (and the client CA) are read from, every time.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// The CAs that issue admin clients' certificates.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    pub(super) fn all(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.client_ca.clone());
        files
    }
}
