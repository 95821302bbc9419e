//! The `policy-*` modes: the endpoint's own policy (`guest/src/policy.rs`,
//! compiled in here as it is, not depended on: the guest crate's build
//! would bring its exports along), run with one flaw each, so the contract gate's tests have components
//! that fit the world, answer most requests right, and misbehave in one
//! precise way.
//!
//! | mode | the flaw |
//! |---|---|
//! | `policy` | none: the same policy, with a log line of its own |
//! | `policy-other-key` | deletes another hash's key |
//! | `policy-no-prefix` | deletes the bare hash, without `user-api-key:` |
//! | `policy-twice` | deletes the key twice |
//! | `policy-no-lookup` | deletes without asking Convex who owns the key |
//! | `policy-ignores-delete` | answers 200 when the delete fails |
//! | `policy-extra-field` | answers 500 when the body has a field besides `keyHash` |
//! | `policy-slow` | waits 20 ms (asleep, not spinning) before it answers |

use crate::component::keybust::gateway::{cache, convex, origins, session};
use endpoint_policy::{self as policy, BodyError, RequestHead, Step};
use std::cell::RefCell;
use wasip2::http::types::{IncomingBody, IncomingRequest, Method};
use wasip2::io::streams::StreamError;

#[path = "../../../guest/src/policy.rs"]
#[allow(
    dead_code,
    reason = "the guest's whole policy, of which the modes use a part"
)]
mod endpoint_policy;

/// One way of getting the policy wrong.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    OtherKey,
    NoPrefix,
    Twice,
    NoLookup,
    IgnoresDelete,
    ExtraField,
    Slow,
}

impl Flaw {
    fn of(mode: &str) -> Option<Flaw> {
        Some(match mode {
            "policy" => Flaw::None,
            "policy-other-key" => Flaw::OtherKey,
            "policy-no-prefix" => Flaw::NoPrefix,
            "policy-twice" => Flaw::Twice,
            "policy-no-lookup" => Flaw::NoLookup,
            "policy-ignores-delete" => Flaw::IgnoresDelete,
            "policy-extra-field" => Flaw::ExtraField,
            "policy-slow" => Flaw::Slow,
            _ => return None,
        })
    }
}

/// Whether `mode` is one of these.
pub fn is_mode(mode: &str) -> bool {
    Flaw::of(mode).is_some()
}

/// Serves `request` with the policy and `mode`'s flaw (none for a mode
/// that is not one of these).
pub fn serve(mode: &str, request: &IncomingRequest, out: wasip2::http::types::ResponseOutparam) {
    let flaw = Flaw::of(mode).unwrap_or(Flaw::None);
    let headers = request.headers();
    let first = |name: &str| {
        headers
            .get(name)
            .into_iter()
            .next()
            .and_then(|value| String::from_utf8(value).ok())
    };
    let origin = first("origin");
    let authorization = first("authorization");
    let content_length = first("content-length").and_then(|value| value.parse().ok());
    let method = match request.method() {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Options => "OPTIONS",
        Method::Head => "HEAD",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        _ => "OTHER",
    };
    let head = RequestHead {
        method,
        origin: origin.as_deref(),
        authorization: authorization.as_deref(),
        content_length,
    };
    let host = Flawed {
        flaw,
        user: RefCell::new(None),
    };
    let response = match policy::begin(&head, &host) {
        Step::Answer(response) => response,
        Step::ReadBody(pending) => {
            let body = read_body(request, pending.limit());
            if flaw == Flaw::ExtraField && has_extra_field(&body) {
                crate::component::respond_sized(
                    out,
                    500,
                    br#"{"error":"Internal error"}"#.to_vec(),
                );
                return;
            }
            pending.finish(body, &host)
        }
    };
    if flaw == Flaw::Slow {
        wasip2::clocks::monotonic_clock::subscribe_duration(20_000_000).block();
    }
    if flaw == Flaw::None {
        eprintln!("the test programs' policy answered {}", response.status);
    }
    let mut headers: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone().into_bytes()))
        .collect();
    if !response.body.is_empty() {
        headers.push((
            "content-length".to_owned(),
            response.body.len().to_string().into_bytes(),
        ));
    }
    crate::component::respond_with(out, response.status, headers, response.body);
}

fn has_extra_field(body: &Result<Vec<u8>, BodyError>) -> bool {
    let Ok(body) = body else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => fields.keys().any(|key| key != "keyHash"),
        _ => false,
    }
}

fn read_body(request: &IncomingRequest, limit: usize) -> Result<Vec<u8>, BodyError> {
    let body = request.consume().map_err(|()| BodyError::Broken)?;
    let stream = body.stream().map_err(|()| BodyError::Broken)?;
    let mut buf = Vec::new();
    loop {
        match stream.blocking_read(16 * 1024) {
            Ok(chunk) => {
                if buf.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return Err(BodyError::Broken),
        }
    }
    drop(stream);
    IncomingBody::finish(body);
    Ok(buf)
}

/// The host's imports, with the flaw.
struct Flawed {
    flaw: Flaw,
    /// The user the session named, for the lookup a flawed version skips.
    user: RefCell<Option<String>>,
}

impl policy::Capabilities for Flawed {
    fn origin_allowed(&self, origin: &str) -> bool {
        origins::is_allowed(origin)
    }

    fn default_origin(&self) -> String {
        origins::default_origin()
    }

    fn validate_session(&self, token: &str) -> Result<String, policy::SessionError> {
        let user = session::validate(token).map_err(|err| match err {
            session::SessionError::Invalid => policy::SessionError::Invalid,
            session::SessionError::Unverifiable => policy::SessionError::Unverifiable,
        })?;
        *self.user.borrow_mut() = Some(user.clone());
        Ok(user)
    }

    fn convex_post(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<policy::ConvexResponse, policy::ConvexError> {
        if self.flaw == Flaw::NoLookup {
            let user = self.user.borrow().clone().unwrap_or_default();
            return Ok(policy::ConvexResponse {
                status: 200,
                body: serde_json::json!({ "userId": user })
                    .to_string()
                    .into_bytes(),
            });
        }
        convex::post(path, body)
            .map(|answer| policy::ConvexResponse {
                status: answer.status,
                body: answer.body,
            })
            .map_err(|err| match err {
                convex::ConvexError::NotConfigured => policy::ConvexError::NotConfigured,
                convex::ConvexError::ForbiddenPath => policy::ConvexError::ForbiddenPath,
                convex::ConvexError::Timeout => policy::ConvexError::Timeout,
                convex::ConvexError::Transport => policy::ConvexError::Transport,
            })
    }

    fn cache_delete(&self, key: &str) -> Result<(), policy::CacheError> {
        let delete = |key: &str| {
            cache::delete(key).map_err(|err| match err {
                cache::CacheError::Unavailable => policy::CacheError::Unavailable,
                cache::CacheError::Timeout => policy::CacheError::Timeout,
            })
        };
        match self.flaw {
            Flaw::OtherKey => {
                let hash = key.strip_prefix("user-api-key:").unwrap_or(key);
                let other: String = hash
                    .chars()
                    .map(|c| if c == '0' { '1' } else { '0' })
                    .collect();
                delete(&format!("user-api-key:{other}"))
            }
            Flaw::NoPrefix => delete(key.strip_prefix("user-api-key:").unwrap_or(key)),
            Flaw::Twice => {
                delete(key)?;
                delete(key)
            }
            Flaw::IgnoresDelete => {
                let _ = delete(key);
                Ok(())
            }
            _ => delete(key),
        }
    }

    fn warn(&self, message: &str) {
        eprintln!("{message}");
    }
}
