//! The thin layer between wasi:http, our WIT imports and [`crate::policy`].

use crate::policy::{self, BodyError, RequestHead};
use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

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

use keybust::gateway::{cache, convex, origins, session};

struct Endpoint;

export!(Endpoint);

impl exports::wasi::http::incoming_handler::Guest for Endpoint {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = match request.method() {
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
        };
        let headers = request.headers();
        let origin = joined_header(&headers, "origin");
        let authorization = first_header(&headers, "authorization");
        let content_length = first_header(&headers, "content-length").and_then(|v| v.parse().ok());
        drop(headers);
        let head = RequestHead {
            method,
            origin: origin.as_deref(),
            authorization: authorization.as_deref(),
            content_length,
        };
        let response = policy::handle(&head, |limit| read_body(&request, limit), &Host);
        send(response, response_out);
    }
}

/// Every value of a header, joined with `, ` and decoded leniently, as the
/// Fetch API's `Headers.get` reads them: a repeated or undecodable
/// `Origin` then matches no allowed origin (contract rule E1) instead of
/// passing as absent.
fn joined_header(headers: &Fields, name: &str) -> Option<String> {
    let values = headers.get(name);
    if values.is_empty() {
        return None;
    }
    let decoded: Vec<String> = values
        .iter()
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .collect();
    Some(decoded.join(", "))
}

/// The first value of a header, when it is valid UTF-8.
fn first_header(headers: &Fields, name: &str) -> Option<String> {
    headers
        .get(name)
        .into_iter()
        .next()
        .and_then(|value| String::from_utf8(value).ok())
}

/// Reads the request body, stopping as soon as it grows past `limit`.
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

/// Writes a policy response through the outparam.
fn send(response: policy::Response, out: ResponseOutparam) {
    let mut entries: Vec<(String, Vec<u8>)> = response
        .headers
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.into_bytes()))
        .collect();
    // The body is known in full: a length lets the client skip chunked
    // decoding, and the host checks that exactly this much is written.
    if !response.body.is_empty() {
        entries.push((
            "content-length".to_owned(),
            response.body.len().to_string().into_bytes(),
        ));
    }
    let headers = match Fields::from_list(&entries) {
        Ok(headers) => headers,
        Err(_) => Fields::new(),
    };
    let outgoing = OutgoingResponse::new(headers);
    let _ = outgoing.set_status_code(response.status);
    let Ok(body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(outgoing));
    if !response.body.is_empty() {
        let Ok(stream) = body.write() else {
            return;
        };
        for chunk in response.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

/// The host's imports, seen as the policy's capabilities.
struct Host;

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
        to_stderr(message);
    }
}

/// One line to the guest's stderr, which the host logs.
fn to_stderr(message: &str) {
    let stderr = wasip2::cli::stderr::get_stderr();
    let mut line = Vec::with_capacity(message.len() + 1);
    line.extend_from_slice(message.as_bytes());
    line.push(b'\n');
    for chunk in line.chunks(4096) {
        if stderr.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
}

// `memcmp` and its kin from the target's own C library (wasi-libc), as
// std would take them; the linker keeps only the functions called, none of
// the library's start-up code or imports.
#[link(name = "c")]
unsafe extern "C" {}

#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// A panic is a bug: say where, then trap (the host answers 500).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    to_stderr(&alloc::format!("guest panicked: {info}"));
    core::arch::wasm32::unreachable()
}

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
