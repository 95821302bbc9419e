//! Credentials for a registry: `KEYBUST_REGISTRY_USERNAME` /
//! `KEYBUST_REGISTRY_PASSWORD` for the one registry they are bound to (the
//! configured component's), else what a docker `config.json` holds for the
//! registry (its `auths`, or the credential helper it names), else none.

use crate::config::Secret;
use oci_client::secrets::RegistryAuth;
use std::path::{Path, PathBuf};

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// A user name and password, and the one registry they are for: they
    /// are never sent to a registry someone else named (an admin request's
    /// reference, say).
    pub login: Option<(String, Secret)>,
    /// The registry `login` is for; none: no registry yet.
    pub login_registry: Option<String>,
    /// The directory of a docker `config.json`.
    pub docker_config: Option<PathBuf>,
}

/// Why the credentials cannot be had.
#[derive(Debug, thiserror::Error)]
#[error("credentials for {registry}: {reason}")]
pub struct CredentialsError {
    /// The registry.
    pub registry: String,
    /// What went wrong (never a credential).
    pub reason: String,
}

impl Credentials {
    /// The authentication to use with `registry`.
    pub fn for_registry(&self, registry: &str) -> Result<RegistryAuth, CredentialsError> {
        if let Some((user, password)) = self
            .login
            .as_ref()
            .filter(|_| self.login_registry.as_deref() == Some(registry))
        {
            return Ok(RegistryAuth::Basic(
                user.clone(),
                password.expose().to_owned(),
            ));
        }
        let Some(dir) = &self.docker_config else {
            return Ok(RegistryAuth::Anonymous);
        };
        from_docker_config(&dir.join("config.json"), registry)
    }
}

/// What a docker `config.json` holds for `registry`; anonymous when it
/// does not exist or names nothing for it.
fn from_docker_config(path: &Path, registry: &str) -> Result<RegistryAuth, CredentialsError> {
    let error = |reason: String| CredentialsError {
        registry: registry.to_owned(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(RegistryAuth::Anonymous);
        }
        Err(err) => return Err(error(format!("cannot read {}: {err}", path.display()))),
    };
    use docker_credential::{CredentialRetrievalError as Missing, DockerCredential};
    match docker_credential::get_credential_from_reader(file, registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(RegistryAuth::Basic(user, password))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(RegistryAuth::Bearer(token)),
        Err(Missing::NoCredentialConfigured) => Ok(RegistryAuth::Anonymous),
        // A helper's own output is left out: it may hold a credential.
        Err(Missing::HelperFailure { helper, .. }) => Err(error(format!(
            "the credential helper docker-credential-{helper} failed ({})",
            path.display()
        ))),
        Err(err) => Err(error(format!("{err} ({})", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // "bob:s3cret", as `docker login` writes it.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"127.0.0.1:5000":{"auth":"Ym9iOnMzY3JldA=="}}}"#,
        )
        .unwrap();
        let credentials = Credentials {
            login: None,
            login_registry: None,
            docker_config: Some(dir.path().to_owned()),
        };
        match credentials.for_registry("127.0.0.1:5000").unwrap() {
            RegistryAuth::Basic(user, password) => {
                assert_eq!((user.as_str(), password.as_str()), ("bob", "s3cret"))
            }
            _ => panic!("expected basic credentials"),
        }
        assert!(matches!(
            credentials.for_registry("ghcr.io").unwrap(),
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn an_explicit_login_wins_and_no_config_is_anonymous() {
        let login = Credentials {
            login: Some(("ci".into(), Secret::new("pw"))),
            login_registry: Some("ghcr.io".into()),
            docker_config: Some("/nonexistent".into()),
        };
        assert!(matches!(
            login.for_registry("ghcr.io").unwrap(),
            RegistryAuth::Basic(..)
        ));
        // Not to any other registry.
        assert!(matches!(
            login.for_registry("evil.example:5000").unwrap(),
            RegistryAuth::Anonymous
        ));
        let none = Credentials {
            login: None,
            login_registry: None,
            docker_config: Some("/nonexistent".into()),
        };
        assert!(matches!(
            none.for_registry("ghcr.io").unwrap(),
            RegistryAuth::Anonymous
        ));
    }
}
