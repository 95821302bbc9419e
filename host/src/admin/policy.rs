//! Who may change what the admin listener serves: the admin token, the
//! peers mutations are taken from, and the refusals, each with its answer.

use super::error;
use crate::body::ResponseBody;
use crate::config::Secret;
#[cfg(feature = "registry")]
use crate::rollout::registry::Registry;
use subtle::ConstantTimeEq;

/// The admin plane's settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address for the admin listener (health, readiness, metrics, component API).
    #[arg(long, env = "KEYBUST_ADMIN_LISTEN", default_value = "127.0.0.1:8788")]
    pub admin_listen: std::net::SocketAddr,

    /// Bearer token for admin mutations [default: none, admin mutations are
    /// refused]. On the command line it shows in `ps`: prefer the
    /// environment or --admin-token-file.
    #[arg(long, env = "KEYBUST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the bearer token for admin mutations (a mounted secret);
    /// wins over --admin-token.
    #[arg(long, env = "KEYBUST_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Take admin mutations from peers beyond loopback (then put TLS or a
    /// private network in front).
    #[arg(long, env = "KEYBUST_ADMIN_ALLOW_REMOTE", value_parser = crate::config::parse_switch)]
    pub admin_allow_remote: bool,

    /// Address for a listener that serves only /healthz, /readyz and
    /// /metrics, for probes and scrapes from the cluster [default: none].
    #[arg(long, env = "KEYBUST_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl AdminArgs {
    /// The admin listener's policy: the token from its file, or as given.
    pub fn policy(&self) -> std::io::Result<AdminPolicy> {
        let token = match &self.admin_token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path).map_err(|err| {
                    std::io::Error::new(
                        err.kind(),
                        format!("cannot read --admin-token-file {}: {err}", path.display()),
                    )
                })?;
                Some(token.trim().to_owned())
            }
            None => self.admin_token.clone(),
        };
        Ok(AdminPolicy {
            token: token.filter(|t| !t.is_empty()).map(Secret::new),
            allow_remote: self.admin_allow_remote,
            probes_only: false,
            #[cfg(feature = "registry")]
            registry: None,
        })
    }
}

/// Which requests a listener takes, and from whom.
#[derive(Debug, Clone, Default)]
pub struct AdminPolicy {
    /// The bearer token admin mutations need; none: mutations are refused.
    pub token: Option<Secret>,
    /// Whether mutations are taken from peers beyond loopback
    /// (`--admin-allow-remote`).
    pub allow_remote: bool,
    /// Only `/healthz`, `/readyz` and `/metrics` (`--metrics-listen`), so
    /// probes and scrapes can face the cluster while swaps stay private.
    pub probes_only: bool,
    /// Where a `{"reference": "oci://…"}` upload is pulled from; none:
    /// such uploads are refused.
    #[cfg(feature = "registry")]
    pub registry: Option<Registry>,
}

impl AdminPolicy {
    /// Whether only signed components, pulled by reference, may serve
    /// (`--verify-key`).
    pub(super) fn requires_signatures(&self) -> bool {
        #[cfg(feature = "registry")]
        {
            self.registry
                .as_ref()
                .is_some_and(Registry::requires_signatures)
        }
        #[cfg(not(feature = "registry"))]
        {
            false
        }
    }
}

/// Why an admin mutation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No admin token is configured.
    Disabled,
    /// The request carries no bearer token.
    Missing,
    /// The request carries another token.
    Wrong,
    /// The peer is beyond loopback, and `--admin-allow-remote` is off.
    Remote,
}

impl Refusal {
    pub(super) fn response(self) -> hyper::Response<ResponseBody> {
        match self {
            Refusal::Disabled => error(
                403,
                "admin mutations are disabled: KEYBUST_ADMIN_TOKEN is not set",
            ),
            Refusal::Missing => {
                let mut refusal = error(401, "admin token required");
                refusal.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                refusal
            }
            Refusal::Wrong => error(403, "wrong admin token"),
            Refusal::Remote => error(
                403,
                "admin mutations are taken from loopback only (--admin-allow-remote)",
            ),
        }
    }
}

/// Admin mutations need `Authorization: Bearer <KEYBUST_ADMIN_TOKEN>`,
/// compared in constant time, from a loopback peer unless remote ones are
/// allowed; with no token configured they are refused.
pub(super) fn authorize<B>(
    policy: &AdminPolicy,
    peer: Option<std::net::SocketAddr>,
    request: &hyper::Request<B>,
) -> Result<(), Refusal> {
    let expected = policy.token.as_ref().ok_or(Refusal::Disabled)?;
    if !policy.allow_remote && !peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback()) {
        return Err(Refusal::Remote);
    }
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .ok_or(Refusal::Missing)?;
    if bool::from(presented.ct_eq(expected.expose().as_bytes())) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str) -> hyper::Request<()> {
        hyper::Request::builder()
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
    }

    #[test]
    fn mutations_come_from_loopback_unless_remote_ones_are_allowed() {
        let mut policy = AdminPolicy {
            token: Some(Secret::new("t0ken")),
            ..AdminPolicy::default()
        };
        let local = Some("127.0.0.1:5000".parse().unwrap());
        let remote = Some("10.1.2.3:5000".parse().unwrap());
        assert_eq!(authorize(&policy, local, &request("t0ken")), Ok(()));
        assert_eq!(
            authorize(&policy, remote, &request("t0ken")),
            Err(Refusal::Remote)
        );
        assert_eq!(
            authorize(&policy, None, &request("t0ken")),
            Err(Refusal::Remote)
        );
        assert_eq!(
            authorize(&policy, local, &request("other")),
            Err(Refusal::Wrong)
        );
        policy.allow_remote = true;
        assert_eq!(authorize(&policy, remote, &request("t0ken")), Ok(()));
        policy.token = None;
        assert_eq!(
            authorize(&policy, local, &request("t0ken")),
            Err(Refusal::Disabled)
        );
    }
}
