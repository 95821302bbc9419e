//! How a request's guest run can end without an answer of its own, and
//! the answer the host gives in its place.
//!
//! Both serving paths, a fresh instance per request ([`super::fresh`]) and
//! kept instances ([`super::reuse`]), end in these same few ways and must
//! tell the client the same thing, so the mapping from "what happened" to
//! a status and a message is written here once.

use crate::body::{ResponseBody, json_response};
use std::time::Duration;

/// How a request's guest run ended without an answer of its own.
#[derive(Debug)]
pub enum GuestFailure {
    /// Out of CPU budget or past the wall-clock bound.
    OutOfTime(String),
    /// Trapped, or returned without a response.
    Failed(wasmtime::Error),
    /// The request body was not in by `--body-timeout`.
    BodyTimeout,
}

impl GuestFailure {
    /// The guest spent its `--guest-timeout` budget: its trap means 504,
    /// not 500.
    pub(crate) fn out_of_budget() -> Self {
        GuestFailure::OutOfTime("guest exceeded its execution time budget (--guest-timeout)".into())
    }

    /// The request had no answer within `--request-timeout`.
    pub(crate) fn request_timed_out(deadline: Duration) -> Self {
        GuestFailure::OutOfTime(format!("request exceeded the {deadline:?} request timeout"))
    }

    /// The answer the host gives in the guest's place.
    pub fn response(&self) -> hyper::Response<ResponseBody> {
        match self {
            GuestFailure::OutOfTime(_) => json_response(504, r#"{"error":"Gateway timeout"}"#),
            GuestFailure::Failed(_) => json_response(500, r#"{"error":"Internal error"}"#),
            GuestFailure::BodyTimeout => json_response(408, r#"{"error":"Request timeout"}"#),
        }
    }
}
