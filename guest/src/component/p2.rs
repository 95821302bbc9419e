//! wasi:http 0.2: `incoming-handler.handle`, with a blocking body read.

use super::{Head, Host, wire_headers};
use crate::policy::{self, BodyError};
use alloc::vec::Vec;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

struct Endpoint;

super::export!(Endpoint with_types_in super);

impl super::exports::wasi::http0_2_12::incoming_handler::Guest for Endpoint {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = request.headers();
        let head = Head::read(method_name!(request.method()), |name| headers.get(name));
        drop(headers);
        let host = Host::default();
        let response = policy::handle(&head.view(), |limit| read_body(&request, limit), &host);
        to_stderr(&host.take_warnings());
        send(response, response_out);
    }
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
    let entries = wire_headers(&response);
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

/// Bytes to the guest's stderr, which the host logs.
fn to_stderr(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let stderr = wasip2::cli::stderr::get_stderr();
    for chunk in bytes.chunks(4096) {
        if stderr.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
}

/// A panic is a bug: say where, then trap (the host answers 500).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    to_stderr(alloc::format!("guest panicked: {info}\n").as_bytes());
    core::arch::wasm32::unreachable()
}
