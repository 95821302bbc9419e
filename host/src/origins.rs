//! The `origins` capability: which browser origins may call the endpoint.

use crate::config::OriginSettings;
use regex::RegexSet;

/// The allow-list, compiled once so a request costs one automaton run.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    allowed: RegexSet,
    default_origin: String,
}

/// An allow-list pattern that is not a valid regular expression.
#[derive(Debug, thiserror::Error)]
#[error("KEYBUST_ALLOWED_ORIGINS: invalid pattern: {0}")]
pub struct InvalidOriginPattern(#[from] regex::Error);

impl OriginPolicy {
    /// Compiles the configured patterns.
    pub fn new(settings: &OriginSettings) -> Result<Self, InvalidOriginPattern> {
        Ok(OriginPolicy {
            allowed: RegexSet::new(&settings.patterns)?,
            default_origin: settings.default_origin.clone(),
        })
    }

    /// Whether `origin` matches one of the patterns.
    pub fn is_allowed(&self, origin: &str) -> bool {
        self.allowed.is_match(origin)
    }

    /// The `Access-Control-Allow-Origin` value for requests without an `Origin`.
    pub fn default_origin(&self) -> &str {
        &self.default_origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn policy(vars: &[(&str, &str)]) -> OriginPolicy {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let settings = Settings::from_lookup(|name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .unwrap();
        OriginPolicy::new(&settings.origins).unwrap()
    }

    #[test]
    fn default_patterns() {
        let p = policy(&[("NODE_ENV", "production")]);
        for ok in [
            "https://worldmonitor.app",
            "https://www.worldmonitor.app",
            "https://worldmonitor-git-main-eliewm.vercel.app",
            "http://tauri.localhost",
            "https://TAURI.localhost:1420",
            "http://app.Tauri.localhost:3000",
            "tauri://localhost",
            "asset://localhost",
        ] {
            assert!(p.is_allowed(ok), "{ok}");
        }
        for bad in [
            "http://worldmonitor.app",
            "https://worldmonitor.app.evil.com",
            "https://evilworldmonitor.app",
            "https://worldmonitor-x-other.vercel.app",
            "http://localhost:3000",
            "https://WORLDMONITOR.APP",
            "null",
        ] {
            assert!(!p.is_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn localhost_only_outside_production() {
        let p = policy(&[]);
        assert!(p.is_allowed("http://localhost:3000"));
        assert!(p.is_allowed("https://127.0.0.1"));
        assert!(!p.is_allowed("http://localhost.evil.com"));
    }

    #[test]
    fn explicit_list_replaces_defaults() {
        let p = policy(&[(
            "KEYBUST_ALLOWED_ORIGINS",
            r"^https://a\.example$, ^https://b\.example$",
        )]);
        assert!(p.is_allowed("https://a.example"));
        assert!(p.is_allowed("https://b.example"));
        assert!(!p.is_allowed("https://worldmonitor.app"));
    }
}
