//! The thin layer between wasi:http, our WIT imports and [`crate::policy`].
//!
//! One build is one world: `keybust:gateway/endpoint` (wasi:http 0.2, a
//! synchronous handler) by default, `keybust:gateway/endpoint-p3`
//! (wasi:http 0.3, an async one) with the `p3` feature. The capabilities,
//! the allocator and the canonical ABI's hooks are the same for both.

use crate::policy::{self, RequestHead};
use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

/// The policy's name for a request's method; either wasi:http's `Method`
/// (whichever is in scope where this is used) has the same cases.
macro_rules! method_name {
    ($method:expr) => {
        match $method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other(_) => "OTHER",
        }
    };
}

#[cfg(not(feature = "p3"))]
mod p2;
#[cfg(feature = "p3")]
mod p3;

#[cfg(not(feature = "p3"))]
wit_bindgen::generate!({
    path: "../wit",
    world: "keybust:gateway/endpoint",
    with: {
        "wasi:http/types@0.2.12": wasip2::http::types,
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
    },
});

#[cfg(feature = "p3")]
wit_bindgen::generate!({
    path: "../wit",
    world: "keybust:gateway/endpoint-p3",
    with: {
        "wasi:http/types@0.3.0": wasip3::http::types,
        "wasi:clocks/types@0.3.0": wasip3::clocks::types,
    },
});

use keybust::gateway::{cache, convex, origins, session};

/// What the policy reads of a request's head, taken out of its headers.
struct Head {
    method: &'static str,
    origin: Option<String>,
    authorization: Option<String>,
    content_length: Option<u64>,
}

impl Head {
    /// `values(name)` is the header's values, as either wasi:http's
    /// `fields.get` returns them.
    fn read(method: &'static str, values: impl Fn(&str) -> Vec<Vec<u8>>) -> Self {
        // Every value of `Origin`, joined with `, ` and decoded leniently,
        // as the Fetch API's `Headers.get` reads them: a repeated or
        // undecodable `Origin` then matches no allowed origin (contract
        // rule E1) instead of passing as absent.
        let origins = values("origin");
        let origin = (!origins.is_empty()).then(|| {
            let decoded: Vec<String> = origins
                .iter()
                .map(|value| String::from_utf8_lossy(value).into_owned())
                .collect();
            decoded.join(", ")
        });
        // The first value, when it is valid UTF-8.
        let first = |name: &str| {
            values(name)
                .into_iter()
                .next()
                .and_then(|value| String::from_utf8(value).ok())
        };
        Head {
            method,
            origin,
            authorization: first("authorization"),
            content_length: first("content-length").and_then(|v| v.parse().ok()),
        }
    }

    fn view(&self) -> RequestHead<'_> {
        RequestHead {
            method: self.method,
            origin: self.origin.as_deref(),
            authorization: self.authorization.as_deref(),
            content_length: self.content_length,
        }
    }
}

/// The answer's header list. The body is known in full: a length lets the
/// client skip chunked decoding, and the host checks that exactly this
/// much is written.
fn wire_headers(response: &policy::Response) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone().into_bytes()))
        .collect();
    if !response.body.is_empty() {
        entries.push((
            "content-length".to_owned(),
            response.body.len().to_string().into_bytes(),
        ));
    }
    entries
}

/// The host's imports, seen as the policy's capabilities. Warnings are
/// kept until the policy has answered, then written to stderr in one go:
/// under wasi:http 0.3 a write is asynchronous, and the policy is not.
#[derive(Default)]
struct Host {
    warnings: RefCell<Vec<String>>,
}

impl Host {
    /// The warnings so far, one line each.
    fn take_warnings(&self) -> Vec<u8> {
        let mut lines = Vec::new();
        for warning in self.warnings.take() {
            lines.extend_from_slice(warning.as_bytes());
            lines.push(b'\n');
        }
        lines
    }
}

impl policy::Capabilities for Host {
    fn origin_allowed(&self, origin: &str) -> bool {
        origins::is_allowed(origin)
    }

    fn default_origin(&self) -> String {
        origins::default_origin()
    }

    fn validate_session(&self, token: &str) -> Result<String, policy::SessionError> {
        session::validate(token).map_err(|err| match err {
            session::SessionError::Invalid => policy::SessionError::Invalid,
            session::SessionError::Unverifiable => policy::SessionError::Unverifiable,
        })
    }

    fn convex_post(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<policy::ConvexResponse, policy::ConvexError> {
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
        cache::delete(key).map_err(|err| match err {
            cache::CacheError::Unavailable => policy::CacheError::Unavailable,
            cache::CacheError::Timeout => policy::CacheError::Timeout,
        })
    }

    fn warn(&self, message: &str) {
        self.warnings.borrow_mut().push(message.into());
    }
}

// `memcmp` and its kin from the target's own C library (wasi-libc), as
// std would take them; the linker keeps only the functions called, none of
// the library's start-up code or imports.
#[link(name = "c")]
unsafe extern "C" {}

#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The canonical ABI's allocation hook, through which the host hands the
/// guest strings and lists. std's runtime provides it; without std, the
/// component does.
///
/// # Safety
///
/// Called by the component model's lowering code only, with a pointer it
/// got from this function (or null and a zero length) and a power-of-two
/// alignment.
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    if new_len == 0 {
        // A zero-sized allocation: any non-null, aligned pointer.
        return align as *mut u8;
    }
    let Ok(new_layout) = Layout::from_size_align(new_len, align) else {
        core::arch::wasm32::unreachable()
    };
    // SAFETY: the layouts are valid (checked above, and `old` was made by
    // this function with `old_len` and `align`).
    let ptr = unsafe {
        if old_len == 0 {
            alloc(new_layout)
        } else {
            match Layout::from_size_align(old_len, align) {
                Ok(old_layout) => realloc(old, old_layout, new_len),
                Err(_) => core::arch::wasm32::unreachable(),
            }
        }
    };
    if ptr.is_null() {
        // Out of memory (the host's cap): trap, as std does.
        core::arch::wasm32::unreachable()
    }
    ptr
}
