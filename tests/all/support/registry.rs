//! A real OCI registry: Debian's `docker-registry` (CNCF distribution),
//! on a free loopback port with its storage in a temporary directory; and
//! a publisher that pushes what `keybust component push` refuses to, the
//! way another tool (or a mistake) could.

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OciRegistry {
    pub port: u16,
    child: Child,
    storage: tempfile::TempDir,
}

impl OciRegistry {
    pub fn start() -> Self {
        Self::start_with_login(None)
    }

    /// A registry that takes pushes and pulls only from `user` with
    /// `password` (HTTP basic, checked against an htpasswd file).
    pub fn start_with_login(login: Option<(&str, &str)>) -> Self {
        let storage = tempfile::tempdir().unwrap();
        let auth = match login {
            Some((user, password)) => {
                let htpasswd = storage.path().join("htpasswd");
                let hash = bcrypt::hash(password, 4).unwrap();
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: keybust-tests\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed: run scripts/test.sh, which installs it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OciRegistry {
            port,
            child,
            storage,
        }
    }

    /// `oci://127.0.0.1:PORT/{repository}`.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("oci://127.0.0.1:{}/{repository_and_tag}", self.port)
    }

    /// The file the registry keeps a blob's bytes in.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Publishes `bytes` at `repository:tag` as a wasm artifact (one
    /// `application/wasm` layer, a wasm config) without checking them.
    pub async fn push_unchecked(&self, repository: &str, tag: &str, bytes: Vec<u8>) {
        self.push_artifact(repository, tag, bytes, None).await;
    }

    /// Publishes `bytes` at `repository:tag` as [`Self::push_unchecked`]
    /// does, with its layer naming `urls` to fetch it from elsewhere.
    pub async fn push_with_layer_urls(
        &self,
        repository: &str,
        tag: &str,
        bytes: Vec<u8>,
        urls: Vec<String>,
    ) {
        self.push_artifact(repository, tag, bytes, Some(urls)).await;
    }

    async fn push_artifact(
        &self,
        repository: &str,
        tag: &str,
        bytes: Vec<u8>,
        urls: Option<Vec<String>>,
    ) {
        let reference = self.reference_to(repository, tag);
        let digest = format!("sha256:{}", keybust::digest::hex_digest(&bytes));
        let layers = vec![ImageLayer::new(bytes, "application/wasm".to_owned(), None)];
        let config = Config::new(
            serde_json::json!({
                "created": "2026-11-29T00:00:00Z",
                "architecture": "wasm",
                "os": "wasip2",
                "layerDigests": [digest],
            })
            .to_string()
            .into_bytes(),
            "application/vnd.wasm.config.v0+json".to_owned(),
            None,
        );
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_owned());
        manifest.layers[0].urls = urls;
        Self::client()
            .push(
                &reference,
                &layers,
                config,
                &RegistryAuth::Anonymous,
                Some(manifest),
            )
            .await
            .unwrap();
    }
}

impl OciRegistry {
    fn reference_to(&self, repository: &str, tag: &str) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            format!("127.0.0.1:{}", self.port),
            repository.to_owned(),
            tag.to_owned(),
        )
    }

    fn client() -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
    }

    /// Writes signatures over `digest` in `repository` as cosign's legacy
    /// layout has them, from its published description and not with
    /// keybust's code: the image tagged `sha256-<hex>.sig`, one
    /// `application/vnd.dev.cosign.simplesigning.v1+json` layer per
    /// `(payload, base64 signature)`, the signature in the layer's
    /// `dev.cosignproject.cosign/signature` annotation.
    pub async fn push_cosign_signatures(
        &self,
        repository: &str,
        digest: &str,
        signatures: &[(Vec<u8>, String)],
    ) {
        let layers: Vec<ImageLayer> = signatures
            .iter()
            .map(|(payload, signature)| {
                ImageLayer::new(
                    payload.clone(),
                    "application/vnd.dev.cosign.simplesigning.v1+json".to_owned(),
                    Some(
                        [(
                            "dev.cosignproject.cosign/signature".to_owned(),
                            signature.clone(),
                        )]
                        .into(),
                    ),
                )
            })
            .collect();
        let config = Config::new(
            br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","os":"","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec(),
            "application/vnd.oci.image.config.v1+json".to_owned(),
            None,
        );
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_owned());
        let tag = format!("{}.sig", digest.replace(':', "-"));
        Self::client()
            .push(
                &self.reference_to(repository, &tag),
                &layers,
                config,
                &RegistryAuth::Anonymous,
                Some(manifest),
            )
            .await
            .unwrap();
    }

    /// Points `repository:to` at the manifest `repository:from` names, as
    /// moving a tag does (`crane tag`, `oras tag`): the same bytes.
    pub async fn retag(&self, repository: &str, from: &str, to: &str) {
        let client = Self::client();
        let (raw, _) = client
            .pull_manifest_raw(
                &self.reference_to(repository, from),
                &RegistryAuth::Anonymous,
                &[OCI_IMAGE_MEDIA_TYPE],
            )
            .await
            .unwrap();
        client
            .push_manifest_raw(
                &self.reference_to(repository, to),
                raw,
                http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
            )
            .await
            .unwrap();
    }

    /// Whether any signature image over `digest` is in `repository`.
    pub async fn is_signed(&self, repository: &str, digest: &str) -> bool {
        let tag = format!("{}.sig", digest.replace(':', "-"));
        Self::client()
            .fetch_manifest_digest(
                &self.reference_to(repository, &tag),
                &RegistryAuth::Anonymous,
            )
            .await
            .is_ok()
    }

    /// The digest of the manifest `repository:tag` names, computed over
    /// the manifest's bytes.
    pub async fn manifest_digest(&self, repository: &str, tag: &str) -> String {
        let (raw, _) = Self::client()
            .pull_manifest_raw(
                &self.reference_to(repository, tag),
                &RegistryAuth::Anonymous,
                &[OCI_IMAGE_MEDIA_TYPE],
            )
            .await
            .unwrap();
        format!("sha256:{}", keybust::digest::hex_digest(&raw))
    }

    /// How many signature layers the `.sig` image over `digest` holds.
    pub async fn signature_count(&self, repository: &str, digest: &str) -> usize {
        let tag = format!("{}.sig", digest.replace(':', "-"));
        let (manifest, _) = Self::client()
            .pull_image_manifest(
                &self.reference_to(repository, &tag),
                &RegistryAuth::Anonymous,
            )
            .await
            .unwrap();
        manifest.layers.len()
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
