//! What one version did with one request, and whether two versions did
//! the same: the status, whether the answer carries the CORS headers, and
//! the backend calls with their arguments. Bodies and log lines may differ.
//!
//! A divergence is logged, so it is said without a secret: the token
//! never appears, a key hash appears as `<hash>` (or `<another hash>`),
//! and the request is described by its shape, never its body.

use crate::capabilities::Effect;

/// What one version did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The answer's status.
    pub status: u16,
    /// Whether it carried `Access-Control-Allow-Origin`.
    pub cors: bool,
    /// The backend calls, in order.
    pub calls: Vec<Effect>,
}

impl Observed {
    /// What the answer `head` and the `calls` say.
    pub fn of(head: &http::response::Parts, calls: Vec<Effect>) -> Self {
        Observed {
            status: head.status.as_u16(),
            cors: head.headers.contains_key("access-control-allow-origin"),
            calls,
        }
    }
}

/// How the candidate differs from the serving version on one request,
/// said without a secret; none when they agree.
pub fn divergence(serving: &Observed, candidate: &Observed) -> Option<String> {
    let mut wrong = Vec::new();
    if serving.status != candidate.status {
        wrong.push(format!(
            "the serving version answered {}, the candidate {}",
            serving.status, candidate.status
        ));
    }
    if serving.cors != candidate.cors {
        let with = |cors: bool| if cors { "with" } else { "without" };
        wrong.push(format!(
            "the serving version answered {} CORS headers, the candidate {}",
            with(serving.cors),
            with(candidate.cors)
        ));
    }
    let same_calls = serving.calls.len() == candidate.calls.len()
        && serving
            .calls
            .iter()
            .zip(&candidate.calls)
            .all(|(a, b)| a.same_as(b));
    if !same_calls {
        let secrets = Secrets {
            hash: looked_up_hash(&serving.calls),
            tokens: serving
                .calls
                .iter()
                .chain(&candidate.calls)
                .filter_map(|call| match call {
                    Effect::Validate { token } if !token.is_empty() => Some(token.clone()),
                    _ => None,
                })
                .collect(),
        };
        let list = |calls: &[Effect]| {
            calls
                .iter()
                .map(|call| show(call, &secrets))
                .collect::<Vec<_>>()
                .join(", ")
        };
        wrong.push(format!(
            "the serving version made the calls [{}], the candidate [{}]",
            list(&serving.calls),
            list(&candidate.calls)
        ));
    }
    (!wrong.is_empty()).then(|| wrong.join("; "))
}

/// The key hash the serving version looked up, if it did.
fn looked_up_hash(calls: &[Effect]) -> Option<String> {
    calls.iter().find_map(|call| match call {
        Effect::Post { body, .. } => serde_json::from_slice::<serde_json::Value>(body)
            .ok()?
            .get("keyHash")?
            .as_str()
            .map(str::to_owned),
        _ => None,
    })
}

/// What a shown call must not say: the key hash looked up, and the
/// tokens the guests were given (a candidate may pass one on, to Convex
/// or as a cache key).
struct Secrets {
    hash: Option<String>,
    tokens: Vec<String>,
}

/// A call as a log line may show it: no token, no hash, and of a Convex
/// body only its shape (its field names, a hash as `<hash>`, every other
/// value as `<value>`).
fn show(call: &Effect, secrets: &Secrets) -> String {
    match call {
        Effect::Validate { .. } => "session.validate(<token>)".to_owned(),
        Effect::Post { path, body } => format!(
            "convex.post({}, {})",
            hide(path, secrets),
            body_shape(body, secrets)
        ),
        Effect::Delete { key } => format!("cache.delete({})", hide(key, secrets)),
    }
}

/// A Convex body's shape: `{"keyHash":<hash>}`, never a value.
fn body_shape(body: &[u8], secrets: &Secrets) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => {
            let fields: Vec<String> = fields
                .iter()
                .take(8)
                .map(|(name, value)| {
                    let value = match value.as_str() {
                        Some(text) if is_hash(text) => hide(text, secrets),
                        _ => "<value>".to_owned(),
                    };
                    format!("\"{}\":{value}", hide(name, secrets))
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Ok(_) => "<JSON that is not an object>".to_owned(),
        Err(_) => format!("<{} bytes, not JSON>", body.len()),
    }
}

fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// `text` cut to a line's worth, with every token replaced by `<token>`
/// and every run of 64 hex digits (what a key hash looks like) by
/// `<hash>` for the one looked up, `<another hash>` for any other.
fn hide(text: &str, secrets: &Secrets) -> String {
    let mut text = text.to_owned();
    for token in &secrets.tokens {
        text = text.replace(token.as_str(), "<token>");
    }
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_hexdigit()) {
        out.push_str(&rest[..start]);
        let run = rest[start..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .map_or(rest.len() - start, |len| len);
        let digits = &rest[start..start + run];
        if run >= 64 {
            out.push_str(if Some(digits) == secrets.hash.as_deref() {
                "<hash>"
            } else {
                "<another hash>"
            });
        } else {
            out.push_str(digits);
        }
        rest = &rest[start + run..];
    }
    out.push_str(rest);
    if out.len() > 160 {
        let cut = (0..=160)
            .rev()
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// A request described without its secrets: the method, whether it named
/// an origin, its authorization scheme, and its body's shape (the names
/// of a JSON object's fields, never their values).
pub fn shape(head: &http::request::Parts, body: &[u8]) -> String {
    let origin = if head.headers.contains_key(http::header::ORIGIN) {
        "an Origin"
    } else {
        "no Origin"
    };
    let authorization = match head
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    {
        None => "no Authorization",
        Some(value) if value.starts_with("Bearer ") => "a bearer token",
        Some(_) => "another Authorization",
    };
    let secrets = Secrets {
        hash: None,
        tokens: head
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .filter(|token| !token.is_empty())
            .map(|token| vec![token.to_owned()])
            .unwrap_or_default(),
    };
    let body = if body.is_empty() {
        "no body".to_owned()
    } else {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(fields)) => {
                let names: Vec<String> = fields
                    .keys()
                    .take(8)
                    .map(|name| hide(name, &secrets).chars().take(32).collect())
                    .collect();
                format!("a JSON object with the fields [{}]", names.join(", "))
            }
            Ok(_) => "JSON that is not an object".to_owned(),
            Err(_) => format!("a body of {} bytes that is not JSON", body.len()),
        }
    };
    format!("{} with {origin}, {authorization}, {body}", head.method)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592";

    fn lookup() -> Effect {
        Effect::Post {
            path: "/api/internal-get-key-owner".into(),
            body: format!(r#"{{"keyHash":"{HASH}"}}"#).into_bytes(),
        }
    }

    #[test]
    fn the_same_calls_and_answer_agree_whatever_the_bodys_spacing() {
        let serving = Observed {
            status: 200,
            cors: true,
            calls: vec![lookup()],
        };
        let spaced = Effect::Post {
            path: "/api/internal-get-key-owner".into(),
            body: format!(r#"{{ "keyHash" : "{HASH}" }}"#).into_bytes(),
        };
        let candidate = Observed {
            calls: vec![spaced],
            ..serving.clone()
        };
        assert_eq!(divergence(&serving, &candidate), None);
    }

    #[test]
    fn a_divergence_shows_neither_the_token_nor_the_hash() {
        let serving = Observed {
            status: 200,
            cors: true,
            calls: vec![
                Effect::Validate {
                    token: "secret-token".into(),
                },
                lookup(),
                Effect::Delete {
                    key: format!("user-api-key:{HASH}"),
                },
            ],
        };
        // A candidate that passes the token on, and the body's values.
        let candidate = Observed {
            status: 500,
            cors: true,
            calls: vec![
                Effect::Validate {
                    token: "secret-token".into(),
                },
                Effect::Post {
                    path: "/api/internal-get-key-owner".into(),
                    body: br#"{"keyHash":"secret-token","note":"a value from the body"}"#.to_vec(),
                },
                Effect::Delete {
                    key: "user-api-key:secret-token".into(),
                },
            ],
        };
        let said = divergence(&serving, &candidate).unwrap();
        assert!(said.contains("answered 200, the candidate 500"), "{said}");
        assert!(said.contains("cache.delete(user-api-key:<hash>)"), "{said}");
        assert!(
            said.contains("cache.delete(user-api-key:<token>)"),
            "{said}"
        );
        assert!(said.contains(r#"{"keyHash":<hash>}"#), "{said}");
        assert!(
            said.contains(r#"{"keyHash":<value>,"note":<value>}"#),
            "{said}"
        );
        assert!(!said.contains("a value from the body"), "{said}");
        assert!(
            !said.contains(HASH) && !said.contains("secret-token"),
            "{said}"
        );
    }
}
