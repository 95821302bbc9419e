//! The contract gate: a new version must *behave* before it serves, not
//! only fit.
//!
//! Compiling, matching the world, instantiating and a signature say that
//! a version fits; none says that it does what the endpoint promises. A
//! component that answers `200 {"ok":true}` and deletes nothing fits
//! perfectly, and once swapped in, every key its users revoke keeps
//! working until its cache entry expires, with no metric to show it.
//!
//! So before a version serves a client, it answers each row of
//! [`rows::ROWS`], the cases of `docs/contract.md`'s endpoint rules, with a
//! [`StandIn`](crate::capabilities::StandIn) in place of the backends: a
//! session that is valid, invalid or unverifiable; a Convex lookup that
//! names the caller, another user, nobody, or fails; a cache delete that
//! works or fails; an allow-list of its own. Each row checks the status,
//! the CORS headers, the JSON `error` field and the exact backend calls
//! with their arguments. The first row a version fails refuses it.
//!
//! It runs in process, in milliseconds, under the same bounds as a
//! client's request, and reaches no backend: it deletes nothing, asks
//! Convex nothing, and is counted in no capability metric.

pub mod rows;
mod script;

use self::rows::{Call, Origin, Row};
use self::script::Script;
use crate::capabilities::Effect;
use crate::runtime::Plugin;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether new versions are checked against the contract before they
/// serve (`--contract-gate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ContractGate {
    /// Every new version passes the gate first.
    #[default]
    On,
    /// New versions serve once they fit: for an operator who changes the
    /// contract on purpose. Warned about at start and on `/readyz`.
    Off,
}

impl ContractGate {
    /// Whether the gate runs.
    pub fn is_on(self) -> bool {
        self == ContractGate::On
    }
}

/// What `/readyz` and the start warn about when the gate is off.
pub const GATE_OFF_WARNING: &str = "the contract gate is off (--contract-gate off): new versions serve without being checked for behaviour";

/// Why a version was refused at the gate: the row it failed and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("contract row {rule} ({case}): {reason}")]
pub struct Refusal {
    /// The rule in `docs/contract.md`.
    pub rule: String,
    /// The case of it.
    pub case: String,
    /// What the version did instead, with the token and hash shown as
    /// `<token>` and `<hash>`.
    pub reason: String,
}

/// A version that passed.
#[derive(Debug, Clone, Copy)]
pub struct Passed {
    /// The rows it answered.
    pub rows: usize,
    /// How long they took.
    pub took: Duration,
}

/// The largest answer body a row reads; an endpoint's answers are tiny.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// How long a row waits for the answer's body once its head is in.
const BODY_DEADLINE: Duration = Duration::from_secs(5);

/// Runs every row against `plugin`; the first one it fails refuses it.
pub async fn check(plugin: &Plugin) -> Result<Passed, Refusal> {
    let started = Instant::now();
    for row in rows::ROWS {
        run(plugin, row).await?;
    }
    Ok(Passed {
        rows: rows::ROWS.len(),
        took: started.elapsed(),
    })
}

async fn run(plugin: &Plugin, row: &Row) -> Result<(), Refusal> {
    let refuse = |reason: String| Refusal {
        rule: row.rule.to_owned(),
        case: row.case.to_owned(),
        reason,
    };
    let script = Arc::new(Script::new(row.world));
    let response = plugin
        .rehearse(request(row), script.clone())
        .await
        .map_err(|failure| refuse(format!("gave no answer: {}", failure_text(&failure))))?;
    let (head, body) = response.into_parts();
    let body = tokio::time::timeout(
        BODY_DEADLINE,
        Limited::new(body, MAX_ANSWER_BYTES).collect(),
    )
    .await
    .map_err(|_| {
        refuse(format!(
            "its answer body did not end within {BODY_DEADLINE:?}"
        ))
    })?
    .map_err(|err| refuse(format!("its answer body failed: {err}")))?
    .to_bytes();
    let mut wrong = Vec::new();
    let status = head.status.as_u16();
    if status != row.expect.status {
        wrong.push(format!("answered {status}, not {}", row.expect.status));
    }
    if let Some(cors) = cors_problem(row, &head.headers) {
        wrong.push(cors);
    }
    if let Some(error) = error_problem(row, &body) {
        wrong.push(error);
    }
    let calls = script.calls();
    if !calls_match(&calls, row.expect.calls) {
        wrong.push(format!(
            "made the calls [{}], not [{}]",
            calls.iter().map(show).collect::<Vec<_>>().join(", "),
            row.expect
                .calls
                .iter()
                .map(|call| show(&expected(*call)))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(refuse(wrong.join("; ")))
    }
}

/// The row's request, as a client would send it.
fn request(row: &Row) -> hyper::Request<Full<Bytes>> {
    let body = match row.request.body {
        rows::Body::Empty => Bytes::new(),
        rows::Body::KeyHash => Bytes::from(format!(r#"{{"keyHash":"{}"}}"#, rows::HASH)),
        rows::Body::Raw(text) => Bytes::from_static(text.as_bytes()),
        rows::Body::Oversized => Bytes::from(vec![b' '; crate::body::MAX_BODY_BYTES + 1]),
    };
    let mut builder = hyper::Request::builder()
        .method(row.request.method)
        .uri(format!("http://contract.invalid{}", rows::ENDPOINT_PATH));
    if !body.is_empty() {
        builder = builder
            .header("content-type", "application/json")
            .header("content-length", body.len());
    }
    match row.request.origin {
        Origin::Absent => {}
        Origin::Allowed => builder = builder.header("origin", rows::ALLOWED_ORIGIN),
        Origin::Refused => builder = builder.header("origin", rows::REFUSED_ORIGIN),
    }
    if let Some(authorization) = row.request.authorization {
        builder = builder.header("authorization", authorization);
    }
    builder
        .body(Full::new(body))
        .expect("the rows' methods and headers are valid")
}

/// What is wrong with the answer's CORS headers, if anything.
fn cors_problem(row: &Row, headers: &http::HeaderMap) -> Option<String> {
    let given = headers
        .get("access-control-allow-origin")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    match (row.expect.cors, given) {
        (false, None) => None,
        (false, Some(_)) => {
            Some("answered with CORS headers, which this rule withholds".to_owned())
        }
        (true, None) => Some("answered without the CORS headers".to_owned()),
        (true, Some(given)) => {
            let want = match row.request.origin {
                Origin::Allowed => rows::ALLOWED_ORIGIN,
                _ => rows::DEFAULT_ORIGIN,
            };
            if given != want {
                return Some(format!(
                    "gave Access-Control-Allow-Origin {given:?}, not {want:?}"
                ));
            }
            let missing: Vec<&str> = [
                "access-control-allow-methods",
                "access-control-allow-headers",
                "vary",
            ]
            .into_iter()
            .filter(|name| !headers.contains_key(*name))
            .collect();
            (!missing.is_empty()).then(|| format!("answered without {}", missing.join(", ")))
        }
    }
}

/// What is wrong with the answer's JSON `error` field, if anything.
fn error_problem(row: &Row, body: &[u8]) -> Option<String> {
    let given = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("error").cloned());
    match (row.expect.error, given) {
        (None, None) => None,
        (None, Some(given)) => Some(format!(
            "answered with an error field ({given}) where there is none"
        )),
        (Some(want), None) => Some(format!("answered without the error field {want:?}")),
        (Some(want), Some(given)) if given.as_str() == Some(want) => None,
        (Some(want), Some(given)) => Some(format!("answered the error {given}, not {want:?}")),
    }
}

/// The call a row means by `call`.
fn expected(call: Call) -> Effect {
    match call {
        Call::Validate => Effect::Validate {
            token: rows::TOKEN.to_owned(),
        },
        Call::Lookup => Effect::Post {
            path: rows::OWNER_LOOKUP_PATH.to_owned(),
            body: format!(r#"{{"keyHash":"{}"}}"#, rows::HASH).into_bytes(),
        },
        Call::Delete => Effect::Delete {
            key: format!("{}{}", rows::CACHE_KEY_PREFIX, rows::HASH),
        },
    }
}

/// Whether `calls` are exactly the expected ones, in order.
fn calls_match(calls: &[Effect], want: &[Call]) -> bool {
    calls.len() == want.len()
        && calls
            .iter()
            .zip(want)
            .all(|(call, want)| call.same_as(&expected(*want)))
}

/// A call as a refusal shows it: the token and the hash replaced.
fn show(call: &Effect) -> String {
    let hide = |text: &str| {
        text.replace(rows::HASH, "<hash>")
            .replace(rows::TOKEN, "<token>")
    };
    match call {
        Effect::Validate { token } => format!("session.validate({})", hide(token)),
        Effect::Post { path, body } => {
            let mut body = hide(&String::from_utf8_lossy(body));
            if body.len() > 120 {
                let cut = (0..=120)
                    .rev()
                    .find(|i| body.is_char_boundary(*i))
                    .unwrap_or(0);
                body.truncate(cut);
                body.push('…');
            }
            format!("convex.post({}, {body})", hide(path))
        }
        Effect::Delete { key } => format!("cache.delete({})", hide(key)),
    }
}

/// A failed run in a few words.
fn failure_text(failure: &crate::runtime::GuestFailure) -> String {
    use crate::runtime::GuestFailure;
    match failure {
        GuestFailure::OutOfTime(why) => why.clone(),
        GuestFailure::Failed(err) => format!("{err:#}"),
        GuestFailure::BodyTimeout => "it did not read its body in time".to_owned(),
    }
}
