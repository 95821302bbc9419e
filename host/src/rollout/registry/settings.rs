//! The registry's settings, as flags with environment twins, and the
//! client they make.

use super::high_water::HighWater;
use super::{Credentials, Registry, VerifyKey};
use crate::config::{ConfigError, Secret, parse_duration};
use std::path::PathBuf;
use std::time::Duration;

/// Registry settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// User name (with KEYBUST_REGISTRY_PASSWORD) for the registry of
    /// --component (or of the reference `keybust component` is given), and
    /// for no other; other registries get the docker config's credentials.
    #[arg(long, env = "KEYBUST_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,

    /// Password or token for registries (prefer the environment variable).
    #[arg(long, env = "KEYBUST_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,

    /// Directory of the docker config.json whose credentials are used
    /// [default: ~/.docker].
    #[arg(long, env = "DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,

    /// Registries (host or host:port, comma-separated) reached over plain
    /// HTTP; loopback registries always are. A redirect to plain HTTP is
    /// followed only to the registry's own host or one named here.
    #[arg(long, env = "KEYBUST_INSECURE_REGISTRY", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,

    /// Time one pull, resolve or push may take.
    #[arg(long, env = "KEYBUST_REGISTRY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub registry_timeout: Duration,

    /// Public key (PEM, as `cosign generate-key-pair` writes cosign.pub;
    /// ECDSA P-256 or Ed25519) that must have signed every component:
    /// pulled ones need its cosign signature over their manifest digest,
    /// and components that are not pulled (files, uploads) are refused
    /// [default: signatures are not checked].
    #[arg(long, env = "KEYBUST_VERIFY_KEY")]
    pub verify_key: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry client these settings describe.
    pub fn registry(&self) -> Result<Registry, ConfigError> {
        let login = match (&self.registry_username, &self.registry_password) {
            (Some(user), Some(password)) => Some((user.clone(), Secret::new(password.clone()))),
            (None, None) => None,
            _ => {
                return Err(ConfigError::invalid(
                    "KEYBUST_REGISTRY_USERNAME",
                    "KEYBUST_REGISTRY_USERNAME and KEYBUST_REGISTRY_PASSWORD must be set together",
                ));
            }
        };
        let docker_config = self
            .docker_config
            .clone()
            .or_else(|| dirs::home_dir().map(|home| home.join(".docker")));
        let verify_key = match &self.verify_key {
            Some(path) => Some(
                VerifyKey::load(path)
                    .map_err(|err| ConfigError::invalid("KEYBUST_VERIFY_KEY", err.to_string()))?,
            ),
            None => None,
        };
        Ok(Registry {
            high_water: verify_key
                .is_some()
                .then(|| std::sync::Arc::new(HighWater::in_memory())),
            verify_key,
            credentials: Credentials {
                login,
                login_registry: None,
                docker_config,
            },
            insecure: self
                .insecure_registry
                .iter()
                .map(|host| host.trim().to_owned())
                .filter(|host| !host.is_empty())
                .collect(),
            timeout: self.registry_timeout,
        })
    }
}
