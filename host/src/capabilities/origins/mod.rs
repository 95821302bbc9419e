//! The `origins` capability: which browser origins may call the endpoint
//! (contract, "CORS"). The list stays on the host; the guest asks.

mod host;

use crate::config::{ConfigError, non_empty, split_list};
use regex::RegexSet;

/// The allowed-origin patterns keybust uses when `KEYBUST_ALLOWED_ORIGINS` is unset.
pub const DEFAULT_ORIGIN_PATTERNS: &[&str] = &[
    r"^https://(.*\.)?worldmonitor\.app$",
    r"^https://worldmonitor-[a-z0-9-]+-eliewm\.vercel\.app$",
    r"(?i)^https?://tauri\.localhost(:\d+)?$",
    r"(?i)^https?://[a-z0-9-]+\.tauri\.localhost(:\d+)?$",
    r"^tauri://localhost$",
    r"^asset://localhost$",
];

/// Extra patterns allowed only when `NODE_ENV` is not `production`.
pub const DEVELOPMENT_ORIGIN_PATTERNS: &[&str] = &[
    r"^https?://localhost(:\d+)?$",
    r"^https?://127\.0\.0\.1(:\d+)?$",
];

/// The `Access-Control-Allow-Origin` value for requests without an `Origin`.
pub const DEFAULT_ALLOW_ORIGIN: &str = "https://worldmonitor.app";

/// The CORS headers the component sends on every allowed answer, besides
/// `Access-Control-Allow-Origin`; the host sends the same on the answers
/// it gives in the component's place (a unit test keeps the two equal).
const CORS_HEADERS: &[(&str, &str)] = &[
    ("access-control-allow-credentials", "true"),
    ("access-control-allow-methods", "POST, OPTIONS"),
    (
        "access-control-allow-headers",
        "Content-Type, Authorization, X-WorldMonitor-Key, X-Api-Key, \
         X-Widget-Key, X-Pro-Key, X-WorldMonitor-Desktop-Timestamp, \
         X-WorldMonitor-Desktop-Signature, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID",
    ),
    (
        "access-control-expose-headers",
        "Mcp-Session-Id, WWW-Authenticate, Retry-After, X-RateLimit-Limit, \
         X-RateLimit-Remaining, X-RateLimit-Reset",
    ),
    ("access-control-max-age", "3600"),
    ("vary", "Origin"),
];

/// Which browser origins may call the endpoint.
#[derive(Debug, Clone)]
pub struct OriginSettings {
    /// Regular expressions; an origin is allowed when one matches.
    pub patterns: Vec<String>,
    /// `Access-Control-Allow-Origin` for requests without an `Origin`.
    pub default_origin: String,
}

impl OriginSettings {
    /// The default patterns, with the localhost ones unless `production`.
    pub fn defaults(production: bool) -> Self {
        let development: &[&str] = if production {
            &[]
        } else {
            DEVELOPMENT_ORIGIN_PATTERNS
        };
        OriginSettings {
            patterns: DEFAULT_ORIGIN_PATTERNS
                .iter()
                .chain(development)
                .map(|p| (*p).to_owned())
                .collect(),
            default_origin: DEFAULT_ALLOW_ORIGIN.to_owned(),
        }
    }
}

impl Default for OriginSettings {
    /// What an unset `NODE_ENV` gives: the default patterns and localhost.
    fn default() -> Self {
        Self::defaults(false)
    }
}

/// The CORS settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct OriginArgs {
    /// Comma-separated regular expressions that replace the allowed-origin list.
    #[arg(long, env = "KEYBUST_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// `production` drops localhost and 127.0.0.1 from the default allowed origins.
    #[arg(long, env = "NODE_ENV")]
    pub node_env: Option<String>,

    /// Access-Control-Allow-Origin for requests without an Origin [default: <https://worldmonitor.app>].
    #[arg(long, env = "KEYBUST_DEFAULT_ORIGIN")]
    pub default_origin: Option<String>,
}

impl OriginArgs {
    /// The allow-list these settings choose.
    pub fn settings(&self) -> Result<OriginSettings, ConfigError> {
        let production = non_empty(self.node_env.clone()).as_deref() == Some("production");
        let mut settings = OriginSettings::defaults(production);
        if let Some(list) = non_empty(self.allowed_origins.clone()) {
            settings.patterns = split_list(Some(&list));
        }
        if let Some(origin) = non_empty(self.default_origin.clone()) {
            settings.default_origin = origin;
        }
        Ok(settings)
    }
}

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

    /// Adds to `response` the CORS headers the component would give a
    /// request with these headers, for answers the host gives in its place
    /// (a full queue, a failed or slow guest, a slow body), so a browser
    /// sees the retryable status instead of a CORS failure. A request whose
    /// `Origin` is not allowed gets none, as from the component (contract
    /// rule E1). Every `Origin` value counts, joined and decoded leniently
    /// the way the component reads them.
    pub fn add_cors_headers(&self, request: &http::HeaderMap, response: &mut http::HeaderMap) {
        let origins: Vec<String> = request
            .get_all(http::header::ORIGIN)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect();
        let origin = Some(origins.join(", ")).filter(|origin| !origin.is_empty());
        let allow_origin = match origin {
            Some(origin) if !self.is_allowed(&origin) => return,
            Some(origin) => origin,
            None => self.default_origin.clone(),
        };
        let Ok(allow_origin) = http::HeaderValue::from_str(&allow_origin) else {
            return;
        };
        response.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        for (name, value) in CORS_HEADERS {
            response.insert(*name, http::HeaderValue::from_static(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_lookup;

    fn policy(vars: &[(&str, &str)]) -> OriginPolicy {
        let args = parse_lookup::<OriginArgs>(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        OriginPolicy::new(&args.settings().unwrap()).unwrap()
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
    fn host_answers_carry_the_components_cors_headers() {
        let p = policy(&[]);
        let guest = keybust_guest::policy::cors_headers("https://worldmonitor.app".into());
        let mut request = http::HeaderMap::new();
        request.insert("origin", "https://worldmonitor.app".parse().unwrap());
        let mut response = http::HeaderMap::new();
        p.add_cors_headers(&request, &mut response);
        assert_eq!(response.len(), guest.len());
        for (name, value) in guest {
            assert_eq!(response.get(name).unwrap(), value.as_str(), "{name}");
        }
        let mut response = http::HeaderMap::new();
        p.add_cors_headers(&http::HeaderMap::new(), &mut response);
        assert_eq!(
            response.get("access-control-allow-origin").unwrap(),
            DEFAULT_ALLOW_ORIGIN
        );
    }

    #[test]
    fn host_answers_to_a_refused_origin_carry_no_cors() {
        let p = policy(&[("NODE_ENV", "production")]);
        let refused = [
            vec![&b"https://evil.example"[..]],
            vec![
                &b"https://worldmonitor.app"[..],
                &b"https://evil.example"[..],
            ],
            vec![&b"https://worldmonitor.app\xff"[..]],
        ];
        for values in refused {
            let mut request = http::HeaderMap::new();
            for value in &values {
                request.append("origin", http::HeaderValue::from_bytes(value).unwrap());
            }
            let mut response = http::HeaderMap::new();
            p.add_cors_headers(&request, &mut response);
            assert!(response.is_empty(), "{values:?}");
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
